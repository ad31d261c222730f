"""Reliability: ``kill -9`` of the agent at random moments while it writes, 200 times.

In a network namespace: wireguard-go ``flannel-wg`` with ~1,000 peers, a "public"
interface, a fake ``systemctl`` (k3s active, restarts succeed). The agent runs with every
part that writes a file: the public IP (interface source; adopted address saved to
``public_ip.json``), the k3s drop-in (``config.yaml.d/50-wgagent.yaml``) and its restart
history (``k3s-restarts.json``, restarts allowed at once), and peer GC's first-seen times
(``wireguard-peers-first-seen.json``).

Before every start the world changes, so the start's first pass has all four files to
rewrite: the interface's address flips between two, and the device gets 20 new peers and
loses its 20 oldest. Each of the 200 cycles then:

1. starts the agent and kills it with SIGKILL at a random moment (seeded) between its
   start and a little after the moment it usually reports READY=1, that is during start-up
   and its first pass: reading state, writing the four files, asking systemctl;
2. checks every file the agent owns: each parses and is complete (byte for byte what the
   agent's writer produces for its content: the drop-in is exactly the rendering for one
   of the two addresses, the JSON files are in their canonical encoding, the restart
   history and the first-seen times load whole), and no stray ``*.yaml`` is in k3s's
   drop-in directory;
3. starts the agent again and waits (with a deadline) until it reports READY=1 and a
   STATUS where every check passes, except the WireGuard module check on a kernel without
   WireGuard, and its files name the current address: the restart converged from whatever
   the kill left; then kills that one too, and checks the files again.

The agent is started by forking a Python process that has already imported wgagent (in
the namespace) and calling ``wgagent.cli.main(["--config", ..., "run"])``: the same code
``python -m wgagent run`` runs, without paying the interpreter's 0.5 s of imports 400 times.
That changes nothing about SIGKILL: the process gets no chance to run any code.
Kills that landed while a file was being written leave its temporary file behind; the test
counts them, to show the kills do hit writes, and checks that later writes remove them.
"""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from tests import labkit
from tests.conftest import ROOT, require
from tests.labkit import Host, Lab, Proc
from tests.support import configs
from tests.support import systemctl as fake_systemctl
from tests.support.notify import NotifySocket
from wgagent.config import K3sConfig
from wgagent.k3s.dropin import render_dropin
from wgagent.k3s.restart import Book
from wgagent.model import PublicAddresses
from wgagent.publicip.decide import load_adoption

CYCLES = 200
SEED = 9
IF = "flannel-wg"
ADDRESSES = ("198.51.100.10", "203.0.113.10")
BASE_PEERS = 1000
CHURN = 20
ZYGOTE = r"""
import os, sys
import aiohttp, yaml, sdnotify, pyroute2  # what the agent imports, once, here
import wgagent.cli, wgagent.daemon, wgagent.publicip.interface, wgagent.wireguard.uapi
config = sys.argv[1]
out = sys.stdout.fileno()
for line in sys.stdin:
    notify, log = line.split()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.environ["NOTIFY_SOCKET"] = notify
        code = 1
        try:
            code = wgagent.cli.main(["--config", config, "run"])
        finally:
            os._exit(code)
    os.write(out, f"{pid}\n".encode())
    _, status = os.waitpid(pid, 0)
    os.write(out, f"{status}\n".encode())
"""


@dataclass
class Agent:
    """Starts agents through the zygote; one at a time."""

    zygote: subprocess.Popen[str]
    dir: Path
    n: int = 0

    def start(self) -> tuple[int, NotifySocket, Path]:
        self.n += 1
        notify = NotifySocket(str(self.dir / f"notify-{self.n}.sock"))
        log = self.dir / f"agent-{self.n}.log"
        assert self.zygote.stdin is not None and self.zygote.stdout is not None
        self.zygote.stdin.write(f"{notify.path} {log}\n")
        self.zygote.stdin.flush()
        return int(self.zygote.stdout.readline()), notify, log

    def kill(self, pid: int) -> int:
        os.kill(pid, signal.SIGKILL)
        assert self.zygote.stdout is not None
        return int(self.zygote.stdout.readline())  # the wait status, once it is reaped


@dataclass
class World:
    lab: Lab
    host: Host
    uapi_dir: str
    state_dir: Path
    k3s_cfg: K3sConfig
    agent: Agent
    rng: random.Random
    peers: list[str] = field(default_factory=list)
    address: str = ADDRESSES[0]

    @property
    def dropin(self) -> Path:
        return Path(self.k3s_cfg.config_dir) / "config.yaml.d" / "50-wgagent.yaml"

    def change_the_world(self) -> None:
        """Flip the public address; 20 new peers, 20 oldest gone (one UAPI transaction)."""
        self.address = ADDRESSES[1] if self.address == ADDRESSES[0] else ADDRESSES[0]
        self.lab.run(None, "ip", "-n", self.host.netns, "-batch", "-",
                     input=f"addr flush dev eth0\naddr add {self.address}/24 dev eth0\n")  # fmt: skip
        new = [os.urandom(32).hex() for _ in range(CHURN)]
        old, self.peers = self.peers[:CHURN], self.peers[CHURN:] + new
        lines = [f"public_key={k}\nremove=true" for k in old] + [f"public_key={k}" for k in new]
        uapi_set(self.uapi_dir, lines)


uapi_set = functools.partial(labkit.uapi_set, ifname=IF)


@pytest.fixture
def world(lab: Lab, tmp_path: Path) -> Iterator[World]:
    require("wireguard-go", "ip", root=True)
    host = lab.host("node1")
    router = lab.host("router")
    lab.link(host, "eth0", f"{ADDRESSES[0]}/24", router, "eth1", None)
    _, uapi_dir = lab.wireguard_go(host, IF)
    peers = [os.urandom(32).hex() for _ in range(BASE_PEERS)]
    uapi_set(uapi_dir, [f"private_key={os.urandom(32).hex()}", "listen_port=51820"]
             + [f"public_key={k}\nallowed_ip=10.99.{i >> 8}.{i & 255}/32" for i, k in enumerate(peers)])  # fmt: skip
    lab.run(host, "ip", "addr", "add", "10.42.1.1/16", "dev", IF)
    lab.run(host, "ip", "link", "set", IF, "up")

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_systemctl.install(bin_dir)
    state_dir = tmp_path / "state"
    k3s = {"enabled": True, "role": "agent", "restart": True, "min_restart_interval_s": 0}
    cfg = configs.sandbox(
        str(tmp_path),
        8795,
        log_level="info",
        state_dir=str(state_dir),
        public_ip={"enabled": True, "sources": ["interface"], "confirmations": 1, "interval_s": 1},
        k3s=k3s,
        wireguard={"enabled": True, "interface": IF, "uapi_dir": uapi_dir, "interface_check_interval_s": 1,
                   "module_check_interval_s": 1, "gc": {"enabled": True, "interval_s": 1}},
    )  # fmt: skip
    path = configs.write(str(tmp_path / "config.yaml"), cfg)
    k3s_cfg = K3sConfig(**{k: v for k, v in cfg["k3s"].items() if k != "enabled"})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("JOURNAL_STREAM", None)
    # Agents killed with -9 (or ended by os._exit) write no coverage data: measuring them
    # would only slow them down and make fewer kills land mid-write.
    env.pop("COVERAGE_PROCESS_START", None)
    zygote = subprocess.Popen(
        host.argv(sys.executable, "-c", ZYGOTE, path),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(ROOT),
        start_new_session=True,
    )
    lab.procs.append(Proc("zygote", zygote, str(tmp_path / "zygote.log"), host))  # stopped with the lab
    agents = tmp_path / "agents"
    agents.mkdir()
    w = World(lab, host, uapi_dir, state_dir, k3s_cfg, Agent(zygote, agents), random.Random(SEED), peers)
    yield w
    assert zygote.stdin is not None
    zygote.stdin.close()


# --- what a valid file is ------------------------------------------------------------------------


def canonical_json(content: bytes) -> object:
    """What fsutil.save_json wrote: sorted keys, indent 1, a final newline; else AssertionError."""
    data = json.loads(content)
    assert content == json.dumps(data, sort_keys=True, indent=1).encode() + b"\n", content[-200:]
    return data


def check_files(w: World) -> dict[str, str]:
    """Every file the agent owns is whole; returns what they say."""
    seen: dict[str, str] = {}
    renderings = {render_dropin("agent", PublicAddresses(ipv4=IPv4Address(a)), w.k3s_cfg).encode(): a
                  for a in ADDRESSES}  # fmt: skip
    if w.dropin.exists():
        content = w.dropin.read_bytes()
        assert content in renderings, f"torn drop-in: {content!r}"
        assert w.dropin.stat().st_mode & 0o777 == 0o600
        seen["dropin"] = renderings[content]
    yamls = (
        [p.name for p in w.dropin.parent.glob("*") if p.suffix in (".yaml", ".yml")] if w.dropin.parent.exists() else []
    )
    assert yamls in ([], ["50-wgagent.yaml"]), yamls  # k3s would read any other
    path = w.state_dir / "public_ip.json"
    if path.exists():
        adoption = load_adoption(canonical_json(path.read_bytes()))
        assert adoption is not None and adoption.adopted is not None, path.read_text()
        seen["public_ip"] = str(adoption.adopted.ipv4)
        assert seen["public_ip"] in ADDRESSES
    path = w.state_dir / "k3s-restarts.json"
    if path.exists():
        data = canonical_json(path.read_bytes())
        assert Book.from_json(data).to_json() == data, data  # every entry loads
    path = w.state_dir / "wireguard-peers-first-seen.json"
    if path.exists():
        content = path.read_bytes()
        data = json.loads(content)
        assert content == json.dumps(data, separators=(",", ":")).encode() + b"\n", content[-200:]
        assert data["version"] == 1 and set(data["interfaces"]) == {IF}
        seen_times = data["interfaces"][IF]
        assert seen_times and all(isinstance(t, int | float) for t in seen_times.values())
    return seen


def temps(w: World) -> list[Path]:
    return [p for d in (w.state_dir, w.dropin.parent) if d.exists() for p in d.iterdir() if ".wgagent-tmp-" in p.name]


def converged(notify: NotifySocket) -> bool:
    lines = notify.lines()
    if "READY=1" not in lines:
        return False
    status = [m for m in lines if m.startswith("STATUS=")]
    last = status[-1] if status else ""
    if last.startswith("STATUS=ok: all 6 checks pass"):
        return True
    # "failing 1/6: wireguard_module (...)": a kernel without WireGuard, nothing wgagent can fix
    return last.startswith("STATUS=failing 1/6: wireguard_module ")


def wait_converged(w: World, notify: NotifySocket, log: Path, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not (converged(notify) and check_files(w) == {"dropin": w.address, "public_ip": w.address}):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no convergence within {timeout_s} s: {notify.lines()[-5:]}, files say {check_files(w)}, "
                f"the world says {w.address}\n{log.read_text()[-3000:]}"
            )
        time.sleep(0.005)


# --- the test ---------------------------------------------------------------------------------------


def test_kill_9_at_random_moments_leaves_whole_files_and_every_restart_converges(world: World) -> None:
    w = world
    # How long a start takes here, to spread the kills over start-up and the first pass.
    ready_s = []
    for _ in range(3):
        w.change_the_world()
        started = time.monotonic()
        pid, notify, log = w.agent.start()
        wait_converged(w, notify, log)
        ready_s.append(notify.times("READY=1")[0] - started)
        w.agent.kill(pid)
        notify.close()
    window_s = 1.3 * statistics.median(ready_s)

    left_behind = 0
    killed_mid_write = 0
    for _ in range(CYCLES):
        before = set(temps(w))
        w.change_the_world()
        pid, notify, log = w.agent.start()
        deadline = time.monotonic() + w.rng.uniform(0, window_s)
        while time.monotonic() < deadline:
            pass
        status = w.agent.kill(pid)
        notify.close()
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"the agent exited by itself: {status}"
        check_files(w)
        new = set(temps(w)) - before
        killed_mid_write += bool(new)
        left_behind += len(new)

        w.change_the_world()
        pid, notify, log = w.agent.start()
        wait_converged(w, notify, log)
        w.agent.kill(pid)
        notify.close()
        check_files(w)
        log.unlink()

    # The kills did land inside writes (a temp file left), and later writes cleaned up after them.
    assert killed_mid_write >= 1, f"no kill landed mid-write (window {window_s:.3f} s)"
    lingering = temps(w)
    assert len(lingering) <= 4, lingering  # at most the last kill's, one per file
    print(
        f"{CYCLES} cycles, kill window {window_s * 1000:.0f} ms, {killed_mid_write} kills mid-write, "
        f"{left_behind} temp file(s) left behind by them"
    )
