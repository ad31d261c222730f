"""Sending inbound probes: one UDP datagram per due target, from a fresh ephemeral port.

A new socket per round gives a new source port, so each probe is a *new* flow for every
stateful firewall on the way (conntrack forgets an unanswered UDP flow after 30 s; the probe
interval is minutes), which is what it must test. Probes go only to the targets
:func:`wgagent.mesh.probe.targets` chose (addresses Nodes advertise), never more than one per
target per call. Nothing is awaited: nobody answers.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable

from wgagent.mesh.probe import Target, encode


def send(
    node: str,
    targets: Iterable[Target],
    *,
    clock: Callable[[], float] = time.time,
    nonce: Callable[[int], bytes] = os.urandom,
) -> dict[str, str | None]:
    """Send one probe to each target; target node -> None (sent) or why not (one line)."""
    out: dict[str, str | None] = {}
    socks: dict[int, socket.socket] = {}
    try:
        for t in targets:
            family = socket.AF_INET6 if ":" in t.ip else socket.AF_INET
            try:
                sock = socks.get(family)
                if sock is None:
                    sock = socks[family] = socket.socket(family, socket.SOCK_DGRAM)
                    sock.setblocking(False)
                sock.sendto(encode(node, clock(), nonce(8)), (t.ip, t.port))
                out[t.node] = None
            except OSError as exc:
                out[t.node] = f"{t.ip}:{t.port}: {exc.strerror or exc}"
    finally:
        for sock in socks.values():
            sock.close()
    return out


def is_local_address(ip: str) -> bool:
    """Whether ``ip`` is an address of this host (network namespace): binding a UDP socket to it
    works only then (EADDRNOTAVAIL otherwise). The mesh report's ``nat``: the advertised
    public-ip is on none of the node's interfaces.

    Wrong only where ``net.ipv4.ip_nonlocal_bind`` (or ``ipv6.ip_nonlocal_bind``) is set, which
    lets any address be bound (keepalived/HAProxy hosts): such a node reports no NAT.

    >>> is_local_address("127.0.0.1"), is_local_address("not an address")
    (True, False)
    """
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((ip, 0))
    except (OSError, ValueError):
        return False
    return True
