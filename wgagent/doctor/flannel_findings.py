"""Findings from the daemon's own decisions on addresses and backends, over doctor's facts.

One source of truth: doctor asks the functions the daemon's parts ask, with the evidence the
daemon would have, and turns their answers into findings.

    families_of(facts)       the families the cluster uses (``families.decide_families``: the own
                             Node's pod CIDRs, flannel's subnet file, a server's cluster-cidr;
                             as ``wiring._Builder.families``)
    view_of(facts)           what k3s takes at its next start (``k3s.view.view_from``), from the
                             config files doctor read, as they are on disk
    check_annotations(...)   per managed family, ``kube.annotation.decide_family``'s verdict
    check_backends(facts)    HA (``k3s.servers``): a server holding back a backend switch, an agent
                             whose flannel runs another backend than the servers

A verdict becomes a finding by its rule: ``ok`` and ``restore`` are ok; ``drop-in`` and
``restart`` a warning saying what the running wgagent does next; ``shared``, ``override``,
``wiped``, ``stuck``, ``patch`` and ``flannel`` a problem. A family the cluster does not use is
never checked (k3s and flannel ignore it: ``families.py``).
"""

from __future__ import annotations

from collections.abc import Mapping

from wgagent.doctor.facts import DiscoveryFacts, Facts, K3sFacts, KubeFacts, unit_name
from wgagent.doctor.findings import Finding
from wgagent.families import Families, decide_families
from wgagent.k3s.dropin import dropin_path, read_dropin_values
from wgagent.k3s.restart import SETTLE_S
from wgagent.k3s.scan import DROPIN_DIR, DROPIN_NAME, FLANNEL_BACKEND, scan_config
from wgagent.k3s.servers import agent_backend_mismatch, server_backend
from wgagent.k3s.view import ExternalIP, K3sView, view_from
from wgagent.kube.annotation import (
    OVERWRITE,
    PUBLISHED,
    FamilyFacts,
    Ruling,
    decide_family,
    shared_with,
    short,
    want_key,
)
from wgagent.model import PublicAddresses

CLUSTER_CIDR = "cluster-cidr"
START_WGAGENT = "systemctl enable --now wgagent"


def families_of(facts: Facts) -> Families:
    """The families the cluster uses, on the evidence the daemon would have."""
    k, kf = facts.k3s, facts.kube
    own = kf.node if isinstance(kf, KubeFacts) else None
    cidrs: tuple[str, ...] = ()
    subnet_env: Mapping[str, str] = {}
    if isinstance(k, K3sFacts):
        subnet_env = k.subnet_env
        if k.identity.role_name == "server":
            setting = scan_config(k.identity.config, k.files, role=None).settings.get(CLUSTER_CIDR)
            cidrs = setting.items() if setting is not None else ()
    return decide_families(
        pod_cidrs=own.pod_cidrs if own is not None else (), subnet_env=subnet_env, cluster_cidrs=cidrs
    )


def view_of(facts: Facts) -> K3sView | None:
    """k3s's ``node-external-ip`` and ``flannel-external-ip`` at its next start, from the files
    as they are (None without k3s's facts)."""
    k = facts.k3s
    if not isinstance(k, K3sFacts):
        return None
    return view_from(k.identity, facts.cfg.k3s, k.files, None)


def external_ip(facts: Facts, view: K3sView, family: int) -> ExternalIP:
    """One family's ``node-external-ip`` as k3s takes it. Unset while wgagent manages the
    drop-in counts as the drop-in's: the running daemon writes it (the view as on disk knows
    only what is written)."""
    ext = view.family(family)
    if ext.value is None and facts.cfg.k3s.enabled:
        return ExternalIP(None, f"wgagent's {DROPIN_NAME} (not written yet)", True)
    return ext


def wanted(families: Families, addrs: PublicAddresses) -> dict[int, str]:
    """The decided address of each family the cluster uses (the daemon's ``families.keep``)."""
    kept = families.keep(addrs)
    if kept is None:
        return {}
    return {v: str(ip) for v, ip in ((4, kept.ipv4), (6, kept.ipv6)) if ip is not None}


# --- the annotation verdicts -------------------------------------------------------------------


K3S_RULES = frozenset({"drop-in", "override"})
"""Verdicts about k3s's node-external-ip itself (the k3s area then says nothing more of it)."""


def check_annotations(facts: Facts, kf: KubeFacts) -> list[Finding]:
    """Per managed family, the annotation part's verdict on the own Node, as a finding."""
    p = facts.public_ip
    if kf.node is None:
        return []
    if not isinstance(p, DiscoveryFacts) or not p.decision.decided:
        return [Finding("info", "flannel", "flannel's public IP annotations not compared: no public IP decided")]
    if not isinstance(facts.k3s, K3sFacts):
        return [Finding("info", "flannel", "flannel's public IP annotations not compared: k3s's config is unknown")]
    return [verdict_finding(facts, ff, v) for ff, v in verdicts(facts).values()]


def verdicts(facts: Facts) -> dict[int, tuple[FamilyFacts, Ruling]]:
    """``decide_family`` for each family the cluster uses, with the facts it was given; empty
    without the own Node, a decided address or k3s's facts."""
    p, k, kf = facts.public_ip, facts.k3s, facts.kube
    node = kf.node if isinstance(kf, KubeFacts) else None
    view = view_of(facts)
    if node is None or not isinstance(p, DiscoveryFacts) or not isinstance(k, K3sFacts) or view is None:
        return {}
    cluster = kf.cluster if isinstance(kf, KubeFacts) else None
    want = wanted(families_of(facts), p.decision.addresses)
    stuck = _stuck(facts, k, want)
    out = {}
    for family, ip in want.items():
        ff = FamilyFacts(
            family,
            ip,
            node.annotations,
            external_ip(facts, view, family),
            version=node.version,
            k3s_restart_pending="config" in k.restarts.needs,
            shared_with=shared_with(facts.node, ip, family, cluster),
            stuck=stuck,
        )
        out[family] = (ff, decide_family(ff))
    return out


def _stuck(facts: Facts, k: K3sFacts, want: Mapping[int, str]) -> bool:
    """Whether wgagent restarted k3s for this very overwrite and the restart has had its time to
    settle (the restarter then reports it stuck and never restarts for it again: k3s/restart.py)."""
    served = k.restarts.served.get("overwrite")
    return served is not None and served.want == want_key(want) and facts.now - served.at >= SETTLE_S


def verdict_finding(facts: Facts, f: FamilyFacts, v: Ruling) -> Finding:
    """One family's verdict as a finding (see the module doc)."""
    ow, pub = short(OVERWRITE[f.family]), short(PUBLISHED[f.family])
    if v.rule in ("ok", "restore"):
        detail = v.detail + ("; the running wgagent does so" if v.rule == "restore" else "")
        return Finding("ok", "flannel", f"flannel's {pub} is the discovered {f.want}", detail)
    if v.rule in ("drop-in", "restart"):
        return _pending(facts, f, v)
    wrong = f"flannel's {pub} on Node {facts.node} is not the discovered {f.want}"
    unit = unit_name(facts)
    if v.rule == "shared":
        return Finding("problem", "flannel", f"Nodes {facts.node} and {f.shared_with} share the public IP {f.want}",
                       v.detail, v.fix)  # fmt: skip
    if v.rule == "override":
        title = f"k3s will use node-external-ip {f.k3s.value or '(none)'}, not the discovered {f.want}"
        fix = v.fix
        if f.k3s.value is None:  # nothing sets it and wgagent does not manage the drop-in
            fix = f"k3s.enabled: true in {facts.config_path} (wgagent's drop-in sets node-external-ip)"
        return Finding("problem", "flannel", title, v.detail, fix)
    if v.rule == "wiped":
        return Finding("problem", "flannel", f"{wrong}: k3s removes {ow} at every start", v.detail, v.fix)
    if v.rule == "stuck":
        return Finding("problem", "flannel", f"{wrong}: a k3s restart for it did not help", v.detail, v.fix)
    if v.rule == "patch":
        fix = (
            f"{START_WGAGENT} (it sets {ow} and restarts {unit} once, rate-limited); or by hand: kubectl annotate "
            f"node {facts.node} --overwrite {OVERWRITE[f.family]}={f.want}, then systemctl restart {unit}"
        )
        return Finding("problem", "flannel", wrong, v.detail, fix)
    if v.rule == "flannel":
        fix = f"{START_WGAGENT} (it restarts {unit} once, rate-limited: flannel reads {ow} only when it starts)"
        return Finding("problem", "flannel", f"{wrong}: flannel has not restarted since", v.detail, fix)
    return Finding("problem", "flannel", wrong, v.detail, v.fix)  # a rule added later: its own words


def _pending(facts: Facts, f: FamilyFacts, v: Ruling) -> Finding:
    """drop-in, restart: the running wgagent's next steps (a warning: it converges by itself)."""
    unit, k3s = unit_name(facts), facts.cfg.k3s
    if k3s.restart:
        restarts = f"restarts {unit} once (at most once per {k3s.min_restart_interval_s:g} s)"
    else:
        restarts = f"does not restart {unit} (k3s.restart: false): systemctl restart {unit}"
    if v.rule == "drop-in":
        title = f"k3s's node-external-ip is not the discovered {f.want} yet"
        detail = f"{v.detail}: wgagent writes {_dropin(facts)}, then {restarts}, and flannel publishes it"
    else:
        title = f"k3s has not restarted since node-external-ip became {f.want}"
        detail = f"{v.detail}; wgagent {restarts}, and flannel publishes it"
    fix = f"none while wgagent runs; else {START_WGAGENT}" if k3s.restart else f"systemctl restart {unit}"
    return Finding("warn", "flannel", title, detail, fix)


def _dropin(facts: Facts) -> str:
    k = facts.k3s
    return dropin_path(k.identity.config) if isinstance(k, K3sFacts) else dropin_path(facts.cfg.k3s)


# --- HA: the backend -------------------------------------------------------------------------------


def check_backends(facts: Facts) -> list[Finding]:
    """A server holding back a backend switch; an agent whose flannel runs another backend than
    the servers (as the k3s part decides, ``k3s/servers.py``)."""
    k, kf = facts.k3s, facts.kube
    if not isinstance(k, K3sFacts) or not isinstance(kf, KubeFacts) or kf.cluster is None or k.role is None:
        return []
    identity = k.identity
    if identity.server_keys_safe:
        if not facts.cfg.k3s.enabled:
            return []
        previous = read_dropin_values(_own_dropin(k)).get(FLANNEL_BACKEND)
        chosen = server_backend(identity.node, facts.cfg.k3s.flannel_backend, kf.cluster,
                                previous if isinstance(previous, str) else None)  # fmt: skip
        if chosen.held is None:
            return []
        fix = f"k3s.flannel_backend: {facts.cfg.k3s.flannel_backend} in every server's wgagent config"
        return [
            Finding("warn", "flannel", f"this server keeps flannel-backend {chosen.write} for now", chosen.held, fix)
        ]
    mismatch = agent_backend_mismatch(identity.node, kf.cluster)
    if mismatch is None:
        return []
    mine, theirs = mismatch
    unit = unit_name(facts)
    once = " (wgagent does it once)" if facts.cfg.k3s.enabled else ""
    return [
        Finding(
            "problem",
            "flannel",
            f"flannel here runs backend {mine}, the servers {theirs}",
            "flannel ignores Nodes of another backend type: this node is cut off from the pod network until its "
            "k3s restarts with the servers' flannel-backend",
            f"systemctl restart {unit}{once}",
        )
    ]


def _own_dropin(k: K3sFacts) -> bytes | None:
    content = k.files.get(f"{DROPIN_DIR}/{DROPIN_NAME}")
    return content if isinstance(content, bytes) else None
