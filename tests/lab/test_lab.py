"""``make lab-check`` as a test, and the lab's tear-down when it is interrupted.

Both run ``python -m tests.cluster`` as a child process, exactly as ``scripts/lab`` does, and
then look for anything it left: a namespace or temp dir named for its PID, or a process that
ran in one of its namespaces (PIDs and start times recorded while it ran).
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.cluster.__main__ import TOOLS
from tests.conftest import ROOT, require
from tests.labkit import PREFIX, sh


def start(*args: str) -> subprocess.Popen[bytes]:
    require(*TOOLS, root=True)
    return subprocess.Popen(
        [sys.executable, "-m", "tests.cluster", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        bufsize=0,
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def read_until(proc: subprocess.Popen[bytes], text: str, out: list[str], timeout: float = 60) -> None:
    """Read the child's output into ``out`` until it contains ``text`` (unbuffered: nothing is
    left in a buffer that select() cannot see)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while text not in "".join(out):
        ready, _, _ = select.select([proc.stdout], [], [], max(deadline - time.monotonic(), 0))
        chunk = os.read(proc.stdout.fileno(), 65536) if ready else b""
        if not chunk:
            pytest.fail(f"no {text!r} in the output within {timeout} s (rc {proc.poll()}):\n{''.join(out)}")
        out.append(chunk.decode(errors="replace"))


def finish(proc: subprocess.Popen[bytes], out: list[str], timeout: float) -> str:
    rest, _ = proc.communicate(timeout=timeout)
    return "".join(out) + rest.decode(errors="replace")


def namespaces(pid: int) -> list[str]:
    names = (line.split()[0] for line in sh("ip", "netns", "list", check=False).splitlines() if line.split())
    return [n for n in names if n.startswith(f"{PREFIX}{pid}x")]


def processes(pid: int) -> set[tuple[int, str]]:
    """(PID, start time) of every process now in one of the lab's namespaces."""
    found = set()
    for ns in namespaces(pid):
        for p in sh("ip", "netns", "pids", ns, check=False).split():
            try:
                found.add((int(p), Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[19]))
            except (OSError, IndexError):
                continue
    return found


def leftovers(pid: int, seen: set[tuple[int, str]]) -> list[str]:
    left = [f"namespace {n}" for n in namespaces(pid)]
    left += [f"dir {d}" for d in Path(tempfile.gettempdir()).glob(f"{PREFIX}{pid}x*")]
    for p, started in seen:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            if fields[19] == started and fields[0] != "Z":  # a zombie has ended; init reaps it
                left.append(f"process {p}: {Path(f'/proc/{p}/cmdline').read_text().replace(chr(0), ' ')}")
        except OSError:
            continue
    return left


def test_lab_check_reaches_the_end_state_and_leaves_nothing() -> None:
    proc = start("--check")
    out: list[str] = []
    read_until(proc, "bring-up:", out)
    seen = processes(proc.pid)
    text = finish(proc, out, 150)
    assert proc.returncode == 0, text
    bring_up = float(re.search(r"bring-up: ([\d.]+) s", text).group(1))  # type: ignore[union-attr]
    assert bring_up < 60, text
    assert "lab-check: ok" in text and "torn down in" in text
    # every node, every process it should have: 3 wgagent, 3 wireguard-go, stand-ins, STUN servers
    assert len(seen) >= 11, seen
    assert leftovers(proc.pid, seen) == []


@pytest.mark.parametrize(
    ("after", "sig", "code", "says"),
    [
        ("network:", signal.SIGINT, 130, "interrupted"),  # processes not started yet
        ("API stand-in", signal.SIGINT, 130, "interrupted"),  # half the processes up, wireguard-go next
        ("PUBLIC IP", signal.SIGTERM, 0, "stopped"),  # the live view: the usual way to end it
    ],
    ids=["after the network", "after the stand-in", "in the live view"],
)
def test_an_interrupted_lab_tears_everything_down(after: str, sig: signal.Signals, code: int, says: str) -> None:
    proc = start()
    out: list[str] = []
    read_until(proc, after, out)
    seen = processes(proc.pid)
    proc.send_signal(sig)
    text = finish(proc, out, 60)
    assert proc.returncode == code, text
    assert f"{says} ({sig.name}): tearing down" in text and "torn down in" in text, text
    assert "Traceback" not in text
    assert leftovers(proc.pid, seen) == []
