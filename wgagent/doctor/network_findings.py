"""Findings about the Kubernetes API and annotations, flannel's WireGuard interface, and peers."""

from __future__ import annotations

from collections.abc import Mapping

from wgagent.doctor.facts import (
    Facts,
    Failed,
    InterfaceRead,
    KubeFacts,
    Skipped,
    WireGuardFacts,
    config_main,
    unit_name,
)
from wgagent.doctor.findings import Finding, Severity, could_not_check
from wgagent.doctor.flannel_findings import check_annotations
from wgagent.errors import Forbidden, KubeConfigError, KubeError, KubeUnreachable, NotFound, Unauthorized
from wgagent.k3s.scan import (
    FLANNEL_BACKEND,
)
from wgagent.model import ANN_BACKEND_TYPE, ClusterView
from wgagent.wireguard.gc import GCPolicy, select_stale_peers
from wgagent.wireguard.interface import (
    HANDSHAKE_FRESH_S,
    InterfaceFacts,
    expected_port,
    interface_facts,
)
from wgagent.wireguard.model import Device, Peer
from wgagent.wireguard.module import ModuleFacts
from wgagent.wireguard.module import diagnose as diagnose_module

DEAD_PEERS_PROBLEM = 50
"""Dead peers from this many on are a problem ("piling up", k3s #5216); fewer are a warning:
a running daemon's GC removes a peer within one ``wireguard.gc.interval_s`` after it went stale."""


_KUBE_ERRORS: tuple[tuple[type[KubeError], str, str, str], ...] = (
    # The first class that matches; templates take e, source, node, unit, conf, name_from.
    (
        KubeConfigError,
        "no usable credential for the Kubernetes API",
        "{e}",
        "start k3s so that it writes {source} (systemctl start {unit}), or set kube.kubeconfig: <a kubeconfig for "
        "Node {node}> in {conf}",
    ),
    (
        KubeUnreachable,
        "the Kubernetes API is unreachable",
        "{e}",
        "systemctl status {unit} (the API server, or on agents k3s's local load balancer, must run); check the server "
        "address in {source}",
    ),
    (
        Unauthorized,
        "the API server refuses the credential (401)",
        "{source}: {e}",
        "systemctl restart {unit} (k3s renews its certificates when it starts), or set kube.kubeconfig: <a valid "
        "kubeconfig> in {conf}",
    ),
    (
        Forbidden,
        "the credential may not read Node {node} (403)",
        "{source}: {e}",
        "node_name: <this node's name in kubectl get nodes> in {conf}, or kube.kubeconfig: <this node's own "
        "credential>",
    ),
    (
        NotFound,
        "Node {node} is not registered",
        "{e} (name from {name_from})",
        "node_name: <the name kubectl get nodes shows for this node> in {conf}; or start k3s (systemctl start {unit}) "
        "so that it registers",
    ),
    (KubeError, "the Kubernetes API failed", "{e}", "systemctl status {unit}; journalctl -u {unit}"),
)


def check_kube(facts: Facts) -> list[Finding]:
    """The own Node (credential, registration, flannel's annotations) and the list of all Nodes."""
    kf = facts.kube
    if isinstance(kf, Skipped):
        return [Finding("info", "kubernetes", "skipped: the Kubernetes API and flannel's annotations", kf.why)]
    if isinstance(kf, Failed):
        return [could_not_check("kubernetes", "the Kubernetes API", kf, f"kubectl get node {facts.node} -o yaml")]
    return [*_own_node(facts, kf), *_node_list(facts, kf)]


def _own_node(facts: Facts, kf: KubeFacts) -> list[Finding]:
    if kf.node_error is not None:
        return _kube_error(facts, kf, kf.node_error)
    if kf.annotations is None:
        return []
    detail = f"credential {kf.own_source}; name from {facts.node_source}"
    registered = Finding("ok", "kubernetes", f"the API answers; Node {facts.node} is registered", detail)
    return [registered, *_backend_annotation(facts, kf.annotations), *check_annotations(facts, kf)]


def _kube_error(facts: Facts, kf: KubeFacts, e: KubeError) -> list[Finding]:
    """The finding for the first class in ``_KUBE_ERRORS`` that ``e`` is an instance of (the last is KubeError)."""
    title, detail, fix = next((t, d, f) for cls, t, d, f in _KUBE_ERRORS if isinstance(e, cls))
    where = {
        "e": e,
        "source": kf.own_source,
        "node": facts.node,
        "unit": unit_name(facts),
        "conf": facts.config_path,
        "name_from": facts.node_source,
    }
    return [Finding("problem", "kubernetes", title.format(**where), detail.format(**where), fix.format(**where))]


def _node_list(facts: Facts, kf: KubeFacts) -> list[Finding]:
    """Listing all Nodes; its failure is not repeated when it is the own Node's failure again."""
    e, le = kf.node_error, kf.list_error
    if le is not None and not (e is not None and (kf.list_source == kf.own_source or type(e) is type(le))):
        return [
            Finding(
                "warn",
                "kubernetes",
                "cannot list the cluster's Nodes",
                f"{kf.list_source}: {le}; "
                "dead peers are then told only by their missing allowed IPs, and unreachable live nodes "
                "are not named",
                f"kube.list_kubeconfig: <a kubeconfig that may list Nodes> in {facts.config_path}",
            )
        ]
    if kf.cluster is not None:
        return [Finding("ok", "kubernetes", f"{len(kf.cluster.nodes)} Node(s) listed", f"credential {kf.list_source}")]
    return []


def _backend_annotation(facts: Facts, anns: Mapping[str, str]) -> list[Finding]:
    backend = anns.get(ANN_BACKEND_TYPE)
    if backend == "wireguard":
        return [Finding("ok", "flannel", f"flannel on Node {facts.node} runs the WireGuard backend")]
    if backend is None:
        return []
    what = "k3s's removed 'wireguard' extension backend" if backend == "extension" else f"the '{backend}' backend"
    wg_fix = (
        f"{FLANNEL_BACKEND}: wireguard-native in {config_main(facts)} on every server (wgagent's "
        f"drop-in does it), then systemctl restart k3s on the servers and k3s-agent on the agents"
    )
    return [
        Finding(
            "problem",
            "flannel",
            f"flannel on Node {facts.node} runs {what}, not WireGuard",
            f"{ANN_BACKEND_TYPE} is {backend!r}",
            wg_fix,
        )
    ]


def _module_ok(facts: Facts) -> bool | None:
    return diagnose_module(facts.module).ok if isinstance(facts.module, ModuleFacts) else None


def _missing_fix(facts: Facts, w: WireGuardFacts, otherwise: str) -> str:
    """The fix for a missing interface: another WireGuard device here, the kernel first, or ``otherwise``."""
    if w.other_devices:
        return f"wireguard.interface: {w.other_devices[0]} in {facts.config_path} (if that is flannel's device)"
    if _module_ok(facts) is False:
        return f"make WireGuard available in the kernel first (see 'kernel'), then systemctl restart {unit_name(facts)}"
    return otherwise


def check_wireguard(facts: Facts) -> list[Finding]:
    w = facts.wireguard
    if isinstance(w, Skipped):
        return [Finding("info", "wireguard", "skipped: flannel's WireGuard interface, its UDP port and peers", w.why)]
    if isinstance(w, Failed):
        return [could_not_check("wireguard", "the WireGuard interface", w, "wg show; ss -ulnp")]
    unit = unit_name(facts)
    others = f" WireGuard devices here: {', '.join(w.other_devices)}." if w.other_devices else ""
    if not w.interfaces:
        fix = _missing_fix(
            facts, w, f"{FLANNEL_BACKEND}: wireguard-native on every server, then systemctl restart {unit}"
        )
        return [Finding("problem", "wireguard", "flannel's WireGuard interface is missing", w.note + others, fix)]
    cluster = facts.kube.cluster if isinstance(facts.kube, KubeFacts) else None
    out: list[Finding] = []
    for one in w.interfaces:
        out += _interface(facts, one, cluster, w, others)
    if cluster is None:
        out.append(Finding("info", "wireguard", "live nodes not checked: the node list is unknown"))
    return out


def _interface(
    facts: Facts, one: InterfaceRead, cluster: ClusterView | None, w: WireGuardFacts, others: str
) -> list[Finding]:
    """One flannel interface: exists and readable, up, on its port, reaching the live nodes; then its peers."""
    name, read = one.name, one.read
    port = expected_port(name, facts.cfg.wireguard)
    f = interface_facts(
        read.link,
        read.device,
        w.bound_ports,
        cluster,
        now=facts.now,
        expected_port=port,
        backend=read.backend,
        error=read.error,
        own_node=facts.node,
    )
    if not f.exists:
        fix = _missing_fix(facts, w, f"systemctl restart {unit_name(facts)} (flannel creates {name} when it starts)")
        return [Finding("problem", "wireguard", f"interface {name} does not exist", (f.error or "") + others, fix)]
    if read.device is None:
        return [
            Finding(
                "problem",
                "wireguard",
                f"cannot read WireGuard interface {name}",
                f.error or "",
                f"run 'wgagent doctor' as root; by hand: wg show {name}",
            )
        ]
    out = _link_and_port(facts, name, f, port) or [_interface_ok(name, f, port)]
    out += _unreachable(facts, name, f)
    out += _without_peer(facts, name, f)
    out += _peers(facts, one, read.device, cluster)
    return out


def _link_and_port(facts: Facts, name: str, f: InterfaceFacts, port: int) -> list[Finding]:
    """Problems with the link itself: down, on another port, or nothing bound to the port."""
    cfg, unit = facts.cfg, unit_name(facts)
    out: list[Finding] = []
    if not f.up:
        out.append(
            Finding(
                "problem",
                "wireguard",
                f"{name} is down",
                f"the {f.backend} device exists but is not up",
                f"ip link set {name} up, or systemctl restart {unit}",
            )
        )
    if f.device_port is not None and f.device_port != port:
        out.append(
            Finding(
                "problem",
                "wireguard",
                f"{name} listens on UDP {f.device_port}, not {port}",
                f"wireguard.listen_port is {cfg.wireguard.listen_port}; flannel uses 51820 (51821 for IPv6)",
                f"systemctl restart {unit} (flannel sets the port); if {f.device_port} is meant, "
                f"wireguard.listen_port: {f.device_port} in {facts.config_path}",
            )
        )
    if not f.port_bound:
        out.append(
            Finding(
                "problem",
                "wireguard",
                f"nothing listens on UDP {port}",
                f"no UDP socket on port {port} in /proc/net/udp or udp6 (what 'netstat -ulnp' / "
                f"'ss -ulnp' shows): peers cannot reach {name}",
                f"systemctl restart {unit} (flannel recreates {name} on {port}); check: ss -ulnp | grep {port}",
            )
        )
    return out


def _interface_ok(name: str, f: InterfaceFacts, port: int) -> Finding:
    return Finding(
        "ok",
        "wireguard",
        f"{name}: up, listening on UDP {port}",
        f"{f.peers} peer(s), {f.active} with a handshake in the last {HANDSHAKE_FRESH_S:g} s; {f.backend} backend",
    )


def _unreachable(facts: Facts, name: str, f: InterfaceFacts) -> list[Finding]:
    """Live nodes whose peer here had no recent handshake: up to 5 named in the title, 10 in the detail."""
    if not f.unreachable:
        return []
    nodes = sorted({u.node for u in f.unreachable})
    listed = "; ".join(
        f"{u.node} at {u.endpoint or '(no endpoint)'}, last handshake "
        + ("never" if u.last_handshake is None else f"{int(facts.now - u.last_handshake)} s ago")
        for u in f.unreachable[:10]
    )
    return [
        Finding(
            "problem",
            "wireguard",
            f"live node(s) unreachable over {name}: {', '.join(nodes[:5])}"
            + (f" and {len(nodes) - 5} more" if len(nodes) > 5 else ""),
            f"no handshake in the last {HANDSHAKE_FRESH_S:g} s: {listed}",
            f"open UDP 51820 between this node and {', '.join(nodes[:3])} (firewall, security group), "
            "check that their flannel public-ip annotation is an address this node can reach, and run "
            "'wgagent doctor' on them",
        )
    ]


def _without_peer(facts: Facts, name: str, f: InterfaceFacts) -> list[Finding]:
    if not f.nodes_without_peer:
        return []
    return [
        Finding(
            "warn",
            "wireguard",
            f"flannel has no peer on {name} for: {', '.join(f.nodes_without_peer[:5])}",
            "these Nodes publish a WireGuard key that is no peer here",
            f"systemctl restart {unit_name(facts)} (flannel adds a peer for every Node when it starts)",
        )
    ]


def _peers(facts: Facts, one: InterfaceRead, device: Device, cluster: ClusterView | None) -> list[Finding]:
    """Dead peers by the GC's own rule (``select_stale_peers``), and the peers it cannot judge."""
    policy = GCPolicy.from_config(facts.cfg.wireguard.gc)
    keys = cluster.current_keys if cluster is not None else None
    sel = select_stale_peers(device, keys, one.first_seen, facts.now, policy)
    dead = (*sel.remove, *sel.deferred)
    if dead:
        out = [_dead_peers(facts, one.name, device, dead, sel.note, policy)]
    else:
        out = [Finding("ok", "peers", f"no dead peers on {one.name}", f"{len(device.peers)} peer(s)")]
    out += _unjudged(one, device, keys or frozenset())
    if sel.kept_unknown:
        out.append(
            Finding(
                "info",
                "peers",
                f"{len(sel.kept_unknown)} stale peer(s) with allowed IPs on {one.name} not judged",
                sel.note or "the node list is unknown",
            )
        )
    return out


def _dead_peers(
    facts: Facts, name: str, device: Device, dead: tuple[Peer, ...], note: str, policy: GCPolicy
) -> Finding:
    """A warning, or a problem from ``DEAD_PEERS_PROBLEM`` on, with the GC command as the fix."""
    no_ips = sum(1 for p in dead if not p.allowed_ips)
    detail = (
        f"{len(dead)} of {len(device.peers)} peers are silent for more than {policy.stale_after_s:g} s "
        f"and belong to no live Node: {len(dead) - no_ips} hold no Node's key, {no_ips} have no allowed "
        "IPs (a re-keyed node's leftovers)"
    )
    if note:
        detail += f"; {note}"
    gc_off = (
        ""
        if facts.cfg.wireguard.gc.enabled
        else f"; to keep them away: wireguard.gc.enabled: true in {facts.config_path}"
    )
    severity: Severity = "problem" if len(dead) >= DEAD_PEERS_PROBLEM else "warn"
    return Finding(
        severity,
        "peers",
        f"{len(dead)} dead peer(s) on {name}",
        detail,
        f"wgagent --config {facts.config_path} gc (removes them in one transaction; --dry-run lists them){gc_off}",
    )


def _unjudged(one: InterfaceRead, device: Device, live: frozenset[str]) -> list[Finding]:
    """Peers with no handshake that wgagent never saw: nobody knows how long they have been silent."""
    unjudged = sum(
        1
        for p in device.peers
        if p.last_handshake is None and p.public_key not in one.first_seen and p.public_key not in live
    )
    if not unjudged:
        return []
    return [
        Finding(
            "info",
            "peers",
            f"{unjudged} peer(s) on {one.name} never completed a handshake",
            "wgagent has not watched them yet (it records when it first sees a peer), so doctor "
            "cannot tell how long they have been silent",
            "systemctl enable --now wgagent (its peer GC removes them once they are stale)",
        )
    ]
