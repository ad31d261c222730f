"""The ``peer_gc`` check: remove dead WireGuard peers, never a live node's.

flannel adds a peer per Node key and removes it only when the Node is deleted, so peers of
nodes that re-keyed (reboot: new key, its routes moved to the new peer, the old one left with
no allowed IPs) and of nodes that vanished pile up (k3s #5216: tens of thousands).

:func:`select_stale_peers` decides, as a pure function of the device, the live nodes' keys,
when wgagent first saw each peer, ``now`` and the policy:

- candidates: the last handshake is older than ``stale_after_s``, or there never was one and
  wgagent has seen the peer for longer than that (first-seen times persist in ``state_dir``);
- of those, remove (a) peers whose key is no live Node's current key, (b) peers with no
  allowed IPs;
- never a live Node's current key, stale or not: flannel would not re-add it until it
  restarts or that Node changes, so removing it cuts the node off. It is reported as
  unreachable instead;
- node list unknown: only (b). The node list is also not trusted (only (b) again) when a
  peer with allowed IPs handshakes but holds no Node's key: the list is then incomplete (a
  credential that sees only its own Node), and (a) would cut off nodes it does not show;
- at most ``max_removals_per_pass``, the longest silent first.

:func:`run_gc_pass` reads the device, decides, and removes in one transaction; the daemon's
:class:`GCPart` and ``wgagent gc`` both call it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from wgagent import fsutil
from wgagent.config import Config, GCConfig
from wgagent.errors import WireGuardError, WriteError
from wgagent.model import ClusterView
from wgagent.part import Part
from wgagent.state import State
from wgagent.timefmt import iso8601
from wgagent.wireguard.backend import Backend, BackendFactory, HostNet, open_backend, resolve_interfaces
from wgagent.wireguard.model import REJECT_AFTER_S, Device, Peer

log = logging.getLogger(__name__)

FIRST_SEEN_FILE = "wireguard-peers-first-seen.json"
_MAX_LISTED = 100


@dataclass(frozen=True)
class GCPolicy:
    stale_after_s: float = 300.0
    max_removals_per_pass: int = 1000

    @classmethod
    def from_config(cls, cfg: GCConfig) -> GCPolicy:
        return cls(cfg.stale_after_s, cfg.max_removals_per_pass)


@dataclass(frozen=True)
class Selection:
    remove: tuple[Peer, ...] = ()
    """Removed by this pass (or, in a dry run, what a real pass would remove), oldest first."""
    kept_unreachable: tuple[Peer, ...] = ()
    """Stale, but a live Node's current key: kept, and reported."""
    kept_unknown: tuple[Peer, ...] = ()
    """Stale with allowed IPs while the node list is unknown or untrusted: kept."""
    deferred: tuple[Peer, ...] = ()
    """Removable, but over ``max_removals_per_pass``: the next pass takes them."""
    node_list: str = "known"
    """``known``, ``unknown`` (no list) or ``untrusted`` (see the module doc)."""
    note: str = ""

    @property
    def removed_keys(self) -> list[str]:
        return [p.public_key for p in self.remove]


def last_activity(peer: Peer, first_seen: Mapping[str, float]) -> float | None:
    """The last handshake, or when wgagent first saw a peer that never had one."""
    return peer.last_handshake if peer.last_handshake is not None else first_seen.get(peer.public_key)


def is_stale(peer: Peer, first_seen: Mapping[str, float], now: float, stale_after_s: float) -> bool:
    since = last_activity(peer, first_seen)
    return since is not None and now - since > stale_after_s


def select_stale_peers(
    device: Device,
    cluster_keys: frozenset[str] | None,
    first_seen: Mapping[str, float],
    now: float,
    policy: GCPolicy,
) -> Selection:
    """Which peers of ``device`` to remove now (see the module doc for the rules).

    ``cluster_keys``: every live Node's current public key, or None when the node list is
    unknown. ``first_seen``: epoch seconds at which wgagent first saw each key; a peer that
    never handshook and is missing here counts as seen just now (never a candidate).
    """
    stale_after = policy.stale_after_s
    live = cluster_keys if cluster_keys is not None else frozenset()
    own = device.public_key
    unreachable: list[tuple[float, str, Peer]] = []
    no_ips: list[tuple[float, str, Peer]] = []
    with_ips: list[tuple[float, str, Peer]] = []
    strangers: list[Peer] = []
    # One loop, no calls per peer: this runs over every peer of a device that may hold 10,000.
    for peer in device.peers:
        key = peer.public_key
        hs = peer.last_handshake
        since = hs if hs is not None else first_seen.get(key)
        if since is None or now - since <= stale_after or key == own:
            if hs is not None and cluster_keys is not None and peer.allowed_ips and key not in live and key != own:
                strangers.append(peer)  # handshakes, but no Node holds its key
            continue
        if key in live:
            unreachable.append((since, key, peer))
        elif peer.allowed_ips:
            with_ips.append((since, key, peer))
        else:
            no_ips.append((since, key, peer))
    node_list, note = "known", ""
    if cluster_keys is None:
        node_list, note = "unknown", "node list unknown: only peers without allowed IPs are removed"
    elif strangers:
        node_list = "untrusted"
        note = (
            f"node list looks incomplete: {len(strangers)} peer(s) with allowed IPs handshake but hold no"
            f" Node's key (e.g. {strangers[0].public_key}); only peers without allowed IPs are removed"
        )
    if node_list == "known":
        removable, unknown = no_ips + with_ips, []
    else:
        removable, unknown = no_ips, with_ips
    removable.sort()  # the longest silent first; keys are unique, so Peers are never compared
    unknown.sort()
    unreachable.sort()
    cap = policy.max_removals_per_pass
    return Selection(
        remove=tuple(t[2] for t in removable[:cap]),
        kept_unreachable=tuple(t[2] for t in unreachable),
        kept_unknown=tuple(t[2] for t in unknown),
        deferred=tuple(t[2] for t in removable[cap:]),
        node_list=node_list,
        note=note,
    )


def update_first_seen(previous: Mapping[str, float], device: Device, now: float) -> dict[str, float]:
    """First-seen times for the device's peers now: kept for known keys, ``now`` for new ones;
    keys no longer on the device are dropped (a peer added again is new again)."""
    get, seen_now = previous.get, int(now)
    return {p.public_key: get(p.public_key, seen_now) for p in device.peers}


def peer_states(device: Device, selection: Selection, now: float, *, removed: bool) -> dict[str, int]:
    """``wgagent_peers{state=...}`` after a pass: active (handshake in the last 180 s),
    unreachable (stale live node), stale (stale, kept or deferred), idle (the rest)."""
    selected = len(selection.remove)
    # Selected peers are stale (older than stale_after_s >= 180 s), so never active.
    active = sum(1 for p in device.peers if p.last_handshake is not None and now - p.last_handshake <= REJECT_AFTER_S)
    unreachable = len(selection.kept_unreachable)
    stale = len(selection.kept_unknown) + len(selection.deferred) + (0 if removed else selected)
    left = len(device.peers) - (selected if removed else 0)
    return {"active": active, "idle": left - active - unreachable - stale, "stale": stale, "unreachable": unreachable}


# --- first-seen times, kept in state_dir -----------------------------------------------------------


class FirstSeenStore:
    """``{ifname: {public_key: epoch seconds}}`` in ``<state_dir>/wireguard-peers-first-seen.json``.

    A corrupt or unreadable file is logged and treated as empty: then never-handshaked peers
    only become candidates ``stale_after_s`` later, which is the safe direction.
    """

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, FIRST_SEEN_FILE)
        self._data: dict[str, dict[str, float]] | None = None
        self._warned = False

    def get(self, ifname: str) -> dict[str, float]:
        if self._data is None:
            self._data = self._load()
        return self._data.get(ifname, {})

    def put(self, ifname: str, seen: dict[str, float]) -> None:
        if self._data is None:
            self._data = self._load()
        self._data[ifname] = seen
        # Compact and unsorted, not fsutil.save_json's indented sorted form: with 10,000 peers
        # that is 35 ms of pure-Python encoding per pass, this ~3 ms (the C encoder). The key
        # order is the device's, so unchanged state still encodes the same and is not rewritten.
        data = json.dumps({"version": 1, "interfaces": self._data}, separators=(",", ":"))
        try:
            fsutil.atomic_write(self.path, data.encode() + b"\n")
            self._warned = False
        except WriteError as exc:
            if not self._warned:
                log.warning("cannot keep peer first-seen times (GC of never-handshaked peers waits): %s", exc)
                self._warned = True

    def _load(self) -> dict[str, dict[str, float]]:
        raw = fsutil.load_json(self.path)
        out: dict[str, dict[str, float]] = {}
        if not isinstance(raw, dict) or not isinstance(raw.get("interfaces"), dict):
            if raw is not None:
                log.warning("ignoring %s: not a first-seen file", self.path)
            return out
        for ifname, seen in raw["interfaces"].items():
            if isinstance(seen, dict):  # JSON object keys are always strings
                out[ifname] = {k: v for k, v in seen.items() if type(v) is int or type(v) is float}
        return out


# --- one pass -------------------------------------------------------------------------------------


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


def _fmt_handshake(peer: Peer) -> str:
    return "never" if peer.last_handshake is None else iso8601(peer.last_handshake)


def _log_removals(ifname: str, verb: str, peers: tuple[Peer, ...]) -> None:
    # One record, one line per peer: journald keeps every line, and 10,000 removals cost
    # one pass through the handlers instead of 10,000.
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
    cluster: ClusterView | None,
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
        unread = Selection(node_list="unknown" if cluster is None else "known")
        return GCResult(ifname, backend.kind, dry_run, now, selection=unread, error=str(exc))
    seen = update_first_seen(store.get(ifname), device, now)
    keys = cluster.current_keys if cluster is not None else None
    sel = select_stale_peers(device, keys, seen, now, policy)
    owners = {p.public_key: (cluster.owner_of(p.public_key) if cluster else None) or "?" for p in sel.kept_unreachable}
    error = None
    removed = False
    if sel.remove and not dry_run:
        try:
            await backend.remove_peers(ifname, sel.removed_keys)
            removed = True
        except WireGuardError as exc:
            error = f"removing {len(sel.remove)} peer(s) failed: {exc}"
            log.error("%s: %s", ifname, error)
        if removed:
            _log_removals(ifname, "removed", sel.remove)
            for key in sel.removed_keys:
                seen.pop(key, None)
    elif sel.remove:
        _log_removals(ifname, "would remove (dry run)", sel.remove)
    store.put(ifname, seen)
    for p in sel.kept_unreachable:
        log.debug("%s: keeping unreachable peer %s of live node %s", ifname, p.public_key, owners[p.public_key])
    states = peer_states(device, sel, now, removed=removed)
    return GCResult(ifname, backend.kind, dry_run, now, len(device.peers), sel, owners, states, error)


async def gc_all(
    cfg: Config,
    cluster: ClusterView | None,
    store: FirstSeenStore,
    *,
    now: float,
    dry_run: bool,
    net: HostNet | None = None,
    backend_factory: BackendFactory = open_backend,
) -> tuple[list[GCResult], str]:
    """One pass over every interface to watch; the note when ``auto`` found none."""
    wg = cfg.wireguard
    names, note = resolve_interfaces(wg.interface, net or HostNet(), wg.uapi_dir)
    policy = GCPolicy.from_config(wg.gc)
    results = []
    for name in names:
        backend = backend_factory(name, wg.uapi_dir)
        results.append(await run_gc_pass(backend, name, cluster, store, now=now, policy=policy, dry_run=dry_run))
    return results, note


class GCPart(Part):
    name = "peer_gc"
    checks = ("peer_gc",)

    def __init__(
        self,
        state: State,
        cfg: Config,
        cluster: Callable[[], ClusterView | None],
        *,
        net: HostNet | None = None,
        backend_factory: BackendFactory = open_backend,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(state)
        self.cfg = cfg
        self.cluster = cluster
        self.interval_s = cfg.wireguard.gc.interval_s
        self.net = net or HostNet()
        self.backend_factory = backend_factory
        self.clock = clock
        self.store = FirstSeenStore(cfg.state_dir)
        m = state.metrics
        self.removed_total = m.counter(
            "wgagent_gc_removed_total", "Dead WireGuard peers removed by GC.", ("interface",)
        )
        self.peers = m.gauge(
            "wgagent_peers", "WireGuard peers after the last GC pass, by state.", ("interface", "state")
        )

    async def reconcile(self) -> None:
        dry_run = self.cfg.wireguard.gc.dry_run
        results, note = await gc_all(
            self.cfg,
            self.cluster(),
            self.store,
            now=self.clock(),
            dry_run=dry_run,
            net=self.net,
            backend_factory=self.backend_factory,
        )
        if not results:
            self.state.set_check("peer_gc", True, f"nothing to clean: {note}")
            self.state.set_part(self.name, {"dry_run": dry_run, "interfaces": [], "note": note})
            return
        self.peers.clear()
        for r in results:
            removed = len(r.selection.remove) if r.ok and not dry_run else 0
            self.removed_total.inc(removed, interface=r.interface)
            for st, count in r.states.items():
                self.peers.set(count, interface=r.interface, state=st)
        ok = all(r.ok for r in results)
        self.state.set_check("peer_gc", ok, "; ".join(r.detail() for r in results))
        self.state.set_part(
            self.name, {"dry_run": dry_run, "interfaces": [r.to_json(limit=_MAX_LISTED) for r in results]}
        )


# --- ``wgagent gc``: one pass now ------------------------------------------------------------------


async def gc_command(
    cfg: Config,
    *,
    dry_run: bool,
    as_json: bool,
    cluster: ClusterView | None,
    cluster_note: str = "",
    now: float | None = None,
    net: HostNet | None = None,
    backend_factory: BackendFactory = open_backend,
) -> tuple[int, str]:
    """One GC pass over every interface; the exit code and what to print.

    ``--json`` prints one JSON object per interface, one per line (one line in the usual
    case of one interface): ``{"interface", "removed", "kept_unreachable", "dry_run", ...}``.
    ``cluster_note`` says why the node list is unknown, when it is.
    """
    dry_run = dry_run or cfg.wireguard.gc.dry_run
    store = FirstSeenStore(cfg.state_dir)
    results, note = await gc_all(
        cfg,
        cluster,
        store,
        now=time.time() if now is None else now,
        dry_run=dry_run,
        net=net,
        backend_factory=backend_factory,
    )
    if not results:
        if as_json:
            return 1, json.dumps(
                {
                    "interface": None,
                    "removed": [],
                    "kept_unreachable": [],
                    "dry_run": dry_run,
                    "ok": False,
                    "error": note,
                }
            )
        return 1, f"wgagent: {note}"
    code = 0 if all(r.ok for r in results) else 1
    if as_json:
        lines = []
        for r in results:
            data = r.to_json()
            if cluster is None and cluster_note:
                data["node_list_note"] = cluster_note
            lines.append(json.dumps(data))
        return code, "\n".join(lines)
    return code, "\n".join(format_result(r, cluster_note if cluster is None else "") for r in results)


def format_result(r: GCResult, cluster_note: str = "") -> str:
    """A pass for a person: the headline, each removal, each unreachable live node."""
    out = [r.detail()]
    if r.error:
        return out[0]
    verb = "would remove" if r.dry_run else "removed"
    for p in r.selection.remove:
        out.append(
            f"  {verb} {p.public_key}  endpoint {p.endpoint or '(none)'}  allowed IPs"
            f" {', '.join(p.allowed_ips) or '(none)'}  last handshake {_fmt_handshake(p)}"
        )
    for p in r.selection.kept_unreachable:
        out.append(
            f"  kept {p.public_key}  of live node {r.owners.get(p.public_key, '?')}: unreachable, last handshake"
            f" {_fmt_handshake(p)} (removing it would cut the node off until flannel restarts)"
        )
    if r.selection.node_list == "unknown":
        out.append(
            f"  node list unknown{f' ({cluster_note})' if cluster_note else ''}: only peers without allowed IPs"
            " were considered"
        )
    return "\n".join(out)
