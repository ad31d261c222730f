"""The ``wireguard_interface`` check: is flannel's WireGuard device there, up and listening?

For each interface (``wireguard.interface``; ``auto`` = flannel's, see ``backend.py``) it
reports: exists and up; the listen port bound (the seed's ``netstat -ulnp`` check, read from
``/proc/net/udp`` and ``udp6``); peer count; peers with a handshake in the last 180 s
(WireGuard's reject-after time); transfer totals; and the peers of live Nodes that are
unreachable. :func:`interface_facts` decides from plain data, so doctor reuses it::

    >>> from wgagent.wireguard.backend import Link
    >>> dev = Device("flannel-wg", 51820, None, ())
    >>> f = interface_facts(Link("flannel-wg", True, True, "wireguard"), dev, frozenset({51820}),
    ...                     None, now=0.0, expected_port=51820, backend="netlink")
    >>> f.ok, f.detail()
    (True, 'flannel-wg: up, listening on UDP 51820, 0 peers (0 with a handshake in the last 180 s)')

Unreachable live nodes are reported, not failed on: one dead node must not turn every
other node's health red. A missing or down interface, or an unbound port, fails the check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from wgagent.config import WireGuardConfig
from wgagent.errors import WireGuardError
from wgagent.model import ClusterView
from wgagent.part import Part
from wgagent.state import State
from wgagent.wireguard.backend import (
    BackendFactory,
    HostNet,
    Link,
    has_uapi_socket,
    resolve_interfaces,
)
from wgagent.wireguard.model import REJECT_AFTER_S, Device

log = logging.getLogger(__name__)

HANDSHAKE_FRESH_S = REJECT_AFTER_S
_MAX_LISTED = 50


def parse_udp_ports(text: str) -> frozenset[int]:
    """Local ports of the sockets in a ``/proc/net/udp`` or ``udp6`` table.

    >>> parse_udp_ports("  sl  local_address rem_address ...\\n 8813: 00000000:CA6C 00000000:0000 07 ...\\n")
    frozenset({51820})
    """
    ports = set()
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 3 or not cols[0].endswith(":"):
            continue
        _, sep, port = cols[1].rpartition(":")
        if not sep:
            continue
        try:
            ports.add(int(port, 16))
        except ValueError:
            continue
    return frozenset(ports)


def bound_udp_ports(tables: Iterable[str]) -> frozenset[int]:
    ports: frozenset[int] = frozenset()
    for text in tables:
        ports |= parse_udp_ports(text)
    return ports


def expected_port(ifname: str, cfg: WireGuardConfig) -> int:
    """flannel's IPv6 device listens one above the IPv4 one (51820/51821)."""
    return cfg.listen_port + 1 if ifname == "flannel-wg-v6" else cfg.listen_port


@dataclass(frozen=True)
class UnreachablePeer:
    node: str
    public_key: str
    endpoint: str | None
    last_handshake: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "public_key": self.public_key,
            "endpoint": self.endpoint,
            "last_handshake": self.last_handshake,
        }


@dataclass(frozen=True)
class InterfaceFacts:
    name: str
    backend: str | None
    exists: bool
    up: bool
    expected_port: int
    device_port: int | None = None
    port_bound: bool = False
    peers: int = 0
    active: int = 0
    """Peers with a handshake in the last 180 s."""
    rx_bytes: int = 0
    tx_bytes: int = 0
    unreachable: tuple[UnreachablePeer, ...] = ()
    """Peers holding a live Node's current key with no handshake in the last 180 s."""
    nodes_without_peer: tuple[str, ...] = ()
    """Live Nodes with a WireGuard key that is no peer here (flannel has not added them)."""
    cluster_known: bool = False
    error: str | None = None
    """Why the device could not be read."""

    @property
    def problems(self) -> list[str]:
        if not self.exists:
            return [self.error or f"{self.name} does not exist"]
        out = []
        if not self.up:
            out.append(f"{self.name} is down")
        if self.error:
            out.append(self.error)
        if self.device_port is not None and self.device_port != self.expected_port:
            out.append(
                f"{self.name} listens on UDP {self.device_port}, not {self.expected_port} (wireguard.listen_port)"
            )
        if not self.port_bound:
            out.append(f"nothing listens on UDP {self.expected_port}")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems

    def detail(self) -> str:
        problems = self.problems
        if problems and (not self.exists or self.error):
            return "; ".join(problems)
        head = "; ".join(problems) if problems else f"{self.name}: up, listening on UDP {self.expected_port}"
        text = f"{head}, {self.peers} peers ({self.active} with a handshake in the last {HANDSHAKE_FRESH_S:g} s)"
        if self.unreachable:
            names = sorted({u.node for u in self.unreachable})
            listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            text += f"; live nodes unreachable: {listed}"
        if self.nodes_without_peer:
            n = self.nodes_without_peer
            text += f"; nodes with no peer here: {', '.join(n[:5])}" + (f" and {len(n) - 5} more" if len(n) > 5 else "")
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "backend": self.backend,
            "exists": self.exists,
            "up": self.up,
            "listen_port": self.device_port,
            "expected_port": self.expected_port,
            "port_bound": self.port_bound,
            "peers": self.peers,
            "active_peers": self.active,
            "rx_bytes": self.rx_bytes,
            "tx_bytes": self.tx_bytes,
            "node_list": "known" if self.cluster_known else "unknown",
            "unreachable": [u.to_json() for u in self.unreachable[:_MAX_LISTED]],
            "unreachable_count": len(self.unreachable),
            "nodes_without_peer": list(self.nodes_without_peer[:_MAX_LISTED]),
            "problems": self.problems,
        }


def interface_facts(
    link: Link,
    device: Device | None,
    bound_ports: frozenset[int],
    cluster: ClusterView | None,
    *,
    now: float,
    expected_port: int,
    backend: str | None,
    error: str | None = None,
    own_node: str | None = None,
) -> InterfaceFacts:
    """Everything the check reports about one interface, from plain data."""
    exists = link.exists or device is not None
    if device is None:
        return InterfaceFacts(
            link.name, backend, exists, link.up, expected_port, port_bound=expected_port in bound_ports, error=error
        )
    active = sum(1 for p in device.peers if (age := p.handshake_age(now)) is not None and age <= HANDSHAKE_FRESH_S)
    unreachable = _unreachable(device, cluster, now) if cluster is not None else []
    without_peer = _nodes_without_peer(device, cluster, own_node) if cluster is not None else []
    return InterfaceFacts(
        name=link.name,
        backend=backend,
        exists=exists,
        # A userspace device reports no state of its own here; its tun link's flags do.
        up=link.up,
        expected_port=expected_port,
        device_port=device.listen_port,
        port_bound=expected_port in bound_ports,
        peers=len(device.peers),
        active=active,
        rx_bytes=sum(p.rx_bytes for p in device.peers),
        tx_bytes=sum(p.tx_bytes for p in device.peers),
        unreachable=tuple(sorted(unreachable, key=lambda u: (u.node, u.public_key))),
        nodes_without_peer=tuple(without_peer),
        cluster_known=cluster is not None,
        error=error,
    )


def _unreachable(device: Device, cluster: ClusterView, now: float) -> list[UnreachablePeer]:
    """Peers of current Node keys (not this device's own) without a handshake in 180 s."""
    live = cluster.current_keys
    found: list[UnreachablePeer] = []
    for p in device.peers:
        if p.public_key not in live or p.public_key == device.public_key:
            continue
        age = p.handshake_age(now)
        if age is None or age > HANDSHAKE_FRESH_S:
            found.append(
                UnreachablePeer(cluster.owner_of(p.public_key) or "?", p.public_key, p.endpoint, p.last_handshake)
            )
    return found


def _nodes_without_peer(device: Device, cluster: ClusterView, own_node: str | None) -> list[str]:
    """Other Nodes with a WireGuard key of which the device has no peer, by name."""
    present = {p.public_key for p in device.peers}
    missing: list[str] = []
    for node in sorted(cluster.nodes.values(), key=lambda n: n.name):
        keys = node.wireguard_keys
        if not keys or node.name == own_node or (device.public_key is not None and device.public_key in keys):
            continue
        if not keys & present:
            missing.append(node.name)
    return missing


@dataclass(frozen=True)
class DeviceRead:
    """One interface as read now: its link, its device (None if unreadable) and why not."""

    link: Link
    device: Device | None
    backend: str | None
    """The backend's ``kind``; None when no backend was asked (no link, no socket)."""
    error: str | None


async def read_device(name: str, uapi_dir: str, net: HostNet, backend_factory: BackendFactory) -> DeviceRead:
    """Read ``name`` through the backend that serves it; errors are in the result, not raised."""
    link = net.link(name)
    if not (link.exists or has_uapi_socket(uapi_dir, name)):
        return DeviceRead(link, None, None, f"{name} does not exist")
    backend = backend_factory(name, uapi_dir)
    try:
        return DeviceRead(link, await backend.get(name), backend.kind, None)
    except WireGuardError as exc:
        return DeviceRead(link, None, backend.kind, str(exc))


async def gather_interfaces(
    cfg: WireGuardConfig,
    cluster: ClusterView | None,
    *,
    net: HostNet,
    backend_factory: BackendFactory,
    now: float,
    own_node: str | None = None,
) -> tuple[list[InterfaceFacts], str]:
    """Facts for every interface to watch, and the note when ``auto`` found none."""
    names, note = resolve_interfaces(cfg.interface, net, cfg.uapi_dir)
    bound = bound_udp_ports(net.udp_tables())
    out = []
    for name in names:
        read = await read_device(name, cfg.uapi_dir, net, backend_factory)
        out.append(
            interface_facts(
                read.link,
                read.device,
                bound,
                cluster,
                now=now,
                expected_port=expected_port(name, cfg),
                backend=read.backend,
                error=read.error,
                own_node=own_node,
            )
        )
    return out, note


class InterfacePart(Part):
    name = "wireguard_interface"
    checks = ("wireguard_interface",)

    def __init__(
        self,
        state: State,
        cfg: WireGuardConfig,
        cluster: Callable[[], ClusterView | None],
        net: HostNet,
        backends: BackendFactory,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(state)
        self.cfg = cfg
        self.cluster = cluster
        self.interval_s = cfg.interface_check_interval_s
        self.net = net
        self.backend_factory = backends
        self.clock = clock

    async def reconcile(self) -> None:
        facts, note = await gather_interfaces(
            self.cfg,
            self.cluster(),
            net=self.net,
            backend_factory=self.backend_factory,
            now=self.clock(),
            own_node=self.state.node,
        )
        if not facts:
            self.state.set_check("wireguard_interface", False, note)
            self.state.set_part(self.name, {"interfaces": [], "note": note})
            return
        ok = all(f.ok for f in facts)
        self.state.set_check("wireguard_interface", ok, "; ".join(f.detail() for f in facts))
        self.state.set_part(self.name, {"interfaces": [f.to_json() for f in facts]})
