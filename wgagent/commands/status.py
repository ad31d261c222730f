"""``wgagent status [--json]``: ask the running daemon (GET /status), print a table or the JSON.

Imports nothing but the standard library and the config: it must start fast.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from typing import Any

from wgagent.commands import EXIT_FAIL, EXIT_OK
from wgagent.commands.text import table
from wgagent.config import load_from
from wgagent.errors import DaemonNotRunning, WgAgentError
from wgagent.timefmt import duration_text


def main(args: argparse.Namespace) -> int:
    cfg = load_from(args.config)
    data = fetch_status(cfg.health.listen.url)
    print(json.dumps(data, indent=2) if args.json else format_status(data))
    return EXIT_OK if data.get("status") == "ok" else EXIT_FAIL


def fetch_status(url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """GET the daemon's /status; DaemonNotRunning when nothing answers."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    try:
        with opener.open(url + "/status", timeout=timeout_s) as resp:
            data = json.loads(resp.read(4 << 20))
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DaemonNotRunning(
            f"no daemon answers at {url}/status ({reason}); is it running? try 'systemctl status wgagent'"
        ) from exc
    except ValueError as exc:
        raise WgAgentError(f"{url}/status did not answer JSON") from exc
    if not isinstance(data, dict):
        raise WgAgentError(f"{url}/status answered unexpected JSON")
    return data


def format_status(data: dict[str, Any]) -> str:
    """The /status JSON as a table a person reads at a glance."""
    up = duration_text(float(data.get("uptime_s") or 0))
    role = data.get("role") or "role unknown"
    lines = [f"wgagent {data.get('version')} on {data.get('node')} ({role}), up {up}: {data.get('status')}", ""]
    rows = [("CHECK", "STATE", "SINCE", "DETAIL")]
    for name, check in (data.get("checks") or {}).items():
        state = "ok" if check.get("ok") else "FAIL"
        rows.append((name, state, str(check.get("since", "")), str(check.get("detail", ""))))
    lines.extend(table(rows))
    return "\n".join(lines)
