"""The flannel stand-in's peer set (tests/support/flannel.py) against flannel's backend."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from tests.kubeapi.upstream import FlannelVersion
from tests.support.flannel import (
    FLANNEL,
    Flannel,
    FlannelDevice,
    Peer,
    add_peer,
    at_start,
    lease_of,
    node,
    remove_peer,
    update_event,
)

V025, V026, V0266 = (
    Flannel(FlannelVersion(0, 25, 7)),
    Flannel(FlannelVersion(0, 26, 0)),
    Flannel(FlannelVersion(0, 26, 7)),
)
KA, KB, KC, KB2 = (f"{c * 43}=" for c in "ABCD")


def cluster(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        node("a", "198.51.100.1", "10.42.0.0/24", KA),
        node("b", "198.51.100.2", "10.42.1.0/24", KB),
        node("c", "203.0.113.3", "10.42.2.0/24", KC, port=51999),
        *extra,
    ]


def test_a_start_peers_every_other_node_with_its_subnet_and_keepalive() -> None:
    peers = at_start(cluster(), own="a", fl=V0266)
    assert peers == {
        KB: Peer(KB, "198.51.100.2:51820", ("10.42.1.0/24",), 25),
        KC: Peer(KC, "203.0.113.3:51999", ("10.42.2.0/24",), 25),
    }


@pytest.mark.parametrize(
    ("fl", "endpoint"),
    [(V025, "203.0.113.3:51820"), (V026, "203.0.113.3:51820"), (V0266, "203.0.113.3:51999")],
    ids=["v0.25.7 own port", "v0.26.0 own port", "v0.26.7 the peer's Port"],
)
def test_the_endpoint_port_by_flannel_version(fl: Flannel, endpoint: str) -> None:
    assert at_start(cluster(), own="a", fl=fl)[KC].endpoint == endpoint


def test_a_zero_or_missing_port_falls_back_to_the_local_listen_port() -> None:
    c = node("c", "203.0.113.3", "10.42.2.0/24", KC, port=None)
    assert at_start([*cluster()[:2], c], own="a", fl=Flannel(listen_port=51777))[KC].endpoint == "203.0.113.3:51777"


@pytest.mark.parametrize(
    "bad",
    [
        {"metadata": {"name": "x", "annotations": {}}},
        node("x", "198.51.100.9", "10.42.9.0/24", KB2, more={"kube-subnet-manager": "false"}),
        node("x", "not-an-ip", "10.42.9.0/24", KB2),
        node("x", "198.51.100.9", "10.42.9.0/24", KB2, more={"backend-type": "vxlan"}),
    ],
    ids=["no flannel annotations", "not kube-subnet-managed", "public-ip does not parse", "another backend"],
)
def test_nodes_flannel_ignores(bad: dict[str, Any]) -> None:
    assert set(at_start(cluster(bad), own="a", fl=V0266)) == {KB, KC}


def test_behind_one_public_ip_v025_keeps_only_the_last_peer_v026_keeps_both() -> None:
    d = node("d", "198.51.100.2", "10.42.3.0/24", KB2)  # behind the same NAT as b
    assert set(at_start(cluster(d), own="a", fl=V025)) == {KB2, KC}  # b's peer removed by d's add
    both = at_start(cluster(d), own="a", fl=V026)
    assert both[KB].endpoint == both[KB2].endpoint == "198.51.100.2:51820"


def test_a_rekeyed_node_leaves_its_old_peer_without_allowed_ips_since_v026() -> None:
    before = at_start(cluster(), own="a", fl=V026)
    rekeyed = lease_of(node("b", "198.51.100.2", "10.42.1.0/24", KB2), V026)
    assert rekeyed is not None
    after = add_peer(before, rekeyed, V026)
    assert after[KB].allowed_ips == () and after[KB2].allowed_ips == ("10.42.1.0/24",)
    assert KB not in add_peer(before, rekeyed, V025)  # cleanupEndpointPeers: same endpoint IP


def test_v025_cleanup_looks_at_current_endpoints_roamed_ones_included() -> None:
    device = {KC: Peer(KC, "198.51.100.2:40000", ("10.42.2.0/24",))}  # c's peer roamed to b's NAT address
    lease = lease_of(cluster()[1], V025)
    assert lease is not None
    assert set(add_peer(device, lease, V025)) == {KB}
    assert set(add_peer(device, lease, V026)) == {KB, KC}


def test_only_a_node_delete_removes_a_peer_and_by_its_current_key() -> None:
    peers = at_start(cluster(), own="a", fl=V026)
    lease = lease_of(cluster()[1], V026)
    assert lease is not None
    assert set(remove_peer(peers, lease)) == {KC}


@pytest.mark.parametrize(
    ("change", "dual_stack", "passes"),
    [
        ({"public-ip": "198.51.100.99"}, False, True),
        ({"backend-data": '{"PublicKey":"x","Port":51820}'}, False, True),
        ({"public-ip-overwrite": "198.51.100.99"}, False, False),
        ({"wgagent.io/mesh": "x"}, False, False),
        ({"public-ip": "198.51.100.99"}, True, False),
        ({"public-ip": "198.51.100.99", "public-ipv6": "2001:db8::99"}, True, True),
    ],
    ids=["public-ip", "new key", "overwrite alone", "other annotation", "dual-stack v4 only", "dual-stack both"],
)
def test_which_node_updates_reach_the_backend(change: dict[str, str], dual_stack: bool, passes: bool) -> None:
    old = node("b", "198.51.100.2", "10.42.1.0/24", KB, more={"public-ipv6": "2001:db8::2", "backend-v6-data": "{}"})
    new = {"metadata": {"name": "b", "annotations": {**old["metadata"]["annotations"],
                                                     **{FLANNEL + k: v for k, v in change.items()}}}}  # fmt: skip
    assert update_event(old, new, dual_stack=dual_stack) is passes


def test_the_ipv6_device_uses_public_ipv6_backend_v6_data_and_port_51821() -> None:
    b = node("b", "198.51.100.2", "10.42.1.0/24", KB, v6_subnet="fd42:0:0:1::/64", more={
        "public-ipv6": "2001:db8::2", "backend-v6-data": f'{{"PublicKey":"{KB}","Port":51821}}'})  # fmt: skip
    a = node("a", "198.51.100.1", "10.42.0.0/24", KA, v6_subnet="fd42::/64")
    v6 = at_start([a, b], own="a", fl=Flannel(ipv6=True))
    assert v6 == {KB: Peer(KB, "[2001:db8::2]:51821", ("fd42:0:0:1::/64",), 25)}


class FakeDevice:
    def __init__(self) -> None:
        self.sets: list[list[str]] = []
        self.peers: dict[str, str | None] = {}

    def set(self, lines: Sequence[str]) -> None:
        self.sets.append(list(lines))

    def get(self) -> Mapping[str, str | None]:
        return dict(self.peers)


def test_the_applier_sends_what_flannel_sends_and_nothing_without_an_event() -> None:
    dev = FakeDevice()
    flannel = FlannelDevice("a", dev.set, dev.get, V025)
    flannel.start(cluster())
    assert dev.sets[0][0] == "replace_peers=true"
    assert f"public_key={_hex(KA)}" not in dev.sets[0]  # never its own node
    assert "endpoint=198.51.100.2:51820" in dev.sets[0] and "persistent_keepalive_interval=25" in dev.sets[0]
    dev.peers = {KB: "198.51.100.2:51820", KC: "203.0.113.3:51820"}
    flannel.node_added(node("d", "198.51.100.2", "10.42.3.0/24", KB2))
    assert dev.sets[1][-2:] == [f"public_key={_hex(KB)}", "remove=true"]  # cleanupEndpointPeers (v0.25.7)
    unchanged = cluster()[1]
    assert not flannel.node_updated(unchanged, unchanged)
    flannel.node_deleted(cluster()[2])
    assert dev.sets[-1] == [f"public_key={_hex(KC)}", "remove=true"] and len(dev.sets) == 3


def _hex(key: str) -> str:
    return base64.b64decode(key).hex()
