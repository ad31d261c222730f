"""``wgagent mesh [--json]``: which node pairs cannot talk, why, which node to fix, and the fix.

Reads every Node's ``wgagent.io/mesh`` report with one LIST, with the credential the node
watch uses (``wiring.list_nodes_once``: k3s's controller credential on agents, falling back
to the kubelet's), and diagnoses them (``mesh.diagnose``, pure). Nothing is written.

Text: up to 40 nodes the N x N matrix (rows from, columns to) with a legend, then each pair
that is not ok and each node-level problem, with its cause, the node to fix and the fix;
above 40 nodes the faulty pairs grouped by cause and per-node counts. ``--json`` (the contract
of issue 14; more fields may be added)::

    {"nodes": [names], "pairs": [{"from", "to", "state", "cause", "node", "fix", "since"}],
     "problems": [{"node", "cause", "fix", "since"}], "reports": {name: {"age_s", "stale", "state"}},
     "ok": bool, "at": "...", "ok_pairs": int, "ok_pairs_listed": bool}

``pairs`` holds every ordered pair up to 100 nodes, above that only those that are not ok
(``ok_pairs`` counts the others; ``ok_pairs_listed`` says which). Exit 0 when every pair is ok
and no node has a problem, 1 when not (or when the Nodes cannot be read), 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from wgagent import logs, wiring
from wgagent.commands import EXIT_FAIL, EXIT_OK
from wgagent.config import Config, load_from
from wgagent.errors import WgAgentError
from wgagent.mesh import diagnose, render
from wgagent.mesh.report import published
from wgagent.model import ClusterView


def main(args: argparse.Namespace, seams: wiring.Seams | None = None) -> int:
    cfg = load_from(args.config)
    logs.setup("warning")
    code, text = asyncio.run(mesh_command(cfg, seams or wiring.Seams(), as_json=args.json))
    print(text, end="" if text.endswith("\n") else "\n")
    return code


async def mesh_command(cfg: Config, seams: wiring.Seams, *, as_json: bool) -> tuple[int, str]:
    """One LIST of the Nodes, the diagnosis, the exit code and what to print."""
    identity = wiring.decide_identity(cfg, seams)
    view, note = await wiring.list_nodes_once(cfg, identity, seams)
    if view is None:
        raise WgAgentError(f"cannot read the mesh reports: {note}")
    return show(view, seams.clock(), as_json=as_json)


def show(view: ClusterView, now: float, *, as_json: bool) -> tuple[int, str]:
    """The exit code and the text (or JSON) for the reports in ``view`` at ``now``."""
    d = diagnose.diagnose(view, published(view), now)
    text = json.dumps(render.to_json(d), indent=2) if as_json else render.to_text(d)
    return (EXIT_OK if d.ok else EXIT_FAIL), text
