"""Findings about the Kubernetes API and annotations, flannel's WireGuard interface, and peers."""

from __future__ import annotations

from collections.abc import Mapping

from wgagent.doctor.facts import (
    DiscoveryFacts,
    Facts,
    Failed,
    InterfaceRead,
    KubeFacts,
    Skipped,
    WireGuardFacts,
    unit_name,
)
from wgagent.doctor.findings import Finding, Severity, could_not_check
from wgagent.errors import Forbidden, KubeConfigError, KubeError, KubeUnreachable, NotFound, Unauthorized
from wgagent.k3s.scan import (
    FLANNEL_BACKEND,
)
from wgagent.kube.annotation import assess, short, wanted
from wgagent.model import ANN_BACKEND_TYPE, ANN_PUBLIC_IP, ANN_PUBLIC_IPV6, ClusterView
from wgagent.wireguard.gc import GCPolicy, select_stale_peers
from wgagent.wireguard.interface import (
    HANDSHAKE_FRESH_S,
    expected_port,
    interface_facts,
)
from wgagent.wireguard.model import Device
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
    kf = facts.kube
    if isinstance(kf, Skipped):
        return [Finding("info", "kubernetes", "skipped: the Kubernetes API and flannel's annotations", kf.why)]
    if isinstance(kf, Failed):
        return [could_not_check("kubernetes", "the Kubernetes API", kf, f"kubectl get node {facts.node} -o yaml")]
    out: list[Finding] = []
    e = kf.node_error
    if e is not None:
        for cls, title, detail, fix in _KUBE_ERRORS:
            if isinstance(e, cls):
                where = {
                    "e": e,
                    "source": kf.own_source,
                    "node": facts.node,
                    "unit": unit_name(facts),
                    "conf": facts.config_path,
                    "name_from": facts.node_source,
                }
                out.append(
                    Finding("problem", "kubernetes", title.format(**where), detail.format(**where), fix.format(**where))
                )
                break
    elif kf.annotations is not None:
        detail = f"credential {kf.own_source}; name from {facts.node_source}"
        out.append(Finding("ok", "kubernetes", f"the API answers; Node {facts.node} is registered", detail))
        out += _annotations(facts, kf.annotations)
    le = kf.list_error
    if le is not None and not (e is not None and (kf.list_source == kf.own_source or type(e) is type(le))):
        out.append(
            Finding(
                "warn",
                "kubernetes",
                "cannot list the cluster's Nodes",
                f"{kf.list_source}: {le}; "
                "dead peers are then told only by their missing allowed IPs, and unreachable live nodes "
                "are not named",
                f"kube.list_kubeconfig: <a kubeconfig that may list Nodes> in {facts.config_path}",
            )
        )
    elif kf.cluster is not None:
        out.append(
            Finding("ok", "kubernetes", f"{len(kf.cluster.nodes)} Node(s) listed", f"credential {kf.list_source}")
        )
    return out


def _annotations(facts: Facts, anns: Mapping[str, str]) -> list[Finding]:
    out: list[Finding] = []
    node, unit = facts.node, unit_name(facts)
    backend = anns.get(ANN_BACKEND_TYPE)
    wg_fix = (
        f"{FLANNEL_BACKEND}: wireguard-native in {facts.cfg.k3s.config_dir}/config.yaml on every server (wgagent's "
        f"drop-in does it), then systemctl restart k3s on the servers and k3s-agent on the agents"
    )
    if backend is not None and backend != "wireguard":
        what = "k3s's removed 'wireguard' extension backend" if backend == "extension" else f"the '{backend}' backend"
        out.append(
            Finding(
                "problem",
                "flannel",
                f"flannel on Node {node} runs {what}, not WireGuard",
                f"{ANN_BACKEND_TYPE} is {backend!r}",
                wg_fix,
            )
        )
    elif backend == "wireguard":
        out.append(Finding("ok", "flannel", f"flannel on Node {node} runs the WireGuard backend"))
    p = facts.public_ip
    if not isinstance(p, DiscoveryFacts) or not p.decision.decided:
        out.append(Finding("info", "flannel", "flannel's public IP annotations not compared: no public IP decided"))
        return out
    want = wanted(p.decision.addresses)
    verdict = assess(anns, want)
    if verdict.ok:
        out.append(
            Finding(
                "ok",
                "flannel",
                f"flannel's public-ip annotations are the discovered {p.decision.addresses}",
                verdict.detail,
            )
        )
        return out
    if verdict.wrong_overwrites:
        sets = " ".join(f"{k}={want[k]}" for k in verdict.wrong_overwrites)
        fix = (
            f"kubectl annotate node {node} --overwrite {sets}, then systemctl restart {unit}; or systemctl "
            "enable --now wgagent, which does both"
        )
    elif verdict.stale:
        fix = f"systemctl restart {unit} (flannel reads public-ip-overwrite only when it starts)"
    else:
        fix = (
            f"systemctl status {unit}: flannel has not annotated Node {node} (is it running, with the kube subnet "
            "manager?)"
        )
    published = [f"{short(k)} is {anns[k]}" for k in (ANN_PUBLIC_IP, ANN_PUBLIC_IPV6) if k in anns]
    shown = "; ".join(p for p in published if p.split(" is ")[-1] not in verdict.detail)
    out.append(
        Finding(
            "problem",
            "flannel",
            f"flannel's public IP on Node {node} is not the discovered {p.decision.addresses}",
            verdict.detail + (f"; flannel's {shown}" if shown else ""),
            fix,
        )
    )
    return out


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
    cfg, unit, name, read = facts.cfg, unit_name(facts), one.name, one.read
    port = expected_port(name, cfg.wireguard)
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
    out: list[Finding] = []
    if not f.exists:
        fix = _missing_fix(facts, w, f"systemctl restart {unit} (flannel creates {name} when it starts)")
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
    if not out:
        out.append(
            Finding(
                "ok",
                "wireguard",
                f"{name}: up, listening on UDP {port}",
                f"{f.peers} peer(s), {f.active} with a handshake in the last {HANDSHAKE_FRESH_S:g} s; "
                f"{f.backend} backend",
            )
        )
    if f.unreachable:
        nodes = sorted({u.node for u in f.unreachable})
        listed = "; ".join(
            f"{u.node} at {u.endpoint or '(no endpoint)'}, last handshake "
            + ("never" if u.last_handshake is None else f"{int(facts.now - u.last_handshake)} s ago")
            for u in f.unreachable[:10]
        )
        out.append(
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
        )
    if f.nodes_without_peer:
        out.append(
            Finding(
                "warn",
                "wireguard",
                f"flannel has no peer on {name} for: {', '.join(f.nodes_without_peer[:5])}",
                "these Nodes publish a WireGuard key that is no peer here",
                f"systemctl restart {unit} (flannel adds a peer for every Node when it starts)",
            )
        )
    out += _peers(facts, one, read.device, cluster)
    return out


def _peers(facts: Facts, one: InterfaceRead, device: Device, cluster: ClusterView | None) -> list[Finding]:
    cfg = facts.cfg
    policy = GCPolicy.from_config(cfg.wireguard.gc)
    keys = cluster.current_keys if cluster is not None else None
    sel = select_stale_peers(device, keys, one.first_seen, facts.now, policy)
    dead = (*sel.remove, *sel.deferred)
    name = one.name
    out: list[Finding] = []
    if dead:
        no_ips = sum(1 for p in dead if not p.allowed_ips)
        detail = (
            f"{len(dead)} of {len(device.peers)} peers are silent for more than {policy.stale_after_s:g} s "
            f"and belong to no live Node: {len(dead) - no_ips} hold no Node's key, {no_ips} have no allowed "
            "IPs (a re-keyed node's leftovers)"
        )
        if sel.note:
            detail += f"; {sel.note}"
        gc_off = (
            ""
            if cfg.wireguard.gc.enabled
            else f"; to keep them away: wireguard.gc.enabled: true in {facts.config_path}"
        )
        severity: Severity = "problem" if len(dead) >= DEAD_PEERS_PROBLEM else "warn"
        out.append(
            Finding(
                severity,
                "peers",
                f"{len(dead)} dead peer(s) on {name}",
                detail,
                f"wgagent --config {facts.config_path} gc (removes them in one transaction; --dry-run "
                f"lists them){gc_off}",
            )
        )
    else:
        out.append(Finding("ok", "peers", f"no dead peers on {name}", f"{len(device.peers)} peer(s)"))
    live = keys or frozenset()
    unjudged = sum(
        1
        for p in device.peers
        if p.last_handshake is None and p.public_key not in one.first_seen and p.public_key not in live
    )
    if unjudged:
        out.append(
            Finding(
                "info",
                "peers",
                f"{unjudged} peer(s) on {name} never completed a handshake",
                "wgagent has not watched them yet (it records when it first sees a peer), so doctor "
                "cannot tell how long they have been silent",
                "systemctl enable --now wgagent (its peer GC removes them once they are stale)",
            )
        )
    if sel.kept_unknown:
        out.append(
            Finding(
                "info",
                "peers",
                f"{len(sel.kept_unknown)} stale peer(s) with allowed IPs on {name} not judged",
                sel.note or "the node list is unknown",
            )
        )
    return out
