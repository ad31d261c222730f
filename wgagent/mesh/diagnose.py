"""Every agent's report + the Node list -> which pairs cannot talk, why, and which node to fix.

:func:`diagnose` is pure. A *cell* (from A, to B) answers "can A reach B?": the WireGuard
session between them, and whether a *new* flow from A to B's advertised ``public-ip``:Port
would get through (that is what a restarted peer, or a new one, needs). Its state is ``ok``;
``degraded`` (the session works, but A could not open it: it lives only because B initiates,
and dies when B stops); ``down`` (no session); or ``unknown`` (A does not report).

How each fault looks from both sides
====================================

Both ends of a pair run flannel's WireGuard with persistent keepalive (k3s: 25 s), so a live
pair handshakes every two minutes and each side hears the other at least every 25 s. The
handshake packets themselves count: linux ``wg_receive_handshake_packet`` and wireguard-go
``RoutineHandshake`` add a valid initiation to the peer's rx bytes (and roam its endpoint to
the sender's address) even when the handshake cannot complete. So for a dead pair, "A still
hears B" (A's rx from B grows: ``hr`` in A's report) tells the direction: B reaches A, A does
not reach B.

*UDP dropped on the path to B* (B's security group, a cloud firewall; ``inbound-blocked-upstream``).
Cloud firewalls are stateful: B's own flows to A bring A's answers back, so the session lives
while B initiates, and the pair looks fine in ``wg show``. A's probes (new flows from an
ephemeral port) never reach B's device: B's tap sees none from A (``i: miss`` at B), nor from
anyone else when the whole port is closed (B's summary: ``in.ok`` 0). Cell A->B is degraded
(down once the session dies), node to fix B, in its provider's control. With a stateless drop
(the lab's router) the session dies as well. First B stops hearing A (nothing received for
two keepalive intervals: B lists A ``down`` without ``hr``) while A still hears B and finds
the session fine; then the session expires and A lists B ``down``, still hearing B's
initiations (``hr``). Both pictures say the same: B's inbound is shut; the first names it
about a minute after the fault, long before a probe is missed. A probe from only *some*
senders missing means B's firewall admits some sources only (or those senders' outbound is
filtered): named per pair, still at B.

*A host firewall on B* (Oracle's image ``REJECT``, ufw, firewalld; ``inbound-blocked-host``).
The same from A's side, but B's tap *does* see A's probes at the device and its late input
counter does not: B's report says ``i: host`` and names the rule. Node to fix: B.

*Both behind NAT without an inbound path* (``nat-both-sides``). Neither can open a flow to
the other: the session is down, neither hears the other, and both report ``nat`` and no cloud
provider (a cloud's 1:1 NAT forwards whatever its security group admits: that is upstream,
with a control to open). Named as soon as one side has seen the session die, and also when
each side still holds the port the other's NAT had mapped (the mapping died with the session):
setting the advertised port back (the heal) helps only where it is forwarded. Soon after,
both also show no inbound at all (``in.ok`` 0, every expected sender missing), which
confirms it. One side is enough to fix: the first by name is
named, the fix says either.

*A wrong public-ip on B* (``wrong-endpoint``). flannel on A sets B's endpoint to the
advertised address W, where nothing answers. B's initiations reach A from its real address R:
A's WireGuard roams to R and the session works (A lists B as ``roamed``, endpoint R), but any
new flow to W fails (A's probe too, so B also sees A's probes missing). B's own report says
the public address it discovered (R) differs from its advertised one (W), and B's probes reach
others from R (``i: src`` about B at them). Node to fix: B (its ``public-ip-overwrite``).

*An endpoint drifted on both sides* (``endpoint-drift``; flannel sets endpoints only on lease
events and never corrects a roamed, dead one: flannel #1770). Each side sends to a port where
nobody listens: session down, neither hears the other, both list the other as ``drift``, and
B's advertised address is right (B's own ``pub`` agrees). Node to fix: the one holding the
wrong endpoint (A in cell A->B); wgagent heals it itself (``mesh.heal_endpoints``). A drift on
one side only heals itself as soon as the other side's initiation arrives (WireGuard roams).

*B re-keyed, A kept the old key* (``stale-key``). A holds B's old key (at B's endpoint) and
no peer for B's current key: A lists B as ``missing`` (``ok``: an old key is there). A's
initiations, made for the old key, are dropped by B; B's, made with its new key, are dropped
by A (no such peer). Session down, neither hears the other. Node to fix: A (flannel on A must
re-read B's lease). The same when B's key is simply missing at A.

*B's interface is gone* (``no-interface``): B says so (``ifok`` false); every peer of B sees B
down. Every cell to and from B is down, node B.

*B's agent stopped* (``no-report``): B's report says ``stopped`` (a clean stop writes it), or
is older than 35 minutes (a refresh every 30 is missed), or is missing or unreadable (then
``unknown``). B's row is unknown; cells towards B use the other side's view alone.

When a session is down and the direction evidence points the other way (B hears A, A hears
nothing), the cause found for the other direction is the pair's root cause, and both cells
name it. Nothing found: ``unknown``, no node named.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from wgagent.mesh import model as m
from wgagent.mesh import observe as ob
from wgagent.mesh import probe as pb
from wgagent.mesh.observe import node_key
from wgagent.mesh.report import ANNOTATION, STOPPED, Note, Report, decode
from wgagent.model import ANN_PUBLIC_IP, ClusterView, NodeInfo

SESSION_DOWN = frozenset({ob.DOWN, ob.DRIFT, ob.MISSING})

# report states, per node
REPORT_OK = "ok"
REPORT_MISSING = "missing"
REPORT_STALE = "stale"
REPORT_STOPPED = "stopped"
REPORT_MALFORMED = "malformed"


@dataclass(frozen=True)
class Pair:
    src: str
    dst: str
    state: str
    cause: str
    node: str | None
    """The node to fix; None when the cause is unknown."""
    fix: str
    since: float | None = None


@dataclass(frozen=True)
class Problem:
    node: str
    cause: str
    fix: str
    since: float | None = None


@dataclass(frozen=True)
class ReportState:
    state: str
    """``ok``, ``missing``, ``stale``, ``stopped`` or ``malformed``."""
    age_s: float | None = None
    at: float | None = None
    """The report's observation time, when there is a readable one."""

    @property
    def stale(self) -> bool:
        return self.state != REPORT_OK


class Cells(Mapping[tuple[str, str], Pair]):
    """Every cell that is not ok, by (from, to): the cells found one by one, and the whole rows of
    nodes that do not report, kept as one Pair each and made per cell only when read.

    A node without a usable report makes its n - 1 cells unknown; 500 of 1,000 nodes not
    reporting (a roll-out under way) would be 500,000 Pairs, made at every pass of every agent.
    The part reads its own row and column and the counts (:meth:`row`, :meth:`column`,
    :meth:`states`), which cost what the cells found cost; iterating everything costs what
    it always did (``wgagent mesh --json`` lists every cell that is not ok).

    >>> c = Cells(("a", "b", "c"), {("b", "c"): Pair("b", "c", "down", "stale-key", "b", "")},
    ...           {"a": Pair("a", "", "unknown", "no-report", "a", "")})
    >>> sorted(c), c[("a", "c")].dst, len(c), c.states()
    ([('a', 'b'), ('a', 'c'), ('b', 'c')], 'c', 3, {'unknown': 2, 'down': 1})
    """

    def __init__(
        self, names: Sequence[str], found: Mapping[tuple[str, str], Pair], silent: Mapping[str, Pair] | None = None
    ) -> None:
        self._names = tuple(names)
        self._found = dict(found)
        self._silent = dict(silent or {})
        self._members = frozenset(self._names)

    def __getitem__(self, key: tuple[str, str]) -> Pair:
        found = self._found.get(key)
        if found is not None:
            return found
        a, b = key
        row = self._silent.get(a)
        if row is None or a == b or b not in self._members:
            raise KeyError(key)
        return dataclasses.replace(row, dst=b)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        if not self._silent:
            yield from self._found
            return
        for a in self._silent:
            yield from ((a, b) for b in self._names if b != a)
        yield from self._found

    def __len__(self) -> int:
        return len(self._found) + len(self._silent) * max(len(self._names) - 1, 0)

    def row(self, a: str) -> dict[str, Pair]:
        """The cells from ``a`` that are not ok, by destination."""
        if a in self._silent:
            return {b: self[(a, b)] for b in self._names if b != a}
        return {dst: p for (src, dst), p in self._found.items() if src == a}

    def column(self, b: str) -> dict[str, Pair]:
        """The cells towards ``b`` that are not ok, by source."""
        out = {src: p for (src, dst), p in self._found.items() if dst == b}
        out.update({a: dataclasses.replace(p, dst=b) for a, p in self._silent.items() if a != b and b in self._members})
        return out

    def states(self) -> dict[str, int]:
        """How many cells are in each state that is not ok."""
        out: dict[str, int] = {}
        for p in self._silent.values():
            out[p.state] = out.get(p.state, 0) + max(len(self._names) - 1, 0)
        for p in self._found.values():
            out[p.state] = out.get(p.state, 0) + 1
        return out


@dataclass(frozen=True)
class Diagnosis:
    at: float
    nodes: tuple[str, ...]
    faulty: Mapping[tuple[str, str], Pair] = field(default_factory=dict)
    """Every cell that is not ok, by (from, to); a cell not here is ok (:class:`Cells`)."""
    problems: tuple[Problem, ...] = ()
    reports: Mapping[str, ReportState] = field(default_factory=dict)

    def cell(self, src: str, dst: str) -> Pair:
        return self.faulty.get((src, dst)) or Pair(src, dst, "ok", m.OK, None, "")

    def row(self, src: str) -> Mapping[str, Pair]:
        """The cells from ``src`` that are not ok, by destination."""
        if isinstance(self.faulty, Cells):
            return self.faulty.row(src)
        return {b: p for (a, b), p in self.faulty.items() if a == src}

    def column(self, dst: str) -> Mapping[str, Pair]:
        """The cells towards ``dst`` that are not ok, by source."""
        if isinstance(self.faulty, Cells):
            return self.faulty.column(dst)
        return {a: p for (a, b), p in self.faulty.items() if b == dst}

    def states(self) -> dict[str, int]:
        """Cells per state that is not ok."""
        if isinstance(self.faulty, Cells):
            return self.faulty.states()
        out: dict[str, int] = {}
        for p in self.faulty.values():
            out[p.state] = out.get(p.state, 0) + 1
        return out

    def pairs(self, *, include_ok: bool = False) -> Iterator[Pair]:
        """Cells in row order (from, then to); only the faulty ones unless ``include_ok``."""
        if not include_ok:
            yield from (self.faulty[k] for k in sorted(self.faulty))
            return
        for a in self.nodes:
            for b in self.nodes:
                if a != b:
                    yield self.cell(a, b)

    @property
    def ok(self) -> bool:
        return not self.faulty and not self.problems


# --- the facts about each node -----------------------------------------------------------------


@dataclass(frozen=True)
class _Node:
    name: str
    info: NodeInfo | None
    report: Report | None
    """The report when it is usable (fresh, up); None otherwise."""
    state: ReportState
    port: int
    no_inbound: bool = False
    host_blocked: bool = False
    wrong_endpoint: str | None = None
    """The address its packets really come from, when its advertised public-ip is wrong."""
    host_since: float | None = None
    miss_since: float | None = None
    """The earliest finding of each kind in its report (when its inbound began to fail)."""

    @property
    def nat_only(self) -> bool:
        """Behind a NAT that no cloud control opens (the public IP is not local, no provider)."""
        return self.report is not None and self.report.nat is True and not self.report.provider


def report_state(text: str | None, now: float) -> tuple[Report | None, ReportState]:
    """The report in an annotation value and its state (only an ``ok`` one is usable)."""
    if text is None:
        return None, ReportState(REPORT_MISSING)
    report = decode(text)
    if report is None:
        return None, ReportState(REPORT_MALFORMED)
    age = max(0.0, now - report.at)
    if report.state == STOPPED:
        return None, ReportState(REPORT_STOPPED, age, report.at)
    if age > m.STALE_AFTER_S:
        return None, ReportState(REPORT_STALE, age, report.at)
    return report, ReportState(REPORT_OK, age, report.at)


def diagnose(view: ClusterView, annotations: Mapping[str, str], now: float) -> Diagnosis:
    """The mesh's state from the Node list and each Node's ``wgagent.io/mesh`` value.

    ``annotations``: node name -> the annotation's value (absent for a node without one).
    Members are the Nodes that run flannel's WireGuard (a key in ``backend-data``) and any
    Node with a report. Work is proportional to the faults, not to the N x N cells.
    """
    names = sorted({n for n, i in view.nodes.items() if node_key(i)} | set(annotations))
    facts = {n: _facts(n, view.nodes.get(n), annotations.get(n), now) for n in names}
    facts = _with_peer_evidence(facts)
    problems = [p for n in names for p in _problems(facts[n])]
    silent = {n: _node_cause(f, f) for n, f in facts.items() if f.report is None}  # (n, n): its row's Pair
    found: dict[tuple[str, str], Pair] = {}
    for a, b in _cells_to_check(facts, names):
        if facts[a].report is None:
            continue  # its row is one entry of ``silent``
        cell = _cell(facts[a], facts[b])
        if cell.state != "ok":
            found[(a, b)] = cell
    cells = Cells(names, found, {n: dataclasses.replace(p, dst="") for n, p in silent.items() if p is not None})
    return Diagnosis(now, tuple(names), cells, tuple(problems), {n: facts[n].state for n in names})


def _facts(name: str, info: NodeInfo | None, text: str | None, now: float) -> _Node:
    report, state = report_state(text, now)
    port = m.DEFAULT_PORT
    if info is not None:
        endpoint = m.advertised_endpoint(info)
        port = int(endpoint.rpartition(":")[2]) if endpoint else port
    no_inbound = host = False
    wrong = None
    if report is not None and report.inbound.state == "ok":
        host = report.inbound.host > 0
        no_inbound = report.inbound.ok == 0 and report.inbound.miss > 0
    if report is not None and info is not None and report.public:
        advertised = info.annotations.get(ANN_PUBLIC_IP)
        if advertised and m.parse_ip(report.public) != m.parse_ip(advertised):
            wrong = report.public
    notes = report.notes if report else ()
    host_since = min((n.in_since for n in notes if n.inbound == pb.HOST and n.in_since), default=None)
    miss_since = min((n.in_since for n in notes if n.inbound == pb.MISS and n.in_since), default=None)
    return _Node(name, info, report, state, port, no_inbound, host, wrong, host_since, miss_since)


def _with_peer_evidence(facts: dict[str, _Node]) -> dict[str, _Node]:
    """A Node whose own report is silent about it is still named wrong-endpoint when two others
    see its packets come from one other address (``roamed``, or its probes ``src``)."""
    seen: dict[str, dict[str, int]] = {}
    for f in facts.values():
        for note in f.report.notes if f.report else ():
            addr = (
                m.endpoint_ip(note.endpoint) if note.wg == ob.ROAMED else note.src if note.inbound == pb.SRC else None
            )
            if addr:
                seen.setdefault(note.node, {}).setdefault(addr, 0)
                seen[note.node][addr] += 1
    out = dict(facts)
    for name, addrs in seen.items():
        node = out.get(name)
        if node is None or node.wrong_endpoint:
            continue
        addr, count = max(addrs.items(), key=lambda kv: kv[1])
        if count >= 2 or (count >= 1 and node.report is None):
            out[name] = _replace_wrong(node, addr)
    return out


def _replace_wrong(f: _Node, addr: str) -> _Node:
    return dataclasses.replace(f, wrong_endpoint=addr)


def _cells_to_check(facts: Mapping[str, _Node], names: list[str]) -> Iterator[tuple[str, str]]:
    """Every cell some evidence touches; any other cell is ok. No interface: its row and column.
    Shut inbound or a wrong public-ip: its column. And every pair a report lists. (A node
    without a usable report: its row is whole, :class:`Cells`; its column only where others
    list it.)"""
    done: set[tuple[str, str]] = set()

    def once(cell: tuple[str, str]) -> Iterator[tuple[str, str]]:
        if cell not in done:
            done.add(cell)
            yield cell

    for n in names:
        if facts[n].report is None:
            continue  # a silent node's row is known whole; the others' cells towards it stand alone
        row, column = _node_level(facts[n])
        for other in names if row or column else ():
            if other != n:
                yield from once((n, other)) if row else ()
                yield from once((other, n)) if column else ()
    for a in names:
        report = facts[a].report
        for note in report.notes if report else ():
            if note.node in facts and note.node != a:
                yield from once((a, note.node))
                yield from once((note.node, a))


def _node_level(f: _Node) -> tuple[bool, bool]:
    """Whether a node-level fault touches its whole row, its whole column."""
    if f.report is None:
        return True, False
    if not f.report.interface_ok:
        return True, True
    return False, f.no_inbound or f.host_blocked or f.wrong_endpoint is not None


# --- one cell ----------------------------------------------------------------------------------


def _cell(a: _Node, b: _Node) -> Pair:
    """Can ``a`` reach ``b``? (the module doc says how each fault looks)."""
    whole = _node_cause(a, b)
    if whole is not None:
        return whole
    assert a.report is not None
    na = a.report.note(b.name)
    nb = b.report.note(a.name) if b.report else None
    down = _down(na) or _down(nb)
    found = _wireguard_cause(a, b, na, nb) or _forward_cause(a, b, na, nb)
    if down and found is None:
        found = _dead_cause(a, b, na, nb)
    if found is None:
        if not down:
            return Pair(a.name, b.name, "ok", m.OK, None, "")
        first = min((n.wg_since for n in (na, nb) if n is not None and n.wg_since is not None), default=None)
        return Pair(a.name, b.name, "down", m.UNKNOWN, None, fix_unknown(a.name, b.name), first)
    cause, node, fix, since = found
    return Pair(a.name, b.name, "down" if down else "degraded", cause, node, fix, since)


def _down(note: Note | None) -> bool:
    return note is not None and note.wg in SESSION_DOWN


def _node_cause(a: _Node, b: _Node) -> Pair | None:
    """The cell's state when a node-level fault decides it: ``a`` does not report, or either
    side has no interface."""
    if a.report is None:
        return Pair(a.name, b.name, "unknown", m.NO_REPORT, a.name, fix_no_report(a.name, a.state), a.state.at)
    for n in (a, b):
        if n.report is not None and not n.report.interface_ok:
            return Pair(a.name, b.name, "down", m.NO_INTERFACE, n.name, fix_no_interface(n.name), None)
    return None


Found = tuple[str, str, str, float | None]


def _dead_cause(a: _Node, b: _Node, na: Note | None, nb: Note | None) -> Found | None:
    """A dead session that no device fault and no forward cause explains: ``b`` silent, the
    other direction's cause (the pair's root), or who still hears whom."""
    if b.report is None:
        return (m.NO_REPORT, b.name, fix_no_report(b.name, b.state), b.state.at)
    # Two nodes behind NAT whose session died cannot reach each other either way (one open
    # inbound would have carried it): NAT on both sides, also while only one side has seen it
    # die yet, before "who still hears whom" (the one side's silence alone) could say more.
    return _forward_cause(b, a, nb, na) or _nat_cause(a, b, na, nb) or _heard_cause(a, b, na, nb)


def _nat_cause(a: _Node, b: _Node, na: Note | None, nb: Note | None) -> Found | None:
    """Both behind a NAT no cloud control opens, and neither hears the other: NAT on both sides,
    before the probes have been missed long enough to show it for certain."""
    hears = (na is not None and na.hears) or (nb is not None and nb.hears)
    if not (a.nat_only and b.nat_only) or hears:
        return None
    first, second = sorted((a.name, b.name))
    since = min((n.wg_since for n in (na, nb) if n is not None and n.wg_since is not None), default=None)
    return (m.NAT_BOTH_SIDES, first, fix_nat_both(first, second, a.port, b.port), since)


def _wireguard_cause(a: _Node, b: _Node, na: Note | None, nb: Note | None) -> Found | None:
    """Something on one of the devices: a missing current key, or a drifted endpoint."""
    for holder, other, note in ((a, b, na), (b, a, nb)):
        if note is not None and note.wg == ob.MISSING:
            return (m.STALE_KEY, holder.name, fix_stale_key(holder.name, other.name, note.old_key), note.wg_since)
    for holder, other, note in ((a, b, na), (b, a, nb)):
        if note is not None and note.wg == ob.DRIFT and other.wrong_endpoint is None:
            if a.nat_only and b.nat_only and _port_only(note.endpoint, other):
                continue  # a NAT mapping that died between two NAT'd nodes: see _nat_cause
            fix = fix_drift(holder.name, other.name, note.endpoint, other)
            return (m.ENDPOINT_DRIFT, holder.name, fix, note.wg_since)
    return None


def _port_only(endpoint: str | None, n: _Node) -> bool:
    """The endpoint is the Node's advertised address on another port: where its NAT had mapped it.

    Between two NAT'd nodes that is how a session over a NAT mapping ends (the mapping expired,
    the router rebooted): setting the advertised port back (wgagent heals it anyway) works only
    where that port is forwarded, and if it is not, neither side can reach the other: the cause
    to name is NAT on both sides, not a drift."""
    return m.endpoint_ip(endpoint) == _public_ip(n)


def _forward_cause(a: _Node, b: _Node, na: Note | None, nb: Note | None) -> Found | None:
    """Why a new flow from ``a`` to ``b``'s advertised address would fail."""
    return _endpoint_cause(b, na) or _host_cause(b, nb) or _miss_cause(a, b, nb)


def _endpoint_cause(b: _Node, na: Note | None) -> Found | None:
    """``b`` advertises an address its packets do not come from."""
    roamed = na is not None and na.wg == ob.ROAMED
    if b.wrong_endpoint is None and not roamed:
        return None
    real = b.wrong_endpoint or m.endpoint_ip(na.endpoint if na is not None else None)
    return (m.WRONG_ENDPOINT, b.name, fix_wrong_endpoint(b, real), na.wg_since if na is not None else None)


def _host_cause(b: _Node, nb: Note | None) -> Found | None:
    """``b``'s host firewall drops what ``a`` sends (``b``'s note on ``a``, or any sender)."""
    from_a = nb is not None and nb.inbound == pb.HOST
    if not from_a and not b.host_blocked:
        return None
    rule = b.report.inbound.rule if b.report else None
    since = nb.in_since if from_a and nb is not None else b.host_since
    return (m.INBOUND_BLOCKED_HOST, b.name, fix_host(b, rule), since)


def _miss_cause(a: _Node, b: _Node, nb: Note | None) -> Found | None:
    """``a``'s probes (or everyone's) do not reach ``b``: upstream, or NAT on both sides."""
    from_a = nb is not None and nb.inbound == pb.MISS
    if not from_a and not b.no_inbound:
        return None
    since = nb.in_since if from_a and nb is not None else b.miss_since
    if b.no_inbound and a.no_inbound and a.nat_only and b.nat_only:
        first, second = sorted((a.name, b.name))
        return (m.NAT_BOTH_SIDES, first, fix_nat_both(first, second, a.port, b.port), since)
    return (m.INBOUND_BLOCKED_UPSTREAM, b.name, fix_upstream(b, _public_ip(a)), since)


def _heard_cause(a: _Node, b: _Node, na: Note | None, nb: Note | None) -> Found | None:
    """A dead session with no other evidence: who still hears whom says which inbound is shut."""
    deaf = _deaf(a, b, na, nb) or _deaf(b, a, nb, na)
    if deaf is None:
        return None
    node, other, since = deaf
    return (m.INBOUND_BLOCKED_UPSTREAM, node.name, fix_upstream(node, _public_ip(other), likely=True), since)


def _deaf(x: _Node, y: _Node, nx: Note | None, ny: Note | None) -> tuple[_Node, _Node, float | None] | None:
    """(the node that does not hear the other, the other, since) as x's and y's notes show it.

    y hears x while x hears nothing back (x's note on y: not ``hr``, y's on x: ``hr``); or x
    lists y down without hearing it while y finds x fine (y hears x's keepalives: x's packets
    get out, y's do not get in). Either way x's inbound from y is shut."""
    x_hears = nx is not None and nx.hears
    if ny is not None and ny.hears and not x_hears:
        return x, y, ny.wg_since
    if nx is not None and nx.wg == ob.DOWN and not x_hears and ny is None and y.report is not None:
        return x, y, nx.wg_since
    return None


def _public_ip(n: _Node) -> str | None:
    return n.info.annotations.get(ANN_PUBLIC_IP) if n.info is not None else None


# --- node-level problems -----------------------------------------------------------------------


def _problems(f: _Node) -> Iterator[Problem]:
    if f.report is None:
        cause = m.UNKNOWN if f.state.state == REPORT_MALFORMED else m.NO_REPORT
        yield Problem(f.name, cause, fix_no_report(f.name, f.state), f.state.at)
        return
    r = f.report
    if not r.interface_ok:
        yield Problem(f.name, m.NO_INTERFACE, fix_no_interface(f.name, r.interface_detail))
    if f.host_blocked:
        yield Problem(f.name, m.INBOUND_BLOCKED_HOST, fix_host(f, r.inbound.rule), f.host_since)
    if f.no_inbound and f.wrong_endpoint is None:  # probes went to the wrong address
        yield Problem(f.name, m.INBOUND_BLOCKED_UPSTREAM, fix_upstream(f, None), f.miss_since)
    if f.wrong_endpoint is not None:
        yield Problem(f.name, m.WRONG_ENDPOINT, fix_wrong_endpoint(f, f.wrong_endpoint))


# --- fixes, one line each ----------------------------------------------------------------------

PROVIDER_CONTROLS = {
    "aliyun": "the Alibaba Cloud ECS security group of {node} (or its Simple Application Server firewall)",
    "tencent": "the Tencent Cloud security group of {node} (or its Lighthouse firewall)",
    "aws": "the AWS security group of {node} (EC2) or its Lightsail instance firewall",
    "hetzner": "the Hetzner Cloud Firewall of {node}",
    "oracle": "the Oracle Cloud security list (or network security group) of {node}'s subnet, and the image's iptables",
    "gcp": "the Google Cloud VPC firewall rules of {node}'s network",
    "azure": "the Azure network security group of {node}",
    "digitalocean": "the DigitalOcean Cloud Firewall of {node}",
    "vultr": "the Vultr firewall group of {node}",
}
"""The control that opens a port, by the provider the metadata source identified."""


def control(n: _Node) -> str:
    provider = n.report.provider if n.report else None
    if provider in PROVIDER_CONTROLS:
        return PROVIDER_CONTROLS[provider].format(node=n.name)
    if n.report is not None and n.report.nat:
        return f"the firewall or security group in front of {n.name} (a NAT router: forward the port to {n.name})"
    return f"the cloud firewall or security group in front of {n.name}"


def fix_upstream(n: _Node, source: str | None, *, likely: bool = False) -> str:
    if source is None:
        src = "from the other nodes' public IPs (or anywhere)"
    else:
        src = f"from {source}" + (" and the other nodes" if n.no_inbound else "")
    text = f"open UDP {n.port} inbound {src} in {control(n)}"
    return text + (" (likely: it hears nothing while its peer hears it)" if likely else "")


def fix_host(n: _Node, rule: str | None) -> str:
    where = f"rule {rule}" if rule else "a rule of its input chain"
    iptables = (
        "; the Oracle image keeps it in /etc/iptables/rules.v4" if n.report and n.report.provider == "oracle" else ""
    )
    return f"the host firewall of {n.name} drops UDP {n.port} ({where}): accept UDP {n.port} before it{iptables}"


def fix_nat_both(first: str, second: str, port_first: int, port_second: int) -> str:
    return (
        f"{first} and {second} are both behind NAT without an inbound path: forward UDP {port_first} on the NAT"
        f" router of {first} to it (or UDP {port_second} on {second}'s); one side is enough"
    )


def fix_wrong_endpoint(n: _Node, real: str | None) -> str:
    advertised = _public_ip(n) or "unset"
    where = f"but its packets come from {real}" if real else "but that address does not reach it"
    return (
        f"{n.name} advertises public-ip {advertised} {where}: set flannel.alpha.coreos.com/public-ip-overwrite"
        f" on {n.name} to its real address (wgagent's public_ip part does; see `wgagent discover` there)"
    )


def fix_drift(holder: str, other: str, endpoint: str | None, n: _Node) -> str:
    right = m.advertised_endpoint(n.info) if n.info is not None else None
    return (
        f"{holder} sends to {other} at {endpoint or 'no endpoint'} instead of {right or 'its advertised address'}:"
        f" wgagent on {holder} sets it back (mesh.heal_endpoints), or `wg set flannel-wg peer <key> endpoint {right}`"
    )


def fix_stale_key(holder: str, other: str, old_key: bool) -> str:
    what = f"still has {other}'s old key and not its current one" if old_key else f"has no peer for {other}'s key"
    return f"{holder} {what}: restart k3s on {holder} so flannel re-reads {other}'s lease (peer GC removes the old key)"


def fix_no_interface(name: str, detail: str = "") -> str:
    why = f" ({detail})" if detail else ""
    return (
        f"{name} has no WireGuard interface{why}: restart k3s there (flannel creates flannel-wg), see `wgagent doctor`"
    )


def fix_no_report(name: str, state: ReportState) -> str:
    if state.state == REPORT_MALFORMED:
        return (
            f"{name}'s {ANNOTATION} annotation is not a report this wgagent reads: run one wgagent version everywhere"
        )
    if state.state == REPORT_MISSING:
        return f"{name} publishes no mesh report: install and start wgagent there (mesh.enabled: true)"
    return (
        f"wgagent on {name} is not reporting ({state.state}): `systemctl start wgagent` there, `journalctl -u wgagent`"
    )


def fix_unknown(a: str, b: str) -> str:
    return f"no cause found: compare `wg show` on {a} and {b} and check the path between their public IPs"


def expected_senders(annotations: Mapping[str, str], me: str, now: float) -> dict[str, pb.Expected]:
    """Whose probes this node should be receiving: every other Node with a usable report that
    says it probes (``pr``, since ``ps``). The part feeds this to :func:`wgagent.mesh.probe.inbound_view`."""
    out = {}
    for name, text in annotations.items():
        if name == me:
            continue
        report, _ = report_state(text, now)
        if report is not None and report.probe_interval_s and report.probing_since is not None:
            out[name] = pb.Expected(float(report.probing_since), float(report.probe_interval_s))
    return out
