"""A finding: what doctor found, in which area, how bad, and the fix; and the JSON form of a report."""

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


def could_not_check(area: str, what: str, failed: Failed, by_hand: str) -> Finding:
    return Finding(
        "problem",
        area,
        f"could not check {what}",
        failed.error,
        f"run 'wgagent doctor' again as root; meanwhile check by hand: {by_hand}",
    )
