"""The mesh part's pass (``agent.step``) over simulated time, for a few simulated nodes.

A small model stands in for WireGuard and the network (ticks of 30 s, keepalive 25 s): a pair
handshakes every two minutes while packets get through both ways; otherwise each side keeps
sending, and hears the other only if the other's packets reach it. A fault is a stateless drop
of everything to a node's port, on the path (its "security group") or by its host firewall
(then the node's counters see the packets arrive and not get through). Probes and reports
travel between the agents as the part would carry them. Checked: a healthy day has no faulty
cell and at most two report writes per node per hour; each fault is named (cause and node)
within 210 s and clears after it is lifted.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field

from wgagent.mesh import agent
from wgagent.mesh import model as m
from wgagent.mesh import probe as pb
from wgagent.mesh import report as rp
from wgagent.model import ANN_BACKEND_DATA, ANN_PUBLIC_IP, ClusterView, NodeInfo
from wgagent.wireguard.model import Device, Peer, key_from_bytes

TICK_S = 30.0
KEEPALIVE_BYTES_PER_TICK = 32 * 30 // 25
START = 1_800_000_000.0
RULE = "inet filter input: udp dport 51820 drop (handle 4)"


def key(name: str) -> str:
    return key_from_bytes(name.encode().ljust(32, b"."))


@dataclass
class Sim:
    names: list[str]
    t: float = START
    blocked_path: set[str] = field(default_factory=set)
    blocked_host: set[str] = field(default_factory=set)
    last_hs: dict[frozenset[str], float] = field(default_factory=dict)
    rx: Counter[tuple[str, str]] = field(default_factory=Counter)
    tx: Counter[tuple[str, str]] = field(default_factory=Counter)
    reports: dict[str, str] = field(default_factory=dict)
    writes: Counter[str] = field(default_factory=Counter)
    arrivals: dict[str, list[pb.Arrival]] = field(default_factory=dict)
    counts: dict[str, dict[str, Counter[str]]] = field(default_factory=dict)
    states: dict[str, agent.MeshState] = field(default_factory=dict)
    last: dict[str, agent.Outputs] = field(default_factory=dict)
    rand: random.Random = field(default_factory=lambda: random.Random(7))

    def __post_init__(self) -> None:
        self.ip = {n: f"203.0.113.{i + 1}" for i, n in enumerate(self.names)}
        anns = {n: {ANN_BACKEND_DATA: json.dumps({"PublicKey": key(n), "Port": 51820}), ANN_PUBLIC_IP: self.ip[n]}
                for n in self.names}  # fmt: skip
        self.view = ClusterView({n: NodeInfo(n, anns[n]) for n in self.names})
        for n in self.names:
            self.states[n] = agent.start(self.t, {})
            self.arrivals[n] = []
            self.counts[n] = {"pass": Counter(), "hs_pre": Counter(), "hs_post": Counter()}
        for a in self.names:
            for b in self.names:
                if a < b:
                    self.last_hs[frozenset((a, b))] = self.t - 10

    def gets_in(self, dst: str) -> bool:
        """Whether packets to dst's WireGuard port reach its WireGuard."""
        return dst not in self.blocked_path and dst not in self.blocked_host

    def network(self) -> None:
        for a in self.names:
            for b in self.names:
                if a >= b:
                    continue
                pair = frozenset((a, b))
                works = self.gets_in(a) and self.gets_in(b)
                if works and self.t - self.last_hs[pair] >= 120:
                    self.last_hs[pair] = self.t
                for me, other in ((a, b), (b, a)):
                    self.tx[(me, other)] += KEEPALIVE_BYTES_PER_TICK
                    if self.gets_in(me):
                        # the other's packets (data, or its handshake attempts) reach me
                        self.rx[(me, other)] += KEEPALIVE_BYTES_PER_TICK if works else 148
                    if not works and other not in self.blocked_path:
                        # my handshake messages get to the other's device; its host may drop them
                        self.counts[other]["hs_pre"][self.ip[me]] += 6
                        if other not in self.blocked_host:
                            self.counts[other]["hs_post"][self.ip[me]] += 6

    def device(self, me: str) -> Device:
        peers: list[Peer] = []
        for other in self.names:
            if other != me:
                hs = self.last_hs[frozenset((me, other))]
                peers.append(Peer(key(other), f"{self.ip[other]}:51820", (f"10.42.{len(peers)}.0/24",), hs,
                                  self.rx[(me, other)], self.tx[(me, other)], 25))  # fmt: skip
        return Device("flannel-wg", 51820, key(me), tuple(peers))

    def tick(self) -> None:
        self.t += TICK_S
        self.network()
        for me in self.names:
            counts = {k: dict(v) for k, v in self.counts[me].items()}
            rule = RULE if (me in self.blocked_host and me in self.last and self.last[me].needs_rule) else None
            inputs = agent.Inputs(
                self.t, self.device(me), self.view, dict(self.reports),
                host=rp.HostFacts(public=self.ip[me], nat=False, provider="hetzner"),
                arrivals=self.arrivals[me], counts=counts, rule=rule or (RULE if me in self.blocked_host else None),
            )  # fmt: skip
            self.arrivals[me] = []
            out, state = agent.step(me, inputs, self.states[me], m.MeshPolicy(), rand=self.rand.random)
            for target in out.probes:
                if target.node not in self.blocked_path:
                    self.arrivals[target.node].append(pb.Arrival(me, self.ip[me], self.t))
                    if target.node not in self.blocked_host:
                        self.counts[target.node]["pass"][self.ip[me]] += 1
            if out.publish.write:
                self.reports[me] = rp.encode(out.report)
                state = agent.written(state, out.report, self.t)
                self.writes[me] += 1
            self.states[me] = state
            self.last[me] = out

    def run(self, seconds: float) -> None:
        for _ in range(int(seconds / TICK_S)):
            self.tick()

    def cells(self, viewer: str = "a") -> dict[tuple[str, str], tuple[str, str, str | None]]:
        d = self.last[viewer].diagnosis
        return {k: (p.state, p.cause, p.node) for k, p in d.faulty.items()}


def test_a_healthy_day_has_no_faulty_cell_and_at_most_two_writes_per_node_per_hour() -> None:
    sim = Sim(["a", "b", "c"])
    sim.run(3600)  # warm up: every probe seen once, reports settled
    before = Counter(sim.writes)
    for _ in range(23):
        for _ in range(int(3600 / TICK_S)):
            sim.tick()
            for n in sim.names:
                assert sim.last[n].diagnosis.faulty == {}, (sim.t - START, n, sim.cells(n))
                assert sim.last[n].diagnosis.problems == (), (sim.t - START, n)
    per_hour = {n: (sim.writes[n] - before[n]) / 23 for n in sim.names}
    assert all(v <= 2 for v in per_hour.values()), per_hour


def first_named(sim: Sim, expected: dict[tuple[str, str], tuple[str, str, str | None]], limit_s: float) -> float:
    started = sim.t
    while sim.t - started <= limit_s:
        sim.tick()
        if all(sim.cells(n) == expected for n in sim.names):
            return sim.t - started
    raise AssertionError(f"not named within {limit_s} s: {sim.cells()}")


def test_udp_dropped_on_the_path_to_c_is_named_within_210_s_and_clears() -> None:
    sim = Sim(["a", "b", "c"])
    sim.run(3600)
    sim.blocked_path.add("c")
    down = ("down", m.INBOUND_BLOCKED_UPSTREAM, "c")
    took = first_named(sim, {("a", "c"): down, ("b", "c"): down, ("c", "a"): down, ("c", "b"): down}, 210)
    assert took <= 210
    sim.blocked_path.clear()
    sim.run(600)
    assert all(sim.cells(n) == {} for n in sim.names)


def test_a_host_firewall_dropping_wireguard_on_c_is_named_within_210_s_with_the_rule() -> None:
    sim = Sim(["a", "b", "c"])
    sim.run(3600)
    sim.blocked_host.add("c")
    host = ("down", m.INBOUND_BLOCKED_HOST, "c")
    first_named(sim, {("a", "c"): host, ("b", "c"): host, ("c", "a"): host, ("c", "b"): host}, 210)
    assert RULE in sim.last["a"].diagnosis.cell("a", "c").fix
    assert [r.reason for r in sim.last["c"].events] in ([], ["MeshPathDown"], ["MeshPathDown", "InboundBlocked"])
    sim.blocked_host.clear()
    sim.run(900)
    assert all(sim.cells(n) == {} for n in sim.names)


# --- single passes -----------------------------------------------------------------------------


def one_pass(policy: m.MeshPolicy, **kw: object) -> agent.Outputs:
    sim = Sim(["a", "b"])
    inputs = agent.Inputs(sim.t, sim.device("a"), sim.view, {}, **kw)  # type: ignore[arg-type]
    out, _ = agent.step("a", inputs, agent.start(sim.t - 10), policy, rand=lambda: 0.0)
    return out


def test_probing_off_publishes_no_interval_and_sends_nothing() -> None:
    out = one_pass(m.MeshPolicy(probe=False))
    assert out.probes == [] and out.report.probe_interval_s is None and out.report.inbound.state == "off"
    assert out.publish.reason == "first"


def test_the_first_pass_probes_whoever_is_due() -> None:
    out = one_pass(m.MeshPolicy(), tap_state="ok")
    assert [t.node for t in out.probes] == ["b"]  # rand() = 0: due at once
    assert out.report.probe_interval_s == 300


def test_a_tap_that_cannot_run_says_why_in_the_report() -> None:
    out = one_pass(m.MeshPolicy(), tap_state="no CAP_NET_RAW: the AF_PACKET socket that sees probes needs it")
    assert out.report.inbound.state.startswith("no CAP_NET_RAW")


def test_the_final_report_is_marked_stopped() -> None:
    out = one_pass(m.MeshPolicy())
    assert agent.final_report(out).state == rp.STOPPED


def test_metrics_helpers() -> None:
    out = one_pass(m.MeshPolicy())
    assert agent.peer_metrics(out.observation) == {"b": (10.0, "ok")}
    assert agent.pairs_by_state(out.diagnosis) == {"ok": 1, "degraded": 0, "down": 0, "unknown": 1}
