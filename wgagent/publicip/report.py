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

import asyncio
import json
from collections.abc import Sequence
from typing import Any, TextIO

from wgagent.config import PublicIPConfig
from wgagent.publicip.decide import decide
from wgagent.publicip.httpclient import AiohttpClient
from wgagent.publicip.model import Decision, Observation
from wgagent.publicip.part import build_sources
from wgagent.publicip.sources import Source, observe_all
from wgagent.publicip.stun import StunClient


async def discover_once(
    cfg: PublicIPConfig, *, sources: Sequence[Source] | None = None
) -> tuple[list[Observation], Decision]:
    """One round over the configured sources (or ``sources``), and its decision."""
    http = AiohttpClient(cfg.timeout_s)
    stun = StunClient()
    try:
        chosen = list(sources) if sources is not None else build_sources(cfg, http=http, stun=stun)
        observations = await observe_all(chosen)
    finally:
        stun.close()
        await http.close()
    return observations, decide(observations, quorum=cfg.quorum)


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
    from wgagent.cli import table

    verdicts = {(v.source, v.ip): v for v in decision.verdicts}
    rows = [("SOURCE", "KIND", "ADDRESS", "TIME", "RESULT")]
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
    lines = table(rows) if observations else ["no source is enabled"]
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


def discover_command(cfg: PublicIPConfig, *, as_json: bool, out: TextIO) -> int:
    observations, decision = asyncio.run(discover_once(cfg))
    if as_json:
        out.write(json.dumps(to_json(observations, decision), indent=2) + "\n")
    else:
        out.write(format_report(observations, decision) + "\n")
    return 0 if decision.decided else 1
