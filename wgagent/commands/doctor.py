"""``wgagent doctor [--json]``: explain what is wrong on this node and how to fix it.

Gathers every fact (``doctor.gather``, bounded probes, changing nothing), diagnoses them
(``doctor.diagnose``, pure) and prints the findings grouped by area, each with its fix.
Exit 0 when all is clear, 1 when any finding is a problem.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterable, Sequence
from typing import TextIO

from wgagent import logs
from wgagent.commands import EXIT_FAIL, EXIT_OK
from wgagent.config import Config, load_resolved
from wgagent.doctor import Environment, K3sFacts, diagnose, gather
from wgagent.doctor.findings import AREAS, SEVERITIES, Finding, is_clear, render_json

_LABEL = {"ok": "ok", "info": "info", "warn": "WARN", "problem": "PROBLEM"}
_INDENT = " " * 11


def main(args: argparse.Namespace, out: TextIO | None = None, env: Environment | None = None) -> int:
    import sys

    cfg, path, _ = load_resolved(args.config)
    logs.setup("error")  # the report says what went wrong; warnings would only repeat it
    return doctor_command(cfg, path, as_json=args.json, out=out or sys.stdout, env=env)


def doctor_command(cfg: Config, config_path: str, *, as_json: bool, out: TextIO, env: Environment | None = None) -> int:
    """Gather, diagnose, print; 0 when all is clear, 1 when any finding is a problem."""
    facts = asyncio.run(gather(cfg, config_path, env))
    findings = diagnose(facts)
    if as_json:
        out.write(render_json(findings) + "\n")
    else:
        k3s = facts.k3s if isinstance(facts.k3s, K3sFacts) else None
        role = k3s.role if k3s is not None else None
        disputed = k3s is not None and bool(k3s.identity.conflict)
        what = f"k3s {role.name}" if role is not None else "k3s role disputed" if disputed else "k3s role unknown"
        header = f"wgagent doctor: node {facts.node} ({what}; name from {facts.node_source}), config {config_path}"
        out.write(render_text(findings, header) + "\n")
    return EXIT_OK if is_clear(findings) else EXIT_FAIL


def render_text(findings: Sequence[Finding], header: str = "") -> str:
    """The report: one block per area (problems first), each finding with its detail and fix."""
    lines = [header, ""] if header else []
    for area in _areas(findings):
        lines.append(area)
        lines.extend(_area_lines(f for f in findings if f.area == area))
        lines.append("")
    lines.append(_summary(findings))
    return "\n".join(lines)


def _areas(findings: Sequence[Finding]) -> list[str]:
    areas = [a for a in AREAS if any(f.area == a for f in findings)]
    return areas + sorted({f.area for f in findings} - set(AREAS))


def _area_lines(findings: Iterable[Finding]) -> list[str]:
    rank = {s: i for i, s in enumerate(reversed(SEVERITIES))}
    lines = []
    for f in sorted(findings, key=lambda f: rank[f.severity]):
        lines.append(f"  {_LABEL[f.severity]:<8} {f.title}")
        if f.detail:
            lines.append(_INDENT + f.detail)
        if f.fix:
            lines.append(_INDENT + "fix: " + f.fix)
    return lines


def _summary(findings: Sequence[Finding]) -> str:
    count = {s: sum(1 for f in findings if f.severity == s) for s in SEVERITIES}
    if count["problem"]:
        more = f" and {count['warn']} warning(s)" if count["warn"] else ""
        return f"{count['problem']} problem(s){more}: apply the fixes above, then run 'wgagent doctor' again."
    if count["warn"]:
        return f"No problem; {count['warn']} warning(s) above."
    return "All clear."
