"""The interface check: /proc/net/udp parsing, interface_facts (pure), auto resolution and
InterfacePart on a fake sysfs/proc tree with the fake backend."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from wgagent.config import WireGuardConfig
from wgagent.errors import WireGuardError
from wgagent.model import ANN_BACKEND_DATA, ANN_BACKEND_V6_DATA, ClusterView, NodeInfo
from wgagent.state import State
from wgagent.wireguard.backend import HostNet, Link, open_backend, resolve_interfaces
from wgagent.wireguard.fake import FakeBackend
from wgagent.wireguard.interface import InterfacePart, expected_port, interface_facts, parse_udp_ports
from wgagent.wireguard.model import Device, Peer, key_from_bytes

NOW = 1_800_000_000.0

# Read off a namespace running wireguard-go on 51820, plus a DNS stub and a DHCP client.
UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  387: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 15123 2 0000000000000000 0
  255: 92993DAC:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 14871 2 0000000000000000 0
 8813: 00000000:CA6C 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 23918 2 00000000672ae939 0
"""
UDP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 8814: 00000000000000000000000000000000:CA6D 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 23917 2 000000004f466e02 0
"""  # noqa: E501


def k(n: int) -> str:
    return key_from_bytes(bytes([n]) * 32)


def node(name: str, n: int, v6: int | None = None) -> NodeInfo:
    ann = {ANN_BACKEND_DATA: json.dumps({"PublicKey": k(n), "Port": 51820})}
    if v6 is not None:
        ann[ANN_BACKEND_V6_DATA] = json.dumps({"PublicKey": k(v6), "Port": 51821})
    return NodeInfo(name, ann)


CLUSTER = ClusterView({n.name: n for n in (node("a", 1, v6=11), node("b", 2), node("c", 3), node("d", 4))})
UP = Link("flannel-wg", exists=True, up=True, devtype="wireguard")


def test_parse_udp_ports() -> None:
    assert parse_udp_ports(UDP) == frozenset({53, 68, 51820})
    assert parse_udp_ports(UDP6) == frozenset({51821})
    assert parse_udp_ports(UDP.splitlines()[0]) == frozenset()
    assert parse_udp_ports("header\n garbage line\n 1: nocolon 0\n 2: 0:ZZZZ 0\n") == frozenset()


def test_healthy_interface_with_unreachable_live_nodes_and_missing_peers() -> None:
    dev = Device(
        "flannel-wg",
        51820,
        k(1),  # this is node a
        (
            Peer(k(2), "198.51.100.2:51820", ("10.42.2.0/24",), NOW - 20, rx_bytes=100, tx_bytes=200, keepalive=25),
            Peer(k(3), "198.51.100.3:51820", ("10.42.3.0/24",), NOW - 181, rx_bytes=1, tx_bytes=2),  # live node, silent
            Peer(k(9), None, (), None),  # no node: not "unreachable", GC's business
        ),
    )
    f = interface_facts(UP, dev, frozenset({51820}), CLUSTER, now=NOW, expected_port=51820, backend="netlink")
    assert f.ok
    assert (f.peers, f.active, f.rx_bytes, f.tx_bytes) == (3, 1, 101, 202)
    assert [(u.node, u.public_key) for u in f.unreachable] == [("c", k(3))]
    assert f.nodes_without_peer == ("d",)  # a is us (device key), b and c have peers
    assert f.detail() == (
        "flannel-wg: up, listening on UDP 51820, 3 peers (1 with a handshake in the last 180 s); "
        "live nodes unreachable: c; nodes with no peer here: d"
    )
    assert f.to_json()["unreachable"][0] == {
        "node": "c",
        "public_key": k(3),
        "endpoint": "198.51.100.3:51820",
        "last_handshake": NOW - 181,
    }


def test_own_node_by_name_is_not_missing_a_peer() -> None:
    dev = Device("flannel-wg", 51820, None, (Peer(k(2), None, ("10.42.2.0/24",), NOW),))
    f = interface_facts(UP, dev, frozenset({51820}), CLUSTER, now=NOW, expected_port=51820, backend="x", own_node="a")
    assert f.nodes_without_peer == ("c", "d")


@pytest.mark.parametrize(
    ("link", "device", "bound", "problems"),
    [
        (Link("flannel-wg", False), None, frozenset(), ["flannel-wg does not exist"]),
        (
            Link("flannel-wg", True, False, "wireguard"),
            Device("flannel-wg", 51820),
            frozenset(),
            ["flannel-wg is down", "nothing listens on UDP 51820"],
        ),
        (
            UP,
            Device("flannel-wg", 51999),
            frozenset({51999}),
            ["flannel-wg listens on UDP 51999, not 51820 (wireguard.listen_port)", "nothing listens on UDP 51820"],
        ),
        (UP, Device("flannel-wg", 51820), frozenset({51820}), []),
    ],
    ids=["missing", "down-and-unbound", "wrong-port", "healthy"],
)
def test_problems(link: Link, device: Device | None, bound: frozenset[int], problems: list[str]) -> None:
    f = interface_facts(link, device, bound, None, now=NOW, expected_port=51820, backend="netlink")
    assert f.problems == problems
    assert f.ok is (not problems)


def test_unreadable_device_is_a_problem() -> None:
    f = interface_facts(
        UP, None, frozenset({51820}), None, now=NOW, expected_port=51820, backend="netlink", error="permission denied"
    )
    assert not f.ok and f.detail() == "permission denied"


def test_v6_device_expects_the_port_above() -> None:
    cfg = WireGuardConfig()
    assert (expected_port("flannel-wg", cfg), expected_port("flannel-wg-v6", cfg)) == (51820, 51821)


# --- a fake sysfs / proc tree ------------------------------------------------------------------


def fake_net(tmp_path: Path, links: dict[str, tuple[int, str | None]], udp: str = UDP, udp6: str = UDP6) -> HostNet:
    sys_net = tmp_path / "sys-class-net"
    for name, (flags, devtype) in links.items():
        d = sys_net / name
        d.mkdir(parents=True)
        (d / "flags").write_text(f"{flags:#x}\n")
        (d / "uevent").write_text(f"DEVTYPE={devtype}\nINTERFACE={name}\n" if devtype else f"INTERFACE={name}\n")
    proc = tmp_path / "proc-net"
    proc.mkdir()
    (proc / "udp").write_text(udp)
    (proc / "udp6").write_text(udp6)
    return HostNet(str(sys_net), str(proc))


def test_hostnet_reads_flags_and_devtype(tmp_path: Path) -> None:
    net = fake_net(tmp_path, {"flannel-wg": (0x1091, "wireguard"), "wg0": (0x1090, None)})
    assert net.link("flannel-wg") == Link("flannel-wg", True, True, "wireguard")
    assert net.link("wg0") == Link("wg0", True, False, None)
    assert net.link("nope") == Link("nope", False)
    assert net.link("../etc") == Link("../etc", False)


def test_auto_finds_flannels_wireguard_devices_not_vxlan(tmp_path: Path) -> None:
    uapi = tmp_path / "run"
    uapi.mkdir()
    net = fake_net(tmp_path, {"flannel.1": (0x1043, "vxlan"), "flannel-wg-v6": (0x91, "wireguard")})
    assert resolve_interfaces("auto", net, str(uapi)) == (["flannel-wg-v6"], "")
    (uapi / "flannel-wg.sock").write_text("")  # a userspace implementation's socket counts
    assert resolve_interfaces("auto", net, str(uapi)) == (["flannel-wg", "flannel-wg-v6"], "")
    assert resolve_interfaces("wg7", net, str(uapi)) == (["wg7"], "")


def test_auto_explains_when_flannel_runs_vxlan(tmp_path: Path) -> None:
    net = fake_net(tmp_path, {"flannel.1": (0x1043, "vxlan")})
    names, note = resolve_interfaces("auto", net, str(tmp_path / "run"))
    assert names == []
    assert note == (
        "no WireGuard interface of flannel (looked for flannel-wg, flannel-wg-v6, flannel.1): "
        "flannel.1 is a vxlan device (is flannel-backend wireguard-native?)"
    )


async def test_part_reports_in_the_check_and_status(tmp_path: Path) -> None:
    net = fake_net(tmp_path, {"flannel-wg": (0x1091, "wireguard")})
    dev = Device("flannel-wg", 51820, k(1), (Peer(k(2), None, ("10.42.2.0/24",), NOW - 5, 10, 20, 25),))
    fake = FakeBackend({"flannel-wg": dev})
    state = State(node="a", version="t")
    cluster: list[ClusterView | None] = [None]
    part = InterfacePart(
        state,
        WireGuardConfig(uapi_dir=str(tmp_path / "run")),
        lambda: cluster[0],
        net,
        lambda ifname, uapi_dir: fake,
        clock=lambda: NOW,
    )
    await part.reconcile()
    check = state.checks["wireguard_interface"]
    assert check.ok
    assert check.detail == "flannel-wg: up, listening on UDP 51820, 1 peers (1 with a handshake in the last 180 s)"
    section = state.status()["parts"]["wireguard_interface"]["interfaces"][0]
    assert section["node_list"] == "unknown" and section["backend"] == "fake" and section["peers"] == 1
    cluster[0] = CLUSTER
    await part.reconcile()
    assert "nodes with no peer here: c, d" in state.checks["wireguard_interface"].detail
    fake.fail_get = WireGuardError("flannel-wg: permission denied; wgagent needs CAP_NET_ADMIN (run as root)")
    await part.reconcile()
    check = state.checks["wireguard_interface"]
    assert not check.ok and check.detail == "flannel-wg: permission denied; wgagent needs CAP_NET_ADMIN (run as root)"


async def test_part_fails_when_nothing_is_found(tmp_path: Path) -> None:
    net = fake_net(tmp_path, {})
    state = State(node="a", version="t")
    part = InterfacePart(state, WireGuardConfig(uapi_dir=str(tmp_path / "run")), lambda: None, net, open_backend)
    await part.reconcile()
    check = state.checks["wireguard_interface"]
    assert not check.ok and check.detail.startswith("no WireGuard interface of flannel")


async def test_part_with_a_named_interface_that_is_gone(tmp_path: Path) -> None:
    net = fake_net(tmp_path, {})
    state = State(node="a", version="t")
    cfg = WireGuardConfig(interface="wg0", uapi_dir=str(tmp_path / "run"))
    part = InterfacePart(state, cfg, lambda: None, net, open_backend)
    await part.reconcile()
    assert state.checks["wireguard_interface"].detail == "wg0 does not exist"
    assert not os.path.exists(tmp_path / "run")
