"""The inbound probe's pure parts: the datagram, the schedule, arrivals against the late counter."""

from __future__ import annotations

import functools
import itertools
import json
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgagent.mesh import probe as pb
from wgagent.model import ANN_BACKEND_DATA, ANN_PUBLIC_IP, ClusterView, NodeInfo
from wgagent.wireguard.model import key_from_bytes

NOW = 1_800_000_000.0


# --- the datagram ------------------------------------------------------------------------------


def test_encode_decode_round_trip() -> None:
    data = pb.encode("node-a.example", NOW, bytes.fromhex("0011223344556677"))
    assert pb.decode(data) == pb.Probe("node-a.example", int(NOW), "0011223344556677")


def test_the_first_four_bytes_are_no_wireguard_message_type() -> None:
    data = pb.encode("n1", NOW, bytes(8))
    (msg_type,) = struct.unpack("<I", data[:4])  # how receive.c and receive.go read it
    assert msg_type not in (1, 2, 3, 4)
    assert int.from_bytes(data[:4], "big") == pb.MAGIC32


def test_the_longest_node_name_fits() -> None:
    name = ("a" * 63 + ".") * 3 + "a" * 61  # 253 characters
    assert len(pb.encode(name, NOW, bytes(8))) <= pb.MAX_BYTES


@pytest.mark.parametrize(
    ("case", "data"),
    [
        ("a WireGuard initiation", b"\x01\x00\x00\x00" + bytes(144)),
        ("other prefix", b"wgagent-probe/2 n1 1 0000000000000000"),
        ("upper case name", b"wgagent-probe/1 N1 1 0000000000000000"),
        ("name ending in a dash", b"wgagent-probe/1 n1- 1 0000000000000000"),
        ("short nonce", b"wgagent-probe/1 n1 1 00"),
        ("trailing bytes", b"wgagent-probe/1 n1 1 0000000000000000\n"),
        ("too long", b"wgagent-probe/1 " + b"a" * 400 + b" 1 0000000000000000"),
        ("not ASCII", "wgagent-probe/1 né 1 0000000000000000".encode()),
        ("empty", b""),
    ],
)
def test_decode_refuses(case: str, data: bytes) -> None:
    assert pb.decode(data) is None, case


@given(st.binary(max_size=400))
def test_decode_never_raises(data: bytes) -> None:
    pb.decode(data)


@pytest.mark.parametrize("bad", ["", "N1", "a_b", "-a", "a" * 254])
def test_encode_refuses_what_is_not_a_node_name(bad: str) -> None:
    with pytest.raises(ValueError):
        pb.encode(bad, NOW, bytes(8))


# --- targets and schedule ----------------------------------------------------------------------


def nodeinfo(name: str, ip: str | None, port: int | None = 51820, key: bool = True) -> NodeInfo:
    anns = {}
    if key:
        data: dict[str, object] = {"PublicKey": key_from_bytes(name.encode().ljust(32, b"."))}
        if port:
            data["Port"] = port
        anns[ANN_BACKEND_DATA] = json.dumps(data)
    if ip:
        anns[ANN_PUBLIC_IP] = ip
    return NodeInfo(name, anns)


def test_targets_are_only_advertised_usable_addresses() -> None:
    view = ClusterView(
        {
            n.name: n
            for n in (
                nodeinfo("me", "203.0.113.1"),
                nodeinfo("a", "203.0.113.2", port=51830),
                nodeinfo("b", "203.0.113.3", port=None),
                nodeinfo("loop", "127.0.0.1"),
                nodeinfo("mcast", "224.0.0.5"),
                nodeinfo("noip", None),
                nodeinfo("vxlan", "203.0.113.9", key=False),
                nodeinfo("v6", "2001:db8::1"),
            )
        }
    )
    assert pb.targets(view, "me", local_port=51999) == [
        pb.Target("a", "203.0.113.2", 51830),
        pb.Target("b", "203.0.113.3", 51999),
    ]


def seq(*values: float) -> Iterator[float]:
    yield from values


def test_a_new_target_is_first_due_within_one_interval() -> None:
    t = pb.Target("a", "203.0.113.2", 51820)
    r = seq(0.5)
    due, sched = pb.plan(pb.Schedule(), [t], NOW, 300, lambda: next(r))
    assert due == [] and sched.next_at == {"a": NOW + 150}


def test_after_a_probe_the_next_is_at_least_one_interval_later() -> None:
    t = pb.Target("a", "203.0.113.2", 51820)
    for u in (0.0, 0.5, 1.0):
        due, sched = pb.plan(pb.Schedule({"a": NOW}), [t], NOW, 300, functools.partial(float, u))
        assert due == [t]
        assert 300 <= sched.next_at["a"] - NOW <= 375


def test_targets_gone_are_forgotten_and_next_due_is_the_earliest() -> None:
    a, b = pb.Target("a", "203.0.113.2", 51820), pb.Target("b", "203.0.113.3", 51820)
    _, sched = pb.plan(pb.Schedule({"a": NOW + 10, "gone": NOW + 1}), [a, b], NOW, 300, lambda: 0.1)
    assert set(sched.next_at) == {"a", "b"} and pb.next_due(sched) == NOW + 10


@given(st.lists(st.floats(min_value=0, max_value=1), min_size=5, max_size=30))
def test_never_more_than_one_probe_per_interval(rands: list[float]) -> None:
    t = pb.Target("a", "203.0.113.2", 51820)
    sched, sent, now = pb.Schedule(), [], NOW
    it = iter(rands * 10)
    for _ in range(40):
        due, sched = pb.plan(sched, [t], now, 300, lambda: next(it))
        sent += [now] * len(due)
        now += 37.0
    assert all(b - a >= 300 for a, b in itertools.pairwise(sent))


# --- arrivals against the late counter ---------------------------------------------------------


def arrive(node: str, src: str, at: float) -> pb.Arrival:
    return pb.Arrival(node, src, at)


def test_a_probe_the_late_counter_counted_passed() -> None:
    mem = pb.start(NOW - 10, {})
    mem = pb.account(mem, [arrive("a", "203.0.113.2", NOW)], {"203.0.113.2": 1}, ["a"], NOW)
    assert mem.last["a"] == pb.LastArrival(NOW, "203.0.113.2", pb.PASS)


def test_a_probe_the_late_counter_did_not_count_was_dropped_by_the_host() -> None:
    mem = pb.start(NOW - 10, {})
    mem = pb.account(mem, [arrive("a", "203.0.113.2", NOW)], {}, ["a"], NOW)
    assert mem.last["a"].verdict == pb.HOST and mem.last["a"].host_since == NOW
    mem = pb.account(mem, [arrive("a", "203.0.113.2", NOW + 300)], {}, ["a"], NOW + 300)
    assert mem.last["a"].verdict == pb.HOST and mem.last["a"].host_since == NOW


def test_after_the_rule_is_removed_probes_pass_again() -> None:
    mem = pb.account(pb.start(NOW, {}), [arrive("a", "s", NOW)], {}, ["a"], NOW)
    mem = pb.account(mem, [arrive("a", "s", NOW + 300)], {"s": 1}, ["a"], NOW + 300)
    assert mem.last["a"].verdict == pb.PASS and mem.last["a"].host_since is None


def test_a_probe_counted_before_it_was_seen_is_no_drop() -> None:
    # The probe arrived between draining the tap and reading the counter: counted, not yet seen.
    mem = pb.account(pb.start(NOW, {}), [], {"s": 1}, ["a"], NOW)
    mem = pb.account(mem, [arrive("a", "s", NOW)], {"s": 1}, ["a"], NOW + 30)
    assert mem.last["a"].verdict == pb.PASS


def test_counters_from_before_the_start_are_the_baseline() -> None:
    mem = pb.start(NOW, {"s": 40})
    mem = pb.account(mem, [arrive("a", "s", NOW)], {"s": 40}, ["a"], NOW)
    assert mem.last["a"].verdict == pb.HOST


def test_a_counter_that_restarted_is_counted_from_zero() -> None:
    mem = pb.account(pb.start(NOW, {"s": 40}), [arrive("a", "s", NOW)], {"s": 41}, ["a"], NOW)
    mem = pb.account(mem, [arrive("a", "s", NOW + 300)], {"s": 1}, ["a"], NOW + 300)  # element expired
    assert mem.last["a"].verdict == pb.PASS


def test_without_a_counter_the_verdict_is_unknown() -> None:
    mem = pb.account(pb.start(NOW, None), [arrive("a", "s", NOW)], None, ["a"], NOW)
    assert mem.last["a"].verdict == pb.UNKNOWN


def test_probes_naming_no_node_are_only_counted() -> None:
    mem = pb.account(pb.start(NOW, {}), [arrive("zz", "s", NOW)], {}, ["a"], NOW)
    assert mem.last == {} and mem.unattributed == 1 and mem.tapped == {}


# --- the report's inbound section --------------------------------------------------------------

EXP = {"a": pb.Expected(NOW - 3600, 300), "b": pb.Expected(NOW - 3600, 300)}
ADV = {"a": "203.0.113.2", "b": "203.0.113.3"}
WINDOW = pb.window_s(300)


def view_of(last: dict[str, pb.LastArrival], *, started: float = NOW - 3600) -> pb.InboundView:
    mem = pb.InboundMemory(started, last=last)
    return pb.inbound_view(mem, EXP, ADV, NOW, rule="inet filter input: udp dport 51820 reject")


def test_every_expected_probe_arrived_and_passed() -> None:
    v = view_of(
        {"a": pb.LastArrival(NOW - 10, "203.0.113.2", pb.PASS), "b": pb.LastArrival(NOW, "203.0.113.3", pb.PASS)}
    )
    assert (v.ok, v.findings, v.rule) == (2, (), None)


def test_no_probe_within_the_window_is_a_miss_since_the_last_one() -> None:
    v = view_of({"a": pb.LastArrival(NOW - WINDOW - 1, "203.0.113.2", pb.PASS)})
    assert v.findings == (
        pb.InboundFinding("a", pb.MISS, NOW - WINDOW - 1),
        pb.InboundFinding("b", pb.MISS, NOW - 3600),
    )


def test_no_miss_before_one_window_of_watching() -> None:
    assert view_of({}, started=NOW - WINDOW + 5).findings == ()


def test_host_drops_name_the_rule() -> None:
    v = view_of({"a": pb.LastArrival(NOW, "203.0.113.2", pb.HOST, NOW - 600)})
    assert v.findings[0] == pb.InboundFinding("a", pb.HOST, NOW - 600, "203.0.113.2")
    assert v.rule == "inet filter input: udp dport 51820 reject"


def test_a_probe_from_an_address_the_sender_does_not_advertise() -> None:
    v = view_of({"a": pb.LastArrival(NOW, "198.51.100.9", pb.PASS), "b": pb.LastArrival(NOW, "203.0.113.3", pb.PASS)})
    assert v.findings == (pb.InboundFinding("a", pb.SRC, NOW, "198.51.100.9"),) and v.ok == 1


def test_a_tap_that_does_not_run_says_why() -> None:
    v = pb.inbound_view(pb.InboundMemory(NOW), EXP, ADV, NOW, state="no CAP_NET_RAW")
    assert (v.state, v.findings) == ("no CAP_NET_RAW", ())


# --- WireGuard's own initiations against the host firewall ------------------------------------


def seeded(pre: dict[str, int], post: dict[str, int]) -> pb.InboundMemory:
    return pb.account_initiations(pb.start(NOW, None), pre, post, NOW, seed=True)


def test_initiations_arriving_but_never_passing_are_dropped_by_the_host() -> None:
    mem = seeded({"s": 10}, {"s": 10})
    mem = pb.account_initiations(mem, {"s": 11}, {"s": 10}, NOW + 5)  # one: maybe in flight
    assert mem.wg_dropped == {}
    mem = pb.account_initiations(mem, {"s": 12}, {"s": 10}, NOW + 10)  # two since the last that passed
    assert mem.wg_dropped == {"s": (NOW + 10, NOW + 10)}
    mem = pb.account_initiations(mem, {"s": 18}, {"s": 10}, NOW + 40)
    assert mem.wg_dropped == {"s": (NOW + 10, NOW + 40)}
    mem = pb.account_initiations(mem, {"s": 19}, {"s": 11}, NOW + 45)  # the rule is gone
    assert mem.wg_dropped == {}
    mem = pb.account_initiations(mem, {"s": 20}, {"s": 11}, NOW + 50)  # one again: not yet
    assert mem.wg_dropped == {}


@pytest.mark.parametrize(
    ("case", "pre", "post", "dropped"),
    [
        ("one in flight between the two counters", {"s": 11}, {"s": 10}, False),
        ("two arrived, none passed", {"s": 12}, {"s": 10}, True),
        ("they pass", {"s": 14}, {"s": 14}, False),
        ("the table was made again: counted from zero", {"s": 3}, {"s": 0}, True),
        ("a source new since the start: counted from zero", {"s": 10, "t": 2}, {"s": 10}, True),
        ("nothing arrived", {"s": 10}, {"s": 10}, False),
    ],
)
def test_initiation_cases(case: str, pre: dict[str, int], post: dict[str, int], dropped: bool) -> None:
    mem = pb.account_initiations(seeded({"s": 10}, {"s": 10}), pre, post, NOW + 30)
    assert bool(mem.wg_dropped) is dropped, case


def test_counters_from_before_the_start_are_no_drop() -> None:
    assert seeded({"s": 90}, {"s": 10}).wg_dropped == {}


def test_a_source_that_stopped_initiating_is_forgotten() -> None:
    mem = pb.account_initiations(seeded({}, {}), {"s": 5}, {}, NOW + 30)
    assert mem.wg_dropped
    mem = pb.account_initiations(mem, {"s": 5}, {}, NOW + 30 + pb.INIT_FORGET_S + 1)
    assert mem.wg_dropped == {}


def test_wireguard_drops_are_host_findings_of_the_node_with_that_address() -> None:
    mem = pb.InboundMemory(NOW - 3600, wg_dropped={"203.0.113.2": (NOW - 40, NOW - 5), "198.51.100.99": (NOW, NOW)})
    v = pb.inbound_view(mem, {}, ADV, NOW, rule="inet filter input: udp dport 51820 drop (handle 3)")
    assert v.findings == (pb.InboundFinding("a", pb.HOST, NOW - 40, "203.0.113.2"),)
    assert v.rule == "inet filter input: udp dport 51820 drop (handle 3)"
