"""``wgagent run [--once]``: the daemon in the foreground (what systemd runs), or one pass.

``--once`` runs every enabled part's first pass, prints the ``/status`` JSON and exits 0
when every check passes, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections.abc import Coroutine
from typing import Any

from wgagent import logs
from wgagent.config import load_resolved
from wgagent.daemon import Daemon

log = logging.getLogger("wgagent")


def main(args: argparse.Namespace) -> int:
    cfg, path, required = load_resolved(args.config)
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
