"""``wgagent doctor``'s adapters and command over fakes: a node's files in a temporary tree, the
fake WireGuard backend, fake public IP sources, a fake Kubernetes API, the real health
endpoint on loopback. Probes that hang or fail become findings within their timeout; doctor
writes nothing; exit codes; the CLI's bad-config path."""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import fields, replace
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Any

import pytest

from tests.labkit import free_port
from wgagent import cli
from wgagent.commands.doctor import doctor_command
from wgagent.config import Config, K3sConfig, KubeConfig, ListenAddress, PublicIPConfig, WireGuardConfig
from wgagent.doctor import (
    DaemonFacts,
    Environment,
    Failed,
    K3sFacts,
    KubeFacts,
    WireGuardFacts,
    fetch_health,
    find_k3s_binary,
    gather,
)
from wgagent.doctor.facts import RestartBook
from wgagent.doctor.gather import credentials, read_restart_book
from wgagent.errors import DeviceNotFound, Forbidden, KubeError, Unauthorized
from wgagent.health import HealthServer
from wgagent.k3s.dropin import render_dropin
from wgagent.k3s.restart import HISTORY_FILE, Served
from wgagent.k3s.role import decide_identity_from
from wgagent.k3s.versions import K3sVersion
from wgagent.kube.protocol import JSONObject, WatchEvent
from wgagent.model import ANN_BACKEND_DATA, ANN_BACKEND_TYPE, ANN_PUBLIC_IP, ANN_PUBLIC_IP_OVERWRITE, PublicAddresses
from wgagent.publicip.model import Answer
from wgagent.state import State
from wgagent.wireguard.backend import Backend, HostNet
from wgagent.wireguard.fake import FakeBackend
from wgagent.wireguard.gc import FIRST_SEEN_FILE
from wgagent.wireguard.model import Device, Peer, key_from_bytes
from wgagent.wireguard.module import ModprobeResult, ModuleHost, ProbeResult
from wgagent.wiring import Seams

V4 = "203.0.113.7"
NOW = time.time()


def k(n: int) -> str:
    return key_from_bytes(bytes([n]) * 32)


def anns(n: int, ip: str, overwrite: str | None = None) -> dict[str, str]:
    out = {ANN_BACKEND_TYPE: "wireguard", ANN_BACKEND_DATA: json.dumps({"PublicKey": k(n)}), ANN_PUBLIC_IP: ip}
    if overwrite:
        out[ANN_PUBLIC_IP_OVERWRITE] = overwrite
    return out


# --- fakes -------------------------------------------------------------------------------------------


class FakeSource:
    """A STUN-like source answering ``ip`` (from its own server address)."""

    kind = "stun"
    timeout_s = 1.0
    why_not = ""

    def __init__(self, name: str, ip: str, server: str, port: int = 40000) -> None:
        self.name, self.ip, self.server, self.port = name, ip, server, port

    async def observe(self) -> Sequence[Answer]:
        return [Answer(ip_address(self.ip), server=ip_address(self.server), port=self.port, local_port=5555)]


class FakeAPI:
    """The NodeAPI doctor needs: GET a Node, LIST the Nodes' metadata; it must never write."""

    def __init__(self, source: str, nodes: Mapping[str, dict[str, str]], error: KubeError | None = None,
                 hang: bool = False) -> None:  # fmt: skip
        self._source, self.nodes, self.error, self.hang = source, dict(nodes), error, hang
        self.version = "v1.32.4+k3s1"  # a k3s that leaves public-ip-overwrite alone (k3s/versions.py)
        self.calls: list[str] = []
        self.closed = False

    @property
    def source(self) -> str:
        return self._source

    async def _answer(self, what: str) -> None:
        self.calls.append(what)
        if self.hang:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error

    async def get_node(self, name: str) -> JSONObject:
        await self._answer(f"get {name}")
        return {
            "metadata": {"name": name, "annotations": self.nodes[name]},
            "spec": {"podCIDRs": ["10.42.1.0/24"], "providerID": f"k3s://{name}"},
            "status": {"nodeInfo": {"kubeletVersion": self.version}},
        }

    async def list_nodes_metadata(self, *, resource_version: str | None = None) -> JSONObject:
        await self._answer("list")
        items = [{"metadata": {"name": n, "annotations": a}} for n, a in self.nodes.items()]
        return {"metadata": {"resourceVersion": "1"}, "items": items}  # as the API server answers

    async def patch_node(self, name: str, patch: Mapping[str, Any]) -> JSONObject:
        raise AssertionError("doctor must not patch")

    def watch_nodes_metadata(self, resource_version: str, *, timeout_s: int) -> AsyncIterator[WatchEvent]:
        raise AssertionError("doctor does not watch")

    async def create_event(self, namespace: str, event: Mapping[str, Any]) -> dict[str, Any]:
        raise AssertionError("doctor records no Event")

    async def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        raise AssertionError("doctor records no Event")

    async def close(self) -> None:
        self.closed = True


class Node:
    """One node's files in a temporary tree, and an Environment that reads only them."""

    def __init__(self, tmp: Path, *, k3s_installed: bool = True) -> None:
        self.tmp = tmp
        self.etc = tmp / "etc-rancher-k3s"
        (self.etc / "config.yaml.d").mkdir(parents=True)
        addrs = PublicAddresses(IPv4Address(V4))
        (self.etc / "config.yaml.d" / "50-wgagent.yaml").write_text(render_dropin("server", addrs, K3sConfig()))
        self.units = tmp / "units"
        self.units.mkdir()
        self.bin = tmp / "bin"
        self.bin.mkdir()
        if k3s_installed:
            k3s = self.bin / "k3s"
            k3s.write_text("#!/bin/sh\n")
            k3s.chmod(0o755)
            (self.units / "k3s.service").write_text(f"[Service]\nExecStart={k3s} server\n")
        (tmp / "sys" / "module" / "wireguard").mkdir(parents=True)  # loaded
        net = tmp / "sys" / "class" / "net" / "flannel-wg"
        net.mkdir(parents=True)
        (net / "flags").write_text("0x1091\n")
        (net / "uevent").write_text("DEVTYPE=wireguard\nINTERFACE=flannel-wg\n")
        (tmp / "proc" / "net").mkdir(parents=True)
        header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        (tmp / "proc" / "net" / "udp").write_text(header + " 1: 00000000:CA6C 00000000:0000 07 0:0 0:0 0 0 0 1\n")
        self.device = Device(
            "flannel-wg", 51820, k(1), (Peer(k(2), "198.51.100.2:51820", ("10.42.2.0/24",), NOW - 20),)
        )
        self.backends: list[str] = []
        self.api = FakeAPI("/kubeconfig", {"n1": anns(1, V4, V4), "n2": anns(2, "198.51.100.2")})
        self.apis: list[FakeAPI] = []
        self.health_asked: list[str] = []

    def config(self, **sections: Any) -> Config:
        cfg = Config(
            node_name="n1",
            state_dir=str(self.tmp / "state"),
            health=replace(Config().health, listen=ListenAddress("127.0.0.1", 9)),
            public_ip=PublicIPConfig(sources=("stun",), stun_servers=(), http_echo_urls=(), metadata_provider="none"),
            k3s=K3sConfig(config_dir=str(self.etc), data_dir=str(self.tmp / "var-lib-k3s")),
            kube=KubeConfig(kubeconfig="/kubeconfig", list_kubeconfig="/kubeconfig"),
            wireguard=WireGuardConfig(uapi_dir=str(self.tmp / "run-wireguard")),
        )
        return replace(cfg, **sections)

    def backend(self, name: str, uapi_dir: str) -> Backend:
        self.backends.append(name)
        return FakeBackend({"flannel-wg": self.device})

    def kube(self, path: str, timeout_s: float, metrics: object) -> FakeAPI:
        self.apis.append(self.api)
        return self.api

    def health(self, url: str, timeout_s: float) -> DaemonFacts:
        self.health_asked.append(url)
        return DaemonFacts(url, None, error="Connection refused")

    def env(self, **changes: Any) -> Environment:
        """The fake host; ``changes`` replace Seams fields (module_host, backends, public_ip_sources...)
        or Environment fields (timeouts...)."""
        seams = Seams(
            module_host=ModuleHost(sys_module_dir=str(self.tmp / "sys" / "module"), modules_root=str(self.tmp / "lib")),
            host_net=HostNet(str(self.tmp / "sys" / "class" / "net"), str(self.tmp / "proc" / "net")),
            backends=self.backend,
            unit_dirs=(str(self.units),),
            public_ip_sources=[FakeSource("stun:a", V4, "198.51.100.250"), FakeSource("stun:b", V4, "198.51.100.251")],
            kube_client=self.kube,
        )
        seam_fields = {f.name for f in fields(Seams)}
        seams = replace(seams, **{k: v for k, v in changes.items() if k in seam_fields})
        env = Environment(seams=seams, which=lambda name: None, k3s_bin_dirs=(str(self.bin),), health=self.health,
                          subnet_env=str(self.tmp / "run-flannel" / "subnet.env"))  # fmt: skip
        return replace(env, **{k: v for k, v in changes.items() if k not in seam_fields})


def run(cfg: Config, env: Environment, *, as_json: bool = True) -> tuple[int, Any]:
    out = io.StringIO()
    code = doctor_command(cfg, "/etc/wgagent/config.yaml", as_json=as_json, out=out, env=env)
    return code, json.loads(out.getvalue()) if as_json else out.getvalue()


def titles(data: Any, severity: str) -> list[str]:
    return [f"{f['area']}: {f['title']}" for f in data["findings"] if f["severity"] == severity]


# --- the command over fakes -----------------------------------------------------------------------------


def test_a_healthy_node_exits_0_and_writes_nothing(tmp_path: Path) -> None:
    node = Node(tmp_path)
    (tmp_path / "state").mkdir()
    seen = tmp_path / "state" / FIRST_SEEN_FILE
    seen.write_text(json.dumps({"version": 1, "interfaces": {"flannel-wg": {k(2): NOW - 999}}}))
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    code, data = run(node.config(), node.env())
    assert (code, data["ok"]) == (0, True), titles(data, "problem") + titles(data, "warn")
    assert titles(data, "warn") == []
    oks = titles(data, "ok")
    for title in ("kernel: WireGuard is available in kernel", "k3s: k3s server installed", "public-ip: public IP "
                  f"{V4} (by quorum)", f"flannel: flannel's public-ip is the discovered {V4}",
                  "wireguard: flannel-wg: up, listening on UDP 51820", "kubernetes: 2 Node(s) listed"):  # fmt: skip
        assert any(t.startswith(title) for t in oks), (title, oks)
    assert node.backends == ["flannel-wg"] and node.api.calls == ["get n1", "list"] and node.api.closed
    assert node.health_asked == ["http://127.0.0.1:9"]
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before  # nothing written, nothing new


def test_a_broken_node_exits_1_with_each_finding_and_its_fix(tmp_path: Path) -> None:
    node = Node(tmp_path)
    (node.etc / "config.yaml.d" / "90-mine.yaml").write_text("flannel-backend: vxlan\n")
    node.api.nodes["n1"] = anns(1, "10.0.0.3", "198.51.100.99")
    (tmp_path / "proc" / "net" / "udp").write_text("  sl  local_address\n")
    dead = tuple(Peer(k(100 + i), None, (), None) for i in range(60))
    node.device = replace(node.device, peers=node.device.peers + dead)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / FIRST_SEEN_FILE).write_text(
        json.dumps({"version": 1, "interfaces": {"flannel-wg": {p.public_key: NOW - 3600 for p in dead}}})
    )
    code, data = run(node.config(), node.env())
    assert (code, data["ok"]) == (1, False)
    by_title = {f["title"]: f for f in data["findings"] if f["severity"] == "problem"}
    assert set(by_title) == {
        "flannel backend is 'vxlan', not WireGuard",
        f"flannel's public-ip on Node n1 is not the discovered {V4}",
        "nothing listens on UDP 51820",
        "60 dead peer(s) on flannel-wg",
    }, by_title
    assert all(f["fix"] for f in by_title.values())
    text_code, text = run(node.config(), node.env(), as_json=False)
    assert text_code == 1 and "fix: wgagent --config /etc/wgagent/config.yaml gc" in text


def test_without_k3s_it_says_so_and_skips_what_needs_k3s(tmp_path: Path) -> None:
    node = Node(tmp_path, k3s_installed=False)
    code, data = run(node.config(k3s=K3sConfig(config_dir=str(node.etc), data_dir=str(tmp_path / "none"))),
                     node.env())  # fmt: skip
    assert code == 1 and titles(data, "problem") == ["k3s: k3s is not installed"]
    skipped = {f["area"]: f["detail"] for f in data["findings"] if f["title"].startswith("skipped")}
    assert skipped == {"kubernetes": "k3s is not installed", "wireguard": "k3s is not installed"}
    assert node.apis == [] and node.backends == []  # not asked at all


def test_disabled_parts_are_not_asked(tmp_path: Path) -> None:
    node = Node(tmp_path)
    cfg = node.config(public_ip=PublicIPConfig(enabled=False), kube=KubeConfig(enabled=False),
                      wireguard=WireGuardConfig(enabled=False))  # fmt: skip
    code, data = run(cfg, node.env(public_ip_sources=[]))
    assert code == 0, titles(data, "problem")
    assert node.apis == [] and node.backends == []
    assert {f["detail"] for f in data["findings"] if f["title"].startswith("skipped")} == {
        "public_ip.enabled is false", "kube.enabled is false", "wireguard.enabled is false"}  # fmt: skip


def test_discovery_uses_the_configured_sources_like_discover(tmp_path: Path) -> None:
    node = Node(tmp_path)
    cfg = node.config(public_ip=PublicIPConfig(static=(IPv4Address(V4),)))
    code, data = run(cfg, node.env(public_ip_sources=None))  # the config's sources: only the static pin
    assert code == 0
    assert f"public-ip: public IP {V4} (by static)" in titles(data, "ok")


# --- probes that hang or fail ------------------------------------------------------------------------------


async def test_a_hanging_api_is_a_finding_within_its_timeout(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.api.hang = True
    started = time.monotonic()
    facts = await gather(node.config(), "/c.yaml", node.env(timeouts={"kube": 0.3}))
    assert time.monotonic() - started < 3
    assert facts.kube == Failed("asking the Kubernetes API did not finish within 0.3 s")
    assert node.api.closed  # cancelled, and still closed
    assert isinstance(facts.wireguard, WireGuardFacts)  # the rest went on


async def test_a_blocking_read_is_bounded_too(tmp_path: Path) -> None:
    node = Node(tmp_path)
    fifo = node.etc / "config.yaml"
    os.mkfifo(fifo)  # open() blocks until a writer comes: a hung filesystem
    try:
        facts = await gather(node.config(), "/c.yaml", node.env(timeouts={"k3s": 0.3}))
        assert facts.k3s == Failed("reading k3s's config and unit did not finish within 0.3 s")
        assert facts.node == "n1" and isinstance(facts.wireguard, WireGuardFacts)  # k3s unknown: still checked
    finally:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # let the reader thread finish
        os.close(fd)


async def test_a_probe_that_raises_is_a_finding(tmp_path: Path) -> None:
    node = Node(tmp_path)

    def broken(name: str, uapi_dir: str) -> Backend:
        raise RuntimeError("backend exploded")

    facts = await gather(node.config(), "/c.yaml", node.env(backends=broken))
    assert facts.wireguard == Failed("reading the WireGuard interface failed: RuntimeError: backend exploded")


async def test_api_errors_are_facts(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.api.error = Unauthorized("GET /api/v1/nodes/n1: 401 Unauthorized")
    facts = await gather(node.config(), "/c.yaml", node.env())
    assert isinstance(facts.kube, KubeFacts)
    assert facts.kube.node_error is node.api.error and facts.kube.annotations is None
    assert facts.kube.list_error is node.api.error and facts.kube.cluster is None


async def test_a_device_that_cannot_be_read(tmp_path: Path) -> None:
    node = Node(tmp_path)

    def failing(name: str, uapi_dir: str) -> Backend:
        fake = FakeBackend()
        fake.fail_get = DeviceNotFound("flannel-wg: no such WireGuard device")
        return fake

    facts = await gather(node.config(), "/c.yaml", node.env(backends=failing))
    assert isinstance(facts.wireguard, WireGuardFacts)
    assert facts.wireguard.interfaces[0].read.error == "flannel-wg: no such WireGuard device"


# --- the module, k3s and WireGuard adapters ----------------------------------------------------------------


class SeedModuleHost(ModuleHost):
    """The seed's node: kernel 4.15.0-20-generic, its /lib/modules without WireGuard."""

    async def modprobe(self) -> ModprobeResult:
        return ModprobeResult(
            1, f"modprobe: FATAL: Module wireguard not found in directory /lib/modules/{self.release}"
        )


async def test_the_seeds_module_failure(tmp_path: Path) -> None:
    node = Node(tmp_path)
    lib = tmp_path / "lib" / "4.15.0-20-generic"
    lib.mkdir(parents=True)
    (lib / "modules.dep").write_text("kernel/net/ipv4/udp_tunnel.ko:\n")

    async def unsupported() -> ProbeResult:
        return ProbeResult("unsupported", "Operation not supported")

    host = SeedModuleHost(sys_module_dir=str(tmp_path / "nothing"), modules_root=str(tmp_path / "lib"),
                          release="4.15.0-20-generic", prober=unsupported)  # fmt: skip
    facts = await gather(node.config(), "/c.yaml", node.env(module_host=host))
    assert not isinstance(facts.module, Failed)
    assert facts.module.release == "4.15.0-20-generic" and facts.module.probe == ProbeResult(
        "unsupported", "Operation not supported")  # fmt: skip


def test_the_default_module_check_changes_nothing() -> None:
    host = Environment().seams.module_host
    assert os.path.basename(host.modprobe_argv[0]) == "modprobe"
    assert list(host.modprobe_argv[1:]) == ["--dry-run", "wireguard"]


def test_the_k3s_binary(tmp_path: Path) -> None:
    fake = tmp_path / "k3s"
    fake.write_text("")
    unit = [("/etc/systemd/system/k3s.service", "[Service]\nExecStart=/bin/sleep infinity\n")]
    path, looked = find_k3s_binary(unit, lambda name: None, [str(tmp_path)])
    assert path is None  # not executable; and /bin/sleep is no k3s
    assert looked == f"there is no k3s binary (not on PATH, nor in {tmp_path}); k3s.service runs /bin/sleep"
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert find_k3s_binary(unit, lambda name: None, [str(tmp_path)])[0] == str(fake)
    assert find_k3s_binary([], lambda name: str(fake), [])[0] == str(fake)
    own = [("u", f"[Service]\nExecStart={fake} agent\n")]
    assert find_k3s_binary(own, lambda name: None, [])[0] == str(fake)


async def test_k3s_facts_and_the_node_name_from_k3s(tmp_path: Path) -> None:
    node = Node(tmp_path)
    (node.etc / "config.yaml").write_text("node-name: Web-7\n")
    facts = await gather(node.config(node_name=None), "/c.yaml", node.env())
    assert isinstance(facts.k3s, K3sFacts) and facts.k3s.installed
    assert facts.k3s.role is not None and facts.k3s.role.unit == "k3s.service"
    assert (facts.node, facts.node_source) == ("web-7", f"node-name in {node.etc}/config.yaml:1")
    assert node.api.calls[0] == "get web-7"


def test_k3s_config_file_elsewhere_is_where_doctor_reads(tmp_path: Path) -> None:
    """K3S_CONFIG_FILE in the unit's environment file: k3s reads that file and its .d, not
    k3s.config_dir (k3s pkg/configfilearg); doctor reads what k3s reads, like the daemon."""
    node = Node(tmp_path)
    (node.etc / "config.yaml.d" / "90-mine.yaml").write_text("flannel-backend: vxlan\n")  # not read by k3s
    elsewhere = tmp_path / "srv" / "k3s.yaml"
    (tmp_path / "srv" / "k3s.yaml.d").mkdir(parents=True)
    os.rename(node.etc / "config.yaml.d" / "50-wgagent.yaml", tmp_path / "srv" / "k3s.yaml.d" / "50-wgagent.yaml")
    env_file = tmp_path / "k3s.service.env"
    env_file.write_text(f"K3S_CONFIG_FILE='{elsewhere}'\n")
    (node.units / "k3s.service").write_text(
        f"[Service]\nEnvironmentFile=-{env_file}\nExecStart={node.bin / 'k3s'} server\n"
    )
    facts = asyncio.run(gather(node.config(), "/c.yaml", node.env()))
    assert isinstance(facts.k3s, K3sFacts)
    assert facts.k3s.identity.config.main == str(elsewhere)
    assert facts.k3s.identity.config.source == f"K3S_CONFIG_FILE in {env_file}:1"
    assert set(facts.k3s.files) == {"config.yaml.d/50-wgagent.yaml"}
    code, data = run(node.config(), node.env())
    assert code == 0, titles(data, "problem")
    assert f"flannel: flannel-backend is wireguard-native ({elsewhere}.d/50-wgagent.yaml:18)" in titles(data, "ok")


def test_two_k3s_units_dispute_the_role(tmp_path: Path) -> None:
    node = Node(tmp_path)
    (node.units / "k3s-agent.service").write_text(f"[Service]\nExecStart={node.bin / 'k3s'} agent\n")
    code, text = run(node.config(), node.env(), as_json=False)
    assert code == 1
    assert text.splitlines()[0].startswith("wgagent doctor: node n1 (k3s role disputed; name from wgagent node_name)")
    assert "PROBLEM  cannot tell whether k3s runs here as a server or an agent" in text
    assert "several k3s units could run here: k3s-agent.service (k3s agent), k3s.service (k3s server)" in text
    assert "k3s is not installed" not in text  # the API and WireGuard are still checked
    assert node.api.calls == ["get n1", "list"]


async def test_flannels_subnet_file_and_the_restarters_book_are_read(tmp_path: Path) -> None:
    node = Node(tmp_path)
    (tmp_path / "run-flannel").mkdir()
    (tmp_path / "run-flannel" / "subnet.env").write_text(
        "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.1.1/24\nFLANNEL_MTU=1370\n"
    )
    state = tmp_path / "state"
    state.mkdir()
    book = {"version": 2, "needs": {"config": {"want": "x", "why": "drop-in changed", "since": NOW - 5}},
            "served": {"overwrite": {"want": V4, "at": NOW - 900}}}  # fmt: skip
    (state / HISTORY_FILE).write_text(json.dumps(book))
    facts = await gather(node.config(), "/c.yaml", node.env())
    assert isinstance(facts.k3s, K3sFacts)
    assert facts.k3s.subnet_env["FLANNEL_SUBNET"] == "10.42.1.1/24"
    assert facts.k3s.restarts == RestartBook(frozenset({"config"}), {"overwrite": Served(V4, NOW - 900)})
    (state / HISTORY_FILE).write_text("{not json")
    assert read_restart_book(str(state)) == RestartBook()  # unreadable: nothing pending, nothing stuck
    assert read_restart_book(str(tmp_path / "none")) == RestartBook()


async def test_the_own_node_is_read_whole(tmp_path: Path) -> None:
    node = Node(tmp_path)
    facts = await gather(node.config(), "/c.yaml", node.env())
    assert isinstance(facts.kube, KubeFacts) and facts.kube.node is not None
    assert facts.kube.node.pod_cidrs == ("10.42.1.0/24",)
    assert facts.kube.node.version == K3sVersion.parse("v1.32.4+k3s1")
    assert facts.kube.annotations == anns(1, V4, V4)


async def test_the_node_list_falls_back_to_the_own_credential_as_the_node_watch_does(tmp_path: Path) -> None:
    """A server before k3s v1.32 does not let k3scontroller list Nodes; the kubelet may (k8s < 1.32)."""
    node = Node(tmp_path)
    refused = FakeAPI("/controller", node.api.nodes, error=Forbidden("LIST nodes: 403"))
    apis = {"/kubeconfig": node.api, "/controller": refused}
    cfg = node.config(kube=KubeConfig(kubeconfig="/kubeconfig", list_kubeconfig="/controller"))
    facts = await gather(cfg, "/c.yaml", node.env(kube_client=lambda path, timeout_s, metrics: apis[path]))
    assert isinstance(facts.kube, KubeFacts)
    assert facts.kube.cluster is not None and set(facts.kube.cluster.nodes) == {"n1", "n2"}
    assert (facts.kube.list_source, facts.kube.list_error) == ("/kubeconfig", None)
    assert refused.calls == ["list"] and node.api.calls == ["get n1", "list"] and refused.closed
    node.api.error = Unauthorized("401")
    facts = await gather(cfg, "/c.yaml", node.env(kube_client=lambda path, timeout_s, metrics: apis[path]))
    assert isinstance(facts.kube, KubeFacts)
    assert (facts.kube.list_source, facts.kube.list_error) == ("/controller", refused.error)  # the first refusal


def test_credentials_follow_the_identity_as_the_daemon_does(tmp_path: Path) -> None:
    """The agent's kubelet credential under K3S_DATA_DIR; the server's admin kubeconfig where
    K3S_KUBECONFIG_OUTPUT puts it (wiring.kube_clients)."""
    units = tmp_path / "units"
    units.mkdir()
    env_file = tmp_path / "k3s.env"
    env_file.write_text("K3S_DATA_DIR=/srv/k3s-data\nK3S_KUBECONFIG_OUTPUT=/srv/admin.yaml\n")
    cfg = Config(node_name="n1", k3s=K3sConfig(config_dir=str(tmp_path / "etc")))
    for role, own, lister in (
        ("agent", "/srv/k3s-data/agent/kubelet.kubeconfig", "/srv/k3s-data/agent/k3scontroller.kubeconfig"),
        ("server", "/srv/admin.yaml", "/srv/admin.yaml"),
    ):
        name = "k3s.service" if role == "server" else "k3s-agent.service"
        for old in units.iterdir():
            old.unlink()
        (units / name).write_text(f"[Service]\nEnvironmentFile={env_file}\nExecStart=/usr/local/bin/k3s {role}\n")
        identity = decide_identity_from(cfg, unit_dirs=(str(units),))
        paths = credentials(cfg, identity)
        assert (paths.own, paths.list) == (own, lister)
    # no identity (k3s's files could not be read): k3s's defaults, by the admin kubeconfig's presence
    assert credentials(cfg, None).own == "/var/lib/rancher/k3s/agent/kubelet.kubeconfig"


async def test_other_wireguard_devices_are_named_when_auto_finds_none(tmp_path: Path) -> None:
    node = Node(tmp_path)
    os.rename(tmp_path / "sys" / "class" / "net" / "flannel-wg", tmp_path / "sys" / "class" / "net" / "wg0")
    (tmp_path / "run-wireguard").mkdir()
    (tmp_path / "run-wireguard" / "wg1.sock").write_text("")
    facts = await gather(node.config(), "/c.yaml", node.env())
    assert isinstance(facts.wireguard, WireGuardFacts)
    assert facts.wireguard.interfaces == () and facts.wireguard.other_devices == ("wg0", "wg1")
    assert facts.wireguard.note.startswith("no WireGuard interface of flannel")


# --- the daemon's health, on a real socket ---------------------------------------------------------------


async def test_fetch_health_from_the_real_endpoint() -> None:
    state = State(node="n1", version="test")
    state.set_check("config", True, "loaded")
    port = free_port()
    server = HealthServer(state, ListenAddress("127.0.0.1", port))
    await server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        assert await asyncio.to_thread(fetch_health, url, 2.0) == DaemonFacts(url, 200, ())
        state.set_check("peer_gc", False, "removing failed")
        assert await asyncio.to_thread(fetch_health, url, 2.0) == DaemonFacts(url, 503, ("peer_gc",))
    finally:
        await server.stop()
    down = await asyncio.to_thread(fetch_health, url, 2.0)
    assert down.status is None and "refused" in down.error.lower()


# --- the CLI ---------------------------------------------------------------------------------------------


def test_a_bad_config_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("wireguard:\n  interfac: wg0\n")
    assert cli.main(["--config", str(path), "doctor", "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert f"{path}:2: unknown key 'wireguard.interfac' (did you mean 'wireguard.interface'?)" in err


def test_the_json_flag() -> None:
    parser = cli._parser()
    assert parser.parse_args(["doctor", "--json"]).json is True
    assert parser.parse_args(["doctor"]).json is False
