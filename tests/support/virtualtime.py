"""An asyncio event loop whose clock skips the waits: a simulated hour or day in seconds.

    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(main())    # asyncio.sleep(86400) inside returns at once
    finally:
        loop.close()

Virtual time is real monotonic time plus an offset. Whenever the loop would block
waiting for its next timer, it first waits ``quiet_s`` of real time for real I/O (a
socket on loopback, served by the same loop, is ready within microseconds); if nothing
arrives, it moves the offset forward to that timer instead of sleeping. So timers,
``asyncio.sleep``, ``wait_for`` timeouts, aiohttp's timeouts, backoff waits and part
intervals all run on virtual time, in their real order, while real sockets on loopback
still carry real requests. Nothing is patched: code under test just uses the loop.

Wall-clock readers (``time.time``) are not affected; give parts ``wall(loop)`` as their
clock. Executor jobs (``getaddrinfo`` of an IP literal) run inline, so no thread can
finish "late" in virtual time. While a subprocess started through the loop runs (a fake
``systemctl`` on PATH), time is real: nothing is skipped until it has exited.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import selectors
import time
from collections.abc import Callable
from typing import Any

WALL_EPOCH = 1_780_000_000.0
"""Wall-clock time at virtual time 0 (a fixed date in 2026), for clocks derived from the loop."""


class _InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


class _SkippingSelector(selectors.DefaultSelector):
    def __init__(self, loop: VirtualTimeLoop, quiet_s: float) -> None:
        super().__init__()
        self._loop = loop
        self._quiet_s = quiet_s

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= self._quiet_s:
            return super().select(timeout)
        if self._loop.children_running():  # its exit arrives through the self-pipe, in real time
            return super().select(0.05 if timeout is None else min(timeout, 0.05))
        events = super().select(self._quiet_s)
        if events or timeout is None:
            return events or super().select(None)
        self._loop.skip(timeout - self._quiet_s)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, quiet_s: float = 0.0002) -> None:
        self._offset = 0.0
        self._t0 = time.monotonic()
        self._children: set[asyncio.SubprocessTransport] = set()
        super().__init__(_SkippingSelector(self, quiet_s))
        self.set_default_executor(_InlineExecutor(max_workers=1))

    async def _make_subprocess_transport(self, *args: Any, **kwargs: Any) -> Any:
        transport = await super()._make_subprocess_transport(*args, **kwargs)  # type: ignore[misc]
        self._children.add(transport)
        return transport

    def children_running(self) -> bool:
        self._children = {t for t in self._children if t.get_returncode() is None}
        return bool(self._children)

    def time(self) -> float:
        return time.monotonic() - self._t0 + self._offset

    def skip(self, seconds: float) -> None:
        if seconds > 0:
            self._offset += seconds


def wall(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """A wall clock (epoch seconds) that follows ``loop``'s virtual time."""
    return lambda: WALL_EPOCH + loop.time()
