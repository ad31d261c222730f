"""The published report: built from an observation, encoded within its size, decoded strictly,
written on change, rate-limited and refreshed."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgagent.mesh import observe as ob
from wgagent.mesh import probe as pb
from wgagent.mesh import report as rp
from wgagent.mesh.model import REFRESH_S

NOW = 1_800_000_000


def obs(*views: ob.PeerView, others: int = 0, at: float = NOW) -> ob.Look:
    return ob.Look("n0", at, "flannel-wg", True, "", tuple(views), others)


def healthy(n: int) -> ob.Look:
    return obs(*(ob.PeerView(f"node-{i:04d}.example.internal", ob.OK, NOW - 5000) for i in range(n)))


INBOUND_OK = pb.InboundView("ok", "ok", 3)
HOST = rp.HostFacts(public="203.0.113.1", nat=False, provider="aws")


def build(o: ob.Look, inbound: pb.InboundView | None = INBOUND_OK) -> rp.Report:
    return rp.build(o, inbound, HOST, probe_interval_s=300, probing_since=NOW - 4000)


# --- build -------------------------------------------------------------------------------------


def test_a_healthy_report_lists_no_node() -> None:
    r = build(healthy(3))
    assert r.notes == () and r.counts == {"peers": 3, "ok": 3}
    assert rp.encode(r) == (
        '{"if":"flannel-wg","in":{"ok":3,"st":"ok"},"n":{"ok":3,"peers":3},"nat":false,'
        f'"pr":300,"prov":"aws","ps":{NOW - 4000},"pub":"203.0.113.1","st":"up","t":{NOW},"v":1}}'
    )


@pytest.mark.parametrize("n", [1, 100, 1000, 5000])
def test_a_healthy_report_is_under_1_kb_whatever_the_cluster_size(n: int) -> None:
    assert len(rp.encode(build(healthy(n))).encode()) < 1024


def test_not_fine_nodes_are_listed_with_their_facts() -> None:
    o = obs(
        ob.PeerView("a", ob.DOWN, NOW - 300, rx_delta=148),
        ob.PeerView("b", ob.DRIFT, NOW - 600, endpoint="203.0.113.2:9999"),
        ob.PeerView("c", ob.MISSING, NOW - 900, old_key="k"),
        ob.PeerView("d", ob.MISSING, NOW - 10),  # within the grace: not yet
        ob.PeerView("e", ob.OK, NOW - 10),
    )
    inbound = pb.InboundView("ok", "ok", 0, (pb.InboundFinding("e", pb.HOST, NOW - 60, "203.0.113.5"),), "rule X")
    r = build(o, inbound)
    d = json.loads(rp.encode(r))["d"]
    assert d == {
        "a": {"w": "down", "ws": NOW - 300, "hr": 1},
        "b": {"w": "drift", "ws": NOW - 600, "ep": "203.0.113.2:9999"},
        "c": {"w": "missing", "ws": NOW - 900, "ok": 1},
        "e": {"i": "host", "is": NOW - 60, "src": "203.0.113.5"},
    }
    assert r.counts == {"peers": 5, "ok": 2, "down": 1, "drift": 1, "missing": 1}
    assert r.inbound == rp.Inbound("ok", "ok", 0, 0, 1, 0, "rule X")


def test_no_interface() -> None:
    o = ob.Look("n0", NOW, None, False, "no WireGuard interface of flannel")
    doc = json.loads(rp.encode(build(o, None)))
    assert (doc.get("if"), doc["ifok"], doc["ifd"], doc["in"]) == (
        None,
        False,
        "no WireGuard interface of flannel",
        {"st": "off"},
    )


# --- size --------------------------------------------------------------------------------------


def test_never_over_16_kb_the_least_severe_left_out_and_counted() -> None:
    views = [
        ob.PeerView(
            f"roamed-{i:04d}.a-rather-long-node-name.example", ob.ROAMED, NOW, endpoint=f"198.51.100.{i % 250}:4{i:04d}"
        )
        for i in range(400)
    ]
    views += [ob.PeerView(f"down-{i:04d}.a-rather-long-node-name.example", ob.DOWN, NOW) for i in range(100)]
    r = build(obs(*views))
    text = rp.encode(r)
    doc = json.loads(text)
    assert len(text.encode()) <= rp.MAX_BYTES
    assert doc["cut"] == 500 - len(doc["d"]) and doc["cut"] > 0
    assert all(f"down-{i:04d}.a-rather-long-node-name.example" in doc["d"] for i in range(100))
    assert doc["n"]["roamed"] == 400 and doc["n"]["down"] == 100  # the counts stay complete
    back = rp.decode(text)
    assert back is not None and back.cut == doc["cut"]


def test_long_free_text_is_cut() -> None:
    o = ob.Look("n0", NOW, None, False, "x " * 500)
    assert len(rp.build(o, None, HOST, probe_interval_s=None, probing_since=None).interface_detail) == rp.MAX_TEXT


# --- decode ------------------------------------------------------------------------------------


def test_round_trip() -> None:
    o = obs(
        ob.PeerView("a", ob.DOWN, NOW - 300, rx_delta=1),
        ob.PeerView("b", ob.ROAMED, NOW, endpoint="198.51.100.2:51820"),
    )
    r = build(o, pb.InboundView("ok", "nft not found", 1, (pb.InboundFinding("c", pb.MISS, NOW - 900),)))
    assert rp.decode(rp.encode(r)) == r


@pytest.mark.parametrize(
    ("case", "text"),
    [
        ("absent", None),
        ("empty", ""),
        ("not JSON", "{"),
        ("a list", "[1]"),
        ("another version", '{"v":2,"t":1,"st":"up"}'),
        ("no version", '{"t":1,"st":"up"}'),
        ("unknown state", '{"v":1,"t":1,"st":"maybe"}'),
        ("time as text", '{"v":1,"t":"1","st":"up"}'),
        ("negative time", '{"v":1,"t":-1,"st":"up"}'),
        ("bool as count", '{"v":1,"t":1,"st":"up","n":{"ok":true}}'),
        ("details not an object", '{"v":1,"t":1,"st":"up","d":[]}'),
        ("unknown wg status", '{"v":1,"t":1,"st":"up","d":{"a":{"w":"weird"}}}'),
        ("unknown inbound status", '{"v":1,"t":1,"st":"up","d":{"a":{"i":"weird"}}}'),
        ("nat as text", '{"v":1,"t":1,"st":"up","nat":"yes"}'),
        ("deeply nested", "[" * 100000 + "]" * 100000),
        ("too big", '{"v":1,"t":1,"st":"up","x":"' + "a" * rp.MAX_BYTES + '"}'),
    ],
)
def test_decode_refuses_what_is_not_a_report(case: str, text: str | None) -> None:
    assert rp.decode(text) is None, case


def test_decode_ignores_fields_it_does_not_know() -> None:
    r = rp.decode('{"v":1,"t":5,"st":"stopped","future":{"x":1}}')
    assert r is not None and (r.at, r.state) == (5, "stopped")


@given(st.text(max_size=300))
def test_decode_never_raises(text: str) -> None:
    rp.decode(text)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda c: (
            st.lists(c, max_size=3)
            | st.dictionaries(st.sampled_from(["v", "t", "st", "d", "n", "in", "w", "a"]), c, max_size=4)
        ),
    )
)
def test_decode_never_raises_on_json_shapes(doc: object) -> None:
    rp.decode(json.dumps(doc))


# --- when to write -----------------------------------------------------------------------------


def written(r: rp.Report, at: float) -> rp.LastReport:
    return rp.LastReport(at, rp.content(r))


@pytest.mark.parametrize(
    ("case", "last_at", "changed", "now", "write", "reason", "next_at"),
    [
        ("first write", None, False, NOW, True, "first", None),
        ("unchanged", NOW - 100, False, NOW, False, "unchanged", NOW - 100 + REFRESH_S),
        ("unchanged for 30 min: refresh", NOW - REFRESH_S, False, NOW, True, "refresh", None),
        ("changed after the interval", NOW - 60, True, NOW, True, "changed", None),
        ("changed within the interval", NOW - 20, True, NOW, False, "rate limit", NOW + 40),
    ],
)
def test_decide_publish(
    case: str, last_at: float | None, changed: bool, now: float, write: bool, reason: str, next_at: float | None
) -> None:
    r = build(healthy(2))
    before = replace(r, counts={"peers": 2, "ok": 1, "down": 1}) if changed else r
    last = None if last_at is None else written(before, last_at)
    assert rp.decide_publish(last, replace(r, at=int(now)), now, 60) == rp.PublishDecision(write, reason, next_at), case


def test_the_observation_time_alone_is_no_change() -> None:
    r = build(healthy(2))
    assert rp.content(r) == rp.content(replace(r, at=NOW + 999))


def test_the_final_report_is_written_at_once() -> None:
    r = build(healthy(2))
    d = rp.decide_publish(written(r, NOW - 1), replace(r, state=rp.STOPPED), NOW, 60, final=True)
    assert d.write and d.reason == "final"


def test_a_healthy_day_is_at_most_two_writes_an_hour() -> None:
    r, last, writes = build(healthy(50)), None, 0
    for t in range(NOW, NOW + 86400, 30):
        d = rp.decide_publish(last, replace(r, at=t), t, 60)
        if d.write:
            writes, last = writes + 1, written(r, t)
    assert writes <= 2 * 24 + 1


def test_patch_is_a_merge_patch_of_the_annotation() -> None:
    r = build(healthy(1))
    assert rp.patch(r) == {"metadata": {"annotations": {"wgagent.io/mesh": rp.encode(r)}}}
