"""``/healthz`` under wrk (100 connections) vs a bare aiohttp hello-world on the same machine.

    python bench/bench_health.py [--duration 4] [--rounds 8] [--rate 2000]

Both servers are one Python process on the same interpreter and aiohttp, pinned to the
same CPU (``taskset``), and wrk (Debian's ``wrk``, one thread, 100 connections, ``--latency``)
runs pinned to another CPU when there is one, against 127.0.0.1 only. The agent is a real
``wgagent run`` whose checks all pass (public IP pinned, other parts off), so its
``/healthz`` answers 200 with its JSON body; the baseline answers ``ok`` from a bare
``web.Application``. Both run all along; after a warm-up, short wrk runs alternate between
them (so that the machine's drifts in speed hit both alike) and medians are compared. Two
loads, both over 100 connections:

- saturated: plain wrk, each connection sends its next request as soon as the answer
  arrives. Target: the agent's throughput at least 80% of the baseline's. (Its latency is
  shown, not judged: at saturation a request waits behind the other 99, so the latency is
  100 / throughput for any server, about 10 ms here for both: Little's law, not the endpoint.)
- a steady scrape storm: ``--rate`` requests a second spread over the 100 connections (a
  wrk ``delay()`` script: each connection waits a random 0 to 2 x 100/rate s between its
  requests, so that they do not fire in step). Target: the agent's p99 latency (wrk's
  latency distribution) under 5 ms.

Exit code 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_start import AgentEnv
from tests.labkit import free_port, terminate

THROUGHPUT_TARGET = 0.8
P99_TARGET_MS = 5.0
HELLO = """
import sys
from aiohttp import web
async def hello(request):
    return web.Response(text="ok\\n")
app = web.Application()
app.router.add_get("/healthz", hello)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, handle_signals=True)
"""
_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def cpus() -> tuple[str, str]:
    """(server CPU, wrk CPUs): apart when the machine has two or more."""
    mine = sorted(os.sched_getaffinity(0))
    if len(mine) >= 2:
        return str(mine[0]), ",".join(str(c) for c in mine[1:])
    return str(mine[0]), str(mine[0])


def wait_port(port: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")
        time.sleep(0.02)


def wrk(port: int, seconds: float, cpu: str, script: str | None = None) -> dict[str, float]:
    argv = ["taskset", "-c", cpu, "wrk", "-t1", "-c100", f"-d{seconds:g}s", "--latency"]
    if script:
        argv += ["-s", script]
    out = subprocess.run(
        [*argv, f"http://127.0.0.1:{port}/healthz"], capture_output=True, text=True, check=True, timeout=seconds + 30
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"\s99%\s+([\d.]+)(us|ms|s)\b", out)
    assert p99 is not None, out
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "p99_ms": float(p99.group(1)) * _UNIT[p99.group(2)],
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": 1.0 if errors else 0.0,
    }


def bare(port: int, cpu: str, env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(["taskset", "-c", cpu, sys.executable, "-c", HELLO, str(port)], env=env, text=True)
    wait_port(port)
    return proc


def measure(duration_s: float, rounds: int, rate: float) -> list[dict[str, Any]]:
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        raise RuntimeError("needs wrk and taskset (apt install wrk util-linux)")
    server_cpu, wrk_cpu = cpus()
    env = AgentEnv()
    script = env.dir / "steady.lua"
    # each connection waits a random 0..2x the mean between requests, so the 100 do not fire together
    mean_ms = 100 * 1000 / rate
    script.write_text(f"function delay()\n  return math.random(0, {2 * mean_ms:.0f})\nend\n")
    agent_runs: list[dict[str, float]] = []
    bare_runs: list[dict[str, float]] = []
    agent_steady: list[dict[str, float]] = []
    bare_steady: list[dict[str, float]] = []
    bare_port, agent_port = free_port(), free_port()
    proc = bare(bare_port, server_cpu, env.env)
    try:
        with env.agent(env.healthy_config("health", agent_port), taskset=server_cpu):
            for port in (bare_port, agent_port):  # warm-up
                wrk(port, 2, wrk_cpu)
            # Both servers run all along on the same CPU, idle but for the one under load;
            # short runs alternate so that drifts of the machine's speed hit both alike.
            for _ in range(rounds):
                bare_runs.append(wrk(bare_port, duration_s, wrk_cpu))
                agent_runs.append(wrk(agent_port, duration_s, wrk_cpu))
            for _ in range(max(1, rounds // 2)):
                bare_steady.append(wrk(bare_port, duration_s, wrk_cpu, str(script)))
                agent_steady.append(wrk(agent_port, duration_s, wrk_cpu, str(script)))
    finally:
        terminate(proc)
        env.close()
    a_rps = statistics.median(r["rps"] for r in agent_runs)
    b_rps = statistics.median(r["rps"] for r in bare_runs)
    a_p99 = statistics.median(r["p99_ms"] for r in agent_runs)
    b_p99 = statistics.median(r["p99_ms"] for r in bare_runs)
    a_p99_steady = statistics.median(r["p99_ms"] for r in agent_steady)
    b_sp99 = statistics.median(r["p99_ms"] for r in bare_steady)
    offered = statistics.median(r["rps"] for r in agent_steady)
    clean = all(r["non2xx"] == 0 and r["socket_errors"] == 0 for r in agent_runs + agent_steady)
    return [
        {
            "bench": "health",
            "measure": "/healthz throughput, wrk -c100 (requests/s)",
            "value": f"{a_rps:,.0f}/s",
            "baseline": f"{b_rps:,.0f}/s aiohttp hello",
            "ratio": a_rps / b_rps,
            "target": f">= {THROUGHPUT_TARGET:.0%} of baseline",
            "ok": a_rps / b_rps >= THROUGHPUT_TARGET and clean,
            "detail": {
                "agent": agent_runs,
                "bare": bare_runs,
                "agent_steady": agent_steady,
                "bare_steady": bare_steady,
                "server_cpu": server_cpu,
                "wrk_cpu": wrk_cpu,
            },
        },
        {
            "bench": "health",
            "measure": f"/healthz p99 latency, wrk -c100 at {offered:,.0f}/s",
            "value": f"{a_p99_steady:.2f} ms",
            "baseline": f"{b_sp99:.2f} ms aiohttp hello",
            "ratio": a_p99_steady / b_sp99,
            "target": f"< {P99_TARGET_MS:g} ms",
            "ok": a_p99_steady < P99_TARGET_MS,
        },
        {
            "bench": "health",
            "measure": "/healthz p99 latency, wrk -c100 saturated (100 queued)",
            "value": f"{a_p99:.2f} ms",
            "baseline": f"{b_p99:.2f} ms aiohttp hello",
            "ratio": a_p99 / b_p99,
            "target": "(shown, not judged)",
            "ok": True,
        },
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=4.0, help="seconds of each measured wrk run (default 4)")
    p.add_argument("--rounds", type=int, default=8, help="alternating saturated runs of each server (default 8)")
    p.add_argument("--rate", type=float, default=2000, help="requests/s of the steady load (default 2000)")
    p.add_argument("--json", action="store_true", help="print the result rows as JSON")
    args = p.parse_args()
    rows = measure(args.duration, args.rounds, args.rate)
    if args.json:
        print(json.dumps(rows))
    else:
        d = rows[0]["detail"]
        print(f"/healthz, wrk -t1 -c100 -d{args.duration:g}s --latency; server on CPU {d['server_cpu']}, "
              f"wrk on CPU {d['wrk_cpu']}; {args.rounds} rounds, medians")  # fmt: skip
        for name in ("bare", "agent", "bare_steady", "agent_steady"):
            runs = ", ".join(f"{r['rps']:,.0f}/s p99 {r['p99_ms']:.2f} ms" for r in d[name])
            print(f"  {name:>12}: {runs}")
        for r in rows:
            verdict = "ok" if r["ok"] else "MISSED"
            print(f"  {r['measure']}: {r['value']} vs {r['baseline']} ({r['ratio']:.2f}x); target {r['target']}: "
                  f"{verdict}")  # fmt: skip
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
