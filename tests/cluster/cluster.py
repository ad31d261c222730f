"""Bring up the three-node lab: namespaces, stand-ins, wireguard-go, fake systemctl, wgagent.

    cluster = Cluster(say=print)
    try:
        cluster.up()                       # everything below, then every /livez answers
        snap = cluster.snapshot()          # what each node's wgagent, device and Node say now
    finally:
        cluster.close()                    # every process, namespace and the temp dir

The order follows a real cluster's life: the network and the services on it, the API server
with three registered Nodes, flannel's ``flannel-wg`` devices peered from those Nodes (nat1
published with its 10.x address, as flannel does on a NATed node), a few hundred dead peers
on pub2 left by nodes that re-keyed or vanished, k3s "running" on every node (the fake
``systemctl``), and only then wgagent, which must find all of it and fix what is wrong.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from tests import labkit
from tests.cluster import systemctl
from tests.cluster.netns import InNetns
from tests.kubeapi import ADMIN_TOKEN
from tests.labkit import PREFIX, Host, Lab, LabError, Proc, kill_netns, sh, sweep_stale, wait_for
from tests.support import configs
from wgagent.config import METADATA_PROVIDERS, K3sConfig
from wgagent.k3s.dropin import render_dropin
from wgagent.model import PublicAddresses
from wgagent.wireguard.gc import FIRST_SEEN_FILE
from wgagent.wireguard.model import Device, key_from_bytes
from wgagent.wireguard.uapi import parse_get, x25519_public

ROOT = Path(__file__).resolve().parents[2]
FLANNEL = "flannel.alpha.coreos.com/"

WG_IF = "flannel-wg"
WG_PORT = 51820
KEEPALIVE_S = 25
CLUSTER_CIDR = "10.42.0.0/16"
HEALTH = "127.0.0.1:8795"
API = "203.0.113.10:6443"
"""The API stand-in, on cp (a k3s server serves the API on its own address)."""
STUND = ("203.0.113.254", "203.0.113.253")
"""stund's primary and alternate address (it needs two)."""
COTURN = "203.0.113.252"
ECHO = "203.0.113.251"
METADATA = "10.1.0.1:8100"
"""The Alibaba metadata stand-in, on nat1's NAT router (the cloud's side of its LAN)."""
DEAD_NO_NODE = 200
DEAD_NO_IPS = 100
SEEN_AGO_S = 3600
GC_INTERVAL_S = 5
LIVE_HANDSHAKE_S = 180
MAX_RESTARTS = 1
"""Per node: one, for the first drop-in and the overwrite together (see tests/cluster/__init__.py)."""
COTURN_FLAGS = (
    *("-n", "--stun-only", "--no-cli", "--no-tls", "--no-dtls", "--no-tcp"),
    *(f"--listening-ip={COTURN}", "--listening-port=3478", "--log-file=stdout", "--simple-log"),
)


@dataclass(frozen=True)
class NodeSpec:
    name: str
    role: str
    address: str
    """Its interface address: the Node's InternalIP, which flannel publishes without an overwrite."""
    public_ip: str
    """What wgagent must decide, write into the drop-in and the annotation."""
    dmi_product: str


NODES = (
    NodeSpec("cp", "server", "203.0.113.10", "203.0.113.10", "Standard PC (Q35 + ICH9, 2009)"),
    NodeSpec("nat1", "agent", "10.1.0.2", "203.0.113.14", "Alibaba Cloud ECS"),
    NodeSpec("pub2", "agent", "198.51.100.20", "198.51.100.20", "Standard PC (Q35 + ICH9, 2009)"),
)


@dataclass
class Node:
    spec: NodeSpec
    host: Host
    uapi_dir: str
    public_key: str
    ns: InNetns
    wg: Proc
    agent: Proc | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def path(self, *parts: str) -> str:
        return os.path.join(self.host.dir, *parts)

    @property
    def state_dir(self) -> str:
        return self.path("state")

    @property
    def systemctl_dir(self) -> str:
        return self.path("systemctl")

    @property
    def dropin(self) -> str:
        return self.path("etc-rancher-k3s", "config.yaml.d", "50-wgagent.yaml")

    def expected_dropin(self) -> str:
        addresses = PublicAddresses(IPv4Address(self.spec.public_ip))
        return render_dropin(self.spec.role, addresses, K3sConfig())


# --- UAPI -----------------------------------------------------------------------------------------


uapi = functools.partial(labkit.uapi, ifname=WG_IF)
uapi_set = functools.partial(labkit.uapi_set, ifname=WG_IF)


def device(node: Node) -> Device:
    return parse_get(uapi(node.uapi_dir, "get=1\n\n"), WG_IF)


def _says_ready(proc: Proc) -> bool:
    return "ready" in proc.output()


def hexkey(b64: str) -> str:
    return base64.b64decode(b64).hex()


# --- the cluster ------------------------------------------------------------------------------------


@dataclass
class Cluster:
    say: Callable[[str], None] = print
    lab: Lab = field(default_factory=Lab)
    nodes: dict[str, Node] = field(default_factory=dict)
    dead_no_node: set[str] = field(default_factory=set)
    dead_no_ips: set[str] = field(default_factory=set)
    kernel_wireguard: bool = False
    """Whether this kernel can make a WireGuard link (ground truth for the module check)."""
    standin: dict[str, Any] = field(default_factory=dict)
    _api_ns: InNetns | None = None
    hosts: dict[str, Host] = field(default_factory=dict)
    _network_done: bool = False

    # --- bring-up ---------------------------------------------------------------------------

    def up(self) -> None:
        self._step("network: 6 namespaces joined by veth, nat1 behind an nftables masquerade", self._network)
        self._step("internet: stund, coturn, HTTP echo; nat1's Alibaba metadata stand-in", self._services)
        self._step("API stand-in on cp with Nodes cp, nat1, pub2", self._standin)
        self._step("wireguard-go flannel-wg on each node, peered from the Nodes, keepalive 25", self._wireguard)
        self._step(f"{DEAD_NO_NODE + DEAD_NO_IPS} dead peers on pub2; handshakes through the NAT", self._dead_peers)
        self._step("wgagent run on each node (fake systemctl: k3s is active)", self._agents)

    def _step(self, what: str, fn: Callable[[], None]) -> None:
        t0 = time.monotonic()
        fn()
        self.say(f"  {time.monotonic() - t0:5.1f} s  {what}")

    def _network(self) -> None:
        lab = self.lab
        inet = lab.host("inet", forwarding=True)
        gw = lab.host("nat1gw")
        cp, nat1, pub2 = (lab.host(spec.name) for spec in NODES)
        self.hosts = {"inet": inet, "nat1gw": gw, "cp": cp, "nat1": nat1, "pub2": pub2}
        lab.link(cp, "eth0", "203.0.113.10/30", inet, "cp", "203.0.113.9/30")
        lab.link(gw, "wan0", "203.0.113.14/30", inet, "nat1gw", "203.0.113.13/30")
        lab.link(nat1, "eth0", "10.1.0.2/24", gw, "lan0", "10.1.0.1/24")
        lab.link(pub2, "eth0", "198.51.100.20/24", inet, "pub2", "198.51.100.1/24")
        for addr in (*STUND, COTURN, ECHO):
            lab.run(inet, "ip", "addr", "add", f"{addr}/32", "dev", "lo")
        lab.route(cp, "default", "203.0.113.9")
        lab.route(gw, "default", "203.0.113.13")
        lab.route(nat1, "default", "10.1.0.1")
        lab.route(pub2, "default", "198.51.100.1")
        lab.masquerade(gw, "wan0")
        probe = lab.host("probe")
        made = subprocess.run(probe.argv("ip", "link", "add", "wgprobe", "type", "wireguard"), capture_output=True)
        self.kernel_wireguard = made.returncode == 0
        self._network_done = True  # no veth pair is made after this

    def _services(self) -> None:
        lab, inet, gw = self.lab, self.hosts["inet"], self.hosts["nat1gw"]
        lab.spawn(inet, ["stund", "-h", STUND[0], "-a", STUND[1]], name="stund")
        coturn = [*COTURN_FLAGS, f"--pidfile={inet.dir}/turnserver.pid", f"--userdb={inet.dir}/turndb"]
        lab.spawn(inet, ["turnserver", *coturn], name="coturn")
        echo = self._ipservices(inet, "echo", [{"kind": "echo", "name": "echo", "listen": f"{ECHO}:80"}])
        metadata = {"kind": "metadata", "provider": "aliyun", "listen": METADATA, "ipv4": NODES[1].public_ip}
        meta = self._ipservices(gw, "metadata", [metadata])
        for proc in (echo, meta):
            wait_for(functools.partial(_says_ready, proc), 20, f"{proc.name} ready", proc=proc)
        lab.wait_udp(inet, 3478, STUND[0])
        lab.wait_udp(inet, 3478, COTURN, timeout=20)

    def _ipservices(self, host: Host, name: str, specs: list[dict[str, Any]]) -> Proc:
        path = os.path.join(host.dir, f"{name}.json")
        with open(path, "w") as f:
            json.dump({"services": specs}, f)
        argv = [sys.executable, "-m", "tests.support.ipservices", path]
        return self.lab.spawn(host, argv, name=f"{host.name}-{name}", cwd=str(ROOT), env={"PYTHONPATH": str(ROOT)})

    def _standin(self) -> None:
        cp = self.hosts["cp"]
        host, port = API.split(":")
        argv = [sys.executable, "-m", "tests.kubeapi", "--host", host, "--port", port, "--san", host]
        argv += ["--dir", os.path.join(self.lab.dir, "kubeapi")]
        argv += ["--servers", ",".join(f"{s.name}={s.address}" for s in NODES if s.role == "server")]
        argv += ["--nodes", ",".join(f"{s.name}={s.address}" for s in NODES if s.role == "agent")]
        proc = self.lab.spawn(cp, argv, name="kubeapi", cwd=str(ROOT), env={"PYTHONPATH": str(ROOT)})

        def info() -> dict[str, Any] | None:
            for line in proc.output().splitlines():
                if line.startswith("{"):
                    return dict(json.loads(line))
            return None

        wait_for(lambda: info() is not None, 30, "the API stand-in", proc=proc)
        self.standin = info() or {}
        self._api_ns = InNetns(cp.netns)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """A request to the stand-in with the admin credential, from inside cp."""
        assert self._api_ns is not None
        status, data = self._api_ns.http(
            self.standin["url"] + path,
            method=method,
            body=body,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            cafile=self.standin["ca"],
        )
        if status >= 300:
            raise LabError(f"stand-in {method} {path}: {status} {data[:200]!r}")
        return json.loads(data)

    def node_objects(self) -> dict[str, dict[str, Any]]:
        return {n["metadata"]["name"]: n for n in self.api("GET", "/api/v1/nodes")["items"]}

    def _wireguard(self) -> None:
        for i, spec in enumerate(NODES):
            host = self.hosts[spec.name]
            wg, uapi_dir = self.lab.wireguard_go(host, WG_IF)
            private = bytearray(os.urandom(32))
            private[0] = i + 1  # distinct even if urandom repeated itself
            pub = key_from_bytes(x25519_public(bytes(private)))
            uapi_set(uapi_dir, [f"private_key={bytes(private).hex()}", f"listen_port={WG_PORT}"])
            node = Node(spec, host, uapi_dir, pub, InNetns(host.netns), wg)
            self.nodes[spec.name] = node
            # flannel's backend-data for this node's key (wireguard-native, flannel >= v0.26.6)
            backend = json.dumps({"PublicKey": pub, "Port": WG_PORT}, separators=(",", ":"))  # as Go writes it
            body = {"action": "set_annotations", "node": spec.name, "annotations": {FLANNEL + "backend-data": backend}}
            self.api("POST", "/_standin/control", body)
        objects = self.node_objects()
        for node in self.nodes.values():
            cidr = objects[node.name]["spec"]["podCIDR"]
            self.lab.run(node.host, "ip", "addr", "add", cidr.replace("/24", "/32"), "dev", WG_IF)
            self.lab.run(node.host, "ip", "link", "set", WG_IF, "up")
            self.lab.run(node.host, "ip", "route", "add", CLUSTER_CIDR, "dev", WG_IF)
            uapi_set(node.uapi_dir, self._flannel_peers(node, objects, keepalive=False))
        # Keepalive only once every device knows every peer: a handshake initiation to a
        # device that does not know the sender yet is dropped and retried only after 5 s.
        for node in self.nodes.values():
            uapi_set(node.uapi_dir, self._flannel_peers(node, objects, keepalive=True))

    @staticmethod
    def _flannel_peers(node: Node, objects: dict[str, dict[str, Any]], *, keepalive: bool) -> list[str]:
        """What flannel sets on ``node``: a peer per other Node, from its annotations."""
        lines: list[str] = []
        for name, obj in objects.items():
            if name == node.name:
                continue
            anns = obj["metadata"]["annotations"]
            data = json.loads(anns[FLANNEL + "backend-data"])
            lines.append(f"public_key={hexkey(data['PublicKey'])}")
            if keepalive:
                lines += ["update_only=true", f"persistent_keepalive_interval={KEEPALIVE_S}"]
            else:
                lines += [
                    f"endpoint={anns[FLANNEL + 'public-ip']}:{data['Port']}",
                    "replace_allowed_ips=true",
                    f"allowed_ip={obj['spec']['podCIDR']}",
                ]
        return lines

    def _dead_peers(self) -> None:
        pub2 = self.nodes["pub2"]
        lines: list[str] = []
        for i in range(DEAD_NO_NODE):  # nodes that vanished: keys of no Node, routes still set
            key = key_from_bytes(os.urandom(32))
            self.dead_no_node.add(key)
            lines += [
                f"public_key={hexkey(key)}",
                f"endpoint=203.0.113.{100 + i % 100}:{WG_PORT}",
                f"allowed_ip=10.100.{i >> 8}.{i & 255}/32",
            ]
        for _ in range(DEAD_NO_IPS):  # nodes that re-keyed: flannel moved their routes to the new key
            key = key_from_bytes(os.urandom(32))
            self.dead_no_ips.add(key)
            lines.append(f"public_key={hexkey(key)}")
        uapi_set(pub2.uapi_dir, lines)
        # wgagent ran here an hour ago and saw them then (see tests/cluster/__init__.py).
        os.makedirs(pub2.state_dir, exist_ok=True)
        seen = {key: time.time() - SEEN_AGO_S for key in self.dead_no_node | self.dead_no_ips}
        with open(os.path.join(pub2.state_dir, FIRST_SEEN_FILE), "w") as f:
            json.dump({"version": 1, "interfaces": {WG_IF: seen}}, f)

        def all_handshook() -> bool:
            for node in self.nodes.values():
                dev = device(node)
                for other in self.nodes.values():
                    peer = dev.peer(other.public_key) if other is not node else None
                    if other is not node and (peer is None or peer.last_handshake is None):
                        return False
            return True

        wait_for(all_handshook, 20, "WireGuard handshakes between all three nodes")

    def _agents(self) -> None:
        for node in self.nodes.values():
            self._fake_systemctl(node)
            path = configs.write(node.path("config.yaml"), self.config(node))
            env = {
                "PATH": f"{node.path('bin')}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
                "PYTHONPATH": str(ROOT),
                **{name: "" for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM", "WGAGENT_CONFIG")},
            }
            argv = [sys.executable, "-m", "wgagent", "--config", path, "run"]
            node.agent = self.lab.spawn(node.host, argv, name=f"{node.name}-wgagent", env=env, cwd=str(ROOT))
        for node in self.nodes.values():
            up = lambda node=node: self.http(node, "/livez")[0] == 200  # noqa: E731
            wait_for(up, 20, f"{node.name}'s /livez", proc=node.agent)

    def _fake_systemctl(self, node: Node) -> None:
        os.makedirs(node.systemctl_dir, exist_ok=True)
        os.makedirs(node.path("bin"), exist_ok=True)
        unit = "k3s.service" if node.spec.role == "server" else "k3s-agent.service"
        standin = {"url": self.standin["url"], "ca": self.standin["ca"], "token": ADMIN_TOKEN}
        with open(os.path.join(node.systemctl_dir, systemctl.STANDIN), "w") as f:
            k3s_reads = {"config_dir": node.path("etc-rancher-k3s"), "role": node.spec.role}
            json.dump({**standin, "node": node.name, "unit": unit, **k3s_reads}, f)
        systemctl.mark_started(node.systemctl_dir)  # k3s runs since the lab started
        wrapper = node.path("bin", "systemctl")
        with open(wrapper, "w") as f:
            f.write(
                "#!/bin/sh\n# the lab's systemctl (tests/cluster/systemctl.py)\n"
                f'PYTHONPATH={ROOT} exec {sys.executable} -m tests.cluster.systemctl {node.systemctl_dir} "$@"\n'
            )
        os.chmod(wrapper, 0o700)

    def config(self, node: Node) -> dict[str, Any]:
        """wgagent's config on ``node``: every outward source names a stand-in of this lab."""
        dmi = node.path("dmi")
        os.makedirs(dmi, exist_ok=True)
        for name, value in (("product_name", node.spec.dmi_product), ("sys_vendor", "lab")):
            with open(os.path.join(dmi, name), "w") as f:
                f.write(value + "\n")
        kubeconfigs = self.standin["nodes"]
        if node.spec.role == "server":  # k3s.yaml: the admin credential
            own = lister = self.standin["admin"]
        else:  # the kubelet's own-Node credential, and k3scontroller's to list and watch
            own, lister = kubeconfigs[node.name], self.standin["k3scontroller"]
        return configs.sandbox(
            node.host.dir,
            int(HEALTH.rsplit(":", 1)[1]),
            node_name=node.name,
            log_level="info",
            health={"listen": HEALTH},
            public_ip={
                "enabled": True,
                "sources": ["interface", "metadata", "stun", "http"],
                "metadata_provider": "auto",
                "metadata_endpoints": {p: f"http://{METADATA}" for p in METADATA_PROVIDERS},
                "dmi_dir": dmi,
                "stun_servers": [f"{STUND[0]}:3478", f"{COTURN}:3478"],
                "http_echo_urls": [f"http://{ECHO}"],
                "timeout_s": 2,
            },
            k3s={"enabled": True, "role": node.spec.role, "restart": True},
            kube={"enabled": True, "kubeconfig": own, "list_kubeconfig": lister},
            wireguard={
                "enabled": True,
                "interface": "auto",
                "uapi_dir": node.uapi_dir,
                "manage_module": True,
                "interface_check_interval_s": 5,
                "gc": {"enabled": True, "interval_s": GC_INTERVAL_S, "stale_after_s": 180},
            },
        )

    def http(self, node: Node, path: str) -> tuple[int, bytes]:
        """GET ``path`` of ``node``'s health endpoint (inside its namespace); (0, b"") if nothing answers."""
        try:
            return node.ns.http(f"http://{HEALTH}{path}", timeout=2)
        except (OSError, TimeoutError):
            return 0, b""

    # --- tear-down --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything and delete every namespace and the temp dir; safe to call at any point."""
        for ns in [*(n.ns for n in self.nodes.values()), *([self._api_ns] if self._api_ns else [])]:
            with contextlib.suppress(Exception):
                ns.close()
        try:
            self.lab.close()
        finally:
            remove_leftovers(self.lab.id, self.lab.dir, veths=not self._network_done)


def remove_leftovers(lab_id: str, lab_dir: str, *, veths: bool) -> list[str]:
    """What an interrupted bring-up may leave outside the Lab's records: namespaces named for
    ``lab_id``, the temp dir, and with ``veths`` (interrupted while links were made) a veth
    pair made in the root namespace but not yet moved into its namespaces."""
    removed = []
    for line in sh("ip", "netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(f"{lab_id}-"):
            kill_netns(name)
            removed.append(name)
    ours = re.compile(rf"^{PREFIX}[ab]{os.getpid() % 100000}\d+$")  # labkit's temporary veth names
    for line in sh("ip", "-o", "link", "show", check=False).splitlines() if veths else []:
        fields = line.split(":")
        name = fields[1].strip().split("@")[0] if len(fields) > 1 else ""
        if ours.match(name):
            sh("ip", "link", "del", name, check=False)
            removed.append(name)
    if os.path.isdir(lab_dir):
        shutil.rmtree(lab_dir, ignore_errors=True)
        removed.append(lab_dir)
    return removed


def sweep() -> None:
    """Leftovers of lab runs whose process is gone (killed with -9): namespaces and temp dirs."""
    sweep_stale()
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    for path in tmp.glob(f"{PREFIX}*x*-*"):
        pid = path.name[len(PREFIX) :].split("x", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
