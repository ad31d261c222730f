"""The kernel backend on real kernel WireGuard: Linux 6.1 in user-mode Linux (see tests/uml).

Every test here runs inside the ``wireguard`` kernel (``scripts/uml-kernel``), once under
the venv's interpreter (pyroute2 0.9.x installed) and once under Debian's /usr/bin/python3
(python3-pyroute2 0.7.2), in lab namespaces:

- ``node`` has ``flannel-wg`` (port 51820, fwmark 0x2a) with two live peers that really
  handshake through veth links (``peer4`` over IPv4, ``peer6`` over IPv6, keepalive 25) and
  10,000 dead ones: IPv4 and IPv6 endpoints or none, one or two allowed IPs or none,
  keepalive or not, never a handshake, and one with 2,500 allowed IPs. The dump spans dozens
  of messages and peers continue from one message into the next
  (``drivers/net/wireguard/netlink.c``, ``get_peer``: a peer whose allowed IPs do not fit
  is repeated in the next message with its key and the rest of them).

``wg show <if> dump`` (wireguard-tools) is the reference for every field. Nothing leaves the
kernel: it has no link to the host's network, and the dead peers' endpoints
(203.0.113.x, 2001:db8:ffff::x) route nowhere even inside it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.netns import InNetns
from tests.conftest import ROOT, require
from tests.labkit import Host, Lab, wait_for
from tests.support import configs
from tests.uml import PYTHONS, python_path, wgshow
from tests.uml.wgkit import Device, PeerSpec, add_peers, make_device, netlink_in, poke, random_key, wg_dump
from wgagent.errors import DeviceNotFound

pytest_plugins = ("tests.uml.plugin",)
pytestmark = pytest.mark.kernel("wireguard")

IF = "flannel-wg"
DEAD = 10_000
BIG_IPS = 2_500


@dataclass
class World:
    lab: Lab
    node: Host
    ns: InNetns
    dev: Device
    live: tuple[str, str]
    """The public keys of peer4's and peer6's devices."""
    dead: list[PeerSpec]


def dead_peers(n: int) -> list[PeerSpec]:
    """``n`` peers that never answer, of every shape flannel and time leave behind."""
    out = []
    for i in range(n):
        kind = i % 5
        if kind == 0:  # a vanished node: its IPv4 endpoint and pod CIDR route
            out.append(PeerSpec(random_key(), f"203.0.113.{i % 250 + 1}:51820", (f"10.100.{i >> 8}.{i & 255}/32",)))
        elif kind == 1:  # the same, dual-stack
            ips = (f"10.101.{i >> 8}.{i & 255}/32", f"fd00:101::{i:x}/128")
            out.append(PeerSpec(random_key(), f"[2001:db8:ffff::{i:x}]:51821", ips))
        elif kind == 2:  # a re-keyed node's old key: flannel moved its routes to the new one
            out.append(PeerSpec(random_key()))
        elif kind == 3:  # keepalive set, no endpoint: it never sends
            out.append(PeerSpec(random_key(), None, (f"10.102.{i >> 8}.{i & 255}/32",), keepalive=25))
        else:  # an endpoint and nothing routed to it
            out.append(PeerSpec(random_key(), f"203.0.113.{i % 250 + 1}:{40000 + i % 1000}"))
    big = [f"10.{110 + (j >> 16)}.{(j >> 8) & 255}.{j & 255}/32" for j in range(BIG_IPS - 500)]
    out.insert(n // 2, PeerSpec(random_key(), "203.0.113.99:51820", big + [f"fd00:110::{j:x}/128" for j in range(500)]))
    return out


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    require("ip", "wg", root=True)
    with Lab() as lab:
        node, peer4, peer6 = lab.host("node"), lab.host("peer4"), lab.host("peer6")
        lab.link(node, "eth4", "198.51.100.1/30", peer4, "eth0", "198.51.100.2/30")
        lab.link(node, "eth6", None, peer6, "eth0", None)
        lab.run(node, "ip", "-6", "addr", "add", "2001:db8:6::1/64", "dev", "eth6", "nodad")
        lab.run(peer6, "ip", "-6", "addr", "add", "2001:db8:6::2/64", "dev", "eth0", "nodad")
        dev = make_device(lab, node, IF, port=51820, fwmark=0x2A, address="10.42.0.1/16")
        d4 = make_device(lab, peer4, "wg0", port=51820, address="10.42.4.1/16")
        d6 = make_device(lab, peer6, "wg0", port=51820, address="10.42.6.1/16")
        add_peers(lab, peer4, "wg0", [PeerSpec(dev.public_key, "198.51.100.1:51820", ("10.42.0.0/24",))])
        add_peers(lab, peer6, "wg0", [PeerSpec(dev.public_key, "[2001:db8:6::1]:51820", ("10.42.0.0/24",))])
        live = [
            PeerSpec(d4.public_key, "198.51.100.2:51820", ("10.42.4.0/24",), keepalive=25),
            PeerSpec(d6.public_key, "[2001:db8:6::2]:51820", ("10.42.6.0/24", "fd00:6::/64"), keepalive=25),
        ]
        dead = dead_peers(DEAD)
        add_peers(lab, node, IF, live + dead)
        poke(lab, node, "10.42.4.1", "10.42.6.1")

        def handshook() -> bool:
            return all(p.handshake_s for p in wgshow.parse(wg_dump(lab, node, IF)).peers[:2])

        wait_for(handshook, 20, "handshakes with peer4 (IPv4) and peer6 (IPv6)")
        with InNetns(node.netns) as ns:
            yield World(lab, node, ns, dev, (d4.public_key, d6.public_key), dead)


def check_interpreter(python: str) -> None:
    """The harness ran this test under the interpreter it names (so both dependency sets run)."""
    assert os.path.realpath(sys.executable) == os.path.realpath(python_path(python) or "")


@pytest.mark.parametrize("python", PYTHONS)
def test_get_of_10000_peers_equals_wg_show_dump(world: World, python: str) -> None:
    check_interpreter(python)
    dump = asyncio.run(netlink_in(world.ns).dump(IF))
    shown = wgshow.parse(wg_dump(world.lab, world.node, IF))
    # The live peers' counters move (keepalive every 25 s): read again if one moved in between.
    for _ in range(3):
        if not wgshow.differences(dump, shown):
            break
        dump = asyncio.run(netlink_in(world.ns).dump(IF))
        shown = wgshow.parse(wg_dump(world.lab, world.node, IF))
    assert wgshow.differences(dump, shown) == []
    dev = dump.device
    assert (dev.listen_port, dev.public_key, dump.fwmark) == (51820, world.dev.public_key, 0x2A)
    assert len(dev.peers) == DEAD + 3
    # What the dump had to carry, so that the equality above means something:
    assert dump.messages > 10 and dump.continued >= 1, (dump.messages, dump.continued)
    peer4, peer6 = dev.peers[0], dev.peers[1]
    assert (peer4.public_key, peer6.public_key) == world.live
    assert peer4.endpoint == "198.51.100.2:51820" and peer6.endpoint == "[2001:db8:6::2]:51820"
    for p in (peer4, peer6):
        assert p.last_handshake is not None and abs(time.time() - p.last_handshake) < 300
        assert p.rx_bytes > 0 and p.tx_bytes > 0 and p.keepalive == 25
    assert sum(p.last_handshake is None for p in dev.peers) == DEAD + 1
    assert sum(1 for p in dev.peers if p.endpoint and p.endpoint.startswith("[2001:db8:ffff::")) == DEAD // 5
    assert max(len(p.allowed_ips) for p in dev.peers) == BIG_IPS


@pytest.mark.parametrize("python", PYTHONS)
def test_reading_what_is_no_wireguard_device(world: World, python: str) -> None:
    check_interpreter(python)
    backend = netlink_in(world.ns)
    with pytest.raises(DeviceNotFound, match=r"^no interface flannel-wg-v6$"):
        asyncio.run(backend.get("flannel-wg-v6"))
    with pytest.raises(DeviceNotFound, match=r"^eth4 is not a WireGuard interface$"):
        asyncio.run(backend.get("eth4"))
    peer4 = world.lab.hosts[1]
    with InNetns(peer4.netns) as ns, pytest.raises(DeviceNotFound, match=r"^no interface flannel-wg$"):
        asyncio.run(netlink_in(ns).get(IF))  # a namespace with a wg0 only


@pytest.mark.parametrize("python", PYTHONS)
def test_batched_removal_with_keys_that_are_not_there(world: World, python: str) -> None:
    """One ``remove_peers`` of 5,000 dead keys and 300 that are no peer: six messages with
    ``WGPEER_F_REMOVE_ME``, each acknowledged; the kernel skips the absent keys (``set_peer``)."""
    check_interpreter(python)
    backend = netlink_in(world.ns)
    before = {p.public_key for p in wgshow.parse(wg_dump(world.lab, world.node, IF)).peers}
    gone = [p.public_key for p in world.dead[: DEAD // 2]]
    absent = [random_key() for _ in range(300)]
    keys = gone[:2500] + absent + gone[2500:]
    asyncio.run(backend.remove_peers(IF, keys))
    after = {p.public_key for p in wgshow.parse(wg_dump(world.lab, world.node, IF)).peers}
    assert after == before - set(gone)
    assert set(world.live) <= after
    asyncio.run(backend.remove_peers(IF, absent))  # only absent keys: nothing to do, no error
    assert {p.public_key for p in wgshow.parse(wg_dump(world.lab, world.node, IF)).peers} == after
    with pytest.raises(DeviceNotFound, match=r"^eth4 is not a WireGuard interface$"):
        asyncio.run(backend.remove_peers("eth4", absent[:1]))
    # The live peers still talk: a new datagram through the tunnel reaches peer4.
    sent = wgshow.parse(wg_dump(world.lab, world.node, IF)).peers[0].tx_bytes
    poke(world.lab, world.node, "10.42.4.1")
    wait_for(lambda: wgshow.parse(wg_dump(world.lab, world.node, IF)).peers[0].tx_bytes > sent, 10, "traffic to peer4")
    world.dead[: DEAD // 2] = []


@pytest.mark.parametrize("python", PYTHONS)
def test_auto_finds_flannels_kernel_devices_by_devtype_and_checks_them(python: str, tmp_path: Path) -> None:
    """``wgagent run --once`` inside a node namespace (its own /sys and /proc/net): ``auto``
    takes flannel-wg and flannel-wg-v6 (DEVTYPE=wireguard in their uevent) and not flannel.1
    (a veth here: no DEVTYPE); the interface check reads both through netlink, sees their
    kernel UDP sockets bound, and fails on a device that is down or on the wrong port."""
    check_interpreter(python)
    require("ip", "wg", root=True)
    with Lab() as lab:
        node, other = lab.host("node"), lab.host("other")
        lab.link(node, "flannel.1", "10.9.0.1/30", other, "eth0", "10.9.0.2/30")
        v4 = make_device(lab, node, "flannel-wg", port=51820, address="10.42.0.0/32")
        v6 = make_device(lab, node, "flannel-wg-v6", port=51821)
        add_peers(lab, node, "flannel-wg", [PeerSpec(random_key(), "203.0.113.5:51820", ("10.42.5.0/24",))])
        cfg = configs.sandbox(
            str(tmp_path),
            18795,
            wireguard={"enabled": True, "manage_module": True, "interface": "auto", "gc": {"enabled": False}},
        )
        path = configs.write(str(tmp_path / "config.yaml"), cfg)

        def run_once() -> tuple[int, dict[str, Any]]:
            proc = subprocess.run(
                node.argv(sys.executable, "-m", "wgagent", "--config", path, "run", "--once"),
                capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
            )  # fmt: skip
            assert "Traceback" not in proc.stderr, proc.stderr
            return proc.returncode, json.loads(proc.stdout)

        code, status = run_once()
        checks = status["checks"]
        assert code == 0, checks
        assert checks["wireguard_interface"]["detail"] == (
            "flannel-wg: up, listening on UDP 51820, 1 peers (0 with a handshake in the last 180 s); "
            "flannel-wg-v6: up, listening on UDP 51821, 0 peers (0 with a handshake in the last 180 s)"
        )
        interfaces = status["parts"]["wireguard_interface"]["interfaces"]
        assert [(i["name"], i["backend"], i["listen_port"], i["port_bound"]) for i in interfaces] == [
            (v4.ifname, "netlink", 51820, True),
            (v6.ifname, "netlink", 51821, True),
        ]
        assert checks["wireguard_module"]["ok"], checks["wireguard_module"]

        lab.run(node, "ip", "link", "set", v6.ifname, "down")
        lab.run(node, "wg", "set", v4.ifname, "listen-port", "51899")
        code, status = run_once()
        detail = status["checks"]["wireguard_interface"]["detail"]
        assert code == 1 and not status["checks"]["wireguard_interface"]["ok"]
        assert "flannel-wg listens on UDP 51899, not 51820 (wireguard.listen_port)" in detail
        assert "nothing listens on UDP 51820" in detail
        assert "flannel-wg-v6 is down" in detail
        # flannel.1 is no WireGuard device: with neither flannel-wg device, auto says what it found.
        lab.run(node, "ip", "link", "del", v4.ifname)
        lab.run(node, "ip", "link", "del", v6.ifname)
        code, status = run_once()
        assert status["checks"]["wireguard_interface"]["detail"] == (
            "no WireGuard interface of flannel (looked for flannel-wg, flannel-wg-v6, flannel.1): "
            "flannel.1 is a non-WireGuard device (is flannel-backend wireguard-native?)"
        )
