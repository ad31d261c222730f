"""HA servers (k3s/servers.py): the backend a server writes, and the restart gate that makes
servers restart one at a time; then both through the k3s part and its restarter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.unit.test_k3s_part import Node
from wgagent.errors import KubeError
from wgagent.k3s.servers import (
    ANN_BACKEND_WANTED,
    ANN_RESTARTED,
    STAGGER_S,
    Stagger,
    agent_backend_mismatch,
    own_delay_s,
    server_backend,
)
from wgagent.model import ANN_BACKEND_TYPE, ClusterView, NodeInfo

NOW = 1_800_000_000.0


def server(name: str, backend: str | None = "vxlan", **annotations: str) -> NodeInfo:
    anns = dict(annotations)
    if backend is not None:
        anns[ANN_BACKEND_TYPE] = backend
    return NodeInfo(name, anns, server=True)


def view(*nodes: NodeInfo) -> ClusterView:
    return ClusterView({n.name: n for n in nodes})


# --- the backend a server writes ---------------------------------------------------------------


def test_without_the_node_view_a_server_keeps_what_its_drop_in_had() -> None:
    assert server_backend("a", "wireguard-native", None, "vxlan").write == "vxlan"
    assert server_backend("a", "wireguard-native", None, None).write == "wireguard-native"


def test_a_lone_server_or_servers_that_agree_write_the_configured_backend() -> None:
    assert server_backend("a", "wireguard-native", view(server("a")), "vxlan").held is None
    agreeing = view(server("a", "vxlan"), server("b", "wireguard"), server("c", "wireguard"))
    assert server_backend("a", "wireguard-native", agreeing, "vxlan").write == "wireguard-native"
    # the other servers disagree among themselves (a switch under way): nothing to hold to
    mixed = view(server("a"), server("b", "wireguard"), server("c", "vxlan"))
    assert server_backend("a", "wireguard-native", mixed, "vxlan").held is None


def test_a_switch_the_other_servers_are_not_configured_for_is_held_and_says_which() -> None:
    cluster = view(server("a"), server("b", **{ANN_BACKEND_WANTED: "wireguard-native"}), server("c"))
    chosen = server_backend("a", "wireguard-native", cluster, None)
    assert chosen.write == "vxlan"
    assert chosen.held is not None
    assert "the other servers run vxlan (b (vxlan), c (vxlan))" in chosen.held
    assert "(not yet: c)" in chosen.held and "keeps vxlan" in chosen.held


def test_a_switch_every_server_wants_goes_ahead() -> None:
    want = {ANN_BACKEND_WANTED: "wireguard-native"}
    cluster = view(server("a"), server("b", **want), server("c", **want), NodeInfo("agent-1", {}))
    assert server_backend("a", "wireguard-native", cluster, "vxlan").write == "wireguard-native"


def test_an_agent_on_another_backend_than_all_servers_is_found() -> None:
    cluster = view(server("s1", "wireguard"), server("s2", "wireguard"), NodeInfo("n", {ANN_BACKEND_TYPE: "vxlan"}))
    assert agent_backend_mismatch("n", cluster) == ("vxlan", "wireguard")
    assert agent_backend_mismatch("s1", cluster) is None


# --- servers restart one at a time -------------------------------------------------------------


@dataclass
class NeedAt:
    since: float


class Annotations:
    def __init__(self, fail: bool = False) -> None:
        self.written: list[dict[str, str]] = []
        self.fail = fail

    async def __call__(self, annotations: Mapping[str, str]) -> None:
        if self.fail:
            raise KubeError('nodes "a" is forbidden')
        self.written.append(dict(annotations))


async def test_a_lone_server_restarts_at_once_and_writes_nothing() -> None:
    notes = Annotations()
    assert await Stagger("a", lambda: view(server("a")), notes)([NeedAt(NOW)], NOW) is None
    assert await Stagger("a", lambda: None, notes)([NeedAt(NOW)], NOW) is None
    assert notes.written == []


async def test_a_server_waits_its_own_delay_then_marks_its_node_and_restarts() -> None:
    notes = Annotations()
    gate = Stagger("cp-2", lambda: view(server("cp-1"), server("cp-2")), notes)
    assert gate.delay_s == own_delay_s("cp-2") and own_delay_s("cp-1") != own_delay_s("cp-2")
    why = await gate([NeedAt(NOW)], NOW + gate.delay_s - 1)
    assert why is not None and "waits its own" in why and "again in 1 s" in why
    assert notes.written == []
    assert await gate([NeedAt(NOW), NeedAt(NOW + 30)], NOW + gate.delay_s) is None
    assert notes.written == [{ANN_RESTARTED: f"{NOW + gate.delay_s:.0f}"}]


async def test_no_restart_while_another_server_restarted_within_the_stagger() -> None:
    notes = Annotations()
    cluster = view(server("cp-1", **{ANN_RESTARTED: f"{NOW:.0f}"}), server("cp-2"))
    gate = Stagger("cp-2", lambda: cluster, notes)
    later = NOW + 100
    why = await gate([NeedAt(NOW - 3600)], later)
    assert why == (
        f"server cp-1 restarted k3s 100 s ago; servers restart one at a time (again after {STAGGER_S - 100:.0f} s)"
    )
    assert notes.written == []
    assert await gate([NeedAt(NOW - 3600)], NOW + STAGGER_S) is None
    assert len(notes.written) == 1


async def test_a_refused_mark_does_not_keep_k3s_from_restarting(caplog: pytest.LogCaptureFixture) -> None:
    gate = Stagger("cp-2", lambda: view(server("cp-1"), server("cp-2")), Annotations(fail=True))
    assert await gate([NeedAt(NOW)], NOW + 61) is None
    assert f"cannot write {ANN_RESTARTED}" in caplog.text


# --- through the k3s part ----------------------------------------------------------------------


class Servers:
    """The node view the API stand-in would give, with what node1's wgagent writes on its Node."""

    def __init__(self, cluster: ClusterView) -> None:
        self.cluster = cluster
        self.written: list[dict[str, str]] = []

    async def annotate(self, annotations: Mapping[str, str]) -> None:
        self.written.append(dict(annotations))
        own = self.cluster.nodes["node1"]
        anns = {**own.annotations, **annotations}
        self.cluster = ClusterView({**self.cluster.nodes, "node1": NodeInfo("node1", anns, server=True)})


def server_node(tmp: Path, api: Servers, flannel_backend: str) -> Node:
    node = Node(tmp, active="active", flannel_backend=flannel_backend)
    node.annotate = api.annotate
    node.cluster = lambda: api.cluster
    node.gate = Stagger("node1", node.cluster, api.annotate)
    node.part = node.new_part()
    return node


async def test_a_server_holds_a_switch_until_every_server_wants_it_then_restarts_in_turn(tmp_path: Path) -> None:
    api = Servers(view(server("node1"), server("node0"), server("node2")))
    node = server_node(tmp_path, api, flannel_backend="wireguard-native")
    await node.part.reconcile()
    assert api.written[0] == {ANN_BACKEND_WANTED: "wireguard-native"}  # what it wants, for the others
    assert node.dropin()["flannel-backend"] == "vxlan"
    ok, detail = node.check()
    assert not ok and "keeps vxlan until every server's wgagent is configured for wireguard-native" in detail
    assert "(not yet: node0, node2)" in detail
    restarts_before = len(node.systemd.restart_calls)

    # the other servers' wgagents are configured for it too: this one switches, after its own delay
    want = {ANN_BACKEND_WANTED: "wireguard-native"}
    api.cluster = view(api.cluster.nodes["node1"], server("node0", **want), server("node2", **want))
    node.clock.advance(700)
    await node.part.reconcile()
    assert node.dropin()["flannel-backend"] == "wireguard-native"
    assert len(node.systemd.restart_calls) == restarts_before  # not at once: its own delay first
    assert "servers restart one at a time" in node.check()[1]
    node.clock.advance(own_delay_s("node1"))
    await node.part.reconcile()
    assert len(node.systemd.restart_calls) == restarts_before + 1
    assert api.written[-1] == {ANN_RESTARTED: f"{node.clock.wall():.0f}"}
