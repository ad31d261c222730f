"""Findings and how they are printed: grouped by area, each with its fix; or JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from wgagent.doctor.facts import Failed

Severity = Literal["ok", "info", "warn", "problem"]
SEVERITIES: tuple[Severity, ...] = ("ok", "info", "warn", "problem")
AREAS = ("kernel", "k3s", "flannel", "kubernetes", "public-ip", "wireguard", "peers", "wgagent")
"""Report order."""

# --- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    severity: Severity
    area: str
    title: str
    detail: str = ""
    fix: str = ""
    """A command or a config line; empty for ``ok`` and most ``info``."""

    def to_json(self) -> dict[str, str]:
        return {
            "severity": self.severity,
            "area": self.area,
            "title": self.title,
            "detail": self.detail,
            "fix": self.fix,
        }


def is_clear(findings: Sequence[Finding]) -> bool:
    return not any(f.severity == "problem" for f in findings)


def render_json(findings: Sequence[Finding]) -> str:
    """``{"ok": bool, "findings": [{"severity", "area", "title", "detail", "fix"}, ...]}``."""
    return json.dumps({"ok": is_clear(findings), "findings": [f.to_json() for f in findings]}, indent=2)


_LABEL = {"ok": "ok", "info": "info", "warn": "WARN", "problem": "PROBLEM"}
_INDENT = " " * 11


def render_text(findings: Sequence[Finding], header: str = "") -> str:
    """The report: one block per area (problems first), each finding with its detail and fix."""
    lines = [header, ""] if header else []
    rank = {s: i for i, s in enumerate(reversed(SEVERITIES))}
    areas = [a for a in AREAS if any(f.area == a for f in findings)]
    areas += sorted({f.area for f in findings} - set(AREAS))
    for area in areas:
        lines.append(area)
        for f in sorted((f for f in findings if f.area == area), key=lambda f: rank[f.severity]):
            lines.append(f"  {_LABEL[f.severity]:<8} {f.title}")
            if f.detail:
                lines.append(_INDENT + f.detail)
            if f.fix:
                lines.append(_INDENT + "fix: " + f.fix)
        lines.append("")
    count = {s: sum(1 for f in findings if f.severity == s) for s in SEVERITIES}
    if count["problem"]:
        more = f" and {count['warn']} warning(s)" if count["warn"] else ""
        lines.append(f"{count['problem']} problem(s){more}: apply the fixes above, then run 'wgagent doctor' again.")
    elif count["warn"]:
        lines.append(f"No problem; {count['warn']} warning(s) above.")
    else:
        lines.append("All clear.")
    return "\n".join(lines)


def could_not_check(area: str, what: str, failed: Failed, by_hand: str) -> Finding:
    return Finding(
        "problem",
        area,
        f"could not check {what}",
        failed.error,
        f"run 'wgagent doctor' again as root; meanwhile check by hand: {by_hand}",
    )
