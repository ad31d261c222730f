"""The real mesh part, five of them, in virtual time over a simulated mesh (tests/support/meshsim.py).

Nodes a, b and c have public addresses (a cloud the metadata source identifies: Hetzner), d and
e sit behind NAT routers with the WireGuard port forwarded. Every part runs with the default
intervals (a pass every 30 s, a report write at most every 60 s, a probe per pair every 300 s),
its own EventRecorder over an in-memory sink, and the Node objects as its only channel to the
others. ``wgagent mesh --json`` is the command's own ``show()`` over the Node objects.

Shown: a healthy day without a single cell that is not ok, at most two report writes per node per
hour; each fault of issue 14 alone, named (pairs, cause, node) by ``wgagent mesh --json`` within
210 s of simulated time, and every cell ok again after it is cleared; a drifted pair healed by
the part itself (no k3s restart: nothing here can restart anything); Events deduplicated.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from tests.support.meshsim import RULE, TICK_S, Mesh
from tests.support.virtualtime import VirtualTimeLoop, wall
from wgagent import events as ev
from wgagent.commands.mesh import show
from wgagent.config import Config, WireGuardConfig
from wgagent.mesh import model as m
from wgagent.mesh.part import MeshPart
from wgagent.model import ANN_PUBLIC_IP, PublicAddresses
from wgagent.state import State
from wgagent.wireguard.backend import HostNet

PUBLIC, NAT = ["a", "b", "c"], ["d", "e"]
NAMED_WITHIN_S = 210.0
CLEARED_WITHIN_S = 900.0
WARM_UP_S = 3600.0


class Sink:
    """An EventSink keeping what was written."""

    def __init__(self) -> None:
        self.created: list[tuple[float, dict[str, Any]]] = []
        self.patched: list[tuple[str, dict[str, Any]]] = []
        self.clock: Callable[[], float] = lambda: 0.0

    async def create_event(self, namespace: str, event: Any) -> dict[str, Any]:
        self.created.append((self.clock(), dict(event)))
        return dict(event)

    async def patch_event(self, namespace: str, name: str, patch: Any) -> dict[str, Any]:
        self.patched.append((name, dict(patch)))
        return {}


class World:
    def __init__(self, loop: asyncio.AbstractEventLoop, tmp: Path) -> None:
        self.loop, self.tmp = loop, tmp
        self.clock = wall(loop)
        self.mesh = Mesh(PUBLIC, NAT, self.clock)
        self.parts: dict[str, MeshPart] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.sinks: dict[str, Sink] = {}
        self.states: dict[str, State] = {}
        self.faulty_passes: list[tuple[float, str, Any, Any]] = []
        """Passes whose diagnosis had a cell that is not ok, or a node problem (when ``watch``)."""
        self.watch = False

    def start(self, name: str) -> None:
        i = list(self.mesh.nodes).index(name)
        node = self.mesh.nodes[name]
        cfg = Config(node_name=name, state_dir=str(self.tmp / name),
                     wireguard=WireGuardConfig(interface="flannel-wg", uapi_dir=str(self.tmp / "run")))  # fmt: skip
        sink = self.sinks.setdefault(name, Sink())
        sink.clock = self.clock
        recorder = ev.EventRecorder(sink, name, clock=self.clock)
        state = self.states.setdefault(name, State(node=name, version="t", clock=self.clock, monotonic=self.loop.time))
        public = PublicAddresses(IPv4Address(node.public))
        part = MeshPart(
            state, name, cfg, self.mesh.api(name),  # type: ignore[arg-type]
            cluster=self.mesh.view, adopted=lambda: public, backends=self.mesh.backends(name), host_net=HostNet(),
            setters=self.mesh.setters(name), host=self.mesh.host(name), events=recorder.post,
            provider=None if node.router else "hetzner", clock=self.clock, rand=random.Random(i).random,
        )  # fmt: skip
        self.parts[name] = part
        self.tasks[name] = self.loop.create_task(self._run(part))

    async def _run(self, part: MeshPart) -> None:
        while True:
            delay = await part.reconcile()
            d = part._last.diagnosis if part._last is not None else None
            if self.watch and d is not None and not d.ok:
                self.faulty_passes.append((self.loop.time(), part.node, dict(d.faulty), d.problems))
            await asyncio.sleep(delay)

    async def stop(self, name: str) -> None:
        self.tasks.pop(name).cancel()
        await self.parts.pop(name).close()

    async def network(self) -> None:
        while True:
            self.mesh.tick()
            await asyncio.sleep(TICK_S)

    def mesh_json(self) -> dict[str, Any]:
        _, text = show(self.mesh.view(), self.clock(), as_json=True)
        return dict(json.loads(text))

    def not_ok(self) -> dict[tuple[str, str], tuple[str, str, str | None]]:
        doc = self.mesh_json()
        return {(p["from"], p["to"]): (p["state"], p["cause"], p["node"]) for p in doc["pairs"] if p["state"] != "ok"}

    async def until(self, check: Callable[[], bool], limit_s: float, what: str) -> float:
        started = self.loop.time()
        while not check():
            if self.loop.time() - started > limit_s:
                raise AssertionError(
                    f"{what}: not within {limit_s:g} s; now {self.not_ok()} {self.mesh_json()['problems']}"
                )
            await asyncio.sleep(1.0)
        return self.loop.time() - started

    async def named(
        self, expected: Callable[[dict[tuple[str, str], tuple[str, str, str | None]]], bool], what: str
    ) -> float:
        took = await self.until(lambda: expected(self.not_ok()), NAMED_WITHIN_S, what)
        print(f"{what}: named after {took:.0f} s")
        return took

    async def cleared(self, what: str) -> float:
        took = await self.until(lambda: self.mesh_json()["ok"], CLEARED_WITHIN_S, f"{what} cleared")
        print(f"{what}: ok again after {took:.0f} s")
        return took


def run(tmp: Path, scenario: Callable[[World], Awaitable[None]]) -> World:
    loop = VirtualTimeLoop(quiet_s=0.0)  # no real I/O but the taps' socket pairs, ready at once
    world = World(loop, tmp)

    async def main() -> None:
        net = loop.create_task(world.network())
        for name in world.mesh.nodes:
            world.start(name)
        try:
            await scenario(world)
        finally:
            net.cancel()
            for name in list(world.tasks):
                await world.stop(name)

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return world


def column(node: str, cause: str, *, of: list[str] | None = None) -> Callable[[dict[Any, Any]], bool]:
    """Every cell towards ``node`` from the others (``of``: only those) names ``cause`` at ``node``."""

    def check(cells: dict[tuple[str, str], tuple[str, str, str | None]]) -> bool:
        senders = of or [n for n in PUBLIC + NAT if n != node]
        return all(cells.get((s, node), (None, None, None))[1:] == (cause, node) for s in senders)

    return check


# --- a healthy day -----------------------------------------------------------------------------


def test_a_healthy_day_has_no_cell_that_is_not_ok_and_at_most_two_writes_per_node_per_hour(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        await w.cleared("start")  # the first reports, the first probes
        await asyncio.sleep(WARM_UP_S)
        before = dict(w.mesh.writes)
        w.watch = True  # every pass of every part, from here on
        await asyncio.sleep(24 * 3600)
        w.watch = False
        per_hour = {n: (w.mesh.writes[n] - before[n]) / 24 for n in w.mesh.nodes}
        assert all(v <= 2 for v in per_hour.values()), per_hour
        for name in w.parts:
            assert w.states[name].checks["mesh"].ok, (name, w.states[name].checks["mesh"].detail)

    world = run(tmp_path, scenario)
    assert world.faulty_passes == []
    assert all(not sink.created for sink in world.sinks.values()), {n: s.created for n, s in world.sinks.items()}


# --- each fault alone, then cleared --------------------------------------------------------------

Cells = dict[tuple[str, str], tuple[str, str, str | None]]


def only(cells: Cells, allowed: Callable[[tuple[str, str], tuple[str, str, str | None]], bool]) -> bool:
    return all(allowed(k, v) for k, v in cells.items())


def events_deduplicated(world: World) -> None:
    """At most one new Event per reason per node per 10 minutes (the rest counted on it)."""
    for name, sink in world.sinks.items():
        by_reason: dict[str, list[float]] = {}
        for at, body in sink.created:
            by_reason.setdefault(body["reason"], []).append(at)
        for reason, times in by_reason.items():
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert all(g >= 600 for g in gaps), (name, reason, gaps)


async def warm(w: World) -> None:
    await w.cleared("start")
    await asyncio.sleep(WARM_UP_S)
    assert w.mesh_json()["ok"], w.not_ok()


def test_udp_dropped_on_the_path_to_c(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        await warm(w)
        w.mesh.nodes["c"].path_blocked = True
        took = await w.named(lambda cells: column("c", m.INBOUND_BLOCKED_UPSTREAM)(cells)
                             and only(cells, lambda k, v: "c" in k and v[1:] == (m.INBOUND_BLOCKED_UPSTREAM, "c")),
                             "the path drop")  # fmt: skip
        assert took <= NAMED_WITHIN_S
        w.mesh.nodes["c"].path_blocked = False
        await w.cleared("the path drop")

    events_deduplicated(run(tmp_path, scenario))


def test_a_host_firewall_reject_on_c(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        await warm(w)
        w.mesh.nodes["c"].host_blocked = True
        await w.named(lambda cells: column("c", m.INBOUND_BLOCKED_HOST)(cells)
                      and only(cells, lambda k, v: "c" in k and v[1:] == (m.INBOUND_BLOCKED_HOST, "c")),
                      "the host firewall")  # fmt: skip
        await w.until(lambda: all(RULE in p["fix"] for p in w.mesh_json()["pairs"] if p["to"] == "c"),
                      NAMED_WITHIN_S, "the rule named in the fix")  # fmt: skip
        w.mesh.nodes["c"].host_blocked = False
        await w.cleared("the host firewall")

    events_deduplicated(run(tmp_path, scenario))


def test_two_nated_nodes_without_any_inbound_path(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        await warm(w)
        for n in NAT:
            w.mesh.nodes[n].forward = False
        both = ("down", m.NAT_BOTH_SIDES, "d")
        await w.named(lambda cells: cells.get(("d", "e")) == both and cells.get(("e", "d")) == both
                      and only(cells, lambda k, v: k[1] in NAT and v[2] in NAT), "NAT on both sides")  # fmt: skip
        for n in NAT:
            w.mesh.nodes[n].forward = True
        await w.cleared("NAT on both sides")

    events_deduplicated(run(tmp_path, scenario))


def test_a_public_ip_pointing_at_a_wrong_address(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        await warm(w)
        right = w.mesh.annotations["b"][ANN_PUBLIC_IP]
        w.mesh.set_annotation("b", ANN_PUBLIC_IP, "203.0.113.99")
        for other in w.mesh.nodes:
            if other != "b":
                w.mesh.flannel_event(other, "b")
        await w.named(lambda cells: column("b", m.WRONG_ENDPOINT)(cells)
                      and only(cells, lambda k, v: v[1:] == (m.WRONG_ENDPOINT, "b")), "a wrong public-ip")  # fmt: skip
        assert {(p["node"], p["cause"]) for p in w.mesh_json()["problems"]} == {("b", m.WRONG_ENDPOINT)}
        w.mesh.set_annotation("b", ANN_PUBLIC_IP, right)
        for other in w.mesh.nodes:
            if other != "b":
                w.mesh.flannel_event(other, "b")
        await w.cleared("the wrong public-ip")

    events_deduplicated(run(tmp_path, scenario))


def test_an_endpoint_moved_to_a_wrong_port_on_both_sides_is_named_then_healed(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        await warm(w)
        a, b = w.mesh.nodes["a"], w.mesh.nodes["b"]
        assert a.peers is not None and b.peers is not None
        a.peers[b.key].endpoint = (b.address, 40001)
        b.peers[a.key].endpoint = (a.address, 40002)
        await w.named(lambda cells: cells.get(("a", "b")) == ("down", m.ENDPOINT_DRIFT, "a")
                      and cells.get(("b", "a")) == ("down", m.ENDPOINT_DRIFT, "b")
                      and only(cells, lambda k, v: set(k) == {"a", "b"}), "the drift")  # fmt: skip
        await w.cleared("the drift (healed by wgagent)")
        resets = [e for n in ("a", "b") for _, e in w.sinks[n].created if e["reason"] == "EndpointReset"]
        assert resets and all("-> 203.0.113." in e["message"] for e in resets), resets

    events_deduplicated(run(tmp_path, scenario))


def test_a_node_rekeyed_with_its_old_key_left_at_its_peers(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        await warm(w)
        w.mesh.rekey("b")  # flannel on the others misses the lease event
        others = [n for n in w.mesh.nodes if n != "b"]
        await w.named(lambda cells: all(cells.get(k) == ("down", m.STALE_KEY, x)
                                        for x in others for k in ((x, "b"), ("b", x)))
                      and only(cells, lambda k, v: "b" in k), "the stale key")  # fmt: skip
        for other in others:
            w.mesh.flannel_event(other, "b")
        await w.cleared("the stale key")

    events_deduplicated(run(tmp_path, scenario))


def test_a_nodes_interface_deleted(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        await warm(w)
        w.mesh.nodes["c"].peers = None
        await w.named(lambda cells: len(cells) == 8 and only(cells, lambda k, v: v == ("down", m.NO_INTERFACE, "c")),
                      "the deleted interface")  # fmt: skip
        assert w.states["c"].checks["mesh"].ok is False
        w.mesh.flannel_start("c")
        await w.cleared("the deleted interface")

    events_deduplicated(run(tmp_path, scenario))


def test_an_agent_stopped(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        await warm(w)
        await w.stop("c")
        took = await w.named(lambda cells: len(cells) == 4
                             and only(cells, lambda k, v: k[0] == "c" and v == ("unknown", m.NO_REPORT, "c")),
                             "the stopped agent")  # fmt: skip
        assert took <= 5  # the clean stop wrote "stopped"
        w.start("c")
        await w.cleared("the stopped agent")

    events_deduplicated(run(tmp_path, scenario))
