"""Runs wgagent's PublicIPPart round by round, on command, inside a lab namespace.

    python -m tests.support.ipservices_driver CONFIG.yaml

Reads one command per line on stdin and answers one JSON line on stdout:

    round     run one reconcile(); answer the part's state afterwards
    state     answer the part's state without a round (what a fresh start knows)
    quit      exit

The state is ``{"adopted": "203.0.113.1"|null, "changes": n, "check": {"ok", "detail"}|null,
"status": <the part's /status section>, "interval_s": s}``; ``changes`` counts on_change calls.
Multi-round scenarios (hysteresis, everything down, restart with a saved address) need
one process across rounds, which ``wgagent discover`` is not.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from wgagent import config, logs, wiring
from wgagent.publicip.part import PublicIPPart
from wgagent.state import State


def snapshot(part: PublicIPPart, state: State, changes: int, next_s: float | None) -> dict[str, Any]:
    check = state.checks.get("public_ip")
    adopted = part.adopted()
    return {
        "adopted": str(adopted) if adopted else None,
        "changes": changes,
        "check": None if check is None else {"ok": check.ok, "detail": check.detail},
        "status": state.status()["parts"].get("public_ip"),
        "interval_s": part.interval_s if next_s is None else next_s,  # when the daemon would ask again
    }


async def main(path: str) -> None:
    cfg = config.load(path)
    logs.setup("warning")
    state = State(node=cfg.node_name or "lab", version="lab")
    part = PublicIPPart(state, cfg.public_ip, cfg.state_dir, wiring.public_ip_sources(cfg.public_ip, wiring.Seams()))
    changes = 0
    next_s: float | None = None

    def changed(_: object) -> None:
        nonlocal changes
        changes += 1

    part.changed.connect(changed)
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if line in ("", "quit"):
                return
            if line == "round":
                next_s = await part.reconcile()
            elif line != "state":
                print(json.dumps({"error": f"unknown command {line!r}"}), flush=True)
                continue
            print(json.dumps(snapshot(part, state, changes, next_s)), flush=True)
    finally:
        await part.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
