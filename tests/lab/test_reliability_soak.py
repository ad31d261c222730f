"""Reliability: 10,000 reconcile cycles of the real parts; RSS grows less than 2 MB.

``python -m tests.support.soak`` runs in its own process, so that its RSS is the agent's
alone; the stand-ins it talks to (the API stand-in over HTTPS, two HTTP echoes and a STUN
server on loopback) run in processes of their own. One cycle is one pass of every part,
stage by stage as the daemon's first pass runs them, plus a scrape of ``/healthz`` (and
``/metrics`` every 10th): public IP discovery over HTTP and STUN, the node watch's stream
and the annotation part over HTTPS, the k3s drop-in and restart history on disk, the
module check, the interface check and peer GC on an in-memory device whose peers come and
go (the first-seen file is rewritten every cycle). Every 100 cycles the public address
flips, so a new address is adopted and saved, the drop-in rewritten, the annotation
patched and k3s "restarted" (see the module's docstring for the whole list).

RSS is read (after ``gc.collect()``) after 1,000 warm-up cycles, every 1,000 cycles, and
after the last: the end must be less than 2 MB above the warm-up figure. The other
figures show the cycles did the work: addresses adopted, patches, removals, no reconcile
error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, require

CYCLES = 10_000
WARMUP = 1_000
FLIP_EVERY = 100
MAX_GROWTH_KB = 2048


def test_rss_grows_less_than_2_mb_over_10000_cycles(tmp_path: Path) -> None:
    require("openssl")
    # Not measured by coverage (scripts/test): its tracer keeps data in the process, which is
    # not the agent's memory, and it makes 10,000 cycles take 2.5 times as long; every path
    # a cycle runs is measured by the other tests.
    env = {k: v for k, v in os.environ.items() if k != "COVERAGE_PROCESS_START"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.support.soak", "--cycles", str(CYCLES), "--warmup", str(WARMUP),
         "--flip-every", str(FLIP_EVERY), "--dir", str(tmp_path / "soak")],
        capture_output=True, text=True, timeout=420, cwd=str(ROOT), env={**env, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    trend = ", ".join(f"{c}: {kb / 1024:.1f} MB" for c, kb in result["samples"])
    growth = result["rss_end_kb"] - result["rss_warm_kb"]
    assert growth < MAX_GROWTH_KB, f"RSS grew {growth} kB after warm-up ({trend})"
    # the cycles did their work
    flips = CYCLES // FLIP_EVERY
    counters = result["counters"]
    assert counters["wgagent_public_ip_changes_total"] == flips, counters
    assert counters["wgagent_annotation_patches_total"] >= flips, counters
    assert counters["wgagent_gc_removed_total"] > CYCLES // 2, counters
    assert counters["wgagent_reconcile_errors_total"] == 0, counters
    assert result["restarts"] >= flips
    assert set(result["health_codes"]) <= {200, 503}
    assert {k: v for k, v in result["checks"].items() if not v} in ({}, {"wireguard_module": False}), result["checks"]
    print(f"{CYCLES} cycles in {result['seconds']} s; RSS {trend}; growth after warm-up {growth} kB")
