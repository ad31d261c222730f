"""``make lab`` and ``make lab-check``: the three-node lab, live or checked.

    python -m tests.cluster            bring it up, show the live table until Ctrl-C, tear down
    python -m tests.cluster --check    bring it up, wait for the end state, tear down; exit 0 or 1

Exit codes: 0 (check passed, or the live view was stopped), 1 (check failed or the lab could
not be brought up), 2 (cannot run here: not root, tools missing), 130 (interrupted before the
live view or the check's end). Ctrl-C, SIGTERM and SIGHUP all lead to the same tear-down: every process the lab started,
every namespace it made and its temp dir are removed, also when bring-up fails half-way; a
second Ctrl-C during tear-down is ignored so that it can finish.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

from tests.cluster.cluster import GC_INTERVAL_S, Cluster, sweep
from tests.cluster.observe import Snapshot, observe, problems, render
from tests.labkit import LabError

TOOLS = ("ip", "nft", "wireguard-go", "stund", "turnserver", "openssl")


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP: raised once, in the main thread, wherever it is."""


_interrupted = False


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    global _interrupted
    if not _interrupted:  # the first one only: the next ones must not cut the tear-down short
        _interrupted = True
        raise Interrupted(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except Interrupted:  # arrived while handling another error; the tear-down has run
        return 130


def _main(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.cluster", description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="no live view: assert the end state, exit 0 or 1")
    p.add_argument("--timeout", type=float, default=60, help="seconds the end state may take after bring-up")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("the lab needs root (network namespaces)", file=sys.stderr)
        return 2
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        print(f"missing {', '.join(missing)}: run scripts/setup (as root) first", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # also when started with SIGINT ignored
        signal.signal(sig, _interrupt)
    sweep()
    cluster: Cluster | None = None
    started = time.monotonic()
    code = 1
    try:
        cluster = Cluster(say=lambda line: print(line, flush=True))
        print(f"bringing up the lab: namespaces {cluster.lab.id}-*, files in {cluster.lab.dir}", flush=True)
        cluster.up()
        bring_up = time.monotonic() - started
        print(f"bring-up: {bring_up:.1f} s", flush=True)
        code = check(cluster, args.timeout) if args.check else live(cluster, bring_up)
    except Interrupted as exc:
        print(f"\ninterrupted ({exc}): tearing down", flush=True)
        code = 130
    except (LabError, OSError, TimeoutError) as exc:
        print(f"the lab failed: {exc}", flush=True)
        if cluster is not None:
            print(cluster.lab.logs(), flush=True)
        code = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if cluster is not None:
            t0 = time.monotonic()
            cluster.close()
            print(f"torn down in {time.monotonic() - t0:.1f} s", flush=True)
    return code


def check(cluster: Cluster, timeout: float) -> int:
    """Wait for the end state, then hold it over one more GC pass; print the table either way."""
    t0 = time.monotonic()
    snap, left = _wait_end_state(cluster, timeout)
    if left:
        print(render(cluster, snap, header="NOT converged:"))
        print(f"\nstill wrong after {timeout:.0f} s:\n  " + "\n  ".join(left) + "\n")
        print(cluster.lab.logs())
        return 1
    converged = time.monotonic() - t0
    # Still right after the next GC pass (GC must not take a live peer later on).
    before = _gc_passes(snap)
    snap, left = _wait_end_state(
        cluster,
        3 * GC_INTERVAL_S,
        until=lambda s: all(a != b for a, b in zip(before, _gc_passes(s), strict=True)),
        what="no new GC pass on every node",
    )
    crashed = [p.name for p in cluster.lab.procs if "Traceback" in p.output()]
    left += [f"{name}: a Traceback in its output" for name in crashed]
    print(render(cluster, snap, header=f"converged {converged:.1f} s after bring-up:"))
    if left:
        print("\nwrong after the next GC pass:\n  " + "\n  ".join(left) + "\n")
        print(cluster.lab.logs())
        return 1
    print("\nlab-check: ok (nat1's public-ip fixed, dead peers gone, live peers kept, drop-ins right, /healthz)")
    return 0


def _gc_passes(snap: Snapshot) -> tuple[str | None, ...]:
    return tuple(
        ((st.part("peer_gc").get("interfaces") or [{}])[0] or {}).get("at") for _, st in sorted(snap.nodes.items())
    )


def _wait_end_state(
    cluster: Cluster, timeout: float, *, until: Callable[[Snapshot], bool] | None = None, what: str = ""
) -> tuple[Snapshot, list[str]]:
    """Poll until no problem is left (and ``until`` holds); the last look and what is still wrong."""
    deadline = time.monotonic() + timeout
    while True:
        snap = observe(cluster)
        left = problems(cluster, snap)
        if not left and (until is None or until(snap)):
            return snap, []
        if time.monotonic() > deadline:
            return snap, left or [f"{what} within {timeout:.0f} s"]
        time.sleep(0.5)


def live(cluster: Cluster, bring_up: float) -> int:
    """The table, refreshed every second, until a signal: the usual way to end, so exit 0."""
    try:
        _refresh(cluster, bring_up)
    except Interrupted as exc:
        print(f"\nstopped ({exc}): tearing down", flush=True)
    return 0


def _refresh(cluster: Cluster, bring_up: float) -> None:
    tty = sys.stdout.isatty()
    t0 = time.monotonic()
    converged: float | None = None
    shown = ""
    while True:
        snap = observe(cluster)
        left = problems(cluster, snap)
        if not left and converged is None:
            converged = time.monotonic() - t0
        body = render(cluster, snap)
        if left:
            body += "\n\nnot yet right:\n  " + "\n  ".join(left)
        up = int(time.monotonic() - t0)
        state = f"converged {converged:.1f} s after bring-up" if converged is not None else "converging"
        head = f"wgagent lab, up {up // 60}:{up % 60:02d} (bring-up {bring_up:.1f} s, {state}); Ctrl-C tears it down"
        if tty:
            sys.stdout.write("\x1b[H\x1b[2J" + head + "\n\n" + body + "\n")
            sys.stdout.flush()
        elif body != shown:  # a log or a pipe: each new state once
            print(f"\n{head}\n{body}", flush=True)
        shown = body
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
