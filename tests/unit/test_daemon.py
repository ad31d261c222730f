"""The daemon runtime: sd_notify on a real socket, watchdog, reload, staged shutdown, run --once.

Processes run ``python -m wgagent`` with a sandbox config (every outward part off, paths in
a temp dir); in-process tests plug fake parts into the daemon through ``parts_factory``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.labkit import free_port
from tests.support import configs
from tests.support.notify import NotifySocket
from tests.support.virtualtime import VirtualTimeLoop
from wgagent import config
from wgagent.daemon import Daemon
from wgagent.notify import Notifier
from wgagent.part import Part, Signal, StreamPart
from wgagent.state import State
from wgagent.wiring import Stages

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    yield sock
    sock.close()


def http_get(port: int, path: str) -> tuple[int, dict[str, object]]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def start_daemon(cfg_path: str, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    full_env.pop("JOURNAL_STREAM", None)
    return subprocess.Popen(
        [sys.executable, "-m", "wgagent", "--config", cfg_path, "run", *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_ready_status_watchdog_rate_and_stopping(tmp_path: Path, notify_socket: NotifySocket) -> None:
    port = free_port()
    cfg = configs.write(str(tmp_path / "c.yaml"), configs.sandbox(str(tmp_path), port))
    proc = start_daemon(cfg, notify_socket.env(watchdog_usec=400_000))  # ping every 0.2 s
    try:
        notify_socket.wait_for("READY=1")
        assert any(m.startswith("STATUS=ok: all 1 checks pass") for m in notify_socket.lines())
        assert http_get(port, "/healthz")[0] == 200
        notify_socket.wait_for("WATCHDOG=1", count=8)
        pings = notify_socket.times("WATCHDOG=1")
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) < 0.4, gaps  # always within WATCHDOG_USEC, or systemd would kill us
        assert min(gaps) > 0.1, gaps  # and not flooding: every WATCHDOG_USEC/2
        proc.send_signal(signal.SIGTERM)
        stop_sent = time.monotonic()
        assert proc.wait(5) == 0
        assert time.monotonic() - stop_sent < 5
        notify_socket.wait_for("STOPPING=1")
    finally:
        proc.kill()
        proc.wait()


def test_without_notify_socket_it_runs_in_the_foreground(tmp_path: Path) -> None:
    port = free_port()
    cfg = configs.write(str(tmp_path / "c.yaml"), configs.sandbox(str(tmp_path), port))
    proc = start_daemon(cfg, {})
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                assert http_get(port, "/healthz")[0] == 200
                break
            except (OSError, ValueError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(5) == 0
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert "health endpoint on http://127.0.0.1:" in err and "Traceback" not in err


def test_sighup_applies_a_valid_file_and_refuses_an_invalid_one(tmp_path: Path, notify_socket: NotifySocket) -> None:
    port, new_port = free_port(), free_port()
    cfg_path = str(tmp_path / "c.yaml")
    configs.write(cfg_path, configs.sandbox(str(tmp_path), port))
    proc = start_daemon(cfg_path, notify_socket.env())
    try:
        notify_socket.wait_for("READY=1")

        # An invalid file: refused, old config stays, the config check fails and says why.
        Path(cfg_path).write_text("public_ip:\n  quorum: many\n")
        t = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        notify_socket.wait_for("RELOADING=1", after=t)
        notify_socket.wait_for("READY=1", after=t)
        code, body = http_get(port, "/healthz")
        assert code == 503
        detail = body["checks"]["config"]["detail"]  # type: ignore[index]
        assert "reload refused" in detail and "public_ip.quorum: 'many' is invalid" in detail
        assert proc.poll() is None

        # A valid file takes effect: here the health endpoint moves to a new port.
        configs.write(cfg_path, configs.sandbox(str(tmp_path), new_port))
        t = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        notify_socket.wait_for("READY=1", after=t)
        code, body = http_get(new_port, "/healthz")
        assert code == 200 and body["checks"]["config"]["ok"] is True  # type: ignore[index]
        with pytest.raises(OSError):
            http_get(port, "/healthz")

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert "reload refused, still running the previous config" in err


def test_run_once_prints_status_json_and_exits_0_when_all_pass(tmp_path: Path) -> None:
    cfg = configs.write(str(tmp_path / "c.yaml"), configs.sandbox(str(tmp_path), free_port()))
    out = subprocess.run(
        [sys.executable, "-m", "wgagent", "--config", cfg, "run", "--once"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["status"] == "ok" and status["node"] == "node1" and "config" in status["checks"]


async def until(cond: Callable[[], object], task: asyncio.Task[int], timeout: float = 10) -> None:
    """Wait for ``cond`` while the daemon task runs; fail fast if it ended or time ran out."""
    deadline = time.monotonic() + timeout
    while not cond():
        if task.done():
            raise AssertionError(f"daemon ended early: {task.result()!r}")
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


# --- in-process: fake parts ---------------------------------------------------------------------


class FakePart(Part):
    def __init__(self, state: State, name: str, ok: bool = True, delay_s: float = 0.0) -> None:
        super().__init__(state)
        self.name = name
        self.checks = (name,)
        self.ok = ok
        self.delay_s = delay_s
        self.passes = 0
        self.finished_at: float | None = None

    async def reconcile(self) -> float | None:
        await asyncio.sleep(self.delay_s)
        self.passes += 1
        self.finished_at = asyncio.get_running_loop().time()
        self.state.set_check(self.name, self.ok, "fake")
        return None


class HangingPart(Part):
    """Hangs and ignores cancellation, like a badly written source, until released."""

    name = "public_ip"
    checks = ("public_ip",)

    def __init__(self, state: State) -> None:
        super().__init__(state)
        self.released = False

    async def reconcile(self) -> None:
        while True:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)
            if self.released:
                raise asyncio.CancelledError


class RecordingNotifier(Notifier):
    """Records each sd_notify message with the clock at the moment the daemon sends it.

    The wire protocol itself is tested on a real socket by the process tests above; here a
    send is recorded synchronously, so no socket delivery delay blurs when it happened.
    ``clock`` is the loop's (virtual) time unless a test needs real time.
    """

    def __init__(self, watchdog_interval_s: float | None = None, clock: Callable[[], float] | None = None) -> None:
        super().__init__()
        self._notifier = None  # whatever the test process's environment says: nothing goes out
        self.watchdog_interval_s = watchdog_interval_s
        self.clock = clock
        self.sent: list[tuple[float, str]] = []

    def _send(self, message: str) -> None:
        now = self.clock() if self.clock is not None else asyncio.get_running_loop().time()
        self.sent.append((now, message))

    def times(self, message: str) -> list[float]:
        return [t for t, m in self.sent if m == message]


class BrokenPart(Part):
    name = "k3s"
    checks = ("k3s_config",)

    async def reconcile(self) -> None:
        raise KeyError("boom")


class DyingStream(StreamPart):
    name = "watch"

    async def reconcile(self) -> None:
        pass

    async def run(self) -> None:
        raise RuntimeError("watch exploded")


def daemon_with(
    parts: Callable[[State], Stages] | None, tmp_path: Path, notifier: Notifier | None = None, **cfg: Any
) -> Daemon:
    health = config.HealthConfig(listen=config.ListenAddress("127.0.0.1", free_port()))
    return Daemon(
        dataclasses.replace(config.Config(), health=health, **cfg),
        str(tmp_path / "none.yaml"),
        notifier=notifier or Notifier(),
        parts_factory=lambda c, i, s: parts(s) if parts else [],
    )


async def test_once_exit_code_follows_the_checks(tmp_path: Path) -> None:
    good = daemon_with(lambda s: [[FakePart(s, "public_ip")], [FakePart(s, "k3s_config")]], tmp_path)
    assert await good.once() == 0
    bad = daemon_with(lambda s: [[FakePart(s, "public_ip", ok=False)]], tmp_path)
    assert await bad.once() == 1


class RetryingPart(FakePart):
    """Asks for its next pass after ``retry_s`` instead of its interval, as a failing part does."""

    interval_s = 3600.0
    retry_s = 5.0

    async def reconcile(self) -> float | None:
        await super().reconcile()
        return self.retry_s


def in_virtual_time(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` on a loop whose clock skips waits (tests/support/virtualtime.py); then,
    as ``asyncio.run`` does, cancel what is left and wait for it before closing the loop."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(_cancel_the_rest())
        loop.close()


async def _cancel_the_rest() -> None:
    left = asyncio.all_tasks() - {asyncio.current_task()}
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)


async def until_virtual(cond: Callable[[], object], task: asyncio.Task[int], timeout_s: float = 86400) -> None:
    """Wait for ``cond`` in virtual time (polling each virtual second); fail if the daemon ended."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        if task.done():
            raise AssertionError(f"daemon ended early: {task.result()!r}")
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} virtual s")
        await asyncio.sleep(1.0)


def test_the_delay_a_pass_returns_is_the_wait_before_the_next(tmp_path: Path) -> None:
    made: list[RetryingPart] = []

    def parts(s: State) -> Stages:
        made[:] = [RetryingPart(s, "public_ip")]
        return [list(made)]

    async def main() -> float:
        daemon = daemon_with(parts, tmp_path)
        started = asyncio.get_running_loop().time()
        task = asyncio.create_task(daemon.serve())
        await until_virtual(lambda: made and made[0].passes >= 3, task)
        elapsed = asyncio.get_running_loop().time() - started
        daemon.stop()
        await task
        return elapsed

    # three passes 5 s apart, never the hour of interval_s
    assert 10 <= in_virtual_time(main) < 3600


async def test_signals_wake_the_parts_the_wiring_connected(tmp_path: Path) -> None:
    leader, follower = FakePart(State(node="n", version="1"), "annotation"), None
    changed: Signal[None] = Signal("test")

    def parts(s: State) -> Stages:
        nonlocal leader, follower
        leader, follower = FakePart(s, "annotation"), FakePart(s, "k3s_config")
        changed.connect(lambda _: follower.wake.set() if follower is not None else None)
        return [[follower], [leader]]

    daemon = daemon_with(parts, tmp_path)
    assert await daemon.once() == 0
    assert follower is not None and not follower.wake.is_set()
    changed.emit(None)
    assert follower.wake.is_set() and not leader.wake.is_set()


async def test_a_part_that_raises_fails_its_checks_and_is_counted(tmp_path: Path) -> None:
    daemon = daemon_with(lambda s: [[BrokenPart(s)]], tmp_path)
    assert await daemon.once() == 1
    check = daemon.state.checks["k3s_config"]
    assert not check.ok and "k3s failed: 'boom'" in check.detail
    assert daemon.state.reconcile_errors.get(part="k3s") == 1


def test_stages_run_in_order_and_ready_follows_the_first_pass(tmp_path: Path) -> None:
    made: list[FakePart] = []
    notifier = RecordingNotifier()

    def parts(s: State) -> Stages:
        made[:] = [FakePart(s, "public_ip", delay_s=10.0), FakePart(s, "k3s_config")]
        return [[made[0]], [made[1]]]

    async def main() -> float:
        daemon = daemon_with(parts, tmp_path, notifier=notifier)
        started = asyncio.get_running_loop().time()
        task = asyncio.create_task(daemon.serve())
        await until_virtual(lambda: notifier.times("READY=1"), task)
        daemon.stop()
        assert await task == 0
        return started

    started = in_virtual_time(main)
    (ready_at,) = notifier.times("READY=1")
    first, second = made
    assert first.finished_at is not None and second.finished_at is not None
    assert started + 10.0 <= first.finished_at <= second.finished_at <= ready_at
    assert ready_at < started + 20.0  # the first pass, not startup_deadline_s, made it ready


def test_ready_comes_by_the_deadline_when_a_part_hangs_and_shutdown_is_bounded(tmp_path: Path) -> None:
    notifier = RecordingNotifier()
    made: list[HangingPart] = []

    def parts(s: State) -> Stages:
        made[:] = [HangingPart(s)]
        return [list(made)]

    async def main() -> tuple[float, float, float]:
        daemon = daemon_with(parts, tmp_path, notifier=notifier, startup_deadline_s=30.0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        task = asyncio.create_task(daemon.serve())
        await until_virtual(lambda: notifier.times("READY=1"), task)
        stop_at = loop.time()
        daemon.stop()
        try:
            assert await task == 0
            stopped_at = loop.time()
        finally:
            for part in made:
                part.released = True  # let its task end before the loop closes
            await asyncio.sleep(0.1)
        return started, stop_at, stopped_at

    started, stop_at, stopped_at = in_virtual_time(main)
    (ready_at,) = notifier.times("READY=1")
    assert 30.0 <= ready_at - started < 31.0  # at the deadline, though the first pass never ended
    assert stopped_at - stop_at < 5.0  # shutdown is bounded although the part ignores cancellation
    (stopping_at,) = notifier.times("STOPPING=1")
    assert stop_at <= stopping_at <= stopped_at


async def test_a_dying_task_is_logged_at_once_and_the_daemon_exits_1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = daemon_with(lambda s: [[DyingStream(s)]], tmp_path)
    assert await asyncio.wait_for(daemon.serve(), 5) == 1
    assert "task watch-stream failed" in caplog.text and "watch exploded" in caplog.text


async def test_a_wedged_loop_stops_the_watchdog(tmp_path: Path) -> None:
    # Real time on purpose: the wedge is a blocking call, and the watchdog must stop with the
    # loop, not tick on in a thread. Each ping is recorded as the daemon sends it, so the
    # check needs no margin for socket delivery.
    notifier = RecordingNotifier(watchdog_interval_s=0.05, clock=time.monotonic)
    daemon = daemon_with(None, tmp_path, notifier=notifier)
    task = asyncio.create_task(daemon.serve())
    await until(lambda: len(notifier.times("WATCHDOG=1")) >= 3, task)
    wedged_at = time.monotonic()
    time.sleep(0.3)  # the wedge itself: a blocking call on the event loop, six ping intervals
    unwedged_at = time.monotonic()
    await until(lambda: [t for t in notifier.times("WATCHDOG=1") if t > unwedged_at], task)  # resumes
    assert [t for t in notifier.times("WATCHDOG=1") if wedged_at < t < unwedged_at] == []
    daemon.stop()
    assert await asyncio.wait_for(task, 5) == 0
