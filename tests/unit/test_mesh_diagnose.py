"""The diagnosis: each fault of issue 14, as both sides' reports show it, gives the right cells,
cause and node to fix; healthy clusters give nothing; the work follows the faults, not N x N."""

from __future__ import annotations

import json
import time

import pytest

from wgagent.mesh import diagnose as dg
from wgagent.mesh import model as m
from wgagent.mesh import probe as pb
from wgagent.mesh import report as rp
from wgagent.model import ANN_BACKEND_DATA, ANN_PUBLIC_IP, ClusterView, NodeInfo
from wgagent.wireguard.model import key_from_bytes

NOW = 1_800_000_000
IPS = {"a": "203.0.113.1", "b": "203.0.113.2", "c": "203.0.113.3", "d": "198.51.100.4"}


def view(*names: str, ips: dict[str, str] | None = None) -> ClusterView:
    ips = {**IPS, **(ips or {})}
    out = {}
    for i, n in enumerate(names):
        anns = {
            ANN_BACKEND_DATA: json.dumps({"PublicKey": key_from_bytes((i + 1).to_bytes(2, "big") * 16), "Port": 51820})
        }
        anns[ANN_PUBLIC_IP] = ips.get(n, f"203.0.113.{100 + i}")
        out[n] = NodeInfo(n, anns)
    return ClusterView(out)


def note(node: str, **kw: object) -> rp.Note:
    return rp.Note(node, **kw)  # type: ignore[arg-type]


def report(*notes: rp.Note, ok: int = 2, miss: int = 0, host: int = 0, rule: str | None = None, **kw: object) -> str:
    inbound = rp.Inbound("ok", "ok", ok, miss, host, 0, rule)
    defaults: dict[str, object] = {"at": NOW - 10, "interface": "flannel-wg", "probe_interval_s": 300}
    return rp.encode(rp.Report(inbound=inbound, notes=notes, **{**defaults, **kw}))  # type: ignore[arg-type]


def healthy(*names: str) -> dict[str, str]:
    return {n: report(ok=len(names) - 1) for n in names}


def cells(d: dg.Diagnosis) -> dict[tuple[str, str], tuple[str, str, str | None]]:
    return {k: (p.state, p.cause, p.node) for k, p in d.faulty.items()}


def problems(d: dg.Diagnosis) -> list[tuple[str, str]]:
    return [(p.node, p.cause) for p in d.problems]


# --- healthy -----------------------------------------------------------------------------------


def test_healthy_cluster_has_no_faulty_cell_and_no_problem() -> None:
    d = dg.diagnose(view("a", "b", "c"), healthy("a", "b", "c"), NOW)
    assert d.ok and d.nodes == ("a", "b", "c") and d.faulty == {} and d.problems == ()
    assert d.cell("a", "b") == dg.Pair("a", "b", "ok", "ok", None, "")
    assert len(list(d.pairs(include_ok=True))) == 6
    assert {n: s.stale for n, s in d.reports.items()} == {"a": False, "b": False, "c": False}


def test_members_are_wireguard_nodes_and_reporting_nodes() -> None:
    v = view("a", "b")
    vx = ClusterView({**v.nodes, "vx": NodeInfo("vx", {ANN_PUBLIC_IP: "203.0.113.50"})})
    assert dg.diagnose(vx, healthy("a", "b"), NOW).nodes == ("a", "b")


# --- each fault, as both sides show it ---------------------------------------------------------


def test_security_group_closed_on_c_stateful_pairs_live_degraded_towards_c() -> None:
    reps = healthy("a", "b", "c")
    reps["c"] = report(
        note("a", inbound="miss", in_since=NOW - 900), note("b", inbound="miss", in_since=NOW - 900), ok=0, miss=2
    )
    d = dg.diagnose(view("a", "b", "c"), reps, NOW)
    up = ("degraded", m.INBOUND_BLOCKED_UPSTREAM, "c")
    assert cells(d) == {("a", "c"): up, ("b", "c"): up}
    assert problems(d) == [("c", m.INBOUND_BLOCKED_UPSTREAM)]
    assert d.cell("a", "c").since == NOW - 900
    assert "UDP 51820" in d.cell("a", "c").fix and "203.0.113.1" in d.cell("a", "c").fix


def test_path_drops_everything_to_c_stateless_every_pair_of_c_down_named_c() -> None:
    reps = healthy("a", "b", "c")
    reps["a"] = report(note("c", wg="down", wg_since=NOW - 200, hears=True))
    reps["b"] = report(note("c", wg="down", wg_since=NOW - 200, hears=True))
    reps["c"] = report(
        note("a", wg="down", wg_since=NOW - 200, inbound="miss", in_since=NOW - 600),
        note("b", wg="down", wg_since=NOW - 200, inbound="miss", in_since=NOW - 600),
        ok=0,
        miss=2,
    )
    d = dg.diagnose(view("a", "b", "c"), reps, NOW)
    down = ("down", m.INBOUND_BLOCKED_UPSTREAM, "c")
    assert cells(d) == {("a", "c"): down, ("b", "c"): down, ("c", "a"): down, ("c", "b"): down}


def test_a_dead_pair_without_probes_is_told_by_who_still_hears_whom() -> None:
    reps = healthy("a", "b")
    reps["a"] = report(note("b", wg="down", wg_since=NOW - 200, hears=True), ok=0)
    reps["b"] = report(note("a", wg="down", wg_since=NOW - 200), ok=0)
    d = dg.diagnose(view("a", "b"), reps, NOW)
    assert cells(d) == {
        ("a", "b"): ("down", m.INBOUND_BLOCKED_UPSTREAM, "b"),
        ("b", "a"): ("down", m.INBOUND_BLOCKED_UPSTREAM, "b"),
    }


def test_host_firewall_on_c_names_the_rule() -> None:
    rule = "ip filter INPUT: reject with icmp type host-prohibited (handle 7)"
    reps = healthy("a", "b", "c")
    reps["c"] = report(
        note("a", inbound="host", in_since=NOW - 300, src=IPS["a"]),
        note("b", inbound="host", in_since=NOW - 300),
        ok=0,
        host=2,
        rule=rule,
        provider="oracle",
    )
    d = dg.diagnose(view("a", "b", "c"), reps, NOW)
    host = ("degraded", m.INBOUND_BLOCKED_HOST, "c")
    assert cells(d) == {("a", "c"): host, ("b", "c"): host}
    assert problems(d) == [("c", m.INBOUND_BLOCKED_HOST)]
    assert rule in d.cell("a", "c").fix and "/etc/iptables/rules.v4" in d.cell("a", "c").fix


def test_two_nated_nodes_without_inbound_are_nat_both_sides() -> None:
    reps = healthy("a", "b", "c")
    reps["a"] = report(note("b", wg="down", wg_since=NOW - 900), note("b", inbound="miss"), ok=0, miss=2, nat=True)
    reps["a"] = report(
        note("b", wg="down", wg_since=NOW - 900, inbound="miss"), note("c", inbound="miss"), ok=0, miss=2, nat=True
    )
    reps["b"] = report(
        note("a", wg="down", wg_since=NOW - 900, inbound="miss"), note("c", inbound="miss"), ok=0, miss=2, nat=True
    )
    d = dg.diagnose(view("a", "b", "c"), reps, NOW)
    both = ("down", m.NAT_BOTH_SIDES, "a")
    up_a, up_b = ("degraded", m.INBOUND_BLOCKED_UPSTREAM, "a"), ("degraded", m.INBOUND_BLOCKED_UPSTREAM, "b")
    assert cells(d) == {("a", "b"): both, ("b", "a"): both, ("c", "a"): up_a, ("c", "b"): up_b}
    assert "one side is enough" in d.cell("a", "b").fix


def test_two_nated_nodes_that_do_not_hear_each_other_before_any_probe_is_missed() -> None:
    reps = healthy("a", "b")
    reps["a"] = report(note("b", wg="down", wg_since=NOW - 120), nat=True)
    reps["b"] = report(note("a", wg="down", wg_since=NOW - 100), nat=True)
    d = dg.diagnose(view("a", "b"), reps, NOW)
    both = ("down", m.NAT_BOTH_SIDES, "a")
    assert cells(d) == {("a", "b"): both, ("b", "a"): both} and d.cell("a", "b").since == NOW - 120


@pytest.mark.parametrize(
    ("a_note", "b_note"),
    [
        (note("b", wg="down", wg_since=NOW - 60), None),
        (note("b", wg="drift", wg_since=NOW - 60, endpoint="203.0.113.2:40917"),
         note("a", wg="drift", wg_since=NOW - 50, endpoint="203.0.113.1:38112")),
    ],
    ids=["only one side has seen the session die yet", "both hold the port their NAT had mapped"],
)  # fmt: skip
def test_two_nated_nodes_whose_session_died_are_nat_both_sides_at_once(a_note: rp.Note, b_note: rp.Note | None) -> None:
    reps = healthy("a", "b")
    reps["a"] = report(a_note, nat=True)
    reps["b"] = report(*([b_note] if b_note else []), nat=True)
    d = dg.diagnose(view("a", "b"), reps, NOW)
    both = ("down", m.NAT_BOTH_SIDES, "a")
    assert cells(d) == {("a", "b"): both, ("b", "a"): both}


def test_a_port_only_drift_towards_a_public_node_is_still_a_drift() -> None:
    reps = healthy("a", "b")
    reps["a"] = report(note("b", wg="drift", wg_since=NOW - 60, endpoint="203.0.113.2:40917"), nat=True)
    reps["b"] = report(note("a", wg="drift", wg_since=NOW - 50, endpoint="203.0.113.1:38112"))
    d = dg.diagnose(view("a", "b"), reps, NOW)
    assert cells(d) == {("a", "b"): ("down", m.ENDPOINT_DRIFT, "a"), ("b", "a"): ("down", m.ENDPOINT_DRIFT, "b")}


def test_two_cloud_nodes_with_closed_security_groups_are_upstream_each() -> None:
    reps = healthy("a", "b")
    reps["a"] = report(
        note("b", wg="down", wg_since=NOW - 900, inbound="miss"), ok=0, miss=1, nat=True, provider="aliyun"
    )
    reps["b"] = report(note("a", wg="down", wg_since=NOW - 900, inbound="miss"), ok=0, miss=1, nat=True, provider="aws")
    d = dg.diagnose(view("a", "b"), reps, NOW)
    assert cells(d) == {
        ("a", "b"): ("down", m.INBOUND_BLOCKED_UPSTREAM, "b"),
        ("b", "a"): ("down", m.INBOUND_BLOCKED_UPSTREAM, "a"),
    }
    assert "AWS security group" in d.cell("a", "b").fix and "Alibaba Cloud ECS security group" in d.cell("b", "a").fix


def test_a_wrong_public_ip_on_b() -> None:
    reps = healthy("a", "b", "c")
    real = "198.51.100.99"
    reps["a"] = report(note("b", wg="roamed", wg_since=NOW - 100, endpoint=f"{real}:51820"))
    reps["c"] = report(note("b", wg="roamed", wg_since=NOW - 100, endpoint=f"{real}:51820"))
    reps["b"] = report(note("a", inbound="miss"), note("c", inbound="miss"), ok=0, miss=2, public=real)
    d = dg.diagnose(view("a", "b", "c"), reps, NOW)
    wrong = ("degraded", m.WRONG_ENDPOINT, "b")
    assert cells(d) == {("a", "b"): wrong, ("c", "b"): wrong}
    assert problems(d) == [("b", m.WRONG_ENDPOINT)]  # not also "inbound blocked": probes went to the wrong address
    assert real in d.cell("a", "b").fix and "public-ip-overwrite" in d.cell("a", "b").fix


def test_a_wrong_public_ip_seen_only_by_its_peers() -> None:
    reps = healthy("a", "b", "c")
    for n in ("a", "c"):
        reps[n] = report(note("b", wg="roamed", wg_since=NOW - 100, endpoint="198.51.100.99:40000"))
    d = dg.diagnose(view("a", "b", "c"), reps, NOW)
    assert problems(d) == [("b", m.WRONG_ENDPOINT)]


def test_endpoints_drifted_on_both_sides() -> None:
    reps = healthy("a", "b")
    reps["a"] = report(note("b", wg="drift", wg_since=NOW - 300, endpoint="203.0.113.2:9999"), ok=1)
    reps["b"] = report(note("a", wg="drift", wg_since=NOW - 300, endpoint="203.0.113.1:9999"), ok=1)
    d = dg.diagnose(view("a", "b"), reps, NOW)
    assert cells(d) == {("a", "b"): ("down", m.ENDPOINT_DRIFT, "a"), ("b", "a"): ("down", m.ENDPOINT_DRIFT, "b")}
    assert "203.0.113.2:9999" in d.cell("a", "b").fix and "203.0.113.2:51820" in d.cell("a", "b").fix


def test_a_node_that_kept_an_old_key() -> None:
    reps = healthy("a", "b")
    reps["a"] = report(note("b", wg="missing", wg_since=NOW - 400, old_key=True))
    reps["b"] = report(note("a", wg="down", wg_since=NOW - 380))
    d = dg.diagnose(view("a", "b"), reps, NOW)
    assert cells(d) == {("a", "b"): ("down", m.STALE_KEY, "a"), ("b", "a"): ("down", m.STALE_KEY, "a")}
    assert "old key" in d.cell("a", "b").fix


def test_an_interface_deleted_on_b() -> None:
    reps = healthy("a", "b", "c")
    reps["b"] = report(interface=None, interface_ok=False, interface_detail="no interface flannel-wg")
    for n in ("a", "c"):
        reps[n] = report(note("b", wg="down", wg_since=NOW - 200))
    d = dg.diagnose(view("a", "b", "c"), reps, NOW)
    down = ("down", m.NO_INTERFACE, "b")
    assert cells(d) == {("a", "b"): down, ("c", "b"): down, ("b", "a"): down, ("b", "c"): down}
    assert problems(d) == [("b", m.NO_INTERFACE)]


@pytest.mark.parametrize(
    ("case", "value", "state"),
    [
        ("stopped cleanly", report(state="stopped", at=NOW - 5), "stopped"),
        ("silent for 36 minutes", report(at=NOW - 36 * 60), "stale"),
        ("never reported", None, "missing"),
    ],
)
def test_an_agent_that_does_not_report(case: str, value: str | None, state: str) -> None:
    reps = healthy("a", "b", "c")
    if value is None:
        del reps["b"]
    else:
        reps["b"] = value
    d = dg.diagnose(view("a", "b", "c"), reps, NOW)
    unknown = ("unknown", m.NO_REPORT, "b")
    assert cells(d) == {("b", "a"): unknown, ("b", "c"): unknown}, case  # the others see b fine
    assert problems(d) == [("b", m.NO_REPORT)] and d.reports["b"].state == state and d.reports["b"].stale


def test_an_agent_that_does_not_report_and_a_dead_pair_towards_it() -> None:
    reps = healthy("a", "b")
    reps["b"] = report(state="stopped")
    reps["a"] = report(note("b", wg="down", wg_since=NOW - 500))
    d = dg.diagnose(view("a", "b"), reps, NOW)
    assert d.cell("a", "b").state == "down" and d.cell("a", "b").cause == m.NO_REPORT


def test_a_report_that_is_not_ours_is_unknown() -> None:
    reps = healthy("a", "b")
    reps["b"] = '{"v": 7}'
    d = dg.diagnose(view("a", "b"), reps, NOW)
    assert problems(d) == [("b", m.UNKNOWN)] and d.reports["b"].state == "malformed"
    assert d.cell("b", "a").state == "unknown"


def test_one_side_deaf_while_the_other_hears_it_fine_is_the_deaf_sides_inbound() -> None:
    # Right after a stateless drop on the path to a: a hears nothing from b any more, while b,
    # whose packets still get out to a... b still finds the session fine (it hears a's keepalives).
    reps = healthy("a", "b")
    reps["a"] = report(note("b", wg="down", wg_since=NOW - 70))
    d = dg.diagnose(view("a", "b"), reps, NOW)
    up = ("down", m.INBOUND_BLOCKED_UPSTREAM, "a")
    assert cells(d) == {("a", "b"): up, ("b", "a"): up}
    assert "likely" in d.cell("a", "b").fix and d.cell("a", "b").since == NOW - 70


def test_a_dead_pair_without_any_evidence_is_unknown_with_no_node() -> None:
    reps = healthy("a", "b")
    reps["a"] = report(note("b", wg="down", wg_since=NOW - 300))
    reps["b"] = report(note("a", wg="down", wg_since=NOW - 300))
    d = dg.diagnose(view("a", "b"), reps, NOW)
    assert cells(d) == {("a", "b"): ("down", m.UNKNOWN, None), ("b", "a"): ("down", m.UNKNOWN, None)}


def test_probes_from_one_sender_missing_name_that_source() -> None:
    reps = healthy("a", "b", "c")
    reps["c"] = report(note("a", inbound="miss", in_since=NOW - 900), ok=1, miss=1)
    d = dg.diagnose(view("a", "b", "c"), reps, NOW)
    assert cells(d) == {("a", "c"): ("degraded", m.INBOUND_BLOCKED_UPSTREAM, "c")}
    assert problems(d) == [] and "from 203.0.113.1" in d.cell("a", "c").fix


@pytest.mark.parametrize(
    ("provider", "words"),
    [
        ("aliyun", "Alibaba Cloud ECS security group"),
        ("tencent", "Lighthouse firewall"),
        ("aws", "Lightsail instance firewall"),
        ("hetzner", "Hetzner Cloud Firewall"),
        ("oracle", "security list"),
        (None, "cloud firewall or security group"),
    ],
)
def test_the_fix_names_the_provider_control(provider: str | None, words: str) -> None:
    reps = healthy("a", "c")
    reps["c"] = report(note("a", inbound="miss"), ok=0, miss=1, provider=provider)
    fix = dg.diagnose(view("a", "c"), reps, NOW).cell("a", "c").fix
    assert words in fix and "UDP 51820" in fix


# --- scale -------------------------------------------------------------------------------------


def big(n: int, faulty: int) -> tuple[ClusterView, dict[str, str]]:
    names = [f"node-{i:04d}" for i in range(n)]
    v = view(*names)
    reps = {x: report(ok=n - 1) for x in names}
    for i in range(faulty):
        reps[names[i]] = report(note(names[i + 1], wg="down", wg_since=NOW - 300, hears=True), ok=n - 1)
    return v, reps


def test_a_thousand_healthy_nodes_are_diagnosed_quickly() -> None:
    v, reps = big(1000, 0)
    started = time.process_time()
    d = dg.diagnose(v, reps, NOW)
    assert d.ok and len(d.nodes) == 1000
    assert time.process_time() - started < 1.5  # about 0.1 s: proportional to N, not N x N


def test_a_thousand_nodes_with_faults_list_only_those() -> None:
    v, reps = big(1000, 10)
    d = dg.diagnose(v, reps, NOW)
    assert len(d.faulty) == 20 and all(p.cause == m.INBOUND_BLOCKED_UPSTREAM for p in d.faulty.values())


def test_half_of_a_thousand_nodes_not_reporting_costs_no_cell_until_one_is_read() -> None:
    v, reps = big(1000, 0)
    silent = sorted(reps)[:500]  # node-0000 .. node-0499: wgagent not installed there yet
    for name in silent:
        del reps[name]
    me = "node-0500"
    reps[me] = report(note("node-0501", wg="down", wg_since=NOW - 300), ok=999)
    started = time.process_time()
    d = dg.diagnose(v, reps, NOW)
    assert time.process_time() - started < 1.0  # the 499,500 silent cells are 500 entries' worth
    assert len(d.faulty) == 500 * 999 + 2  # and me <-> node-0501, both ways (who hears whom)
    assert d.states() == {"unknown": 500 * 999, "down": 2}
    assert d.cell("node-0001", "node-0002") == dg.Pair(
        "node-0001", "node-0002", "unknown", m.NO_REPORT, "node-0001",
        dg.fix_no_report("node-0001", dg.ReportState("missing")),
    )  # fmt: skip
    assert d.row("node-0001") == {b: d.cell("node-0001", b) for b in d.nodes if b != "node-0001"}
    assert set(d.row(me)) == {"node-0501"} and set(d.column(me)) == {*silent, "node-0501"}
    assert dict(d.faulty.items()) == {k: d.faulty[k] for k in d.faulty}  # iteration and lookup agree


def test_expected_senders_are_fresh_reports_that_probe() -> None:
    reps = {
        "me": report(),
        "a": report(probing_since=NOW - 100),
        "b": report(probe_interval_s=None),
        "c": report(state="stopped", probing_since=NOW - 100),
        "d": report(at=NOW - 3 * 3600, probing_since=NOW - 100),
        "e": "garbage",
    }
    assert dg.expected_senders(reps, "me", NOW) == {"a": pb.Expected(NOW - 100, 300)}
