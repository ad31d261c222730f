"""Every benchmark, one command, one table of ratios measured side by side in this run.

    python3 bench/run.py [--quick] [--write bench/RESULTS.md] [--only start,health]

Runs, in this order, each against a baseline measured in the same run:

    start       bench_start.py        wgagent run: spawn to READY=1 vs a bare import of its dependencies
    health      bench_health.py       /healthz under wrk -c100 vs a bare aiohttp hello-world
    resources   bench_resources.py    RSS after start and after the soak; CPU per idle minute
    discovery   bench_discovery.py    a public IP round (6 sources, 2 hanging) vs the serial sum
    kube        bench_kube_requests.py  API requests in a steady hour vs a polling agent
    cli         bench_cli.py          version/status start vs their imports; a whole gc process vs the loop
    mesh        bench_mesh.py, bench_mesh_writes.py  wgagent mesh over 1,000 nodes; report writes per node per hour
    gc          bench_gc.py           GC of 10,000 dead peers vs the wg set loop and a raw transaction
    kernel      bench_kernel.py       kernel WireGuard in user-mode Linux: netlink read, GC pass, interface check

The first three are called in this process; the others run as they would alone (a
subprocess each, their whole output shown) and their summary lines are read into the table.
``gc`` needs root and wireguard-go (it makes its own network namespace), ``kernel`` root and
the user-mode Linux kernel ``scripts/uml-kernel`` builds; without them their rows say so.
``--quick`` shortens every run (for a smoke test; the figures are then rough).
``--write`` also writes the table and the machine it came from (CPUs, memory, kernel,
Python and package versions, the git commit) as Markdown, for the README.

Everything runs on loopback, in namespaces the benchmarks make and delete, or inside a
user-mode Linux kernel with no link to the host's network. The exit code
is 1 when any target is missed or any benchmark failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bench_health, bench_resources, bench_start

HERE = Path(__file__).resolve().parent

ALL = ("start", "health", "resources", "discovery", "kube", "mesh", "cli", "gc", "kernel")


@dataclass
class Row:
    bench: str
    measure: str
    value: str
    baseline: str
    ratio: str
    target: str
    verdict: str


def _ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}x" if value < 0.1 else f"{value:.2f}x" if value < 10 else f"{value:.0f}x"


def rows_of(results: list[dict[str, Any]]) -> list[Row]:
    return [
        Row(r["bench"], r["measure"], r["value"], r["baseline"], _ratio(r["ratio"]), r["target"],
            "ok" if r["ok"] else "MISSED")
        for r in results
    ]  # fmt: skip


def run_script(name: str, argv: list[str]) -> tuple[int, str]:
    """A benchmark script as its own process; its output is shown as it runs and returned."""
    print(f"\n===== {name}: {' '.join(argv)}", flush=True)
    proc = subprocess.Popen(
        [sys.executable, *argv], cwd=str(HERE.parent), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    out = []
    for line in proc.stdout:
        print("  " + line, end="", flush=True)
        out.append(line)
    return proc.wait(), "".join(out)


def _find(pattern: str, text: str) -> re.Match[str] | None:
    return re.search(pattern, text, re.M)


def discovery(quick: bool) -> list[Row]:
    code, out = run_script("discovery", ["bench/bench_discovery.py", *(["--runs", "2"] if quick else [])])
    conc = _find(r"^concurrent \(the daemon\)\s+([\d.]+)s\s+([\d.]+)s", out)
    serial = _find(r"^serial sum \(baseline\)\s+([\d.]+)s", out)
    target = _find(r"^target: every concurrent round <= timeout \+ 10% = ([\d.]+) s", out)
    if not (conc and serial and target):
        return [Row("discovery", "public IP round, 6 sources (2 hang)", "?", "?", "-", "see its output",
                    "ok" if code == 0 else "FAILED")]  # fmt: skip
    worst, ser = float(conc.group(2)), float(serial.group(1))
    return [
        Row("discovery", "public IP round, 6 sources (2 hang): worst of the runs", f"{worst:.3f} s",
            f"{ser:.3f} s serial sum", _ratio(worst / ser), f"<= {float(target.group(1)):.3f} s (timeout + 10%)",
            "ok" if code == 0 else "MISSED")
    ]  # fmt: skip


def kube(quick: bool) -> list[Row]:
    argv = ["bench/bench_kube_requests.py", *(["--nodes", "10", "--hour-s", "4"] if quick else [])]
    code, out = run_script("kube", argv)
    rows = []
    for line in out.splitlines():
        cells = line.split()
        if len(cells) == 12 and cells[0].isdigit() and cells[-1].endswith("x"):
            nodes, total, poller = cells[0], float(cells[6]), float(cells[9])
            rows.append(
                Row("kube", f"API requests in a steady hour, {int(nodes):,} nodes (+ the open watch)",
                    f"{total:.0f}", f"{poller:.0f} polling agent", _ratio(total / poller) if poller else "-",
                    "<= 2 requests", "ok" if total <= 2 and code == 0 else "MISSED")
            )  # fmt: skip
    if not rows or code not in (0, 1):
        rows.append(Row("kube", "API requests in a steady hour", "?", "?", "-", "see its output",
                        "INVALID" if code == 2 else "FAILED"))  # fmt: skip
    return rows


def mesh(quick: bool) -> list[Row]:
    rows = []
    code, out = run_script("mesh", ["bench/bench_mesh.py", *(["--runs", "2"] if quick else [])])
    found = _find(r"decode \+ diagnose \+ text \+ JSON\s+([\d.]+) ms", out)
    base = _find(r"baseline: json.loads \+ dumps\s+([\d.]+) ms", out)
    if found and base:
        ours, theirs = float(found.group(1)), float(base.group(1))
        rows.append(Row("mesh", "wgagent mesh over 1,000 nodes (decode, diagnose, text, JSON)", f"{ours:.0f} ms",
                        f"{theirs:.0f} ms json.loads + dumps", _ratio(ours / theirs), "< 2 s",
                        "ok" if code == 0 else "MISSED"))  # fmt: skip
    else:
        rows.append(Row("mesh", "wgagent mesh over 1,000 nodes", "?", "?", "-", "see its output", "FAILED"))
    argv = ["bench/bench_mesh_writes.py", *(["--sampled", "1", "--hours", "1"] if quick else [])]
    code, out = run_script("mesh", argv)
    found = _find(r"^writes per node per hour ([\d.]+)\s+baseline \(a write every pass\) ([\d.]+)", out)
    if found:
        ours, theirs = float(found.group(1)), float(found.group(2))
        rows.append(Row("mesh", "mesh report writes per node per hour, healthy 1,000 nodes", f"{ours:.2f}",
                        f"{theirs:.0f} a write every pass", _ratio(ours / theirs), "<= 2",
                        "ok" if code == 0 else "MISSED"))  # fmt: skip
    else:
        rows.append(Row("mesh", "mesh report writes per node per hour", "?", "?", "-", "see its output", "FAILED"))
    return rows


def cli(quick: bool) -> list[Row]:
    quick_args = ["--runs", "5", "--gc-runs", "1", "--loop-sample", "200"] if quick else []
    argv = ["bench/bench_cli.py", "--json", *quick_args]
    if os.geteuid() != 0 or shutil.which("wireguard-go") is None:
        argv.append("--no-gc")  # the gc row needs root and wireguard-go, as for bench_gc.py
    _, out = run_script("cli", argv)
    try:
        return rows_of(json.loads(out.strip().splitlines()[-1]))
    except (ValueError, IndexError, KeyError):
        return [Row("cli", "command start and the gc process", "?", "?", "-", "see its output", "FAILED")]


def gc(quick: bool) -> list[Row]:
    if os.geteuid() != 0 or shutil.which("wireguard-go") is None:
        return [Row("gc", "GC of 10,000 dead peers", "-", "-", "-", "-", "skipped: needs root and wireguard-go")]
    argv = ["bench/bench_gc.py", *(["--runs", "1", "--loop-sample", "200"] if quick else [])]
    code, out = run_script("gc", argv)
    wg = _find(r"^wgagent GC pass.*?\s([\d.]+) ms\s+1$", out)
    loop = _find(r"^seed loop: .*?\s([\d.]+) s\s+\d+x slower$", out)
    raw = _find(r"^one raw UAPI set transaction.*?\s([\d.]+) ms\s", out)
    peers = _find(r"^(\d+) dead peers on wireguard-go", out)
    loop_v = _find(r"^loop / wgagent = (\d+)x \(target >= ([\d.]+)x\): (\w+)", out)
    raw_v = _find(r"^wgagent / raw\s+= ([\d.]+)x \(target <= ([\d.]+)x\): (\w+)", out)
    if not (wg and loop and raw and peers and loop_v and raw_v):
        return [Row("gc", "GC of dead peers", "?", "?", "-", "see its output", "ok" if code == 0 else "FAILED")]
    n = int(peers.group(1))
    w, lp, r = float(wg.group(1)), float(loop.group(1)), float(raw.group(1))
    return [
        Row("gc", f"GC pass over {n:,} dead peers vs the wg set loop", f"{w:.0f} ms", f"{lp:.1f} s wg set loop",
            _ratio(w / 1000 / lp), f"<= {1 / float(loop_v.group(2)):.2f}x (loop {float(loop_v.group(2)):g}x slower)",
            loop_v.group(3)),
        Row("gc", f"GC pass over {n:,} dead peers vs one raw UAPI set", f"{w:.0f} ms", f"{r:.0f} ms raw set",
            _ratio(w / r), f"<= {float(raw_v.group(2)):g}x", raw_v.group(3)),
    ]  # fmt: skip


def kernel(quick: bool) -> list[Row]:
    from tests.uml import why_not

    reason = why_not("wireguard")
    if reason:
        return [Row("kernel", "kernel WireGuard (UML)", "-", "-", "-", "-", f"skipped: {reason}")]
    argv = ["bench/bench_kernel.py", *(["--runs", "1", "--loop-sample", "200"] if quick else [])]
    code, out = run_script("kernel", argv)
    peers = _find(r"^(\d+) peers on kernel WireGuard", out)
    read = _find(r"^read: wgagent netlink get (\d+) ms, wg show dump (\d+) ms", out)
    gc = _find(r"^gc: wgagent pass (\d+) ms, wg show dump \+ one wg set (\d+) ms", out)
    loop = _find(r"^loop: wg show peers \d+ ms, (\d+) x wg set remove .* scaled to \d+: ([\d.]+) s$", out)
    check = _find(r"^check: interface check pass (\d+) ms CPU", out)
    verdict_re = r"^(read|loop|gc pass|interface check) .*: (ok|MISSED)$"
    verdicts = {m.group(1): m.group(2) for m in re.finditer(verdict_re, out, re.M)}
    if not (peers and read and gc and loop and check and len(verdicts) == 4):
        return [
            Row("kernel", "kernel WireGuard (UML)", "?", "?", "-", "see its output", "ok" if code == 0 else "FAILED")
        ]
    n, where = int(peers.group(1)), "kernel WireGuard (UML)"
    r, show = float(read.group(1)), float(read.group(2))
    g, raw = float(gc.group(1)), float(gc.group(2))
    sample, lp = int(loop.group(1)), float(loop.group(2))
    c = float(check.group(1))
    return [
        Row("kernel", f"netlink read of {n:,} peers, {where}", f"{r:.0f} ms", f"{show:.0f} ms wg show dump",
            _ratio(r / show), "<= 2x", verdicts["read"]),
        Row("kernel", f"GC pass over {n:,} dead peers vs the wg set loop, {where}", f"{g:.0f} ms",
            f"{lp:.1f} s wg set loop ({sample:,} timed, scaled)", _ratio(g / 1000 / lp), "<= 0.02x (loop 50x slower)",
            verdicts["loop"]),
        Row("kernel", f"GC pass over {n:,} dead peers vs wg show dump + one wg set, {where}", f"{g:.0f} ms",
            f"{raw:.0f} ms wg show + wg set", _ratio(g / raw), "<= 3x", verdicts["gc pass"]),
        Row("kernel", f"interface check, {n:,} peers: CPU per pass, {where}", f"{c:.0f} ms",
            "30 s interval", f"{c / 300:.2f}% of a core", "< 1% of a core", verdicts["interface check"]),
    ]  # fmt: skip


def in_process(name: str, measure: Callable[[], list[dict[str, Any]]]) -> list[Row]:
    print(f"\n===== {name}", flush=True)
    try:
        results = measure()
    except Exception as exc:
        print(f"  {name} failed: {type(exc).__name__}: {exc}", flush=True)
        return [Row(name, "-", "-", "-", "-", "-", f"FAILED: {exc}")]
    for r in results:
        print(f"  {r['measure']}: {r['value']} vs {r['baseline']}", flush=True)
    return rows_of(results)


def table(rows: list[Row]) -> list[str]:
    head = ("benchmark", "measure", "value", "baseline (same run)", "ratio", "target", "verdict")
    cells = [head] + [(r.bench, r.measure, r.value, r.baseline, r.ratio, r.target, r.verdict) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]


def markdown(rows: list[Row]) -> list[str]:
    head = "| benchmark | measure | value | baseline (same run) | ratio | target | verdict |"
    out = [head, "|---|---|---|---|---|---|---|"]
    out += [f"| {r.bench} | {r.measure} | {r.value} | {r.baseline} | {r.ratio} | {r.target} | {r.verdict} |"
            for r in rows]  # fmt: skip
    return out


def _version(dist: str, module: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        with contextlib.suppress(Exception):
            return str(__import__(module).__version__)
        return "?"


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError:
        return "not installed"
    return ((out.stdout or out.stderr).strip().splitlines() or ["?"])[0]


def machine() -> list[str]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    mem = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        kb = next((int(ln.split()[1]) for ln in f if ln.startswith("MemTotal:")), 0)
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    commit = _first_line(["git", "-C", str(HERE.parent), "describe", "--always", "--dirty"])
    dists = (("aiohttp", "aiohttp"), ("pyroute2", "pyroute2"), ("PyYAML", "yaml"), ("sdnotify", "sdnotify"))
    packages = ", ".join(f"{dist} {_version(dist, mod)}" for dist, mod in dists)
    return [
        f"- CPUs: {len(os.sched_getaffinity(0))} ({cpu})",
        f"- memory: {mem}",
        f"- kernel: {platform.release()} ({platform.machine()})",
        f"- Python: {platform.python_version()} ({sys.executable})",
        f"- packages: {packages}",
        f"- tools: {_first_line(['wrk', '-v'])}; {_first_line(['wireguard-go', '--version'])}",
        f"- wgagent: git {commit}",
        f"- user-mode Linux kernel (kernel rows): {_uml_kernel()}",
    ]


def _uml_kernel() -> str:
    from tests.uml import kernel_path

    path = kernel_path("wireguard")
    return f"{Path(path).parent.name} ({path}, scripts/uml-kernel)" if path else "not built"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short runs: a smoke test, rough figures")
    p.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of: {', '.join(ALL)}")
    p.add_argument("--write", metavar="PATH", help="also write the table and the machine as Markdown to PATH")
    args = p.parse_args()
    chosen = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(chosen) - set(ALL)
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    q = args.quick
    steps: dict[str, Callable[[], list[Row]]] = {
        "start": lambda: in_process("start", lambda: bench_start.measure(3 if q else 10)),
        "health": lambda: in_process("health", lambda: bench_health.measure(2.0 if q else 4.0, 2 if q else 8, 2000)),
        "resources": lambda: in_process(
            "resources", lambda: bench_resources.measure(10.0 if q else 30.0, 1000 if q else 10_000)
        ),
        "discovery": lambda: discovery(q),
        "kube": lambda: kube(q),
        "mesh": lambda: mesh(q),
        "cli": lambda: cli(q),
        "gc": lambda: gc(q),
        "kernel": lambda: kernel(q),
    }
    started = time.monotonic()
    rows: list[Row] = []
    for name in chosen:
        rows.extend(steps[name]())
    took = time.monotonic() - started
    print(f"\n===== all benchmarks ({took / 60:.1f} min{', --quick' if q else ''}; {sys.executable})\n")
    for line in table(rows):
        print(line)
    bad = [r for r in rows if r.verdict not in ("ok",) and not r.verdict.startswith("skipped")]
    if args.write:
        when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        only = "" if chosen == list(ALL) else f" --only {','.join(chosen)}"
        make = "" if only else " (`make bench`)"
        text = [
            "# Benchmark results",
            "",
            f"`python3 bench/run.py{' --quick' if q else ''}{only}`{make}, {when}, {took / 60:.1f} min.",
            "Each ratio is value / baseline, both measured side by side in the same run; what each",
            "measures and why is in the docstring of its bench/*.py.",
            "",
            *markdown(rows),
            "",
            "Machine:",
            "",
            *machine(),
            "",
        ]
        Path(args.write).write_text("\n".join(text))
        print(f"\nwritten to {args.write}")
    if bad:
        print("\nMISSED or FAILED: " + "; ".join(f"{r.bench}: {r.measure} ({r.verdict})" for r in bad))
        return 1
    print("\nevery target met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
