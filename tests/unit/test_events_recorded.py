"""Each part that acts records its Event (with the old and new values), and the wiring records
PublicIPAdopted from the public IP part's signal; with events off nothing is posted."""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from tests.unit.test_gc import cluster_of, device, gc_part, k, peer
from tests.unit.test_k3s_part import Node
from tests.unit.test_k3s_restart import Clock, FakeSystemd, make, request
from tests.unit.test_kube_annotation import K3S, OLD, OW, PUB, V4, FakeAPI, FakeRestarter, part_for
from tests.unit.test_mesh_part import FakeKube, config
from wgagent import events as ev
from wgagent.config import EventsConfig, PublicIPConfig
from wgagent.k3s.role import Identity
from wgagent.k3s.scan import ConfigLocation
from wgagent.model import PublicAddresses
from wgagent.publicip.part import PublicIPPart
from wgagent.state import State
from wgagent.wireguard.fake import FakeBackend
from wgagent.wiring import Seams, build_parts

NOW = 1_800_000_000.0


async def test_peer_gc_records_the_peers_it_removed(tmp_path: Path) -> None:
    fake = FakeBackend({"flannel-wg": device(peer(1, age=10), peer(7, age=None), peer(8, age=None, ips=()))})
    clock = [NOW]
    part, _ = gc_part(tmp_path, fake, cluster_of(a=1), clock)
    await part.reconcile()  # first sight: nothing removed, nothing recorded
    records: list[ev.Record] = []
    clock[0] = NOW + 301
    part, _ = gc_part(tmp_path, fake, cluster_of(a=1), clock)
    part.events = records.append
    await part.reconcile()
    assert [(r.reason, r.type) for r in records] == [("PeersRemoved", "Normal")]
    assert records[0].message == f"removed 2 dead peers from flannel-wg (e.g. {k(7)[:8]}..., {k(8)[:8]}...)"


async def test_the_restarter_records_a_restart_and_why(tmp_path: Path) -> None:
    clock = Clock()
    systemd = FakeSystemd(clock, active="active")
    restarter = make(tmp_path, clock, systemd)
    records: list[ev.Record] = []
    restarter._events = records.append
    await request(restarter, "node-external-ip changed")
    assert [r.reason for r in records] == ["K3sRestarted"]
    assert records[0].message.startswith("restarted k3s.service: ")


async def test_the_k3s_part_records_the_drop_in_it_wrote(tmp_path: Path) -> None:
    node = Node(tmp_path, active="inactive")
    records: list[ev.Record] = []
    node.part._events = records.append
    await node.part.reconcile()
    assert [r.reason for r in records] == ["K3sConfigWritten"]
    assert records[0].message.startswith(f"wrote {node.path}: ") and "node-external-ip" in records[0].message
    await node.part.reconcile()  # unchanged: written once, recorded once
    assert len(records) == 1


async def test_the_annotation_part_records_the_overwrite_it_set() -> None:
    api = FakeAPI({PUB: OLD, K3S: V4})
    records: list[ev.Record] = []
    part, _ = part_for(api, restarter=FakeRestarter(), events=records.append)
    await part.reconcile()
    assert api.annotations is not None and api.annotations[OW] == V4
    assert [r.message for r in records] == [f"{OW}: unset -> {V4}"]


class RecordingKube(FakeKube):
    """A client that keeps the Events it is asked to create."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []

    async def create_event(self, namespace: str, event: Mapping[str, Any]) -> dict[str, Any]:
        self.created.append(dict(event))
        return dict(event)

    async def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return {}


async def test_the_wiring_records_an_adopted_public_ip_and_nothing_with_events_off(tmp_path: Path) -> None:
    identity = Identity("a", "test", None, ConfigLocation.in_dir(str(tmp_path / "etc")), str(tmp_path / "data"))
    for events_on in (True, False):
        clients: list[RecordingKube] = []

        def client(path: str, timeout: float, metrics: object, made: list[RecordingKube] = clients) -> RecordingKube:
            made.append(RecordingKube())
            return made[-1]

        cfg = config(tmp_path, public_ip=PublicIPConfig(sources=("static",), static=(ip_address(V4),)),
                     events=EventsConfig(enabled=events_on))  # fmt: skip
        stages = build_parts(cfg, identity, State(node="a", version="t"), Seams(kube_client=client))  # type: ignore[arg-type]
        parts = [p for stage in stages for p in stage]
        ip_part = next(p for p in parts if isinstance(p, PublicIPPart))
        recorders = [p for p in parts if isinstance(p, ev.EventsPart)]
        ip_part.changed.emit(PublicAddresses(ipv4=ip_address(V4)))  # type: ignore[arg-type]
        for r in recorders:
            await r.recorder.drain(1.0)
        created = [e for c in clients for e in c.created]
        if events_on:
            assert len(recorders) == 1
            assert [(e["reason"], e["message"]) for e in created] == [
                ("PublicIPAdopted", f"public IP none -> {V4} (agreed by the sources and confirmed in 2 round(s))")
            ]
        else:
            assert recorders == [] and created == []
