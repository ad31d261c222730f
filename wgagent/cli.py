"""The ``wgagent`` command.

    wgagent [--config PATH] COMMAND

    run [--once]             the daemon in the foreground; --once: one pass, print the status JSON
    status [--json]          ask the running daemon (GET /status) and print a table or the JSON
    doctor [--json]          explain what is wrong on this node and how to fix it
    discover [--json]        ask every public IP source once and show the decision
    gc [--dry-run] [--json]  one dead-peer GC pass now
    mesh [--json]            which node pairs cannot talk, why, and the fix (every Node's report)
    version                  print the version (also --version)

Exit codes: 0 all good; 1 something checked is failing; 2 bad usage or config (one line on
stderr, never a traceback); 3 the daemon is not running (``status``); 70 a bug (one line;
``WGAGENT_DEBUG=1`` shows the trace).

This module only parses and dispatches: each command lives in ``wgagent/commands/`` and
is imported when it runs, so ``wgagent version`` and ``wgagent status`` start fast (the
version imports nothing at all: not even argparse; bench/bench_cli.py holds the numbers).
"""

from __future__ import annotations

import os
import sys

from wgagent import __version__
from wgagent.commands import EXIT_FAIL, EXIT_NOT_RUNNING, EXIT_OK, EXIT_USAGE

# No typing, no argparse until needed: each costs ``wgagent version`` a measurable part of its start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any, NoReturn

_VERSION_ONLY = (["version"], ["--version"])


def _help_width() -> int:
    """The width argparse gives help text (``shutil.get_terminal_size()``'s columns, less 2),
    computed as shutil does but without importing it: shutil imports five compression modules,
    and every command builds its parser (argparse asks for a formatter with each argument)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return (columns or 80) - 2


def _parser() -> argparse.ArgumentParser:
    import argparse

    width = _help_width()

    class _Parser(argparse.ArgumentParser):
        def __init__(self, **kwargs: Any) -> None:
            kwargs.setdefault("formatter_class", lambda prog: argparse.HelpFormatter(prog, width=width))
            super().__init__(**kwargs)

        def error(self, message: str) -> NoReturn:  # one line, exit 2, as for a bad config
            self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")

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
    mesh = sub.add_parser("mesh", help="which node pairs cannot talk, why, and the fix")
    mesh.add_argument("--json", action="store_true", help='print {"nodes", "pairs", "problems", "reports"} as JSON')
    sub.add_parser("version", help="print the version")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv in _VERSION_ONLY:  # nothing to parse and nothing to load
        print(f"wgagent {__version__}")
        return EXIT_OK
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        return EXIT_USAGE
    if args.command == "version":
        print(f"wgagent {__version__}")
        return EXIT_OK
    from wgagent.errors import ConfigError, DaemonNotRunning, WgAgentError

    try:
        command = __import__(f"wgagent.commands.{args.command}", fromlist=["main"])
        code: int = command.main(args)
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
