"""Start to READY=1 of ``wgagent run`` vs a bare ``python3 -c "import aiohttp, pyroute2, yaml, sdnotify"``.

    python bench/bench_start.py [--runs 10]

The agent runs with every part on but the mesh (its nftables table and packet tap would be
made in the host's own namespace: bench_mesh.py and bench_mesh_writes.py measure it),
pointed at stand-ins on loopback this script starts
(the API stand-in over HTTPS, two HTTP echoes and a STUN server), k3s paths in a temp dir,
a fake ``systemctl`` first on PATH, WireGuard on with no device to find: the whole start
path (imports, config, health server, the first pass of every part, READY=1), and nothing
leaves the machine. READY=1 is observed on a ``NOTIFY_SOCKET`` this script binds; the time
runs from just before the process is spawned to the arrival of READY=1.

The baseline, measured in the same run with the same interpreter, alternating with the
agent: spawn to exit of the bare import of the agent's four dependencies. Target: the
median start at most 1.5x the median bare import; the exit code is 1 when missed.

Also used by the other benchmarks: :class:`AgentEnv` (the stand-ins and the configs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.labkit import free_port, terminate
from tests.support import configs
from tests.support import systemctl as fake_systemctl
from tests.support.notify import NotifySocket

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.5
BARE = "import aiohttp, pyroute2, yaml, sdnotify"


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    """CPU seconds the process's live threads have run so far, to the nanosecond (schedstat;
    /proc/PID/stat counts in 10 ms clock ticks, too coarse for an idle minute)."""
    total_ns = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as f:
            total_ns += int(f.read().split()[0])
    return total_ns / 1e9


def _drain(stream: Any) -> None:
    while stream.read(65536):
        pass


class AgentEnv:
    """Stand-ins on loopback and config files for a real ``wgagent run`` that reaches nothing else."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="wgbench-"))
        self.procs: list[subprocess.Popen[str]] = []
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.env.pop("JOURNAL_STREAM", None)
        self.env.pop("NOTIFY_SOCKET", None)
        bin_dir = self.dir / "bin"
        bin_dir.mkdir()
        fake_systemctl.install(bin_dir)
        self.env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
        self.kube: dict[str, Any] = {}
        self.echo_urls: list[str] = []
        self.stun: str = ""

    def _start(self, argv: list[str]) -> str:
        proc = subprocess.Popen(
            [sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.env
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        if not first:
            raise RuntimeError(f"{argv[1]} did not start")
        threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
        return first

    def start_standins(self) -> None:
        port = free_port()
        line = self._start(["-m", "tests.kubeapi", "--port", str(port), "--nodes", "node1,node2",
                            "--dir", str(self.dir / "kube")])  # fmt: skip
        self.kube = json.loads(line)
        echoes = [(f"127.0.0.{i}", free_port(host=f"127.0.0.{i}")) for i in (1, 2)]
        stun = free_port(socket.SOCK_DGRAM)
        spec = {
            "services": [
                *({"kind": "echo", "name": f"echo{i}", "listen": f"{h}:{p}", "mode": "fixed", "ip": "203.0.113.50"}
                  for i, (h, p) in enumerate(echoes)),
                {"kind": "stun", "name": "stun", "listen": f"127.0.0.1:{stun}", "mode": "fixed", "ip": "203.0.113.50"},
            ]
        }  # fmt: skip
        (self.dir / "ipservices.json").write_text(json.dumps(spec))
        self._start(["-m", "tests.support.ipservices", str(self.dir / "ipservices.json")])
        self.echo_urls = [f"http://{h}:{p}/" for h, p in echoes]
        self.stun = f"127.0.0.1:{stun}"

    def full_config(self, name: str, port: int) -> str:
        """Every part on, against the stand-ins; its own state and k3s dirs."""
        tmp = self.dir / name
        tmp.mkdir()
        cfg = configs.sandbox(
            str(tmp),
            port,
            log_level="info",
            public_ip={"enabled": True, "sources": ["stun", "http"], "stun_servers": [self.stun],
                       "http_echo_urls": self.echo_urls},
            k3s={"enabled": True, "role": "agent", "restart": True},
            kube={"enabled": True, "kubeconfig": self.kube["nodes"]["node1"],
                  "list_kubeconfig": self.kube["k3scontroller"]},
            wireguard={"enabled": True, "gc": {"enabled": True}},
        )  # fmt: skip
        return configs.write(str(tmp / "config.yaml"), cfg)

    def healthy_config(self, name: str, port: int) -> str:
        """The public IP pinned, everything else off: every check passes, /healthz is 200."""
        tmp = self.dir / name
        tmp.mkdir()
        cfg = configs.sandbox(str(tmp), port, log_level="info", public_ip={"enabled": True, "static": ["203.0.113.7"]})
        return configs.write(str(tmp / "config.yaml"), cfg)

    @contextlib.contextmanager
    def agent(self, config: str, *, taskset: str | None = None) -> Iterator[tuple[subprocess.Popen[str], float]]:
        """A running agent (until the block ends) and its spawn-to-READY=1 time."""
        notify = NotifySocket(str(self.dir / f"notify-{time.monotonic_ns()}.sock"))
        argv = [sys.executable, "-m", "wgagent", "--config", config, "run"]
        if taskset:
            argv = ["taskset", "-c", taskset, *argv]
        log = open(Path(config).parent / "agent.log", "a")  # noqa: SIM115 - closed below
        started = time.monotonic()
        proc = subprocess.Popen(argv, env={**self.env, **notify.env()}, stdout=log, stderr=log, text=True)
        try:
            ready = notify.wait_for("READY=1", timeout=60) - started
            yield proc, ready
        finally:
            terminate(proc)
            notify.close()
            log.close()

    def close(self) -> None:
        for proc in self.procs:
            terminate(proc, timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)


def bare_import_s() -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", BARE], check=True)
    return time.monotonic() - started


def measure(runs: int) -> list[dict[str, Any]]:
    env = AgentEnv()
    try:
        env.start_standins()
        bare_import_s()  # warm the page cache for both
        with env.agent(env.full_config("warm", free_port())):
            pass
        agent, bare = [], []
        for i in range(runs):
            bare.append(bare_import_s())
            with env.agent(env.full_config(f"run{i}", free_port())) as (_, ready):
                agent.append(ready)
    finally:
        env.close()
    a, b = statistics.median(agent), statistics.median(bare)
    return [
        {
            "bench": "start",
            "measure": "wgagent run: spawn to READY=1 (every part but the mesh, loopback stand-ins)",
            "value": f"{a:.3f} s",
            "baseline": f"{b:.3f} s bare import",
            "ratio": a / b,
            "target": f"<= {TARGET:g}x",
            "ok": a / b <= TARGET,
            "detail": {"agent_s": agent, "bare_s": bare},
        }
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10, help="measured starts of each (default 10)")
    p.add_argument("--json", action="store_true", help="print the result rows as JSON")
    args = p.parse_args()
    rows = measure(args.runs)
    if args.json:
        print(json.dumps(rows))
    else:
        r = rows[0]
        d = r["detail"]
        print(f"start to READY=1, {args.runs} runs each, alternating; {sys.executable}")
        print(f"  wgagent run:  median {r['value']}  (min {min(d['agent_s']):.3f}, max {max(d['agent_s']):.3f})")
        print(f"  bare import:  median {r['baseline'].split()[0]} s  (min {min(d['bare_s']):.3f}, "
              f"max {max(d['bare_s']):.3f})")  # fmt: skip
        print(f"  ratio {r['ratio']:.2f}x, target {r['target']}: {'ok' if r['ok'] else 'MISSED'}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
