"""``wgagent status [--json]``: ask the running daemon (GET /status), print a table or the JSON.

Imports nothing but the standard library's HTTP client and the config: it must start fast
(http.client, not urllib.request: no proxies to honour on loopback, and no ssl, hashlib or
email-address machinery to load).
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse

from wgagent.commands import EXIT_FAIL, EXIT_OK
from wgagent.commands.text import table
from wgagent.config import load_from
from wgagent.errors import DaemonNotRunning, WgAgentError
from wgagent.timefmt import duration_text

TYPE_CHECKING = False  # not typing's: see cli.py
if TYPE_CHECKING:
    import argparse
    from typing import Any

MAX_STATUS_BYTES = 4 << 20


def main(args: argparse.Namespace) -> int:
    cfg = load_from(args.config)
    data = fetch_status(cfg.health.listen.url)
    print(json.dumps(data, indent=2) if args.json else format_status(data))
    return EXIT_OK if data.get("status") == "ok" else EXIT_FAIL


def fetch_status(url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """GET the daemon's /status (``url`` is its base, ``http://127.0.0.1:8795``); DaemonNotRunning
    when nothing answers, or something that is not the daemon does (an HTTP error status)."""
    where = urllib.parse.urlsplit(url)
    host = where.hostname or "127.0.0.1"
    conn = http.client.HTTPConnection(host, where.port, timeout=timeout_s)
    try:
        # Connected here with the host as bytes: getaddrinfo() encodes a str host with the IDNA
        # codec (three modules to load) for an IP literal or "localhost" that needs none.
        # getaddrinfo() takes bytes; typeshed's create_connection() says str only.
        address = (host.encode("ascii"), where.port or 80)
        conn.sock = socket.create_connection(address, timeout_s)  # type: ignore[arg-type]
        conn.request("GET", "/status")
        resp = conn.getresponse()
        if resp.status != 200:
            raise DaemonNotRunning(f"no daemon answers at {url}/status (HTTP {resp.status} {resp.reason})")
        body = resp.read(MAX_STATUS_BYTES)
    except (OSError, http.client.HTTPException) as exc:
        raise DaemonNotRunning(
            f"no daemon answers at {url}/status ({_reason(exc)}); is it running? try 'systemctl status wgagent'"
        ) from exc
    finally:
        conn.close()
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise WgAgentError(f"{url}/status did not answer JSON") from exc
    if not isinstance(data, dict):
        raise WgAgentError(f"{url}/status answered unexpected JSON")
    return data


def _reason(exc: BaseException) -> str:
    """What urllib would have said: the OS error's text (``[Errno 111] Connection refused``)."""
    return str(exc) or type(exc).__name__


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
