"""The local health endpoint, served from memory: no I/O per request.

    GET /livez    200 "ok" while the event loop runs
    GET /healthz  200 when every enabled check passes, else 503; JSON
    GET /status   the full state as JSON
    GET /metrics  Prometheus text exposition

HEAD works where GET does; any other method is 405, any other path 404, and malformed
or oversized requests are refused with a 4xx by aiohttp's parser before reaching us.
Bodies of /healthz and /metrics are rendered once per state change (``State.generation``),
so a scrape storm costs only aiohttp's own request handling.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

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


def make_app(state: State) -> web.Application:
    def render_health() -> tuple[int, bytes]:
        code, body = state.health()
        return code, _dumps(body)

    health = _Cached(state, render_health)
    metrics = _Cached(state, lambda: (200, state.metrics.render().encode()))

    async def livez(request: web.Request) -> web.Response:
        return web.Response(body=b"ok\n", content_type="text/plain")

    async def healthz(request: web.Request) -> web.Response:
        code, body = health.get()
        return web.Response(body=body, status=code, content_type=JSON)

    async def status(request: web.Request) -> web.Response:
        return web.Response(body=_dumps(state.status()), content_type=JSON)

    async def metrics_handler(request: web.Request) -> web.Response:
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
        self._runner = web.AppRunner(
            make_app(state), handle_signals=False, access_log=None, keepalive_timeout=15, **_RUNNER_SHUTDOWN
        )

    async def start(self) -> None:
        """Bind, or raise WgAgentError with a message naming the address and the fix."""
        if not self.listen.is_loopback:
            log.warning(
                "health endpoint listens on %s, not loopback: anyone who can reach it sees the node's state",
                self.listen,
            )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.listen.host, self.listen.port, reuse_address=True, **_SITE_SHUTDOWN)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise WgAgentError(
                f"cannot serve the health endpoint on {self.listen}: {exc.strerror or exc}; "
                "set health.listen to a free address"
            ) from exc
        log.info("health endpoint on %s", self.listen.url)

    async def stop(self) -> None:
        await self._runner.cleanup()
