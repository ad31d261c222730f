"""Memory and idle CPU of the agent: RSS after start and after the soak, CPU seconds per idle minute.

    python bench/bench_resources.py [--idle-s 30] [--soak-cycles 10000]

- RSS after start: a real ``wgagent run`` with every part on but the mesh, against loopback stand-ins
  (as in ``bench_start.py``), read from /proc 2 s after READY=1. Baseline, in the same run:
  the RSS of a bare ``python3 -c "import aiohttp, pyroute2, yaml, sdnotify"``.
- CPU per idle minute: the same agent's user+system CPU over an idle window of ``--idle-s``
  seconds right after that (the production intervals: interface check every 30 s, k3s and
  module every 60 s, public IP and GC every 300 s, the node watch's stream with a bookmark
  a minute), scaled to a minute. The passes that fell into the window are counted from the
  agent's own ``wgagent_reconcile_total``; with a 30 s window the 60 s parts may or may not
  fall into it, which the count shows.
- RSS after the soak: ``python -m tests.support.soak`` (10,000 cycles of every part, see its
  docstring), its RSS at the end; the baseline is its RSS after the 1,000 warm-up cycles.

Targets: both RSS figures at most 40 MB, CPU under 0.1 s per idle minute; exit code 1 when
one is missed. Only loopback is used.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_start import BARE, AgentEnv, cpu_s, rss_kb
from tests.labkit import free_port

RSS_TARGET_MB = 40.0
CPU_TARGET_S = 0.1


def bare_rss_kb(env: dict[str, str]) -> int:
    code = BARE + "\nfor l in open('/proc/self/status'):\n    l.startswith('VmRSS:') and print(l.split()[1])"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout)


def reconciles(port: int) -> float:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    m = re.search(r"^wgagent_reconcile_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def measure(idle_s: float, soak_cycles: int) -> list[dict[str, Any]]:
    env = AgentEnv()
    try:
        env.start_standins()
        bare = bare_rss_kb(env.env)
        port = free_port()
        with env.agent(env.full_config("resources", port)) as (proc, _):
            time.sleep(2)  # settle after READY=1: the post-start passes and the watch stream
            start_rss = rss_kb(proc.pid)
            passes0, cpu0, t0 = reconciles(port), cpu_s(proc.pid), time.monotonic()
            time.sleep(idle_s)
            cpu1, t1 = cpu_s(proc.pid), time.monotonic()
            passes = reconciles(port) - passes0
        per_min = (cpu1 - cpu0) * 60.0 / (t1 - t0)
    finally:
        env.close()
    with tempfile.TemporaryDirectory(prefix="wgsoak-") as work:
        out = subprocess.run(
            [sys.executable, "-m", "tests.support.soak", "--cycles", str(soak_cycles), "--warmup",
             str(min(1000, soak_cycles // 2)), "--dir", work],
            capture_output=True, text=True, check=True, env=env.env, timeout=1800,
        ).stdout  # fmt: skip
    soak = json.loads(out.strip().splitlines()[-1])
    mb = 1024.0
    return [
        {
            "bench": "resources",
            "measure": "RSS after start (every part but the mesh)",
            "value": f"{start_rss / mb:.1f} MB",
            "baseline": f"{bare / mb:.1f} MB bare import",
            "ratio": start_rss / bare,
            "target": f"<= {RSS_TARGET_MB:g} MB",
            "ok": start_rss / mb <= RSS_TARGET_MB,
        },
        {
            "bench": "resources",
            "measure": f"RSS after the soak ({soak['cycles']:,} cycles)",
            "value": f"{soak['rss_end_kb'] / mb:.1f} MB",
            "baseline": f"{soak['rss_warm_kb'] / mb:.1f} MB after warm-up",
            "ratio": soak["rss_end_kb"] / soak["rss_warm_kb"],
            "target": f"<= {RSS_TARGET_MB:g} MB",
            "ok": soak["rss_end_kb"] / mb <= RSS_TARGET_MB,
            "detail": soak,
        },
        {
            "bench": "resources",
            "measure": f"CPU per idle minute ({idle_s:g} s window x {60 / idle_s:g}; {passes:.0f} part pass(es) in it)",
            "value": f"{per_min:.3f} s",
            "baseline": "-",
            "ratio": None,
            "target": f"< {CPU_TARGET_S:g} s",
            "ok": per_min < CPU_TARGET_S,
        },
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--idle-s", type=float, default=30.0, help="idle window in seconds, scaled to a minute (default 30)")
    p.add_argument("--soak-cycles", type=int, default=10_000, help="soak cycles (default 10,000)")
    p.add_argument("--json", action="store_true", help="print the result rows as JSON")
    args = p.parse_args()
    rows = measure(args.idle_s, args.soak_cycles)
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"resources of wgagent run ({sys.executable})")
        for r in rows:
            ratio = "" if r["ratio"] is None else f" ({r['ratio']:.2f}x)"
            verdict = "ok" if r["ok"] else "MISSED"
            print(f"  {r['measure']}: {r['value']} vs {r['baseline']}{ratio}; target {r['target']}: {verdict}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
