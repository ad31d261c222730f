"""What the lab looks like now, what it should look like, and the table that shows both.

    snap = observe(cluster)            # one look at every node: /status, /healthz, device, Node
    problems(cluster, snap)            # [] once the end state is reached; else what is not yet right
    print(render(cluster, snap))       # the live table

The facts come from where they live, not from wgagent's own opinion alone: the drop-in from
the file, the annotations from the API stand-in, the peers from wireguard-go's UAPI socket,
the restarts from the fake systemctl's log; wgagent's ``/status`` adds what it decided and why.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from tests.cluster import systemctl
from tests.cluster.cluster import FLANNEL, LIVE_HANDSHAKE_S, MAX_RESTARTS, NODES, Cluster, Node, device
from tests.labkit import LabError
from wgagent.wireguard.model import Peer


@dataclass
class NodeState:
    name: str
    role: str
    running: bool
    healthz: int
    """0 when nothing answered."""
    failing: list[str]
    status: dict[str, Any] | None
    dropin: str | None
    overwrite: str | None
    public_ip: str | None
    peers: dict[str, Peer]
    """Every peer on its flannel-wg, by public key."""
    restarts: int
    device_error: str | None = None

    def check(self, name: str) -> dict[str, Any]:
        return dict(((self.status or {}).get("checks") or {}).get(name) or {})

    def part(self, name: str) -> dict[str, Any]:
        return dict(((self.status or {}).get("parts") or {}).get(name) or {})

    def decided(self) -> tuple[str | None, str]:
        """The adopted IPv4 address and how it was found (``metadata:aliyun``, ``interface``...)."""
        section = self.part("public_ip")
        adopted = (section.get("adopted") or {}).get("ipv4")
        decision = section.get("decision") or {}
        method = (decision.get("method") or {}).get("ipv4") or "-"
        agreed = [v for v in decision.get("agreed") or [] if v.get("ip") == adopted]
        if method == "metadata":
            method = next((v["source"] for v in agreed if str(v.get("source", "")).startswith("metadata:")), method)
        return adopted, f"{method}, {len(agreed)} agree" if agreed else method


@dataclass
class Snapshot:
    at: float = field(default_factory=time.time)
    nodes: dict[str, NodeState] = field(default_factory=dict)
    api_error: str | None = None


def observe(cluster: Cluster) -> Snapshot:
    snap = Snapshot()
    try:
        objects = cluster.node_objects()
    except (LabError, OSError, TimeoutError, ValueError) as exc:
        objects, snap.api_error = {}, str(exc)
    for node in cluster.nodes.values():
        snap.nodes[node.name] = _node_state(cluster, node, objects.get(node.name))
    return snap


def _node_state(cluster: Cluster, node: Node, obj: dict[str, Any] | None) -> NodeState:
    code, body = cluster.http(node, "/healthz")
    failing: list[str] = []
    if code:
        try:
            failing = sorted(name for name, c in json.loads(body).get("checks", {}).items() if not c.get("ok"))
        except (ValueError, AttributeError):
            failing = ["<not JSON>"]
    status = None
    scode, sbody = cluster.http(node, "/status")
    if scode == 200:
        try:
            status = json.loads(sbody)
        except ValueError:
            status = None
    try:
        with open(node.dropin) as f:
            dropin: str | None = f.read()
    except OSError:
        dropin = None
    anns = ((obj or {}).get("metadata") or {}).get("annotations") or {}
    peers: dict[str, Peer] = {}
    device_error = None
    try:
        peers = {p.public_key: p for p in device(node).peers}
    except (OSError, ValueError) as exc:
        device_error = str(exc)
    return NodeState(
        name=node.name,
        role=node.spec.role,
        running=node.agent is not None and node.agent.alive(),
        healthz=code,
        failing=failing,
        status=status,
        dropin=dropin,
        overwrite=anns.get(FLANNEL + "public-ip-overwrite"),
        public_ip=anns.get(FLANNEL + "public-ip"),
        peers=peers,
        restarts=len(systemctl.restarts(node.systemctl_dir)),
        device_error=device_error,
    )


def expected_failing(cluster: Cluster) -> list[str]:
    """The checks that must fail here: only the module check, and only on a kernel without WireGuard."""
    return [] if cluster.kernel_wireguard else ["wireguard_module"]


def problems(cluster: Cluster, snap: Snapshot) -> list[str]:
    """Every way ``snap`` differs from the lab's expected end state; [] when it is reached."""
    out: list[str] = []
    if snap.api_error:
        out.append(f"API stand-in: {snap.api_error}")
    live = {n.public_key: n.name for n in cluster.nodes.values()}
    for spec in NODES:
        node, st = cluster.nodes[spec.name], snap.nodes[spec.name]

        def say(text: str, name: str = spec.name) -> None:
            out.append(f"{name}: {text}")

        if not st.running:
            say("wgagent is not running")
        decided, _ = st.decided()
        if decided != spec.public_ip:
            say(f"public IP decided {decided}, expected {spec.public_ip}")
        for obs in st.part("public_ip").get("observations") or []:
            if obs.get("error"):  # every source here is a stand-in that must answer
                say(f"public IP source {obs.get('source')} failed: {obs['error']}")
        if st.dropin != node.expected_dropin():
            say("drop-in missing" if st.dropin is None else "drop-in differs from render_dropin() for the address")
        # flannel must publish the address; the overwrite is needed only where flannel's own pick
        # (the interface address) is not it, and k3s sets it only with flannel-external-ip in force
        # at its start (a node whose k3s started before the server's drop-in may have none)
        if st.public_ip != spec.public_ip or st.overwrite not in (None, spec.public_ip):
            say(f"public-ip {st.public_ip}, public-ip-overwrite {st.overwrite}; want {spec.public_ip} "
                "(the overwrite that, or none)")  # fmt: skip
        if st.device_error:
            say(f"flannel-wg: {st.device_error}")
        want = {k for k, name in live.items() if name != spec.name}
        if set(st.peers) - want:
            say(f"{len(set(st.peers) - want)} peer(s) of no live node still on flannel-wg")
        for key in sorted(want):
            peer = st.peers.get(key)
            if peer is None:
                say(f"live peer {live[key]} was removed")
                continue
            hs = peer.last_handshake
            if hs is None or snap.at - hs > LIVE_HANDSHAKE_S:
                say(f"no handshake with {live[key]} in the last {LIVE_HANDSHAKE_S} s")
            other = cluster.nodes[live[key]].spec
            if other.address != other.public_ip and not str(peer.endpoint).startswith(f"{other.public_ip}:"):
                # configured from the 10.x public-ip: only a handshake through the NAT changes it
                say(f"peer {other.name}'s endpoint is {peer.endpoint}, not {other.public_ip} (nat1's NAT address)")
        if st.healthz == 0:
            say("/healthz does not answer")
        elif st.failing != expected_failing(cluster):
            expected = expected_failing(cluster) or "none"
            say(f"/healthz {st.healthz}: failing {st.failing or 'none'}, expected {expected}")
        if st.restarts > MAX_RESTARTS:
            say(f"k3s restarted {st.restarts} times (at most {MAX_RESTARTS} expected)")
    return out


# --- the table --------------------------------------------------------------------------------------


def _cols(st: NodeState, cluster: Cluster, now: float) -> list[str]:
    spec = cluster.nodes[st.name].spec
    decided, how = st.decided()
    ip = f"{decided} ({how})" if decided else "undecided"
    if st.dropin is None:
        dropin = "missing"
    else:
        dropin = "written, right" if st.dropin == cluster.nodes[st.name].expected_dropin() else "written, WRONG"
    if st.overwrite == st.public_ip == spec.public_ip:
        annotation = "in sync"
    else:
        annotation = f"overwrite {st.overwrite or '-'}, public-ip {st.public_ip or '-'}"
    module = str(st.part("wireguard_module").get("state") or "?")
    live = {n.public_key for n in cluster.nodes.values() if n.name != st.name}
    alive = sum(
        1
        for k, p in st.peers.items()
        if k in live and p.last_handshake is not None and now - p.last_handshake <= LIVE_HANDSHAKE_S
    )
    dead = set(cluster.dead_no_node | cluster.dead_no_ips) if st.name == "pub2" else set()
    left = len(dead & set(st.peers))
    peers = f"{alive}/{len(live)} alive, {left} dead, {len(dead) - left} removed"
    health = "-" if not st.healthz else f"{st.healthz}" + (f" ({', '.join(st.failing)})" if st.failing else "")
    if not st.running:
        health = "wgagent EXITED"
    return [st.name, st.role, ip, dropin, annotation, module, peers, str(st.restarts), health]


HEADERS = ["NODE", "ROLE", "PUBLIC IP (SOURCE)", "DROP-IN", "ANNOTATION", "MODULE", "PEERS", "K3S RESTARTS", "/healthz"]


def render(cluster: Cluster, snap: Snapshot, *, header: str = "") -> str:
    rows = [HEADERS] + [_cols(snap.nodes[spec.name], cluster, snap.at) for spec in NODES]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    lines = [header] if header else []
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    module = snap.nodes["nat1"].check("wireguard_module")
    if module and not module.get("ok"):
        lines += [
            "",
            f"module: {module.get('detail')}",
            "  The lab's flannel-wg devices are wireguard-go (userspace, read over UAPI); a real node's flannel "
            "(wireguard-native) needs the kernel module.",
        ]
    return "\n".join(lines)
