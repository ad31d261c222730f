"""flannel's WireGuard backend, as a stand-in for labs that run wireguard-go: which peers it
puts on ``flannel-wg``, from which Node objects, and when.

Pure part (no I/O): :func:`lease_of` (a Node as flannel reads it), :func:`add_peer` /
:func:`remove_peer` (one lease event on a device's peer set), :func:`at_start` (a flannel
start), :func:`update_event` (whether a Node update reaches the backend). The applier,
:class:`FlannelDevice`, sends the same changes to a wireguard-go device over UAPI when the
lab tells it a Node was added, updated or deleted, as flannel's informer would.

Upstream, read at flannel tags v0.25.7, v0.26.0, v0.26.6, v0.26.7 and v0.28.4:

- ``pkg/subnet/kube/kube.go``: Nodes without ``kube-subnet-manager: "true"`` are ignored;
  ``nodeToLease`` needs a parseable ``public-ip`` (and ``public-ipv6`` on an IPv6 cluster);
  the update filter (``handleUpdateLeaseEvent``) passes an update only when backend-data,
  backend-type or public-ip changed, and on a dual-stack cluster only when both families
  changed; a Node delete is a removal with the deleted Node's lease.
- ``pkg/subnet/subnet.go`` ``WatchLeases`` / ``pkg/lease`` ``LeaseWatcher``: the node's own
  lease (same subnet) never becomes a peer; the informer's first list is one add per Node.
- ``pkg/backend/wireguard/device.go``: the device is created with ``ReplacePeers`` (start:
  no peers), ``addPeer`` sets key, endpoint, keepalive and ``ReplaceAllowedIPs`` with the
  lease subnet; up to v0.25.x it then runs ``cleanupEndpointPeers``: every other peer whose
  *current* endpoint IP equals the new peer's is removed (PR #2073 dropped it in v0.26.0);
  ``removePeer`` removes by key, only on a removal event.
- ``pkg/backend/wireguard/wireguard_network.go``: endpoint ``public-ip:port``, the port from
  backend-data ``Port`` since v0.26.6 (0 or absent: the local listen port), the local listen
  port before; separate mode (the default): ``flannel-wg`` for IPv4, ``flannel-wg-v6``
  (port 51821) for IPv6.
- k3s ``pkg/agent/flannel/setup.go``: ``PersistentKeepaliveInterval: 25``.
- WireGuard itself: an allowed IP belongs to one peer; giving it to another takes it away
  (``wg show`` then lists the old peer with ``(none)``).

Flannel never corrects an endpoint that WireGuard roamed: nothing here runs unless an event
comes (flannel issue #1770).

    >>> nodes = [node("a", "198.51.100.1", "10.42.0.0/24", "KA"), node("b", "198.51.100.2", "10.42.1.0/24", "KB")]
    >>> at_start(nodes, own="a")
    {'KB': Peer(key='KB', endpoint='198.51.100.2:51820', allowed_ips=('10.42.1.0/24',), keepalive_s=25)}
"""

from __future__ import annotations

import base64
import ipaddress
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from tests.kubeapi.upstream import FlannelVersion, flannel_cleans_endpoint_peers, flannel_publishes_port

FLANNEL = "flannel.alpha.coreos.com/"
LISTEN_PORT = 51820
LISTEN_PORT_V6 = 51821
KEEPALIVE_S = 25
DEFAULT_VERSION = FlannelVersion(0, 26, 7)
"""What k3s v1.32.4+k3s1 ships (tests/kubeapi/upstream.py ``flannel_of_k3s``)."""
Obj = dict[str, Any]


class Peer(NamedTuple):
    key: str
    """Base64, as in backend-data."""
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    keepalive_s: int | None = KEEPALIVE_S


@dataclass(frozen=True)
class Lease:
    """What flannel's ``nodeToLease`` makes of a Node, for one address family."""

    node: str
    backend_type: str
    public_ip: str
    subnet: str
    key: str
    port: int
    """backend-data's ``Port``; 0 when absent (flannel < v0.26.6 writes none)."""


@dataclass(frozen=True)
class Flannel:
    """One node's flannel: its version and the family of the device (``flannel-wg`` is IPv4)."""

    version: FlannelVersion = DEFAULT_VERSION
    ipv6: bool = False
    """The ``flannel-wg-v6`` device of a dual-stack or IPv6 cluster."""
    listen_port: int = LISTEN_PORT
    keepalive_s: int | None = KEEPALIVE_S

    @property
    def own_port(self) -> int:
        return LISTEN_PORT_V6 if self.ipv6 and self.listen_port == LISTEN_PORT else self.listen_port


def node(
    name: str,
    public_ip: str,
    subnet: str,
    key: str,
    *,
    port: int | None = 51820,
    v6_subnet: str | None = None,
    more: Mapping[str, str] | None = None,
) -> Obj:
    """A Node object as flannel leaves it (for tests and labs): IPv4 only unless ``more`` adds
    flannel annotations by their short names (``public-ipv6``, ``backend-v6-data``...)."""
    data: dict[str, Any] = {"PublicKey": key} if port is None else {"PublicKey": key, "Port": port}
    anns = {
        FLANNEL + "kube-subnet-manager": "true",
        FLANNEL + "backend-type": "wireguard",
        FLANNEL + "backend-data": json.dumps(data, separators=(",", ":")),
        FLANNEL + "public-ip": public_ip,
    }
    anns.update({FLANNEL + k: v for k, v in (more or {}).items()})
    cidrs = [subnet] + ([v6_subnet] if v6_subnet else [])
    return {"metadata": {"name": name, "annotations": anns}, "spec": {"podCIDR": subnet, "podCIDRs": cidrs}}


def lease_of(obj: Obj, fl: Flannel) -> Lease | None:
    """``nodeToLease`` for ``fl``'s family, or None when flannel ignores the Node (not
    kube-subnet-managed, not wireguard, or an annotation it cannot parse)."""
    anns = obj["metadata"].get("annotations") or {}
    if anns.get(FLANNEL + "kube-subnet-manager") != "true":
        return None
    suffix = "ipv6" if fl.ipv6 else "ip"
    data_key = "backend-v6-data" if fl.ipv6 else "backend-data"
    try:
        public_ip = ipaddress.ip_address(anns[FLANNEL + "public-" + suffix])
        data = json.loads(anns[FLANNEL + data_key])
        key = str(data["PublicKey"])
        subnet = next(c for c in (obj.get("spec") or {}).get("podCIDRs") or [(obj.get("spec") or {}).get("podCIDR")]
                      if c and (":" in c) == fl.ipv6)  # fmt: skip
    except (KeyError, ValueError, TypeError, StopIteration):
        return None
    if public_ip.version != (6 if fl.ipv6 else 4):
        return None
    return Lease(obj["metadata"]["name"], str(anns.get(FLANNEL + "backend-type", "")), str(public_ip), subnet, key,
                 int(data.get("Port") or 0))  # fmt: skip


def endpoint(lease: Lease, fl: Flannel) -> str:
    """``public-ip:port`` as flannel builds it (wireguard_network.go ``handleSubnetEvents``)."""
    port = (lease.port or fl.own_port) if flannel_publishes_port(fl.version) else fl.own_port
    host = f"[{lease.public_ip}]" if ":" in lease.public_ip else lease.public_ip
    return f"{host}:{port}"


def _host(ep: str | None) -> str | None:
    if ep is None:
        return None
    return ep.rsplit(":", 1)[0].strip("[]")


def add_peer(peers: Mapping[str, Peer], lease: Lease, fl: Flannel) -> dict[str, Peer]:
    """One ``EventAdded`` on a device whose peers are ``peers`` (by key): flannel's
    ``addPeer`` (and ``cleanupEndpointPeers`` up to v0.25.x). A non-wireguard lease is
    ignored ("Ignoring non-wireguard subnet")."""
    if lease.backend_type != "wireguard":
        return dict(peers)
    ep = endpoint(lease, fl)
    out = {k: p._replace(allowed_ips=tuple(a for a in p.allowed_ips if a != lease.subnet)) for k, p in peers.items()}
    out[lease.key] = Peer(lease.key, ep, (lease.subnet,), fl.keepalive_s)
    if flannel_cleans_endpoint_peers(fl.version):
        out = {k: p for k, p in out.items() if k == lease.key or _host(p.endpoint) != _host(ep)}
    return out


def remove_peer(peers: Mapping[str, Peer], lease: Lease) -> dict[str, Peer]:
    """One ``EventRemoved`` (a deleted Node): ``removePeer`` with the lease's key."""
    return {k: p for k, p in peers.items() if k != lease.key}


def _is_own(lease: Lease, own_subnet: str | None) -> bool:
    return own_subnet is not None and lease.subnet == own_subnet


def at_start(nodes: Iterable[Obj], *, own: str, fl: Flannel | None = None) -> dict[str, Peer]:
    """The peers right after flannel starts on ``own``: the device made with ``ReplacePeers``,
    then one add per other Node, in the order the informer's list returns them (by name)."""
    fl = fl or Flannel()
    objs = sorted(nodes, key=lambda n: n["metadata"]["name"])
    mine = next((lease_of(n, fl) for n in objs if n["metadata"]["name"] == own), None)
    peers: dict[str, Peer] = {}
    for obj in objs:
        lease = lease_of(obj, fl)
        if lease is not None and obj["metadata"]["name"] != own and not _is_own(lease, mine.subnet if mine else None):
            peers = add_peer(peers, lease, fl)
    return peers


def update_event(old: Obj, new: Obj, *, dual_stack: bool) -> bool:
    """``handleUpdateLeaseEvent``: whether a Node update becomes an ``EventAdded``. Only
    backend-data, backend-type and public-ip count; on a dual-stack cluster both families must
    have changed (each family's "unchanged" test clears the flag)."""
    a, b = (o["metadata"].get("annotations") or {} for o in (old, new))
    if b.get(FLANNEL + "kube-subnet-manager") != "true":
        return False

    def same(*keys: str) -> bool:
        return all(a.get(FLANNEL + k) == b.get(FLANNEL + k) for k in keys)

    changed = not same("backend-data", "backend-type", "public-ip")
    if dual_stack and same("backend-v6-data", "backend-type", "public-ipv6"):
        changed = False
    return changed


# --- the applier ---------------------------------------------------------------------------------


def uapi_peer_lines(peer: Peer) -> list[str]:
    """wgctrl's ``PeerConfig`` for an ``addPeer`` as UAPI ``set`` lines (hex keys)."""
    lines = [f"public_key={_hex(peer.key)}"]
    if peer.endpoint:
        lines.append(f"endpoint={peer.endpoint}")
    lines.append(f"persistent_keepalive_interval={peer.keepalive_s or 0}")
    lines.append("replace_allowed_ips=true")
    lines += [f"allowed_ip={a}" for a in peer.allowed_ips]
    return lines


def _hex(key: str) -> str:
    return base64.b64decode(key).hex()


@dataclass
class FlannelDevice:
    """flannel's peer handling on one wireguard-go device, driven by the lab's Node events.

    ``uapi_set(lines)`` sends one ``set=1`` transaction; ``uapi_get()`` returns the device's
    peers as ``{key: endpoint}`` (for v0.25.x's cleanup, which looks at current endpoints,
    roamed ones included). Typically ``functools.partial(labkit.uapi_set, uapi_dir,
    ifname="flannel-wg")`` and a parse of ``labkit.uapi(uapi_dir, "get=1\\n\\n", ...)``.
    """

    own: str
    uapi_set: Callable[[Sequence[str]], None]
    uapi_get: Callable[[], Mapping[str, str | None]]
    fl: Flannel = Flannel()
    own_subnet: str | None = None

    def start(self, nodes: Iterable[Obj]) -> dict[str, Peer]:
        """flannel (re)starts: all peers replaced by those of the Nodes (``ReplacePeers``)."""
        objs = list(nodes)
        mine = next((lease_of(n, self.fl) for n in objs if n["metadata"]["name"] == self.own), None)
        self.own_subnet = mine.subnet if mine else None
        peers = at_start(objs, own=self.own, fl=self.fl)
        self.uapi_set(["replace_peers=true", *(line for p in peers.values() for line in uapi_peer_lines(p))])
        return peers

    def node_added(self, obj: Obj) -> None:
        """An ``EventAdded`` (a new Node, or an update that passed :func:`update_event`)."""
        lease = lease_of(obj, self.fl)
        if lease is None or obj["metadata"]["name"] == self.own or _is_own(lease, self.own_subnet):
            return
        if lease.backend_type != "wireguard":
            return
        current = {k: Peer(k, ep, ()) for k, ep in self.uapi_get().items()}
        after = add_peer(current, lease, self.fl)
        gone = [k for k in current if k not in after]
        lines = uapi_peer_lines(after[lease.key])
        for key in gone:  # cleanupEndpointPeers (flannel <= v0.25.x), one transaction after the add
            lines += [f"public_key={_hex(key)}", "remove=true"]
        self.uapi_set(lines)

    def node_updated(self, old: Obj, new: Obj, *, dual_stack: bool = False) -> bool:
        """A Node update: an add when :func:`update_event` lets it through; whether it did."""
        if not update_event(old, new, dual_stack=dual_stack):
            return False
        self.node_added(new)
        return True

    def node_deleted(self, obj: Obj) -> None:
        """A Node delete: ``removePeer`` with that Node's current key."""
        lease = lease_of(obj, self.fl)
        if lease is not None and obj["metadata"]["name"] != self.own:
            self.uapi_set([f"public_key={_hex(lease.key)}", "remove=true"])


def wireguard_go(uapi_dir: str, ifname: str = "flannel-wg") -> tuple[Callable[[Sequence[str]], None],
                                                                     Callable[[], dict[str, str | None]]]:  # fmt: skip
    """``(uapi_set, uapi_get)`` for :class:`FlannelDevice` on a lab's wireguard-go device."""
    from tests import labkit
    from wgagent.wireguard.uapi import parse_get

    def uapi_set(lines: Sequence[str]) -> None:
        labkit.uapi_set(uapi_dir, lines, ifname=ifname)

    def uapi_get() -> dict[str, str | None]:
        device = parse_get(labkit.uapi(uapi_dir, "get=1\n\n", ifname=ifname), ifname)
        return {p.public_key: p.endpoint for p in device.peers}

    return uapi_set, uapi_get
