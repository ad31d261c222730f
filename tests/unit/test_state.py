"""State: checks with stable `since`, health codes, the STATUS= summary, metrics text."""

from __future__ import annotations

import pytest

from wgagent.metrics import Registry
from wgagent.state import State


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_since_moves_only_when_ok_flips() -> None:
    clock = Clock()
    state = State(node="n1", version="1", clock=clock)
    state.set_check("public_ip", False, "no decision")
    clock.now += 10
    state.set_check("public_ip", False, "still no decision")  # detail changes, since stays
    assert state.checks["public_ip"].since == 1_000_000.0
    assert state.checks["public_ip"].detail == "still no decision"
    clock.now += 10
    state.set_check("public_ip", True, "203.0.113.7 (metadata)")
    assert state.checks["public_ip"].since == 1_000_020.0


def test_health_is_200_only_when_every_check_passes_and_json_has_the_contract_shape() -> None:
    state = State(node="n1", version="1", clock=lambda: 0.0)
    state.set_check("config", True, "loaded")
    assert state.health() == (
        200,
        {"status": "ok", "checks": {"config": {"ok": True, "detail": "loaded", "since": "1970-01-01T00:00:00+00:00"}}},
    )
    state.set_check("peer_gc", False, "interface\nmissing")
    code, body = state.health()
    assert code == 503 and body["status"] == "fail"
    assert body["checks"]["peer_gc"]["detail"] == "interface missing"  # always one line
    assert list(body["checks"]) == ["config", "peer_gc"]


def test_a_dropped_check_is_absent_not_failing() -> None:
    state = State(node="n1", version="1")
    state.set_check("peer_gc", False, "x")
    state.drop_check("peer_gc")
    assert state.health()[0] == 200
    assert 'check="peer_gc"' not in state.metrics.render()


def test_unknown_check_names_are_refused() -> None:
    with pytest.raises(ValueError):
        State(node="n1", version="1").set_check("publicip", True, "typo")


def test_generation_moves_on_every_change_and_only_then() -> None:
    state = State(node="n1", version="1")
    start = state.generation
    seen = []
    state.subscribe(lambda: seen.append(state.generation - start))
    state.set_check("config", True, "a")
    state.set_check("config", True, "a")  # no change
    state.set_part("k3s", {"role": "server"})
    state.set_part("k3s", {"role": "server"})  # no change
    assert seen == [1, 2]


def test_summary_names_the_failing_checks() -> None:
    state = State(node="n1", version="1")
    assert state.summary() == "starting"
    state.set_check("config", True, "loaded")
    assert state.summary() == "ok: all 1 checks pass"
    state.set_check("annotation", False, "public-ip is 10.0.0.5, overwrite is 203.0.113.7")
    assert state.summary() == ("failing 1/2: annotation (annotation: public-ip is 10.0.0.5, overwrite is 203.0.113.7)")


def test_status_has_node_role_version_uptime_and_parts() -> None:
    ticks = iter([100.0, 103.5])
    state = State(node="n1", version="9.9", role="agent", monotonic=lambda: next(ticks))
    state.set_part("public_ip", {"adopted": "203.0.113.7"})
    status = state.status()
    assert status["node"] == "n1" and status["role"] == "agent" and status["version"] == "9.9"
    assert status["uptime_s"] == 3.5
    assert status["parts"] == {"public_ip": {"adopted": "203.0.113.7"}}


def test_metrics_text_exposition() -> None:
    reg = Registry()
    removed = reg.counter("wgagent_gc_removed_total", "Peers removed.")
    peers = reg.gauge("wgagent_peers", "Peers by state.", ("state",))
    removed.inc(3)
    peers.set(2, state="alive")
    peers.set(1, state='odd"\\')
    assert reg.render() == (
        "# HELP wgagent_gc_removed_total Peers removed.\n"
        "# TYPE wgagent_gc_removed_total counter\n"
        "wgagent_gc_removed_total 3\n"
        "# HELP wgagent_peers Peers by state.\n"
        "# TYPE wgagent_peers gauge\n"
        'wgagent_peers{state="alive"} 2\n'
        'wgagent_peers{state="odd\\"\\\\"} 1\n'
    )
    with pytest.raises(ValueError):
        removed.inc(-1)
    with pytest.raises(ValueError):
        peers.set(1, colour="x")
    assert reg.counter("wgagent_gc_removed_total", "Peers removed.") is removed  # rebuilt parts get it back
