"""A mesh of flannel WireGuard nodes in memory, for the real mesh part in virtual time.

    mesh = Mesh(public=["a", "b", "c"], nat=["d", "e"], clock=wall(loop))
    part = MeshPart(..., api=mesh.api("a"), cluster=mesh.view, backends=mesh.backends("a"),
                    setters=mesh.setters("a"), host=mesh.host("a"), ...)
    mesh.tick()          # every TICK_S: keepalives, handshakes, roaming, counters

What it models, per node: flannel's ``flannel-wg`` device (peers by key: endpoint, last
handshake, rx/tx bytes, keepalive 25 s, as k3s configures it), the Node object (flannel's
annotations and wgagent's report), the network in front of it, its tap, its nftables
counters. WireGuard, as wireguard-go and the kernel behave (device/timers.go, send.go,
receive.go; drivers/net/wireguard):

- a session (keypair) lives REJECT_AFTER_TIME 180 s after its handshake; with a session, each
  side sends a keepalive every 25 s (persistent keepalive); from REKEY_AFTER_TIME 120 s on,
  or without a session, it sends a handshake initiation every REKEY_TIMEOUT 5 s;
- a packet that authenticates roams the receiver's endpoint for its sender to the address it
  came from; an initiation counts in the receiver's rx bytes even when its response is lost;
- a packet for a key the receiver does not hold (a re-keyed node), or from a key it has no
  peer for, is dropped unseen.

The network: a packet reaches a node when it is sent to the address that node receives on
(its public address; a NAT'd node's router address with the port forward, or, without it, only
as a reply through the mapping its own outbound made: the NAT maps the source port at random,
so two NAT'd nodes cannot punch through). Faults, each a flag: ``path_blocked`` (everything to
the node dropped before it, stateless: an upstream security group), ``host_blocked`` (seen at its
device, dropped by its input filter: a REJECT rule), ``forward`` off (a NAT'd node without
inbound), a wrong ``public-ip`` annotation, endpoints set by hand, a re-key flannel does not
tell the others about, a deleted device.
"""

from __future__ import annotations

import contextlib
import functools
import json
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wgagent.errors import DeviceNotFound
from wgagent.mesh import probe as pb
from wgagent.mesh import report as rp
from wgagent.mesh.part import MeshHost
from wgagent.model import ANN_BACKEND_DATA, ANN_PUBLIC_IP, ClusterView, NodeInfo
from wgagent.wireguard.model import Device, Peer, key_from_bytes

TICK_S = 5.0
KEEPALIVE_S = 25
REKEY_AFTER_S = 120.0
REJECT_AFTER_S = 180.0
CONNTRACK_S = 180.0
PORT = 51820
IF = "flannel-wg"
INIT_BYTES, RESPONSE_BYTES, KEEPALIVE_BYTES = 148, 92, 32
DATA = Path(__file__).resolve().parents[1] / "unit" / "data" / "nft"
RULE = "inet filter input: udp dport 51820 reject with icmpx admin-prohibited (handle 7)"
"""What the part names from ``nft-reject`` (a captured ruleset) for a host that drops probes."""

Addr = tuple[str, int]


@dataclass
class SimPeer:
    key: str
    endpoint: Addr | None
    allowed_ips: tuple[str, ...]
    last_hs: float | None = None
    rx: int = 0
    tx: int = 0
    last_keepalive: float = 0.0


@dataclass
class SimNode:
    name: str
    index: int
    address: str
    """Its own interface address (a NAT'd node's is private)."""
    router: str | None = None
    """A NAT'd node's router (public) address."""
    generation: int = 0
    forward: bool = True
    path_blocked: bool = False
    host_blocked: bool = False
    peers: dict[str, SimPeer] | None = field(default_factory=dict)
    """None: the device is gone."""
    sent_to: dict[Addr, float] = field(default_factory=dict)
    """Conntrack at its NAT: where it sent from its WireGuard port, and when."""
    arrivals: list[pb.Arrival] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=lambda: {"pass": {}, "hs_pre": {}, "hs_post": {}})

    @property
    def key(self) -> str:
        return _key(self.name, self.generation)

    @property
    def public(self) -> str:
        return self.router or self.address

    @property
    def source(self) -> Addr:
        """Where its WireGuard packets appear to come from: its NAT maps the port to a random one
        unless the port is forwarded (then the mapping keeps it)."""
        if self.router is None:
            return (self.address, PORT)
        return (self.router, PORT if self.forward else 40000 + self.index)


@functools.lru_cache(maxsize=256)
def _key(name: str, generation: int) -> str:
    return key_from_bytes(f"{name}.{generation}".encode().ljust(32, b"."))


class Mesh:
    def __init__(self, public: Iterable[str], nat: Iterable[str], clock: Callable[[], float]) -> None:
        self.clock = clock
        self.nodes: dict[str, SimNode] = {}
        for i, name in enumerate(public):
            self.nodes[name] = SimNode(name, i + 1, f"203.0.113.{i + 1}")
        for i, name in enumerate(nat, start=len(self.nodes) + 1):
            self.nodes[name] = SimNode(name, i, f"10.0.{i}.2", router=f"198.51.100.{i}")
        self.sessions: dict[frozenset[str], float] = {}
        """Handshake time per pair of keys: a session both sides hold."""
        self.annotations: dict[str, dict[str, str]] = {n: self._flannel_annotations(n) for n in self.nodes}
        self.writes: dict[str, int] = {n: 0 for n in self.nodes}
        self._view: ClusterView | None = None
        self.rings: dict[str, tuple[socket.socket, socket.socket]] = {}
        """Per node with an open tap: a socket pair that makes the event loop call the part's reader."""
        for name in self.nodes:
            self.flannel_start(name)

    # --- the Node objects, as flannel and wgagent write them -----------------------------------

    def _flannel_annotations(self, name: str) -> dict[str, str]:
        n = self.nodes[name]
        return {ANN_BACKEND_DATA: json.dumps({"PublicKey": n.key, "Port": PORT}), ANN_PUBLIC_IP: n.public}

    def set_annotation(self, name: str, key: str, value: str) -> None:
        self.annotations[name] = {**self.annotations[name], key: value}
        self._view = None

    def view(self) -> ClusterView:
        if self._view is None:
            self._view = ClusterView({n: NodeInfo(n, dict(a)) for n, a in self.annotations.items()})
        return self._view

    def subnet(self, name: str) -> str:
        return f"10.42.{self.nodes[name].index}.0/24"

    # --- flannel -----------------------------------------------------------------------------

    def flannel_peer(self, me: str, other: str) -> SimPeer | None:
        """What flannel's addPeer sets on ``me`` for ``other``, from ``other``'s Node."""
        anns = self.annotations[other]
        try:
            key = json.loads(anns[ANN_BACKEND_DATA])["PublicKey"]
            ip = anns[ANN_PUBLIC_IP]
        except (KeyError, ValueError):
            return None
        return SimPeer(key, (ip, PORT), (self.subnet(other),))

    def flannel_start(self, me: str) -> None:
        """flannel (re)starts on ``me``: ReplacePeers with one per other Node."""
        peers = {}
        for other in self.nodes:
            p = self.flannel_peer(me, other) if other != me else None
            if p is not None:
                peers[p.key] = p
        self.nodes[me].peers = peers

    def flannel_event(self, me: str, other: str) -> None:
        """A lease event for ``other`` reaches flannel on ``me`` (addPeer; v0.26+: no cleanup)."""
        node = self.nodes[me]
        new = self.flannel_peer(me, other)
        if node.peers is None or new is None:
            return
        for p in node.peers.values():  # ReplaceAllowedIPs: the subnet moves to the new peer
            p.allowed_ips = tuple(a for a in p.allowed_ips if a not in new.allowed_ips)
        old = node.peers.get(new.key)
        if old is not None:
            old.endpoint, old.allowed_ips = new.endpoint, new.allowed_ips
        else:
            node.peers[new.key] = new

    def rekey(self, name: str) -> None:
        """``name`` gets a new key: its Node says so, its own sessions end."""
        self.nodes[name].generation += 1
        self.set_annotation(name, ANN_BACKEND_DATA, json.dumps({"PublicKey": self.nodes[name].key, "Port": PORT}))

    # --- the network ---------------------------------------------------------------------------

    def receiver(self, src: SimNode, to: Addr, *, new_flow: bool = False) -> SimNode | None:
        """The node a packet from ``src`` sent to ``to`` arrives at (its device), or None."""
        for n in self.nodes.values():
            if n is src:
                continue
            if n.router is None and to == (n.address, PORT):
                return None if n.path_blocked else n
            if n.router is not None and to[0] == n.router:
                if to[1] == PORT and n.forward:
                    return None if n.path_blocked else n
                reply = not new_flow and to == n.source and src.source in n.sent_to
                fresh = reply and self.clock() - n.sent_to[src.source] < CONNTRACK_S
                return n if fresh and not n.path_blocked else None
        return None

    def _send(self, src: SimNode, to: Addr | None, *, handshake: bool = False) -> SimNode | None:
        """A WireGuard packet from ``src`` to ``to``: the node whose WireGuard gets it, counted."""
        if to is None:
            return None
        src.sent_to[to] = self.clock()
        dst = self.receiver(src, to)
        if dst is None or dst.peers is None:
            return None
        if handshake:
            pre = dst.counts["hs_pre"]
            pre[src.source[0]] = pre.get(src.source[0], 0) + 1
        if dst.host_blocked:
            return None
        if handshake:
            post = dst.counts["hs_post"]
            post[src.source[0]] = post.get(src.source[0], 0) + 1
        return dst

    def _accept(self, dst: SimNode, src: SimNode, key_used: str, nbytes: int, *, data: bool) -> SimPeer | None:
        """``dst`` takes a packet from ``src`` made for ``key_used``: its peer for ``src`` (rx,
        roamed), or None when the keys do not match or (``data``) ``dst`` holds no such session."""
        assert dst.peers is not None
        peer = dst.peers.get(src.key)
        if key_used != dst.key or peer is None:
            return None
        hs = self.sessions.get(frozenset((src.key, dst.key)))
        if data and (hs is None or peer.last_hs != hs or self.clock() - hs >= REJECT_AFTER_S):
            return None
        peer.rx += nbytes
        peer.endpoint = src.source
        return peer

    def tick(self) -> None:
        now = self.clock()
        for me in self.nodes.values():
            for p in list((me.peers or {}).values()):
                self._peer_tick(me, p, now)

    def _peer_tick(self, me: SimNode, p: SimPeer, now: float) -> None:
        hs = self.sessions.get(frozenset((me.key, p.key)))
        alive = hs is not None and now - hs < REJECT_AFTER_S and p.last_hs == hs
        if alive and now - p.last_keepalive >= KEEPALIVE_S:
            p.last_keepalive = now
            p.tx += KEEPALIVE_BYTES
            dst = self._send(me, p.endpoint)
            if dst is not None:
                self._accept(dst, me, p.key, KEEPALIVE_BYTES, data=True)
        if alive and hs is not None and now - hs < REKEY_AFTER_S:
            return
        p.tx += INIT_BYTES
        dst = self._send(me, p.endpoint, handshake=True)
        back = self._accept(dst, me, p.key, INIT_BYTES, data=False) if dst is not None else None
        if dst is None or back is None:
            return
        if self._send(dst, me.source, handshake=True) is me:  # the response, to where it came from
            p.rx += RESPONSE_BYTES
            back.tx += RESPONSE_BYTES
            self.sessions[frozenset((me.key, p.key))] = now
            p.last_hs = back.last_hs = now
            p.last_keepalive = back.last_keepalive = now

    # --- the adapters the part uses, per node --------------------------------------------------

    def device(self, name: str) -> Device:
        n = self.nodes[name]
        if n.peers is None:
            raise DeviceNotFound(f"no interface {IF}")
        peers = tuple(
            Peer(p.key, f"{p.endpoint[0]}:{p.endpoint[1]}" if p.endpoint else None, p.allowed_ips, p.last_hs, p.rx,
                 p.tx, KEEPALIVE_S)
            for p in n.peers.values()
        )  # fmt: skip
        return Device(IF, PORT, n.key, peers)

    def backends(self, name: str) -> Callable[[str, str], Any]:
        return lambda ifname, uapi_dir: _Backend(self, name)

    def setters(self, name: str) -> Callable[[str, str], Any]:
        return lambda ifname, uapi_dir: _Setter(self, name)

    def api(self, name: str) -> _NodeAPI:
        return _NodeAPI(self, name)

    def host(self, name: str) -> MeshHost:
        node = self.nodes[name]
        return MeshHost(
            tap=lambda port: _Tap(self, node),
            counters=lambda: _Counters(node),
            send=lambda me, targets: self.probe(me, targets),
            is_local=lambda ip: ip == node.address,
        )

    def probe(self, me: str, targets: Iterable[pb.Target]) -> dict[str, str | None]:
        src = self.nodes[me]
        for t in targets:
            dst = self.receiver(src, (t.ip, t.port), new_flow=True)
            if dst is None or dst.peers is None or dst.name != t.node:
                continue
            dst.arrivals.append(pb.Arrival(me, src.public, self.clock()))
            if not dst.host_blocked:
                passed = dst.counts["pass"]
                passed[src.public] = passed.get(src.public, 0) + 1
            ring = self.rings.get(dst.name)
            if ring is not None:
                ring[1].send(b"x")
        return {t.node: None for t in targets}

    def report(self, name: str) -> rp.Report | None:
        return rp.decode(self.annotations[name].get(rp.ANNOTATION))


class _Backend:
    kind = "sim"

    def __init__(self, mesh: Mesh, name: str) -> None:
        self.mesh, self.name = mesh, name

    async def get(self, ifname: str) -> Device:
        return self.mesh.device(self.name)

    async def remove_peers(self, ifname: str, keys: Iterable[str]) -> None:
        raise AssertionError("the mesh part never removes peers")


class _Setter:
    def __init__(self, mesh: Mesh, name: str) -> None:
        self.mesh, self.name = mesh, name
        self.calls: list[dict[str, str]] = []

    async def set_endpoints(self, ifname: str, endpoints: Mapping[str, str]) -> None:
        peers = self.mesh.nodes[self.name].peers
        if peers is None:
            raise DeviceNotFound(f"no interface {ifname}")
        for key, endpoint in endpoints.items():
            if key in peers:  # update_only: never creates a peer
                host, _, port = endpoint.rpartition(":")
                peers[key].endpoint = (host, int(port))


class _NodeAPI:
    """The own Node: merge patches of annotations (the only thing the part writes)."""

    def __init__(self, mesh: Mesh, name: str) -> None:
        self.mesh, self.name = mesh, name
        self.source = f"sim:{name}"
        self.fail: Exception | None = None

    async def patch_node(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        assert name == self.name, "a node patches only its own Node"
        if self.fail is not None:
            raise self.fail
        for k, v in patch["metadata"]["annotations"].items():
            self.mesh.set_annotation(name, k, v)
        self.mesh.writes[name] += 1
        return {"metadata": {"name": name, "annotations": dict(self.mesh.annotations[name])}}

    async def close(self) -> None:
        pass


class _Tap:
    """Arrivals at the node's device; a socket pair makes the event loop call the part's reader."""

    def __init__(self, mesh: Mesh, node: SimNode) -> None:
        self.mesh, self.node = mesh, node

    def open(self) -> None:
        pair = socket.socketpair()
        for s in pair:
            s.setblocking(False)
        self.mesh.rings[self.node.name] = pair

    def fileno(self) -> int:
        return self.mesh.rings[self.node.name][0].fileno()

    def drain(self) -> list[pb.Arrival]:
        with contextlib.suppress(BlockingIOError):
            while self.mesh.rings[self.node.name][0].recv(4096):
                pass
        out, self.node.arrivals = self.node.arrivals, []
        return out

    def close(self) -> None:
        for s in self.mesh.rings.pop(self.node.name, ()):
            s.close()


class _Counters:
    def __init__(self, node: SimNode) -> None:
        self.node = node
        self.installed = False

    async def install(self, port: int) -> None:
        self.installed = True

    async def counts(self) -> dict[str, dict[str, int]] | None:
        return {k: dict(v) for k, v in self.node.counts.items()} if self.installed else None

    async def remove(self) -> None:
        self.installed = False

    async def ruleset(self) -> tuple[dict[str, Any], str]:
        return json.loads((DATA / "nft-reject.json").read_text()), (DATA / "nft-reject.txt").read_text()
