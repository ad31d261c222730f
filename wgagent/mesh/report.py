"""The published report: one annotation, ``wgagent.io/mesh``, on the agent's own Node.

Each agent writes what it sees (its :class:`~wgagent.mesh.observe.Look` and
:class:`~wgagent.mesh.probe.InboundView`) on its own Node, which its own credential may patch;
every agent and ``wgagent mesh`` read all of them from the Node list (metadata only, so the
node watch already carries them: no extra request).

The value is compact JSON (keys sorted, no spaces). A summary, always; details only for the
Nodes that are not fine; the observation time::

    {"d":{"n2":{"hr":1,"w":"down","ws":1800000000}},"if":"flannel-wg","in":{"ok":1,"st":"ok"},
     "n":{"down":1,"ok":1,"peers":2},"pr":300,"ps":1799990000,"st":"up","t":1800000060,"v":1}

====== ==========================================================================================
v      format version, 1 (a reader that finds another treats the report as unknown)
t      observation time, Unix seconds (the agent's clock)
st     ``up``, or ``stopped`` (written once at a clean shutdown)
if     the WireGuard interface looked at; ``ifok`` false and ``ifd`` why, when it is not usable
pub    the public address this agent discovered (absent when unknown)
nat    true when the advertised ``public-ip`` is on none of the node's interfaces (NAT, 1:1 or not)
prov   the cloud provider the metadata source identified (``aws``, ``aliyun``...), when known
pr ps  the probe interval in seconds and since when this agent probes (absent: it does not)
n      counts over the other Nodes: ``peers``, ``ok`` and one per listed status, ``other``
       (peers that are no Node's key); zero counts are left out
in     inbound: ``st`` (``ok`` watching, ``off``, or why not), ``ctr`` (when the host firewall's
       verdict is unknown: why), ``ok`` (senders whose probes arrive), ``miss``/``host``/``src``
       counts, ``rule`` (the host firewall rule that drops probes)
d      per Node that is not fine: ``w`` WireGuard status (``down``, ``drift``, ``missing``,
       ``roamed``) and ``ws`` since; ``ep`` the endpoint in use (drift, roamed); ``hr`` 1 when
       its packets still reach us (rx grows); ``ok`` 1 when an old key of it is on the device;
       ``i`` inbound finding (``miss``, ``host``, ``src``), ``is`` since, ``src`` the address
cut    details left out to stay within 16 KB (the least severe; the counts stay complete)
====== ==========================================================================================

Size: a healthy report (no details) is about 200 bytes whatever the cluster size; a report
never exceeds :data:`MAX_BYTES` (16 KiB): details are kept in order of severity (WireGuard
down, drift, missing; then inbound host, miss, src; then roamed) and the rest is counted in
``cut``.

:func:`decode` is strict: anything that is not a version-1 report of this shape (malformed,
too big, another tool's value) is None, "unknown", and never an exception.

:func:`decide_publish` is the write policy: write when the content (everything but ``t``)
changed, at most once per ``mesh.publish_interval_s``; and unchanged, every 30 minutes, so a
silent agent shows as stale (:data:`~wgagent.mesh.model.STALE_AFTER_S`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from wgagent.mesh import observe as ob
from wgagent.mesh import probe as pb
from wgagent.mesh.model import REFRESH_S
from wgagent.model import ClusterView

ANNOTATION = "wgagent.io/mesh"
VERSION = 1
MAX_BYTES = 16 * 1024
MAX_TEXT = 200
"""Free text (interface detail, rule) is cut to this many characters."""
UP = "up"
STOPPED = "stopped"
WG_LISTED = (ob.DOWN, ob.DRIFT, ob.MISSING, ob.ROAMED)
INBOUND_LISTED = (pb.HOST, pb.MISS, pb.SRC)


@dataclass(frozen=True)
class Note:
    """One Node that is not fine, as this agent sees it."""

    node: str
    wg: str | None = None
    wg_since: int | None = None
    endpoint: str | None = None
    hears: bool = False
    old_key: bool = False
    inbound: str | None = None
    in_since: int | None = None
    src: str | None = None

    @property
    def severity(self) -> int:
        """Lower is more severe: what :func:`encode` keeps first."""
        order = {ob.DOWN: 0, ob.DRIFT: 1, ob.MISSING: 2, pb.HOST: 3, pb.MISS: 4, pb.SRC: 5, ob.ROAMED: 6}
        return min(order.get(self.wg or "", 9), order.get(self.inbound or "", 9))


@dataclass(frozen=True)
class Inbound:
    state: str = "off"
    counter: str = "ok"
    ok: int = 0
    miss: int = 0
    host: int = 0
    src: int = 0
    rule: str | None = None


@dataclass(frozen=True)
class HostFacts:
    """What the part knows about the node itself, besides the device."""

    public: str | None = None
    """The public address the public IP part adopted."""
    nat: bool | None = None
    provider: str | None = None


@dataclass(frozen=True)
class Report:
    at: int
    state: str = UP
    interface: str | None = None
    interface_ok: bool = True
    interface_detail: str = ""
    public: str | None = None
    nat: bool | None = None
    provider: str | None = None
    probe_interval_s: int | None = None
    probing_since: int | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    inbound: Inbound = field(default_factory=Inbound)
    notes: tuple[Note, ...] = ()
    cut: int = 0

    def note(self, node: str) -> Note | None:
        for n in self.notes:
            if n.node == node:
                return n
        return None


def build(
    obs: ob.Look,
    inbound: pb.InboundView | None,
    host: HostFacts,
    *,
    probe_interval_s: float | None,
    probing_since: float | None,
    state: str = UP,
) -> Report:
    """The report of one look (``probe_interval_s`` None: this agent does not probe)."""
    notes, counts = _wireguard_notes(obs)
    summary = Inbound()
    if inbound is not None:
        for f in inbound.findings:
            base = notes.get(f.node, Note(f.node))
            notes[f.node] = replace(base, inbound=f.status, in_since=int(f.since), src=f.src)
        summary = Inbound(
            inbound.state,
            inbound.counter,
            inbound.ok,
            inbound.count(pb.MISS),
            inbound.count(pb.HOST),
            inbound.count(pb.SRC),
            _text(inbound.rule),
        )
    return Report(
        at=int(obs.at),
        state=state,
        interface=obs.interface,
        interface_ok=obs.interface_ok,
        interface_detail=_text(obs.interface_detail) or "",
        public=host.public,
        nat=host.nat,
        provider=host.provider,
        probe_interval_s=int(probe_interval_s) if probe_interval_s else None,
        probing_since=int(probing_since) if probe_interval_s and probing_since is not None else None,
        counts={k: v for k, v in counts.items() if v},
        inbound=summary,
        notes=tuple(sorted(notes.values(), key=lambda n: n.node)),
    )


def _wireguard_notes(obs: ob.Look) -> tuple[dict[str, Note], dict[str, int]]:
    """A note per listed peer, and the counts over all of them (a peer not yet listed, as a
    missing key within its grace, counts as ok)."""
    notes: dict[str, Note] = {}
    counts: dict[str, int] = {"peers": len(obs.peers), "other": obs.others}
    for v in obs.peers:
        shown = ob.listed(v, obs.at)
        bucket = v.status if shown else ob.OK
        counts[bucket] = counts.get(bucket, 0) + 1
        if shown:
            notes[v.node] = Note(
                v.node,
                wg=v.status,
                wg_since=int(v.since),
                endpoint=v.endpoint if v.status in (ob.DRIFT, ob.ROAMED) else None,
                hears=bool(v.rx_delta),
                old_key=v.old_key is not None,
            )
    return notes, counts


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    value = " ".join(value.split())
    return value if len(value) <= MAX_TEXT else value[: MAX_TEXT - 3] + "..."


# --- encoding ----------------------------------------------------------------------------------


def encode(report: Report) -> str:
    """The annotation value: compact JSON, at most MAX_BYTES (least severe details cut)."""
    doc = _head(report)
    kept: dict[str, dict[str, Any]] = {}
    budget = MAX_BYTES - len(_dumps({**doc, "cut": 99999, "d": {}}))
    used = 0
    ordered = sorted(report.notes, key=lambda n: (n.severity, n.node))
    cut = report.cut
    for i, note in enumerate(ordered):
        entry = _note_json(note)
        size = len(_dumps({note.node: entry})) - 1  # the braces once, a comma per entry
        if used + size > budget:
            cut += len(ordered) - i
            break
        kept[note.node] = entry
        used += size
    if kept:
        doc["d"] = kept
    if cut:
        doc["cut"] = cut
    text = _dumps(doc)
    assert len(text.encode()) <= MAX_BYTES
    return text


def _dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=True)


def _head(r: Report) -> dict[str, Any]:
    doc: dict[str, Any] = {"v": VERSION, "t": r.at, "st": r.state}
    optional = {
        "if": r.interface,
        "ifok": None if r.interface_ok else False,
        "ifd": r.interface_detail or None,
        "pub": r.public,
        "nat": r.nat,
        "prov": r.provider,
        "pr": r.probe_interval_s,
        "ps": r.probing_since,
    }
    doc.update({k: v for k, v in optional.items() if v is not None})
    if r.counts:
        doc["n"] = dict(r.counts)
    i = r.inbound
    inbound: dict[str, Any] = {"st": i.state}
    if i.counter != "ok":
        inbound["ctr"] = i.counter
    for k, v in (("ok", i.ok), ("miss", i.miss), ("host", i.host), ("src", i.src)):
        if v:
            inbound[k] = v
    if i.rule:
        inbound["rule"] = i.rule
    doc["in"] = inbound
    return doc


def _note_json(n: Note) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for k, v in (("w", n.wg), ("ws", n.wg_since), ("ep", n.endpoint), ("i", n.inbound), ("is", n.in_since)):
        if v is not None:
            entry[k] = v
    if n.src is not None:
        entry["src"] = n.src
    if n.hears:
        entry["hr"] = 1
    if n.old_key:
        entry["ok"] = 1
    return entry


# --- strict decoding ---------------------------------------------------------------------------


class _Bad(Exception):
    pass


@functools.lru_cache(maxsize=4096)
def decode(text: str | None) -> Report | None:
    """The report in an annotation value, or None when it is absent, malformed or not ours.

    Remembered by value (the last 4,096): a pass reads every Node's report, and most are the
    same as at the last pass. The result is shared: never change it."""
    if not text or len(text) > MAX_BYTES:
        return None
    try:
        doc = json.loads(text)
        return _report(doc)
    except (ValueError, _Bad, RecursionError):
        return None


def _report(doc: Any) -> Report:
    d = _obj(doc)
    if _int(d.get("v")) != VERSION:
        raise _Bad
    state = _str(d.get("st"))
    if state not in (UP, STOPPED):
        raise _Bad
    counts = {_str(k): _int(v) for k, v in _obj(d.get("n", {})).items()}
    notes = tuple(_note(_str(k), v) for k, v in sorted(_obj(d.get("d", {})).items()))
    return Report(
        at=_int(d.get("t")),
        state=state,
        interface=_opt(d.get("if"), _str),
        interface_ok=_opt(d.get("ifok"), _bool) is not False,
        interface_detail=_opt(d.get("ifd"), _str) or "",
        public=_opt(d.get("pub"), _str),
        nat=_opt(d.get("nat"), _bool),
        provider=_opt(d.get("prov"), _str),
        probe_interval_s=_opt(d.get("pr"), _int),
        probing_since=_opt(d.get("ps"), _int),
        counts=counts,
        inbound=_inbound(_obj(d.get("in", {}))),
        notes=notes,
        cut=_opt(d.get("cut"), _int) or 0,
    )


def _inbound(d: Mapping[str, Any]) -> Inbound:
    return Inbound(
        state=_opt(d.get("st"), _str) or "off",
        counter=_opt(d.get("ctr"), _str) or "ok",
        ok=_opt(d.get("ok"), _int) or 0,
        miss=_opt(d.get("miss"), _int) or 0,
        host=_opt(d.get("host"), _int) or 0,
        src=_opt(d.get("src"), _int) or 0,
        rule=_opt(d.get("rule"), _str),
    )


def _note(node: str, value: Any) -> Note:
    d = _obj(value)
    wg = _opt(d.get("w"), _str)
    inbound = _opt(d.get("i"), _str)
    if (wg is not None and wg not in WG_LISTED) or (inbound is not None and inbound not in INBOUND_LISTED):
        raise _Bad
    return Note(
        node,
        wg=wg,
        wg_since=_opt(d.get("ws"), _int),
        endpoint=_opt(d.get("ep"), _str),
        hears=_opt(d.get("hr"), _int) == 1,
        old_key=_opt(d.get("ok"), _int) == 1,
        inbound=inbound,
        in_since=_opt(d.get("is"), _int),
        src=_opt(d.get("src"), _str),
    )


def _obj(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _Bad
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str) or len(v) > 512:
        raise _Bad
    return v


def _int(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 53:
        raise _Bad
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Bad
    return v


def _opt(v: Any, conv: Any) -> Any:
    return None if v is None else conv(v)


# --- when to write -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LastReport:
    """The last report written: when, and its content (the encoding without the time)."""

    at: float
    content: str


@dataclass(frozen=True)
class PublishDecision:
    write: bool
    reason: str
    """``first``, ``changed``, ``refresh``, ``final``; or why not (``unchanged``, ``rate limit``)."""
    next_at: float | None = None
    """When to look again at the latest (the rate limit's end, or the next refresh)."""


def content(report: Report) -> str:
    """What a write is about: the encoding with the observation time left out."""
    return encode(replace(report, at=0))


def decide_publish(
    last: LastReport | None, report: Report, now: float, interval_s: float, *, final: bool = False
) -> PublishDecision:
    """Whether to write ``report`` now (see the module doc).

    >>> r = Report(at=100)
    >>> decide_publish(None, r, 100, 60).reason
    'first'
    >>> decide_publish(LastReport(90, content(r)), r, 100, 60)
    PublishDecision(write=False, reason='unchanged', next_at=1890.0)
    """
    if last is None:
        return PublishDecision(True, "first")
    if final:
        return PublishDecision(True, "final")
    if content(report) != last.content:
        if now - last.at >= interval_s:
            return PublishDecision(True, "changed")
        return PublishDecision(False, "rate limit", last.at + interval_s)
    if now - last.at >= REFRESH_S:
        return PublishDecision(True, "refresh")
    return PublishDecision(False, "unchanged", last.at + REFRESH_S)


def published(view: ClusterView) -> dict[str, str]:
    """Every Node's report as the Node list carries it: node name -> the annotation's value."""
    return {name: info.annotations[ANNOTATION] for name, info in view.nodes.items() if ANNOTATION in info.annotations}


def patch(report: Report) -> dict[str, Any]:
    """The JSON merge patch that writes ``report`` on the own Node."""
    return {"metadata": {"annotations": {ANNOTATION: encode(report)}}}
