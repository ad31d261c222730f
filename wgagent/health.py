"""The local health endpoint, served from memory: no I/O per request.

    GET /livez    200 "ok" while the event loop runs
    GET /healthz  200 when every enabled check passes, else 503; JSON
    GET /status   the full state as JSON
    GET /metrics  Prometheus text exposition

HEAD works where GET does; any other method is 405, any other path 404, and malformed
or oversized requests are refused with a 4xx by aiohttp's parser before reaching us.
aiohttp has no deadline for reading a request, so :class:`ConnectionGuard` gives one: a
connection that has not sent a request for ``REQUEST_DEADLINE_S`` (a silent or
trickling client) is closed, and beyond ``MAX_CONNECTIONS`` the stalest are closed first,
so slow clients cannot hold the daemon's file descriptors.
Bodies of /healthz and /metrics are rendered once per state change (``State.generation``),
so a scrape storm costs only aiohttp's own request handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from wgagent.config import ListenAddress
from wgagent.errors import WgAgentError
from wgagent.state import State

log = logging.getLogger(__name__)

JSON = "application/json"
PROMETHEUS = "text/plain; version=0.0.4"


class _Cached:
    """A rendered body, recomputed only when the state's generation moved."""

    def __init__(self, state: State, render: Callable[[], tuple[int, bytes]]) -> None:
        self._state = state
        self._render = render
        self._generation = -1
        self._value: tuple[int, bytes] = (0, b"")

    def get(self) -> tuple[int, bytes]:
        if self._generation != self._state.generation:
            self._value = self._render()
            self._generation = self._state.generation
        return self._value


def _dumps(value: object) -> bytes:
    return json.dumps(value, indent=1).encode() + b"\n"


REQUEST_DEADLINE_S = 20.0
"""How long a connection may go without a request reaching a handler: from its accept, or
from its last request. Longer than aiohttp's keep-alive (15 s), which closes connections
idle after an answer first; a request here is answered from memory at once, so only a
client that is slow or silent in sending one hits it."""
MAX_CONNECTIONS = 256
"""Open connections at most; more, and the stalest are closed (a scrape storm of wrk -c100
stays under it). The unit's file descriptor limit is 1,024 (systemd's default)."""
GUARD_TICK_S = 1.0


class ConnectionGuard:
    """Closes the connections of slow clients (see the module doc). ``sweep(now)`` is the
    step, called every ``GUARD_TICK_S`` by ``run()`` while connections are open (an idle
    daemon does not wake for it); ``seen`` marks each request, ``opened`` each connection."""

    def __init__(
        self,
        connections: Callable[[], list[RequestHandler]],
        *,
        deadline_s: float = REQUEST_DEADLINE_S,
        max_connections: int = MAX_CONNECTIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connections = connections
        self.deadline_s = deadline_s
        self.max_connections = max_connections
        self.clock = clock
        self._active: dict[RequestHandler, float] = {}
        self._wake = asyncio.Event()
        self.closed = 0

    def seen(self, request: web.Request) -> None:
        """A request arrived on this connection: its deadline starts again (each handler calls
        this first; cheaper than a middleware, which costs a tenth of the throughput)."""
        if request.protocol is not None:
            self._active[request.protocol] = self.clock()

    def sweep(self, now: float | None = None) -> int:
        """Close what is over the deadline or the cap; how many were closed."""
        now = self.clock() if now is None else now
        open_now = self._connections()
        active = {h: self._active.get(h, now) for h in open_now}  # first seen: now
        self._active = active
        doomed = [h for h, t in active.items() if now - t > self.deadline_s]
        if len(active) - len(doomed) > self.max_connections:
            alive = sorted((t, i, h) for i, (h, t) in enumerate(active.items()) if now - t <= self.deadline_s)
            doomed += [h for _, _, h in alive[: len(alive) - self.max_connections]]
        for handler in doomed:
            handler.force_close()
            del active[handler]
        if doomed:
            self.closed += len(doomed)
            log.debug("health endpoint: closed %d slow or surplus connection(s)", len(doomed))
        return len(doomed)

    def opened(self) -> None:
        """A connection was accepted: wake ``run()`` (the server's hook calls this)."""
        self._wake.set()

    async def run(self) -> None:
        """Sweep every ``GUARD_TICK_S`` while connections are open; sleep while none are."""
        while True:
            self._wake.clear()
            if not self._connections():
                await self._wake.wait()
            await asyncio.sleep(GUARD_TICK_S)
            try:
                self.sweep()
            except Exception as exc:  # a failed sweep must not take the endpoint down
                log.error("health endpoint: checking connections failed: %s", exc)


def _nothing(request: web.Request) -> None:
    pass


def make_app(state: State, seen: Callable[[web.Request], None] = _nothing) -> web.Application:
    """The four routes; ``seen(request)`` is called first by each (the connection guard)."""

    def render_health() -> tuple[int, bytes]:
        code, body = state.health()
        return code, _dumps(body)

    health = _Cached(state, render_health)
    metrics = _Cached(state, lambda: (200, state.metrics.render().encode()))

    async def livez(request: web.Request) -> web.Response:
        seen(request)
        return web.Response(body=b"ok\n", content_type="text/plain")

    async def healthz(request: web.Request) -> web.Response:
        seen(request)
        code, body = health.get()
        return web.Response(body=body, status=code, content_type=JSON)

    async def status(request: web.Request) -> web.Response:
        seen(request)
        return web.Response(body=_dumps(state.status()), content_type=JSON)

    async def metrics_handler(request: web.Request) -> web.Response:
        seen(request)
        _, body = metrics.get()
        return web.Response(body=body, headers={"Content-Type": PROMETHEUS})

    app = web.Application()
    app.router.add_get("/livez", livez)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics_handler)
    return app


# Open connections get this long to finish at shutdown. aiohttp 3.8 (Debian 12) takes the
# timeout on the site, 3.9 and later on the runner.
_SHUTDOWN_S = 0.5
_RUNNER_SHUTDOWN: dict[str, Any]
_SITE_SHUTDOWN: dict[str, Any]
if "shutdown_timeout" in inspect.signature(web.BaseRunner.__init__).parameters:
    _RUNNER_SHUTDOWN, _SITE_SHUTDOWN = {"shutdown_timeout": _SHUTDOWN_S}, {}
else:  # pragma: no cover - depends on the aiohttp version
    _RUNNER_SHUTDOWN, _SITE_SHUTDOWN = {}, {"shutdown_timeout": _SHUTDOWN_S}


class HealthServer:
    """``AppRunner(handle_signals=False)`` + ``TCPSite``: the daemon owns the signals."""

    def __init__(self, state: State, listen: ListenAddress) -> None:
        self.listen = listen
        self.guard = ConnectionGuard(self._connections)
        self._runner = web.AppRunner(
            make_app(state, self.guard.seen),
            handle_signals=False,
            access_log=None,
            keepalive_timeout=15,
            **_RUNNER_SHUTDOWN,
        )
        self._guard_task: asyncio.Task[None] | None = None

    def _hook_connections(self) -> None:
        """Tell the guard of each accepted connection: aiohttp's Server records each one in
        ``connection_made(handler, transport)`` (3.8 to 3.14), wrapped here on the instance."""
        server = self._runner.server
        assert server is not None  # set up
        record = server.connection_made

        def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
            record(handler, transport)
            self.guard.opened()

        server.connection_made = connection_made  # type: ignore[method-assign]

    def _connections(self) -> list[RequestHandler]:
        server = self._runner.server
        return server.connections if server is not None else []

    async def start(self) -> None:
        """Bind, or raise WgAgentError with a message naming the address and the fix."""
        if not self.listen.is_loopback:
            log.warning(
                "health endpoint listens on %s, not loopback: anyone who can reach it sees the node's state",
                self.listen,
            )
        await self._runner.setup()
        self._hook_connections()
        site = web.TCPSite(self._runner, self.listen.host, self.listen.port, reuse_address=True, **_SITE_SHUTDOWN)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise WgAgentError(
                f"cannot serve the health endpoint on {self.listen}: {exc.strerror or exc}; "
                "set health.listen to a free address"
            ) from exc
        self._guard_task = asyncio.create_task(self.guard.run(), name="health-guard")
        log.info("health endpoint on %s", self.listen.url)

    async def stop(self) -> None:
        if self._guard_task is not None:
            self._guard_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._guard_task
        await self._runner.cleanup()
