"""``wgagent discover [--json]``: ask every enabled source once and show the decision.

Nothing is adopted or saved: this is a look, not a change. Exit 0 when an address was
decided, 1 when not. The JSON::

    {"ipv4": "203.0.113.1", "ipv6": null, "reason": "ipv4 203.0.113.1 (...); ipv6 undecided (...)",
     "method": {"ipv4": "quorum", "ipv6": null},
     "observations": [{"source": "stun:stun.example:3478", "kind": "stun", "ip": "203.0.113.1",
                       "error": null, "elapsed_s": 0.012, "applicable": true, "server": "...",
                       "port": 40123, "note": ""}, ...],
     "agreed": [{"source": ..., "kind": ..., "ip": ..., "reason": ...}], "disagreed": [...],
     "stun_mapped_ports_differ": false}
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from typing import Any

from wgagent import logs, wiring
from wgagent.commands import EXIT_FAIL, EXIT_OK
from wgagent.commands.text import table
from wgagent.config import load_from
from wgagent.publicip.model import Decision, Observation


def main(args: argparse.Namespace, seams: wiring.Seams | None = None) -> int:
    cfg = load_from(args.config)
    logs.setup(cfg.log_level)
    observations, decision = asyncio.run(wiring.discover_once(cfg.public_ip, seams or wiring.Seams()))
    print(json.dumps(to_json(observations, decision), indent=2) if args.json else format_report(observations, decision))
    return EXIT_OK if decision.decided else EXIT_FAIL


def to_json(observations: Sequence[Observation], decision: Decision) -> dict[str, Any]:
    data = decision.to_json()
    return {
        "ipv4": data["ipv4"],
        "ipv6": data["ipv6"],
        "reason": data["reason"],
        "method": data["method"],
        "observations": [o.to_json() for o in observations],
        "agreed": data["agreed"],
        "disagreed": data["disagreed"],
        "stun_mapped_ports_differ": data["stun_mapped_ports_differ"],
    }


def format_report(observations: Sequence[Observation], decision: Decision) -> str:
    """A table of the observations, then the decision, for a person."""
    lines = table(_rows(observations, decision)) if observations else ["no source is enabled"]
    lines.append("")
    for label, ip, method in (("IPv4", decision.ipv4, decision.method4), ("IPv6", decision.ipv6, decision.method6)):
        lines.append(f"{label}: {ip} (by {method})" if ip is not None else f"{label}: undecided")
    lines.append(f"Reason: {decision.reason}")
    if decision.stun_ports_differ is not None:
        lines.append(
            "STUN mapped ports: differ between servers (the NAT maps per destination: inbound WireGuard will fail)"
            if decision.stun_ports_differ
            else "STUN mapped ports: the same for every server"
        )
    return "\n".join(lines)


def _rows(observations: Sequence[Observation], decision: Decision) -> list[tuple[str, ...]]:
    verdicts = {(v.source, v.ip): v for v in decision.verdicts}
    rows: list[tuple[str, ...]] = [("SOURCE", "KIND", "ADDRESS", "TIME", "RESULT")]
    for o in observations:
        if o.error is not None:
            result = f"error: {o.error}"
        elif o.ip is None:
            result = "not applicable" + (f": {o.note}" if o.note else "")
        else:
            verdict = verdicts.get((o.source, o.ip))
            result = "" if verdict is None else f"{verdict.outcome}: {verdict.reason}"
            if o.port is not None:
                result += f" (mapped port {o.port})"
        rows.append((o.source, o.kind, str(o.ip) if o.ip is not None else "-", f"{o.elapsed_s:.3f}s", result))
    return rows
