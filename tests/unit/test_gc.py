"""Peer GC: named cases of ``select_stale_peers``, hypothesis properties, and one pass / GCPart on
the fake backend (one transaction, logs, metrics, status, first-seen kept across passes)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgagent.config import Config, GCConfig, WireGuardConfig
from wgagent.errors import WireGuardError
from wgagent.model import ANN_BACKEND_DATA, ClusterView, NodeInfo
from wgagent.state import State
from wgagent.wireguard.backend import HostNet, open_backend
from wgagent.wireguard.fake import FakeBackend
from wgagent.wireguard.gc import (
    FIRST_SEEN_FILE,
    FirstSeenStore,
    GCPolicy,
    Selection,
    peer_states,
    run_gc_pass,
    select_stale_peers,
    update_first_seen,
)
from wgagent.wireguard.gc.part import GCPart
from wgagent.wireguard.model import Device, Peer, key_from_bytes

NOW = 1_800_000_000.0
POLICY = GCPolicy(stale_after_s=300, max_removals_per_pass=1000)
OWN = key_from_bytes(b"\xee" * 32)


def k(n: int) -> str:
    return key_from_bytes(n.to_bytes(2, "big") * 16)


def peer(n: int, *, age: float | None, ips: tuple[str, ...] = ("10.42.9.0/24",)) -> Peer:
    return Peer(k(n), f"203.0.113.{n % 250 + 1}:51820", ips, None if age is None else NOW - age)


def device(*peers: Peer) -> Device:
    return Device("flannel-wg", 51820, OWN, peers)


def select(
    dev: Device, live: set[int] | None, first_seen: dict[int, float] | None = None, policy: GCPolicy = POLICY
) -> Selection:
    keys = None if live is None else frozenset(k(n) for n in live)
    seen = {k(n): NOW - age for n, age in (first_seen or {}).items()}
    return select_stale_peers(dev, keys, seen, NOW, policy)


def keys(peers: tuple[Peer, ...]) -> list[str]:
    return [p.public_key for p in peers]


# --- named cases -------------------------------------------------------------------------------


def test_fresh_handshake_is_never_a_candidate_even_without_a_node() -> None:
    sel = select(device(peer(1, age=100), peer(2, age=300)), live=set())
    assert sel.remove == () and sel.node_list == "untrusted"  # a stranger handshakes: see below


def test_stale_key_of_no_node_is_removed() -> None:
    sel = select(device(peer(1, age=301), peer(2, age=30)), live={2})
    assert keys(sel.remove) == [k(1)] and sel.node_list == "known"


def test_stale_peer_without_allowed_ips_is_removed_even_when_the_node_list_is_unknown() -> None:
    sel = select(device(peer(1, age=3600, ips=()), peer(2, age=3600)), live=None)
    assert keys(sel.remove) == [k(1)]
    assert keys(sel.kept_unknown) == [k(2)]
    assert sel.node_list == "unknown" and "only peers without allowed IPs" in sel.note


def test_live_nodes_current_key_is_kept_and_reported_even_without_allowed_ips() -> None:
    sel = select(device(peer(1, age=86400), peer(2, age=None, ips=())), live={1, 2}, first_seen={2: 86400})
    assert sel.remove == ()
    assert keys(sel.kept_unreachable) == [k(1), k(2)]


@pytest.mark.parametrize(
    ("first_seen", "removed"),
    [({1: 301}, True), ({1: 300}, False), ({1: 10}, False), ({}, False)],
    ids=["seen-long-ago", "seen-exactly-stale_after", "seen-recently", "never-seen"],
)
def test_never_handshaked_peer_counts_from_first_seen(first_seen: dict[int, float], removed: bool) -> None:
    sel = select(device(peer(1, age=None)), live=set(), first_seen=first_seen)
    assert (keys(sel.remove) == [k(1)]) is removed


def test_exactly_stale_after_is_not_stale_and_the_future_is_not_stale() -> None:
    sel = select(device(peer(1, age=300), peer(2, age=-3600)), live={3})
    assert sel.remove == () and sel.kept_unknown == () and sel.node_list == "untrusted"


def test_a_handshaking_stranger_makes_the_node_list_untrusted() -> None:
    # A credential that sees only its own Node lists one node; every other peer looks like "no node".
    dev = device(peer(1, age=20), peer(2, age=86400), peer(3, age=86400, ips=()))
    sel = select(dev, live={9})
    assert keys(sel.remove) == [k(3)]
    assert keys(sel.kept_unknown) == [k(2)]
    assert sel.node_list == "untrusted" and "node list looks incomplete" in sel.note and k(1) in sel.note


def test_cap_removes_the_longest_silent_first_and_defers_the_rest() -> None:
    dev = device(*(peer(n, age=1000 + n) for n in range(1, 6)))
    sel = select(dev, live=set(), policy=GCPolicy(300, 2))
    assert keys(sel.remove) == [k(5), k(4)]
    assert keys(sel.deferred) == [k(3), k(2), k(1)]


def test_own_key_is_never_touched() -> None:
    dev = Device("flannel-wg", 51820, OWN, (Peer(OWN, None, (), NOW - 9999),))
    assert select(dev, live=set()).remove == ()


def test_first_seen_keeps_old_times_adds_new_and_forgets_gone() -> None:
    dev = device(peer(1, age=None), peer(2, age=None))
    assert update_first_seen({k(1): 5.0, k(9): 7.0}, dev, NOW) == {k(1): 5.0, k(2): NOW}


# --- properties ----------------------------------------------------------------------------------

ages = st.one_of(st.none(), st.floats(min_value=-100, max_value=10_000, allow_nan=False))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Device, frozenset[str] | None, dict[str, float], GCPolicy]:
    n = draw(st.integers(min_value=0, max_value=25))
    peers = []
    seen = {}
    for i in range(n):
        age = draw(ages)
        ips = draw(st.sampled_from([(), ("10.42.1.0/24",), ("10.42.2.0/24", "fd00::/64")]))
        peers.append(Peer(k(i), None, ips, None if age is None else NOW - age))
        if draw(st.booleans()):
            seen[k(i)] = NOW - draw(st.floats(min_value=0, max_value=10_000, allow_nan=False))
    live = None if draw(st.booleans()) else frozenset(k(i) for i in draw(st.sets(st.integers(0, 30))))
    policy = GCPolicy(draw(st.floats(min_value=180, max_value=5000)), draw(st.integers(min_value=1, max_value=30)))
    return Device("wg0", 51820, OWN, tuple(peers)), live, seen, policy


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_never_a_live_key_nor_a_fresh_handshake(
    s: tuple[Device, frozenset[str] | None, dict[str, float], GCPolicy],
) -> None:
    dev, live, seen, policy = s
    sel = select_stale_peers(dev, live, seen, NOW, policy)
    for p in (*sel.remove, *sel.deferred):
        assert live is None or p.public_key not in live
        age = p.handshake_age(NOW)
        assert age is None or age > policy.stale_after_s
        if age is None:
            assert NOW - seen[p.public_key] > policy.stale_after_s
        assert not p.allowed_ips or sel.node_list == "known"
    assert len(sel.remove) <= policy.max_removals_per_pass


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_selection_is_idempotent(s: tuple[Device, frozenset[str] | None, dict[str, float], GCPolicy]) -> None:
    dev, live, seen, policy = s
    first = select_stale_peers(dev, live, seen, NOW, policy)
    assert select_stale_peers(dev, live, seen, NOW, policy) == first
    after = dev.without(keys(first.remove))
    second = select_stale_peers(after, live, seen, NOW, policy)
    # What is left to remove is exactly what the first pass deferred; nothing else changes.
    assert keys(second.remove) + keys(second.deferred) == keys(first.deferred)
    assert (second.kept_unreachable, second.kept_unknown, second.node_list) == (
        first.kept_unreachable,
        first.kept_unknown,
        first.node_list,
    )


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_dry_run_and_real_run_select_the_same(
    s: tuple[Device, frozenset[str] | None, dict[str, float], GCPolicy],
) -> None:
    dev, live, seen, policy = s
    cluster = None if live is None else ClusterView({f"n{i}": node(f"n{i}", key) for i, key in enumerate(sorted(live))})

    async def both() -> None:
        results = []
        for dry_run in (True, False):
            fake = FakeBackend({"wg0": dev})
            store = MemoryStore({"wg0": dict(seen)})
            r = await run_gc_pass(fake, "wg0", cluster, store, now=NOW, policy=policy, dry_run=dry_run)
            results.append((r, fake))
        (dry, dry_fake), (real, real_fake) = results
        assert dry.selection.remove == real.selection.remove
        assert dry_fake.devices["wg0"] == dev and dry_fake.transactions == []
        removed = keys(real.selection.remove)
        assert real_fake.devices["wg0"] == dev.without(removed)
        assert real_fake.transactions == ([("wg0", tuple(removed))] if removed else [])

    asyncio.run(both())


# --- one pass and the part, on the fake backend --------------------------------------------------


class MemoryStore(FirstSeenStore):
    def __init__(self, data: dict[str, dict[str, float]] | None = None) -> None:
        self.path = "<memory>"
        self._data = data or {}
        self._warned = False

    def put(self, ifname: str, seen: dict[str, float]) -> None:
        assert self._data is not None
        self._data[ifname] = seen


def node(name: str, key: str) -> NodeInfo:
    return NodeInfo(name, {ANN_BACKEND_DATA: json.dumps({"PublicKey": key, "Port": 51820})})


def cluster_of(**nodes: int) -> ClusterView:
    return ClusterView({name: node(name, k(n)) for name, n in nodes.items()})


async def test_one_pass_removes_in_one_transaction_and_logs_each_removal(caplog: pytest.LogCaptureFixture) -> None:
    dev = device(
        peer(1, age=20),  # node-a, live
        peer(2, age=4000),  # node-b: dead but still a Node
        peer(3, age=4000),  # no node
        peer(4, age=None, ips=()),  # re-keyed leftover, never handshook
    )
    fake = FakeBackend({"flannel-wg": dev})
    store = MemoryStore({"flannel-wg": {k(4): NOW - 3600}})
    caplog.set_level(logging.INFO, logger="wgagent.wireguard.gc")
    r = await run_gc_pass(fake, "flannel-wg", cluster_of(a=1, b=2), store, now=NOW, policy=POLICY, dry_run=False)
    assert r.ok
    # One transaction, longest silent first: 4000 s since the handshake, then first seen 3600 s ago.
    assert fake.transactions == [("flannel-wg", (k(3), k(4)))]
    assert keys(r.selection.kept_unreachable) == [k(2)] and r.owners == {k(2): "b"}
    assert r.states == {"active": 1, "idle": 0, "stale": 0, "unreachable": 1}
    text = caplog.text
    assert f"removed peer {k(3)} endpoint=203.0.113.4:51820 allowed_ips=10.42.9.0/24 last_handshake=2027-01-15" in text
    assert f"removed peer {k(4)} endpoint=203.0.113.5:51820 allowed_ips=(none) last_handshake=never" in text
    out = r.to_json()
    assert out["removed"] == [k(3), k(4)] and out["kept_unreachable"] == [k(2)]
    assert out["unreachable_nodes"] == {k(2): "b"} and out["dry_run"] is False and out["interface"] == "flannel-wg"
    assert "removed 2 dead peer(s) of 4; kept 1 unreachable live node peer(s): b" in r.detail()
    assert k(3) not in store.get("flannel-wg") and k(1) in store.get("flannel-wg")


async def test_a_failed_removal_is_reported_and_first_seen_is_kept(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeBackend({"wg0": device(peer(1, age=4000))})
    fake.devices = {"wg0": Device("wg0", 51820, OWN, (peer(1, age=4000),))}
    fake.fail_remove = WireGuardError("wg0: removing peers failed: errno -5")
    store = MemoryStore()
    caplog.set_level(logging.INFO, logger="wgagent.wireguard.gc")
    r = await run_gc_pass(fake, "wg0", cluster_of(), store, now=NOW, policy=POLICY, dry_run=False)
    assert "wg0: removing 1 peer(s) failed: wg0: removing peers failed: errno -5" in caplog.text
    assert "removed peer" not in caplog.text
    assert not r.ok and "removing 1 peer(s) failed" in (r.error or "")
    assert k(1) in store.get("wg0")
    assert r.states["stale"] == 1


def gc_config(tmp_path: Path, **gc: object) -> Config:
    return Config(
        state_dir=str(tmp_path / "state"),
        wireguard=WireGuardConfig(interface="flannel-wg", uapi_dir=str(tmp_path / "run"), gc=GCConfig(**gc)),  # type: ignore[arg-type]
    )


def gc_part(
    tmp_path: Path, fake: FakeBackend, cluster: ClusterView | None, clock: list[float], **gc: object
) -> tuple[GCPart, State]:
    state = State(node="node-a", version="t")
    part = GCPart(
        state,
        gc_config(tmp_path, **gc),
        lambda: cluster,
        HostNet(str(tmp_path / "sys"), str(tmp_path / "proc")),
        lambda ifname, uapi_dir: fake,
        clock=lambda: clock[0],
    )
    return part, state


async def test_part_keeps_first_seen_across_passes_and_restarts(tmp_path: Path) -> None:
    dev = device(peer(1, age=10), peer(7, age=None), peer(8, age=None, ips=()))
    fake = FakeBackend({"flannel-wg": dev})
    clock = [NOW]
    part, _state = gc_part(tmp_path, fake, cluster_of(a=1), clock)
    await part.reconcile()
    assert fake.transactions == []  # first sight: never-handshaked peers are not candidates yet
    saved = json.loads((tmp_path / "state" / FIRST_SEEN_FILE).read_text())
    assert saved["interfaces"]["flannel-wg"][k(8)] == NOW
    # A new process (a restart) reads the times back; 301 s later both silent peers go.
    fake.devices["flannel-wg"] = device(peer(1, age=10 - 301), peer(7, age=None), peer(8, age=None, ips=()))
    clock[0] = NOW + 301
    part2, state2 = gc_part(tmp_path, fake, cluster_of(a=1), clock)
    await part2.reconcile()
    assert fake.transactions == [("flannel-wg", (k(7), k(8)))]
    assert state2.checks["peer_gc"].ok
    metrics = state2.metrics.render()
    assert 'wgagent_gc_removed_total{interface="flannel-wg"} 2' in metrics
    assert 'wgagent_peers{interface="flannel-wg",state="active"} 1' in metrics
    status = state2.status()["parts"]["peer_gc"]
    assert status["interfaces"][0]["removed"] == [k(7), k(8)] and status["dry_run"] is False
    saved = json.loads((tmp_path / "state" / FIRST_SEEN_FILE).read_text())
    assert set(saved["interfaces"]["flannel-wg"]) == {k(1)}


async def test_part_dry_run_reports_and_removes_nothing(tmp_path: Path) -> None:
    fake = FakeBackend({"flannel-wg": device(peer(1, age=4000), peer(2, age=4000, ips=()))})
    part, state = gc_part(tmp_path, fake, None, [NOW], dry_run=True)
    await part.reconcile()
    assert fake.transactions == []
    check = state.checks["peer_gc"]
    assert check.ok and "dry run, would remove 1 dead peer(s) of 2" in check.detail
    assert "node list unknown" in check.detail
    assert 'wgagent_gc_removed_total{interface="flannel-wg"} 0' in state.metrics.render()
    assert state.status()["parts"]["peer_gc"]["interfaces"][0]["removed"] == [k(2)]


async def test_part_with_an_unreadable_device_fails_its_check(tmp_path: Path) -> None:
    fake = FakeBackend({})
    part, state = gc_part(tmp_path, fake, None, [NOW])
    await part.reconcile()
    check = state.checks["peer_gc"]
    assert not check.ok and check.detail == "flannel-wg: no interface flannel-wg"


async def test_part_with_auto_and_no_flannel_interface_has_nothing_to_do(tmp_path: Path) -> None:
    state = State(node="node-a", version="t")
    cfg = Config(state_dir=str(tmp_path / "state"), wireguard=WireGuardConfig(uapi_dir=str(tmp_path / "run")))
    os.makedirs(tmp_path / "sys" / "flannel.1")
    (tmp_path / "sys" / "flannel.1" / "uevent").write_text("DEVTYPE=vxlan\nINTERFACE=flannel.1\n")
    part = GCPart(state, cfg, lambda: None, HostNet(str(tmp_path / "sys"), str(tmp_path / "proc")), open_backend)
    await part.reconcile()
    check = state.checks["peer_gc"]
    assert check.ok
    assert "nothing to clean: no WireGuard interface of flannel" in check.detail
    assert "flannel.1 is a vxlan device" in check.detail


async def test_corrupt_first_seen_file_is_ignored_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / FIRST_SEEN_FILE).write_text("{not json")
    fake = FakeBackend({"flannel-wg": device(peer(7, age=None))})
    part, state = gc_part(tmp_path, fake, None, [NOW])
    await part.reconcile()
    assert state.checks["peer_gc"].ok
    assert "not valid JSON" in caplog.text
    assert json.loads((tmp_path / "state" / FIRST_SEEN_FILE).read_text())["interfaces"]["flannel-wg"] == {k(7): NOW}


def test_peer_states_count_what_is_left() -> None:
    dev = device(peer(1, age=10), peer(2, age=200), peer(3, age=4000), peer(4, age=4000, ips=()))
    sel = select(dev, live={1, 3})
    assert peer_states(dev, sel, NOW, removed=True) == {"active": 1, "idle": 1, "stale": 0, "unreachable": 1}
    assert peer_states(dev, sel, NOW, removed=False) == {"active": 1, "idle": 1, "stale": 1, "unreachable": 1}
