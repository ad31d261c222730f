"""``wgagent mesh`` output: the ``--json`` document and the text (a matrix, or a summary).

The JSON contract (issue 14; keys kept exactly, more may be added)::

    {"nodes": ["a", "b", "c"],
     "pairs": [{"from": "a", "to": "c", "state": "degraded", "cause": "inbound-blocked-upstream",
                "node": "c", "fix": "open UDP 51820 inbound from 203.0.113.1 in ...",
                "since": "2027-01-15T08:00:00+00:00"}],
     "problems": [{"node": "c", "cause": "inbound-blocked-upstream", "fix": "...", "since": "..."}],
     "reports": {"a": {"age_s": 12, "stale": false, "state": "ok"}, ...},
     "ok": false, "at": "...", "ok_pairs": 5, "ok_pairs_listed": true}

``pairs`` lists every ordered pair when the cluster has at most :data:`LIST_ALL_MAX` nodes
(``ok_pairs_listed`` true); above that only the pairs that are not ok (a pair absent from
the list is ok; ``ok_pairs`` counts them), since 1,000 nodes make 999,000 pairs. ``node`` is
null when the cause is unknown; ``since`` is null when not known (and for ok pairs).

The text: up to :data:`GRID_MAX` nodes an N x N matrix (rows from, columns to) with one symbol
per cell and a legend; then each pair that is not ok and each node-level problem, with its
cause, the node to fix and the fix. Above that, instead of the grid: the pairs that are not ok
grouped by cause and node, and per-node counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from wgagent.mesh.diagnose import Diagnosis, Pair, Problem
from wgagent.timefmt import iso8601, iso8601_or_none

LIST_ALL_MAX = 100
GRID_MAX = 40
SYMBOLS = {"ok": ".", "degraded": "~", "down": "X", "unknown": "?"}
SELF = "-"
LEGEND = "legend: . ok   ~ degraded (lives only while the other side initiates)   X down   ? unknown   - self"
CORNER = "from \\ to"
EXAMPLES = 5
COUNT_ROWS = 50


def pair_json(p: Pair) -> dict[str, Any]:
    return {
        "from": p.src,
        "to": p.dst,
        "state": p.state,
        "cause": p.cause,
        "node": p.node,
        "fix": p.fix,
        "since": iso8601_or_none(p.since),
    }


def problem_json(p: Problem) -> dict[str, Any]:
    return {"node": p.node, "cause": p.cause, "fix": p.fix, "since": iso8601_or_none(p.since)}


def to_json(d: Diagnosis, *, list_all_max: int = LIST_ALL_MAX) -> dict[str, Any]:
    """The ``wgagent mesh --json`` document."""
    n = len(d.nodes)
    include_ok = n <= list_all_max
    reports = {
        name: {
            "age_s": None if s.age_s is None else round(s.age_s),
            "stale": s.stale,
            "state": s.state,
        }
        for name, s in sorted(d.reports.items())
    }
    return {
        "nodes": list(d.nodes),
        "pairs": [pair_json(p) for p in d.pairs(include_ok=include_ok)],
        "problems": [problem_json(p) for p in d.problems],
        "reports": reports,
        "ok": d.ok,
        "at": iso8601(d.at),
        "ok_pairs": n * (n - 1) - sum(d.states().values()),
        "ok_pairs_listed": include_ok,
    }


def to_text(d: Diagnosis, *, grid_max: int = GRID_MAX) -> str:
    """The ``wgagent mesh`` text."""
    out = [_headline(d), ""]
    if len(d.nodes) <= grid_max:
        out += _grid(d)
        out += ["", LEGEND]
        out += _pair_lines(d.pairs())
    else:
        out += _grouped(d)
        out += _counts(d)
    out += _problem_lines(d.problems)
    return "\n".join(out).rstrip() + "\n"


def _headline(d: Diagnosis) -> str:
    n = len(d.nodes)
    if not n:
        return "wgagent mesh: no node runs flannel's WireGuard backend or reports"
    states = Counter(d.states())
    bad = ", ".join(f"{states[s]} {s}" for s in ("down", "degraded", "unknown") if states[s])
    total = sum(states.values())
    pairs = f"all {n * (n - 1)} pairs ok" if not bad else f"{total} of {n * (n - 1)} pairs not ok ({bad})"
    problems = f", {len(d.problems)} node problem{'s' if len(d.problems) != 1 else ''}" if d.problems else ""
    return f"wgagent mesh: {n} nodes, {pairs}{problems} (at {iso8601(d.at)})"


def _grid(d: Diagnosis) -> list[str]:
    names = d.nodes
    width = len(str(len(names)))
    label = max((len(n) for n in names), default=0)
    lead = max(width + 2 + label + 2, len(CORNER) + 2)
    head = " ".join(str(i + 1).rjust(width) for i in range(len(names)))
    lines = [(CORNER.ljust(lead) + head).rstrip()]
    for i, a in enumerate(names):
        cells = " ".join((SELF if a == b else SYMBOLS[d.cell(a, b).state]).rjust(width) for b in names)
        lines.append(f"{str(i + 1).rjust(width)}  {a}".ljust(lead) + cells)
    return lines


def _pair_line(p: Pair) -> str:
    node = f"fix on {p.node}" if p.node else "no node named"
    return f"  {p.src} -> {p.dst}  {p.state}  {p.cause}  {node}: {p.fix}"


def _pair_lines(pairs: Iterable[Pair]) -> list[str]:
    lines = [_pair_line(p) for p in pairs]
    return ["", "Pairs not ok:", *lines] if lines else []


def _grouped(d: Diagnosis) -> list[str]:
    """Faulty pairs by (state, cause, node to fix): one line each, a few examples."""
    groups: dict[tuple[str, str, str | None], list[Pair]] = {}
    for p in d.pairs():
        groups.setdefault((p.state, p.cause, p.node), []).append(p)
    if not groups:
        return []
    lines = ["Pairs not ok, by cause and node to fix:"]
    order = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0][0], kv[0][1], kv[0][2] or ""))
    for (state, cause, node), pairs in order:
        where = f"fix on {node}" if node else "no node named"
        lines.append(f"  {len(pairs)} {state}  {cause}  {where}: {pairs[0].fix}")
        examples = ", ".join(f"{p.src} -> {p.dst}" for p in pairs[:EXAMPLES])
        more = f" and {len(pairs) - EXAMPLES} more" if len(pairs) > EXAMPLES else ""
        lines.append(f"      {examples}{more}")
    return lines


def _counts(d: Diagnosis) -> list[str]:
    """Per node: cells from it and to it that are not ok (the nodes with any, most first)."""
    out_c: Counter[str] = Counter()
    in_c: Counter[str] = Counter()
    for a, b in d.faulty:
        out_c[a] += 1
        in_c[b] += 1
    involved = sorted(set(out_c) | set(in_c), key=lambda n: (-(out_c[n] + in_c[n]), n))
    if not involved:
        return []
    label = max(len(n) for n in involved[:COUNT_ROWS])
    lines = ["", f"{'node'.ljust(label)}  from-not-ok  to-not-ok"]
    lines += [f"{n.ljust(label)}  {out_c[n]:>11}  {in_c[n]:>9}" for n in involved[:COUNT_ROWS]]
    if len(involved) > COUNT_ROWS:
        lines.append(f"... and {len(involved) - COUNT_ROWS} more nodes")
    return lines


def _problem_lines(problems: Iterable[Problem]) -> list[str]:
    lines = []
    for p in problems:
        since = f" (since {iso8601(p.since)})" if p.since is not None else ""
        lines.append(f"  {p.node}  {p.cause}{since}: {p.fix}")
    return ["", "Node problems:", *lines] if lines else []
