"""``wgagent gc [--dry-run] [--json]``: one dead-peer GC pass now, over every watched interface.

The node list comes from one LIST with the node watch's credential (``wiring.list_nodes_once``);
without it only peers without allowed IPs are removed, and the output says why. The pass
itself is the daemon's (``wireguard.gc.sweep.gc_all``). Imports neither the daemon nor
aiohttp's server.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from wgagent import logs, wiring
from wgagent.commands import EXIT_FAIL, EXIT_OK
from wgagent.config import Config, load_from
from wgagent.model import ClusterView
from wgagent.timefmt import iso8601
from wgagent.wireguard.gc.firstseen import FirstSeenStore
from wgagent.wireguard.gc.sweep import GCResult, NodeList, gc_all
from wgagent.wireguard.model import Peer


def main(args: argparse.Namespace, seams: wiring.Seams | None = None) -> int:
    cfg = load_from(args.config)
    logs.setup("warning")  # the command prints each removal itself
    code, text = asyncio.run(one_pass(cfg, seams or wiring.Seams(), dry_run=args.dry_run, as_json=args.json))
    print(text)
    return code


async def one_pass(cfg: Config, seams: wiring.Seams, *, dry_run: bool, as_json: bool) -> tuple[int, str]:
    identity = wiring.decide_identity(cfg, seams)
    # The LIST (an HTTPS round trip, and the API server's time) goes on while the devices
    # are read: wireguard-go takes ~50 ms to dump 10,000 peers.
    listing = asyncio.ensure_future(wiring.list_nodes_once(cfg, identity, seams))
    return await gc_command(cfg, seams, dry_run=dry_run, as_json=as_json, listing=listing)


async def gc_command(
    cfg: Config,
    seams: wiring.Seams,
    *,
    dry_run: bool,
    as_json: bool,
    cluster: ClusterView | None = None,
    cluster_note: str = "",
    listing: asyncio.Future[tuple[ClusterView | None, str]] | None = None,
) -> tuple[int, str]:
    """One GC pass over every interface; the exit code and what to print.

    ``--json`` prints one JSON object per interface, one per line (one line in the usual
    case of one interface): ``{"interface", "removed", "kept_unreachable", "dry_run", ...}``.
    ``cluster_note`` says why the node list is unknown, when it is. ``listing``, the node
    list and its note still coming (``wiring.list_nodes_once``), replaces both.
    """
    dry_run = dry_run or cfg.wireguard.gc.dry_run
    store = FirstSeenStore(cfg.state_dir)
    wg = cfg.wireguard
    nodes: NodeList = cluster if listing is None else asyncio.ensure_future(_view(listing))
    results, note = await gc_all(wg, seams.host_net, seams.backends, nodes, store, now=seams.clock(), dry_run=dry_run)
    if listing is not None:
        cluster, cluster_note = await listing
    if not results:
        if as_json:
            nothing: dict[str, object] = {"interface": None, "removed": [], "kept_unreachable": [], "dry_run": dry_run}
            return EXIT_FAIL, json.dumps(nothing | {"ok": False, "error": note})
        return EXIT_FAIL, f"wgagent: {note}"
    code = EXIT_OK if all(r.ok for r in results) else EXIT_FAIL
    unknown_note = cluster_note if cluster is None else ""
    if as_json:
        lines = [json.dumps(r.to_json() | ({"node_list_note": unknown_note} if unknown_note else {})) for r in results]
        return code, "\n".join(lines)
    return code, "\n".join(format_result(r, unknown_note) for r in results)


async def _view(listing: asyncio.Future[tuple[ClusterView | None, str]]) -> ClusterView | None:
    return (await listing)[0]


def format_result(r: GCResult, cluster_note: str = "") -> str:
    """A pass for a person: the headline, each removal, each unreachable live node."""
    out = [r.detail()]
    if r.error:
        return out[0]
    verb = "would remove" if r.dry_run else "removed"
    for p in r.selection.remove:
        out.append(
            f"  {verb} {p.public_key}  endpoint {p.endpoint or '(none)'}  allowed IPs"
            f" {', '.join(p.allowed_ips) or '(none)'}  last handshake {_handshake(p)}"
        )
    for p in r.selection.kept_unreachable:
        out.append(
            f"  kept {p.public_key}  of live node {r.owners.get(p.public_key, '?')}: unreachable, last handshake"
            f" {_handshake(p)} (removing it would cut the node off until flannel restarts)"
        )
    if r.selection.node_list == "unknown":
        out.append(
            f"  node list unknown{f' ({cluster_note})' if cluster_note else ''}: only peers without allowed IPs"
            " were considered"
        )
    return "\n".join(out)


def _handshake(peer: Peer) -> str:
    return "never" if peer.last_handshake is None else iso8601(peer.last_handshake)
