"""Reliability: the public IP flaps every round for a simulated day; k3s is restarted at most
once per ``k3s.min_restart_interval_s``.

The real daemon (``Daemon.serve()``: its part loops, wake events, staged first pass) runs
the real parts for 24 simulated hours on a :class:`~tests.support.virtualtime.VirtualTimeLoop`,
which skips every wait, so the day takes seconds and no interval is shortened:

- ``PublicIPPart`` (adoption, hysteresis, the 30 s confirmation cadence) asks two sources
  that agree with each other but name another address every round, as behind a NAT
  gateway that alternates its egress addresses;
- ``K3sPart`` writes the real drop-in (temp dir) and asks the ``Restarter``, whose
  ``systemctl`` is :class:`tests.support.k3s_unit.K3sUnit`: a restart starts k3s in the API
  stand-in as upstream k3s v1.32.4 does, with the drop-in as it is then (flannel-external-ip
  off: k3s leaves the overwrite to wgagent), and flannel publishes;
- ``NodeWatch`` and ``AnnotationPart`` talk to the API stand-in over HTTPS on loopback; the
  annotation part sets the overwrite ahead of the restart the drop-in needs, so one restart
  serves both.

The parts are built by ``wiring.build_parts()`` itself, with the loop's clock and the fakes as
its ``Seams``, so the wiring under test is the daemon's own. Every restart the fake systemctl saw
is checked against the limit.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from tests.conftest import require
from tests.kubeapi import KubeAPI, shared_pki
from tests.labkit import free_port
from tests.support.k3s_unit import K3sUnit
from tests.support.virtualtime import VirtualTimeLoop, wall
from wgagent.config import Config, HealthConfig, K3sConfig, KubeConfig, ListenAddress, PublicIPConfig, WireGuardConfig
from wgagent.daemon import Daemon
from wgagent.k3s.dropin import render_dropin
from wgagent.model import ANN_PUBLIC_IP, ANN_PUBLIC_IP_OVERWRITE, PublicAddresses
from wgagent.publicip.model import Answer
from wgagent.state import State
from wgagent.wiring import Seams

NODE = "n1"
UNIT = "k3s-agent.service"
DAY_S = 86400.0
ADDRESSES = (IPv4Address("203.0.113.10"), IPv4Address("198.51.100.20"))


class Flapper:
    """Two echo-like sources that agree with each other and name another address every round."""

    def __init__(self, addresses: Sequence[IPv4Address]) -> None:
        self.addresses = itertools.cycle(addresses)
        self.current = next(self.addresses)
        self.rounds = 0
        self.frozen = False

    def sources(self) -> list[_FlapSource]:
        return [_FlapSource(self, "http:a", leader=True), _FlapSource(self, "http:b", leader=False)]


@dataclass
class _FlapSource:
    flapper: Flapper
    name: str
    leader: bool
    kind: str = "http"
    timeout_s: float = 5.0
    why_not: str = ""

    async def observe(self) -> Sequence[Answer]:
        f = self.flapper
        if self.leader:  # asked first in every round (observe_all keeps source order)
            f.rounds += 1
            if not f.frozen:
                f.current = next(f.addresses)
        return [Answer(f.current)]


@dataclass
class World:
    tmp: Path
    loop: VirtualTimeLoop
    api: KubeAPI
    flapper: Flapper
    systemd: K3sUnit
    cfg: Config
    daemons: list[Daemon] = field(default_factory=list)

    def seams(self) -> Seams:
        """The daemon's own wiring, with the loop's clock and the fakes as its seams."""
        return Seams(
            clock=wall(self.loop),
            monotonic=self.loop.time,
            public_ip_sources=self.flapper.sources(),
            runner=self.systemd,
            unit_dirs=[str(self.tmp / "units")],
        )

    async def run_daemon(self, seconds: float) -> State:
        """One daemon lifetime of ``seconds`` virtual seconds; its final state."""
        daemon = Daemon(self.cfg, str(self.tmp / "absent.yaml"), config_required=False, seams=self.seams())
        self.daemons.append(daemon)
        task = asyncio.ensure_future(daemon.serve())
        await asyncio.sleep(seconds)
        daemon.stop()
        assert await task == 0
        errors = daemon.state.reconcile_errors
        assert "wgagent_reconcile_errors_total{" not in daemon.state.metrics.render(), errors
        return daemon.state


def make_world(tmp: Path, loop: VirtualTimeLoop, api: KubeAPI, *, confirmations: int) -> World:
    (tmp / "units").mkdir()
    cfg = Config(
        node_name=NODE,
        state_dir=str(tmp / "state"),
        health=HealthConfig(listen=ListenAddress("127.0.0.1", free_port())),
        public_ip=PublicIPConfig(confirmations=confirmations),  # quorum 2, interval 300 s: the defaults
        k3s=K3sConfig(role="agent", config_dir=str(tmp / "etc-rancher-k3s"), data_dir=str(tmp / "data")),
        kube=KubeConfig(kubeconfig=api.node_kubeconfig(NODE), list_kubeconfig=api.controller_kubeconfig()),
        wireguard=WireGuardConfig(enabled=False),
    )
    systemd = K3sUnit(api, NODE, cfg.k3s.config_dir, clock=wall(loop), monotonic=loop.time)
    return World(tmp, loop, api, Flapper(ADDRESSES), systemd, cfg)


def restart_times(world: World) -> list[float]:
    return [at for at, _ in world.systemd.restarts]


def run_in_virtual_time(body: Callable[[VirtualTimeLoop, KubeAPI], object]) -> None:
    require("openssl")
    pki = shared_pki()
    loop = VirtualTimeLoop()
    try:

        async def main() -> None:
            async with KubeAPI(nodes=[NODE], pki=pki) as api:
                result = body(loop, api)
                if asyncio.iscoroutine(result):
                    await result

        loop.run_until_complete(main())
    finally:
        loop.close()


def assert_rate_limited(restarts: Sequence[float], min_interval_s: float) -> None:
    # Times are taken when the fake systemctl runs, a few (real) milliseconds after the
    # Restarter decided: allow that much.
    gaps = [b - a for a, b in itertools.pairwise(restarts)]
    too_soon = [round(g, 3) for g in gaps if g < min_interval_s - 0.5][:10]
    assert not too_soon, f"k3s restarted less than {min_interval_s:g} s after the previous restart: {too_soon}"


def dropin_text(world: World, address: IPv4Address) -> str:
    return render_dropin("agent", PublicAddresses(ipv4=address), world.cfg.k3s)


def read_dropin(world: World) -> str:
    return (Path(world.cfg.k3s.config_dir) / "config.yaml.d" / "50-wgagent.yaml").read_text()


def test_a_day_of_flapping_confirmed_every_round_restarts_k3s_at_most_once_per_interval(tmp_path: Path) -> None:
    """``confirmations: 1``: every round (300 s) adopts the other address, so the drop-in and
    the overwrite change every round and both parts ask for a restart every time. The day
    is six daemon lifetimes of four hours: the limit must hold across wgagent restarts too
    (the history is saved before systemctl runs). Then the address settles for an hour and
    everything must converge: drop-in, overwrite and flannel's public-ip name it, no restart
    pending, every check ok."""

    async def body(loop: VirtualTimeLoop, api: KubeAPI) -> None:
        world = make_world(tmp_path, loop, api, confirmations=1)
        min_interval = world.cfg.k3s.min_restart_interval_s
        for _ in range(6):
            await world.run_daemon(DAY_S / 6)
        restarts = restart_times(world)
        assert world.flapper.rounds >= DAY_S / world.cfg.public_ip.interval_s - 6  # really flapping all day
        assert_rate_limited(restarts, min_interval)
        assert len(restarts) <= DAY_S / min_interval + 1
        # Not starved either: a pending restart is served once allowed (k3s part every 60 s).
        # With two addresses alternating every round, the address adopted when the limit allows
        # is often the one k3s already runs with (it went and came back): that needs no restart,
        # so k3s restarts every other round at most, never less often than min_interval + 1 round.
        interval = world.cfg.public_ip.interval_s
        assert len(restarts) >= DAY_S / (min_interval + interval), len(restarts)

        world.flapper.frozen = True  # the address settles
        state = await world.run_daemon(3600)
        assert_rate_limited(restart_times(world), min_interval)
        final = world.flapper.current
        assert state.ok, state.status()["checks"]
        assert read_dropin(world) == dropin_text(world, final)
        anns = api.store.nodes[NODE]["metadata"]["annotations"]
        assert anns[ANN_PUBLIC_IP_OVERWRITE] == anns[ANN_PUBLIC_IP] == str(final)
        assert state.status()["parts"]["k3s"]["restart"]["needs"] == {}
        # the last restart came after the last change: it is the one that applied it
        assert restart_times(world)[-1] > restarts[-1] or restart_times(world) == restarts

    run_in_virtual_time(body)


def test_a_day_of_unconfirmed_flapping_adopts_nothing_new(tmp_path: Path) -> None:
    """The defaults (``confirmations: 2``): an address that wins one round and loses the next
    is never adopted. Rounds alternate 30 s (a candidate waits) and 300 s (it lost again),
    ~520 in the day. The first decision (nothing adopted yet) is adopted at once; after
    that nothing changes all day: no write, no patch, and no restart beyond the start's.

    The start needs one restart: the annotation part sets the overwrite ahead of it, the k3s
    part writes the drop-in and restarts k3s once, for both."""

    async def body(loop: VirtualTimeLoop, api: KubeAPI) -> None:
        world = make_world(tmp_path, loop, api, confirmations=2)
        state = await world.run_daemon(DAY_S)
        first = ADDRESSES[1]  # the first round's answer (the cycle starts at the second address)
        assert world.flapper.rounds >= 2 * DAY_S / (30 + 300) - 4, world.flapper.rounds
        restarts = restart_times(world)
        assert_rate_limited(restarts, world.cfg.k3s.min_restart_interval_s)
        assert len(restarts) == 1, restarts
        assert read_dropin(world) == dropin_text(world, first)
        section = state.status()["parts"]["public_ip"]
        assert section["adopted"]["ipv4"] == str(first)
        assert section["pending"] is None or section["pending"]["rounds"] == 1
        assert api.count(user=f"system:node:{NODE}", verb="patch") == 1  # the overwrite was set once, at the start
        checks = state.status()["checks"]
        assert all(c["ok"] for c in checks.values()), checks
        anns = api.store.nodes[NODE]["metadata"]["annotations"]
        assert anns[ANN_PUBLIC_IP_OVERWRITE] == anns[ANN_PUBLIC_IP] == str(first)

    run_in_virtual_time(body)
