"""``wgagent doctor`` in network namespaces: a healthy node, a broken one, and one behind a NAT
that maps each destination to another port.

    node1 198.51.100.2  ─┐                      inet (router; stand-ins on its loopback):
    node2 198.51.100.6  ─┼── inet ──            203.0.113.11/.12:80    echo (reflect)
    node3 198.51.100.10 ─┘      │               203.0.113.21/.22:3478  STUN (reflect)
    natnode 10.9.0.2 ── natrouter 198.51.100.14 203.0.113.50:6443      API stand-in, cluster A (node1, node2)
                        (masquerade fully-random)  203.0.113.51:6443   API stand-in, cluster B (node3, node4)

node1 and node2 run wireguard-go as ``flannel-wg`` on 51820 with each other as peers (real
handshakes, keepalive 25), annotated as flannel would. node3 is broken: its device listens on
51821, so nothing is on 51820; its Node's public-ip annotations are wrong; a later k3s config
file sets ``flannel-backend: vxlan``; 300 dead peers (seen by wgagent an hour ago) pile up; and
node4, a live Node whose machine is gone, is a peer that never answers. natnode asks two STUN
servers through a NAT that gives every destination another port.

k3s "is installed" on the nodes through their config (``k3s.role: server``) and a stand-in k3s
executable on PATH; nothing of k3s runs. Every config names only these hosts.

This kernel has no WireGuard. The broken and NAT nodes run the real CLI, whose module finding
is asserted to say so. For the healthy node, exit 0 is asserted through a two-line driver that
runs the same ``commands.doctor.doctor_command`` with the module facts pointed at a fake ``/sys/module`` that
has ``wireguard`` (the one hook, ``doctor.Environment``, is not in the user's config); the real
CLI on the same node must then fail only on the kernel.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from tests import labkit
from tests.conftest import ROOT, call_failed, require
from tests.kubeapi import ADMIN_TOKEN
from tests.labkit import Host, Lab, sweep_stale, wait_for
from tests.support import configs
from wgagent.config import K3sConfig
from wgagent.k3s.dropin import render_dropin
from wgagent.model import (
    ANN_BACKEND_DATA,
    ANN_PUBLIC_IP,
    ANN_PUBLIC_IP_OVERWRITE,
    PublicAddresses,
)
from wgagent.wireguard.gc import FIRST_SEEN_FILE
from wgagent.wireguard.model import key_from_bytes
from wgagent.wireguard.uapi import parse_get, x25519_public

IF = "flannel-wg"
PORT = 51820
API_A, API_B = "203.0.113.50", "203.0.113.51"
STUN = ["203.0.113.21:3478", "203.0.113.22:3478"]
ECHO = ["http://203.0.113.11", "http://203.0.113.12"]
DEAD = 150  # of each kind: keys of no Node, and peers without allowed IPs

CONTROL = """
import ssl, sys, urllib.request
url, ca, token, body = sys.argv[1:5]
https = urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=ca))
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), https)
req = urllib.request.Request(url + "/_standin/control", data=body.encode(), method="POST",
                             headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
print(opener.open(req, timeout=10).read().decode())
"""

DRIVER = """
import sys
import dataclasses
from wgagent import config, doctor
from wgagent.commands.doctor import doctor_command
from wgagent.wireguard.module import ModuleHost
path, sys_module = sys.argv[1:3]
env = doctor.Environment()
host = dataclasses.replace(env.seams.module_host, sys_module_dir=sys_module)
env.seams = dataclasses.replace(env.seams, module_host=host)
sys.exit(doctor_command(config.load(path), path, as_json=True, out=sys.stdout, env=env))
"""


@dataclass
class Node:
    name: str
    host: Host
    addr: str
    pub: str
    uapi_dir: str


@dataclass
class Net:
    lab: Lab
    inet: Host
    nodes: dict[str, Node]
    natnode: Host
    apis: dict[str, dict[str, Any]]
    bin_dir: str
    kernel_has_wireguard: bool


def uapi(node: Node, request: str) -> bytes:
    return labkit.uapi(node.uapi_dir, request, ifname=IF)


def uapi_set(node: Node, lines: list[str]) -> None:
    labkit.uapi_set(node.uapi_dir, lines, ifname=IF)


def hexkey(b64: str) -> str:
    return base64.b64decode(b64).hex()


def peer(pub: str, endpoint: str, ip: str, *, keepalive: bool = True) -> list[str]:
    lines = [f"public_key={hexkey(pub)}", f"endpoint={endpoint}", "replace_allowed_ips=true", f"allowed_ip={ip}"]
    return lines + (["persistent_keepalive_interval=25"] if keepalive else [])


def start_node(lab: Lab, inet: Host, i: int, listen_port: int) -> Node:
    host = lab.host(f"node{i}")
    addr = f"198.51.100.{4 * (i - 1) + 2}"
    lab.link(host, "eth0", f"{addr}/30", inet, f"n{i}", f"198.51.100.{4 * (i - 1) + 1}/30")
    lab.route(host, "default", f"198.51.100.{4 * (i - 1) + 1}")
    _, uapi_dir = lab.wireguard_go(host, IF)
    private = bytearray(os.urandom(32))
    private[0] = i
    node = Node(f"node{i}", host, addr, key_from_bytes(x25519_public(bytes(private))), uapi_dir)
    uapi_set(node, [f"private_key={bytes(private).hex()}", f"listen_port={listen_port}"])
    lab.run(host, "ip", "addr", "add", f"10.42.{i}.1/16", "dev", IF)
    lab.run(host, "ip", "link", "set", IF, "up")
    return node


def start_api(lab: Lab, inet: Host, addr: str, servers: str, agents: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", "tests.kubeapi", "--host", addr, "--port", "6443", "--san", addr,
            "--servers", servers, "--nodes", agents, "--dir", os.path.join(inet.dir, f"kubeapi-{addr}")]  # fmt: skip
    proc = lab.spawn(inet, argv, name=f"kubeapi-{addr}", cwd=str(ROOT), env={"PYTHONPATH": str(ROOT)})

    def info() -> dict[str, Any] | None:
        for line in proc.output().splitlines():
            if line.startswith("{"):
                return dict(json.loads(line))
        return None

    wait_for(lambda: info() is not None, 30, f"the API stand-in on {addr}", proc=proc)
    return info() or {}


def annotate(lab: Lab, inet: Host, api: dict[str, Any], node: str, annotations: dict[str, str]) -> None:
    body = json.dumps({"action": "set_annotations", "node": node, "annotations": annotations})
    lab.run(inet, sys.executable, "-c", CONTROL, api["url"], api["ca"], ADMIN_TOKEN, body)


def backend_data(pub: str) -> str:
    return json.dumps({"PublicKey": pub, "Port": PORT})


def handshook(a: Node, b: Node) -> bool:
    dev = parse_get(uapi(a, "get=1\n\n"), IF)
    p = dev.peer(b.pub)
    return p is not None and p.last_handshake is not None


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    require("ip", "nft", "wireguard-go", "openssl", root=True)
    sweep_stale()
    lab = Lab()
    try:
        inet = lab.host("inet", forwarding=True)
        for addr in ("203.0.113.11", "203.0.113.12", "203.0.113.21", "203.0.113.22", API_A, API_B):
            lab.run(inet, "ip", "addr", "add", f"{addr}/32", "dev", "lo")
        specs = [{"kind": "echo", "name": f"echo{i}", "listen": u.removeprefix("http://") + ":80", "mode": "reflect"}
                 for i, u in enumerate(ECHO)]  # fmt: skip
        specs += [{"kind": "stun", "name": f"stun{i}", "listen": s, "mode": "reflect"} for i, s in enumerate(STUN)]
        spec_path = os.path.join(inet.dir, "ipservices.json")
        with open(spec_path, "w") as f:
            json.dump({"services": specs}, f)
        services = lab.spawn(inet, [sys.executable, "-m", "tests.support.ipservices", spec_path], name="ipservices",
                             cwd=str(ROOT), env={"PYTHONPATH": str(ROOT)})  # fmt: skip
        apis = {"A": start_api(lab, inet, API_A, "node1", "node2"), "B": start_api(lab, inet, API_B, "node3", "node4")}
        wait_for(lambda: "ready" in services.output(), 20, "the stand-ins", proc=services)

        n1, n2, n3 = (start_node(lab, inet, i, 51821 if i == 3 else PORT) for i in (1, 2, 3))
        # Cluster A: node1 and node2 peered as flannel does, and annotated as flannel does.
        uapi_set(n1, peer(n2.pub, f"{n2.addr}:{PORT}", "10.42.2.0/24"))
        uapi_set(n2, peer(n1.pub, f"{n1.addr}:{PORT}", "10.42.1.0/24"))
        for n in (n1, n2):
            anns = {ANN_BACKEND_DATA: backend_data(n.pub), ANN_PUBLIC_IP: n.addr, ANN_PUBLIC_IP_OVERWRITE: n.addr}
            annotate(lab, inet, apis["A"], n.name, anns)
        # Cluster B: node3 with a wrong overwrite (flannel published the InternalIP), and node4,
        # a live Node whose machine is gone: its peer on node3 never answers.
        node4 = key_from_bytes(os.urandom(32))
        annotate(lab, inet, apis["B"], "node3",
                 {ANN_BACKEND_DATA: backend_data(n3.pub), ANN_PUBLIC_IP_OVERWRITE: "198.51.100.99"})  # fmt: skip
        annotate(lab, inet, apis["B"], "node4", {ANN_BACKEND_DATA: backend_data(node4), ANN_PUBLIC_IP: "203.0.113.99"})
        lines = peer(node4, f"203.0.113.99:{PORT}", "10.42.4.0/24", keepalive=False)
        for i in range(DEAD):
            lines += peer(key_from_bytes(os.urandom(32)), f"203.0.113.{i % 200 + 1}:{PORT}",
                          f"10.100.{i >> 8}.{i & 255}/32", keepalive=False)  # fmt: skip
            lines.append(f"public_key={hexkey(key_from_bytes(os.urandom(32)))}")
        uapi_set(n3, lines)
        wait_for(lambda: handshook(n1, n2) and handshook(n2, n1), 20, "the handshake of node1 and node2")

        # natnode, behind a NAT that gives each new mapping a random port.
        natnode, router = lab.host("natnode"), lab.host("natrouter", forwarding=True)
        lab.link(natnode, "eth0", "10.9.0.2/24", router, "lan0", "10.9.0.1/24")
        lab.link(router, "wan0", "198.51.100.14/30", inet, "nat", "198.51.100.13/30")
        lab.route(natnode, "default", "10.9.0.1")
        lab.route(router, "default", "198.51.100.13")
        ruleset = ("table ip wgtnat {\n chain post { type nat hook postrouting priority 100; policy accept;\n"
                   '  oifname "wan0" masquerade fully-random\n }\n}\n')  # fmt: skip
        lab.run(router, "nft", "-f", "-", input=ruleset)

        # A stand-in k3s executable: doctor only looks for it.
        bin_dir = os.path.join(lab.dir, "bin")
        os.makedirs(bin_dir)
        k3s = Path(bin_dir, "k3s")
        k3s.write_text("#!/bin/sh\necho 'stand-in k3s (wgagent doctor lab test)'\n")
        k3s.chmod(k3s.stat().st_mode | stat.S_IXUSR)
        nodes = {n.name: n for n in (n1, n2, n3)}
        yield Net(lab, inet, nodes, natnode, apis, bin_dir, kernel_has_wireguard(lab))
    finally:
        lab.close()


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest, net: Net) -> Iterator[None]:
    yield
    if call_failed(request):
        print(net.lab.logs())


def node_config(net: Net, node: Node, cluster: str) -> str:
    """The node's config (only the stand-ins above), its k3s config dir with wgagent's drop-in."""
    tmp = os.path.join(node.host.dir, "doctor")
    etc = os.path.join(tmp, "etc-rancher-k3s")
    os.makedirs(os.path.join(etc, "config.yaml.d"), exist_ok=True)
    with open(os.path.join(etc, "config.yaml.d", "50-wgagent.yaml"), "w") as f:
        f.write(render_dropin("server", PublicAddresses(IPv4Address(node.addr)), K3sConfig()))
    api = net.apis[cluster]
    cfg = configs.sandbox(
        tmp,
        18795,
        node_name=node.name,
        public_ip={"enabled": True, "sources": ["stun", "http"], "stun_servers": STUN, "http_echo_urls": ECHO,
                   "timeout_s": 2},
        k3s={"enabled": True, "role": "server", "config_dir": etc},
        kube={"enabled": True, "kubeconfig": api["nodes"][node.name], "list_kubeconfig": api["k3scontroller"],
              "request_timeout_s": 5},
        wireguard={"enabled": True, "uapi_dir": node.uapi_dir, "gc": {"enabled": True}},
    )  # fmt: skip
    return configs.write(os.path.join(tmp, "config.yaml"), cfg)


def doctor(net: Net, host: Host, *argv: str, k3s: bool = True) -> tuple[int, dict[str, Any], str]:
    """Run ``argv`` (after python) in ``host``, with the stand-in k3s on PATH if ``k3s``; (rc, JSON, stderr)."""
    path = os.environ.get("PATH", "")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": (net.bin_dir + os.pathsep + path) if k3s else path}
    started = time.monotonic()
    proc = subprocess.run(host.argv(sys.executable, *argv), capture_output=True, text=True, timeout=90, env=env,
                          cwd=str(ROOT))  # fmt: skip
    assert time.monotonic() - started < 45, "doctor took too long"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def cli(net: Net, host: Host, config: str, *, k3s: bool = True) -> tuple[int, dict[str, Any], str]:
    return doctor(net, host, "-m", "wgagent", "--config", config, "doctor", "--json", k3s=k3s)


def problems(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{f['area']}: {f['title']}": f for f in data["findings"] if f["severity"] == "problem"}


def kernel_has_wireguard(lab: Lab) -> bool:
    """Ground truth, without wgagent: can a wireguard link be made in a fresh namespace?"""
    probe = lab.host("probe")
    made = subprocess.run(probe.argv("ip", "link", "add", "wgp", "type", "wireguard"), capture_output=True)
    return made.returncode == 0


def assert_kernel_findings(net: Net, data: dict[str, Any]) -> None:
    """The real module check on this machine: no WireGuard, said correctly."""
    kernel = [f for f in data["findings"] if f["area"] == "kernel"]
    if net.kernel_has_wireguard:
        assert [f["severity"] for f in kernel] == ["ok"], kernel
        return
    release = os.uname().release
    titles = [f["title"] for f in kernel if f["severity"] == "problem"]
    assert f"no WireGuard support in kernel {release} ('Operation not supported')" in titles, kernel
    assert all(f["fix"] for f in kernel if f["severity"] == "problem")


def test_a_healthy_node_is_all_clear(net: Net, tmp_path: Path) -> None:
    node1 = net.nodes["node1"]
    config = node_config(net, node1, "A")
    fake_sys_module = tmp_path / "sys-module"
    (fake_sys_module / "wireguard").mkdir(parents=True)
    code, data, err = doctor(net, node1.host, "-c", DRIVER, config, str(fake_sys_module))
    assert (code, data["ok"]) == (0, True), (problems(data), err)
    assert [f for f in data["findings"] if f["severity"] == "warn"] == []
    oks = [f"{f['area']}: {f['title']}" for f in data["findings"] if f["severity"] == "ok"]
    for title in (
        "kernel: WireGuard is available in kernel",
        "k3s: k3s server installed",
        "flannel: flannel-backend is wireguard-native",
        "public-ip: public IP 198.51.100.2 (by quorum)",
        "public-ip: the NAT keeps one mapping for all destinations",
        "kubernetes: the API answers; Node node1 is registered",
        "kubernetes: 2 Node(s) listed",
        "flannel: flannel's public-ip is the discovered 198.51.100.2",
        "wireguard: flannel-wg: up, listening on UDP 51820",
        "peers: no dead peers on flannel-wg",
    ):
        assert any(t.startswith(title) for t in oks), (title, oks)
    daemon = next(f for f in data["findings"] if f["area"] == "wgagent" and "daemon" in f["title"])
    assert (daemon["severity"], daemon["title"]) == ("info", "the wgagent daemon is not running")

    # The real CLI on the same node: only what this kernel cannot have.
    code, data, _ = cli(net, node1.host, config)
    assert {p.split(":")[0] for p in problems(data)} <= {"kernel"}
    assert code == (1 if problems(data) else 0)
    assert_kernel_findings(net, data)


def test_a_broken_node_gets_each_finding_with_its_fix(net: Net) -> None:
    node3 = net.nodes["node3"]
    config = node_config(net, node3, "B")
    etc = os.path.join(node3.host.dir, "doctor", "etc-rancher-k3s")
    mine = os.path.join(etc, "config.yaml.d", "90-mine.yaml")
    with open(mine, "w") as f:
        f.write("flannel-backend: vxlan\n")
    state = os.path.join(node3.host.dir, "doctor", "state")
    os.makedirs(state, exist_ok=True)
    hour_ago = time.time() - 3600
    seen = {p.public_key: hour_ago for p in parse_get(uapi(node3, "get=1\n\n"), IF).peers}
    seen_file = Path(state, FIRST_SEEN_FILE)
    seen_file.write_text(json.dumps({"version": 1, "interfaces": {IF: seen}}))
    before = seen_file.read_text()

    code, data, _ = cli(net, node3.host, config)
    assert (code, data["ok"]) == (1, False)
    found = problems(data)
    assert_kernel_findings(net, data)
    fixes = {title: f["fix"] for title, f in found.items() if not title.startswith("kernel: ")}
    assert set(fixes) == {
        "flannel: flannel backend is 'vxlan', not WireGuard",
        "flannel: flannel's public-ip on Node node3 is not the discovered 198.51.100.10",
        "wireguard: flannel-wg listens on UDP 51821, not 51820",
        "wireguard: nothing listens on UDP 51820",
        "wireguard: live node(s) unreachable over flannel-wg: node4",
        f"peers: {2 * DEAD} dead peer(s) on flannel-wg",
    }, found.keys()
    assert fixes["flannel: flannel backend is 'vxlan', not WireGuard"].startswith(
        f"delete the flannel-backend line from {mine}")  # fmt: skip
    # The API stand-in's k3s (v1.32.4+k3s1) leaves the overwrite alone: wgagent sets it, or a person by hand.
    assert fixes["flannel: flannel's public-ip on Node node3 is not the discovered 198.51.100.10"] == (
        "systemctl enable --now wgagent (it sets public-ip-overwrite and restarts k3s once, rate-limited); or by "
        f"hand: kubectl annotate node node3 --overwrite {ANN_PUBLIC_IP_OVERWRITE}=198.51.100.10, then systemctl "
        "restart k3s"
    )
    assert fixes["wireguard: nothing listens on UDP 51820"].startswith("systemctl restart k3s")
    assert fixes[f"peers: {2 * DEAD} dead peer(s) on flannel-wg"].startswith(f"wgagent --config {config} gc")
    detail = found["wireguard: live node(s) unreachable over flannel-wg: node4"]["detail"]
    assert "node4 at 203.0.113.99:51820, last handshake never" in detail
    # The report for a person: the same problems, each followed by its fix.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": net.bin_dir + os.pathsep + os.environ.get("PATH", "")}
    text = subprocess.run(node3.host.argv(sys.executable, "-m", "wgagent", "--config", config, "doctor"),
                          capture_output=True, text=True, timeout=90, env=env, cwd=str(ROOT))  # fmt: skip
    print(text.stdout)
    assert text.returncode == 1 and text.stderr == ""
    lines = text.stdout.splitlines()
    flagged = [i for i, line in enumerate(lines) if line.startswith("  PROBLEM  ")]
    assert len(flagged) == len(found)
    for i in flagged:
        assert lines[i + 2].startswith(" " * 11 + "fix: "), lines[i : i + 3]
    # doctor changed nothing: every peer is still there, the state file as it was.
    assert len(parse_get(uapi(node3, "get=1\n\n"), IF).peers) == 2 * DEAD + 1
    assert seen_file.read_text() == before


def test_a_nat_that_maps_each_destination_to_another_port(net: Net, tmp_path: Path) -> None:
    public_ip = {"enabled": True, "sources": ["stun"], "stun_servers": STUN, "timeout_s": 2}
    cfg = configs.sandbox(str(tmp_path), 18795, node_name="natnode", public_ip=public_ip)
    config = configs.write(str(tmp_path / "config.yaml"), cfg)
    code, data, _ = cli(net, net.natnode, config, k3s=False)
    assert code == 1
    found = problems(data)
    nat = found["public-ip: the NAT maps each destination to a different port (STUN mapped ports differ)"]
    assert nat["fix"].startswith("forward UDP 51820 on the NAT router to this node")
    assert nat["detail"].count("198.51.100.14:") == 2
    assert "public-ip: public IP 198.51.100.14 (by quorum)" in [
        f"{f['area']}: {f['title']}" for f in data["findings"] if f["severity"] == "ok"]  # fmt: skip
    assert "k3s: k3s is not installed" in found  # nothing of k3s on natnode, and doctor says so
