"""``wgagent mesh`` over 1,000 nodes: decode every report, diagnose, render text and JSON.

    python3 bench/bench_mesh.py [--nodes 1000] [--faulty 50] [--runs 5]

The input is what the command reads from one Node LIST: each Node's flannel annotations and
its ``wgagent.io/mesh`` report (healthy, except ``--faulty`` nodes that each list one dead
peer, and one stopped agent: a whole row of unknown cells). Measured in this run:

- wgagent: :func:`wgagent.mesh.diagnose.diagnose` (which decodes every report) plus
  :func:`~wgagent.mesh.render.to_text` and :func:`~wgagent.mesh.render.to_json` (serialised);
- the baseline: ``json.loads`` of every report and ``json.dumps`` of them all again, the
  least any reader of the reports must do.

Target: under 2 s (issue 14), medians over ``--runs``; the ratio to the baseline is shown.
Exit code 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wgagent.mesh import diagnose as dg
from wgagent.mesh import model as m
from wgagent.mesh import render
from wgagent.mesh import report as rp
from wgagent.model import ANN_BACKEND_DATA, ANN_PUBLIC_IP, ClusterView, NodeInfo
from wgagent.wireguard.model import key_from_bytes

TARGET_S = 2.0
NOW = 1_800_000_000


def cluster(n: int, faulty: int) -> tuple[ClusterView, dict[str, str]]:
    names = [f"node-{i:04d}.eu-central.example.internal" for i in range(n)]
    nodes = {}
    for i, name in enumerate(names):
        anns = {
            ANN_BACKEND_DATA: json.dumps({"PublicKey": key_from_bytes(i.to_bytes(4, "big") * 8), "Port": 51820}),
            ANN_PUBLIC_IP: f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
        }
        nodes[name] = NodeInfo(name, anns)
    inbound = rp.Inbound("ok", "ok", n - 1)
    healthy = rp.Report(at=NOW - 30, interface="flannel-wg", probe_interval_s=300, probing_since=NOW - 9000,
                        counts={"peers": n - 1, "ok": n - 1}, inbound=inbound)  # fmt: skip
    reports = {name: rp.encode(healthy) for name in names}
    for i in range(faulty):
        dead = rp.Note(names[i + 1], wg="down", wg_since=NOW - 300, hears=True)
        reports[names[i]] = rp.encode(rp.Report(at=NOW - 30, interface="flannel-wg", inbound=inbound, notes=(dead,)))
    reports[names[-1]] = rp.encode(rp.Report(at=NOW - 30, state=rp.STOPPED))
    return ClusterView(nodes), reports


def wgagent(view: ClusterView, reports: dict[str, str]) -> tuple[float, int]:
    rp.decode.cache_clear()  # a command decodes each report once: measure it cold
    m.parse_ip.cache_clear()
    started = time.perf_counter()
    d = dg.diagnose(view, reports, NOW)
    text = render.to_text(d)
    doc = json.dumps(render.to_json(d))
    return time.perf_counter() - started, len(text) + len(doc)


def baseline(reports: dict[str, str]) -> float:
    started = time.perf_counter()
    json.dumps({name: json.loads(value) for name, value in reports.items()})
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--faulty", type=int, default=50)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    view, reports = cluster(args.nodes, args.faulty)
    ours, base, size = [], [], 0
    for _ in range(args.runs):
        elapsed, size = wgagent(view, reports)
        ours.append(elapsed)
        base.append(baseline(reports))
    med, bmed = statistics.median(ours), statistics.median(base)
    print(f"wgagent mesh over {args.nodes} nodes ({args.faulty} with a dead peer, one agent stopped):")
    print(f"  decode + diagnose + text + JSON  {med * 1000:8.1f} ms  (output {size} bytes)")
    print(f"  baseline: json.loads + dumps     {bmed * 1000:8.1f} ms")
    print(f"  ratio {med / bmed:.1f}x the baseline; target < {TARGET_S:g} s: {'met' if med < TARGET_S else 'MISSED'}")
    return 0 if med < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
