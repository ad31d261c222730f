"""Kernel WireGuard (Linux 6.1 in user-mode Linux): netlink read, GC pass and interface check vs wg.

    sudo python3 bench/bench_kernel.py [--peers 10000] [--runs 3] [--loop-sample 1000]

Boots the ``wireguard`` user-mode Linux kernel (``scripts/uml-kernel``; see tests/uml) and
runs every measurement inside it, in one run, so every ratio compares two things measured
side by side on the same kernel. ``wg0`` is a kernel WireGuard device in the kernel's own
namespace; its ``--peers`` peers are added with one ``wg addconf`` before each measurement
(untimed): IPv4 and IPv6 endpoints or none, one or two allowed IPs or none, keepalive or
not, never a handshake (their endpoints, 203.0.113.x, route nowhere; the kernel has no link
to the host's network).

- read: wgagent's ``NetlinkBackend.get`` (the dump over a netlink socket, decoded by
  ``genl.py`` into the model) vs ``wg show wg0 dump`` run as a process with its output
  captured. Target: at most 2x (medians of ``--runs``);
- GC: ``wgagent.wireguard.gc.run_gc_pass`` as the daemon calls it (netlink get, select with
  a node list of two live nodes, one removal of every dead peer, every removal logged at
  INFO to /dev/null, the first-seen file saved), ``max_removals_per_pass`` raised to the peer
  count, the first-seen times in memory (an hour ago) before the clock starts. Against
  (a) the seed's loop ``for i in $(wg show wg0 peers); do wg set wg0 peer $i remove; done``,
  timed on the first ``--loop-sample`` peers and scaled: time(wg show) + peers x
  time(sample) / sample. Target: wgagent at least 50x faster; and (b) the floor: ``wg show
  wg0 dump`` then one ``wg set wg0 peer K1 remove peer K2 remove ...`` (wg batches the
  removals into as few netlink messages as fit). Target: at most 3x;
- interface check: ``InterfacePart.reconcile()`` on the device (netlink get, the UDP tables,
  the facts), CPU time per pass (``time.process_time``: inside UML that includes the kernel's
  time on the process's behalf), median of at least 9 passes, as a share of one core at the
  default interval of 30 s. Target: under 1%.

The exit code is 1 when a target is missed, 2 when the kernel cannot run here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.uml import boot, inside, why_not
from tests.uml.wgkit import PeerSpec, keypair, peer_conf, random_key
from wgagent import logs
from wgagent.config import WireGuardConfig
from wgagent.model import ANN_BACKEND_DATA, ClusterView, NodeInfo
from wgagent.state import State
from wgagent.wireguard.backend import HostNet, open_backend
from wgagent.wireguard.gc import FirstSeenStore, GCPolicy, run_gc_pass
from wgagent.wireguard.interface import InterfacePart
from wgagent.wireguard.netlink import NetlinkBackend

IF = "wg0"
READ_TARGET = 2.0
LOOP_TARGET = 50.0
RAW_TARGET = 3.0
CHECK_TARGET = 0.01
CHECK_INTERVAL_S = WireGuardConfig().interface_check_interval_s


def sh(*argv: str, input: str | None = None) -> str:
    return subprocess.run(argv, input=input, capture_output=True, text=True, check=True, timeout=900).stdout


def dead_peers(n: int) -> list[PeerSpec]:
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            out.append(PeerSpec(random_key(), f"203.0.113.{i % 250 + 1}:51820", (f"10.100.{i >> 8}.{i & 255}/32",)))
        elif kind == 1:
            ips = (f"10.101.{i >> 8}.{i & 255}/32", f"fd00:101::{i:x}/128")
            out.append(PeerSpec(random_key(), f"[2001:db8:ffff::{i:x}]:51821", ips))
        elif kind == 2:
            out.append(PeerSpec(random_key()))
        else:
            out.append(PeerSpec(random_key(), None, (f"10.102.{i >> 8}.{i & 255}/32",), keepalive=25))
    return out


def populate(n: int) -> list[str]:
    """``n`` dead peers on wg0, in one ``wg addconf``; their keys."""
    peers = dead_peers(n)
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as f:
        f.write(peer_conf(peers))
        f.flush()
        sh("wg", "addconf", IF, f.name)
    return [p.public_key for p in peers]


def peer_count() -> int:
    return len(sh("wg", "show", IF, "peers").split())


def cluster() -> ClusterView:
    nodes = {}
    for name in ("node1", "node2"):
        data = json.dumps({"PublicKey": keypair()[1], "Port": 51820})
        nodes[name] = NodeInfo(name, {ANN_BACKEND_DATA: data})
    return ClusterView(nodes)


LOOP = asyncio.new_event_loop()
"""One event loop for every measurement, as the daemon has: in UML, making a loop and its
worker thread for each call would cost more than the call."""


def timed(fn: Callable[[], object], runs: int) -> float:
    """The median wall time of ``runs`` calls of ``fn``."""
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return statistics.median(out)


def measure_read(n: int, runs: int) -> tuple[float, float]:
    """(wgagent's get, wg show dump), medians, on a device of ``n`` peers."""
    backend = NetlinkBackend()
    got = len(LOOP.run_until_complete(backend.get(IF)).peers)  # and warm: imports, the worker thread
    assert got == n, got
    wgagent_s = timed(lambda: LOOP.run_until_complete(backend.get(IF)), runs)
    wg_s = timed(lambda: sh("wg", "show", IF, "dump"), runs)
    return wgagent_s, wg_s


def measure_check(runs: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one interface check pass, medians."""
    state = State(node="node0", version="bench")
    view = cluster()
    part = InterfacePart(state, WireGuardConfig(interface=IF), lambda: view, HostNet(), open_backend)
    LOOP.run_until_complete(part.reconcile())
    assert state.checks["wireguard_interface"].ok, state.checks["wireguard_interface"]
    cpu, wall = [], []
    for _ in range(runs):
        c, w = time.process_time(), time.perf_counter()
        LOOP.run_until_complete(part.reconcile())
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(cpu), statistics.median(wall)


def measure_gc(n: int, state_dir: str) -> float:
    keys = populate(n)
    store = FirstSeenStore(state_dir)
    store.get(IF)
    store.put(IF, {k: int(time.time()) - 3600 for k in keys})  # the daemon keeps it in memory
    view = cluster()
    policy = GCPolicy(stale_after_s=300, max_removals_per_pass=n)
    start = time.perf_counter()
    result = LOOP.run_until_complete(
        run_gc_pass(NetlinkBackend(), IF, view, store, now=time.time(), policy=policy, dry_run=False)
    )
    took = time.perf_counter() - start
    if not result.ok or len(result.selection.remove) != n or peer_count() != 0:
        raise SystemExit(f"bench: the GC pass did not remove {n} peers: {result.detail()}")
    return took


def measure_raw(n: int) -> float:
    """``wg show wg0 dump``, then one ``wg set`` removing every peer it listed."""
    populate(n)
    start = time.perf_counter()
    dump = sh("wg", "show", IF, "dump")
    args = []
    for line in dump.splitlines()[1:]:
        args += ["peer", line.split("\t", 1)[0], "remove"]
    sh("wg", "set", IF, *args)
    took = time.perf_counter() - start
    assert peer_count() == 0
    return took


def measure_loop(n: int, sample: int) -> tuple[float, float]:
    """(seconds of ``wg show wg0 peers``, seconds for ``sample`` ``wg set … remove``)."""
    populate(n)
    script = (
        f"s=$(date +%s%N); peers=$(wg show {IF} peers); m=$(date +%s%N); "
        f'for i in $(echo "$peers" | head -n {sample}); do wg set {IF} peer $i remove; done; '
        f"e=$(date +%s%N); echo $s $m $e"
    )
    s, m, e = (int(x) for x in sh("sh", "-c", script).split())
    assert peer_count() == n - sample
    sh("ip", "link", "del", IF)  # the rest, at once
    make_device()
    return (m - s) / 1e9, (e - m) / 1e9


def make_device() -> None:
    private, _ = keypair()
    sh("ip", "link", "add", IF, "type", "wireguard")
    with tempfile.NamedTemporaryFile("w", suffix=".key") as f:
        f.write(private + "\n")
        f.flush()
        sh("wg", "set", IF, "private-key", f.name, "listen-port", "51820")
    sh("ip", "link", "set", IF, "up")


def inside_main(args: argparse.Namespace) -> int:
    n = args.peers
    logs.setup("info", stream=open(os.devnull, "w"))  # noqa: SIM115 - the removals' log lines cost their share
    logging.getLogger("wgagent.wireguard.gc").setLevel(logging.INFO)
    make_device()
    populate(n)
    read_s, show_s = measure_read(n, args.runs)
    check_cpu, check_wall = measure_check(max(args.runs, 9))  # a cheap pass: more of them, a steadier median
    sh("ip", "link", "del", IF)
    make_device()
    gc_s, raw_s = [], []
    with tempfile.TemporaryDirectory(prefix="wgbench-") as state_dir:
        for run in range(args.runs):
            raw_s.append(measure_raw(n))
            gc_s.append(measure_gc(n, state_dir))
            print(f"run {run + 1}: GC pass {gc_s[-1] * 1e3:.0f} ms, wg show dump + wg set {raw_s[-1] * 1e3:.0f} ms")
    show_peers_s, sample_s = measure_loop(n, args.loop_sample)
    loop_s = show_peers_s + n * sample_s / args.loop_sample
    gc, raw = statistics.median(gc_s), statistics.median(raw_s)
    read_ratio, loop_ratio, raw_ratio, share = read_s / show_s, loop_s / gc, gc / raw, check_cpu / CHECK_INTERVAL_S
    print()
    print(f"{n} peers on kernel WireGuard (UML, Linux {os.uname().release}); medians of {args.runs} runs")
    print(f"read: wgagent netlink get {read_s * 1e3:.0f} ms, wg show dump {show_s * 1e3:.0f} ms")
    print(f"gc: wgagent pass {gc * 1e3:.0f} ms, wg show dump + one wg set {raw * 1e3:.0f} ms")
    print(
        f"loop: wg show peers {show_peers_s * 1e3:.0f} ms, {args.loop_sample} x wg set remove {sample_s:.2f} s"
        f" ({sample_s / args.loop_sample * 1e3:.1f} ms each), scaled to {n}: {loop_s:.1f} s"
    )
    print(f"check: interface check pass {check_cpu * 1e3:.0f} ms CPU ({check_wall * 1e3:.0f} ms wall)")
    verdicts = [
        (f"read / wg show dump = {read_ratio:.2f}x (target <= {READ_TARGET:g}x)", read_ratio <= READ_TARGET),
        (f"loop / gc pass = {loop_ratio:.0f}x (target >= {LOOP_TARGET:g}x)", loop_ratio >= LOOP_TARGET),
        (f"gc pass / raw = {raw_ratio:.2f}x (target <= {RAW_TARGET:g}x)", raw_ratio <= RAW_TARGET),
        (
            f"interface check = {share * 100:.3f}% of a core every {CHECK_INTERVAL_S:g} s"
            f" (target < {CHECK_TARGET * 100:g}%)",
            share < CHECK_TARGET,
        ),
    ]
    print()
    for text, ok in verdicts:
        print(f"{text}: {'ok' if ok else 'MISSED'}")
    return 0 if all(ok for _, ok in verdicts) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--loop-sample", type=int, default=1000)
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inside:
        assert inside(), "--inside runs in the kernel"
        return inside_main(args)
    reason = why_not("wireguard")
    if reason:
        print(f"bench_kernel: cannot run: {reason}", file=sys.stderr)
        return 2
    argv = [sys.executable, str(Path(__file__).resolve()), "--inside", *sys.argv[1:]]
    print(f"booting the wireguard UML kernel: {shlex.join(argv)}", flush=True)
    result = boot("wireguard", argv, timeout_s=1800)
    print(result.output, end="")
    if result.status is None:
        print(result.tail(), file=sys.stderr)
        return 2
    return result.status


if __name__ == "__main__":
    sys.exit(main())
