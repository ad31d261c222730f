"""The mesh part's passes against the simulated mesh's adapters (tests/support/meshsim.py), and
how the wiring builds it: publish, probe, heal, the check, /status, metrics, a clean stop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from tests.support.meshsim import Mesh
from wgagent import events as ev
from wgagent.config import Config, EventsConfig, K3sConfig, KubeConfig, MeshConfig, PublicIPConfig, WireGuardConfig
from wgagent.errors import KubeUnreachable, NftUnavailable, TapUnavailable
from wgagent.events import EventsPart
from wgagent.k3s.role import Identity
from wgagent.k3s.scan import ConfigLocation
from wgagent.mesh import probe as pb
from wgagent.mesh import report as rp
from wgagent.mesh.part import RETRY_S, MeshHost, MeshPart
from wgagent.model import PublicAddresses
from wgagent.state import State
from wgagent.wireguard.backend import HostNet
from wgagent.wiring import Seams, build_parts

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = NOW

    def __call__(self) -> float:
        return self.t


def make(
    tmp: Path, mesh: Mesh, clock: Clock, *, host: MeshHost | None = None, cluster: Callable[[], Any] | None = None,
    mesh_cfg: MeshConfig | None = None,
) -> tuple[MeshPart, State, list[ev.Record]]:  # fmt: skip
    state = State(node="a", version="t", clock=clock)
    records: list[ev.Record] = []
    cfg = Config(node_name="a", state_dir=str(tmp), mesh=mesh_cfg or MeshConfig(),
                 wireguard=WireGuardConfig(interface="flannel-wg", uapi_dir=str(tmp)))  # fmt: skip
    part = MeshPart(
        state, "a", cfg, mesh.api("a"),  # type: ignore[arg-type]
        cluster=cluster or mesh.view, adopted=lambda: PublicAddresses(IPv4Address("203.0.113.1")),
        backends=mesh.backends("a"), host_net=HostNet(), setters=mesh.setters("a"), host=host or mesh.host("a"),
        events=records.append, provider="hetzner", clock=clock, rand=lambda: 0.0,
    )  # fmt: skip
    return part, state, records


def handshaken(mesh: Mesh, clock: Clock) -> None:
    for _ in range(3):
        mesh.tick()
        clock.t += 5


async def test_a_pass_publishes_the_report_and_the_check_passes(tmp_path: Path) -> None:
    clock = Clock()
    mesh = Mesh(["a", "b"], [], clock)
    handshaken(mesh, clock)
    part, state, _ = make(tmp_path, mesh, clock)
    delay = await part.reconcile()
    report = mesh.report("a")
    assert report is not None and report.state == rp.UP and report.interface == "flannel-wg"
    assert report.public == "203.0.113.1" and report.nat is False and report.provider == "hetzner"
    assert state.checks["mesh"].ok, state.checks["mesh"].detail
    assert state.checks["mesh"].detail == (  # b's agent does not report: b's to fix, a's check passes
        "2 nodes; from a: 1 of 1 pairs ok; 1 other pair(s) not ok, fixed elsewhere (wgagent mesh); nothing to fix here"
    )
    assert 1.0 <= delay <= 30.0
    status = state.status()["parts"]["mesh"]
    assert status["interface"] == "flannel-wg" and status["row"] == {} and status["probe"]["tap"] == "ok"
    metrics = state.metrics.render()
    assert 'wgagent_mesh_peer_state{peer_node="b",state="ok"} 1' in metrics
    assert 'wgagent_mesh_peer_handshake_age_seconds{peer_node="b"}' in metrics
    assert 'wgagent_mesh_pairs{state="ok"} 1' in metrics and 'wgagent_mesh_pairs{state="unknown"} 1' in metrics
    assert 'wgagent_mesh_report_writes_total{reason="first"} 1' in metrics
    await part.close()


async def test_without_the_node_list_the_check_waits(tmp_path: Path) -> None:
    clock = Clock()
    part, state, _ = make(tmp_path, Mesh(["a", "b"], [], clock), clock, cluster=lambda: None)
    assert await part.reconcile() == RETRY_S
    assert not state.checks["mesh"].ok and "waiting for the node list" in state.checks["mesh"].detail


async def test_a_report_that_cannot_be_written_fails_the_check_and_is_written_later(tmp_path: Path) -> None:
    clock = Clock()
    mesh = Mesh(["a", "b"], [], clock)
    part, state, _ = make(tmp_path, mesh, clock)
    api = part.api
    api.fail = KubeUnreachable("connection refused")  # type: ignore[attr-defined]
    assert await part.reconcile() <= RETRY_S
    assert state.checks["mesh"].detail == "cannot publish the mesh report on Node a: connection refused"
    assert mesh.report("a") is None
    api.fail = None  # type: ignore[attr-defined]
    clock.t += 15
    await part.reconcile()
    assert state.checks["mesh"].ok and mesh.report("a") is not None


async def test_probes_arriving_at_the_tap_are_read_as_they_come(tmp_path: Path) -> None:
    clock = Clock()
    mesh = Mesh(["a", "b"], [], clock)
    part, _, _ = make(tmp_path, mesh, clock)
    await part.reconcile()  # opens the tap, installs the counters
    mesh.probe("b", [pb.Target("a", "203.0.113.1", 51820)])
    for _ in range(20):
        await asyncio.sleep(0)
        if part._probing.arrivals:
            break
    assert [(a.node, a.src) for a in part._probing.arrivals] == [("b", "203.0.113.2")]
    await part.close()


async def test_a_probe_arriving_while_the_counters_are_read_is_not_taken_for_a_host_drop(tmp_path: Path) -> None:
    """The tap sees a probe at the device before the late input counter counts it; a probe that
    comes while nft runs must not look seen-but-not-counted (the fault lab's false "host")."""
    clock = Clock()
    mesh = Mesh(["a", "b"], [], clock)
    handshaken(mesh, clock)
    b_probes = rp.Report(at=int(clock.t), interface="flannel-wg", probe_interval_s=300, probing_since=int(NOW) - 900)
    mesh.set_annotation("b", rp.ANNOTATION, rp.encode(b_probes))  # b probes a: a expects its probes
    passed: dict[str, int] = {}

    class Racy:
        reads = 0

        async def install(self, port: int) -> None:
            pass

        async def counts(self) -> dict[str, dict[str, int]]:
            self.reads += 1
            if self.reads == 2:  # a probe reaches the device now; the input chain counts it later
                mesh.probe("b", [pb.Target("a", "203.0.113.1", 51820)])
                for _ in range(5):  # nft takes a while: the event loop reads the tap meanwhile
                    await asyncio.sleep(0)
                snapshot = dict(passed)
                passed["203.0.113.2"] = 1
                return {"pass": snapshot, "hs_pre": {}, "hs_post": {}}
            return {"pass": dict(passed), "hs_pre": {}, "hs_post": {}}

        async def remove(self) -> None:
            pass

    sim = mesh.host("a")
    host = MeshHost(tap=sim.tap, counters=Racy, send=sim.send, is_local=sim.is_local)  # type: ignore[arg-type]
    part, _, _ = make(tmp_path, mesh, clock, host=host)
    for _ in range(3):
        await part.reconcile()
        clock.t += 2
    assert part._last is not None
    report = part._last.report
    assert report.inbound.host == 0 and not any(n.inbound == pb.HOST for n in report.notes), report
    await part.close()


async def test_a_tap_and_a_counter_that_cannot_run_are_reported(tmp_path: Path) -> None:
    class NoTap:
        def open(self) -> None:
            raise TapUnavailable("no CAP_NET_RAW: the AF_PACKET socket that sees probes needs it")

        def fileno(self) -> int:
            raise AssertionError

        def drain(self) -> list[pb.Arrival]:
            return []

        def close(self) -> None:
            pass

    class NoNft:
        async def install(self, port: int) -> None:
            raise NftUnavailable("nft not found: install nftables to see the host firewall's verdict")

    clock = Clock()
    mesh = Mesh(["a", "b"], [], clock)
    host = MeshHost(tap=lambda port: NoTap(), counters=lambda: NoNft(), send=mesh.probe, is_local=lambda ip: True)  # type: ignore[arg-type,return-value]
    part, state, _ = make(tmp_path, mesh, clock, host=host)
    await part.reconcile()
    probe = state.status()["parts"]["mesh"]["probe"]
    assert probe["tap"].startswith("no CAP_NET_RAW") and probe["counter"].startswith("nft not found")
    report = mesh.report("a")
    assert report is not None and report.inbound.state.startswith("no CAP_NET_RAW")


async def test_probing_off_opens_nothing(tmp_path: Path) -> None:
    clock = Clock()
    mesh = Mesh(["a", "b"], [], clock)
    part, state, _ = make(tmp_path, mesh, clock, mesh_cfg=MeshConfig(probe=False))
    await part.reconcile()
    assert mesh.rings == {} and state.status()["parts"]["mesh"]["probe"]["tap"] == "off"


async def test_a_drifted_dead_peer_is_set_back_once_with_an_event(tmp_path: Path) -> None:
    clock = Clock()
    mesh = Mesh(["a", "b"], [], clock)
    handshaken(mesh, clock)
    a, b = mesh.nodes["a"], mesh.nodes["b"]
    assert a.peers is not None
    a.peers[b.key].endpoint = ("203.0.113.2", 40001)
    clock.t += 600  # the session died long ago
    part, state, records = make(tmp_path, mesh, clock)
    await part.reconcile()
    assert a.peers[b.key].endpoint == ("203.0.113.2", 51820)
    resets = [r for r in records if r.reason == "EndpointReset"]
    assert [r.message for r in resets] == [
        "peer b: endpoint 203.0.113.2:40001 -> 203.0.113.2:51820 (no handshake for 180 s; flannel does not correct it)"
    ]
    a.peers[b.key].endpoint = ("203.0.113.2", 40001)  # drifts again at once: not touched for 10 minutes
    clock.t += 30
    await part.reconcile()
    assert a.peers[b.key].endpoint == ("203.0.113.2", 40001)
    assert "wgagent_mesh_endpoint_resets_total 1" in state.metrics.render()


async def test_a_fault_on_this_node_fails_its_check(tmp_path: Path) -> None:
    clock = Clock()
    mesh = Mesh(["a", "b"], [], clock)
    mesh.nodes["a"].peers = None  # flannel-wg is gone
    part, state, records = make(tmp_path, mesh, clock)
    await part.reconcile()
    detail = state.checks["mesh"].detail
    assert not state.checks["mesh"].ok and detail.startswith("to fix on a: no-interface: a has no WireGuard interface")
    assert [r.reason for r in records] == ["MeshPathDown"]


async def test_a_clean_stop_writes_stopped_removes_the_table_and_closes_the_tap(tmp_path: Path) -> None:
    clock = Clock()
    mesh = Mesh(["a", "b"], [], clock)
    counters: list[Any] = []
    sim = mesh.host("a")

    def made() -> Any:
        counters.append(sim.counters())
        return counters[-1]

    host = MeshHost(tap=sim.tap, counters=made, send=sim.send, is_local=sim.is_local)
    part, _, _ = make(tmp_path, mesh, clock, host=host)
    await part.reconcile()
    assert mesh.rings and counters[0].installed
    await part.close()
    report = mesh.report("a")
    assert report is not None and report.state == rp.STOPPED
    assert mesh.rings == {} and not counters[0].installed


# --- the wiring ----------------------------------------------------------------------------------


class FakeKube:
    source = "fake"

    async def close(self) -> None:
        pass


def config(tmp: Path, **sections: Any) -> Config:
    base: dict[str, Any] = dict(
        node_name="a", state_dir=str(tmp), public_ip=PublicIPConfig(enabled=False), k3s=K3sConfig(enabled=False),
        kube=KubeConfig(kubeconfig=str(tmp / "k"), list_kubeconfig=str(tmp / "l")),
        wireguard=WireGuardConfig(manage_module=False, uapi_dir=str(tmp)),
    )  # fmt: skip
    return Config(**(base | sections))


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({},
         [["events", "node_watch", "wireguard_module", "wireguard_interface"], ["annotation"], ["peer_gc", "mesh"]]),
        ({"events": EventsConfig(enabled=False)},
         [["node_watch", "wireguard_module", "wireguard_interface"], ["annotation"], ["peer_gc", "mesh"]]),
        ({"mesh": MeshConfig(enabled=False)},
         [["events", "node_watch", "wireguard_module", "wireguard_interface"], ["annotation"], ["peer_gc"]]),
        ({"wireguard": WireGuardConfig(enabled=False)}, [["events", "node_watch"], ["annotation"]]),
    ],
    ids=["all on", "events off", "mesh off", "wireguard off: no mesh"],
)  # fmt: skip
def test_the_wiring_builds_the_mesh_part_last_and_the_event_recorder_once(
    tmp_path: Path, sections: dict[str, Any], expected: list[list[str]]
) -> None:
    seams = Seams(kube_client=lambda path, timeout, metrics: FakeKube())  # type: ignore[arg-type,return-value]
    identity = Identity("a", "test", None, ConfigLocation.in_dir(str(tmp_path / "etc")), str(tmp_path / "data"))
    stages = build_parts(config(tmp_path, **sections), identity, State(node="a", version="t"), seams)
    assert [[p.name for p in stage] for stage in stages] == expected
    recorders = [p for stage in stages for p in stage if isinstance(p, EventsPart)]
    meshes = [p for stage in stages for p in stage if isinstance(p, MeshPart)]
    if recorders and meshes:
        assert meshes[0]._events == recorders[0].recorder.post
