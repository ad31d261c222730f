"""The daemon: the one place where parts are built, wired together and run.

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
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from wgagent import __version__, config, k3s, logs
from wgagent.config import Config
from wgagent.errors import ConfigError, WgAgentError
from wgagent.health import HealthServer
from wgagent.kube import AnnotationPart, NodeWatch
from wgagent.kube import clients as kube_clients
from wgagent.model import ClusterView, PublicAddresses
from wgagent.notify import Notifier
from wgagent.part import Part, StreamPart
from wgagent.proc import Runner
from wgagent.publicip.part import PublicIPPart
from wgagent.publicip.sources import Source
from wgagent.state import State
from wgagent.wireguard.gc import GCPart
from wgagent.wireguard.interface import InterfacePart
from wgagent.wireguard.module import ModulePart

log = logging.getLogger(__name__)

Stages = list[list[Part]]
PartsFactory = Callable[[Config, State], Stages]

_TASK_GRACE_S = 2.5
_CLOSE_GRACE_S = 1.0
_HEALTH_GRACE_S = 1.0


@dataclass(frozen=True)
class Seams:
    """What tests replace in the parts; production uses the defaults. The wiring stays real."""

    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    public_ip_sources: Sequence[Source] | None = None
    """None: the sources the config enables."""
    systemctl: Runner | None = None
    """None: the real ``systemctl``."""
    unit_dirs: Sequence[str] = k3s.UNIT_DIRS


def build_parts(cfg: Config, state: State, seams: Seams = Seams()) -> Stages:
    """The enabled parts, in start-up stages, wired to each other.

    A stage's first passes run concurrently; the next stage starts when they are done:
    observe (public IP, node list, WireGuard module and interface), annotate (the overwrite
    annotation), configure (the k3s drop-in, and the k3s restart either needs), clean (GC).

    Data flows through callables (``model.py``): the adopted public IP to the drop-in and
    the annotation, the node watch's view to the annotation, the interface check and GC.

    k3s is restarted once per change, after both of its inputs are written: a new public IP
    wakes the annotation part, which patches the overwrite and only *defers* a restart it
    needs; its pass wakes the k3s part, which writes the drop-in and then restarts k3s (for
    either reason) through the one Restarter, with its one rate limit.
    """
    observe: list[Part] = []
    annotate: list[Part] = []
    configure: list[Part] = []
    clean: list[Part] = []
    public_ip: Callable[[], PublicAddresses | None] = _unknown
    cluster: Callable[[], ClusterView | None] = _unknown
    ip_part: PublicIPPart | None = None
    k3s_part: k3s.K3sPart | None = None

    if cfg.public_ip.enabled:
        ip_part = PublicIPPart(
            state,
            cfg.public_ip,
            state_dir=cfg.state_dir,
            sources=seams.public_ip_sources,
            clock=seams.clock,
            monotonic=seams.monotonic,
        )
        public_ip = ip_part.adopted
        observe.append(ip_part)

    if cfg.k3s.enabled:
        role = k3s.detect_role(cfg.k3s, unit_dirs=seams.unit_dirs)
        restarter = k3s.Restarter(
            cfg.k3s,
            state_dir=cfg.state_dir,
            unit=role.unit if role else None,
            metrics=state.metrics,
            runner=seams.systemctl,
            clock=seams.clock,
            monotonic=seams.monotonic,
        )
        k3s_part = k3s.K3sPart(
            state, cfg.k3s, public_ip=public_ip, role=role, restarter=restarter, unit_dirs=seams.unit_dirs
        )
        configure.append(k3s_part)

    annotation: AnnotationPart | None = None
    if cfg.kube.enabled:
        own_api, list_api = kube_clients(cfg, state)
        watch = NodeWatch(state, list_api)
        cluster = watch.view
        annotation = AnnotationPart(
            state,
            state.node,
            own_api,
            public_ip=public_ip,
            request_restart=k3s_part.restarter.defer if k3s_part is not None else None,
            cluster=cluster,
        )
        watch.on_change = lambda names: annotation.wake.set() if state.node in names else None
        if k3s_part is not None:
            annotation.followers.append(k3s_part)
        observe.append(watch)
        annotate.append(annotation)

    if ip_part is not None:
        first = annotation or k3s_part  # the annotation wakes the k3s part in turn
        if first is not None:
            ip_part.on_change = first.wake.set

    if cfg.wireguard.enabled:
        # Without the node watch (kube.enabled: false) the cluster is unknown: peer GC then
        # removes only peers without allowed IPs, and no live node is reported unreachable.
        observe.append(ModulePart(state, cfg.wireguard))
        observe.append(InterfacePart(state, cfg.wireguard, cluster))
        if cfg.wireguard.gc.enabled:
            clean.append(GCPart(state, cfg, cluster, clock=seams.clock))

    return [stage for stage in (observe, annotate, configure, clean) if stage]


def _unknown() -> Any:
    return None


def node_name(cfg: Config) -> str:
    """The Node name to act for: wgagent's ``node_name``, else k3s's own, as k3s derives it."""
    return k3s.node_name(cfg).name


class Daemon:
    def __init__(
        self,
        cfg: Config,
        config_path: str,
        *,
        config_required: bool = True,
        notifier: Notifier | None = None,
        parts_factory: PartsFactory = build_parts,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.config_required = config_required
        self.notifier = notifier or Notifier()
        self.state = State(node=node_name(cfg), version=__version__)
        self._factory = parts_factory
        self._parts: list[Part] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._first_pass: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._exit_code = 0
        self._status_pending = False

    def stop(self) -> None:
        """Ask ``serve()`` to shut down (what SIGTERM does)."""
        self._stop.set()

    # --- run --once -------------------------------------------------------------------------

    async def once(self) -> int:
        """One reconcile pass of every enabled part; 0 if every check passes, else 1."""
        self._config_ok()
        stages = self._factory(self.cfg, self.state)
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
        stages = self._factory(self.cfg, self.state)
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
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(part.wake.wait(), part.interval_s)
            await self._reconcile(part)

    async def _reconcile(self, part: Part) -> None:
        part.wake.clear()
        self.state.reconcile_total.inc()
        try:
            await part.reconcile()
            for follower in part.followers:
                follower.wake.set()
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
        if new != self.cfg:
            await self._stop_parts()
            self.cfg = new
            self.state.node = node_name(new)
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


def load_config(cli_path: str | None) -> tuple[Config, str, bool]:
    """The config to start with, where it came from, and whether that file must exist."""
    path, required = config.resolve_path(cli_path)
    return config.load(path, required=required), path, required
