"""``wgagent gc [--dry-run] [--json]``: one dead-peer GC pass now, over every watched interface.

The node list comes from one LIST with the node watch's credential (``wiring.list_nodes_once``);
without it only peers without allowed IPs are removed, and the output says why. The pass
itself is the daemon's (``wireguard.gc.sweep.gc_all``). Imports neither the daemon nor
aiohttp.

On the real host (no test seams) the command sends each userspace device's UAPI get as soon
as its config is read, and only then imports asyncio and the rest of itself: wireguard-go
builds its reply (~50 ms for 10,000 peers) while Python loads, and the node list is fetched
while the reply is read. ``bench/bench_cli.py`` times the whole process.
"""

from __future__ import annotations

from wgagent.commands import EXIT_FAIL, EXIT_OK
from wgagent.config import Config, WireGuardConfig, load_from
from wgagent.timefmt import iso8601

TYPE_CHECKING = False  # not typing's (see cli.py): the command imports the rest once its gets are sent
if TYPE_CHECKING:
    import argparse
    import asyncio

    from wgagent import wiring
    from wgagent.model import ClusterView
    from wgagent.wireguard.backend import Backend, BackendFactory
    from wgagent.wireguard.gc.sweep import GCResult


def main(args: argparse.Namespace, seams: wiring.Seams | None = None) -> int:
    cfg = load_from(args.config)
    sent = send_gets(cfg.wireguard) if seams is None else {}
    # Only now: wireguard-go builds its replies while these load.
    import asyncio
    import dataclasses

    from wgagent import logs, wiring

    logs.setup("warning")  # the command prints each removal itself
    seams = seams or wiring.Seams()
    if sent:
        seams = dataclasses.replace(seams, backends=_opened(sent, seams.backends))
    code, text = asyncio.run(one_pass(cfg, seams, dry_run=args.dry_run, as_json=args.json))
    print(text)
    return code


def send_gets(wg: WireGuardConfig) -> dict[str, Backend]:
    """The real host's backend of each interface to watch, with its UAPI get already sent
    where it has a UAPI socket (the kernel's netlink dump is asked when it is read)."""
    from wgagent.wireguard.backend import HostNet, open_backend, resolve_interfaces
    from wgagent.wireguard.uapi import UapiBackend

    names, _ = resolve_interfaces(wg.interface, HostNet(), wg.uapi_dir)
    opened = {}
    for name in names:
        backend = open_backend(name, wg.uapi_dir)
        if isinstance(backend, UapiBackend):
            backend.send_get(name)
        opened[name] = backend
    return opened


def _opened(sent: dict[str, Backend], backends: BackendFactory) -> BackendFactory:
    """``backends``, except for the interfaces whose backend :func:`send_gets` opened."""

    def factory(ifname: str, uapi_dir: str) -> Backend:
        backend = sent.pop(ifname, None)
        return backend if backend is not None else backends(ifname, uapi_dir)

    return factory


async def one_pass(cfg: Config, seams: wiring.Seams, *, dry_run: bool, as_json: bool) -> tuple[int, str]:
    import asyncio

    from wgagent import wiring

    identity = wiring.decide_identity(cfg, seams)
    # The LIST (an HTTPS round trip, and the API server's time) goes on while the devices
    # are read.
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
    import asyncio
    import json

    from wgagent.wireguard.gc.firstseen import FirstSeenStore
    from wgagent.wireguard.gc.sweep import NodeList, gc_all

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
    if r.error:
        return r.detail()
    verb = "would remove" if r.dry_run else "removed"
    out = [r.detail()]
    out += [
        f"  {verb} {p.public_key}  endpoint {p.endpoint or '(none)'}  allowed IPs"
        f" {', '.join(p.allowed_ips) or '(none)'}  last handshake"
        f" {'never' if p.last_handshake is None else iso8601(p.last_handshake)}"
        for p in r.selection.remove
    ]
    out += [
        f"  kept {p.public_key}  of live node {r.owners.get(p.public_key, '?')}: unreachable, last handshake"
        f" {'never' if p.last_handshake is None else iso8601(p.last_handshake)} (removing it would cut the node"
        " off until flannel restarts)"
        for p in r.selection.kept_unreachable
    ]
    if r.selection.node_list == "unknown":
        out.append(
            f"  node list unknown{f' ({cluster_note})' if cluster_note else ''}: only peers without allowed IPs"
            " were considered"
        )
    return "\n".join(out)
