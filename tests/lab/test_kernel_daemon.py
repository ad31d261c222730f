"""The daemon end to end on kernel WireGuard: Linux 6.1 in user-mode Linux (see tests/uml).

Inside the ``wireguard`` kernel, lab namespaces joined by veth through a router ``inet``:

- ``cp`` runs the Kubernetes API stand-in (tests/kubeapi) with Nodes node1, node2, node3,
  each with flannel's ``backend-data`` naming its WireGuard key;
- ``node1`` and ``node2`` have kernel ``flannel-wg`` devices peered from those Nodes as
  flannel does (endpoint = the Node's ``public-ip``, allowed IPs = its podCIDR, keepalive
  25): they really handshake. node3's device never came up: its Node is there, its peer
  on node1 never answers;
- node1 also carries 10,000 peers of nodes that are gone (keys of no Node, with allowed IPs
  and endpoints) and 1,000 of nodes that re-keyed (no allowed IPs), which wgagent first saw
  an hour ago (its first-seen file), and 20 it has never seen (new, never handshaked).

``wgagent run`` (Debian's python3, as the .deb) runs in node1's namespace with the node list
from the stand-in and ``wireguard.interface: auto``. Its first GC pass must remove exactly the
11,000 dead peers in one pass, keep node2's live peer, node3's (a live Node's current key,
reported unreachable) and the 20 new ones, and keep the first-seen times; a restarted daemon
must find them kept. Nothing leaves the kernel (it has no link to the host's network).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.cluster.netns import InNetns
from tests.conftest import ROOT, require
from tests.kubeapi import ADMIN_TOKEN
from tests.labkit import Host, Lab, Proc, wait_for
from tests.support import configs
from tests.uml import wgshow
from tests.uml.wgkit import PeerSpec, add_peers, keypair, make_device, poke, random_key, wg_dump
from wgagent.wireguard.gc import FIRST_SEEN_FILE

pytest_plugins = ("tests.uml.plugin",)
pytestmark = [pytest.mark.kernel("wireguard"), pytest.mark.parametrize("python", ["debian"])]

IF = "flannel-wg"
ORPHANS = 10_000
NO_IPS = 1_000
FRESH = 20
HOUR_AGO = 3600
FLANNEL = "flannel.alpha.coreos.com/"
NODES = {"node1": "198.51.100.2", "node2": "198.51.100.6", "node3": "198.51.100.10"}
"""Each node's address on its link to ``inet`` (198.51.100.4k+1 is the router's side)."""


@dataclass
class World:
    lab: Lab
    node1: Host
    ns: InNetns
    keys: dict[str, str]
    """Each node's WireGuard public key."""
    orphans: set[str]
    no_ips: set[str]
    fresh: set[str]
    seen_at: int
    config: str
    standin: dict[str, Any]

    def status(self) -> dict[str, Any]:
        code, body = self.ns.http("http://127.0.0.1:8795/status", timeout=5)
        assert code == 200, (code, body[:200])
        return dict(json.loads(body))

    def first_seen(self) -> dict[str, float]:
        with open(os.path.join(self.node1.dir, "state", FIRST_SEEN_FILE)) as f:
            return dict(json.load(f)["interfaces"][IF])

    def peers(self) -> set[str]:
        return {p.public_key for p in wgshow.parse(wg_dump(self.lab, self.node1, IF)).peers}


def standin(lab: Lab, cp: Host) -> tuple[dict[str, Any], InNetns]:
    argv = [sys.executable, "-m", "tests.kubeapi", "--host", "203.0.113.10", "--port", "6443"]
    argv += ["--san", "203.0.113.10", "--dir", os.path.join(cp.dir, "kubeapi")]
    argv += ["--nodes", ",".join(f"{name}={addr}" for name, addr in NODES.items())]
    proc = lab.spawn(cp, argv, name="kubeapi", cwd=str(ROOT), env={"PYTHONPATH": str(ROOT)})
    wait_for(lambda: proc.output().startswith("{"), 60, "the API stand-in", proc=proc)
    return json.loads(proc.output().splitlines()[0]), InNetns(cp.netns)


def annotate(ns: InNetns, info: dict[str, Any], node: str, key: str) -> None:
    """flannel's backend-data for ``node``'s key (wireguard-native, flannel v0.26)."""
    body = {
        "action": "set_annotations",
        "node": node,
        "annotations": {FLANNEL + "backend-data": json.dumps({"PublicKey": key, "Port": 51820})},
    }
    code, data = ns.http(
        info["url"] + "/_standin/control",
        method="POST",
        body=body,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        cafile=info["ca"],
        timeout=10,
    )
    assert code == 200, data


def dead(n_orphans: int, n_no_ips: int) -> tuple[list[PeerSpec], set[str], set[str]]:
    orphans = [
        PeerSpec(
            random_key(), f"203.0.113.{i % 200 + 20}:51820", (f"10.{100 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32",)
        )
        for i in range(n_orphans)
    ]
    no_ips = [PeerSpec(random_key()) for _ in range(n_no_ips)]
    return orphans + no_ips, {p.public_key for p in orphans}, {p.public_key for p in no_ips}


@pytest.fixture
def world(lab: Lab) -> Iterator[World]:
    require("ip", "wg", "openssl", root=True)
    inet = lab.host("inet", forwarding=True)
    cp = lab.host("cp")
    lab.link(cp, "eth0", "203.0.113.10/30", inet, "cp", "203.0.113.9/30")
    lab.route(cp, "default", "203.0.113.9")
    hosts = {}
    for i, (name, addr) in enumerate(NODES.items()):
        hosts[name] = lab.host(name)
        lab.link(hosts[name], "eth0", f"{addr}/30", inet, name, f"198.51.100.{4 * i + 1}/30")
        lab.route(hosts[name], "default", f"198.51.100.{4 * i + 1}")
    info, cp_ns = standin(lab, cp)
    with cp_ns:
        dev1 = make_device(lab, hosts["node1"], IF, port=51820, address="10.42.1.0/32")
        dev2 = make_device(lab, hosts["node2"], IF, port=51820, address="10.42.2.0/32")
        keys = {"node1": dev1.public_key, "node2": dev2.public_key, "node3": keypair()[1]}
        for name, key in keys.items():
            annotate(cp_ns, info, name, key)
    for name in ("node1", "node2"):  # flannel: a peer per other Node, and the route to the cluster CIDR
        others = [
            PeerSpec(keys[o], f"{NODES[o]}:51820", (f"10.42.{o[-1]}.0/24",), keepalive=25) for o in NODES if o != name
        ]
        add_peers(lab, hosts[name], IF, others)
        lab.run(hosts[name], "ip", "route", "add", "10.42.0.0/16", "dev", IF)
    poke(lab, hosts["node1"], "10.42.2.0")
    wait_for(
        lambda: wgshow.parse(wg_dump(lab, hosts["node1"], IF)).peers[0].handshake_s > 0, 20, "node1-node2 handshake"
    )
    specs, orphans, no_ips = dead(ORPHANS, NO_IPS)
    add_peers(lab, hosts["node1"], IF, specs)
    # wgagent saw all of them, and node2's and node3's peers, an hour ago.
    state = os.path.join(hosts["node1"].dir, "state")
    os.makedirs(state)
    seen_at = int(time.time()) - HOUR_AGO
    seen = {key: seen_at for key in orphans | no_ips | {keys["node2"], keys["node3"]}}
    with open(os.path.join(state, FIRST_SEEN_FILE), "w") as f:
        json.dump({"version": 1, "interfaces": {IF: seen}}, f)
    fresh = [PeerSpec(random_key()) for _ in range(FRESH)]
    add_peers(lab, hosts["node1"], IF, fresh)
    cfg = configs.sandbox(
        hosts["node1"].dir,
        8795,
        node_name="node1",
        log_level="info",
        kube={"enabled": True, "kubeconfig": info["nodes"]["node1"], "list_kubeconfig": info["k3scontroller"]},
        wireguard={
            "enabled": True,
            "manage_module": True,
            "interface": "auto",
            "interface_check_interval_s": 2,
            "gc": {"enabled": True, "interval_s": 3, "stale_after_s": 180, "max_removals_per_pass": 100_000},
        },
    )
    path = configs.write(os.path.join(hosts["node1"].dir, "config.yaml"), cfg)
    with InNetns(hosts["node1"].netns) as ns:
        yield World(lab, hosts["node1"], ns, keys, orphans, no_ips, {p.public_key for p in fresh}, seen_at, path, info)


def start(world: World, name: str) -> Proc:
    env = {"PYTHONPATH": str(ROOT), **{v: "" for v in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM")}}
    argv = [sys.executable, "-m", "wgagent", "--config", world.config, "run"]
    proc = world.lab.spawn(world.node1, argv, name=name, env=env, cwd=str(ROOT))

    def answered() -> bool:
        try:
            return "peer_gc" in world.status()["checks"]
        except (OSError, AssertionError):
            return False

    wait_for(answered, 60, f"{name}'s first GC pass", proc=proc)
    return proc


def test_the_daemon_removes_exactly_the_dead_kernel_peers_and_keeps_first_seen(world: World, python: str) -> None:
    live = {world.keys["node2"], world.keys["node3"]}
    assert world.peers() == live | world.orphans | world.no_ips | world.fresh
    started = time.time()
    daemon = start(world, "wgagent")
    status = world.status()
    gc = status["parts"]["peer_gc"]["interfaces"][0]
    checks = status["checks"]
    # One pass took all of them: the node list was known, and the cap is above 11,000.
    assert checks["peer_gc"]["ok"], checks["peer_gc"]
    assert (gc["interface"], gc["backend"], gc["node_list"], gc["error"]) == (IF, "netlink", "known", None)
    assert (gc["peers"], gc["removed_count"], gc["deferred_count"]) == (ORPHANS + NO_IPS + FRESH + 2, 11_000, 0)
    assert gc["kept_unreachable"] == [world.keys["node3"]] and gc["unreachable_nodes"] == {world.keys["node3"]: "node3"}
    left = live | world.fresh
    assert world.peers() == left  # exactly the dead are gone, from the kernel itself
    assert "kept 1 unreachable live node peer(s): node3" in checks["peer_gc"]["detail"]
    _, metrics = world.ns.http("http://127.0.0.1:8795/metrics")
    assert f'wgagent_gc_removed_total{{interface="{IF}"}} 11000' in metrics.decode()
    assert checks["wireguard_module"]["detail"] == "WireGuard is built into the kernel"

    # The interface check reads the kernel device too; after the pass it counts what is left.
    def interface_detail() -> str:
        return str(world.status()["checks"]["wireguard_interface"]["detail"])

    wait_for(lambda: f", {len(left)} peers (" in interface_detail(), 20, "an interface check after the GC pass")
    assert interface_detail() == (
        f"{IF}: up, listening on UDP 51820, {len(left)} peers (1 with a handshake in the last 180 s);"
        " live nodes unreachable: node3"
    )
    # The first-seen times: the dead dropped, the kept ones unchanged, the new ones seen now.
    seen = world.first_seen()
    assert set(seen) == left
    assert seen[world.keys["node2"]] == seen[world.keys["node3"]] == world.seen_at
    new_at = {seen[k] for k in world.fresh}
    assert len(new_at) == 1 and started - 1 <= new_at.pop() <= time.time()
    # node1 still reaches node2 through the tunnel.
    before = wgshow.parse(wg_dump(world.lab, world.node1, IF)).peers[0]
    poke(world.lab, world.node1, "10.42.2.0")
    wait_for(
        lambda: wgshow.parse(wg_dump(world.lab, world.node1, IF)).peers[0].tx_bytes > before.tx_bytes, 10, "traffic"
    )

    # Restarted, it keeps what it knew: the new peers' first-seen times are the first run's,
    # so they become removable 180 s after wgagent first saw them, not after each restart.
    assert world.lab.stop(daemon, signal.SIGTERM, timeout=20) == 0
    # Whole seconds in the file: once the clock is past the first run's, a reset would show.
    wait_for(lambda: int(time.time()) > max(seen.values()), 5, "the next second")
    start(world, "wgagent-again")
    status = world.status()
    assert "nothing to remove of 22" in status["checks"]["peer_gc"]["detail"]
    assert world.first_seen() == seen
    assert world.peers() == left
