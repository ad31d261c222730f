"""Public IP discovery with six sources, two of which hang: one round must take about one timeout.

    python bench/bench_discovery.py [--timeout 1.0] [--runs 5]

Six real sources on loopback (two HTTP echoes, two STUN servers, one echo that accepts
the connection and never answers, one STUN server that never answers), asked the way
the daemon asks them: concurrently by ``observe_all()``. The baseline, measured in the
same run, is the serial sum: each source asked alone, one after the other. The target is
a round's wall time within ``timeout`` + 10%; the exit code is 1 when any run misses it.
Only loopback is used; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import ipservices
from wgagent.publicip.echo import HttpEchoSource
from wgagent.publicip.httpclient import AiohttpClient
from wgagent.publicip.sources import Source, observe_all
from wgagent.publicip.stun import StunClient, StunSource

SPECS = [
    {"kind": "echo", "name": "echo-1", "listen": "127.0.0.1:0", "mode": "reflect"},
    {"kind": "echo", "name": "echo-2", "listen": "127.0.0.2:0", "mode": "reflect"},
    {"kind": "stun", "name": "stun-1", "listen": "127.0.0.1:0", "mode": "reflect"},
    {"kind": "stun", "name": "stun-2", "listen": "127.0.0.2:0", "mode": "reflect"},
    {"kind": "echo", "name": "echo-hang", "listen": "127.0.0.3:0", "mode": "hang"},
    {"kind": "stun", "name": "stun-silent", "listen": "127.0.0.3:0", "mode": "silent"},
]


def build(services: ipservices.Services, http: AiohttpClient, stun: StunClient, timeout_s: float) -> list[Source]:
    sources: list[Source] = []
    for spec in SPECS:
        name = str(spec["name"])
        host = str(spec["listen"]).rsplit(":", 1)[0]
        port = services.port(name)
        if spec["kind"] == "echo":
            sources.append(HttpEchoSource(f"http://{host}:{port}/", http, timeout_s))
        else:
            sources.append(StunSource(f"{host}:{port}", stun, timeout_s))
    return sources


async def one_round(sources: list[Source], stun: StunClient) -> tuple[float, int]:
    start = time.monotonic()
    try:
        observations = await observe_all(sources)
    finally:
        stun.close()
    return time.monotonic() - start, sum(1 for o in observations if o.ip is not None)


async def bench(timeout_s: float, runs: int) -> int:
    services = await ipservices.start(SPECS)
    http = AiohttpClient(timeout_s)
    stun = StunClient()
    try:
        sources = build(services, http, stun, timeout_s)
        await one_round(sources, stun)  # warm-up: imports, first sockets
        concurrent: list[float] = []
        serial: list[float] = []
        answered: set[int] = set()
        for _ in range(runs):
            wall, got = await one_round(sources, stun)
            concurrent.append(wall)
            answered.add(got)
            total = 0.0
            for source in sources:
                wall, _ = await one_round([source], stun)
                total += wall
            serial.append(total)
    finally:
        stun.close()
        await http.close()
        await services.close()

    target = timeout_s * 1.1
    worst = max(concurrent)
    med_c, med_s = statistics.median(concurrent), statistics.median(serial)
    print(f"public IP discovery: {len(SPECS)} sources, 2 of them hang; timeout {timeout_s:g} s; {runs} runs")
    print(f"{'':24}{'median':>10}{'max':>10}")
    print(f"{'concurrent (the daemon)':24}{med_c:>9.3f}s{worst:>9.3f}s")
    print(f"{'serial sum (baseline)':24}{med_s:>9.3f}s{max(serial):>9.3f}s")
    print(f"serial / concurrent: {med_s / med_c:.2f}x")
    print(f"target: every concurrent round <= timeout + 10% = {target:.3f} s")
    print(f"worst concurrent round: {worst:.3f} s = {worst / target:.2f} of the target")
    print(f"answers per round: {sorted(answered)} (4 expected: the two hanging sources give none)")
    ok = worst <= target and answered == {4}
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=1.0, help="each source's timeout in seconds (default 1)")
    parser.add_argument("--runs", type=int, default=5, help="measured rounds (default 5)")
    args = parser.parse_args()
    return asyncio.run(bench(args.timeout, args.runs))


if __name__ == "__main__":
    sys.exit(main())
