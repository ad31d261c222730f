"""The stand-in's model of a k3s start (tests/kubeapi/k3s.py), case by case against upstream."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.kubeapi.k3s import (
    FLANNEL,
    K3S_EXTERNAL_IP,
    NODE_ARGS,
    NODE_ENV,
    OVERWRITE_V4,
    OVERWRITE_V6,
    Cluster,
    Flags,
    StartError,
    StartRequest,
    config_args,
    config_files,
    normalize_cli,
    start,
)

PUBLIC_IP = FLANNEL + "public-ip"
PUBLIC_IPV6 = FLANNEL + "public-ipv6"
CONF = "/etc/rancher/k3s/config.yaml"
DROPIN = "/etc/rancher/k3s/config.yaml.d/50-wgagent.yaml"
KEY = "S2V5S2V5S2V5S2V5S2V5S2V5S2V5S2V5S2V5S2V5S2U="
OLD, DEC, JAN = "v1.32.4+k3s1", "v1.32.11+k3s1", "v1.32.11+k3s3"
"""A release that writes the overwrite in configureNode, one with setAnnotations (December
2025), one with syncAnnotations (PR #13431, January 2026)."""


def node(annotations: dict[str, str] | None = None, *, version: str = OLD, v6: bool = False) -> dict[str, Any]:
    cidrs = ["10.42.1.0/24", "fd42::/64"] if v6 else ["10.42.1.0/24"]
    addresses = [{"type": "InternalIP", "address": "10.0.0.2"}]
    if v6:
        addresses.append({"type": "InternalIP", "address": "2001:db8::2"})
    return {
        "metadata": {"name": "n1", "annotations": dict(annotations or {})},
        "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs},
        "status": {"addresses": addresses, "nodeInfo": {"kubeletVersion": version}},
    }


def req(*lines: str, role: str = "agent", version: str | None = None, **kw: Any) -> StartRequest:
    files = ((CONF, "\n".join(lines) + "\n"),) if lines else ()
    return StartRequest(role=role, files=files, version=version, **kw)


def anns_after(n: dict[str, Any], r: StartRequest, cluster: Cluster | None = None) -> dict[str, str]:
    out = start(n, r, cluster or Cluster(flannel_backend="wireguard-native"), public_key=KEY, new_key=lambda: "NEW")
    assert out.started, out.error
    return dict(out.node["metadata"]["annotations"])


# --- the config ----------------------------------------------------------------------------------


def test_config_args_merge_as_k3s_read_config_file() -> None:
    files = [
        (CONF, "node-ip: 10.0.0.1\nflannel-backend: vxlan\ntls-san: [a, b]\n"),
        (DROPIN, "flannel-backend: wireguard-native\nnode-ip+: 10.0.0.9\nflannel-external-ip: true\n"),
        ("/etc/rancher/k3s/config.yaml.d/90-x.yml", "i: 10.0.0.7\nnode-label+: [x=1]\n"),
    ]
    assert config_args(files) == [
        "--node-ip=10.0.0.1",
        "--node-ip=10.0.0.9",
        "--flannel-backend=wireguard-native",
        "--tls-san=a",
        "--tls-san=b",
        "--flannel-external-ip=true",
        "-i=10.0.0.7",
        "--node-label=x=1",
    ]


@pytest.mark.parametrize(
    ("text", "says"),
    [("a: [1\n", "yaml: line 2"), ("- a\n- b\n", "cannot unmarshal"), ("key: {bad\n", "yaml:")],
    ids=["unclosed list", "a list, not a mapping", "unclosed map"],
)
def test_a_config_file_that_does_not_parse_stops_k3s(text: str, says: str) -> None:
    out = start(node(), StartRequest(files=((CONF, text),)), Cluster(), public_key=KEY)
    assert not out.started and says in (out.error or "") and out.writes == ()


def test_config_files_are_the_main_file_then_yaml_dropins_by_name(tmp_path: Any) -> None:
    main = tmp_path / "config.yaml"
    dropins = tmp_path / "config.yaml.d"
    dropins.mkdir()
    for name in ("b.yaml", "A.YML", "c.txt", "10.yaml"):
        (dropins / name).write_text("x: 1\n")
    (dropins / "sub.yaml").mkdir()
    assert [p.rsplit("/", 1)[1] for p in config_files(str(main))] == ["10.yaml", "A.YML", "b.yaml"]
    main.write_text("x: 1\n")
    assert config_files(str(main))[0] == str(main)


def test_cli_flags_join_their_values_and_slices_keep_every_occurrence() -> None:
    args = normalize_cli(["--node-external-ip", "198.51.100.1", "--flannel-external-ip", "-i", "10.0.0.1,10.0.0.2"])
    assert args == ["--node-external-ip=198.51.100.1", "--flannel-external-ip", "-i=10.0.0.1,10.0.0.2"]
    flags = Flags.parse(["--node-external-ip=203.0.113.1", *args])
    assert flags.all("node-external-ip") == ["203.0.113.1", "198.51.100.1"]
    assert flags.all("node-ip") == ["10.0.0.1", "10.0.0.2"] and flags.bool("flannel-external-ip")


@pytest.mark.parametrize(
    ("where", "key"),
    [("config", "flannel-backend"), ("config", "flannel-external-ip"), ("config", "cluster-cidr"),
     ("config", "disable"), ("config", "tls-san"), ("config", "advertise-address"), ("config", "cluster-init"),
     ("config", "write-kubeconfig-mode"), ("cli", "flannel-backend")],
)  # fmt: skip
def test_an_agent_with_a_server_only_key_does_not_start_and_changes_nothing(where: str, key: str) -> None:
    n = node({OVERWRITE_V4: "203.0.113.9"})
    line = f"{key}: x"
    r = req("node-external-ip: 198.51.100.7", line) if where == "config" else req(args=(f"--{key}", "x"))
    out = start(n, r, Cluster(flannel_external_ip=True), public_key=KEY)
    assert (out.started, out.error, out.writes) == (False, f"flag provided but not defined: -{key}", ())
    assert out.node == n


def test_a_server_ignores_keys_it_does_not_know_only_an_agent_refuses_them() -> None:
    out = start(node(), req("flannel-backend: wireguard-native", role="server"), Cluster(), public_key=KEY)
    assert out.started and out.cluster is not None and out.cluster.flannel_backend == "wireguard-native"


MISMATCH = "critical configuration value mismatch between servers (flannel-backend)"
RAN_AS_SERVER = {"k3s.io/node-args": '["server","--server","https://10.0.0.1:6443"]'}


def test_a_joining_server_with_other_critical_args_does_not_start() -> None:
    r = req("server: https://10.0.0.1:6443", "flannel-backend: vxlan", role="server")
    out = start(node(), r, Cluster(flannel_backend="wireguard-native"), public_key=KEY)
    assert not out.started and MISMATCH in (out.error or "")


def test_an_etcd_member_that_joined_before_restarts_without_the_comparison() -> None:
    r = req("server: https://10.0.0.1:6443", "flannel-backend: vxlan", role="server")
    out = start(node(RAN_AS_SERVER), r, Cluster(flannel_backend="wireguard-native"), public_key=KEY)
    assert out.started, out.error


def test_a_control_plane_only_server_compares_at_every_start_an_external_datastore_never() -> None:
    cp_only = req("server: https://10.0.0.1:6443", "disable-etcd: true", "flannel-backend: vxlan", role="server")
    out = start(node(RAN_AS_SERVER), cp_only, Cluster(flannel_backend="wireguard-native"), public_key=KEY)
    assert not out.started and MISMATCH in (out.error or "")
    kine = req("server: https://10.0.0.1:6443", "datastore-endpoint: mysql://db", "flannel-backend: vxlan",
               role="server")  # fmt: skip
    out = start(node(), kine, Cluster(flannel_backend="wireguard-native"), public_key=KEY)
    assert out.started, out.error


def test_an_invalid_node_external_ip_stops_k3s() -> None:
    out = start(node(), req("node-external-ip: 203.0.113.300"), Cluster(), public_key=KEY)
    assert (out.started, out.error) == (False, "invalid node-external-ip: invalid ip format '203.0.113.300'")


# --- the overwrite, by version -------------------------------------------------------------------

FEI_ON = Cluster(flannel_backend="wireguard-native", flannel_external_ip=True)
FEI_OFF = Cluster(flannel_backend="wireguard-native", flannel_external_ip=False)
NO_CCM = Cluster(flannel_backend="wireguard-native", flannel_external_ip=True, disable_ccm=True)


@pytest.mark.parametrize(
    ("version", "cluster", "before", "overwrite", "public_ip"),
    [
        # flannel-external-ip on: every release writes the overwrite from node-external-ip
        (OLD, FEI_ON, None, "198.51.100.7", "198.51.100.7"),
        (DEC, FEI_ON, None, "198.51.100.7", "198.51.100.7"),
        (JAN, FEI_ON, None, "198.51.100.7", "198.51.100.7"),
        # ... over someone else's value: k3s wins, at every start
        (OLD, FEI_ON, "203.0.113.9", "198.51.100.7", "198.51.100.7"),
        (JAN, FEI_ON, "203.0.113.9", "198.51.100.7", "198.51.100.7"),
        # flannel-external-ip off: older releases leave any overwrite alone, PR #13431 removes it
        (OLD, FEI_OFF, None, None, "10.0.0.2"),
        (OLD, FEI_OFF, "203.0.113.9", "203.0.113.9", "203.0.113.9"),
        (DEC, FEI_OFF, "203.0.113.9", "203.0.113.9", "203.0.113.9"),
        (JAN, FEI_OFF, "203.0.113.9", None, "10.0.0.2"),
        ("v1.34.3+k3s3", FEI_OFF, "203.0.113.9", None, "10.0.0.2"),
        ("v1.34.3+k3s1", FEI_OFF, "203.0.113.9", "203.0.113.9", "203.0.113.9"),
        ("v1.36.2+k3s1", FEI_OFF, "203.0.113.9", None, "10.0.0.2"),
        ("v1.31.14+k3s1", FEI_OFF, "203.0.113.9", "203.0.113.9", "203.0.113.9"),
        # the cloud controller disabled: before December 2025 configureNode skipped it all
        (OLD, NO_CCM, None, None, "10.0.0.2"),
        (DEC, NO_CCM, None, "198.51.100.7", "198.51.100.7"),
    ],
    ids=["old on", "dec on", "jan on", "old on over", "jan on over", "old off", "old off keeps", "dec off keeps",
         "jan off removes", "1.34 jan off removes", "1.34 dec off keeps", "1.36 off removes", "1.31 off keeps",
         "old no ccm", "dec no ccm"],
)  # fmt: skip
def test_the_overwrite_and_public_ip_after_a_start(
    version: str, cluster: Cluster, before: str | None, overwrite: str | None, public_ip: str
) -> None:
    n = node({OVERWRITE_V4: before} if before else {}, version=version)
    anns = anns_after(n, req("node-external-ip: 198.51.100.7"), cluster)
    assert (anns.get(OVERWRITE_V4), anns[PUBLIC_IP]) == (overwrite, public_ip)


def test_without_node_external_ip_nothing_writes_the_overwrite_and_jan_still_removes_only_when_off() -> None:
    assert OVERWRITE_V4 not in anns_after(node(version=JAN), req(), FEI_ON)
    assert anns_after(node({OVERWRITE_V4: "203.0.113.9"}, version=JAN), req(), FEI_ON)[OVERWRITE_V4] == "203.0.113.9"


def test_the_last_address_of_a_family_wins_and_both_families_are_written() -> None:
    r = req("node-external-ip: [198.51.100.7, 2001:db8::7, 198.51.100.8]")
    anns = anns_after(node(version=DEC), r, FEI_ON)
    assert (anns[OVERWRITE_V4], anns[OVERWRITE_V6]) == ("198.51.100.8", "2001:db8::7")
    assert anns[K3S_EXTERNAL_IP] == "198.51.100.7,2001:db8::7,198.51.100.8"


def test_a_cli_flag_adds_to_the_config_files_list_and_wins_the_overwrite() -> None:
    r = req("node-external-ip: 198.51.100.7", args=("--node-external-ip", "203.0.113.50"))
    anns = anns_after(node(), r, FEI_ON)
    assert anns[OVERWRITE_V4] == anns[PUBLIC_IP] == "203.0.113.50"


def test_k3s_external_ip_is_never_removed_when_node_external_ip_goes() -> None:
    anns = anns_after(node(), req("node-external-ip: 198.51.100.7"), FEI_OFF)
    again = anns_after(node(anns), req(), FEI_OFF)
    assert again[K3S_EXTERNAL_IP] == "198.51.100.7"


def test_the_cloud_controller_reports_the_external_ip_in_the_node_status() -> None:
    out = start(node(), req("node-external-ip: 198.51.100.7"), FEI_OFF, public_key=KEY)
    assert {"type": "ExternalIP", "address": "198.51.100.7"} in out.node["status"]["addresses"]


# --- flannel's lease -----------------------------------------------------------------------------


def test_ipv6_is_published_only_on_an_ipv6_cluster() -> None:
    dual = Cluster(flannel_backend="wireguard-native", flannel_external_ip=True,
                   cluster_cidrs=("10.42.0.0/16", "fd42::/56"))  # fmt: skip
    r = req("node-external-ip: [198.51.100.7, 2001:db8::7]", version=JAN)
    v4_only = anns_after(node(v6=True, version=JAN), r, FEI_ON)
    assert v4_only[OVERWRITE_V6] == "2001:db8::7"  # k3s writes it...
    assert PUBLIC_IPV6 not in v4_only and FLANNEL + "backend-v6-data" not in v4_only  # ...flannel never reads it
    both = anns_after(node(v6=True, version=JAN), r, dual)
    assert both[PUBLIC_IPV6] == "2001:db8::7"
    assert json.loads(both[FLANNEL + "backend-v6-data"]) == {"PublicKey": KEY, "Port": 51821}


def test_an_ipv6_cluster_without_an_ipv6_address_stops_flannel_after_k3s_wrote_its_annotations() -> None:
    dual = Cluster(flannel_backend="wireguard-native", cluster_cidrs=("10.42.0.0/16", "fd42::/56"))
    out = start(node(), req(), dual, public_key=KEY)
    assert not out.started and "failed to find IPv6 address" in (out.error or "")
    assert [w.step for w in out.writes] == ["configureNode", "cloud-controller"]


@pytest.mark.parametrize(
    ("version", "data"),
    [("v1.32.3+k3s1", {"PublicKey": KEY}), ("v1.32.4+k3s1", {"PublicKey": KEY, "Port": 51820})],
    ids=["flannel v0.25.7", "flannel v0.26.7"],
)
def test_backend_data_carries_the_port_since_flannel_0_26_6(version: str, data: dict[str, Any]) -> None:
    anns = anns_after(node(version=version), req(), FEI_OFF)
    assert json.loads(anns[FLANNEL + "backend-data"]) == data


@pytest.mark.parametrize(
    ("reboot", "key_file", "key"),
    [(False, None, KEY), (True, None, "NEW"), (True, "/var/lib/rancher/k3s/agent/wgkey", KEY),
     (True, "/run/k3s/wgkey", "NEW")],
    ids=["restart", "reboot, key on tmpfs", "reboot, WIREGUARD_KEY_FILE on disk", "reboot, WIREGUARD_KEY_FILE on /run"],
)  # fmt: skip
def test_flannel_keeps_its_key_unless_the_key_file_was_on_tmpfs_and_the_node_rebooted(
    reboot: bool, key_file: str | None, key: str
) -> None:
    env = (("WIREGUARD_KEY_FILE", key_file),) if key_file else ()
    anns = anns_after(node(), req(reboot=reboot, env=env), FEI_OFF)
    assert json.loads(anns[FLANNEL + "backend-data"])["PublicKey"] == key


def test_acquire_lease_writes_nothing_when_all_is_as_flannel_would_write_it() -> None:
    first = start(node(), req("node-external-ip: 198.51.100.7"), FEI_ON, public_key=KEY)
    out = start(first.node, req("node-external-ip: 198.51.100.7"), FEI_ON, public_key=KEY)
    assert out.started and out.writes == ()


def test_the_vxlan_backend_publishes_vxlan_data_and_no_key() -> None:
    anns = anns_after(node(), req(), Cluster(flannel_backend="vxlan"))
    assert anns[FLANNEL + "backend-type"] == "vxlan" and "VtepMAC" in anns[FLANNEL + "backend-data"]


def test_node_args_env_and_hash_record_the_effective_command_line_with_secrets_hidden() -> None:
    r = req("node-external-ip: 198.51.100.7", "token: s3cret", args=("--node-ip", "10.0.0.2"),
            env=(("K3S_TOKEN", "t0k"), ("K3S_NODE_NAME", "n1"), ("PATH", "/bin")))  # fmt: skip
    anns = anns_after(node(), r, FEI_OFF)
    assert json.loads(anns[NODE_ARGS]) == ["agent", "--node-external-ip", "198.51.100.7", "--token", "********",
                                           "--node-ip", "10.0.0.2"]  # fmt: skip
    assert json.loads(anns[NODE_ENV]) == {"K3S_NODE_NAME": "n1", "K3S_TOKEN": "********"}


def test_start_never_mutates_its_input() -> None:
    n = node({OVERWRITE_V4: "203.0.113.9"}, version=JAN)
    before = copy.deepcopy(n)
    start(n, req("node-external-ip: 198.51.100.7"), FEI_OFF, public_key=KEY)
    assert n == before


def test_each_step_is_one_write_in_upstream_order_with_its_source() -> None:
    out = start(node({OVERWRITE_V4: "203.0.113.9"}), req("node-external-ip: 198.51.100.7", version=JAN), FEI_OFF,
                public_key=KEY)  # fmt: skip
    assert [(w.step, w.credential) for w in out.writes] == [
        ("kubelet", "system:node:n1"),
        ("configureNode", "system:node:n1"),
        ("cloud-controller", "k3s-cloud-controller"),
        ("syncAnnotations", "system:node:n1"),
        ("AcquireLease", "flannel"),
    ]
    assert "pkg/agent/flannel/setup.go" in out.writes[3].source
    assert OVERWRITE_V4 in out.writes[2].node["metadata"]["annotations"]
    assert OVERWRITE_V4 not in out.writes[3].node["metadata"]["annotations"]


def test_startup_errors_are_start_errors() -> None:
    with pytest.raises(StartError):
        config_args([(CONF, "[")])
