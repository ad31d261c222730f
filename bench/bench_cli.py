"""The commands' whole-process cost: ``wgagent version`` and ``wgagent status`` start, and a whole
``wgagent gc`` process over 10,000 dead peers vs the seed's ``wg set … remove`` loop.

    sudo python3 bench/bench_cli.py [--runs 20] [--peers 10000] [--loop-sample 1000] [--gc-runs 3]

Each command runs as the .deb installs it: a console script (``from wgagent.cli import main``)
under this interpreter, spawn to exit, alternating with its baseline in the same run:

- ``wgagent version`` vs ``python3 -c pass``: the version needs no import at all.
- ``wgagent status`` (a real daemon answers on loopback, every check passing) vs
  ``python3 -c "import argparse, dataclasses, http.client, json, yaml"``: the imports a status
  command needs (its flags; the config file, YAML into frozen dataclasses; one HTTP GET; JSON).
  Everything else it loads, wgagent's own config schema included, counts against it.

Target for both: the median at most 1.2x the median baseline.

``wgagent gc`` (needs root and wireguard-go; ``--no-gc`` skips it): in a network namespace this
script makes, wireguard-go runs ``wg0`` with ``--peers`` dead peers (made as in bench_gc.py: half
with allowed IPs and no Node's key, half without, seen an hour ago). The whole process is
timed, spawn to exit: interpreter start, imports, config, the node list from the API stand-in
over HTTPS (two Nodes, neither a peer here), the UAPI get, the decision, one set transaction,
the first-seen file, the printed report. The baseline, on the same device in the same run:
the seed's ``for i in $(wg show wg0 peers); do wg set wg0 peer $i remove; done``, timed on
``--loop-sample`` peers and scaled to all. Target: the process at least 40x faster.

Exit code 1 when a target is missed, 2 when it cannot run. Nothing leaves the machine: the
daemon, the API stand-in and the UAPI socket are on loopback or in the namespace.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_gc import IF, peer_count, populate, time_loop, uapi
from bench.bench_start import AgentEnv
from tests.labkit import Lab, free_port
from tests.support import configs

START_TARGET = 1.2
GC_TARGET = 40.0
STATUS_NEEDS = "import argparse, dataclasses, http.client, json, yaml"

LAUNCHER = """\
import sys
from wgagent.cli import main
sys.exit(main())
"""
"""What setuptools writes for ``[project.scripts] wgagent = "wgagent.cli:main"`` (the .deb's /usr/bin/wgagent)."""


def spawn_s(argv: list[str], env: dict[str, str], expect: int = 0) -> float:
    started = time.perf_counter()
    out = subprocess.run(argv, env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    if out.returncode != expect:
        raise SystemExit(f"bench: {' '.join(argv)} exited {out.returncode}: {out.stderr.strip()[-500:]}")
    return took


def alternate(a: list[str], b: list[str], env: dict[str, str], runs: int) -> tuple[list[float], list[float]]:
    """``runs`` spawn-to-exit times of each, alternating (after one untimed warm-up of each)."""
    spawn_s(a, env)
    spawn_s(b, env)
    ta, tb = [], []
    for _ in range(runs):
        ta.append(spawn_s(a, env))
        tb.append(spawn_s(b, env))
    return ta, tb


def row(measure: str, values: list[float], base: list[float], base_name: str, target: float) -> dict[str, Any]:
    v, b = statistics.median(values), statistics.median(base)
    return {
        "bench": "cli",
        "measure": measure,
        "value": f"{v * 1e3:.1f} ms",
        "baseline": f"{b * 1e3:.1f} ms {base_name}",
        "ratio": v / b,
        "target": f"<= {target:g}x",
        "ok": v / b <= target,
    }


def installed_like(env: AgentEnv) -> None:
    """Byte-compiled, as the .deb installs it (py3compile at install): without the cache every
    run would compile wgagent's sources again, and the command would be timed compiling."""
    env.env.pop("PYTHONDONTWRITEBYTECODE", None)


def measure_start(runs: int, launcher: str) -> list[dict[str, Any]]:
    env = AgentEnv()
    installed_like(env)
    try:
        config = env.healthy_config("status", free_port())
        py = sys.executable
        version, bare = alternate([py, launcher, "version"], [py, "-c", "pass"], env.env, runs)
        with env.agent(config):
            status, needs = alternate([py, launcher, "--config", config, "status"], [py, "-c", STATUS_NEEDS],
                                      env.env, runs)  # fmt: skip
    finally:
        env.close()
    return [
        row("wgagent version: spawn to exit", version, bare, "python3 -c pass", START_TARGET),
        row("wgagent status (daemon on loopback): spawn to exit", status, needs, "its imports alone", START_TARGET),
    ]


def measure_gc(peers: int, sample: int, runs: int, launcher: str) -> list[dict[str, Any]]:
    env = AgentEnv()
    installed_like(env)
    try:
        env.start_standins()  # the API stand-in: Nodes node1 and node2
        with Lab() as lab, tempfile.TemporaryDirectory(prefix="wgbench-") as state_dir:
            host = lab.host("bench")
            _, uapi_dir = lab.wireguard_go(host, IF)
            reply = uapi(uapi_dir, f"set=1\nprivate_key={os.urandom(32).hex()}\nlisten_port=51820\n\n".encode())
            assert reply == b"errno=0\n\n", reply
            lab.run(host, "ip", "link", "set", IF, "up")
            cfg = configs.sandbox(
                state_dir,
                free_port(),
                log_level="warning",
                kube={"enabled": True, "kubeconfig": env.kube["nodes"]["node1"],
                      "list_kubeconfig": env.kube["k3scontroller"]},
                wireguard={"enabled": True, "interface": IF, "uapi_dir": uapi_dir,
                           "gc": {"enabled": True, "max_removals_per_pass": peers}},
            )  # fmt: skip
            cfg["state_dir"] = state_dir
            config = configs.write(os.path.join(state_dir, "config.yaml"), cfg)
            argv = [sys.executable, launcher, "--config", config, "gc"]
            process_s = []
            for _ in range(runs + 1):  # the first: warm-up, untimed
                populate(uapi_dir, peers, state_dir)
                took = spawn_s(argv, env.env)
                left = peer_count(uapi_dir)
                if left:
                    raise SystemExit(f"bench: wgagent gc left {left} of {peers} dead peers")
                process_s.append(took)
            process_s = process_s[1:]
            populate(uapi_dir, peers, state_dir)
            show_s, sample_s = time_loop(lab, host, uapi_dir, sample)
    finally:
        env.close()
    loop_s = show_s + peers * sample_s / sample
    p = statistics.median(process_s)
    return [
        {
            "bench": "cli",
            "measure": f"wgagent gc process over {peers:,} dead peers (wireguard-go), spawn to exit",
            "value": f"{p * 1e3:.0f} ms",
            "baseline": f"{loop_s:.1f} s wg set loop (timed on {sample}, scaled)",
            "ratio": p / loop_s,
            "target": f"<= {1 / GC_TARGET:.3f}x (loop >= {GC_TARGET:g}x slower)",
            "ok": loop_s / p >= GC_TARGET,
            "detail": {"process_s": process_s, "show_s": show_s, "sample_s": sample_s},
        }
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="spawns of each command and baseline (default 20)")
    ap.add_argument("--peers", type=int, default=10_000)
    ap.add_argument("--loop-sample", type=int, default=1000)
    ap.add_argument("--gc-runs", type=int, default=3)
    ap.add_argument("--no-gc", action="store_true", help="only the start of version and status")
    ap.add_argument("--json", action="store_true", help="print the result rows as JSON")
    args = ap.parse_args()
    gc = not args.no_gc
    missing = [t for t in ("ip", "wireguard-go", "wg", "unshare", "mount") if shutil.which(t) is None]
    if gc and (os.geteuid() != 0 or missing):
        print(f"bench: the gc part needs root and {', '.join(missing) or 'nothing else'} (--no-gc skips it)",
              file=sys.stderr)  # fmt: skip
        return 2
    with tempfile.TemporaryDirectory(prefix="wgbench-cli-") as tmp:
        launcher = os.path.join(tmp, "wgagent")
        Path(launcher).write_text(LAUNCHER)
        rows = measure_start(args.runs, launcher)
        if gc:
            rows += measure_gc(args.peers, args.loop_sample, args.gc_runs, launcher)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "detail"} for r in rows]))
    else:
        print(f"{sys.executable}; medians of {args.runs} spawns each, alternating with the baseline")
        for r in rows:
            verdict = "ok" if r["ok"] else "MISSED"
            print(f"{r['measure']}: {r['value']} vs {r['baseline']}: {r['ratio']:.3g}x, target {r['target']}: "
                  f"{verdict}")  # fmt: skip
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
