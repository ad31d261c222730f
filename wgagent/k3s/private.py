"""This node's private IPv4: what ``advertise-address`` becomes with ``k3s.advertise_private_address``.

On a server, k3s makes kube-apiserver advertise the first ``node-external-ip`` when
``advertise-address`` is unset (k3s ``pkg/cli/server/server.go``; docs/UPSTREAM.md §2): the
agents and other servers then reach the API over the public address. With the key on,
wgagent writes the address k3s itself would pick for ``node-ip``: the IPv4 the kernel routes
from by default (k3s ``util.GetHostnameAndIPs``: the default route's interface).

The kernel is asked with a connected UDP socket, which sends nothing: ``connect()`` on a
datagram socket only picks the route and the source address.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket

PROBE_DESTINATION = ("198.51.100.1", 9)
"""Any routable address works (TEST-NET-2, RFC 5737): nothing is sent to it."""


def route_source_ipv4() -> str | None:
    """The source address of the default IPv4 route, or None without one."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(PROBE_DESTINATION)
        address = str(sock.getsockname()[0])
        return None if ipaddress.ip_address(address).is_unspecified else address
    return None
