"""The inbound probe: can a new UDP flow reach this node's WireGuard port, from which nodes?

Why: cloud firewalls and host firewalls are stateful. A pair of nodes talks as long as
*either* side can open the flow (the reply is "established" at the other), so a closed
inbound UDP 51820 hides until a second node has the same problem. So every agent sends, at
most once per peer pair per ``mesh.probe_interval_s``, one small datagram *from an ephemeral
port* (a new flow, as a new peer's first handshake would be) to each Node's advertised
``public-ip``:Port, and every agent notes the probes that reach it.

The datagram (:func:`encode` / :func:`decode`), ASCII, at most :data:`MAX_BYTES`::

    wgagent-probe/1 <sender node name> <unix seconds> <16 hex digits nonce>

WireGuard drops it silently and changes nothing, because its first four bytes, read as a
little-endian message type, are not 1-4: linux drivers/net/wireguard/receive.c
(``validate_header_len`` returns 0 for any other type, so ``prepare_skb_header`` fails and
``wg_packet_receive`` frees the skb before any peer lookup, counter or timer) and wireguard-go
device/receive.go (``RoutineReceiveIncoming``: ``default: "Received message with unknown type"``;
``continue``). Nobody answers it (no reflection, no amplification), and no port is opened.

On the receiving side (adapters: :mod:`wgagent.mesh.tap`, :mod:`wgagent.mesh.nft`):

- *arrival*: an AF_PACKET socket whose BPF filter passes only UDP to the WireGuard port
  starting with ``wgag`` sees the probe at the device, before netfilter runs at all;
- *verdict of the host firewall*: an nftables chain of wgagent's own, hooked on input at a
  priority after every filter chain (iptables' and nftables' alike), counts per source address
  the probes that got through (a set with a counter per element).

:func:`account` compares the two per source: a probe seen at the device that the late
counter did not count was dropped by the host. The same table also counts WireGuard's own
handshake initiations before and after the filter chains (:func:`account_initiations`): a
stateless host firewall that drops WireGuard itself shows within seconds, as the peer
retries every 5 s, without waiting up to a probe interval. Which rule drops is named by
:mod:`wgagent.mesh.firewall` from the ruleset.

Identity is advisory: the name in the datagram is attributed to that Node, and the source
address is compared with the Node's advertised address (a mismatch is reported, and is itself
evidence of a wrong ``public-ip``). A forged probe can at most hide a "no probe arrived"
finding; it can trigger nothing (no heal, no write beyond the report's usual rate).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import ip_address

from wgagent.mesh.model import DEFAULT_PORT, is_probe_target, parse_ip, parse_port
from wgagent.mesh.observe import node_key
from wgagent.model import ANN_BACKEND_DATA, ANN_PUBLIC_IP, ClusterView

PREFIX = b"wgagent-probe/1 "
MAGIC32 = int.from_bytes(PREFIX[:4], "big")
"""The first four payload bytes as the BPF filter and the nftables rule match them (``wgag``).
As a WireGuard message type (little-endian u32) it is 0x67616777, not 1-4."""
MAX_BYTES = 320
_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
"""A Kubernetes Node name: an RFC 1123 subdomain (at most 253 characters)."""
_PROBE_RE = re.compile(rb"wgagent-probe/1 ([a-z0-9.-]{1,253}) ([0-9]{1,12}) ([0-9a-f]{16})")
WINDOW_SLACK_S = 60.0
JITTER = 0.25
"""Spacing between two probes of a pair is ``interval * (1 + JITTER * u)``: never below the interval."""


@dataclass(frozen=True)
class Probe:
    node: str
    sent_at: int
    nonce: str


def encode(node: str, sent_at: float, nonce: bytes) -> bytes:
    """The probe datagram of ``node``.

    >>> encode("n1", 1800000000, bytes(8))
    b'wgagent-probe/1 n1 1800000000 0000000000000000'
    """
    if not _NAME_RE.fullmatch(node):
        raise ValueError(f"not a Node name: {node!r}")
    if len(nonce) != 8:
        raise ValueError("the nonce is 8 bytes")
    data = PREFIX + f"{node} {int(sent_at)} {nonce.hex()}".encode("ascii")
    assert len(data) <= MAX_BYTES
    return data


def decode(data: bytes) -> Probe | None:
    """The probe in a datagram, or None for anything else (never raises).

    >>> decode(b"wgagent-probe/1 n1 1800000000 0000000000000000")
    Probe(node='n1', sent_at=1800000000, nonce='0000000000000000')
    >>> decode(b"\\x01\\x00\\x00\\x00 a handshake initiation") is None
    True
    """
    if len(data) > MAX_BYTES:
        return None
    m = _PROBE_RE.fullmatch(data)
    if m is None:
        return None
    name = m.group(1).decode("ascii")
    if not _NAME_RE.fullmatch(name):
        return None
    return Probe(name, int(m.group(2)), m.group(3).decode("ascii"))


# --- sending: whom, and when ------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    node: str
    ip: str
    port: int


def targets(view: ClusterView, me: str, *, local_port: int | None = None) -> list[Target]:
    """Every other Node running flannel's WireGuard that advertises a probe-able IPv4 address.

    Only addresses Nodes advertise (``public-ip``), with their ``backend-data`` Port (default:
    the local device's port, as flannel does), are ever probed.
    """
    out = []
    for name, info in sorted(view.nodes.items()):
        if name == me or node_key(info) is None:
            continue
        ip = parse_ip(info.annotations.get(ANN_PUBLIC_IP))
        if ip is None or ip.version != 4 or not is_probe_target(ip):
            continue
        port = parse_port(info.annotations.get(ANN_BACKEND_DATA)) or local_port or DEFAULT_PORT
        out.append(Target(name, str(ip), port))
    return out


@dataclass(frozen=True)
class Schedule:
    """When each target is due next (epoch seconds)."""

    next_at: Mapping[str, float] = field(default_factory=dict)


def plan(
    schedule: Schedule, current: Iterable[Target], now: float, interval_s: float, rand: Callable[[], float]
) -> tuple[list[Target], Schedule]:
    """The targets due now, and the schedule after sending them.

    A new target is first due at a random point of the first interval (so a restart or a new
    Node does not make every agent probe at once); after a probe, the next is due
    ``interval_s * (1 + 0.25 u)`` later: at most one probe per pair per interval, always.
    Targets no longer present are forgotten.
    """
    due: list[Target] = []
    nxt: dict[str, float] = {}
    for t in current:
        at = schedule.next_at.get(t.node)
        if at is None:
            at = now + interval_s * rand()
        if at <= now:
            due.append(t)
            at = now + interval_s * (1.0 + JITTER * rand())
        nxt[t.node] = at
    return due, Schedule(nxt)


def next_due(schedule: Schedule) -> float | None:
    return min(schedule.next_at.values(), default=None)


# --- receiving: arrivals against the host firewall's verdict ----------------------------------


@dataclass(frozen=True)
class Arrival:
    """A probe seen at the device (before netfilter)."""

    node: str
    src: str
    at: float


PASS = "pass"  # noqa: S105 - a verdict, not a password
HOST = "host"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class LastArrival:
    at: float
    src: str
    verdict: str
    """``pass`` (the late input counter saw it), ``host`` (it did not: the host firewall dropped
    it), or ``unknown`` (no counter to ask)."""
    host_since: float | None = None
    """When probes of this sender began to be dropped by the host (None: the last one passed)."""


@dataclass(frozen=True)
class InboundMemory:
    """Per source address: probes seen at the device, probes the late counter counted; per node:
    the last arrival. ``started_at``: when the tap started watching."""

    started_at: float
    tapped: Mapping[str, int] = field(default_factory=dict)
    passed: Mapping[str, int] = field(default_factory=dict)
    reading: Mapping[str, int] = field(default_factory=dict)
    """The counter values last read (they restart when nftables drops an element)."""
    shortfall: Mapping[str, int] = field(default_factory=dict)
    last: Mapping[str, LastArrival] = field(default_factory=dict)
    unattributed: int = 0
    """Probes naming no known Node (counted, never kept)."""
    init_reading: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)
    """Per source: WireGuard handshake initiations counted before the host firewall and after
    it when the last one got through, and the count before it as last read
    (:func:`account_initiations`)."""
    wg_dropped: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    """Per source whose initiations the host drops: (since, last seen dropped)."""


def start(now: float, baseline: Mapping[str, int] | None) -> InboundMemory:
    """The memory when the tap starts; ``baseline``: the counters read just before (or None)."""
    return InboundMemory(now, reading=dict(baseline or {}))


def account(
    memory: InboundMemory,
    arrivals: Iterable[Arrival],
    counts: Mapping[str, int] | None,
    known: Iterable[str],
    now: float,
) -> InboundMemory:
    """Fold new arrivals (drained from the tap) and the late counters (read *after* draining) in.

    Per source: a probe the device saw that the counter did not count grows the shortfall;
    when the shortfall grew in this round, the newest probe was dropped by the host. Read in
    that order, a probe can only be counted ahead of being seen (arriving between the two
    reads), never behind, so "ahead" is never taken for a drop. ``counts`` None: no counter
    (nftables missing): verdicts are ``unknown``.
    """
    names = set(known)
    tapped = dict(memory.tapped)
    newest: dict[str, Arrival] = {}
    unattributed = memory.unattributed
    for a in arrivals:
        if a.node not in names:
            unattributed += 1
            continue
        tapped[a.src] = tapped.get(a.src, 0) + 1
        if a.node not in newest or a.at >= newest[a.node].at:
            newest[a.node] = a
    passed, reading = dict(memory.passed), dict(memory.reading)
    if counts is not None:
        for src, value in counts.items():
            before = reading.get(src, 0)
            passed[src] = passed.get(src, 0) + (value - before if value >= before else value)
            reading[src] = value
    shortfall = dict(memory.shortfall)
    dropped: set[str] = set()
    for src in {a.src for a in newest.values()}:
        now_short = tapped.get(src, 0) - passed.get(src, 0)
        if counts is not None and now_short > max(memory.shortfall.get(src, 0), 0):
            dropped.add(src)
        shortfall[src] = now_short
    last = dict(memory.last)
    for node, a in newest.items():
        verdict = UNKNOWN if counts is None else HOST if a.src in dropped else PASS
        prev = last.get(node)
        host_since = None
        if verdict == HOST:
            host_since = prev.host_since if prev is not None and prev.host_since is not None else a.at
        last[node] = LastArrival(a.at, a.src, verdict, host_since)
    last = {n: v for n, v in last.items() if n in names}
    return replace(
        memory, tapped=tapped, passed=passed, reading=reading, shortfall=shortfall, last=last, unattributed=unattributed
    )


INIT_DROPPED_MIN = 2
"""Initiations that must have arrived since the last one got through, none of them getting
through, to call it a drop (one may be between the two counters while they are read)."""
INIT_FORGET_S = 600.0
"""A source that stopped initiating is forgotten after this long (its node may be gone)."""


def account_initiations(
    memory: InboundMemory, pre: Mapping[str, int], post: Mapping[str, int], now: float, *, seed: bool = False
) -> InboundMemory:
    """Fold the WireGuard initiation counters in: a source whose initiations keep arriving at the
    device (``pre``, before every filter) while none gets through (``post``, after every filter)
    is dropped by the host firewall. A peer that cannot complete a handshake initiates every 5 s
    (REKEY_TIMEOUT), so this shows within seconds, with no probe needed.

    Per source an anchor, (pre, post) when one last got through (or when counting began), is
    compared with the counters now. ``seed``: the first reading, at start: only anchors (a
    source appearing later starts from zero: its set element is new).
    """
    anchors = dict(memory.init_reading)
    dropped = dict(memory.wg_dropped)
    for src, pre_now in pre.items():
        post_now = post.get(src, 0)
        anchor_pre, anchor_post, last_pre = (pre_now, post_now, pre_now) if seed else anchors.get(src, (0, 0, 0))
        if pre_now < last_pre or post_now < anchor_post:
            anchor_pre, anchor_post, last_pre = 0, 0, 0  # the table was made again: counters restarted
        if post_now > anchor_post:
            dropped.pop(src, None)
            anchor_pre, anchor_post = pre_now, post_now
        elif pre_now > last_pre and pre_now - anchor_pre >= INIT_DROPPED_MIN:
            since = dropped[src][0] if src in dropped else now
            dropped[src] = (since, now)
        anchors[src] = (anchor_pre, anchor_post, pre_now)
    dropped = {src: v for src, v in dropped.items() if now - v[1] <= INIT_FORGET_S}
    return replace(memory, init_reading=anchors, wg_dropped=dropped)


# --- what the report says about inbound -------------------------------------------------------

MISS = "miss"
SRC = "src"


@dataclass(frozen=True)
class Expected:
    """A sender whose probes should be arriving: its report says it probes every ``interval_s``
    (``since`` it started), and it is fresh."""

    since: float
    interval_s: float


@dataclass(frozen=True)
class InboundFinding:
    node: str
    status: str
    """``miss`` (none arrived in the window), ``host`` (dropped by the host firewall), ``src``
    (arrives, but from an address the sender's Node does not advertise)."""
    since: float
    src: str | None = None


@dataclass(frozen=True)
class InboundView:
    state: str
    """``ok`` (watching), ``off`` (``mesh.probe: false``), or why not (``no CAP_NET_RAW``...)."""
    counter: str = "ok"
    """``ok``, or why the host firewall's verdict is unknown (``nft not found``)."""
    ok: int = 0
    """Expected senders whose last probe arrived in the window and got through."""
    findings: tuple[InboundFinding, ...] = ()
    rule: str | None = None
    """The host firewall rule that drops probes, as :mod:`wgagent.mesh.firewall` names it."""

    def count(self, status: str) -> int:
        return sum(1 for f in self.findings if f.status == status)


def window_s(interval_s: float) -> float:
    """How long without a probe from a sender means none is getting through: its longest spacing
    plus a minute."""
    return interval_s * (1.0 + JITTER) + WINDOW_SLACK_S


def inbound_view(
    memory: InboundMemory,
    expected: Mapping[str, Expected],
    advertised_ips: Mapping[str, str],
    now: float,
    *,
    state: str = "ok",
    counter: str = "ok",
    rule: str | None = None,
) -> InboundView:
    """The report's inbound section: for each expected sender, fine or a finding."""
    if state != "ok":
        return InboundView(state, counter)
    ok = 0
    findings = {f.node: f for f in _wireguard_drops(memory, advertised_ips)}
    for node in sorted(expected):
        exp = expected[node]
        window = window_s(exp.interval_s)
        a = memory.last.get(node)
        if node in findings:
            continue
        if a is None or now - a.at > window:
            watching_since = max(exp.since, memory.started_at)
            if now - watching_since > window:
                findings[node] = InboundFinding(node, MISS, a.at if a is not None else watching_since)
            continue
        if a.verdict == HOST:
            findings[node] = InboundFinding(node, HOST, a.host_since or a.at, a.src)
        elif node in advertised_ips and _ip(a.src) != _ip(advertised_ips[node]):
            findings[node] = InboundFinding(node, SRC, a.at, a.src)
        else:
            ok += 1
    listed = tuple(findings[n] for n in sorted(findings))
    return InboundView("ok", counter, ok, listed, rule if any(f.status == HOST for f in listed) else None)


def _wireguard_drops(memory: InboundMemory, advertised_ips: Mapping[str, str]) -> list[InboundFinding]:
    """HOST findings for the nodes whose WireGuard initiations the host firewall drops."""
    by_ip = {_ip(ip): node for node, ip in advertised_ips.items()}
    out = []
    for src, (since, _) in sorted(memory.wg_dropped.items()):
        node = by_ip.get(_ip(src))
        if node is not None:
            out.append(InboundFinding(node, HOST, since, src))
    return out


def _ip(text: str) -> str:
    try:
        return str(ip_address(text))
    except ValueError:
        return text
