"""The restart policy (pure, fake clock) and the Restarter over a fake systemd."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from wgagent.config import K3sConfig
from wgagent.k3s.restart import Restarter, should_restart
from wgagent.metrics import Registry
from wgagent.model import RestartResult
from wgagent.proc import CommandResult

# --- should_restart ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("history", "now", "enabled", "allowed", "next_at"),
    [
        pytest.param([], 1000.0, True, True, None, id="first-restart"),
        pytest.param([1000.0], 1000.0, True, False, 1600.0, id="just-restarted"),
        pytest.param([1000.0], 1599.9, True, False, 1600.0, id="almost-allowed"),
        pytest.param([1000.0], 1600.0, True, True, None, id="interval-passed"),
        pytest.param([400.0, 1000.0, 700.0], 1300.0, True, False, 1600.0, id="latest-counts-not-last-listed"),
        pytest.param([5000.0], 1000.0, True, False, 1600.0, id="clock-set-back-waits-one-interval"),
        pytest.param([], 1000.0, False, False, None, id="restarts-off"),
    ],
)
def test_should_restart(history: list[float], now: float, enabled: bool, allowed: bool, next_at: float | None) -> None:
    decision = should_restart(history, now, 600.0, enabled)
    assert (decision.allowed, decision.next_allowed_at) == (allowed, next_at)
    if not enabled:
        assert decision.why == "restarts are off (k3s.restart: false)"


def test_zero_interval_always_allows() -> None:
    assert should_restart([1000.0], 1000.0, 0.0, True).allowed


# --- fakes ------------------------------------------------------------------------------------


class Clock:
    """Wall and monotonic time that tests move by hand; the machine booted 1000 s ago."""

    def __init__(self, wall: float = 1_800_000_000.0) -> None:
        self.mono = 1000.0
        self.boot = wall - self.mono

    def wall(self) -> float:
        return self.boot + self.mono

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.mono += seconds


class FakeSystemd:
    """Answers the systemctl calls the Restarter makes, for one unit; records them."""

    def __init__(self, clock: Clock, active: str = "active") -> None:
        self.clock = clock
        self.active = active
        self.calls: list[list[str]] = []
        self.restarts = 0
        self.started_mono: float | None = 1.0 if active == "active" else None
        self.fail_restart: str | None = None
        self.broken: str | None = None
        self.die_on_restart = False
        self.reloads = 0

    async def run(self, argv: Sequence[str], *, timeout_s: float) -> CommandResult:
        argv = list(argv)
        self.calls.append(argv)
        assert argv[0] == "systemctl" and timeout_s > 0
        if self.broken:
            return CommandResult(1, "", self.broken)
        if argv[1] == "is-active":
            return CommandResult(0 if self.active == "active" else 3, self.active + "\n", "")
        if argv[1:3] == ["--no-block", "try-restart"]:
            if self.die_on_restart:  # wgagent killed while systemctl runs
                raise KeyboardInterrupt
            if self.fail_restart:
                return CommandResult(1, "", self.fail_restart + "\n")
            self.restarts += 1
            self.start()
            return CommandResult(0, "", "")
        if argv[1] == "daemon-reload":
            self.reloads += 1
            return CommandResult(0, "", "")
        if argv[1] == "show":
            assert argv[2:4] == ["--property=ExecMainStartTimestampMonotonic", "--value"]
            usec = 0 if self.started_mono is None else int(self.started_mono * 1e6)
            return CommandResult(0, f"{usec}\n", "")
        raise AssertionError(f"unexpected systemctl call {argv}")

    def start(self) -> None:
        """k3s (re)started now, by wgagent or by someone else."""
        self.active = "active"
        self.started_mono = self.clock.monotonic()

    @property
    def restart_calls(self) -> list[list[str]]:
        return [c for c in self.calls if "try-restart" in c]


def make(
    tmp_path: Path, clock: Clock, systemd: FakeSystemd, registry: Registry | None = None, **cfg: object
) -> Restarter:
    return Restarter(
        K3sConfig(**cfg),  # type: ignore[arg-type]
        state_dir=str(tmp_path / "state"),
        unit="k3s.service",
        metrics=registry or Registry(),
        runner=systemd,
        clock=clock.wall,
        monotonic=clock.monotonic,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


# --- Restarter --------------------------------------------------------------------------------


async def request(restarter: Restarter, why: str, kind: str = "config") -> RestartResult:
    """What a part's pass does: register the need, then the k3s part serves it."""
    restarter.need(kind, why, why)
    result = await restarter.serve()
    assert result is not None
    return result


async def test_k3s_not_running_needs_no_restart(tmp_path: Path, clock: Clock) -> None:
    systemd = FakeSystemd(clock, active="inactive")
    restarter = make(tmp_path, clock, systemd)
    result = await request(restarter, "drop-in changed")
    assert not result.restarted and not result.pending
    assert result.detail == "k3s.service is inactive: k3s reads its new config when it starts"
    assert systemd.restart_calls == [] and restarter.open_needs == frozenset()


async def test_restart_when_running_is_counted_logged_and_recorded(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    registry = Registry()
    systemd = FakeSystemd(clock)
    restarter = make(tmp_path, clock, systemd, registry)
    result = await request(restarter, "50-wgagent.yaml changed: node-external-ip a -> b")
    assert result.restarted and not result.pending
    assert result.detail == "restarted k3s.service: config: 50-wgagent.yaml changed: node-external-ip a -> b"
    assert systemd.restart_calls == [["systemctl", "--no-block", "try-restart", "k3s.service"]]
    assert "restarting k3s.service: config: 50-wgagent.yaml changed" in caplog.text
    assert "wgagent_k3s_restarts_total 1" in registry.render()
    saved = json.loads((tmp_path / "state" / "k3s-restarts.json").read_text())
    assert saved["needs"] == {}
    assert [(r["at"], r["unit"], list(r["served"])) for r in saved["restarts"]] == [
        (clock.wall(), "k3s.service", ["config"])
    ]
    assert restarter.status()["last"]["for"] == ["config"]


async def test_one_restart_serves_every_kind_of_need(tmp_path: Path, clock: Clock) -> None:
    systemd = FakeSystemd(clock)
    restarter = make(tmp_path, clock, systemd)
    queued = restarter.need("overwrite", "203.0.113.7", "flannel re-reads public-ip-overwrite")
    assert queued.pending and queued.detail == "restart of k3s.service queued (flannel re-reads public-ip-overwrite)"
    assert systemd.calls == []  # nothing asked of systemd yet
    restarter.need("config", "node-external-ip=203.0.113.7", "50-wgagent.yaml changed")
    result = await restarter.serve()
    assert result is not None and result.restarted
    assert result.detail == (
        "restarted k3s.service: overwrite: flannel re-reads public-ip-overwrite; config: 50-wgagent.yaml changed"
    )
    assert await restarter.serve() is None and len(systemd.restart_calls) == 1


async def test_a_passenger_never_restarts_alone_and_rides_with_the_next_after_a_daemon_reload(
    tmp_path: Path, clock: Clock
) -> None:
    systemd = FakeSystemd(clock)
    restarter = make(tmp_path, clock, systemd)
    restarter.need("wireguard-key", "/etc/systemd/system/k3s.service.d/50-x.conf", "key drop-in", alone=False)
    for _ in range(3):
        clock.advance(3600)
        assert await restarter.serve() is None
    assert systemd.restart_calls == [] and systemd.reloads == 0
    result = await request(restarter, "drop-in changed")
    assert result.restarted and systemd.reloads == 1
    assert restarter.open_needs == frozenset()


async def test_a_passenger_is_met_by_any_start_of_k3s(tmp_path: Path, clock: Clock) -> None:
    systemd = FakeSystemd(clock)
    restarter = make(tmp_path, clock, systemd)
    restarter.need("wireguard-key", "x", "key drop-in", alone=False)
    clock.advance(10)
    systemd.start()  # a reboot, or the admin
    clock.advance(10)
    result = await restarter.serve()
    assert result is not None and result.detail.startswith("k3s.service restarted at ")
    assert restarter.open_needs == frozenset() and systemd.restart_calls == []


async def test_a_restart_that_did_not_help_is_never_repeated(tmp_path: Path, clock: Clock) -> None:
    systemd = FakeSystemd(clock)
    restarter = make(tmp_path, clock, systemd, min_restart_interval_s=0)
    assert (await request(restarter, "203.0.113.7", kind="overwrite")).restarted
    clock.advance(30)  # flannel may not have published yet: wait, do not restart again
    waiting = restarter.need("overwrite", "203.0.113.7", "again")
    assert "waiting for it" in waiting.detail
    result = await restarter.serve()
    assert result is not None and result.detail == "waiting for the last k3s restart to take effect"
    clock.advance(300)  # settled: the same need again is stuck
    restarter.need("overwrite", "203.0.113.7", "again")
    assert await restarter.serve() is None
    assert restarter.stuck == {"overwrite": "203.0.113.7"}
    stuck = restarter.need("overwrite", "203.0.113.7", "again")
    assert not stuck.pending and stuck.detail.startswith("a k3s restart for this did not help; not restarting again")
    assert len(systemd.restart_calls) == 1
    # another address is another need: served again
    assert (await request(restarter, "203.0.113.8", kind="overwrite")).restarted
    assert restarter.stuck == {}


def test_an_unknown_kind_is_a_bug(tmp_path: Path, clock: Clock) -> None:
    with pytest.raises(ValueError, match="unknown restart kind"):
        make(tmp_path, clock, FakeSystemd(clock)).need("whim", "x", "y")


async def test_rate_limit_then_the_pending_restart_happens_when_allowed(tmp_path: Path, clock: Clock) -> None:
    registry = Registry()
    systemd = FakeSystemd(clock)
    restarter = make(tmp_path, clock, systemd, registry, min_restart_interval_s=600.0)
    assert (await request(restarter, "first")).restarted
    clock.advance(100)
    second = await request(restarter, "second")
    assert not second.restarted and second.pending
    assert second.detail.startswith("restart pending: rate limit: restarted 100 s ago, at most once per 600 s; next")
    assert second.detail.endswith("(config: second)")
    assert "wgagent_k3s_restart_pending 1" in registry.render()
    assert restarter.status()["needs"]["config"]["want"] == "second"
    clock.advance(499)
    retried = await restarter.serve()
    assert retried is not None and retried.pending and len(systemd.restart_calls) == 1
    clock.advance(1)
    retried = await restarter.serve()
    assert retried is not None and retried.restarted and retried.detail == "restarted k3s.service: config: second"
    assert len(systemd.restart_calls) == 2
    assert await restarter.serve() is None
    assert "wgagent_k3s_restart_pending 0" in registry.render()
    assert "wgagent_k3s_restarts_total 2" in registry.render()


async def test_history_survives_a_restart_of_wgagent_so_a_crash_loop_cannot_restart_k3s(
    tmp_path: Path, clock: Clock
) -> None:
    systemd = FakeSystemd(clock)
    for attempt in range(5):  # wgagent starting over and over, each time asking again
        result = await request(make(tmp_path, clock, systemd), f"drop-in changed {attempt}")
        assert result.restarted == (attempt == 0)
        clock.advance(30)
    assert len(systemd.restart_calls) == 1
    # and the pending need is picked up by a fresh wgagent once allowed
    clock.advance(600)
    picked_up = await make(tmp_path, clock, systemd).serve()
    assert picked_up is not None and picked_up.restarted
    assert len(systemd.restart_calls) == 2


async def test_restart_is_recorded_before_systemctl_runs(tmp_path: Path, clock: Clock) -> None:
    systemd = FakeSystemd(clock)
    systemd.die_on_restart = True
    with pytest.raises(KeyboardInterrupt):
        await request(make(tmp_path, clock, systemd), "x")
    systemd.die_on_restart = False
    clock.advance(5)
    again = await request(make(tmp_path, clock, systemd), "y")  # the next wgagent: rate-limited
    assert again.pending and "rate limit: restarted 5 s ago" in again.detail
    assert len(systemd.restart_calls) == 1


async def test_restarts_off_leaves_it_pending_until_someone_restarts_k3s(tmp_path: Path, clock: Clock) -> None:
    systemd = FakeSystemd(clock)
    restarter = make(tmp_path, clock, systemd, restart=False)
    result = await request(restarter, "drop-in changed")
    assert not result.restarted and result.pending
    assert result.detail == (
        "restart pending: restarts are off (k3s.restart: false); to apply it: systemctl restart k3s.service "
        "(config: drop-in changed)"
    )
    clock.advance(3600)
    again = await restarter.serve()
    assert again is not None and again.pending
    assert systemd.restart_calls == []
    clock.advance(10)
    systemd.start()  # the admin runs systemctl restart k3s
    clock.advance(10)
    cleared = await restarter.serve()
    assert cleared is not None and not cleared.pending and not cleared.restarted
    assert cleared.detail.startswith("k3s.service restarted at ")
    assert await restarter.serve() is None
    assert systemd.restart_calls == []


async def test_a_manual_restart_also_satisfies_a_rate_limited_request(tmp_path: Path, clock: Clock) -> None:
    systemd = FakeSystemd(clock)
    restarter = make(tmp_path, clock, systemd)
    assert (await request(restarter, "one")).restarted
    clock.advance(60)
    assert (await request(restarter, "two")).pending
    clock.advance(60)
    systemd.start()
    clock.advance(1000)
    result = await restarter.serve()
    assert result is not None and not result.pending
    assert len(systemd.restart_calls) == 1


async def test_k3s_stopped_meanwhile_drops_the_pending_request(tmp_path: Path, clock: Clock) -> None:
    systemd = FakeSystemd(clock)
    restarter = make(tmp_path, clock, systemd, restart=False)
    assert (await request(restarter, "x")).pending
    systemd.active, systemd.started_mono = "inactive", None
    result = await restarter.serve()
    assert result is not None and not result.pending and "inactive" in result.detail
    assert await restarter.serve() is None


async def test_failed_systemctl_is_pending_and_still_rate_limited(tmp_path: Path, clock: Clock) -> None:
    systemd = FakeSystemd(clock)
    systemd.fail_restart = "Failed to restart k3s.service: Access denied"
    restarter = make(tmp_path, clock, systemd)
    result = await request(restarter, "x")
    assert not result.restarted and result.pending
    assert "systemctl try-restart k3s.service failed: Failed to restart k3s.service: Access denied" in result.detail
    systemd.fail_restart = None
    clock.advance(10)
    assert (await restarter.serve()).pending  # type: ignore[union-attr]
    assert len(systemd.restart_calls) == 1
    clock.advance(600)
    assert (await restarter.serve()).restarted  # type: ignore[union-attr]


async def test_systemd_unreachable_keeps_it_pending(tmp_path: Path, clock: Clock) -> None:
    systemd = FakeSystemd(clock)
    systemd.broken = "System has not been booted with systemd as init system (PID 1). Can't operate."
    result = await request(make(tmp_path, clock, systemd), "x")
    assert result.pending and "cannot ask systemd whether k3s.service runs: System has not been booted" in result.detail


async def test_no_restart_when_the_history_cannot_be_recorded(tmp_path: Path, clock: Clock) -> None:
    (tmp_path / "state").write_text("a file where the state dir should be")
    systemd = FakeSystemd(clock)
    result = await request(make(tmp_path, clock, systemd), "x")
    assert result.pending and "cannot record it" in result.detail
    assert systemd.restart_calls == []


async def test_corrupt_history_file_is_not_fatal(tmp_path: Path, clock: Clock) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "k3s-restarts.json").write_text('{"restarts": [{"at": "soon"}, 7, {"at": -1}], "pending": 3')
    systemd = FakeSystemd(clock)
    assert (await request(make(tmp_path, clock, systemd), "x")).restarted


async def test_a_version_1_file_keeps_its_rate_limit_and_its_pending_request(tmp_path: Path, clock: Clock) -> None:
    (tmp_path / "state").mkdir()
    old = {"restarts": [{"at": clock.wall() - 60, "unit": "k3s.service", "reason": "r"}],
           "pending": {"reason": "50-wgagent.yaml changed", "since": clock.wall() - 30}}  # fmt: skip
    (tmp_path / "state" / "k3s-restarts.json").write_text(json.dumps(old))
    systemd = FakeSystemd(clock)
    restarter = make(tmp_path, clock, systemd)
    assert restarter.open_needs == frozenset({"config"})
    assert (await restarter.serve()).pending  # type: ignore[union-attr]
    clock.advance(600)
    assert (await restarter.serve()).restarted  # type: ignore[union-attr]


async def test_restart_times_after_now_are_pulled_back(tmp_path: Path, clock: Clock) -> None:
    systemd = FakeSystemd(clock)
    (tmp_path / "state").mkdir()
    future = clock.wall() + 86400 * 365
    (tmp_path / "state" / "k3s-restarts.json").write_text(
        json.dumps({"restarts": [{"at": future, "unit": "k3s.service", "reason": "r"}], "needs": {}})
    )
    restarter = make(tmp_path, clock, systemd)
    assert (await request(restarter, "x")).pending
    clock.advance(600)  # one interval, not a year
    assert (await restarter.serve()).restarted  # type: ignore[union-attr]


async def test_no_unit_known(tmp_path: Path, clock: Clock) -> None:
    systemd = FakeSystemd(clock)
    restarter = make(tmp_path, clock, systemd)
    restarter.unit = None
    result = await request(restarter, "x")
    assert not result.restarted and not result.pending
    assert systemd.calls == []


async def test_pending_log_line_is_written_once_per_kind(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    systemd = FakeSystemd(clock)
    restarter = make(tmp_path, clock, systemd, restart=False)
    for _ in range(5):
        await request(restarter, "x")
        clock.advance(60)
    assert caplog.text.count("restart pending: restarts are off") == 1


async def test_a_config_that_went_and_came_back_before_the_next_restart_needs_none(
    tmp_path: Path, clock: Clock
) -> None:
    systemd = FakeSystemd(clock)
    restarter = make(tmp_path, clock, systemd, min_restart_interval_s=600.0)
    assert (await request(restarter, "node-external-ip=A")).restarted
    clock.advance(300)
    assert (await request(restarter, "node-external-ip=B")).pending  # rate-limited
    clock.advance(300)
    restarter.need("config", "node-external-ip=A", "back to what k3s runs with")
    assert await restarter.serve() is None and restarter.open_needs == frozenset()
    assert restarter.stuck == {} and len(systemd.restart_calls) == 1
