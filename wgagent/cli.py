"""The ``wgagent`` command.

    wgagent [--config PATH] COMMAND

    run [--once]             the daemon in the foreground; --once: one pass, print the status JSON
    status [--json]          ask the running daemon (GET /status) and print a table or the JSON
    doctor [--json]          explain what is wrong on this node and how to fix it
    discover [--json]        ask every public IP source once and show the decision
    gc [--dry-run] [--json]  one dead-peer GC pass now
    version                  print the version (also --version)

Exit codes: 0 all good; 1 something checked is failing; 2 bad usage or config (one line on
stderr, never a traceback); 3 the daemon is not running (``status``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Coroutine, Sequence
from typing import Any

from wgagent import __version__
from wgagent.errors import ConfigError, DaemonNotRunning, WgAgentError

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3

log = logging.getLogger("wgagent")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, as for a bad config
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="wgagent", description="Keeps a k3s node's flannel-over-WireGuard networking right.")
    p.add_argument(
        "--config", metavar="PATH", help="config file (default: $WGAGENT_CONFIG or /etc/wgagent/config.yaml)"
    )
    p.add_argument("--version", action="version", version=f"wgagent {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--once", action="store_true", help="one reconcile pass, print the status JSON, exit 0/1")
    status = sub.add_parser("status", help="show the running daemon's state")
    status.add_argument("--json", action="store_true", help="print the JSON of /status")
    doctor = sub.add_parser("doctor", help="explain what is wrong and how to fix it")
    doctor.add_argument("--json", action="store_true", help='print {"ok": ..., "findings": [...]} as JSON')
    discover = sub.add_parser("discover", help="ask every public IP source once")
    discover.add_argument("--json", action="store_true", help="print the observations and decision as JSON")
    gc = sub.add_parser("gc", help="one dead-peer garbage collection pass")
    gc.add_argument("--dry-run", action="store_true", help="decide and report, remove nothing")
    gc.add_argument("--json", action="store_true", help="one JSON object per interface, one line each")
    sub.add_parser("version", help="print the version")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_usage(sys.stderr)
        return EXIT_USAGE
    if args.command == "version":
        print(f"wgagent {__version__}")
        return EXIT_OK
    try:
        code: int = _COMMANDS[args.command](args)
        return code
    except ConfigError as exc:
        print(f"wgagent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DaemonNotRunning as exc:
        print(f"wgagent: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except WgAgentError as exc:
        print(f"wgagent: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: one line for the user, the trace only on request
        if os.environ.get("WGAGENT_DEBUG"):
            raise
        message = f"internal error: {type(exc).__name__}: {exc} (WGAGENT_DEBUG=1 shows the trace)"
        print(f"wgagent: {message}", file=sys.stderr)
        return 70


def _load(args: argparse.Namespace) -> tuple[Any, str, bool]:
    from wgagent.daemon import load_config

    return load_config(args.config)


def cmd_run(args: argparse.Namespace) -> int:
    from wgagent import logs
    from wgagent.daemon import Daemon

    cfg, path, required = _load(args)
    logs.setup(cfg.log_level)
    daemon = Daemon(cfg, path, config_required=required)
    if args.once:
        code = asyncio.run(daemon.once())
        print(json.dumps(daemon.state.status(), indent=2))
        return code
    return run_bounded(daemon.serve())


def run_bounded(coro: Coroutine[Any, Any, int]) -> int:
    """Like ``asyncio.run()``, without waiting at the end for tasks that ignored cancellation.

    ``Daemon.serve()`` cancels its tasks and gives them a bounded grace; ``asyncio.run()``
    would then wait for stragglers without limit, making shutdown unbounded.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(coro)
    finally:
        stragglers = [t for t in asyncio.all_tasks(loop) if not t.done()]
        if stragglers:
            log.error(
                "exiting with %d task(s) that ignored cancellation: %s",
                len(stragglers),
                ", ".join(sorted(t.get_name() for t in stragglers)),
            )
        else:
            loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()


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


def cmd_status(args: argparse.Namespace) -> int:
    cfg, _, _ = _load(args)
    data = fetch_status(cfg.health.listen.url)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(format_status(data))
    return EXIT_OK if data.get("status") == "ok" else EXIT_FAIL


def format_status(data: dict[str, Any]) -> str:
    """The /status JSON as a table a person reads at a glance."""
    up = _duration(float(data.get("uptime_s") or 0))
    role = data.get("role") or "role unknown"
    lines = [f"wgagent {data.get('version')} on {data.get('node')} ({role}), up {up}: {data.get('status')}", ""]
    rows = [("CHECK", "STATE", "SINCE", "DETAIL")]
    for name, check in (data.get("checks") or {}).items():
        state = "ok" if check.get("ok") else "FAIL"
        rows.append((name, state, str(check.get("since", "")), str(check.get("detail", ""))))
    lines.extend(table(rows))
    return "\n".join(lines)


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns; the last column is not padded."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([c.ljust(w) for c, w in zip(r, widths, strict=False)] + [r[-1]]).rstrip() for r in rows]


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}d{h}h" if d else f"{h}h{m}m" if h else f"{m}m{s}s"


def cmd_discover(args: argparse.Namespace) -> int:
    from wgagent import logs
    from wgagent.publicip.report import discover_command

    cfg, _, _ = _load(args)
    logs.setup(cfg.log_level)
    return discover_command(cfg.public_ip, as_json=args.json, out=sys.stdout)


def cmd_doctor(args: argparse.Namespace) -> int:
    from wgagent import logs
    from wgagent.doctor import doctor_command

    cfg, path, _ = _load(args)
    logs.setup("error")  # the report says what went wrong; warnings would only repeat it
    return doctor_command(cfg, path, as_json=args.json, out=sys.stdout)


def cmd_gc(args: argparse.Namespace) -> int:
    from wgagent import logs
    from wgagent.wireguard.gc import gc_command

    cfg, _, _ = _load(args)
    logs.setup("warning")  # the command prints each removal itself

    async def one_pass() -> tuple[int, str]:
        cluster, note = await node_list_once(cfg)
        return await gc_command(cfg, dry_run=args.dry_run, as_json=args.json, cluster=cluster, cluster_note=note)

    code, text = asyncio.run(one_pass())
    print(text)
    return code


async def node_list_once(cfg: Any) -> tuple[Any, str]:
    """Every Node's keys from one LIST (``ClusterView``), or None and why not.

    The cluster source of ``wgagent gc``: the node watch's one-shot LIST with the list
    credential. Without it GC removes only peers without allowed IPs.
    """
    if not cfg.kube.enabled:
        return None, "kube.enabled is false"
    from wgagent.kube.client import KubeClient
    from wgagent.kube.kubeconfig import credential_paths
    from wgagent.kube.watch import NodeWatch
    from wgagent.state import State

    paths = credential_paths(cfg.kube, cfg.k3s, cfg.k3s.role)
    from wgagent.daemon import node_name

    state = State(node=node_name(cfg), version=__version__)
    watch = NodeWatch(state, KubeClient(paths.list, timeout_s=cfg.kube.request_timeout_s))
    try:
        await watch.reconcile()
    finally:
        await watch.close()
    view = watch.view()
    if view is None:
        error = state.status()["parts"].get("node_watch", {}).get("error") or "no answer"
        return None, f"node list unavailable: {error}"
    return view, ""


_COMMANDS = {
    "run": cmd_run,
    "status": cmd_status,
    "doctor": cmd_doctor,
    "discover": cmd_discover,
    "gc": cmd_gc,
}
