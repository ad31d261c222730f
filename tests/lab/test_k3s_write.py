"""The drop-in under hostile conditions: kill -9 mid-write, a full disk, a read-only mount;
and the Restarter driving a fake ``systemctl`` found first on PATH.

Everything happens in temp dirs and, for the mounts, in a private mount namespace that dies
with its process: nothing is left mounted, and no real k3s or systemd is touched.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, require
from wgagent import fsutil
from wgagent.config import K3sConfig
from wgagent.k3s.restart import Restarter
from wgagent.metrics import Registry
from wgagent.model import RestartResult
from wgagent.proc import SubprocessRunner

KILLS = 1000


def _content(tag: str, size: int) -> bytes:
    """A complete drop-in of about ``size`` bytes whose every line says which version it is."""
    head = f'# version {tag}\nnode-external-ip:\n  - "203.0.113.{len(tag)}"\n'
    filler = f"# padding of version {tag} ................................................\n"
    return (head + filler * (size // len(filler)) + f"# end of version {tag}\n").encode()


def _temps(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if ".wgagent-tmp-" in n]


def test_kill_9_mid_write_leaves_the_old_or_the_new_complete_file(tmp_path: Path) -> None:
    directory = tmp_path / "config.yaml.d"
    path = directory / "50-wgagent.yaml"
    old, new = _content("old", 300_000), _content("new-longer", 700_000)
    fsutil.atomic_write(str(path), old)
    rng = random.Random(4)  # fixed: a failure can be replayed
    mid_write = 0
    seen = {old: 0, new: 0}
    for _ in range(KILLS):
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the writer: alternate the two versions until killed
            try:
                os.close(ready_r)
                os.write(ready_w, b"!")
                while True:
                    fsutil.atomic_write(str(path), new)
                    fsutil.atomic_write(str(path), old)
            finally:
                os._exit(1)
        try:
            os.close(ready_w)
            assert os.read(ready_r, 1) == b"!"
            os.close(ready_r)
            # a random point in the writer's cycle (one cycle takes a few ms here)
            deadline = time.perf_counter() + rng.uniform(0, 0.004)
            while time.perf_counter() < deadline:
                pass
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        content = path.read_bytes()
        assert content in seen, f"torn drop-in after a kill: {len(content)} bytes, starts {content[:40]!r}"
        seen[content] += 1
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        if _temps(directory):
            mid_write += 1
    # the kills did land inside writes (a temp file was left behind), and both versions were seen
    assert mid_write >= KILLS // 10, f"only {mid_write} of {KILLS} kills hit a write in progress"
    assert seen[old] > 0 and seen[new] > 0
    # the next write removes what the killed writers left
    assert len(_temps(directory)) <= 1
    fsutil.atomic_write(str(path), _content("final", 1000))
    assert _temps(directory) == []


_FULL_DISK = textwrap.dedent(
    """
    import asyncio, json, os, subprocess, sys
    from ipaddress import IPv4Address
    from wgagent.config import K3sConfig
    from wgagent.k3s.part import K3sPart
    from wgagent.k3s.restart import Restarter
    from wgagent.k3s.role import Identity, Role
    from wgagent.k3s.scan import ConfigLocation
    from wgagent.proc import CommandResult
    from wgagent.model import PublicAddresses
    from wgagent.state import State

    mnt, state_dir = sys.argv[1], sys.argv[2]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", mnt], check=True)

    class Stopped:  # systemctl: k3s not running, nothing to restart
        async def run(self, argv, *, timeout_s):
            return CommandResult(3, "inactive\\n", "")

    cfg = K3sConfig(config_dir=os.path.join(mnt, "k3s"), role="agent", persistent_wireguard_key=False)
    state = State(node="n1", version="lab")
    restarter = Restarter(cfg, state_dir=state_dir, unit=None, metrics=state.metrics, runner=Stopped())
    address = [PublicAddresses(IPv4Address("203.0.113.7"))]
    identity = Identity("n1", "lab", Role("agent", "k3s-agent.service", "lab"),
                        ConfigLocation.in_dir(cfg.config_dir), os.path.join(mnt, "data"))
    part = K3sPart(state, cfg, identity, public_ip=lambda: address[0], restarter=restarter,
                   unit_dirs=[os.path.join(mnt, "units")])
    path = os.path.join(cfg.config_dir, "config.yaml.d", "50-wgagent.yaml")
    out = {}

    def step(name):
        asyncio.run(part.reconcile())
        check = state.checks["k3s_config"]
        with open(path, "rb") as f:
            content = f.read()
        out[name] = {"ok": check.ok, "detail": check.detail, "content": content.decode(),
                     "dir": sorted(os.listdir(os.path.dirname(path)))}

    step("first")
    filler = os.path.join(mnt, "filler")
    with open(filler, "wb", buffering=0) as f:  # fill the file system to the last page
        try:
            while True:
                f.write(b"x" * 1024)
        except OSError as exc:
            out["fill_errno"] = exc.errno
    address[0] = PublicAddresses(IPv4Address("198.51.100.20"))
    step("full")
    os.unlink(filler)
    subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
    step("read_only")
    subprocess.run(["mount", "-o", "remount,rw", mnt], check=True)
    step("space_again")
    print(json.dumps(out))
    """
)


def test_full_disk_and_read_only_keep_the_old_drop_in_and_fail_the_check(tmp_path: Path) -> None:
    require("unshare", "mount", root=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", _FULL_DISK, str(mnt),
         str(tmp_path / "state")],
        capture_output=True, text=True, timeout=60, env=env, cwd=str(ROOT),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    path = f"{mnt}/k3s/config.yaml.d/50-wgagent.yaml"
    first = out["first"]
    assert first["ok"] and '"203.0.113.7"' in first["content"]
    assert out["fill_errno"] == 28  # ENOSPC
    full = out["full"]
    assert not full["ok"]
    assert full["detail"].startswith(f"cannot write {path}: No space left on device; k3s keeps the previous")
    assert full["content"] == first["content"] and full["dir"] == ["50-wgagent.yaml"]
    read_only = out["read_only"]
    assert not read_only["ok"]
    assert read_only["detail"].startswith(f"cannot write {path}: Read-only file system; k3s keeps the previous")
    assert read_only["content"] == first["content"] and read_only["dir"] == ["50-wgagent.yaml"]
    again = out["space_again"]
    assert again["ok"] and '"198.51.100.20"' in again["content"] and again["dir"] == ["50-wgagent.yaml"]
    # the mount lived only in the namespace
    assert os.listdir(mnt) == []


_FAKE_SYSTEMCTL = """#!/bin/sh
# a stand-in for systemctl: logs its arguments, answers from files in its directory
here=$(dirname "$0")
echo "$*" >> "$here/calls.log"
case "$1" in
  is-active) cat "$here/state"; [ "$(cat "$here/state")" = active ] ;;
  show) cat "$here/started" ;;
  --no-block) [ -e "$here/hang" ] && { echo $$ > "$here/hang"; exec sleep 30; }
              [ -e "$here/deny" ] && { echo "Failed to restart $3: Access denied" >&2; exit 1; }
              echo "$3" >> "$here/restarted"; exit 0 ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"""


@pytest.fixture
def fake_systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "systemctl"
    script.write_text(_FAKE_SYSTEMCTL)
    script.chmod(0o755)
    (bin_dir / "state").write_text("active\n")
    (bin_dir / "started").write_text("0\n")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir


def _restarter(tmp_path: Path, timeout_s: float = 10.0) -> Restarter:
    return Restarter(
        K3sConfig(min_restart_interval_s=0),
        state_dir=str(tmp_path / "state"),
        unit="k3s-agent.service",
        metrics=Registry(),
        runner=SubprocessRunner(),
        timeout_s=timeout_s,
    )


async def request(restarter: Restarter, why: str) -> RestartResult:
    """A part's need, served at once, as the k3s part's pass does."""
    restarter.need("config", why, why)
    result = await restarter.serve()
    assert result is not None
    return result


async def test_restarter_runs_systemctl_from_path(tmp_path: Path, fake_systemctl: Path) -> None:
    result = await request(_restarter(tmp_path), "drop-in changed")
    assert result.restarted, result.detail
    assert (fake_systemctl / "calls.log").read_text().splitlines() == [
        "show --property=ExecMainStartTimestampMonotonic --value k3s-agent.service",
        "is-active k3s-agent.service",
        "--no-block try-restart k3s-agent.service",
    ]
    (fake_systemctl / "state").write_text("inactive\n")
    result = await request(_restarter(tmp_path), "drop-in changed again")
    assert not result.restarted and not result.pending
    assert (fake_systemctl / "restarted").read_text() == "k3s-agent.service\n"


async def test_restarter_reports_a_failing_or_hanging_systemctl(tmp_path: Path, fake_systemctl: Path) -> None:
    (fake_systemctl / "deny").touch()
    result = await request(_restarter(tmp_path), "x")
    assert result.pending and "failed: Failed to restart k3s-agent.service: Access denied" in result.detail
    (fake_systemctl / "deny").unlink()
    (fake_systemctl / "hang").touch()
    started = time.monotonic()
    result = await request(_restarter(tmp_path, timeout_s=0.5), "y")
    assert time.monotonic() - started < 5
    assert result.pending and "systemctl did not finish within 0.5 s" in result.detail
    hung = int((fake_systemctl / "hang").read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left running
        os.kill(hung, 0)


async def test_restarter_without_systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = await request(_restarter(tmp_path), "x")
    assert result.pending and "cannot run systemctl" in result.detail
