"""The daemon: runs the parts ``wiring.build_parts`` builds, until told to stop.

Tasks, each named, each under a guard that logs a failure at once:

    health server   aiohttp AppRunner + TCPSite, serving State snapshots
    first-pass      every part's first reconcile, stage by stage; READY=1 when done,
                    or at ``startup_deadline_s`` at the latest
    <part>          one loop per part: reconcile every ``interval_s``, or when woken
    <part>-stream   a StreamPart's long-lived watch
    watchdog        WATCHDOG=1 every WATCHDOG_USEC/2, from the event loop itself, so a
                    wedged loop stops the pings and systemd restarts us

Signals only set events: SIGTERM/SIGINT ``stop``, SIGHUP ``reload``. Shutdown is staged
and bounded (STOPPING=1, cancel part tasks, close parts, stop the health server), all
within 5 s. A reload with a bad file keeps everything running on the old config and fails
the ``config`` check until a good file is loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from wgagent import __version__, config, logs, wiring
from wgagent.config import Config
from wgagent.errors import ConfigError, WgAgentError
from wgagent.health import HealthServer
from wgagent.k3s.role import Identity
from wgagent.notify import Notifier
from wgagent.part import Part, StreamPart
from wgagent.state import State
from wgagent.wiring import Seams, Stages

log = logging.getLogger(__name__)

PartsFactory = Callable[[Config, Identity, State], Stages]
"""``(cfg, identity, state) -> stages``: :func:`wiring.build_parts` unless a test gives its own."""

_TASK_GRACE_S = 2.5
_CLOSE_GRACE_S = 1.0
_HEALTH_GRACE_S = 1.0


class Daemon:
    def __init__(
        self,
        cfg: Config,
        config_path: str,
        *,
        config_required: bool = True,
        notifier: Notifier | None = None,
        seams: Seams | None = None,
        parts_factory: PartsFactory | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.config_required = config_required
        self.notifier = notifier or Notifier()
        self.seams = seams or Seams()
        self.identity = wiring.decide_identity(cfg, self.seams)
        self.state = State(node=self.identity.node, version=__version__, role=self.identity.role_name)
        self._factory = parts_factory or self._build
        self._parts: list[Part] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._first_pass: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._exit_code = 0
        self._status_pending = False
        self._next_delay: dict[int, float | None] = {}
        """The delay each part's first pass asked for, for its loop's first wait."""

    def stop(self) -> None:
        """Ask ``serve()`` to shut down (what SIGTERM does)."""
        self._stop.set()

    def _build(self, cfg: Config, identity: Identity, state: State) -> Stages:
        # k3s turning up after start changes the identity: rebuild as on SIGHUP.
        return wiring.build_parts(cfg, identity, state, self.seams, rebuild=self._reload.set)

    # --- run --once -------------------------------------------------------------------------

    async def once(self) -> int:
        """One reconcile pass of every enabled part; 0 if every check passes, else 1."""
        self._config_ok()
        stages = self._factory(self.cfg, self.identity, self.state)
        self._register(stages)
        try:
            await self._run_stages(stages, include_streams=True)
        finally:
            await self._close_parts()
        return 0 if self.state.ok else 1

    # --- the service --------------------------------------------------------------------------

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT; the process exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        self.state.subscribe(self._state_changed)
        self._config_ok()
        health = HealthServer(self.state, self.cfg.health.listen)
        try:
            await health.start()
        except WgAgentError as exc:
            log.error("%s", exc)
            return 1
        watchdog = None
        if self.notifier.watchdog_interval_s:
            watchdog = self._spawn("watchdog", self._watchdog(self.notifier.watchdog_interval_s))
        self._start_parts()
        ready = self._spawn("ready", self._ready_after_first_pass())
        try:
            while not self._stop.is_set():
                await _first_of(self._stop, self._reload)
                if self._reload.is_set() and not self._stop.is_set():
                    self._reload.clear()
                    health = await self._do_reload(health)
        finally:
            await self._shutdown(health, [t for t in (watchdog, ready) if t is not None])
        return self._exit_code

    async def _shutdown(self, health: HealthServer, extra: Sequence[asyncio.Task[None]]) -> None:
        self.notifier.stopping()
        log.info("stopping")
        for task in extra:
            task.cancel()
        await self._stop_parts()
        try:
            await asyncio.wait_for(health.stop(), _HEALTH_GRACE_S)
        except (TimeoutError, OSError) as exc:
            log.warning("health endpoint did not stop cleanly: %r", exc)
        if extra:
            await asyncio.wait(extra, timeout=0.2)
        log.info("stopped")

    def _start_parts(self) -> None:
        stages = self._factory(self.cfg, self.identity, self.state)
        self._register(stages)
        self._first_pass = self._spawn("first-pass", self._run_stages(stages, include_streams=False))
        for part in self._parts:
            if isinstance(part, StreamPart):
                self._tasks.append(self._spawn(part.name + "-stream", part.run()))
            self._tasks.append(self._spawn(part.name, self._loop(part, self._first_pass)))

    def _register(self, stages: Stages) -> None:
        self._parts = [part for stage in stages for part in stage]
        owned = {"config"} | {c for part in self._parts for c in part.checks}
        for name in list(self.state.checks):
            if name not in owned:
                self.state.drop_check(name)  # a disabled part's check is absent

    async def _stop_parts(self) -> None:
        tasks = [t for t in (*self._tasks, self._first_pass) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_TASK_GRACE_S)
            for task in pending:
                log.warning("task %s did not stop within %.1f s", task.get_name(), _TASK_GRACE_S)
        self._tasks, self._first_pass = [], None
        await self._close_parts()

    async def _close_parts(self) -> None:
        async def close(part: Part) -> None:
            try:
                await part.close()
            except Exception as exc:
                log.warning("%s: close failed: %r", part.name, exc)

        if self._parts:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(close(p) for p in self._parts)), _CLOSE_GRACE_S)
        self._parts = []

    async def _run_stages(self, stages: Stages, *, include_streams: bool) -> None:
        for stage in stages:
            await asyncio.gather(
                *(self._reconcile(p) for p in stage if include_streams or not isinstance(p, StreamPart))
            )

    async def _ready_after_first_pass(self) -> None:
        first = self._first_pass
        deadline = self.cfg.startup_deadline_s
        if first is not None:
            done, _ = await asyncio.wait({first}, timeout=deadline)
            if not done:
                log.warning("first reconcile pass still running after %g s; reporting ready anyway", deadline)
        self.notifier.ready()
        self.notifier.status(self.state.summary())
        log.info("ready: %s", self.state.summary())

    async def _loop(self, part: Part, first_pass: asyncio.Task[None]) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(first_pass)
        delay = self._next_delay.get(id(part))
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(part.wake.wait(), part.interval_s if delay is None else delay)
            delay = await self._reconcile(part)

    async def _reconcile(self, part: Part) -> float | None:
        """One pass; the delay it asked for before the next (None: ``interval_s``)."""
        part.wake.clear()
        self.state.reconcile_total.inc()
        try:
            delay = await part.reconcile()
            self._next_delay[id(part)] = delay
            return delay
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.state.reconcile_errors.inc(part=part.name)
            if isinstance(exc, WgAgentError):
                log.error("%s: %s", part.name, exc)
            else:
                log.exception("%s: reconcile failed", part.name)
            for check in part.checks:
                self.state.set_check(check, False, f"{part.name} failed: {exc}; see the log")
            return None

    async def _watchdog(self, interval_s: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval_s)

    def _spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(self._guard(name, coro), name=name)

    async def _guard(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        """Log a dying task at once; a dead task means the daemon must restart."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("task %s failed; exiting so that systemd restarts wgagent", name)
            self._exit_code = 1
            self._stop.set()

    # --- reload ------------------------------------------------------------------------------

    async def _do_reload(self, health: HealthServer) -> HealthServer:
        self.notifier.reloading()
        log.info("reloading %s", self.config_path)
        try:
            new = config.load(self.config_path, required=self.config_required)
        except ConfigError as exc:
            return self._refuse_reload(health, str(exc))
        if new.health.listen != self.cfg.health.listen:
            replacement = HealthServer(self.state, new.health.listen)
            try:
                await replacement.start()
            except WgAgentError as exc:
                return self._refuse_reload(health, str(exc))
            await health.stop()
            health = replacement
        logs.setup(new.log_level)
        identity = wiring.decide_identity(new, self.seams)
        if new != self.cfg or identity != self.identity:
            await self._stop_parts()
            self.cfg, self.identity = new, identity
            self.state.node, self.state.role = identity.node, identity.role_name
            self._start_parts()
        self._config_ok()
        self.notifier.ready()
        return health

    def _refuse_reload(self, health: HealthServer, why: str) -> HealthServer:
        log.error("reload refused, still running the previous config: %s", why)
        self.state.set_check("config", False, f"reload refused, running the previous config: {why}")
        self.notifier.ready()
        return health

    def _config_ok(self) -> None:
        if os.path.exists(self.config_path):
            self.state.set_check("config", True, f"loaded {self.config_path}")
        else:
            self.state.set_check("config", True, f"no file at {self.config_path}; running on defaults")

    def _state_changed(self) -> None:
        # Coalesce: many changes in one pass make one STATUS= line.
        if not self._status_pending:
            self._status_pending = True
            asyncio.get_running_loop().call_soon(self._send_status)

    def _send_status(self) -> None:
        self._status_pending = False
        self.notifier.status(self.state.summary())


async def _first_of(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
