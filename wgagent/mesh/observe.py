"""One look at flannel's WireGuard device: for every other Node, how its peer is doing.

:func:`observe` is pure: the device (as either backend read it), the node watch's
:class:`~wgagent.model.ClusterView`, the previous look's memory and ``now`` in; an
:class:`Look` out, with one :class:`PeerView` per other Node that runs flannel's
WireGuard backend::

    obs = observe("n1", device, view, previous=obs.memory if obs else None, now=time.time())

Which Node a peer is: the Node whose current key (``backend-data`` ``PublicKey``) it holds.
A peer holding a key of no Node is an *old key* of Node X when its endpoint is one X
advertises (or its allowed IPs are X's pod CIDRs, when those are known): X re-keyed, and
this device missed the change.

A peer's status (the first that applies):

========== ==================================================================================
missing    the Node's current key has no peer here (``old_key`` set when an old key of it is)
new        never a handshake, but first seen less than 180 s ago (flannel just added it)
down       we keep sending but hear nothing: no handshake for 180 s (REJECT_AFTER_TIME), or,
           with persistent keepalive, nothing received for 2 x keepalive + 15 s
drift      down, and the endpoint is not the one the Node advertises (flannel sets endpoints
           only on lease events and never corrects a roamed, dead one: flannel #1770)
idle       no handshake for 180 s but nothing to send either (no keepalive, tx still): fine
roamed     a live session with an endpoint whose address is not the advertised one: fine for
           now, but new flows to the advertised address go nowhere (a wrong ``public-ip``)
ok         a live session (a port-only change of endpoint is NAT roaming, and fine)
========== ==================================================================================

``since`` is when the status began (carried from look to look in :class:`Memory`), so a
published report changes only when a status does, not with every handshake.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from ipaddress import ip_network

from wgagent.mesh.model import REJECT_AFTER_S, advertised_endpoints, endpoint_ip
from wgagent.model import ANN_BACKEND_DATA, ANN_BACKEND_V6_DATA, ClusterView, NodeInfo, wireguard_key_from_backend_data
from wgagent.wireguard.model import Device, Peer

MISSING = "missing"
NEW = "new"
DOWN = "down"
DRIFT = "drift"
IDLE = "idle"
ROAMED = "roamed"
OK = "ok"
FINE = frozenset({OK, IDLE, NEW})
"""Statuses that a report does not list."""
MISSING_GRACE_S = 60.0
"""A Node's key without a peer is listed only after this long: flannel adds it within seconds."""
RX_QUIET_EXTRA_S = 15.0


@dataclass(frozen=True)
class PeerView:
    """How the peer of one other Node is doing, seen from this node."""

    node: str
    status: str
    since: float
    """Epoch seconds when ``status`` began (or when this agent first saw it so)."""
    key: str | None = None
    """The Node's current key, when it has a peer here."""
    endpoint: str | None = None
    advertised: str | None = None
    """The endpoint flannel configures for this Node (``public-ip:Port``), None when it has no address."""
    handshake_age_s: float | None = None
    rx_delta: int | None = None
    tx_delta: int | None = None
    """Bytes received/sent since the previous look; None at the first look of this peer."""
    rx_quiet_s: float | None = None
    """Seconds since the received bytes last changed (counted from the first look)."""
    old_key: str | None = None
    """An old key of this Node still on the device (it re-keyed and this device missed it)."""

    @property
    def fine(self) -> bool:
        return self.status in FINE


@dataclass(frozen=True)
class Memory:
    """What one look leaves for the next: counters and status changes, by key and by Node."""

    at: float
    counters: Mapping[str, tuple[int, int, float, float, float]] = field(default_factory=dict)
    """key -> (rx_bytes, tx_bytes, when rx last changed, when first seen, when tx last changed)."""
    statuses: Mapping[str, tuple[str, float]] = field(default_factory=dict)
    """node -> (status, since)."""


@dataclass(frozen=True)
class Look:
    node: str
    at: float
    interface: str | None
    """The device looked at; None when there is none."""
    interface_ok: bool
    interface_detail: str = ""
    """Why the interface is not usable (``no interface flannel-wg``), empty when it is."""
    peers: tuple[PeerView, ...] = ()
    """One per other Node with a WireGuard key, sorted by Node name."""
    others: int = 0
    """Peers that are no Node's (current or old) key: peer GC's business, only counted."""
    memory: Memory = field(default_factory=lambda: Memory(0.0))

    def peer(self, node: str) -> PeerView | None:
        for p in self.peers:
            if p.node == node:
                return p
        return None


def node_key(node: NodeInfo, *, ipv6: bool = False) -> str | None:
    """The Node's current key for flannel's IPv4 device (``backend-data``) or IPv6 device."""
    key = wireguard_key_from_backend_data(node.annotations.get(ANN_BACKEND_V6_DATA if ipv6 else ANN_BACKEND_DATA))
    if key is None and not ipv6:  # an IPv6-only cluster has only backend-v6-data
        key = wireguard_key_from_backend_data(node.annotations.get(ANN_BACKEND_V6_DATA))
    return key


def observe(
    me: str,
    device: Device | None,
    view: ClusterView,
    *,
    previous: Memory | None,
    now: float,
    interface_detail: str = "",
) -> Look:
    """This node's view of every other Node's peer on ``device`` (None: there is no device)."""
    if device is None:
        detail = interface_detail or "no WireGuard interface of flannel"
        return Look(me, now, None, False, detail, memory=Memory(now, {}, dict(previous.statuses if previous else {})))
    ipv6 = device.name.endswith("-v6")
    local_port = device.listen_port
    by_key = {p.public_key: p for p in device.peers}
    wanted: dict[str, tuple[str, NodeInfo]] = {}
    for name, info in view.nodes.items():
        key = node_key(info, ipv6=ipv6)
        if name != me and key is not None and key != device.public_key:
            wanted[key] = (name, info)
    old = _old_keys(device, wanted, by_key, local_port)
    prev_counters = previous.counters if previous else {}
    prev_statuses = previous.statuses if previous else {}
    counters: dict[str, tuple[int, int, float, float, float]] = {}
    statuses: dict[str, tuple[str, float]] = {}
    views = []
    for key, (name, info) in wanted.items():
        advertised = advertised_endpoints(info, local_port=local_port)
        primary = _primary(advertised, ipv6)
        peer = by_key.get(key)
        if peer is None:
            view_ = PeerView(name, MISSING, now, advertised=primary, old_key=old.get(name))
        else:
            counters[key] = _counters(peer, prev_counters.get(key), now)
            view_ = _peer_view(name, peer, counters[key], prev_counters.get(key), advertised, primary, now)
        since = _since(prev_statuses.get(name), view_.status, now)
        statuses[name] = (view_.status, since)
        views.append(replace(view_, since=since))
    views.sort(key=lambda v: v.node)
    known = set(wanted) | {k for k in old.values() if k}
    others = sum(1 for p in device.peers if p.public_key not in known)
    return Look(me, now, device.name, True, "", tuple(views), others, Memory(now, counters, statuses))


def _primary(advertised: frozenset[str], ipv6: bool) -> str | None:
    for endpoint in sorted(advertised):
        if endpoint.startswith("[") == ipv6:
            return endpoint
    return min(advertised) if advertised else None


def _since(previous: tuple[str, float] | None, status: str, now: float) -> float:
    return previous[1] if previous is not None and previous[0] == status else now


def _counters(
    peer: Peer, prev: tuple[int, int, float, float, float] | None, now: float
) -> tuple[int, int, float, float, float]:
    if prev is None:
        return (peer.rx_bytes, peer.tx_bytes, now, now, now)
    rx_changed = now if peer.rx_bytes != prev[0] else prev[2]
    tx_changed = now if peer.tx_bytes != prev[1] else prev[4]
    return (peer.rx_bytes, peer.tx_bytes, rx_changed, prev[3], tx_changed)


def _peer_view(
    name: str,
    peer: Peer,
    counters: tuple[int, int, float, float, float],
    prev: tuple[int, int, float, float, float] | None,
    advertised: frozenset[str],
    primary: str | None,
    now: float,
) -> PeerView:
    """The view of a current-key peer (``since`` is filled in by the caller)."""
    age = peer.handshake_age(now)
    rx_delta = peer.rx_bytes - prev[0] if prev is not None else None
    tx_delta = peer.tx_bytes - prev[1] if prev is not None else None
    if (rx_delta is not None and rx_delta < 0) or (tx_delta is not None and tx_delta < 0):
        rx_delta = tx_delta = None  # the peer was re-added: its counters restarted
    rx_quiet = now - counters[2]
    sent_since_heard = counters[4] > counters[2]  # we sent after the last time we heard it
    status = _status(peer, age, tx_delta, rx_quiet, sent_since_heard, counters[3], advertised, now)
    return PeerView(
        name,
        status,
        now,
        key=peer.public_key,
        endpoint=peer.endpoint,
        advertised=primary,
        handshake_age_s=None if age is None else round(age, 1),
        rx_delta=rx_delta,
        tx_delta=tx_delta,
        rx_quiet_s=round(rx_quiet, 1),
    )


def _status(
    peer: Peer,
    age: float | None,
    tx_delta: int | None,
    rx_quiet_s: float,
    sent_since_heard: bool,
    first_seen: float,
    advertised: frozenset[str],
    now: float,
) -> str:
    """The status of a current-key peer (the table in the module doc)."""
    drifted = bool(advertised) and peer.endpoint not in advertised
    if age is not None and age <= REJECT_AFTER_S:
        if _rx_silent(peer, rx_quiet_s, sent_since_heard):
            return DRIFT if drifted else DOWN
        roamed = bool(advertised) and endpoint_ip(peer.endpoint) not in {endpoint_ip(e) for e in advertised}
        return ROAMED if roamed else OK
    if age is None and now - first_seen < REJECT_AFTER_S:
        return NEW
    if not peer.keepalive and not tx_delta:
        # Nothing to send (tx still), or the first look of a peer without keepalive: nothing
        # says it is trying. An idle pair without keepalive never handshakes, and is fine.
        return IDLE
    return DRIFT if drifted else DOWN


def _rx_silent(peer: Peer, rx_quiet_s: float, sent_since_heard: bool) -> bool:
    """With persistent keepalive the other side sends at least every ``keepalive`` seconds
    (flannel configures every node alike; k3s defaults to 25 s): silence for twice that, while
    we have sent since we last heard it, means its packets no longer reach us, well before the
    handshake expires. "Sent since" and not "sent since the last look": a dead peer is sent a
    handshake initiation every 5 s at best (REKEY_TIMEOUT), so between two looks a few
    seconds apart nothing may have gone out, and the peer is not fine for that."""
    if not peer.keepalive or not sent_since_heard:
        return False
    return rx_quiet_s >= 2 * peer.keepalive + RX_QUIET_EXTRA_S


def _old_keys(
    device: Device, wanted: Mapping[str, tuple[str, NodeInfo]], by_key: Mapping[str, Peer], local_port: int | None
) -> dict[str, str]:
    """node -> an old key of it on the device: a peer holding no current key whose endpoint that
    Node advertises (unambiguously), or whose allowed IPs lie in its pod CIDRs (when known)."""
    missing = {name: info for key, (name, info) in wanted.items() if key not in by_key}
    if not missing:
        return {}
    by_endpoint: dict[str, list[str]] = {}
    for name, info in missing.items():
        for endpoint in advertised_endpoints(info, local_port=local_port):
            by_endpoint.setdefault(endpoint, []).append(name)
    found: dict[str, str] = {}
    for peer in device.peers:
        if peer.public_key in wanted or peer.public_key == device.public_key:
            continue
        owners = by_endpoint.get(peer.endpoint or "", [])
        owner = owners[0] if len(owners) == 1 else _owner_by_cidr(peer, missing)
        if owner is not None and owner not in found:
            found[owner] = peer.public_key
    return found


def _owner_by_cidr(peer: Peer, nodes: Mapping[str, NodeInfo]) -> str | None:
    for name, info in nodes.items():
        for cidr in info.pod_cidrs:
            try:
                net = ip_network(cidr, strict=False)
                if any(ip_network(a, strict=False).subnet_of(net) for a in peer.allowed_ips):  # type: ignore[arg-type]
                    return name
            except (ValueError, TypeError):
                continue
    return None


def listed(view: PeerView, now: float) -> bool:
    """Whether a report lists this peer: not fine, and (for a missing key) past the grace."""
    if view.fine:
        return False
    return view.status != MISSING or now - view.since >= MISSING_GRACE_S
