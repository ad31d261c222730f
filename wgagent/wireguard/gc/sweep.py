"""One GC pass over one device: read it, decide (``policy``), remove in one transaction, log.

    result = await run_gc_pass(backend, "flannel-wg", cluster, store, now=now, policy=policy, dry_run=False)
    results, note = await gc_all(cfg.wireguard, net, open_backend, cluster, store, now=now, dry_run=False)

The daemon's part and ``wgagent gc`` both run passes through here; the wiring hands them
the backend factory and the interfaces to watch. ``cluster`` is the live nodes, None when
they are unknown, or a future of either: ``wgagent gc`` lists the Nodes while the device is
read, and a pass waits for the list only once it has the device.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wgagent.config import WireGuardConfig
from wgagent.errors import WireGuardError
from wgagent.model import ClusterView
from wgagent.timefmt import iso8601
from wgagent.wireguard.backend import Backend, BackendFactory, HostNet, resolve_interfaces
from wgagent.wireguard.gc.firstseen import FirstSeenStore
from wgagent.wireguard.gc.policy import GCPolicy, Selection, peer_states, select_stale_peers, update_first_seen
from wgagent.wireguard.model import Peer

log = logging.getLogger("wgagent.wireguard.gc")

NodeList = ClusterView | None | asyncio.Future[ClusterView | None]
"""The live nodes, None when unknown, or a future of either (see the module doc)."""


@dataclass(frozen=True)
class GCResult:
    interface: str
    backend: str | None
    dry_run: bool
    at: float
    peers: int = 0
    """Peers on the device before the pass."""
    selection: Selection = field(default_factory=Selection)
    owners: Mapping[str, str] = field(default_factory=dict)
    """Node name of each kept unreachable key."""
    states: Mapping[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self, *, limit: int | None = None) -> dict[str, Any]:
        """The CLI's ``--json`` (all keys) and ``/status`` (``limit`` keys per list)."""
        sel = self.selection
        removed = sel.removed_keys
        kept = [p.public_key for p in sel.kept_unreachable]
        return {
            "interface": self.interface,
            "backend": self.backend,
            "dry_run": self.dry_run,
            "at": iso8601(self.at),
            "ok": self.ok,
            "error": self.error,
            "peers": self.peers,
            "removed": removed[:limit] if limit is not None else removed,
            "removed_count": len(removed),
            "kept_unreachable": kept[:limit] if limit is not None else kept,
            "unreachable_nodes": {k: self.owners.get(k, "?") for k in kept[: limit or len(kept)]},
            "kept_unknown_count": len(sel.kept_unknown),
            "deferred_count": len(sel.deferred),
            "node_list": sel.node_list,
            "note": sel.note,
            "peer_states": dict(self.states),
        }

    def detail(self) -> str:
        """One line for the check."""
        if self.error:
            return self.error if self.error.startswith(self.interface) else f"{self.interface}: {self.error}"
        sel = self.selection
        n = len(sel.remove)
        if n:
            verb = "dry run, would remove" if self.dry_run else "removed"
            text = f"{self.interface}: {verb} {n} dead peer(s)"
        else:
            text = f"{self.interface}: nothing to remove"
        text += f" of {self.peers}"
        if sel.deferred:
            text += f", {len(sel.deferred)} more next pass"
        if sel.kept_unreachable:
            names = sorted({self.owners.get(p.public_key, "?") for p in sel.kept_unreachable})
            text += f"; kept {len(sel.kept_unreachable)} unreachable live node peer(s): {', '.join(names[:5])}"
            if len(names) > 5:
                text += f" and {len(names) - 5} more"
        if sel.kept_unknown:
            text += f"; kept {len(sel.kept_unknown)} stale peer(s) with allowed IPs"
        if sel.note:
            text += f" ({sel.note})"
        return text


def _log_removals(ifname: str, verb: str, peers: tuple[Peer, ...]) -> None:
    # One record, one line per peer: journald keeps every line, and 10,000 removals cost
    # one pass through the handlers instead of 10,000. Not built at all when INFO is off
    # (``wgagent gc`` logs warnings only and prints the removals itself).
    if not log.isEnabledFor(logging.INFO):
        return
    head = f"{ifname}: {verb} peer "
    lines = [
        f"{head}{p.public_key} endpoint={p.endpoint or '(none)'} allowed_ips={','.join(p.allowed_ips) or '(none)'}"
        f" last_handshake={'never' if p.last_handshake is None else iso8601(p.last_handshake)}"
        for p in peers
    ]
    log.info("%s", "\n".join(lines))


async def run_gc_pass(
    backend: Backend,
    ifname: str,
    nodes: NodeList,
    store: FirstSeenStore,
    *,
    now: float,
    policy: GCPolicy,
    dry_run: bool,
) -> GCResult:
    """Read, decide, remove in one transaction, log each removal. Device errors are in the
    result (``error``), not raised, so a pass over several interfaces goes on."""
    try:
        device = await backend.get(ifname)
    except WireGuardError as exc:
        unread = Selection(node_list="unknown" if await _known(nodes) is None else "known")
        return GCResult(ifname, backend.kind, dry_run, now, selection=unread, error=str(exc))
    cluster = await _known(nodes)
    seen = update_first_seen(store.get(ifname), device, now)
    keys = cluster.current_keys if cluster is not None else None
    sel = select_stale_peers(device, keys, seen, now, policy)
    owners = {p.public_key: (cluster.owner_of(p.public_key) if cluster else None) or "?" for p in sel.kept_unreachable}
    error = await _remove(backend, ifname, sel, seen) if sel.remove and not dry_run else None
    if sel.remove and dry_run:
        _log_removals(ifname, "would remove (dry run)", sel.remove)
    store.put(ifname, seen)
    for p in sel.kept_unreachable:
        log.debug("%s: keeping unreachable peer %s of live node %s", ifname, p.public_key, owners[p.public_key])
    removed = bool(sel.remove) and not dry_run and error is None
    states = peer_states(device, sel, now, removed=removed)
    return GCResult(ifname, backend.kind, dry_run, now, len(device.peers), sel, owners, states, error)


async def _known(nodes: NodeList) -> ClusterView | None:
    return await nodes if isinstance(nodes, asyncio.Future) else nodes


async def _remove(backend: Backend, ifname: str, sel: Selection, seen: dict[str, float]) -> str | None:
    """Remove the selected peers in one transaction; the error, or None (then they are
    logged and forgotten in ``seen``)."""
    try:
        await backend.remove_peers(ifname, sel.removed_keys)
    except WireGuardError as exc:
        error = f"removing {len(sel.remove)} peer(s) failed: {exc}"
        log.error("%s: %s", ifname, error)
        return error
    _log_removals(ifname, "removed", sel.remove)
    for key in sel.removed_keys:
        seen.pop(key, None)
    return None


async def gc_all(
    wg: WireGuardConfig,
    net: HostNet,
    backends: BackendFactory,
    cluster: NodeList,
    store: FirstSeenStore,
    *,
    now: float,
    dry_run: bool,
) -> tuple[list[GCResult], str]:
    """One pass over every interface to watch; the note when ``auto`` found none."""
    names, note = resolve_interfaces(wg.interface, net, wg.uapi_dir)
    policy = GCPolicy.from_config(wg.gc)
    results = []
    for name in names:
        backend = backends(name, wg.uapi_dir)
        results.append(await run_gc_pass(backend, name, cluster, store, now=now, policy=policy, dry_run=dry_run))
    return results, note
