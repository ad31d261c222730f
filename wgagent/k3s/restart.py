"""Restarting k3s so that it re-reads its config (and flannel its annotations): rarely, once per change, safely.

    should_restart(history, now, min_interval_s, enabled) -> RestartDecision      pure
    Restarter.need(kind, want, why) -> RestartResult    a part: k3s must restart for this
    Restarter.drop(kind)                                a part: ... not any more
    Restarter.serve() -> RestartResult | None           the k3s part, each pass: one restart for every need

A need is keyed by its *kind* (a stable id, :data:`KINDS`) and says what k3s or flannel
should have after the restart (``want``, e.g. ``node-external-ip=203.0.113.7``): parts never
compare sentences. The needs and the history live in memory; every change is also written to
``<state_dir>/k3s-restarts.json``, which is read once at start, so the rate limit and a
pending need survive a restart (or a crash loop) of wgagent.

Rules:

- k3s is restarted only while it runs (``systemctl is-active``): a stopped k3s reads its
  config when it starts, so boot needs no restart;
- at most once per ``k3s.min_restart_interval_s``, recorded *before* ``systemctl`` runs;
  a restart that cannot be recorded does not happen;
- one restart serves every need at once; a need is met when k3s (re)started after it
  arose, whoever restarted it (``ExecMainStartTimestampMonotonic``), so a manual restart
  clears it and ``k3s.restart: false`` waits for one;
- a *passenger* need (``alone=False``) never causes a restart: it rides along with the next;
- a restart converges or is not repeated: when a part needs the same (kind, want) again
  after a restart wgagent made for it, restarting again would not change what flannel
  published (something else decides it); the need is reported as ``stuck``, with the
  part's own explanation, and never served again until its ``want`` changes.

``systemctl`` runs through a :class:`~wgagent.proc.Runner`; unit tests pass a fake, lab
tests a fake ``systemctl`` on PATH. ``try-restart --no-block`` queues the job and returns:
k3s can take minutes to start and wgagent's pass must not wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from wgagent import fsutil
from wgagent.config import K3sConfig
from wgagent.errors import WriteError
from wgagent.events import Record, ignore, k3s_restarted
from wgagent.metrics import Registry
from wgagent.model import RestartResult
from wgagent.part import Signal
from wgagent.proc import Runner, SubprocessRunner
from wgagent.timefmt import utc_text

log = logging.getLogger(__name__)

HISTORY_FILE = "k3s-restarts.json"
HISTORY_KEEP = 20
SETTLE_S = 120.0
"""After k3s started, how long flannel may take to publish before a need that the restart was
for counts as not fixed by it (k3s starts flannel within seconds; registering can take longer)."""
RUNNING_STATES = frozenset({"active", "activating", "reloading", "refreshing"})
"""``systemctl is-active`` words for a k3s that has read (or is reading) its config."""

KINDS = {
    "config": "wgagent's k3s drop-in changed a value k3s reads at start",
    "overwrite": "the public-ip-overwrite annotation changed; flannel reads it only at start",
    "backend": "flannel on this node runs another backend than the servers",
    "wireguard-key": "the k3s unit drop-in that keeps flannel's WireGuard key changed",
}
"""Every kind of need, and what it means (for ``/status`` and the docs)."""
UNIT_FILE_KINDS = frozenset({"wireguard-key"})
APPLIED_AT_START = frozenset({"config", "wireguard-key"})
"""Needs for what k3s reads when it starts: met by any start after a restart for the same want.
The others (``overwrite``, ``backend``) are judged by their effect, which their part watches."""
"""Needs that changed a unit file: ``systemctl daemon-reload`` runs before the restart."""


# --- the policy (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class RestartDecision:
    allowed: bool
    why: str
    next_allowed_at: float | None = None
    """When a rate-limited restart becomes allowed (epoch seconds); None otherwise."""


def should_restart(history: Sequence[float], now: float, min_interval_s: float, enabled: bool) -> RestartDecision:
    """Whether k3s may be restarted at ``now``, given when it was restarted before.

    A restart time after ``now`` (the clock was set back) counts as ``now``: the wait is at
    most one interval, never "until the clock catches up".

    >>> should_restart([1000.0], 1300.0, 600, True).next_allowed_at
    1600.0
    >>> should_restart([1000.0], 1600.0, 600, True).allowed
    True
    """
    if not enabled:
        return RestartDecision(False, "restarts are off (k3s.restart: false)")
    if not history:
        return RestartDecision(True, "no restart before")
    last = min(max(history), now)
    if now - last < min_interval_s:
        return RestartDecision(
            False,
            f"rate limit: restarted {now - last:.0f} s ago, at most once per {min_interval_s:g} s",
            last + min_interval_s,
        )
    return RestartDecision(True, f"last restart {now - last:.0f} s ago")


# --- the state, kept in memory and on disk ----------------------------------------------------


@dataclass(frozen=True)
class Need:
    kind: str
    want: str
    """What k3s or flannel should have after the restart; the same need asked again keeps its ``since``."""
    why: str
    since: float
    alone: bool = True
    """False: a passenger, served only together with another need."""


@dataclass(frozen=True)
class Restart:
    at: float
    unit: str
    reason: str
    served: Mapping[str, str] = field(default_factory=dict)
    """kind -> want of the needs this restart was for."""


@dataclass(frozen=True)
class Served:
    """What wgagent's last restart for a kind was for, and when."""

    want: str
    at: float


@dataclass
class Book:
    """What the restarter remembers: past restarts, open needs, and what each kind's last
    restart was for (to tell a restart that did not converge)."""

    restarts: list[Restart] = field(default_factory=list)
    needs: dict[str, Need] = field(default_factory=dict)
    served: dict[str, Served] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 2,
            "restarts": [
                {"at": r.at, "unit": r.unit, "reason": r.reason, "served": dict(r.served)}
                for r in self.restarts[-HISTORY_KEEP:]
            ],
            "needs": {
                k: {"want": n.want, "why": n.why, "since": n.since, "alone": n.alone} for k, n in self.needs.items()
            },
            "served": {k: {"want": s.want, "at": s.at} for k, s in self.served.items()},
        }

    @classmethod
    def from_json(cls, data: Any) -> Book:
        """Whatever parses; a malformed entry is dropped, never fatal. A version 1 file's
        pending request becomes a ``config`` need (what it nearly always was)."""
        book = cls()
        if not isinstance(data, dict):
            return book
        for item in data.get("restarts") or []:
            if isinstance(item, dict) and _is_time(item.get("at")):
                raw = item.get("served")
                served = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
                book.restarts.append(
                    Restart(float(item["at"]), str(item.get("unit", "")), str(item.get("reason", "")), served)
                )
        for kind, n in (data.get("needs") or {}).items():
            if isinstance(n, dict) and _is_time(n.get("since")):
                book.needs[str(kind)] = Need(
                    str(kind),
                    str(n.get("want", "")),
                    str(n.get("why", "")),
                    float(n["since"]),
                    bool(n.get("alone", True)),
                )
        old = data.get("pending")
        if isinstance(old, dict) and _is_time(old.get("since")):
            book.needs["config"] = Need("config", "", str(old.get("reason", "")), float(old["since"]))
        for kind, s in (data.get("served") or {}).items():
            if isinstance(s, dict) and _is_time(s.get("at")):
                book.served[str(kind)] = Served(str(s.get("want", "")), float(s["at"]))
        return book


def _is_time(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value and value >= 0


Gate = Callable[[Sequence["Need"], float], Awaitable["str | None"]]
"""``(open needs, now) -> reason to wait | None``."""


# --- the adapter ---------------------------------------------------------------------------


class Restarter:
    """The one place k3s is restarted from. Parts call :meth:`need` / :meth:`drop`; the k3s
    part calls :meth:`serve` at the end of each pass. ``unit`` is None while no k3s is known."""

    def __init__(
        self,
        cfg: K3sConfig,
        *,
        state_dir: str,
        unit: str | None,
        metrics: Registry,
        runner: Runner | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        timeout_s: float = 30.0,
        gate: Gate | None = None,
        events: Callable[[Record], None] = ignore,
    ) -> None:
        self.cfg = cfg
        self._events = events
        self._gate = gate
        """Asked last before a restart (HA servers: one at a time, ``k3s/servers.py``): a reason
        to wait, or None to go ahead."""
        self.unit = unit
        self.path = os.path.join(state_dir, HISTORY_FILE)
        self.needed: Signal[str] = Signal("k3s.restart_needed")
        """Emitted with the kind when a new need arises (the wiring wakes the k3s part)."""
        self._runner: Runner = runner or SubprocessRunner()
        self._clock = clock
        self._monotonic = monotonic
        self._timeout_s = timeout_s
        self._lock = asyncio.Lock()
        self._book = Book.from_json(fsutil.load_json(self.path))
        self._stuck: dict[str, str] = {}
        """kind -> the need that a restart did not fix (not served again)."""
        self._logged: str | None = None
        self._restarts = metrics.counter(
            "wgagent_k3s_restarts_total", "k3s restarts wgagent asked systemd for (systemctl try-restart)."
        )
        self._pending_gauge = metrics.gauge(
            "wgagent_k3s_restart_pending", "1 while k3s runs without a restart it needs (rate limit, restarts off)."
        )

    # --- what parts call -----------------------------------------------------------------

    def need(self, kind: str, want: str, why: str, *, alone: bool = True) -> RestartResult:
        """k3s must restart so that ``want`` takes effect; what will become of it, now.

        The same (kind, want) again keeps its place; a new ``want`` replaces the old need.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown restart kind {kind!r}")
        if self._stuck.get(kind) == want:
            return RestartResult(False, f"a k3s restart for this did not help; not restarting again ({why})")
        self._stuck.pop(kind, None)  # another want: a new need
        old = self._book.needs.get(kind)
        if old is None or old.want != want or old.alone != alone:
            since = old.since if old is not None and old.want == want else self._clock()
            self._book.needs[kind] = Need(kind, want, why, since, alone)
            self._save()
            if old is None or old.want != want:
                self.needed.emit(kind)
        served = self._book.served.get(kind)
        if served is not None and served.want == want:
            return RestartResult(False, f"k3s was restarted for this at {utc_text(served.at)}; waiting for it ({why})")
        return self._outlook(why)

    def drop(self, kind: str) -> None:
        """The need of this kind is gone (fixed another way, or no longer wanted)."""
        self._stuck.pop(kind, None)
        self._drop_need(kind)

    @property
    def open_needs(self) -> frozenset[str]:
        """The kinds still waiting for a restart."""
        return frozenset(self._book.needs)

    @property
    def stuck(self) -> Mapping[str, str]:
        """kind -> want of the needs a restart did not fix (reported, never served again)."""
        return dict(self._stuck)

    # --- what the k3s part calls -----------------------------------------------------------

    async def serve(self) -> RestartResult | None:
        """Restart k3s once for every open need, if it runs and the policy allows; None when
        nothing is needed."""
        async with self._lock:
            needs = self._book.needs
            if not needs:
                self._pending_gauge.set(0)
                return None
            unit = self.unit
            if unit is None:
                return RestartResult(False, "no k3s unit known: nothing to restart")
            started = await self._main_started_at(unit)
            met = self._met_by_a_start(unit, started)
            if met is not None:
                return met
            waiting = self._sort_out_served(started)
            if not any(n.alone for k, n in self._book.needs.items() if k not in waiting):
                # passengers wait for a restart someone else needs; served ones for it to settle
                return RestartResult(False, "waiting for the last k3s restart to take effect") if waiting else None
            return await self._restart_if_running(unit)

    def status(self) -> dict[str, Any]:
        """For /status: the last restart, the open needs, the stuck ones."""
        last = self._book.restarts[-1] if self._book.restarts else None
        return {
            "enabled": self.cfg.restart,
            "min_interval_s": self.cfg.min_restart_interval_s,
            "last": None
            if last is None
            else {"at": utc_text(last.at), "unit": last.unit, "reason": last.reason, "for": sorted(last.served)},
            "needs": {
                k: {"want": n.want, "why": n.why, "since": utc_text(n.since)} for k, n in self._book.needs.items()
            },
            "stuck": dict(self._stuck),
        }

    # --- the steps ------------------------------------------------------------------------

    def _met_by_a_start(self, unit: str, started: float | None) -> RestartResult | None:
        """Drop the needs a k3s start after they arose has met; a result when none is left."""
        if started is None:
            return None
        met = [k for k, n in self._book.needs.items() if started > n.since]
        if not met:
            return None
        for kind in met:
            log.info("%s started at %s, after it needed a restart (%s)", unit, utc_text(started), kind)
            del self._book.needs[kind]
        self._save()
        if self._book.needs:
            return None
        self._pending_gauge.set(0)
        return RestartResult(False, f"{unit} restarted at {utc_text(started)}; no restart needed")

    def _sort_out_served(self, started: float | None) -> set[str]:
        """The open needs wgagent's last restart was already for. A config k3s reads at start is
        in effect once k3s started after that restart (a value that went and came back): met.
        Any other kind waits while that restart may still be settling; once it has settled it is
        stuck: dropped, never served again."""
        now = self._clock()
        waiting = set()
        for kind, need in list(self._book.needs.items()):
            served = self._book.served.get(kind)
            if served is None or served.want != need.want:
                continue
            if kind in APPLIED_AT_START and started is not None and started >= served.at:
                log.info("%s: k3s has run with %s since %s; no restart needed", kind, need.want, utc_text(started))
                del self._book.needs[kind]
                self._save()
                continue
            settled = started is not None and started >= served.at and now - started >= SETTLE_S
            if settled or now - served.at >= SETTLE_S * 5:
                log.warning("k3s was restarted for %s at %s and it did not help; not again: %s", kind,
                            utc_text(served.at), need.why)  # fmt: skip
                self._stuck[kind] = need.want
                del self._book.needs[kind]
                self._save()
            else:
                waiting.add(kind)
        return waiting

    async def _restart_if_running(self, unit: str) -> RestartResult:
        reason = "; ".join(f"{n.kind}: {n.why}" for n in self._book.needs.values())
        state = await self._runner.run(["systemctl", "is-active", unit], timeout_s=self._timeout_s)
        word = state.stdout.strip().splitlines()[0] if state.stdout.strip() else ""
        if not word:
            return self._pending("systemctl", f"cannot ask systemd whether {unit} runs: {state.first_line()}", reason)
        if word not in RUNNING_STATES:
            if UNIT_FILE_KINDS & self._book.needs.keys():  # so its next start reads the new unit
                await self._runner.run(["systemctl", "daemon-reload"], timeout_s=self._timeout_s)
            self._book.needs.clear()
            self._save()
            self._pending_gauge.set(0)
            return RestartResult(False, f"{unit} is {word}: k3s reads its new config when it starts")
        now = self._clock()
        self._book.restarts = [replace(r, at=min(r.at, now)) for r in self._book.restarts]  # clock set back
        decision = should_restart([r.at for r in self._book.restarts], now, self.cfg.min_restart_interval_s,
                                  self.cfg.restart)  # fmt: skip
        if not decision.allowed:
            return self._pending(
                "off" if decision.next_allowed_at is None else "rate", _wait_text(decision, unit), reason
            )
        if self._gate is not None:
            why = await self._gate(list(self._book.needs.values()), now)
            if why is not None:
                return self._pending("gate", why, reason)
        return await self._restart(unit, now, reason)

    async def _restart(self, unit: str, now: float, reason: str) -> RestartResult:
        served = {k: n.want for k, n in self._book.needs.items()}
        self._book.restarts = [*self._book.restarts, Restart(now, unit, reason, served)][-HISTORY_KEEP:]
        try:
            fsutil.save_json(self.path, self._book.to_json())  # before systemctl: a crash loop must see it
        except WriteError as exc:
            self._book.restarts.pop()
            return self._pending("record", f"cannot record it ({exc}); k3s is not restarted without its rate limit",
                                 reason)  # fmt: skip
        if UNIT_FILE_KINDS & served.keys():
            reload = await self._runner.run(["systemctl", "daemon-reload"], timeout_s=self._timeout_s)
            if reload.returncode != 0:
                # the unit-file change waits for its next chance; the restart the others need goes on
                log.warning("systemctl daemon-reload failed (%s): %s wait for the next restart",
                            reload.first_line(), ", ".join(sorted(UNIT_FILE_KINDS & served.keys())))  # fmt: skip
                served = {k: w for k, w in served.items() if k not in UNIT_FILE_KINDS}
        log.info("restarting %s: %s", unit, reason)
        done = await self._runner.run(["systemctl", "--no-block", "try-restart", unit], timeout_s=self._timeout_s)
        if done.returncode != 0:
            return self._pending("systemctl", f"systemctl try-restart {unit} failed: {done.first_line()}", reason)
        self._restarts.inc()
        self._events(k3s_restarted(unit, reason))
        self._book.served.update({k: Served(w, now) for k, w in served.items()})
        self._book.needs = {k: n for k, n in self._book.needs.items() if k not in served}
        self._save()
        self._pending_gauge.set(0)
        self._logged = None
        return RestartResult(True, f"restarted {unit}: {reason}")

    def _pending(self, kind: str, why: str, reason: str) -> RestartResult:
        text = f"restart pending: {why} ({reason})"
        self._pending_gauge.set(1)
        if kind != self._logged:  # once per kind of wait, not every pass
            self._logged = kind
            log.info("%s", text)
        return RestartResult(False, text, pending=True)

    def _outlook(self, why: str) -> RestartResult:
        """What :meth:`need` tells its caller: when the restart will come (no systemctl asked)."""
        unit = self.unit or "k3s"
        times = [r.at for r in self._book.restarts]
        decision = should_restart(times, self._clock(), self.cfg.min_restart_interval_s, self.cfg.restart)
        if decision.allowed:
            return RestartResult(False, f"restart of {unit} queued ({why})", pending=True)
        return RestartResult(False, f"restart pending: {_wait_text(decision, unit)} ({why})", pending=True)

    async def _main_started_at(self, unit: str) -> float | None:
        """When k3s's main process last started (epoch seconds), or None if unknown."""
        result = await self._runner.run(
            ["systemctl", "show", "--property=ExecMainStartTimestampMonotonic", "--value", unit],
            timeout_s=self._timeout_s,
        )
        text = result.stdout.strip()
        if result.returncode != 0 or not text.isdigit() or int(text) == 0:
            return None
        return self._clock() - (self._monotonic() - int(text) / 1e6)

    def _drop_need(self, kind: str) -> None:
        if self._book.needs.pop(kind, None) is not None:
            self._save()

    def _save(self) -> None:
        try:
            fsutil.save_json(self.path, self._book.to_json())
        except WriteError as exc:
            log.warning("cannot save the k3s restart state: %s", exc)


def _wait_text(decision: RestartDecision, unit: str) -> str:
    if decision.next_allowed_at is None:
        return f"{decision.why}; to apply it: systemctl restart {unit}"
    return f"{decision.why}; next at {utc_text(decision.next_allowed_at)}"
