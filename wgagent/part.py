"""What the daemon needs of a part, and the one way parts hear of each other's changes.

A part reconciles one concern (public IP, k3s drop-in, annotation, module, interface,
peer GC, node watch) and reports it through the checks it owns in ``State``::

    class ModulePart(Part):
        name = "wireguard_module"
        checks = ("wireguard_module",)

        async def reconcile(self) -> float | None:
            ...
            self.state.set_check("wireguard_module", ok, detail)
            return None            # next pass after interval_s; or seconds, to retry sooner

The daemon runs ``reconcile()`` once at start (in stages: the k3s drop-in is written after
the public IP is known and before READY=1), then again ``interval_s`` later, or after the
delay the last pass returned (a backoff while something fails), or as soon as ``wake`` is
set. A :class:`StreamPart` (the node watch) also has ``run()``, a long-lived task;
``run --once`` only ever calls ``reconcile()``.

``reconcile()`` handles the errors it expects (and says so in its checks); anything it
raises is a bug: the daemon logs it, counts it, fails the part's checks, and goes on.

How parts notify each other — two mechanisms, no others:

1. :class:`Signal`: a producer announces a change of what it produces (a new public IP,
   Nodes that changed, a k3s restart that is needed). It knows nobody: the composition
   root (``wiring.py``) connects each signal to what should follow.
2. ``Part.wake``: an event that makes the daemon run that part's pass now. Signals are
   almost always connected to a consumer's ``wake.set``.

Data itself is never pushed: a consumer pulls the producer's current value through a
callable the wiring hands it (``public_ip()``, ``cluster()``), so a late or repeated wake
can never deliver stale data.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from wgagent.state import State

log = logging.getLogger(__name__)

T = TypeVar("T")


class Signal(Generic[T]):
    """A producer's announcement, delivered to whoever the wiring connected, in order.

    A failing listener is logged and skipped: the producer never sees its consumers' bugs.

    >>> changed: Signal[str] = Signal("public_ip.adopted")
    >>> changed.connect(lambda value: print("now", value))
    >>> changed.emit("203.0.113.7")
    now 203.0.113.7
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._listeners: list[Callable[[T], None]] = []

    def connect(self, listener: Callable[[T], None]) -> None:
        self._listeners.append(listener)

    def emit(self, value: T) -> None:
        for listener in self._listeners:
            try:
                listener(value)
            except Exception:
                log.exception("signal %s: a listener failed", self.name)


class Part:
    name: str = ""
    checks: tuple[str, ...] = ()
    interval_s: float = 60.0
    """Seconds between passes when the last pass returned None."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.wake = asyncio.Event()

    async def reconcile(self) -> float | None:
        """One pass; the seconds until the next one when not ``interval_s`` (a retry), or None."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release sockets and sessions; called once, before a reload or at shutdown."""


class StreamPart(Part):
    """A part that keeps a stream open (a watch) besides its one-shot ``reconcile()``."""

    async def run(self) -> None:
        raise NotImplementedError
