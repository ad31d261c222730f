"""Runs wgagent's probe adapters inside a lab namespace, for tests/lab/test_mesh_probe.py.

    ip netns exec NS python -m tests.support.mesh_probe_driver receive --port 51820 --nodes n1,n3
    ip netns exec NS python -m tests.support.mesh_probe_driver send --node n1 --to 198.51.100.10:51820 --count 5

``receive`` installs the counting table (:mod:`wgagent.mesh.nft`), opens the tap
(:mod:`wgagent.mesh.tap`), prints ``ready``, and then for every line on stdin prints one JSON
line: the arrivals so far per sender (:func:`wgagent.mesh.probe.account`: time, source,
verdict) and, when the host dropped some, the rule :mod:`wgagent.mesh.firewall` names. At
end of input it removes the table. ``send`` sends ``--count`` rounds of one probe each
(:func:`wgagent.mesh.sender.send`) and prints the results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from wgagent.mesh import firewall, nft, probe, sender, tap


async def receive(port: int, nodes: list[str]) -> int:
    counter = nft.NftCounter()
    await counter.install(port)
    first = await counter.counts() or {}
    memory = probe.start(0.0, first.get("pass"))
    memory = probe.account_initiations(memory, first.get("hs_pre", {}), first.get("hs_post", {}), 0.0, seed=True)
    t = tap.ProbeTap(port)
    t.open()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    arrived = 0
    try:
        while await loop.run_in_executor(None, sys.stdin.readline):
            arrivals = t.drain()
            arrived += len(arrivals)
            counts = await counter.counts() or {}
            memory = probe.account(memory, arrivals, counts.get("pass", {}), nodes, loop.time())
            memory = probe.account_initiations(memory, counts.get("hs_pre", {}), counts.get("hs_post", {}), loop.time())
            print(json.dumps(await _report(memory, counter, port, arrived, t.rejected)), flush=True)
    finally:
        t.close()
        await counter.remove()
    return 0


async def _report(
    memory: probe.InboundMemory, counter: nft.NftCounter, port: int, arrived: int, rejected: int
) -> dict[str, Any]:
    last = {n: {"src": a.src, "verdict": a.verdict} for n, a in memory.last.items()}
    rule = None
    dropped = [a.src for a in memory.last.values() if a.verdict == probe.HOST] + sorted(memory.wg_dropped)
    if dropped:
        doc, text = await counter.ruleset()
        family = "ip6" if ":" in dropped[0] else "ip"
        found = firewall.find_drop(doc, firewall.Packet(family, dropped[0], port, "eth0"), before=nft.PRIORITY)
        rule = found.describe(firewall.rule_texts(text)) if found else None
    wg_dropped = sorted(memory.wg_dropped)
    return {"arrived": arrived, "rejected": rejected, "last": last, "rule": rule, "wg_dropped": wg_dropped}


def send(node: str, to: str, count: int) -> int:
    ip, _, port = to.rpartition(":")
    errors = 0
    for _ in range(count):
        result = sender.send(node, [probe.Target("target", ip, int(port))])
        errors += sum(1 for e in result.values() if e)
    print(json.dumps({"sent": count, "errors": errors}), flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("receive")
    r.add_argument("--port", type=int, default=51820)
    r.add_argument("--nodes", default="")
    s = sub.add_parser("send")
    s.add_argument("--node", required=True)
    s.add_argument("--to", required=True)
    s.add_argument("--count", type=int, default=1)
    args = ap.parse_args()
    if args.cmd == "receive":
        return asyncio.run(receive(args.port, [n for n in args.nodes.split(",") if n]))
    return send(args.node, args.to, args.count)


if __name__ == "__main__":
    sys.exit(main())
