"""PublicIPPart over fake sources: adoption across rounds, the state file, the check, metrics."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from ipaddress import ip_address
from pathlib import Path

import pytest
import yaml

from tests.support import configs
from wgagent.config import PublicIPConfig, parse
from wgagent.errors import SourceError
from wgagent.k3s.role import Identity
from wgagent.k3s.scan import ConfigLocation
from wgagent.model import PublicAddresses
from wgagent.publicip.build import build_source_set, build_sources
from wgagent.publicip.echo import HttpEchoSource
from wgagent.publicip.httpclient import AiohttpClient
from wgagent.publicip.interface import InterfaceSource
from wgagent.publicip.metadata import DmiData, MetadataSource
from wgagent.publicip.model import Answer
from wgagent.publicip.part import CONFIRM_INTERVAL_S, STATE_FILE, PublicIPPart
from wgagent.publicip.sources import SourceSet, StaticSource
from wgagent.publicip.stun import StunClient, StunSource
from wgagent.state import State
from wgagent.wiring import build_parts

X, Y = "203.0.113.1", "203.0.113.2"


class Scripted:
    """A STUN/HTTP-like source answering what the test sets, or failing."""

    def __init__(self, name: str, kind: str = "stun") -> None:
        self.name = name
        self.kind = kind
        self.timeout_s = 1.0
        self.why_not = ""
        self.answer: str | None = X
        self.error: str | None = None

    async def observe(self) -> Sequence[Answer] | None:
        if self.error is not None:
            raise SourceError(self.error)
        return [Answer(ip_address(self.answer))] if self.answer else None


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def make(
    tmp_path: Path, sources: Sequence[Scripted], **cfg: object
) -> tuple[PublicIPPart, State, Clock, list[PublicAddresses | None]]:
    clock = Clock()
    state = State(node="n1", version="test", clock=clock)
    part = PublicIPPart(state, PublicIPConfig(**cfg), str(tmp_path), SourceSet(list(sources)), clock=clock)  # type: ignore[arg-type]
    changes: list[PublicAddresses | None] = []
    part.changed.connect(changes.append)
    return part, state, clock, changes


def two(answer: str | None = X) -> list[Scripted]:
    sources = [Scripted("stun:a"), Scripted("http:b", "http")]
    for s in sources:
        s.answer = answer
    return sources


def saved(tmp_path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((tmp_path / STATE_FILE).read_text())
    return data


async def test_the_first_decision_is_adopted_saved_and_announced(tmp_path: Path) -> None:
    part, state, clock, changes = make(tmp_path, two())
    assert part.adopted() is None
    await part.reconcile()
    assert str(part.adopted()) == X
    assert changes == [part.adopted()]
    assert saved(tmp_path) == {"ipv4": X, "ipv6": None, "since": clock.now}
    check = state.checks["public_ip"]
    assert check.ok and X in check.detail and "2 of 2" in check.detail
    section = state.status()["parts"]["public_ip"]
    assert section["adopted"] == {"ipv4": X, "ipv6": None}
    assert section["decision"]["ipv4"] == X and section["pending"] is None
    assert [o["source"] for o in section["observations"]] == ["stun:a", "http:b"]


async def test_a_saved_address_is_used_at_once_at_start(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text(json.dumps({"ipv4": X, "ipv6": None, "since": 5.0}))
    part, state, _, changes = make(tmp_path, two(None))
    assert str(part.adopted()) == X  # before any round: the k3s drop-in can be written now
    assert state.status()["parts"]["public_ip"]["adopted"] == {"ipv4": X, "ipv6": None}
    await part.reconcile()  # nothing answers
    assert str(part.adopted()) == X and changes == []


async def test_one_flipped_round_does_not_flip_the_node(tmp_path: Path) -> None:
    sources = two()
    part, state, clock, changes = make(tmp_path, sources, interval_s=300)
    await part.reconcile()
    changes.clear()
    for s in sources:
        s.answer = Y
    clock.now += 300
    next_s = await part.reconcile()
    assert str(part.adopted()) == X and changes == []
    assert state.checks["public_ip"].ok
    assert f"{Y} decided 1 of 2 rounds" in state.checks["public_ip"].detail
    assert state.status()["parts"]["public_ip"]["pending"] == {"ipv4": Y, "ipv6": None, "rounds": 1, "needed": 2}
    assert next_s == CONFIRM_INTERVAL_S  # confirm soon, not in five minutes
    for s in sources:
        s.answer = X
    assert await part.reconcile() is None  # back to interval_s
    assert str(part.adopted()) == X and changes == []
    assert part.interval_s == 300
    assert saved(tmp_path)["ipv4"] == X


async def test_a_real_change_is_adopted_after_two_rounds(tmp_path: Path) -> None:
    sources = two()
    part, state, clock, changes = make(tmp_path, sources)
    await part.reconcile()
    for s in sources:
        s.answer = Y
    await part.reconcile()
    clock.now += 30
    await part.reconcile()
    assert str(part.adopted()) == Y
    assert [str(c) for c in changes] == [X, Y]
    assert saved(tmp_path) == {"ipv4": Y, "ipv6": None, "since": clock.now}
    assert state.metrics.counter("wgagent_public_ip_changes_total", "").get() == 2


async def test_everything_down_keeps_the_address_and_fails_the_check(tmp_path: Path) -> None:
    sources = two()
    part, state, _, changes = make(tmp_path, sources)
    await part.reconcile()
    for s in sources:
        s.error = "no answer within 5 s"
    await part.reconcile()
    assert str(part.adopted()) == X and len(changes) == 1
    check = state.checks["public_ip"]
    assert not check.ok
    assert f"keeping {X}" in check.detail
    assert "2 of 2 sources failed (first: stun:a: no answer within 5 s)" in check.detail
    assert "wgagent discover" in check.detail and "public_ip.static" in check.detail
    assert saved(tmp_path)["ipv4"] == X


async def test_nothing_ever_known_fails_with_what_to_do(tmp_path: Path) -> None:
    sources = two()
    sources[0].answer, sources[1].answer = "10.0.0.1", "100.64.0.1"
    part, state, _, changes = make(tmp_path, sources)
    await part.reconcile()
    check = state.checks["public_ip"]
    assert not check.ok and changes == [] and part.adopted() is None
    assert check.detail.startswith("no public address known: ")
    assert "every answer was rejected" in check.detail
    assert not (tmp_path / STATE_FILE).exists()


async def test_no_enabled_source_is_named_in_the_check(tmp_path: Path) -> None:
    part, state, _, _ = make(tmp_path, [])
    await part.reconcile()
    assert "public_ip.sources is empty" in state.checks["public_ip"].detail


async def test_source_errors_are_counted_every_round_and_logged_on_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sources = two()
    sources[1].error = "connection refused"
    part, state, _, _ = make(tmp_path, sources, quorum=1)
    errors = state.metrics.counter("wgagent_public_ip_source_errors_total", "", ("source",))
    with caplog.at_level(logging.INFO, logger="wgagent.publicip.part"):
        await part.reconcile()
        await part.reconcile()
        sources[1].error = None
        await part.reconcile()
    assert errors.get(source="http:b") == 2 and errors.get(source="stun:a") == 0
    assert caplog.text.count("public IP source http:b: connection refused") == 1
    assert "public IP source http:b answers again" in caplog.text
    rounds = state.metrics.counter("wgagent_public_ip_rounds_total", "", ("result",))
    assert rounds.get(result="decided") == 3


async def test_a_corrupt_state_file_is_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / STATE_FILE).write_text('{"ipv4": "not an address"}')
    with caplog.at_level(logging.WARNING):
        part, _, _, _ = make(tmp_path, two())
    assert part.adopted() is None
    assert "does not hold a valid public address" in caplog.text
    await part.reconcile()
    assert saved(tmp_path)["ipv4"] == X


async def test_an_unwritable_state_dir_fails_the_check_until_it_is_fixed(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the state directory should be")
    part, state, _, _ = make(blocker / "state", two())
    await part.reconcile()
    assert str(part.adopted()) == X  # still used; only its persistence failed
    check = state.checks["public_ip"]
    assert not check.ok and "not saved" in check.detail and "state_dir" in check.detail
    blocker.unlink()
    await part.reconcile()
    assert state.checks["public_ip"].ok
    assert saved(blocker / "state")["ipv4"] == X


async def test_a_failing_listener_is_logged_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    part, state, _, _ = make(tmp_path, two())

    def boom(_: object) -> None:
        raise RuntimeError("wiring bug")

    part.changed.connect(boom)
    with caplog.at_level(logging.ERROR):
        await part.reconcile()
    assert "signal public_ip.adopted: a listener failed" in caplog.text
    assert state.checks["public_ip"].ok and saved(tmp_path)["ipv4"] == X


# --- building the sources ----------------------------------------------------------------------


NO_DMI = DmiData()


def kinds(cfg: PublicIPConfig, dmi: DmiData = NO_DMI) -> list[tuple[str, str]]:
    sources = build_sources(cfg, http=None, stun=StunClient(), dmi_reader=lambda _: dmi)  # type: ignore[arg-type]
    return [(s.kind, s.name) for s in sources]


def test_static_replaces_every_other_source() -> None:
    cfg = PublicIPConfig(static=(ip_address(X),), stun_servers=("198.51.100.1:3478",))
    assert kinds(cfg) == [("static", "static")]


def test_all_kinds_in_report_order() -> None:
    cfg = PublicIPConfig(
        stun_servers=("198.51.100.1:3478",), http_echo_urls=("http://198.51.100.2",), metadata_provider="hetzner"
    )
    assert kinds(cfg) == [
        ("interface", "interface"),
        ("metadata", "metadata:hetzner"),
        ("stun", "stun:198.51.100.1:3478"),
        ("http", "http://198.51.100.2"),
    ]


def test_metadata_auto_reads_dmi_and_none_asks_no_metadata() -> None:
    auto = PublicIPConfig(sources=("metadata",), metadata_provider="auto")
    assert kinds(auto, DmiData(sys_vendor="Vultr")) == [("metadata", "metadata:vultr")]
    assert kinds(auto) == [("metadata", "metadata")]  # nothing detected: reported as not applicable
    assert kinds(PublicIPConfig(sources=("metadata",), metadata_provider="none")) == []


def test_only_the_enabled_kinds_are_built() -> None:
    cfg = PublicIPConfig(sources=("stun",), stun_servers=("198.51.100.1:3478",), http_echo_urls=("http://x.example",))
    assert kinds(cfg) == [("stun", "stun:198.51.100.1:3478")]


def test_the_built_sources_are_the_real_classes() -> None:
    cfg = PublicIPConfig(
        stun_servers=("198.51.100.1:3478",), http_echo_urls=("http://198.51.100.2",), metadata_provider="aws"
    )
    built = build_sources(cfg, http=None, stun=StunClient())  # type: ignore[arg-type]
    assert [type(s) for s in built] == [InterfaceSource, MetadataSource, StunSource, HttpEchoSource]
    assert all(s.timeout_s == cfg.timeout_s for s in built)
    assert type(build_sources(PublicIPConfig(static=(ip_address(X),)), http=None, stun=StunClient())[0]) is StaticSource  # type: ignore[arg-type]


# --- the daemon builds it ----------------------------------------------------------------------


def test_the_wiring_builds_the_part_in_the_first_stage(tmp_path: Path) -> None:
    on = configs.sandbox(str(tmp_path), 1, public_ip={"enabled": True, "static": [X]})
    cfg = parse(yaml.safe_dump(on))
    state = State(node="n1", version="test")
    identity = Identity("n1", "test", None, ConfigLocation.in_dir(str(tmp_path / "etc")), str(tmp_path / "data"))
    stages = build_parts(cfg, identity, state)
    parts = [p for p in stages[0] if isinstance(p, PublicIPPart)]
    assert len(parts) == 1 and parts[0].interval_s == cfg.public_ip.interval_s
    off = parse(yaml.safe_dump(configs.sandbox(str(tmp_path), 1)))
    assert not any(isinstance(p, PublicIPPart) for stage in build_parts(off, identity, state) for p in stage)


async def test_close_releases_the_http_sessions(tmp_path: Path) -> None:
    state = State(node="n1", version="test")
    cfg = PublicIPConfig(sources=("http",), http_echo_urls=("http://127.0.0.1:9",))
    sources = build_source_set(cfg)  # built, never run: no traffic
    http = sources.shared[0]
    assert isinstance(http, AiohttpClient)
    part = PublicIPPart(state, cfg, str(tmp_path), sources)
    session = http._session(0)
    await part.close()
    assert session.closed and http._sessions == {}
