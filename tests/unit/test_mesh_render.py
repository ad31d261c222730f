"""``wgagent mesh`` output: the --json contract, the matrix and legend, the large-cluster summary,
and 1,000 nodes decoded, diagnosed and rendered well within 2 s."""

from __future__ import annotations

import json
import time

from tests.unit.test_mesh_diagnose import NOW, big, healthy, note, report, view
from wgagent.mesh import diagnose as dg
from wgagent.mesh import model as m
from wgagent.mesh import render

CONTRACT_PAIR = {"from", "to", "state", "cause", "node", "fix", "since"}
CONTRACT_PROBLEM = {"node", "cause", "fix", "since"}


def faulty_abc() -> dg.Diagnosis:
    reps = healthy("a", "b", "c")
    reps["c"] = report(
        note("a", inbound="miss", in_since=NOW - 900), note("b", inbound="miss", in_since=NOW - 900), ok=0, miss=2
    )
    return dg.diagnose(view("a", "b", "c"), reps, NOW)


def test_json_contract_small_cluster_lists_every_pair() -> None:
    doc = render.to_json(faulty_abc())
    json.dumps(doc)  # serialisable as is
    assert set(doc) >= {"nodes", "pairs", "problems", "reports"}
    assert doc["nodes"] == ["a", "b", "c"]
    assert len(doc["pairs"]) == 6 and doc["ok_pairs_listed"] is True and doc["ok_pairs"] == 4
    assert all(set(p) >= CONTRACT_PAIR for p in doc["pairs"])
    assert m.STATES == ("ok", "degraded", "down", "unknown")  # the contract's states, kept exactly
    assert m.CAUSES == ("ok", "inbound-blocked-upstream", "inbound-blocked-host", "nat-both-sides", "wrong-endpoint",
                        "endpoint-drift", "stale-key", "no-interface", "no-report", "unknown")  # fmt: skip
    assert all(p["state"] in m.STATES and p["cause"] in m.CAUSES for p in doc["pairs"])
    bad = [p for p in doc["pairs"] if p["state"] != "ok"]
    assert [(p["from"], p["to"], p["state"], p["cause"], p["node"]) for p in bad] == [
        ("a", "c", "degraded", "inbound-blocked-upstream", "c"),
        ("b", "c", "degraded", "inbound-blocked-upstream", "c"),
    ]
    assert bad[0]["since"] == "2027-01-15T07:45:00+00:00"
    ok = next(p for p in doc["pairs"] if p["state"] == "ok")
    assert (ok["cause"], ok["node"], ok["since"]) == ("ok", None, None)
    assert [set(p) >= CONTRACT_PROBLEM for p in doc["problems"]] == [True]
    assert doc["reports"]["a"] == {"age_s": 10, "stale": False, "state": "ok"}
    assert doc["ok"] is False


def test_json_of_a_large_cluster_lists_only_the_pairs_not_ok() -> None:
    v, reps = big(150, 2)
    doc = render.to_json(dg.diagnose(v, reps, NOW))
    assert doc["ok_pairs_listed"] is False and len(doc["pairs"]) == 4
    assert doc["ok_pairs"] + len(doc["pairs"]) == 150 * 149


def test_json_reports_of_silent_nodes() -> None:
    reps = healthy("a", "b", "c")
    reps["b"] = report(state="stopped", at=NOW - 60)
    del reps["c"]
    doc = render.to_json(dg.diagnose(view("a", "b", "c"), reps, NOW))
    assert doc["reports"]["b"] == {"age_s": 60, "stale": True, "state": "stopped"}
    assert doc["reports"]["c"] == {"age_s": None, "stale": True, "state": "missing"}


def test_text_matrix_legend_and_faults() -> None:
    text = render.to_text(faulty_abc())
    lines = text.splitlines()
    assert lines[0].startswith("wgagent mesh: 3 nodes, 2 of 6 pairs not ok (2 degraded), 1 node problem")
    assert lines[2:6] == [
        "from \\ to  1 2 3",
        "1  a       - . ~",
        "2  b       . - ~",
        "3  c       . . -",
    ]
    assert render.LEGEND in lines
    assert "  a -> c  degraded  inbound-blocked-upstream  fix on c: open UDP 51820 inbound from 203.0.113.1" in text
    assert "Node problems:" in text and "  c  inbound-blocked-upstream (since 2027-01-15T07:45:00+00:00)" in text


def test_text_of_a_healthy_cluster() -> None:
    text = render.to_text(dg.diagnose(view("a", "b"), healthy("a", "b"), NOW))
    assert text.splitlines()[0] == "wgagent mesh: 2 nodes, all 2 pairs ok (at 2027-01-15T08:00:00+00:00)"
    assert "Pairs not ok" not in text and "Node problems" not in text


def test_text_of_no_cluster() -> None:
    assert render.to_text(dg.diagnose(view(), {}, NOW)).startswith("wgagent mesh: no node")


def test_large_cluster_text_groups_pairs_and_counts_per_node() -> None:
    v, reps = big(100, 3)
    reps["node-0050"] = report(state="stopped")
    text = render.to_text(dg.diagnose(v, reps, NOW))
    assert "from \\ to" not in text  # no grid
    assert "  99 unknown  no-report  fix on node-0050:" in text
    examples = ", ".join(f"node-0050 -> node-000{i}" for i in range(5))
    assert f"      {examples} and 94 more" in text
    assert "node       from-not-ok  to-not-ok" in text
    assert "node-0050           99          0" in text


def test_a_thousand_nodes_decode_diagnose_and_render_within_two_seconds() -> None:
    v, reps = big(1000, 50)
    started = time.process_time()
    d = dg.diagnose(v, reps, NOW)
    text = render.to_text(d)
    doc = json.dumps(render.to_json(d))
    elapsed = time.process_time() - started
    assert "100 of 999000 pairs not ok" in text and len(doc) < 200_000
    assert elapsed < 2.0, f"{elapsed:.2f} s of CPU"  # about 0.1 s here; bench/bench_mesh.py measures it
