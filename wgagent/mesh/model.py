"""What the mesh cores share: the policy, the cause ids, and where each Node says it listens.

Every agent looks at flannel's WireGuard device from inside, publishes what it sees on its
own Node (:mod:`wgagent.mesh.report`), and anyone holding all reports can say which pair of
nodes cannot talk, why, and which node to fix (:mod:`wgagent.mesh.diagnose`).

An advertised endpoint is what flannel itself would configure as the peer's endpoint:
``flannel.alpha.coreos.com/public-ip`` and the ``Port`` of ``backend-data`` (IPv6:
``public-ipv6`` and ``backend-v6-data``). flannel (pkg/backend/wireguard/wireguard_network.go,
``handleSubnetEvents``, v0.28.x) builds ``"%s:%d" % (PublicIP, Port)`` on each lease event, and
when ``Port`` is 0 or missing (leases written before v0.26.6) uses the *local* device's listen
port::

    >>> node = NodeInfo("n2", {ANN_PUBLIC_IP: "203.0.113.7", ANN_BACKEND_DATA: '{"PublicKey":"k=","Port":51830}'})
    >>> advertised_endpoint(node, local_port=51820)
    '203.0.113.7:51830'
"""

from __future__ import annotations

import functools
import json
from ipaddress import IPv4Address, IPv6Address, ip_address

from wgagent.config import MeshConfig
from wgagent.model import ANN_BACKEND_DATA, ANN_BACKEND_V6_DATA, ANN_PUBLIC_IP, ANN_PUBLIC_IPV6, NodeInfo

DEFAULT_PORT = 51820
"""flannel's default ``ListenPort`` (pkg/backend/wireguard/wireguard.go, ``RegisterNetwork``)."""
DEFAULT_PORT_V6 = 51821
"""flannel's default ``ListenPortV6``, the port of ``flannel-wg-v6``."""

REJECT_AFTER_S = 180.0
"""REJECT_AFTER_TIME (wireguard-go device/constants.go; linux drivers/net/wireguard/messages.h): a
session whose handshake is older is dead, so a handshake this old means nothing got through."""
REFRESH_S = 1800.0
"""A report is rewritten at least this often, unchanged or not, so a silent agent shows as stale."""
STALE_AFTER_S = REFRESH_S + 300.0
"""A report older than this is stale: its agent has missed a refresh by five minutes."""
HEAL_AFTER_S = REJECT_AFTER_S
"""An endpoint is set back only when the handshake is older than this (never a live, roamed one)."""
HEAL_MIN_INTERVAL_S = 600.0
"""At most one endpoint reset per peer per this many seconds."""

# The stable cause ids of ``wgagent mesh`` (issue 14): JSON values, kept exactly.
OK = "ok"
INBOUND_BLOCKED_UPSTREAM = "inbound-blocked-upstream"
INBOUND_BLOCKED_HOST = "inbound-blocked-host"
NAT_BOTH_SIDES = "nat-both-sides"
WRONG_ENDPOINT = "wrong-endpoint"
ENDPOINT_DRIFT = "endpoint-drift"
STALE_KEY = "stale-key"
NO_INTERFACE = "no-interface"
NO_REPORT = "no-report"
UNKNOWN = "unknown"
CAUSES = (
    OK,
    INBOUND_BLOCKED_UPSTREAM,
    INBOUND_BLOCKED_HOST,
    NAT_BOTH_SIDES,
    WRONG_ENDPOINT,
    ENDPOINT_DRIFT,
    STALE_KEY,
    NO_INTERFACE,
    NO_REPORT,
    UNKNOWN,
)

STATES = ("ok", "degraded", "down", "unknown")
"""A pair's state: ``degraded`` = the WireGuard session works but a new flow in this direction
would not (so the pair breaks as soon as the other side stops initiating)."""


MeshPolicy = MeshConfig
"""The ``mesh.*`` keys are the policy (``mesh.enabled``, ``publish_interval_s``, ``probe``,
``probe_interval_s``, ``heal_endpoints``): one statement of them, in ``config.py``."""


def parse_port(backend_data: str | None) -> int | None:
    """``Port`` of a backend-data annotation, or None when absent, zero or malformed.

    >>> parse_port('{"PublicKey":"k=","Port":51820}'), parse_port('{"PublicKey":"k="}'), parse_port('"k="')
    (51820, None, None)
    """
    if not backend_data:
        return None
    try:
        value = json.loads(backend_data)
    except ValueError:
        return None
    port = value.get("Port") if isinstance(value, dict) else None
    if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
        return port
    return None


@functools.lru_cache(maxsize=4096)
def parse_ip(text: str | None) -> IPv4Address | IPv6Address | None:
    if not text:
        return None
    try:
        return ip_address(text.strip())
    except ValueError:
        return None


def format_endpoint(ip: IPv4Address | IPv6Address, port: int) -> str:
    """``203.0.113.7:51820`` or ``[2001:db8::7]:51820``, as ``wg show`` and the UAPI write them."""
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def endpoint_ip(endpoint: str | None) -> str | None:
    """The address part of an endpoint string (brackets removed), or None.

    >>> endpoint_ip("[2001:db8::7]:51820"), endpoint_ip("203.0.113.7:51820"), endpoint_ip(None)
    ('2001:db8::7', '203.0.113.7', None)
    """
    if not endpoint:
        return None
    host, sep, _ = endpoint.rpartition(":")
    if not sep:
        return None
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def advertised_endpoint(node: NodeInfo, *, local_port: int | None = None, ipv6: bool = False) -> str | None:
    """``public-ip:Port`` as flannel configures it for this Node's peer, or None without a usable IP."""
    ip = parse_ip(node.annotations.get(ANN_PUBLIC_IPV6 if ipv6 else ANN_PUBLIC_IP))
    if ip is None or ip.version != (6 if ipv6 else 4):
        return None
    port = parse_port(node.annotations.get(ANN_BACKEND_V6_DATA if ipv6 else ANN_BACKEND_DATA))
    if port is None:
        port = local_port or (DEFAULT_PORT_V6 if ipv6 else DEFAULT_PORT)
    return format_endpoint(ip, port)


def advertised_endpoints(node: NodeInfo, *, local_port: int | None = None) -> frozenset[str]:
    """Every endpoint flannel may have set for this Node: IPv4, and IPv6 when advertised.

    flannel's single-device dual-stack mode picks one of the two per peer (``selectMode``), so a
    peer whose endpoint is either is where flannel put it.
    """
    found = {advertised_endpoint(node, local_port=local_port), advertised_endpoint(node, ipv6=True)}
    return frozenset(e for e in found if e is not None)


def is_probe_target(ip: IPv4Address | IPv6Address) -> bool:
    """Whether an advertised address may be probed: unicast, not loopback, link-local or unspecified.

    Private addresses are allowed (a cluster on one LAN advertises them); nothing else is ever a target.

    >>> is_probe_target(ip_address("203.0.113.7")), is_probe_target(ip_address("127.0.0.1"))
    (True, False)
    """
    return not (ip.is_loopback or ip.is_multicast or ip.is_unspecified or ip.is_link_local or ip.is_reserved)
