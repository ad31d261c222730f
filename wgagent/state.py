"""What the daemon knows about itself, in memory: checks, each part's status, metrics.

Parts write here; the health endpoint, ``STATUS=`` and ``run --once`` read snapshots.
Every change bumps ``generation``, so readers can cache what they render from it.

    >>> s = State(node="n1", version="0.1.0", clock=lambda: 0.0)
    >>> s.set_check("config", True, "loaded /etc/wgagent/config.yaml")
    >>> s.health()[0]
    200
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from wgagent.metrics import Registry
from wgagent.timefmt import iso8601

CHECK_NAMES = (
    "config",
    "public_ip",
    "k3s_config",
    "annotation",
    "wireguard_module",
    "wireguard_interface",
    "peer_gc",
    "mesh",
)
"""Every check a part may register, in the order people read them."""


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str
    since: float
    """When ``ok`` last changed (epoch seconds)."""

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, "since": iso8601(self.since)}


class State:
    def __init__(
        self,
        *,
        node: str,
        version: str,
        role: str | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.version = version
        self.role = role
        """The k3s role the daemon was built for (``wiring.decide_identity``), for ``/status``."""
        self.generation = 0
        self._clock = clock
        self._monotonic = monotonic
        self._started = monotonic()
        self._started_at = clock()
        self._checks: dict[str, Check] = {}
        self._parts: dict[str, Any] = {}
        self._listeners: list[Callable[[], None]] = []
        self.metrics = Registry(self._bump)
        build = self.metrics.gauge("wgagent_build_info", "wgagent's version; always 1.", ("version",))
        build.set(1, version=version)
        self.reconcile_total = self.metrics.counter("wgagent_reconcile_total", "Reconcile passes run by all parts.")
        self.reconcile_errors = self.metrics.counter(
            "wgagent_reconcile_errors_total", "Reconcile passes that failed, by part.", ("part",)
        )
        self.metrics.add_collector(self._render_checks)

    # --- writers --------------------------------------------------------------------------

    def set_check(self, name: str, ok: bool, detail: str) -> None:
        """Record a check's result; ``since`` moves only when ok flips."""
        if name not in CHECK_NAMES:
            raise ValueError(f"unknown check {name!r}")
        detail = " ".join(detail.split())  # one line, always
        old = self._checks.get(name)
        if old is not None and old.ok == ok and old.detail == detail:
            return
        since = old.since if old is not None and old.ok == ok else self._clock()
        self._checks[name] = Check(ok, detail, since)
        self._bump()

    def drop_check(self, name: str) -> None:
        """A disabled part's check is absent, not failing."""
        if self._checks.pop(name, None) is not None:
            self._bump()

    def set_part(self, name: str, data: Mapping[str, Any]) -> None:
        """Replace a part's section of ``/status`` (JSON-able data)."""
        if self._parts.get(name) != data:
            self._parts[name] = dict(data)
            self._bump()

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change (it must be cheap and must not raise)."""
        self._listeners.append(listener)

    def _bump(self) -> None:
        self.generation += 1
        for listener in self._listeners:
            listener()

    def _render_checks(self, out: list[str]) -> None:
        out.append("# HELP wgagent_check_ok 1 when the check passes, else 0.")
        out.append("# TYPE wgagent_check_ok gauge")
        for name in CHECK_NAMES:
            if name in self._checks:
                out.append(f'wgagent_check_ok{{check="{name}"}} {int(self._checks[name].ok)}')

    # --- readers --------------------------------------------------------------------------

    @property
    def checks(self) -> Mapping[str, Check]:
        return self._checks

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self._checks.values())

    def health(self) -> tuple[int, dict[str, Any]]:
        """``/healthz``: 200 when every registered check passes, else 503."""
        body = {
            "status": "ok" if self.ok else "fail",
            "checks": {n: self._checks[n].to_json() for n in CHECK_NAMES if n in self._checks},
        }
        return (200 if self.ok else 503), body

    def status(self) -> dict[str, Any]:
        """``/status`` and ``run --once``: everything, as JSON-able data."""
        _, health = self.health()
        return {
            "node": self.node,
            "role": self.role,
            "version": self.version,
            "started_at": iso8601(self._started_at),
            "uptime_s": round(self._monotonic() - self._started, 3),
            **health,
            "parts": dict(sorted(self._parts.items())),
        }

    def summary(self) -> str:
        """One line for systemd's ``STATUS=``: what passes, what does not."""
        if not self._checks:
            return "starting"
        failing = [n for n in CHECK_NAMES if n in self._checks and not self._checks[n].ok]
        total = len(self._checks)
        if not failing:
            return f"ok: all {total} checks pass"
        first = self._checks[failing[0]].detail
        if len(first) > 120:
            first = first[:117] + "..."
        return f"failing {len(failing)}/{total}: {', '.join(failing)} ({failing[0]}: {first})"
