"""The release facts the stand-ins decide on (tests/kubeapi/upstream.py)."""

from __future__ import annotations

import pytest

from tests.kubeapi.upstream import (
    FlannelVersion,
    K3sVersion,
    agent_accepts,
    annotation_writer,
    controller_can_list_nodes,
    flannel_cleans_endpoint_peers,
    flannel_of_k3s,
    flannel_publishes_port,
    node_reads_only_its_own_node,
)


@pytest.mark.parametrize(
    ("text", "parts"),
    [("v1.32.4+k3s1", (1, 32, 4, 1, 0, 1)), ("1.32.4+k3s2", (1, 32, 4, 1, 0, 2)),
     ("v1.32.4-rc1+k3s1", (1, 32, 4, 0, 1, 1)), ("v1.32.4+k3s-0123abcd", (1, 32, 4, 1, 0, 0))],
    ids=["release", "no v", "release candidate", "development build"],
)  # fmt: skip
def test_versions_parse_as_the_kubelet_reports_them(text: str, parts: tuple[int, ...]) -> None:
    v = K3sVersion.parse(text)
    assert (v.major, v.minor, v.patch, v.final, v.rc, v.k3s) == parts


def test_versions_order_rc_before_release_and_by_k3s_number() -> None:
    order = ["v1.32.3+k3s1", "v1.32.4-rc1+k3s1", "v1.32.4+k3s1", "v1.32.4+k3s2", "v1.33.0+k3s1"]
    assert sorted(order, key=K3sVersion.parse) == order


def test_a_bad_version_says_what_it_wants() -> None:
    with pytest.raises(ValueError, match=r"want e\.g\. v1\.32\.4"):
        K3sVersion.parse("latest")


@pytest.mark.parametrize(
    ("version", "writer"),
    [("v1.31.14+k3s1", "updateAddressAnnotations"), ("v1.32.10+k3s1", "updateAddressAnnotations"),
     ("v1.32.11+k3s1", "setAnnotations"), ("v1.32.11+k3s2", "syncAnnotations"), ("v1.32.13+k3s1", "syncAnnotations"),
     ("v1.33.6+k3s1", "updateAddressAnnotations"), ("v1.33.7+k3s1", "setAnnotations"),
     ("v1.33.7+k3s3", "syncAnnotations"), ("v1.34.2+k3s1", "updateAddressAnnotations"),
     ("v1.34.3+k3s1", "setAnnotations"), ("v1.34.3+k3s3", "syncAnnotations"), ("v1.35.0+k3s1", "setAnnotations"),
     ("v1.35.0+k3s3", "syncAnnotations"), ("v1.36.0+k3s1", "syncAnnotations"),
     ("v1.28.15+k3s1", "updateAddressAnnotations")],
)  # fmt: skip
def test_who_writes_the_overwrite_by_release(version: str, writer: str) -> None:
    assert annotation_writer(K3sVersion.parse(version)) == writer


@pytest.mark.parametrize(
    ("version", "can"),
    [("v1.28.15+k3s1", False), ("v1.29.12+k3s1", False), ("v1.29.13+k3s1", True), ("v1.30.8+k3s1", False),
     ("v1.30.9+k3s1", True), ("v1.31.4+k3s1", False), ("v1.31.5+k3s1", True), ("v1.32.0+k3s1", True),
     ("v1.35.0+k3s1", True)],
)  # fmt: skip
def test_the_k3s_controller_may_list_nodes_since_the_rbac_back_ports(version: str, can: bool) -> None:
    assert controller_can_list_nodes(K3sVersion.parse(version)) is can


def test_nodes_read_only_their_own_node_from_kubernetes_1_32() -> None:
    assert not node_reads_only_its_own_node(K3sVersion.parse("v1.31.14+k3s1"))
    assert node_reads_only_its_own_node(K3sVersion.parse("v1.32.0+k3s1"))


@pytest.mark.parametrize(
    ("version", "flannel"),
    [("v1.30.11+k3s1", "v0.25.7"), ("v1.30.12+k3s1", "v0.26.7"), ("v1.31.7+k3s1", "v0.25.7"),
     ("v1.31.8+k3s1", "v0.26.7"), ("v1.32.3+k3s1", "v0.25.7"), ("v1.32.4+k3s1", "v0.26.7"),
     ("v1.32.6+k3s1", "v0.27.0"), ("v1.33.0+k3s1", "v0.26.7"), ("v1.35.0+k3s1", "v0.27.4"),
     ("v1.37.0+k3s1", "v0.28.4"), ("v1.27.1+k3s1", "v0.24.0")],
)  # fmt: skip
def test_the_flannel_each_k3s_ships(version: str, flannel: str) -> None:
    assert str(flannel_of_k3s(K3sVersion.parse(version))) == flannel


def test_flannel_behaviour_boundaries() -> None:
    assert flannel_cleans_endpoint_peers(FlannelVersion(0, 25, 7))
    assert not flannel_cleans_endpoint_peers(FlannelVersion(0, 26, 0))
    assert not flannel_publishes_port(FlannelVersion(0, 26, 5))
    assert flannel_publishes_port(FlannelVersion.parse("v0.26.6"))


@pytest.mark.parametrize(
    ("flag", "accepted"),
    [("node-external-ip", True), ("node-ip", True), ("i", True), ("flannel-iface", True), ("token", True),
     ("flannel-backend", False), ("flannel-external-ip", False), ("cluster-cidr", False), ("disable", False),
     ("tls-san", False), ("advertise-address", False), ("cluster-init", False), ("write-kubeconfig-mode", False)],
)  # fmt: skip
def test_the_agent_flag_list(flag: str, accepted: bool) -> None:
    assert agent_accepts(flag) is accepted
