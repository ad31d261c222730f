"""What the daemon needs of a part. Parts import this; only ``daemon.py`` imports parts.

A part reconciles one concern (public IP, k3s drop-in, annotation, module, interface,
peer GC) and reports it through the checks it owns in ``State``::

    class ModuleKeeper(Part):
        name = "wireguard_module"
        checks = ("wireguard_module",)

        async def reconcile(self) -> None:
            ...
            self.state.set_check("wireguard_module", ok, detail)

The daemon runs ``reconcile()`` once at start (in stages, so the k3s drop-in is written
after the public IP is known and before READY=1), then again every ``interval_s`` or as
soon as ``wake`` is set; after each pass it wakes the part's ``followers``. A part with a
``run()`` coroutine (the node watch) gets it run as a long-lived task instead; ``run --once``
only ever calls ``reconcile()``.

``reconcile()`` handles the errors it expects (and says so in its checks); anything it
raises is a bug: the daemon logs it, counts it, fails the part's checks, and goes on.
"""

from __future__ import annotations

import asyncio

from wgagent.state import State


class Part:
    name: str = ""
    checks: tuple[str, ...] = ()
    interval_s: float = 60.0

    def __init__(self, state: State) -> None:
        self.state = state
        self.wake = asyncio.Event()
        self.followers: list[Part] = []
        """Parts the daemon wakes after each pass of this one (set by the daemon's wiring)."""

    async def reconcile(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Release sockets and sessions; called once, before a reload or at shutdown."""


class StreamPart(Part):
    """A part that keeps a stream open (a watch) besides its one-shot ``reconcile()``."""

    async def run(self) -> None:
        raise NotImplementedError
