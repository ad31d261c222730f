"""Peer GC on wireguard-go with 10,000 dead peers: wgagent's pass vs the seed's loop vs one raw UAPI set.

    sudo python bench/bench_gc.py [--peers 10000] [--runs 3] [--loop-sample 500]

In a network namespace this script creates (and deletes), wireguard-go runs ``wg0`` with its
own /run/wireguard. Before each measurement the device gets ``--peers`` dead peers in one UAPI
transaction (untimed): half keys of no Node with allowed IPs, half with none (re-keyed
leftovers), none of them ever handshaked, and a first-seen file saying wgagent saw them an
hour ago. Three ways to remove them, measured in the same run:

- wgagent: one ``GCPart.reconcile()`` exactly as the daemon runs it: UAPI get of the whole
  device, parse, select (the node list has two live nodes, neither a peer here), one set
  transaction, the first-seen file saved, every removal logged (INFO, to /dev/null);
  ``max_removals_per_pass`` is raised to the peer count so one pass takes them all;
- the seed's loop, ``for i in $(wg show wg0 peers); do wg set wg0 peer $i remove; done``: a
  process per peer, so it is timed on the first ``--loop-sample`` peers of the full device
  and scaled: time(wg show) + peers x time(sample removals) / sample;
- one raw UAPI transaction: ``set=1`` with every ``public_key=…/remove=true``, keys known in
  advance (the floor: what any remover must pay wireguard-go).

Targets: wgagent at least 50x faster than the loop and within 3x of the raw transaction
(medians over ``--runs``); the exit code is 1 when either is missed, 2 when it cannot run.
Nothing leaves the namespace: the dead peers' endpoints (203.0.113.x) route nowhere.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import logging
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import labkit
from tests.labkit import Lab
from wgagent import logs
from wgagent.config import Config, GCConfig, WireGuardConfig
from wgagent.model import ANN_BACKEND_DATA, ClusterView, NodeInfo
from wgagent.state import State
from wgagent.wireguard.backend import HostNet
from wgagent.wireguard.gc import FIRST_SEEN_FILE
from wgagent.wireguard.gc.part import GCPart
from wgagent.wireguard.model import Device, key_from_bytes
from wgagent.wireguard.uapi import UapiBackend, encode_remove, parse_get

IF = "wg0"
LOOP_TARGET = 50.0
RAW_TARGET = 3.0


uapi = functools.partial(labkit.uapi, ifname=IF, timeout=120)


def peer_count(uapi_dir: str) -> int:
    return len(parse_get(uapi(uapi_dir, b"get=1\n\n"), IF).peers)


def populate(uapi_dir: str, n: int, state_dir: str) -> list[str]:
    """``n`` dead peers in one transaction, seen by wgagent an hour ago; their keys."""
    keys = [key_from_bytes(os.urandom(32)) for _ in range(n)]
    lines = [b"set=1\n"]
    for i, key in enumerate(keys):
        lines.append(b"public_key=%s\n" % base64.b64decode(key).hex().encode())
        if i % 2 == 0:
            lines.append(
                b"endpoint=203.0.113.%d:51820\nallowed_ip=10.%d.%d.%d/32\n"
                % (i % 250 + 1, 100 + (i >> 16), (i >> 8) & 255, i & 255)
            )
    lines.append(b"\n")
    reply = uapi(uapi_dir, b"".join(lines))
    if reply != b"errno=0\n\n":
        raise SystemExit(f"bench: populating failed: {reply!r}")
    seen = {key: time.time() - 3600 for key in keys}
    with open(os.path.join(state_dir, FIRST_SEEN_FILE), "w") as f:
        json.dump({"version": 1, "interfaces": {IF: seen}}, f)
    return keys


def cluster() -> ClusterView:
    nodes = {}
    for name in ("node1", "node2"):
        key = key_from_bytes(os.urandom(32))
        nodes[name] = NodeInfo(name, {ANN_BACKEND_DATA: json.dumps({"PublicKey": key, "Port": 51820})})
    return ClusterView(nodes)


class TimedBackend:
    """The real UAPI backend, timing its two calls (for the breakdown)."""

    def __init__(self, inner: UapiBackend, spent: dict[str, float]) -> None:
        self.inner, self.spent, self.kind = inner, spent, inner.kind

    async def get(self, ifname: str) -> Device:
        start = time.perf_counter()
        try:
            return await self.inner.get(ifname)
        finally:
            self.spent["get + parse"] = time.perf_counter() - start

    async def remove_peers(self, ifname: str, keys: Sequence[str]) -> None:
        start = time.perf_counter()
        try:
            await self.inner.remove_peers(ifname, keys)
        finally:
            self.spent["set"] = time.perf_counter() - start


def timed_logging(spent: dict[str, float]) -> None:
    """Count the time the log handlers take (formatting, redaction, writing)."""
    for handler in logging.getLogger().handlers:
        original = handler.handle

        def handle(record: logging.LogRecord, original: Any = original) -> bool:
            start = time.perf_counter()
            try:
                return bool(original(record))
            finally:
                spent["logging"] = spent.get("logging", 0.0) + time.perf_counter() - start

        handler.handle = handle  # type: ignore[method-assign]


def time_wgagent(uapi_dir: str, state_dir: str, n: int, spent: dict[str, float]) -> float:
    cfg = Config(
        state_dir=state_dir,
        wireguard=WireGuardConfig(interface=IF, uapi_dir=uapi_dir, gc=GCConfig(max_removals_per_pass=n)),
    )
    view = cluster()
    state = State(node="node0", version="bench")
    part = GCPart(state, cfg, lambda: view, HostNet(), lambda i, d: TimedBackend(UapiBackend(d), spent))
    # The daemon reads the first-seen file once and keeps it in memory, where the pass that
    # first saw these peers (an hour ago) left it: load it before the clock starts.
    part.store.get(IF)
    spent.clear()
    start = time.perf_counter()
    asyncio.run(part.reconcile())
    elapsed = time.perf_counter() - start
    spent["rest (state file, select, encode, report)"] = elapsed - sum(spent.values())
    section = state.status()["parts"]["peer_gc"]["interfaces"][0]
    if not state.checks["peer_gc"].ok or section["removed_count"] != n:
        raise SystemExit(f"bench: the GC pass did not remove {n} peers: {state.checks['peer_gc'].detail}")
    return elapsed


def time_raw(uapi_dir: str, keys: list[str]) -> float:
    request = encode_remove(keys)
    start = time.perf_counter()
    reply = uapi(uapi_dir, request)
    elapsed = time.perf_counter() - start
    if reply != b"errno=0\n\n":
        raise SystemExit(f"bench: raw removal failed: {reply!r}")
    return elapsed


def time_loop(lab: Lab, host: object, uapi_dir: str, sample: int) -> tuple[float, float]:
    """(seconds of ``wg show wg0 peers``, seconds for ``sample`` ``wg set … remove``)."""
    # wg finds a userspace interface's socket only in /run/wireguard: give it this one.
    script = (
        f"mount --bind {shlex.quote(uapi_dir)} /run/wireguard || exit 1; "
        f"s=$(date +%s%N); peers=$(wg show {IF} peers); m=$(date +%s%N); "
        f'for i in $(echo "$peers" | head -n {sample}); do wg set {IF} peer $i remove; done; '
        f"e=$(date +%s%N); echo $s $m $e"
    )
    out = lab.run(host, "unshare", "--mount", "--propagation", "private", "sh", "-c", script, timeout=600)  # type: ignore[arg-type]
    s, m, e = (int(x) for x in out.split())
    return (m - s) / 1e9, (e - m) / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--loop-sample", type=int, default=500)
    args = ap.parse_args()
    missing = [t for t in ("ip", "wireguard-go", "wg", "unshare", "mount") if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        print(f"bench: needs root and {', '.join(missing) or 'nothing else'}", file=sys.stderr)
        return 2
    logs.setup("info", stream=open(os.devnull, "w"))  # noqa: SIM115 - the removals' log lines cost their share
    logging.getLogger("wgagent.wireguard.gc").setLevel(logging.INFO)
    spent: dict[str, float] = {}
    breakdowns: list[dict[str, float]] = []
    timed_logging(spent)
    n = args.peers
    wgagent_s: list[float] = []
    raw_s: list[float] = []
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="wgbench-") as state_dir:
        host = lab.host("bench")
        _, uapi_dir = lab.wireguard_go(host, IF)
        priv = os.urandom(32)
        reply = uapi(uapi_dir, f"set=1\nprivate_key={priv.hex()}\nlisten_port=51820\n\n".encode())
        assert reply == b"errno=0\n\n", reply
        lab.run(host, "ip", "link", "set", IF, "up")
        for run in range(args.runs):
            keys = populate(uapi_dir, n, state_dir)
            raw_s.append(time_raw(uapi_dir, keys))
            assert peer_count(uapi_dir) == 0
            populate(uapi_dir, n, state_dir)
            wgagent_s.append(time_wgagent(uapi_dir, state_dir, n, spent))
            breakdowns.append(dict(spent))
            assert peer_count(uapi_dir) == 0
            print(
                f"run {run + 1}: wgagent {wgagent_s[-1] * 1e3:.0f} ms, raw transaction {raw_s[-1] * 1e3:.0f} ms",
                flush=True,
            )
        keys = populate(uapi_dir, n, state_dir)
        show_s, sample_s = time_loop(lab, host, uapi_dir, args.loop_sample)
        left = peer_count(uapi_dir)
        assert left == n - args.loop_sample, left
        time_raw(uapi_dir, keys)  # clear the rest
    loop_s = show_s + n * sample_s / args.loop_sample
    w, r = statistics.median(wgagent_s), statistics.median(raw_s)
    loop_ratio, raw_ratio = loop_s / w, w / r
    rows = [
        ("method", "time", "vs wgagent"),
        (
            f"seed loop: wg show + {n} x wg set … remove (timed on {args.loop_sample}, scaled)",
            f"{loop_s:.2f} s",
            f"{loop_ratio:.0f}x slower",
        ),
        ("wgagent GC pass: get, select, one set, state file, log each removal", f"{w * 1e3:.0f} ms", "1"),
        (f"one raw UAPI set transaction ({n} x remove=true)", f"{r * 1e3:.0f} ms", f"{raw_ratio:.2f}x faster"),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    print()
    each_ms = sample_s / args.loop_sample * 1e3
    print(f"{n} dead peers on wireguard-go; medians of {args.runs} runs; loop: wg show {show_s * 1e3:.0f} ms,")
    print(f"  {args.loop_sample} removals {sample_s:.2f} s ({each_ms:.1f} ms each)")
    for row in rows:
        print(f"{row[0].ljust(widths[0])}  {row[1].rjust(widths[1])}  {row[2]}")
    print("wgagent's pass, by part (medians; x = multiples of the raw transaction):")
    for k in breakdowns[0]:
        part_s = statistics.median(b[k] for b in breakdowns)
        print(f"  {k}: {part_s * 1e3:.0f} ms ({part_s / r:.1f}x)")
    ok_loop, ok_raw = loop_ratio >= LOOP_TARGET, raw_ratio <= RAW_TARGET
    print()
    print(f"loop / wgagent = {loop_ratio:.0f}x (target >= {LOOP_TARGET:g}x): {'ok' if ok_loop else 'MISSED'}")
    print(f"wgagent / raw  = {raw_ratio:.2f}x (target <= {RAW_TARGET:g}x): {'ok' if ok_raw else 'MISSED'}")
    return 0 if ok_loop and ok_raw else 1


if __name__ == "__main__":
    sys.exit(main())
