"""The soak: thousands of reconcile cycles of the real parts on loopback, with RSS measured.

    python -m tests.support.soak --cycles 10000 --warmup 1000 --dir /tmp/soak    # one JSON line

Run as its own process so that its RSS is the agent's alone: the stand-ins it talks to
(the API stand-in and the echo/STUN stand-ins) run as child processes, each in its own.

One cycle is one reconcile pass of every part, stage by stage as the daemon's first pass
runs them, plus one scrape of the health endpoint:

- ``PublicIPPart``: two HTTP echoes and one STUN server on 127.0.0.1/127.0.0.2, quorum 2;
  every ``--flip-every`` cycles the echoes answer the other address, so a new address is
  adopted, saved and passed on (and the STUN answer, 127.0.0.1, is always rejected);
- ``NodeWatch`` (its stream runs all along, as in the daemon) and ``AnnotationPart`` with
  the real ``KubeClient`` over HTTPS to the API stand-in: a new address is patched, the
  k3s restart makes the stand-in's flannel re-read it, the watch wakes the part again;
- ``K3sPart``: the real drop-in in a temp dir (written on every new address), the scan of
  k3s's config, and the ``Restarter`` with an in-memory ``systemctl`` (restart allowed at
  once, saved to its history file);
- ``ModulePart`` on this machine (the probe's answer is cached after the first pass);
- ``InterfacePart`` and ``GCPart`` on an in-memory WireGuard device (``FakeBackend``) of
  ~90 peers, a new one every cycle, never handshaking; the parts' clock advances 2 s per
  cycle, so the oldest pass ``stale_after_s`` and are removed, and the first-seen file is
  rewritten every cycle; sysfs and /proc/net are fake files in the temp dir;
- ``GET /healthz`` on the real health server (and ``GET /metrics`` every 10th cycle).

RSS (VmRSS, after ``gc.collect()``) is taken after the warm-up cycles and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.labkit import free_port, terminate
from wgagent import __version__
from wgagent.config import (
    Config,
    GCConfig,
    K3sConfig,
    KubeConfig,
    ListenAddress,
    MeshConfig,
    PublicIPConfig,
    WireGuardConfig,
)
from wgagent.health import HealthServer
from wgagent.k3s.role import Identity, Role
from wgagent.k3s.scan import ConfigLocation
from wgagent.kube.watch import NodeWatch
from wgagent.part import Part
from wgagent.proc import CommandResult
from wgagent.state import State
from wgagent.wireguard.backend import HostNet
from wgagent.wireguard.fake import FakeBackend
from wgagent.wireguard.model import Device, Peer, key_from_bytes
from wgagent.wiring import Seams, build_parts

NODE = "n1"
IFACE = "flannel-wg"
ADDRESSES = ("203.0.113.40", "198.51.100.40")


def rss_kb(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Children:
    """The stand-ins, as child processes; all stopped by ``close()``."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, argv: Sequence[str], cwd: str) -> tuple[subprocess.Popen[str], str]:
        env = dict(os.environ, PYTHONPATH=cwd)
        proc = subprocess.Popen(
            [sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=cwd
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        if not first:
            raise RuntimeError(f"{argv[1]} did not start")
        # The echo stand-ins print every request: keep their pipe drained (and keep nothing).
        threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
        return proc, first

    def close(self) -> None:
        for proc in self.procs:
            terminate(proc, timeout=5)


def _drain(stream: Any) -> None:
    while stream.read(65536):
        pass


class FakeSystemctl:
    """k3s is active; a restart makes the stand-in's flannel re-read the overwrite."""

    def __init__(self, control: _Control) -> None:
        self.control = control
        self.restarts = 0

    async def run(self, argv: Sequence[str], *, timeout_s: float) -> CommandResult:
        if argv[1] == "is-active":
            return CommandResult(0, "active\n", "")
        if argv[1] == "--no-block":
            self.restarts += 1
            await self.control.post({"action": "k3s_restart", "node": NODE})
            return CommandResult(0, "", "")
        return CommandResult(0, "0\n", "")


class _Control:
    """POST /_standin/control with the admin token (one kept-alive TLS connection)."""

    def __init__(self, url: str, ca: str, admin_kubeconfig: str) -> None:
        host, port = url.removeprefix("https://").rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.ctx = ssl.create_default_context(cafile=ca)
        with open(admin_kubeconfig) as f:
            kc = yaml.safe_load(f)
        self.token = kc["users"][0]["user"]["token"]

    async def post(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ctx)
        writer.write(
            b"POST /_standin/control HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {self.token}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        await reader.read()
        writer.close()


async def scrape(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return int(data.split(b" ", 2)[1])


def fake_net(base: Path) -> HostNet:
    link = base / "sys" / IFACE
    link.mkdir(parents=True)
    (link / "flags").write_text("0x1091\n")
    (link / "uevent").write_text(f"INTERFACE={IFACE}\nDEVTYPE=wireguard\n")
    proc = base / "proc"
    proc.mkdir()
    (proc / "udp").write_text("  sl  local_address rem_address   st\n    1: 00000000:CA6C 00000000:0000 07\n")
    return HostNet(sys_class_net=str(base / "sys"), proc_net=str(proc))


class Soak:
    def __init__(self, work: Path, kube: dict[str, Any], echo_ports: Sequence[int], stun_port: int) -> None:
        self.work = work
        self.cycle = 0
        self.t0 = time.time()
        self.echo_ports = echo_ports
        self.stun_port = stun_port
        self.kube = kube
        self.peers: list[Peer] = []
        self.backend = FakeBackend({IFACE: Device(IFACE, 51820, key_from_bytes(bytes(32)), ())})
        self.control = _Control(kube["url"], kube["ca"], kube["admin"])
        self.systemctl = FakeSystemctl(self.control)
        self.state = State(node=NODE, version=__version__)

    def clock(self) -> float:
        return self.t0 + 2.0 * self.cycle

    def churn(self) -> None:
        """A new never-handshaking peer; what GC removed is gone from the device."""
        dev = self.backend.devices[IFACE]
        new = (Peer(key_from_bytes(os.urandom(32)), "203.0.113.99:51820", (f"10.99.{self.cycle % 250}.0/24",)),)
        self.backend.devices[IFACE] = Device(IFACE, dev.listen_port, dev.public_key, dev.peers + new)

    def build(self) -> tuple[list[list[Part]], NodeWatch]:
        work, state = self.work, self.state
        cfg = Config(
            node_name=NODE,
            state_dir=str(work / "state"),
            public_ip=PublicIPConfig(
                sources=("stun", "http"),
                stun_servers=(f"127.0.0.1:{self.stun_port}",),
                http_echo_urls=tuple(f"http://127.0.0.{i + 1}:{p}/" for i, p in enumerate(self.echo_ports)),
                metadata_provider="none",
                confirmations=1,
                timeout_s=2,
            ),
            kube=KubeConfig(kubeconfig=self.kube["nodes"][NODE], list_kubeconfig=self.kube["k3scontroller"]),
            k3s=K3sConfig(
                role="agent",
                config_dir=str(work / "etc-rancher-k3s"),
                data_dir=str(work / "data"),
                min_restart_interval_s=0,
            ),
            wireguard=WireGuardConfig(
                interface=IFACE,
                manage_module=False,
                uapi_dir=str(work / "run-wireguard"),
                gc=GCConfig(stale_after_s=180),
            ),
            mesh=MeshConfig(enabled=False),  # its probes would leave the host: the soak stays on loopback
        )
        backend = self.backend
        seams = Seams(
            clock=self.clock,
            runner=self.systemctl,
            unit_dirs=[str(work / "units")],
            backends=lambda name, uapi_dir: backend,
            host_net=fake_net(work / "net"),
        )
        identity = Identity(NODE, "soak", Role("agent", "k3s-agent.service", "k3s.role: agent"),
                            ConfigLocation.in_dir(cfg.k3s.config_dir), cfg.k3s.data_dir)  # fmt: skip
        stages = build_parts(cfg, identity, state, seams)  # the daemon's own wiring
        (watch,) = [p for stage in stages for p in stage if isinstance(p, NodeWatch)]
        return stages, watch


async def run(work: Path, kube: dict[str, Any], echoes: Sequence[int], stun: int, args: argparse.Namespace) -> Any:
    soak = Soak(work, kube, echoes, stun)
    stages, watch = soak.build()
    port = free_port()
    health = HealthServer(soak.state, ListenAddress("127.0.0.1", port))
    await health.start()
    stream = asyncio.ensure_future(watch.run())
    samples: list[tuple[int, int]] = []
    codes: set[int] = set()
    baseline = 0
    started = time.monotonic()
    warm_at = started
    try:
        for cycle in range(args.cycles):
            soak.cycle = cycle
            if cycle % args.flip_every == 0:  # the echo stand-ins answer what this file says
                (work / "address").write_text(ADDRESSES[(cycle // args.flip_every) % 2])
            soak.churn()
            soak.backend.transactions.clear()  # the fake's own record of removals: not the agent's memory
            for stage in stages:
                await asyncio.gather(*(part.reconcile() for part in stage))
            codes.add(await scrape(port, "/healthz"))
            if cycle % 10 == 0:
                codes.add(await scrape(port, "/metrics"))
            if cycle + 1 == args.warmup:
                gc.collect()
                baseline = rss_kb()
                warm_at = time.monotonic()
            if (cycle + 1) % 1000 == 0 or cycle + 1 == args.cycles:
                gc.collect()
                samples.append((cycle + 1, rss_kb()))
        status = soak.state.status()
        metrics = soak.state.metrics.render()
    finally:
        stream.cancel()
        for stage in stages:
            for part in stage:
                await part.close()
        await health.stop()
    end = samples[-1][1]
    counted = {
        name: sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", metrics, re.M))
        for name in ("wgagent_gc_removed_total", "wgagent_annotation_patches_total", "wgagent_reconcile_total",
                     "wgagent_public_ip_changes_total", "wgagent_reconcile_errors_total")
    }  # fmt: skip
    return {
        "cycles": args.cycles,
        "warmup": args.warmup,
        "rss_warm_kb": baseline,
        "rss_end_kb": end,
        "growth_kb": end - baseline,
        "samples": samples,
        "seconds": round(time.monotonic() - started, 2),
        "seconds_after_warmup": round(time.monotonic() - warm_at, 2),
        "health_codes": sorted(codes),
        "restarts": soak.systemctl.restarts,
        "counters": counted,
        "peers": len(soak.backend.devices[IFACE].peers),
        "removed_transactions": len(soak.backend.transactions),
        "checks": {name: c["ok"] for name, c in status["checks"].items()},
        "adopted": status["parts"]["public_ip"]["adopted"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.support.soak")
    p.add_argument("--cycles", type=int, default=10_000)
    p.add_argument("--warmup", type=int, default=1_000)
    p.add_argument("--flip-every", type=int, default=100)
    p.add_argument("--dir", required=True)
    args = p.parse_args(argv)
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "units").mkdir(exist_ok=True)
    root = str(Path(__file__).resolve().parents[2])
    children = Children()
    try:
        kube_port = free_port()
        _, line = children.start(
            ["-m", "tests.kubeapi", "--port", str(kube_port), "--nodes", f"{NODE},n2,n3", "--dir", str(work / "kube")],
            root,
        )
        kube = json.loads(line)
        echo_ports = [free_port(host="127.0.0.1"), free_port(host="127.0.0.2")]
        stun_port = free_port(socket.SOCK_DGRAM)
        spec = {
            "services": [
                *(
                    {"kind": "echo", "name": f"echo{i}", "listen": f"127.0.0.{i + 1}:{port}", "mode": "file",
                     "file": str(work / "address")}
                    for i, port in enumerate(echo_ports)
                ),
                {"kind": "stun", "name": "stun", "listen": f"127.0.0.1:{stun_port}", "mode": "reflect"},
            ]
        }  # fmt: skip
        (work / "address").write_text(ADDRESSES[0])
        (work / "ipservices.json").write_text(json.dumps(spec))
        children.start(["-m", "tests.support.ipservices", str(work / "ipservices.json")], root)
        result = asyncio.run(run(work, kube, echo_ports, stun_port, args))
    finally:
        children.close()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
