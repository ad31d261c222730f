"""WireGuard against real wireguard-go in network namespaces, and the module check on this kernel.

Three nodes, each a namespace with wireguard-go (its own /run/wireguard), joined by veth
through a router namespace; keepalive 25 and real handshakes. node1 also carries thousands
of dead peers of three kinds: keys of no node, peers with no allowed IPs (a re-keyed node's
leftover), and node3's key after node3 was killed. wgagent saw all of them an hour ago
(a pre-seeded first-seen file in its state dir). The cluster view comes from a fake
callable. GC must remove exactly the first two kinds, keep node2's live peer and node3's
key (reported unreachable), change nothing in a dry run, and remove only the
no-allowed-IPs peers while the node list is unknown.

Addresses: "public" 198.51.100.0/24 on the veth links, 10.42.x.0/24 inside the tunnels;
the dead peers' endpoints are 203.0.113.x, which route nowhere.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import labkit
from tests.conftest import ROOT, require
from tests.kubeapi import CONTROLLER, KubeAPI, shared_pki
from tests.labkit import Host, Lab, Proc, wait_for
from tests.support import configs
from wgagent.config import Config, GCConfig, WireGuardConfig
from wgagent.model import ANN_BACKEND_DATA, ClusterView, NodeInfo
from wgagent.state import State
from wgagent.wireguard.backend import HostNet, open_backend
from wgagent.wireguard.gc import FIRST_SEEN_FILE
from wgagent.wireguard.gc.part import GCPart
from wgagent.wireguard.model import Device, key_from_bytes
from wgagent.wireguard.module import ModuleHost, ModulePart
from wgagent.wireguard.netlink import probe_link_support
from wgagent.wireguard.uapi import parse_get, x25519_public

IF = "wg0"
PORT = 51820
DEAD_NO_NODE = 1500
DEAD_NO_IPS = 1500


@dataclass
class Node:
    name: str
    host: Host
    addr: str
    priv: bytes
    pub: str
    proc: Proc
    uapi_dir: str


def keypair(seed: int) -> tuple[bytes, str]:
    priv = bytearray(os.urandom(32))
    priv[0] = seed  # distinct even if urandom repeated itself
    return bytes(priv), key_from_bytes(x25519_public(bytes(priv)))


uapi = functools.partial(labkit.uapi, ifname=IF)
uapi_set = functools.partial(labkit.uapi_set, ifname=IF)


def device(node: Node) -> Device:
    return parse_get(uapi(node.uapi_dir, "get=1\n\n"), IF)


def hexkey(b64: str) -> str:
    return base64.b64decode(b64).hex()


def peer_lines(other: Node, *, ip: str) -> list[str]:
    return [
        f"public_key={hexkey(other.pub)}",
        f"endpoint={other.addr}:{PORT}",
        "persistent_keepalive_interval=25",
        "replace_allowed_ips=true",
        f"allowed_ip={ip}",
    ]


def start_node(lab: Lab, router: Host, i: int) -> Node:
    host = lab.host(f"node{i}")
    addr = f"198.51.100.{4 * i + 2}"
    lab.link(host, "eth0", f"{addr}/30", router, f"n{i}", f"198.51.100.{4 * i + 1}/30")
    lab.route(host, "default", f"198.51.100.{4 * i + 1}")
    proc, uapi_dir = lab.wireguard_go(host, IF)
    priv, pub = keypair(i)
    node = Node(f"node{i}", host, addr, priv, pub, proc, uapi_dir)
    uapi_set(uapi_dir, [f"private_key={priv.hex()}", f"listen_port={PORT}"])
    lab.run(host, "ip", "addr", "add", f"10.42.{i}.1/16", "dev", IF)
    lab.run(host, "ip", "link", "set", IF, "up")
    return node


def cluster_of(*nodes: Node) -> ClusterView:
    return ClusterView(
        {n.name: NodeInfo(n.name, {ANN_BACKEND_DATA: json.dumps({"PublicKey": n.pub, "Port": PORT})}) for n in nodes}
    )


def handshook(a: Node, b: Node) -> bool:
    p = device(a).peer(b.pub)
    return p is not None and p.last_handshake is not None


def send_through_tunnel(lab: Lab, a: Node, b: Node) -> None:
    """A datagram from ``a`` to ``b``'s tunnel address arrives: ``b`` counts more bytes from ``a``."""

    def received() -> int:
        p = device(b).peer(a.pub)
        return p.rx_bytes if p is not None else 0

    before = received()
    code = "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x' * 100, ('10.42.%s.1', 9))"
    lab.run(a.host, sys.executable, "-c", code % b.name[-1])
    wait_for(lambda: received() > before, 10, f"traffic from {a.name} to {b.name} through the tunnel")


@dataclass
class Cluster:
    lab: Lab
    nodes: list[Node]
    dead_no_node: set[str]
    dead_no_ips: set[str]
    state_dir: Path


@pytest.fixture
def cluster(lab: Lab, tmp_path: Path) -> Iterator[Cluster]:
    require("wireguard-go", "ip", root=True)
    router = lab.host("router", forwarding=True)
    n1, n2, n3 = (start_node(lab, router, i) for i in (1, 2, 3))
    # Real handshakes: node1 <-> node2 and node2 <-> node3, keepalive 25.
    uapi_set(n1.uapi_dir, peer_lines(n2, ip="10.42.2.0/24"))
    uapi_set(n2.uapi_dir, peer_lines(n1, ip="10.42.1.0/24") + peer_lines(n3, ip="10.42.3.0/24"))
    uapi_set(n3.uapi_dir, peer_lines(n2, ip="10.42.2.0/24"))
    wait_for(lambda: handshook(n1, n2) and handshook(n2, n1) and handshook(n2, n3), 20, "handshakes")
    # node3 dies; its Node object stays. flannel on node1 (re)adds node3's peer, which
    # never answers.
    lab.stop(n3.proc)
    uapi_set(n1.uapi_dir, peer_lines(n3, ip="10.42.3.0/24"))
    # Thousands of dead peers on node1, in one transaction: no keepalive, so they stay silent.
    no_node: set[str] = set()
    no_ips: set[str] = set()
    lines: list[str] = []
    for i in range(DEAD_NO_NODE):
        pub = key_from_bytes(os.urandom(32))
        no_node.add(pub)
        lines += [
            f"public_key={hexkey(pub)}",
            f"endpoint=203.0.113.{i % 250 + 1}:{PORT}",
            f"allowed_ip=10.100.{i >> 8}.{i & 255}/32",
        ]
    for _ in range(DEAD_NO_IPS):
        pub = key_from_bytes(os.urandom(32))
        no_ips.add(pub)
        lines.append(f"public_key={hexkey(pub)}")
    uapi_set(n1.uapi_dir, lines)
    # wgagent has known every peer for an hour.
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    hour_ago = time.time() - 3600
    seen = {p.public_key: hour_ago for p in device(n1).peers}
    (state_dir / FIRST_SEEN_FILE).write_text(json.dumps({"version": 1, "interfaces": {IF: seen}}))
    yield Cluster(lab, [n1, n2, n3], no_node, no_ips, state_dir)


def gc_part(c: Cluster, view: ClusterView | None, *, dry_run: bool) -> tuple[GCPart, State]:
    n1 = c.nodes[0]
    cfg = Config(
        state_dir=str(c.state_dir),
        wireguard=WireGuardConfig(
            interface=IF, uapi_dir=n1.uapi_dir, gc=GCConfig(dry_run=dry_run, max_removals_per_pass=10_000)
        ),
    )
    state = State(node="node1", version="lab")
    return GCPart(state, cfg, lambda: view, HostNet(), open_backend), state


def keys(dev: Device) -> set[str]:
    return {p.public_key for p in dev.peers}


def test_gc_on_wireguard_go_removes_exactly_the_dead(cluster: Cluster) -> None:
    c = cluster
    n1, n2, n3 = c.nodes
    view = cluster_of(n1, n2, n3)
    live = {n2.pub, n3.pub}
    before = device(n1)
    assert keys(before) == live | c.dead_no_node | c.dead_no_ips

    # Dry run: decides, reports, removes nothing.
    part, state = gc_part(c, view, dry_run=True)
    asyncio.run(part.reconcile())
    section = state.status()["parts"]["peer_gc"]["interfaces"][0]
    assert section["dry_run"] is True and section["removed_count"] == DEAD_NO_NODE + DEAD_NO_IPS
    assert section["kept_unreachable"] == [n3.pub] and section["unreachable_nodes"] == {n3.pub: "node3"}
    assert keys(device(n1)) == keys(before)

    # The node list unavailable: only the peers without allowed IPs go.
    part, state = gc_part(c, None, dry_run=False)
    asyncio.run(part.reconcile())
    assert keys(device(n1)) == live | c.dead_no_node
    assert state.checks["peer_gc"].ok
    assert "node list unknown" in state.checks["peer_gc"].detail

    # With the node list: the keys of no node go too; node2's live peer and dead node3's key stay.
    part, state = gc_part(c, view, dry_run=False)
    asyncio.run(part.reconcile())
    after = device(n1)
    assert keys(after) == live
    assert state.checks["peer_gc"].ok
    assert "kept 1 unreachable live node peer(s): node3" in state.checks["peer_gc"].detail
    assert f'wgagent_gc_removed_total{{interface="{IF}"}} {DEAD_NO_NODE}' in state.metrics.render()
    # The tunnel to node2 still carries traffic, and a second pass finds nothing more.
    send_through_tunnel(c.lab, n1, n2)
    assert after.peer(n2.pub) is not None and after.peer(n2.pub).keepalive == 25  # type: ignore[union-attr]
    part, state = gc_part(c, view, dry_run=False)
    asyncio.run(part.reconcile())
    assert keys(device(n1)) == live
    assert "nothing to remove of 2" in state.checks["peer_gc"].detail


def test_run_once_and_gc_cli_in_a_node_namespace(cluster: Cluster, tmp_path: Path) -> None:
    """The daemon's wiring end to end: ``wgagent run --once`` inside node1's namespace (its
    /sys and /proc/net), then ``wgagent gc --dry-run --json``; no node list (kube off)."""
    c = cluster
    n1 = c.nodes[0]
    cfg = configs.sandbox(
        str(tmp_path),
        18795,
        state_dir=str(c.state_dir),
        wireguard={
            "enabled": True,
            "manage_module": True,
            "interface": IF,
            "uapi_dir": n1.uapi_dir,
            "gc": {"enabled": True, "dry_run": True, "max_removals_per_pass": 10_000},
        },
    )
    path = configs.write(str(tmp_path / "config.yaml"), cfg)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    once = subprocess.run(
        n1.host.argv(sys.executable, "-m", "wgagent", "--config", path, "run", "--once"),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    status = json.loads(once.stdout)
    checks = status["checks"]
    assert checks["wireguard_interface"]["ok"], checks
    assert checks["wireguard_interface"]["detail"].startswith(f"{IF}: up, listening on UDP {PORT}, 3002 peers (1 with")
    iface = status["parts"]["wireguard_interface"]["interfaces"][0]
    assert (iface["backend"], iface["port_bound"], iface["listen_port"]) == ("uapi", True, PORT)
    assert checks["peer_gc"]["ok"] and "dry run, would remove 1500 dead peer(s) of 3002" in checks["peer_gc"]["detail"]
    module_ok = checks["wireguard_module"]["ok"]
    assert once.returncode == (0 if module_ok else 1), once.stderr

    gc = subprocess.run(
        [sys.executable, "-m", "wgagent", "--config", path, "gc", "--dry-run", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert gc.returncode == 0, gc.stderr
    out = json.loads(gc.stdout)
    assert out["interface"] == IF and out["dry_run"] is True
    assert set(out["removed"]) == c.dead_no_ips and out["kept_unreachable"] == []
    assert out["node_list"] == "unknown" and out["node_list_note"] == "kube.enabled is false"
    assert len(device(n1).peers) == 3002  # a dry run removes nothing
    assert "Traceback" not in once.stderr + gc.stderr


async def test_gc_cli_takes_the_node_list_from_the_api(cluster: Cluster, tmp_path: Path) -> None:
    """``wgagent gc --json`` with a list credential: one LIST through the node watch's client
    (the API stand-in on 127.0.0.1), then a real pass: exactly the dead go, node3 is kept."""
    require("openssl")
    c = cluster
    n1, n2, n3 = c.nodes
    async with KubeAPI(pki=shared_pki()) as api:
        for n in c.nodes:
            api.store.add(n.name, annotations={ANN_BACKEND_DATA: json.dumps({"PublicKey": n.pub, "Port": PORT})})
        cfg = configs.sandbox(
            str(tmp_path),
            18796,
            state_dir=str(c.state_dir),
            kube={
                "enabled": True,
                "kubeconfig": api.node_kubeconfig("node1"),
                "list_kubeconfig": api.controller_kubeconfig(),
            },
            wireguard={
                "enabled": True,
                "interface": IF,
                "uapi_dir": n1.uapi_dir,
                "gc": {"max_removals_per_pass": 10_000},
            },
        )
        path = configs.write(str(tmp_path / "config.yaml"), cfg)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "wgagent",
            "--config",
            path,
            "gc",
            "--json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        lists = api.count(user=CONTROLLER, verb="list")
    assert proc.returncode == 0, err.decode()
    data = json.loads(out)
    assert data["node_list"] == "known" and "node_list_note" not in data
    assert set(data["removed"]) == c.dead_no_node | c.dead_no_ips
    assert data["kept_unreachable"] == [n3.pub] and data["unreachable_nodes"] == {n3.pub: "node3"}
    assert keys(device(n1)) == {n2.pub, n3.pub}
    assert lists == 1


def _kernel_has_wireguard(lab: Lab) -> bool:
    """Ground truth, without wgagent: can a wireguard link be made in a fresh namespace?"""
    probe = lab.host("probe")
    out = subprocess.run(
        probe.argv("ip", "link", "add", "wgprobe", "type", "wireguard"), capture_output=True, text=True
    )
    return out.returncode == 0


def test_module_check_on_this_kernel(lab: Lab, tmp_path: Path) -> None:
    require("ip", "modprobe", root=True)
    supported = _kernel_has_wireguard(lab)
    boot = tmp_path / "modules-load.d" / "wgagent.conf"
    state = State(node="lab", version="lab")
    part = ModulePart(state, WireGuardConfig(modules_load_file=str(boot)), ModuleHost())
    asyncio.run(part.reconcile())
    check = state.checks["wireguard_module"]
    section = state.status()["parts"]["wireguard_module"]
    if supported:
        assert check.ok, check
        return
    # This machine: no WireGuard in the kernel. The check fails and says why; nothing written.
    assert not check.ok
    assert not boot.exists()
    codes = [f["code"] for f in section["findings"]]
    assert "no_kernel_support" in codes, section
    assert "'Operation not supported': this kernel has no WireGuard support" in check.detail
    assert section["probe"]["result"] == "unsupported"
    release = os.uname().release
    if not os.path.isdir(f"/lib/modules/{release}"):
        assert codes[0] == "no_modules_dir"
        assert f"/lib/modules/{release} does not exist" in check.detail
    assert "modprobe_failed" in codes and "modprobe wireguard: " in check.detail


def test_link_probe_agrees_with_ip_and_starts_quickly(lab: Lab) -> None:
    """Regression: the probe's child imported wgagent and pyroute2 (~0.4 s, at every start on a
    kernel without WireGuard); it is now a standard-library netlink request."""
    require("ip", root=True)
    supported = _kernel_has_wireguard(lab)
    started = time.monotonic()
    result, detail = asyncio.run(probe_link_support())
    took = time.monotonic() - started
    assert result == ("supported" if supported else "unsupported"), detail
    assert asyncio.run(probe_link_support(kind="veth"))[0] == "supported"  # a kind this kernel has: a right request
    assert asyncio.run(probe_link_support(kind="nosuchkind"))[0] == "unsupported"
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import pyroute2"], check=True)
    import_pyroute2 = time.monotonic() - started
    assert took < import_pyroute2 / 2, (took, import_pyroute2)
