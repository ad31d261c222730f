"""Doctor's ``mesh`` area: this node's row of ``wgagent mesh``, and what is to be fixed here.

No request of its own: the Node list doctor already reads (``KubeFacts.cluster``, one LIST with
the node watch's credential) carries every Node's ``wgagent.io/mesh`` report, and
:func:`wgagent.mesh.diagnose.diagnose` decides, as for ``wgagent mesh``. Found:

- each pair from this node that is not ok: a problem when the node to fix is this one, a warning
  when another node must fix it (named, with the fix);
- pairs towards this node and node-level problems whose node to fix is this one (its inbound is
  shut, its interface is gone, its public-ip is wrong): problems;
- this node's own report missing, stale or stopped: a warning (the daemon's finding says why);
- otherwise one ``ok`` line with the counts.
"""

from __future__ import annotations

from wgagent.doctor.facts import Facts, KubeFacts, Skipped
from wgagent.doctor.findings import Finding, Severity
from wgagent.mesh import model as m
from wgagent.mesh.diagnose import Diagnosis, Pair, diagnose
from wgagent.mesh.report import published

AREA = "mesh"
SHOWN = 20
"""Pairs listed one by one at most; the rest are counted."""


def check_mesh(facts: Facts) -> list[Finding]:
    """The ``mesh`` findings (see the module doc)."""
    if not facts.cfg.mesh.enabled:
        return [Finding("info", AREA, "mesh health is off (mesh.enabled: false)")]
    kube = facts.kube
    if not isinstance(kube, KubeFacts) or kube.cluster is None:
        why = kube.why if isinstance(kube, Skipped) else "the Node list could not be read (see kubernetes above)"
        return [Finding("info", AREA, "could not read the mesh reports", why)]
    reports = published(kube.cluster)
    if not reports:
        return [Finding("info", AREA, "no node publishes a mesh report yet (wgagent runs nowhere, or is too old)")]
    d = diagnose(kube.cluster, reports, facts.now)
    own = d.reports.get(facts.node)
    if own is not None and own.stale:  # this node's row is unknown: its daemon does not report
        return [_own_report(own.state, own.age_s), *_problems(d, facts.node, skip_own=True)]
    return _cells(d, facts.node) + _problems(d, facts.node) or [_all_ok(d, facts.node)]


def _own_report(state: str, age_s: float | None) -> Finding:
    age = f", {round(age_s)} s old" if age_s is not None else ""
    title = f"this node's mesh report is {state}{age}: its row of the mesh is unknown"
    detail = "the other nodes cannot see this node's view of the mesh; the daemon's finding above says why"
    return Finding("warn", AREA, title, detail, "systemctl enable --now wgagent")


def _cells(d: Diagnosis, me: str) -> list[Finding]:
    row = [p for _, p in sorted(d.row(me).items())]
    mine = row + [p for _, p in sorted(d.column(me).items()) if p.node == me]
    out = [_cell(p, me) for p in mine[:SHOWN]]
    if len(mine) > SHOWN:
        out.append(Finding("info", AREA, f"{len(mine) - SHOWN} more pairs of {me} are not ok", "", "wgagent mesh"))
    return out


def _cell(p: Pair, me: str) -> Finding:
    severity: Severity = "problem" if p.node == me else "warn"
    where = f"to fix on {p.node}" if p.node else "no node named"
    return Finding(severity, AREA, f"{p.src} -> {p.dst}: {p.state} ({p.cause})", where, p.fix)


def _problems(d: Diagnosis, me: str, *, skip_own: bool = False) -> list[Finding]:
    return [
        Finding("problem", AREA, f"{me}: {p.cause}", "", p.fix)
        for p in d.problems
        if p.node == me and not (skip_own and p.cause in (m.NO_REPORT, m.UNKNOWN))
    ]


def _all_ok(d: Diagnosis, me: str) -> Finding:
    n = len(d.nodes)
    count = sum(d.states().values())
    elsewhere = f"; {count} pairs between other nodes are not ok (wgagent mesh)" if count else ""
    return Finding("ok", AREA, f"every pair from and to {me} is ok ({n} nodes){elsewhere}")
