"""Restarting k3s so that it re-reads its config (and flannel its annotation): rarely, and safely.

    should_restart(history, now, min_interval_s, enabled) -> RestartDecision     pure
    Restarter.request(reason) -> model.RestartResult                             systemctl

A restart happens only when k3s is running (``systemctl is-active``: a stopped k3s reads
the new config when it starts, so boot needs none), and at most once per
``k3s.min_restart_interval_s``. The history lives in ``<state_dir>/k3s-restarts.json`` and
each restart is recorded *before* ``systemctl`` runs, so a crash-looping wgagent cannot
restart k3s over and over; if the record cannot be written, k3s is not restarted.

A request that cannot be served now (rate limit, ``k3s.restart: false``, a failing
``systemctl``) is kept as *pending*, persisted with the history; the k3s part calls
:meth:`Restarter.retry_pending` on every pass, which drops it once k3s has been
(re)started by anyone after the need arose (``ExecMainStartTimestampMonotonic``), and
otherwise asks again. So ``k3s.restart: false`` plus a manual ``systemctl restart k3s``
clears the pending state, and a rate-limited restart happens when it is allowed.

``systemctl`` runs through a :class:`Runner`; unit tests pass a fake, lab tests put a
fake ``systemctl`` first on PATH. ``try-restart --no-block`` queues the job and returns:
k3s can take minutes to start and wgagent's pass must not wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from wgagent import fsutil
from wgagent.config import K3sConfig
from wgagent.errors import WriteError
from wgagent.metrics import Registry
from wgagent.model import RestartResult
from wgagent.proc import Runner, SubprocessRunner
from wgagent.timefmt import utc_text

log = logging.getLogger(__name__)

HISTORY_FILE = "k3s-restarts.json"
HISTORY_KEEP = 20
RUNNING_STATES = frozenset({"active", "activating", "reloading", "refreshing"})
"""``systemctl is-active`` words for a k3s that has read (or is reading) its config."""


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


# --- the persisted history ------------------------------------------------------------------


@dataclass(frozen=True)
class Restart:
    at: float
    unit: str
    reason: str


@dataclass(frozen=True)
class Pending:
    reason: str
    since: float
    """When the latest unmet need arose: a k3s started after this has what was asked for."""


@dataclass
class History:
    restarts: list[Restart] = field(default_factory=list)
    pending: Pending | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "restarts": [{"at": r.at, "unit": r.unit, "reason": r.reason} for r in self.restarts[-HISTORY_KEEP:]],
            "pending": None if self.pending is None else {"reason": self.pending.reason, "since": self.pending.since},
        }

    @classmethod
    def from_json(cls, data: Any) -> History:
        """Whatever parses; a malformed entry is dropped, never fatal."""
        history = cls()
        if not isinstance(data, dict):
            return history
        for item in data.get("restarts") or []:
            if isinstance(item, dict) and _is_time(item.get("at")):
                unit, reason = str(item.get("unit", "")), str(item.get("reason", ""))
                history.restarts.append(Restart(float(item["at"]), unit, reason))
        pending = data.get("pending")
        if isinstance(pending, dict) and _is_time(pending.get("since")):
            history.pending = Pending(str(pending.get("reason", "")), float(pending["since"]))
        return history


def _is_time(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value and value >= 0


# --- the adapter ---------------------------------------------------------------------------


class Restarter:
    """Restarts k3s's unit on request, within the policy; shared by the k3s and annotation parts.

    ``unit`` may be None (no k3s found yet) and be set later by the k3s part.
    """

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
    ) -> None:
        self.cfg = cfg
        self.unit = unit
        self.path = os.path.join(state_dir, HISTORY_FILE)
        self._runner: Runner = runner or SubprocessRunner()
        self._clock = clock
        self._monotonic = monotonic
        self._timeout_s = timeout_s
        self._lock = asyncio.Lock()
        self._restarts = metrics.counter(
            "wgagent_k3s_restarts_total", "k3s restarts wgagent asked systemd for (systemctl try-restart)."
        )
        self._pending_gauge = metrics.gauge(
            "wgagent_k3s_restart_pending", "1 while k3s runs without a restart it needs (rate limit, restarts off)."
        )
        self._logged_pending: str | None = None

    # --- public --------------------------------------------------------------------------

    async def request(self, reason: str) -> RestartResult:
        """Restart k3s for ``reason`` if it is running and the policy allows; else say why not."""
        async with self._lock:
            return await self._request(reason)

    async def defer(self, reason: str) -> RestartResult:
        """Record that k3s needs a restart for ``reason``, without restarting now.

        The annotation part defers: the k3s part's pass, which the daemon runs right after it,
        serves the need together with its own drop-in change (:meth:`retry_pending` or
        :meth:`request`), so k3s restarts once, after both are written. Restarting for the
        annotation alone could restart k3s before its new drop-in is in place.
        """
        async with self._lock:
            history = self._load()
            now = self._clock()
            if history.pending is None or history.pending.reason != reason:
                self._set_pending(history, Pending(reason, now))
            times = [r.at for r in history.restarts]
            decision = should_restart(times, now, self.cfg.min_restart_interval_s, self.cfg.restart)
            unit = self.unit or "k3s"
            if decision.allowed:
                return RestartResult(False, f"restart of {unit} queued ({reason})", pending=True)
            if decision.next_allowed_at is None:
                todo = f"to apply it: systemctl restart {unit}"
            else:
                todo = f"next at {utc_text(decision.next_allowed_at)}"
            return RestartResult(False, f"restart pending: {decision.why}; {todo} ({reason})", pending=True)

    async def retry_pending(self) -> RestartResult | None:
        """Serve a pending request if still needed; None when nothing is pending."""
        async with self._lock:
            history = self._load()
            if history.pending is None:
                self._pending_gauge.set(0)
                return None
            unit = self.unit
            if unit is None:
                return None
            started = await self._main_started_at(unit)
            if started is not None and started > history.pending.since:
                log.info(
                    "%s started at %s, after its restart was needed (%s): nothing left to do",
                    unit,
                    utc_text(started),
                    history.pending.reason,
                )
                self._set_pending(history, None)
                return RestartResult(False, f"{unit} restarted at {utc_text(started)}; no restart needed")
            return await self._request(history.pending.reason)

    def status(self) -> dict[str, Any]:
        """For /status: the last restart and what is pending."""
        history = self._load()
        last = history.restarts[-1] if history.restarts else None
        return {
            "enabled": self.cfg.restart,
            "min_interval_s": self.cfg.min_restart_interval_s,
            "last": None if last is None else {"at": utc_text(last.at), "unit": last.unit, "reason": last.reason},
            "pending": None if history.pending is None else history.pending.reason,
        }

    # --- the steps ------------------------------------------------------------------------

    async def _request(self, reason: str) -> RestartResult:
        unit = self.unit
        if unit is None:
            return RestartResult(False, "no k3s unit known: nothing to restart")
        history = self._load()
        now = self._clock()
        # The same need asked again keeps its time (fewer writes; see retry_pending()).
        old = history.pending
        need = old if old is not None and old.reason == reason else Pending(reason, now)
        state = await self._runner.run(["systemctl", "is-active", unit], timeout_s=self._timeout_s)
        word = state.stdout.strip().splitlines()[0] if state.stdout.strip() else ""
        if not word:
            text = f"restart pending: cannot ask systemd whether {unit} runs: {state.first_line()} ({reason})"
            self._set_pending(history, need)
            self._log_pending("systemctl", text)
            return RestartResult(False, text, pending=True)
        if word not in RUNNING_STATES:
            self._set_pending(history, None)
            return RestartResult(False, f"{unit} is {word}: k3s reads its new config when it starts")
        if any(r.at > now for r in history.restarts):  # the clock was set back: see should_restart()
            history.restarts = [Restart(min(r.at, now), r.unit, r.reason) for r in history.restarts]
        times = [r.at for r in history.restarts]
        decision = should_restart(times, now, self.cfg.min_restart_interval_s, self.cfg.restart)
        if not decision.allowed:
            self._set_pending(history, need)
            if decision.next_allowed_at is None:
                text = f"restart pending: {decision.why}; to apply it: systemctl restart {unit} ({reason})"
            else:
                text = f"restart pending: {decision.why}; next at {utc_text(decision.next_allowed_at)} ({reason})"
            self._log_pending("off" if decision.next_allowed_at is None else "rate", text)
            return RestartResult(False, text, pending=True)
        history.restarts = [*history.restarts, Restart(now, unit, reason)][-HISTORY_KEEP:]
        history.pending = need
        try:
            self._save(history)  # before systemctl: a crash loop must still see this restart
        except WriteError as exc:
            text = f"restart pending: cannot record it ({exc}); k3s is not restarted without its rate limit"
            self._pending_gauge.set(1)
            self._log_pending("record", text)
            return RestartResult(False, text, pending=True)
        log.info("restarting %s: %s", unit, reason)
        done = await self._runner.run(["systemctl", "--no-block", "try-restart", unit], timeout_s=self._timeout_s)
        if done.returncode != 0:
            text = f"restart pending: systemctl try-restart {unit} failed: {done.first_line()} ({reason})"
            log.warning("%s", text)
            self._pending_gauge.set(1)
            return RestartResult(False, text, pending=True)
        self._restarts.inc()
        self._set_pending(history, None)
        return RestartResult(True, f"restarted {unit}: {reason}")

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

    def _set_pending(self, history: History, pending: Pending | None) -> None:
        self._pending_gauge.set(0 if pending is None else 1)
        if pending is None:
            self._logged_pending = None
        if history.pending != pending:
            history.pending = pending
            try:
                self._save(history)
            except WriteError as exc:
                log.warning("cannot save the k3s restart state: %s", exc)

    def _log_pending(self, kind: str, text: str) -> None:
        # once per kind of wait, not every pass
        if kind != self._logged_pending:
            self._logged_pending = kind
            log.info("%s", text)

    def _load(self) -> History:
        return History.from_json(fsutil.load_json(self.path))

    def _save(self, history: History) -> None:
        fsutil.save_json(self.path, history.to_json())
