"""Which changes of mesh state become Events on this node (pure).

Each agent speaks for its own Node: its row of the matrix (can *this* node reach each other
one?) and the node-level inbound problems about itself. Cells towards it are the other nodes'
to report, so nothing is said twice.

- a cell from this node that turns not-ok, or changes cause: ``MeshPathDown`` (Warning), with
  the state, cause, node to fix and the fix;
- back to ok: ``MeshPathRestored``;
- an inbound problem about this node appears: ``InboundBlocked`` (Warning) with the fix; gone:
  ``InboundRestored``.

Cells that change alike (same new state, cause and node to fix) are one record, naming the
first few peers and the count: a node whose inbound shuts makes one Event, not 999.
"""

from __future__ import annotations

from dataclasses import dataclass

from wgagent import events as ev
from wgagent.mesh import model as m
from wgagent.mesh.diagnose import Diagnosis, Pair

INBOUND_CAUSES = (m.INBOUND_BLOCKED_UPSTREAM, m.INBOUND_BLOCKED_HOST, m.NAT_BOTH_SIDES)
NAMED = 3


@dataclass(frozen=True)
class Row:
    """This node's cells that are not ok, and its inbound problems (cause -> fix)."""

    cells: dict[str, Pair]
    inbound: dict[str, str]


def row(d: Diagnosis, me: str) -> Row:
    cells = dict(d.row(me))
    inbound = {p.cause: p.fix for p in d.problems if p.node == me and p.cause in INBOUND_CAUSES}
    return Row(cells, inbound)


def changes(me: str, before: Row | None, after: Row) -> list[ev.Record]:
    """The Event records for going from ``before`` (None: the first look) to ``after``."""
    old = before or Row({}, {})
    down: dict[tuple[str, str, str | None], list[Pair]] = {}
    restored: dict[str, list[str]] = {}
    for peer, p in sorted(after.cells.items()):
        prev = old.cells.get(peer)
        if prev is None or (prev.state, prev.cause, prev.node) != (p.state, p.cause, p.node):
            down.setdefault((p.state, p.cause, p.node), []).append(p)
    for peer, prev in sorted(old.cells.items()):
        if peer not in after.cells:
            restored.setdefault(prev.state, []).append(peer)
    out = []
    for (state, cause, node), pairs in down.items():
        out.append(ev.mesh_path_down(me, _peers([p.dst for p in pairs]), state, cause, node, pairs[0].fix))
    for was, peers in restored.items():
        out.append(ev.mesh_path_restored(me, _peers(peers), was))
    for cause, fix in sorted(after.inbound.items()):
        if cause not in old.inbound:
            out.append(ev.inbound_blocked(me, cause, fix))
    for cause in sorted(set(old.inbound) - set(after.inbound)):
        out.append(ev.inbound_restored(me, cause))
    return out


def _peers(names: list[str]) -> str:
    if len(names) <= NAMED:
        return ", ".join(names)
    return f"{', '.join(names[:NAMED])} and {len(names) - NAMED} more"
