"""API load of the mesh reports: writes per node per hour in a healthy 1,000-node cluster.

    python3 bench/bench_mesh_writes.py [--nodes 1000] [--sampled 3] [--hours 3]

Every node runs the mesh part's pass (:func:`wgagent.mesh.agent.step`, what the part calls every
30 s) with the default intervals. A healthy cluster is symmetric, so ``--sampled`` nodes are
simulated pass by pass, each seeing the whole cluster: flannel's device with a peer per other
Node (a handshake every 2 minutes, keepalive bytes both ways), every other Node's report as it
would publish it (healthy, probing every 300 s since the start), and the probes of every other
Node arriving at their jittered times (``probe.plan`` per sender, as the senders schedule them),
all passing the host firewall. After a warm-up hour (the first probe of every sender seen),
the writes each sampled node's pass decides (``publish.write``) are counted for ``--hours``.

The baseline, measured in the same run over the same passes: an agent writing its report at
every pass (what a node without the publish policy would do: 120 writes per hour).

Target (issue 14): at most 2 writes per node per hour. Exit 1 when missed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wgagent.mesh import agent
from wgagent.mesh import model as m
from wgagent.mesh import probe as pb
from wgagent.mesh import report as rp
from wgagent.model import ANN_BACKEND_DATA, ANN_PUBLIC_IP, ClusterView, NodeInfo
from wgagent.wireguard.model import Device, Peer, key_from_bytes

START = 1_800_000_000.0
PASS_S = 30.0
TARGET = 2.0


def name(i: int) -> str:
    return f"node-{i:04d}"


def key(i: int) -> str:
    return key_from_bytes(i.to_bytes(4, "big") * 8)


def ip(i: int) -> str:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


class Cluster:
    def __init__(self, n: int, sampled: int) -> None:
        self.n = n
        nodes = {name(i): NodeInfo(name(i), {ANN_BACKEND_DATA: json.dumps({"PublicKey": key(i), "Port": 51820}),
                                             ANN_PUBLIC_IP: ip(i)}) for i in range(n)}  # fmt: skip
        self.view = ClusterView(nodes)
        self.healthy = rp.Report(at=int(START), interface="flannel-wg", probe_interval_s=300,
                                 probing_since=int(START), counts={"peers": n - 1, "ok": n - 1},
                                 inbound=rp.Inbound("ok", "ok", n - 1))  # fmt: skip
        """Every unsampled node's report: healthy, refreshed every 30 minutes as theirs are."""
        self.sampled = [name(i) for i in range(sampled)]
        rand = random.Random(1)
        # when each sender's next probe to each sampled node is due (as probe.plan schedules it)
        self.due = {s: {name(j): START + 300 * rand.random() for j in range(n) if name(j) != s} for s in self.sampled}
        self.rand = rand
        self.states = {s: agent.start(START, {}) for s in self.sampled}
        self.reports = {s: "" for s in self.sampled}
        self.passed: dict[str, dict[str, int]] = {s: {} for s in self.sampled}
        self.writes = {s: 0 for s in self.sampled}
        self.passes = 0

    def device(self, me: str, now: float) -> Device:
        ticks = int((now - START) / PASS_S)
        peers = []
        for j in range(self.n):
            if name(j) == me:
                continue
            hs = now - ((j * 7 + ticks * 30) % 120)  # a handshake every 2 minutes, staggered per peer
            peers.append(Peer(key(j), f"{ip(j)}:51820", (f"10.42.{j}.0/24",), hs, 3000 + ticks * 40, 3000 + ticks * 40,
                              25))  # fmt: skip
        return Device("flannel-wg", 51820, key(int(me.split("-")[1])), tuple(peers))

    def arrivals(self, me: str, now: float) -> list[pb.Arrival]:
        out = []
        for sender, at in self.due[me].items():
            if at <= now:
                out.append(pb.Arrival(sender, ip(int(sender.split("-")[1])), at))
                self.due[me][sender] = at + 300 * (1 + pb.JITTER * self.rand.random())
                src = ip(int(sender.split("-")[1]))
                self.passed[me][src] = self.passed[me].get(src, 0) + 1
        return out

    def step(self, now: float, *, count: bool) -> None:
        refreshed = START + (now - START) // m.REFRESH_S * m.REFRESH_S
        others = rp.encode(replace(self.healthy, at=int(refreshed)))
        reports = {n: others for n in self.view.nodes}
        reports.update({s: r for s, r in self.reports.items() if r})
        for me in self.sampled:
            arrivals = self.arrivals(me, now)
            counts = {"pass": dict(self.passed[me]), "hs_pre": {}, "hs_post": {}}
            inputs = agent.Inputs(now, self.device(me, now), self.view, reports, arrivals=arrivals, counts=counts)
            out, state = agent.step(me, inputs, self.states[me], m.MeshPolicy(), rand=self.rand.random)
            if out.publish.write:
                self.reports[me] = rp.encode(out.report)
                state = agent.written(state, out.report, now)
                if count:
                    self.writes[me] += 1
            self.states[me] = state
            if count:
                self.passes += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--sampled", type=int, default=3)
    ap.add_argument("--hours", type=float, default=3.0)
    args = ap.parse_args()
    c = Cluster(args.nodes, args.sampled)
    started = time.perf_counter()
    t = START
    while t < START + 3600:
        c.step(t, count=False)
        t += PASS_S
    end = t + args.hours * 3600
    while t < end:
        c.step(t, count=True)
        t += PASS_S
    per_hour = {s: w / args.hours for s, w in c.writes.items()}
    worst = max(per_hour.values())
    baseline = c.passes / len(c.sampled) / args.hours
    took = time.perf_counter() - started
    print(f"healthy {args.nodes}-node cluster, {len(c.sampled)} nodes simulated pass by pass for {args.hours:g} h "
          f"after a warm-up hour ({took:.0f} s):")  # fmt: skip
    for s, v in sorted(per_hour.items()):
        print(f"  {s}: {v:.2f} writes per hour")
    print(f"writes per node per hour {worst:.2f}  baseline (a write every pass) {baseline:.0f}  "
          f"ratio {worst / baseline:.4f}x  target <= {TARGET:g}: {'met' if worst <= TARGET else 'MISSED'}")  # fmt: skip
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
