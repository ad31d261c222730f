"""The daemon's ``peer_gc`` part: a GC pass over every watched interface each ``interval_s``."""

from __future__ import annotations

import time
from collections.abc import Callable

from wgagent.config import Config
from wgagent.events import Record, ignore, peers_removed
from wgagent.model import ClusterView
from wgagent.part import Part
from wgagent.state import State
from wgagent.wireguard.backend import BackendFactory, HostNet
from wgagent.wireguard.gc.firstseen import FirstSeenStore
from wgagent.wireguard.gc.sweep import gc_all

MAX_LISTED = 100
"""Keys listed per kind in ``/status`` (the counts are always whole)."""


class GCPart(Part):
    name = "peer_gc"
    checks = ("peer_gc",)

    def __init__(
        self,
        state: State,
        cfg: Config,
        cluster: Callable[[], ClusterView | None],
        net: HostNet,
        backends: BackendFactory,
        *,
        clock: Callable[[], float] = time.time,
        events: Callable[[Record], None] = ignore,
    ) -> None:
        super().__init__(state)
        self.cfg = cfg
        self.events = events
        self.cluster = cluster
        self.interval_s = cfg.wireguard.gc.interval_s
        self.net = net
        self.backends = backends
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
            self.cfg.wireguard, self.net, self.backends, self.cluster(), self.store, now=self.clock(), dry_run=dry_run
        )
        if not results:
            self.state.set_check("peer_gc", True, f"nothing to clean: {note}")
            self.state.set_part(self.name, {"dry_run": dry_run, "interfaces": [], "note": note})
            return
        self.peers.clear()
        for r in results:
            removed = len(r.selection.remove) if r.ok and not dry_run else 0
            self.removed_total.inc(removed, interface=r.interface)
            if removed:
                self.events(peers_removed(removed, r.interface, [p.public_key for p in r.selection.remove]))
            for st, count in r.states.items():
                self.peers.set(count, interface=r.interface, state=st)
        ok = all(r.ok for r in results)
        self.state.set_check("peer_gc", ok, "; ".join(r.detail() for r in results))
        self.state.set_part(
            self.name, {"dry_run": dry_run, "interfaces": [r.to_json(limit=MAX_LISTED) for r in results]}
        )
