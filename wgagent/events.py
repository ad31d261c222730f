"""Kubernetes Events on the own Node: every action wgagent takes and every change of mesh state.

``kubectl get events --field-selector involvedObject.name=<node>`` and ``kubectl describe node``
show them, next to kubelet's. They are core/v1 Events made the way kubelet makes its node
events (kubernetes pkg/kubelet/kubelet.go ``NewMainKubelet``: ``involvedObject`` Kind ``Node``,
name = uid = the node name, no namespace; client-go tools/record/event.go ``makeEvent`` puts an
event about a cluster-scoped object in namespace ``default``): POST
``/api/v1/namespaces/default/events``, then PATCH to count repeats. ``kubectl describe node``
looks for both the Node's uid and its name as uid (kubectl pkg/describe/describe.go,
``NodeDescriber``: "kubelet use node.name"), so no GET of the Node is needed.

Reasons (stable, in :data:`REASONS` with their type): ``PublicIPAdopted``, ``K3sConfigWritten``,
``K3sRestarted``, ``OverwriteSet``, ``PeersRemoved``, ``EndpointReset``, ``MeshPathDown``,
``MeshPathRestored``, ``InboundBlocked``, ``InboundRestored``. Messages come from the builders
below: the old and the new value, and for a problem the fix; one line, at most 1,024
characters, passed through :func:`wgagent.logs.redact` (no secret ever reaches the API).

Aggregation (:func:`decide`, pure), after client-go tools/record/events_cache.go
(``EventCorrelator``, client-go at 32ce75a):

- the same reason, type and message again: the existing Event is patched, ``count`` + 1 and a
  new ``lastTimestamp`` (``eventLogger.eventObserve``, keyed by ``getEventKey``: source,
  object, type, reason, message);
- another message of the same reason less than 10 minutes after that reason's last new Event:
  no new Event, the existing one is patched with the count and the message prefixed
  "(combined from similar events): " (``EventAggregator``, keyed by reason as
  ``EventAggregatorByReasonFunc``; client-go waits for 10 distinct messages in 10 minutes,
  wgagent for 2: at most one new Event per reason per Node per 10 minutes);
- every write spends a token of a bucket per Node, 25 deep, refilled one per 5 minutes
  (``EventSourceObjectSpamFilter``, ``getSpamKey``: source + object; ``defaultSpamBurst`` 25,
  ``defaultSpamQPS`` 1/300). Where client-go drops a filtered event, wgagent folds a repeat
  into the count and writes it with the next write (:func:`flush`); a new Event without a
  token is dropped and counted.

A PATCH answered 404 (the API server deletes Events after ``--event-ttl``, 1 h by default)
creates the Event again, as client-go's ``recordEvent`` does.

:class:`EventRecorder` is the thin async adapter over an :class:`EventSink` (the Kubernetes
client implements it); it never raises: a failed write is logged and counted. Parts hand it
records with :meth:`EventRecorder.post` (synchronous: from a Signal listener or a pass), and
it writes them in the background, one at a time, in order. :class:`EventsPart` is its place
among the daemon's parts (``wiring.py`` builds one, with the own Node's credential, when
``kube.enabled`` and ``events.enabled``): it writes folded counts every few minutes, and at a
stop waits briefly for what is still being written, then closes its client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from wgagent.errors import Conflict, KubeError, NotFound
from wgagent.logs import redact
from wgagent.part import Part
from wgagent.state import State
from wgagent.timefmt import rfc3339

log = logging.getLogger(__name__)

NORMAL = "Normal"
WARNING = "Warning"
NAMESPACE = "default"
COMPONENT = "wgagent"
MAX_MESSAGE = 1024
AGGREGATE_PREFIX = "(combined from similar events): "

REASONS: Mapping[str, str] = {
    "PublicIPAdopted": NORMAL,
    "K3sConfigWritten": NORMAL,
    "K3sRestarted": NORMAL,
    "OverwriteSet": NORMAL,
    "PeersRemoved": NORMAL,
    "EndpointReset": NORMAL,
    "MeshPathDown": WARNING,
    "MeshPathRestored": NORMAL,
    "InboundBlocked": WARNING,
    "InboundRestored": NORMAL,
}


@dataclass(frozen=True)
class EventsPolicy:
    """``events.enabled`` (phase 2 adds the key) and the aggregation limits."""

    enabled: bool = True
    min_new_interval_s: float = 600.0
    """At most one new Event per reason per Node per this many seconds."""
    burst: int = 25
    refill_s: float = 300.0


@dataclass(frozen=True)
class Record:
    reason: str
    message: str

    @property
    def type(self) -> str:
        return REASONS[self.reason]


# --- message builders: old and new values, and the fix ----------------------------------------


def public_ip_adopted(old: str | None, new: str, how: str) -> Record:
    return Record("PublicIPAdopted", f"public IP {old or 'none'} -> {new} ({how})")


def k3s_config_written(path: str, change: str) -> Record:
    return Record("K3sConfigWritten", f"wrote {path}: {change}")


def k3s_restarted(unit: str, why: str) -> Record:
    return Record("K3sRestarted", f"restarted {unit}: {why}")


def overwrite_set(
    old: str | None, new: str | None, annotation: str = "flannel.alpha.coreos.com/public-ip-overwrite"
) -> Record:
    return Record("OverwriteSet", f"{annotation}: {old or 'unset'} -> {new or 'unset'}")


def peers_removed(count: int, interface: str, examples: list[str]) -> Record:
    keys = ", ".join(k[:8] + "..." for k in examples[:3])
    more = f" (e.g. {keys})" if keys else ""
    return Record("PeersRemoved", f"removed {count} dead peer{'s' if count != 1 else ''} from {interface}{more}")


def endpoint_reset(peer_node: str, old: str | None, new: str) -> Record:
    return Record(
        "EndpointReset",
        f"peer {peer_node}: endpoint {old or 'none'} -> {new} (no handshake for 180 s; flannel does not correct it)",
    )


def mesh_path_down(src: str, dst: str, state: str, cause: str, node: str | None, fix: str) -> Record:
    who = f"fix on {node}" if node else "no node named"
    return Record("MeshPathDown", f"{src} -> {dst}: ok -> {state} ({cause}); {who}: {fix}")


def mesh_path_restored(src: str, dst: str, was: str) -> Record:
    return Record("MeshPathRestored", f"{src} -> {dst}: {was} -> ok")


def inbound_blocked(node: str, cause: str, fix: str) -> Record:
    return Record("InboundBlocked", f"new flows to {node} do not get in ({cause}): {fix}")


def inbound_restored(node: str, was: str) -> Record:
    return Record("InboundRestored", f"new flows to {node} get in again (was {was})")


def clean(message: str) -> str:
    """One line, no secret, at most MAX_MESSAGE characters."""
    text = " ".join(redact(message).split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


# --- the pure policy ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """The Event object wgagent keeps for one reason."""

    name: str
    type: str
    message: str
    """As last written (maybe with the aggregate prefix)."""
    base: str
    """The message of the last record, for "the same again"."""
    first_at: float
    last_at: float
    count: int
    created_at: float
    unwritten: int = 0
    """Occurrences folded into ``count`` but not yet written (no token)."""


@dataclass(frozen=True)
class Ledger:
    entries: Mapping[str, Entry] = field(default_factory=dict)
    tokens: float | None = None
    """None: a full bucket."""
    tokens_at: float = 0.0
    dropped: int = 0


@dataclass(frozen=True)
class Create:
    reason: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Patch:
    reason: str
    name: str
    patch: dict[str, Any]


@dataclass(frozen=True)
class Skip:
    reason: str
    why: str


Action = Create | Patch | Skip


def event_name(node: str, now: float) -> str:
    """``<node>.<unix nanoseconds, hex>``, as client-go's ``GenerateEventName``."""
    return f"{node}.{int(now * 1e9):x}"


def body(node: str, entry: Entry, reason: str) -> dict[str, Any]:
    """The core/v1 Event object of ``entry``."""
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": entry.name, "namespace": NAMESPACE},
        "involvedObject": {"kind": "Node", "name": node, "uid": node},
        "reason": reason,
        "message": entry.message,
        "type": entry.type,
        "source": {"component": COMPONENT, "host": node},
        "reportingComponent": COMPONENT,
        "reportingInstance": node,
        "firstTimestamp": rfc3339(entry.first_at),
        "lastTimestamp": rfc3339(entry.last_at),
        "count": entry.count,
    }


def _tokens(ledger: Ledger, now: float, policy: EventsPolicy) -> float:
    if ledger.tokens is None:
        return float(policy.burst)
    return min(float(policy.burst), ledger.tokens + max(0.0, now - ledger.tokens_at) / policy.refill_s)


def decide(ledger: Ledger, record: Record, node: str, now: float, policy: EventsPolicy) -> tuple[Action, Ledger]:
    """What to write for ``record`` now, and the ledger after (see the module doc)."""
    if not policy.enabled:
        return Skip(record.reason, "events.enabled is false"), ledger
    message = clean(record.message)
    tokens = _tokens(ledger, now, policy)
    entry = ledger.entries.get(record.reason)
    same = entry is not None and entry.base == message
    if entry is not None and (same or now - entry.created_at < policy.min_new_interval_s):
        shown = message if same else AGGREGATE_PREFIX + message
        grown = replace(entry, message=shown, base=message, last_at=now, count=entry.count + 1)
        if tokens < 1:
            grown = replace(grown, unwritten=entry.unwritten + 1)
            return Skip(record.reason, "rate limited: folded into the count"), _put(
                ledger, record.reason, grown, tokens, now
            )
        action = Patch(record.reason, entry.name, _patch(grown))
        return action, _put(ledger, record.reason, replace(grown, unwritten=0), tokens - 1, now)
    if tokens < 1:
        skipped = replace(ledger, tokens=tokens, tokens_at=now, dropped=ledger.dropped + 1)
        return Skip(record.reason, "rate limited: dropped"), skipped
    new = Entry(event_name(node, now), record.type, message, message, now, now, 1, now)
    return Create(record.reason, body(node, new, record.reason)), _put(ledger, record.reason, new, tokens - 1, now)


def flush(ledger: Ledger, now: float, policy: EventsPolicy) -> tuple[list[Patch], Ledger]:
    """Patches for counts folded in while there was no token, as far as tokens allow."""
    tokens = _tokens(ledger, now, policy)
    out = []
    entries = dict(ledger.entries)
    for reason, entry in sorted(ledger.entries.items()):
        if entry.unwritten and tokens >= 1:
            tokens -= 1
            entries[reason] = replace(entry, unwritten=0)
            out.append(Patch(reason, entry.name, _patch(entry)))
    return out, replace(ledger, entries=entries, tokens=tokens, tokens_at=now)


def recreate(ledger: Ledger, reason: str, node: str, now: float) -> tuple[Create, Ledger]:
    """The Event was gone (404 on PATCH): create it again under a new name, count kept."""
    entry = ledger.entries[reason]
    again = replace(entry, name=event_name(node, now), created_at=now)
    return Create(reason, body(node, again, reason)), replace(ledger, entries={**ledger.entries, reason: again})


def _patch(entry: Entry) -> dict[str, Any]:
    return {"count": entry.count, "lastTimestamp": rfc3339(entry.last_at), "message": entry.message}


def _put(ledger: Ledger, reason: str, entry: Entry, tokens: float, now: float) -> Ledger:
    return replace(ledger, entries={**ledger.entries, reason: entry}, tokens=tokens, tokens_at=now)


# --- the adapter -------------------------------------------------------------------------------


class EventSink(Protocol):
    """What the recorder needs of the Kubernetes API (``KubeClient`` implements it)."""

    async def create_event(self, namespace: str, event: Mapping[str, Any]) -> dict[str, Any]: ...

    async def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]: ...


class EventRecorder:
    """Records Events on ``node`` through ``sink``; never raises (failures are logged and counted)."""

    def __init__(
        self,
        sink: EventSink,
        node: str,
        policy: EventsPolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sink = sink
        self.node = node
        self.policy = policy or EventsPolicy()
        self.clock = clock
        self.ledger = Ledger()
        self.written = 0
        self.failed = 0
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task[None]] = set()

    def post(self, record: Record) -> None:
        """:meth:`record` from synchronous code: written in the background, in order; never raises.

        Without a running event loop (a command, a test without one) nothing is written.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log.debug("event %s not written: no event loop", record.reason)
            return
        task = loop.create_task(self.record(record))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self, timeout_s: float) -> None:
        """Wait at most ``timeout_s`` for the posted records to be written."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout_s)

    async def record(self, record: Record) -> None:
        async with self._lock:  # one write at a time: each decision sees the last write's ledger
            await self._record(record)

    async def _record(self, record: Record) -> None:
        now = self.clock()
        action, after = decide(self.ledger, record, self.node, now, self.policy)
        if isinstance(action, Skip):
            self.ledger = after
            log.debug("event %s not written: %s", record.reason, action.why)
            return
        if await self._write(action, after, now):
            log.info("event %s %s: %s", record.type, record.reason, clean(record.message))

    async def flush(self) -> None:
        async with self._lock:
            patches, after = flush(self.ledger, self.clock(), self.policy)
            for p in patches:
                await self._write(p, after, self.clock())

    async def _write(self, action: Create | Patch, after: Ledger, now: float) -> bool:
        try:
            if isinstance(action, Create):
                await self._create(action)
            else:
                try:
                    await self.sink.patch_event(NAMESPACE, action.name, action.patch)
                except NotFound:
                    create, after = recreate(after, action.reason, self.node, now)
                    await self._create(create)
        except KubeError as exc:
            self.failed += 1
            log.warning("event %s could not be written: %s", action.reason, exc)
            return False
        self.ledger = after
        self.written += 1
        return True

    async def _create(self, action: Create) -> None:
        # 409: already there (a retried POST that had arrived): as client-go, not an error.
        with contextlib.suppress(Conflict):
            await self.sink.create_event(NAMESPACE, action.body)


def ignore(record: Record) -> None:
    """What a part posts to when Events are off (``events.enabled: false``, or no Kubernetes)."""


class EventsPart(Part):
    """The recorder among the daemon's parts: ``/status`` ``events``, folded counts written every
    5 minutes (a token comes back that often), a bounded wait for the last writes at a stop."""

    name = "events"
    checks = ()
    STOP_WAIT_S = 0.5

    def __init__(self, state: State, recorder: EventRecorder, *, close: Callable[[], Any] | None = None) -> None:
        super().__init__(state)
        self.recorder = recorder
        self.interval_s = recorder.policy.refill_s
        self._close = close

    async def reconcile(self) -> None:
        await self.recorder.flush()
        r = self.recorder
        self.state.set_part(
            self.name,
            {
                "written": r.written,
                "failed": r.failed,
                "dropped": r.ledger.dropped,
                "reasons": sorted(r.ledger.entries),
            },
        )

    async def close(self) -> None:
        await self.recorder.drain(self.STOP_WAIT_S)
        if self._close is not None:
            await self._close()
