"""``wgagent doctor``: the pure diagnose() with named cases (every failure of the seed and those
around it), and the text and JSON reports.

Each case starts from a healthy node's facts and breaks one thing; the healthy node itself
must give no problem and no warning.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

import pytest

from wgagent.commands.doctor import render_text
from wgagent.config import Config, GCConfig, K3sConfig, WireGuardConfig
from wgagent.doctor import (
    DEAD_PEERS_PROBLEM,
    DaemonFacts,
    DiscoveryFacts,
    Facts,
    Failed,
    Finding,
    InterfaceRead,
    K3sFacts,
    KubeFacts,
    Skipped,
    WireGuardFacts,
    diagnose,
    is_clear,
    render_json,
)
from wgagent.doctor.facts import RestartBook
from wgagent.doctor.k3s_findings import _k3s_finding
from wgagent.errors import Forbidden, KubeConfigError, KubeError, KubeUnreachable, NotFound, Unauthorized
from wgagent.k3s.dropin import render_dropin
from wgagent.k3s.install import Unit
from wgagent.k3s.restart import Served
from wgagent.k3s.role import Identity, Role
from wgagent.k3s.scan import ConfigFinding, ConfigLocation, Unreadable
from wgagent.k3s.servers import ANN_BACKEND_WANTED
from wgagent.k3s.versions import K3sVersion
from wgagent.kube.annotation import OwnNode
from wgagent.model import (
    ANN_BACKEND_DATA,
    ANN_BACKEND_TYPE,
    ANN_PUBLIC_IP,
    ANN_PUBLIC_IP_OVERWRITE,
    ANN_SUBNET_MANAGER,
    ClusterView,
    NodeInfo,
    PublicAddresses,
)
from wgagent.publicip.decide import decide
from wgagent.publicip.model import Observation
from wgagent.wireguard.backend import Link
from wgagent.wireguard.interface import DeviceRead
from wgagent.wireguard.model import Device, Peer, key_from_bytes
from wgagent.wireguard.module import ModprobeResult, ModuleFacts, ProbeResult

NOW = 1_800_000_000.0
V4 = "203.0.113.7"
CONF = "/etc/wgagent/config.yaml"
UNIT = "/etc/systemd/system/k3s.service"
DROPIN = "config.yaml.d/50-wgagent.yaml"
ETC = "/etc/rancher/k3s"
NO_RESTARTS = RestartBook()
OLD_K3S = "v1.32.4+k3s1"  # updateAddressAnnotations: leaves the overwrite alone with flannel-external-ip off
NEW_K3S = "v1.33.7+k3s3"  # syncAnnotations (k3s PR #13431): removes it at every start when off


def dropin(address: str = V4, **k3s: Any) -> bytes:
    """wgagent's drop-in on a server, as it writes it."""
    return render_dropin("server", PublicAddresses(IPv4Address(address)), K3sConfig(**k3s)).encode()


def k(n: int) -> str:
    return key_from_bytes(bytes([n]) * 32)


def node_anns(n: int, public_ip: str, *, overwrite: str | None = None) -> dict[str, str]:
    anns = {
        ANN_SUBNET_MANAGER: "true",
        ANN_BACKEND_TYPE: "wireguard",
        ANN_BACKEND_DATA: json.dumps({"PublicKey": k(n), "Port": 51820}),
        ANN_PUBLIC_IP: public_ip,
    }
    if overwrite is not None:
        anns[ANN_PUBLIC_IP_OVERWRITE] = overwrite
    return anns


OWN_ANNS = node_anns(1, V4, overwrite=V4)
CLUSTER = ClusterView({"n1": NodeInfo("n1", OWN_ANNS), "n2": NodeInfo("n2", node_anns(2, "198.51.100.2"))})
PEER_N2 = Peer(k(2), "198.51.100.2:51820", ("10.42.2.0/24",), NOW - 30, 1000, 2000, 25)


def stun(source: str, port: int, ip: str = V4) -> Observation:
    server = ip_address(f"198.51.100.{250 + len(source) % 5}")  # distinct servers for distinct names here
    return Observation(source, "stun", 0.01, ip=ip_address(ip), server=server, port=port, local_port=40000)


def discovery(*observations: Observation) -> DiscoveryFacts:
    obs = observations or (stun("stun:a", 40000), Observation("http:b", "http", 0.02, ip=ip_address(V4)))
    return DiscoveryFacts(tuple(obs), decide(obs, quorum=2))


def device(*peers: Peer, port: int | None = 51820) -> Device:
    return Device("flannel-wg", port, k(1), peers or (PEER_N2,))


def wireguard(dev: Device | None = None, *, up: bool = True, bound: Iterable[int] = (51820,),
              first_seen: dict[str, float] | None = None, others: tuple[str, ...] = ()) -> WireGuardFacts:  # fmt: skip
    read = DeviceRead(Link("flannel-wg", True, up, "wireguard"), dev or device(), "netlink", None)
    return WireGuardFacts((InterfaceRead("flannel-wg", read, first_seen or {}),), "", frozenset(bound), others)


def identity(role: str | None = "server", exec_start: str = "/usr/local/bin/k3s server", *, certain: bool = True,
             conflict: str = "", notes: tuple[str, ...] = (),
             location: ConfigLocation | None = None) -> Identity:  # fmt: skip
    """The identity ``decide_identity_from`` gives a node whose unit (or, without a role, none) runs ``exec_start``."""
    name = f"k3s{'-agent' if role == 'agent' else ''}.service"
    the_role = Role(role, name, f"ExecStart of {UNIT}", certain) if role else None
    files = ((UNIT, f"[Service]\nExecStart={exec_start}\n"),)
    unit = Unit(name, UNIT, files, tuple(shlex.split(exec_start)), UNIT) if role else None
    where = location or ConfigLocation.in_dir(ETC)
    return Identity("n1", "wgagent node_name", the_role, where, "/var/lib/rancher/k3s", unit, conflict, notes)


def k3s_facts(files: Mapping[str, bytes | Unreadable] | None = None, *, exec_start: str = "/usr/local/bin/k3s server",
              role: str | None = "server", binary: str | None = "/usr/local/bin/k3s", certain: bool = True,
              conflict: str = "", notes: tuple[str, ...] = (), location: ConfigLocation | None = None,
              subnet_env: Mapping[str, str] | None = None,
              restarts: RestartBook = NO_RESTARTS) -> K3sFacts:  # fmt: skip
    if files is None:
        files = {DROPIN: dropin()}
    ident = identity(role, exec_start, certain=certain, conflict=conflict, notes=notes, location=location)
    unit_files = ident.unit.files if ident.unit is not None else ()
    if conflict:
        missing = f"{conflict} (wgagent writes only the agent-safe drop-in until then)"
    else:
        missing = "no k3s found: neither k3s.service nor k3s-agent.service in /etc/systemd/system" if not role else ""
    looked = "" if binary else "there is no k3s binary (not on PATH, nor in /usr/local/bin)"
    return K3sFacts(ident, missing, binary, looked, files, unit_files, subnet_env or {}, restarts)


def own(anns: Mapping[str, str], *, cidrs: tuple[str, ...] = ("10.42.1.0/24",), version: str = OLD_K3S) -> OwnNode:
    """The own Node as one GET reads it (``own_node_of``)."""
    return OwnNode(dict(anns), cidrs, K3sVersion.parse(version))


def kube(anns: Mapping[str, str] = OWN_ANNS, cluster: ClusterView | None = None, **node: Any) -> KubeFacts:
    return KubeFacts("/k.yaml", "/k.yaml", own(anns, **node), None, CLUSTER if cluster is None else cluster, None)


def healthy(**changes: Any) -> Facts:
    facts = Facts(
        cfg=Config(node_name="n1"),
        config_path=CONF,
        now=NOW,
        node="n1",
        node_source="wgagent node_name",
        k3s=k3s_facts(),
        module=ModuleFacts("6.1.0-28-amd64", loaded=True, builtin=False, modules_dir=True, module_file=True),
        public_ip=discovery(stun("stun:a", 40000), stun("stun:cc", 40000)),
        kube=KubeFacts("/etc/rancher/k3s/k3s.yaml", "/etc/rancher/k3s/k3s.yaml", own(OWN_ANNS), None, CLUSTER, None),
        wireguard=wireguard(),
        daemon=DaemonFacts("http://127.0.0.1:8795", 200),
    )
    return replace(facts, **changes)


def find(findings: list[Finding], severity: str, area: str, title: str) -> Finding:
    hits = [f for f in findings if f.severity == severity and f.area == area and title in f.title]
    assert len(hits) == 1, "\n".join(f"{f.severity} {f.area}: {f.title}" for f in findings)
    return hits[0]


def problems(findings: list[Finding]) -> list[str]:
    return [f"{f.area}: {f.title}" for f in findings if f.severity == "problem"]


# --- the healthy node ------------------------------------------------------------------------------


def test_a_healthy_node_is_all_clear() -> None:
    findings = diagnose(healthy())
    assert [f for f in findings if f.severity in ("problem", "warn")] == []
    assert is_clear(findings)
    find(findings, "ok", "kernel", "WireGuard is available in kernel 6.1.0-28-amd64")
    find(findings, "ok", "k3s", "k3s server installed (/usr/local/bin/k3s)")
    find(findings, "ok", "flannel", "flannel-backend is wireguard-native")
    find(findings, "ok", "flannel", f"flannel's public-ip is the discovered {V4}")
    find(findings, "ok", "k3s", f"k3s's node-external-ip is the discovered {V4}")
    find(findings, "ok", "public-ip", "STUN ports agree")
    find(findings, "ok", "wireguard", "flannel-wg: up, listening on UDP 51820")
    find(findings, "ok", "peers", "no dead peers on flannel-wg")
    find(findings, "ok", "wgagent", "the wgagent daemon answers")


def test_the_daemon_not_running_is_only_information() -> None:
    facts = healthy(daemon=DaemonFacts("http://127.0.0.1:8795", None, error="Connection refused"))
    findings = diagnose(facts)
    f = find(findings, "info", "wgagent", "the wgagent daemon is not running")
    assert "Connection refused" in f.detail and f.fix == "systemctl enable --now wgagent"
    assert is_clear(findings)
    failing = diagnose(healthy(daemon=DaemonFacts("http://x", 503, ("peer_gc", "annotation"))))
    assert find(failing, "info", "wgagent", "reports failing checks: peer_gc, annotation").fix == "wgagent status"


# --- the seed's failures, one case each --------------------------------------------------------------

SEED_OLD_KERNEL = ModuleFacts(
    "4.15.0-20-generic", loaded=False, builtin=False, modules_dir=True, module_file=False,
    modprobe=ModprobeResult(1, "modprobe: FATAL: Module wireguard not found in directory /lib/modules/4.15.0-20-gen"
                               "eric"),
    probe=ProbeResult("unsupported", "Operation not supported"),
)  # fmt: skip


def test_seed_module_not_found_on_an_old_kernel_names_the_kernel_and_the_fixes() -> None:
    findings = diagnose(healthy(module=SEED_OLD_KERNEL))
    old = find(findings, "problem", "kernel", "kernel 4.15.0-20-generic is too old for WireGuard")
    assert "apt install wireguard-dkms linux-headers-4.15.0-20-generic" in old.fix
    assert "apt dist-upgrade" in old.fix and "reboot" in old.fix
    mp = find(findings, "problem", "kernel", "modprobe wireguard fails (kernel 4.15.0-20-generic)")
    assert "FATAL: Module wireguard not found in directory" in mp.detail and mp.fix
    assert not is_clear(findings)


def test_seed_operation_not_supported_means_no_wireguard_in_the_kernel() -> None:
    module = ModuleFacts("6.18.44", loaded=False, builtin=False, modules_dir=False, module_file=None,
                         modprobe=ModprobeResult(1, "modprobe: FATAL: Module wireguard not found"),
                         probe=ProbeResult("unsupported", "Operation not supported"))  # fmt: skip
    findings = diagnose(healthy(module=module))
    f = find(findings, "problem", "kernel", "no WireGuard support in kernel 6.18.44 ('Operation not supported')")
    assert "apt update && apt dist-upgrade && reboot" in f.fix
    find(findings, "problem", "kernel", "/lib/modules/6.18.44 is missing")


def test_seed_wg_show_empty_means_flannels_interface_is_missing() -> None:
    note = "no WireGuard interface of flannel (looked for flannel-wg, flannel-wg-v6, flannel.1)"
    missing = WireGuardFacts((), note + ": flannel.1 is a vxlan device (is flannel-backend wireguard-native?)",
                             frozenset())  # fmt: skip
    f = find(diagnose(healthy(wireguard=missing)), "problem", "wireguard", "flannel's WireGuard interface is missing")
    assert "flannel.1 is a vxlan device" in f.detail
    assert f.fix == "flannel-backend: wireguard-native on every server, then systemctl restart k3s"
    # Another WireGuard device is here: name it as the fix.
    f = find(diagnose(healthy(wireguard=replace(missing, other_devices=("wg0",)))), "problem", "wireguard",
             "interface is missing")  # fmt: skip
    assert f.fix.startswith(f"wireguard.interface: wg0 in {CONF}") and "WireGuard devices here: wg0" in f.detail
    # No WireGuard in the kernel: that comes first.
    f = find(diagnose(healthy(wireguard=missing, module=SEED_OLD_KERNEL)), "problem", "wireguard", "is missing")
    assert f.fix.startswith("make WireGuard available in the kernel first")


def test_seed_netstat_shows_nothing_on_the_wireguard_port() -> None:
    findings = diagnose(healthy(wireguard=wireguard(bound=(53, 68))))
    f = find(findings, "problem", "wireguard", "nothing listens on UDP 51820")
    assert "netstat -ulnp" in f.detail and f.fix.startswith("systemctl restart k3s")


def test_a_device_on_another_port() -> None:
    findings = diagnose(healthy(wireguard=wireguard(device(port=51999), bound=(51999,))))
    f = find(findings, "problem", "wireguard", "flannel-wg listens on UDP 51999, not 51820")
    assert f"wireguard.listen_port: 51999 in {CONF}" in f.fix
    find(findings, "problem", "wireguard", "nothing listens on UDP 51820")


def test_an_interface_that_does_not_exist() -> None:
    read = DeviceRead(Link("flannel-wg", False), None, None, "no such device")
    w = WireGuardFacts((InterfaceRead("flannel-wg", read, {}),), "", frozenset())
    findings = diagnose(healthy(wireguard=w))
    f = find(findings, "problem", "wireguard", "interface flannel-wg does not exist")
    assert f.detail == "no such device" and f.fix == "systemctl restart k3s (flannel creates flannel-wg when it starts)"
    assert not any(x.area == "peers" for x in findings)


def test_an_interface_that_cannot_be_read() -> None:
    read = DeviceRead(Link("flannel-wg", True, True, "wireguard"), None, "netlink", "Operation not permitted")
    w = WireGuardFacts((InterfaceRead("flannel-wg", read, {}),), "", frozenset((51820,)))
    f = find(diagnose(healthy(wireguard=w)), "problem", "wireguard", "cannot read WireGuard interface flannel-wg")
    assert (
        f.detail == "Operation not permitted" and f.fix == "run 'wgagent doctor' as root; by hand: wg show flannel-wg"
    )


def test_a_device_that_is_down() -> None:
    f = find(diagnose(healthy(wireguard=wireguard(up=False))), "problem", "wireguard", "flannel-wg is down")
    assert "ip link set flannel-wg up" in f.fix


# --- flannel's public IP: the annotation part's verdict per family (kube/annotation.py decide_family) -------

OTHER = "198.51.100.1"
WRONG = "10.0.0.3"  # what flannel publishes without an overwrite: its interface's address
WRONG_IP = f"flannel's public-ip on Node n1 is not the discovered {V4}"
LATER = "config.yaml.d/99-old.yaml"


def verdict_case(anns: Mapping[str, str], *, files: Mapping[str, bytes] | None = None, version: str = OLD_K3S,
                 restarts: RestartBook = NO_RESTARTS, cluster: ClusterView | None = None) -> Facts:  # fmt: skip
    return healthy(k3s=k3s_facts(files, restarts=restarts), kube=kube(anns, cluster, version=version))


VERDICTS = {
    "ok": (verdict_case(OWN_ANNS), "ok", f"flannel's public-ip is the discovered {V4}", "public-ip is 203.0.113.7",
           ""),
    "restore: the overwrite removed, put back where k3s leaves it alone": (
        verdict_case(node_anns(1, V4)), "ok", f"flannel's public-ip is the discovered {V4}",
        f"public-ip-overwrite was removed, put back (k3s {OLD_K3S} leaves it alone); the running wgagent does so",
        ""),
    "shared: another Node publishes the address": (
        verdict_case(node_anns(1, WRONG), cluster=ClusterView(
            {"n1": NodeInfo("n1", node_anns(1, WRONG)), "n2": NodeInfo("n2", node_anns(2, V4))})),
        "problem", f"Nodes n1 and n2 share the public IP {V4}", "already published by Node n2",
        "give each node its own public IP"),
    "override: a later file sets node-external-ip": (
        verdict_case(node_anns(1, WRONG, overwrite=OTHER),
                     files={DROPIN: dropin(), LATER: f"node-external-ip: {OTHER}\n".encode()}),
        "problem", f"k3s will use node-external-ip {OTHER}, not the discovered {V4}",
        f"from {ETC}/{LATER}:1, not {V4}", f"remove node-external-ip from {ETC}/{LATER}:1"),
    "drop-in: wgagent's drop-in still has an old address": (
        verdict_case(node_anns(1, WRONG), files={DROPIN: dropin(OTHER)}), "warn",
        f"k3s's node-external-ip is not the discovered {V4} yet",
        f"wgagent's drop-in is about to set node-external-ip {V4}: wgagent writes {ETC}/{DROPIN}, then restarts k3s "
        "once (at most once per 600 s)",
        "none while wgagent runs; else systemctl enable --now wgagent"),
    "drop-in: not written yet": (
        verdict_case(node_anns(1, WRONG), files={"config.yaml": b"flannel-backend: wireguard-native\n"}), "warn",
        f"k3s's node-external-ip is not the discovered {V4} yet",
        "about to set node-external-ip", "none while wgagent runs"),
    "restart: k3s runs an older drop-in": (
        verdict_case(node_anns(1, WRONG), restarts=RestartBook(frozenset({"config"}))), "warn",
        f"k3s has not restarted since node-external-ip became {V4}",
        "wgagent restarts k3s once (at most once per 600 s)", "none while wgagent runs"),
    "wiped: a k3s that removes the overwrite at every start": (
        verdict_case(node_anns(1, WRONG), version=NEW_K3S), "problem",
        f"{WRONG_IP}: k3s removes public-ip-overwrite at every start",
        f"k3s {NEW_K3S} runs with node-external-ip {V4} but public-ip-overwrite is not set",
        "set flannel-external-ip: true on every server"),
    "patch: a k3s that leaves the overwrite alone (the seed)": (
        verdict_case(node_anns(1, "104.156.140.173")), "problem", WRONG_IP,
        f"k3s {OLD_K3S} runs with node-external-ip {V4} but did not set public-ip-overwrite",
        f"systemctl enable --now wgagent (it sets public-ip-overwrite and restarts k3s once, rate-limited); or by "
        f"hand: kubectl annotate node n1 --overwrite {ANN_PUBLIC_IP_OVERWRITE}={V4}, then systemctl restart k3s"),
    "flannel: the overwrite right, flannel published before it": (
        verdict_case(node_anns(1, WRONG, overwrite=V4)), "problem", f"{WRONG_IP}: flannel has not restarted since",
        f"public-ip-overwrite is {V4} but flannel's public-ip is still {WRONG}",
        "systemctl enable --now wgagent (it restarts k3s once, rate-limited: flannel reads public-ip-overwrite"),
    "flannel: never published": (
        verdict_case({ANN_PUBLIC_IP_OVERWRITE: V4}), "problem", f"{WRONG_IP}: flannel has not restarted since",
        "flannel's public-ip is still not set", "systemctl enable --now wgagent"),
    "stuck: wgagent restarted k3s for it and nothing changed": (
        verdict_case(node_anns(1, WRONG, overwrite=V4),
                     restarts=RestartBook(served={"overwrite": Served(V4, NOW - 600)})),
        "problem", f"{WRONG_IP}: a k3s restart for it did not help", "even after a k3s restart for 203.0.113.7",
        "check that flannel runs on this node"),
}  # fmt: skip


@pytest.mark.parametrize(("facts", "severity", "title", "detail", "fix"), VERDICTS.values(), ids=VERDICTS.keys())
def test_each_verdict_rule_is_a_finding(facts: Facts, severity: str, title: str, detail: str, fix: str) -> None:
    findings = diagnose(facts)
    f = find(findings, severity, "flannel", title)
    assert detail in f.detail and fix in f.fix, f
    assert [p for p in problems(findings) if p.startswith("flannel")] == (
        [f"flannel: {f.title}"] if severity == "problem" else []
    )


def test_a_restart_for_an_older_overwrite_or_one_that_has_not_settled_is_not_stuck() -> None:
    anns = node_anns(1, WRONG, overwrite=V4)
    for served in (Served(OTHER, NOW - 600), Served(V4, NOW - 30)):
        findings = diagnose(verdict_case(anns, restarts=RestartBook(served={"overwrite": served})))
        find(findings, "problem", "flannel", f"{WRONG_IP}: flannel has not restarted since")


def test_the_same_node_on_a_k3s_that_wipes_or_one_that_leaves_the_overwrite_alone() -> None:
    anns = node_anns(1, WRONG)
    wiped = find(diagnose(verdict_case(anns, version=NEW_K3S)), "problem", "flannel", WRONG_IP)
    assert "k3s PR #13431" in wiped.detail and "kubectl annotate" not in wiped.fix
    patch = find(diagnose(verdict_case(anns, version="v1.31.4+k3s1")), "problem", "flannel", WRONG_IP)
    assert "kubectl annotate node n1" in patch.fix


def test_an_ipv4_only_cluster_with_an_ipv6_address_has_no_ipv6_problem() -> None:
    v6 = "2001:db8::7"
    obs = (stun("stun:a", 40000), stun("stun:cc", 40000), stun("stun:a6", 40000, v6), stun("stun:cc6", 40000, v6))
    facts = healthy(public_ip=discovery(*obs))
    findings = diagnose(facts)
    assert is_clear(findings), problems(findings)
    f = find(findings, "info", "public-ip", "IPv6 not checked: the Node has pod CIDRs 10.42.1.0/24")
    assert f"the discovered {v6} is not advertised" in f.detail
    assert not any(v6 in x.title for x in findings if x.area in ("flannel", "k3s"))
    # A dual-stack cluster checks IPv6 too: flannel has published no public-ipv6 for it.
    both = render_dropin("server", PublicAddresses(IPv4Address(V4), IPv6Address(v6)), K3sConfig()).encode()
    dual = replace(facts, k3s=k3s_facts({DROPIN: both}), kube=kube(cidrs=("10.42.1.0/24", "2001:db8:42:1::/64")))
    found = diagnose(dual)
    assert not any("IPv6 not checked" in x.title for x in found)
    find(found, "problem", "flannel", f"flannel's public-ipv6 on Node n1 is not the discovered {v6}")


def test_the_families_without_the_own_node_come_from_flannels_subnet_file() -> None:
    v6 = "2001:db8::7"
    obs = (stun("stun:a", 40000), stun("stun:cc", 40000), stun("stun:a6", 40000, v6), stun("stun:cc6", 40000, v6))
    subnet = {"FLANNEL_SUBNET": "10.42.1.1/24", "FLANNEL_IPV6_SUBNET": "2001:db8:42:1::1/64"}
    facts = healthy(public_ip=discovery(*obs), kube=Skipped("kube.enabled is false"),
                    k3s=k3s_facts(subnet_env=subnet))  # fmt: skip
    findings = diagnose(facts)
    assert not any("IPv6 not checked" in x.title for x in findings)
    find(findings, "warn", "k3s", f"k3s's node-external-ip is not the discovered {v6} yet")  # the drop-in has IPv4
    v4_only = replace(facts, k3s=k3s_facts(subnet_env={"FLANNEL_SUBNET": "10.42.1.1/24"}))
    assert "IPv6 not checked: flannel's /run/flannel/subnet.env" in [x.title for x in diagnose(v4_only)]


def test_seed_backend_type_extension_is_the_removed_wireguard_backend() -> None:
    anns = {**OWN_ANNS, ANN_BACKEND_TYPE: "extension"}
    kube = KubeFacts("/k.yaml", "/k.yaml", own(anns), None, CLUSTER, None)
    f = find(diagnose(healthy(kube=kube)), "problem", "flannel", "runs k3s's removed 'wireguard' extension backend")
    assert f.fix.startswith("flannel-backend: wireguard-native in /etc/rancher/k3s/config.yaml on every server")


BACKEND_CASES = {
    "seed: flannel-backend: wireguard in config.yaml": (
        {"config.yaml": b"flannel-backend: wireguard\n"}, "/usr/local/bin/k3s server",
        "flannel backend 'wireguard' was removed in k3s 1.26",
        f"flannel-backend: wireguard-native in {ETC}/config.yaml instead, then systemctl restart k3s",
    ),
    "vxlan in config.yaml": (
        {"config.yaml": b"flannel-backend: vxlan\n"}, "/usr/local/bin/k3s server",
        "flannel backend is 'vxlan', not WireGuard", "flannel-backend: wireguard-native in",
    ),
    "nothing sets it": (
        {}, "/usr/local/bin/k3s server",
        "flannel backend is vxlan: nothing sets flannel-backend",
        f"flannel-backend: wireguard-native in {ETC}/config.yaml on every server",
    ),
    "seed: -flannel-backend=wireguard in ExecStart": (
        None, "/usr/local/bin/k3s server -flannel-backend=wireguard",
        "flannel backend 'wireguard' was removed in k3s 1.26",
        f"remove --flannel-backend from ExecStart in {UNIT} (INSTALL_K3S_EXEC",
    ),
    "a later file sets vxlan": (
        {DROPIN: dropin(),
         "config.yaml.d/90-mine.yaml": b"flannel-backend: vxlan\n"}, "/usr/local/bin/k3s server",
        "flannel backend is 'vxlan', not WireGuard",
        f"delete the flannel-backend line from {ETC}/config.yaml.d/90-mine.yaml",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("files", "exec_start", "title", "fix"), BACKEND_CASES.values(), ids=BACKEND_CASES.keys())
def test_flannel_backend_not_wireguard(files: dict[str, bytes] | None, exec_start: str, title: str, fix: str) -> None:
    findings = diagnose(healthy(k3s=k3s_facts(files, exec_start=exec_start)))
    f = find(findings, "problem", "flannel", title)
    assert fix in f.fix
    assert "ok" not in {x.severity for x in findings if x.area == "flannel" and "flannel-backend is" in x.title}
    assert not any("nothing in k3s's config defeats" in x.title for x in findings)


def test_an_earlier_file_replaced_by_the_dropin_is_only_noted() -> None:
    files = {"config.yaml": b"flannel-backend: wireguard\n",
             DROPIN: dropin()}  # fmt: skip
    findings = diagnose(healthy(k3s=k3s_facts(files)))
    assert is_clear(findings), problems(findings)
    find(findings, "info", "k3s", "is replaced by wgagent's 50-wgagent.yaml")


RIGHT_BACKEND_SET_ITSELF = {
    "a later file sets wireguard-native": (
        {DROPIN: dropin(), "config.yaml.d/90-mine.yaml": b"flannel-backend: wireguard-native\n"},
        "/usr/local/bin/k3s server",
        f"{ETC}/config.yaml.d/90-mine.yaml:1 sets flannel-backend itself",
        f"delete the flannel-backend line from {ETC}/config.yaml.d/90-mine.yaml",
    ),
    "ExecStart sets --flannel-backend=wireguard-native": (
        None,
        "/usr/local/bin/k3s server --flannel-backend=wireguard-native",
        f"{UNIT} sets flannel-backend itself",
        f"remove --flannel-backend from ExecStart in {UNIT}, then systemctl daemon-reload",
    ),
}


@pytest.mark.parametrize(
    ("files", "exec_start", "title", "fix"), RIGHT_BACKEND_SET_ITSELF.values(), ids=RIGHT_BACKEND_SET_ITSELF.keys()
)
def test_the_right_backend_set_where_it_defeats_the_dropin_is_a_warning(
    files: dict[str, bytes] | None, exec_start: str, title: str, fix: str
) -> None:
    findings = diagnose(healthy(k3s=k3s_facts(files, exec_start=exec_start)))
    assert find(findings, "warn", "k3s", title).fix == fix
    assert is_clear(findings), problems(findings)


def test_a_config_file_wgagent_declined_to_read_is_only_noted() -> None:
    files: dict[str, bytes | Unreadable] = {
        DROPIN: dropin(),
        "config.yaml.d/20-huge.yaml": Unreadable("larger than 1 MiB", fatal=False),
    }
    findings = diagnose(healthy(k3s=k3s_facts(files)))
    find(findings, "info", "k3s", "20-huge.yaml: not checked: larger than 1 MiB")
    assert is_clear(findings)


def test_a_config_finding_of_an_unknown_kind_still_names_the_file_to_correct() -> None:
    f = _k3s_finding(ConfigFinding(f"{ETC}/config.yaml", 3, "something new", code="future"), healthy())
    assert (f.severity, f.title) == ("problem", f"{ETC}/config.yaml:3: something new")
    assert f.fix == f"correct {ETC}/config.yaml, then systemctl restart k3s"


def test_without_the_dropin_and_with_k3s_management_off_node_external_ip_is_not_asked_for() -> None:
    cfg = Config(node_name="n1", k3s=K3sConfig(enabled=False))
    findings = diagnose(healthy(cfg=cfg, k3s=k3s_facts({"config.yaml": b"flannel-backend: wireguard-native\n"})))
    assert not any("node-external-ip" in f.title for f in findings)
    assert is_clear(findings), problems(findings)


def test_wgagents_own_backend_setting_not_wireguard_is_a_warning() -> None:
    files = {DROPIN: dropin(flannel_backend="vxlan")}  # fmt: skip
    findings = diagnose(healthy(k3s=k3s_facts(files)))
    f = find(findings, "warn", "flannel", "flannel backend is 'vxlan'")
    assert f.fix == f"k3s.flannel_backend: wireguard-native in {CONF}"


def test_a_later_file_overriding_wgagents_node_external_ip() -> None:
    files = {DROPIN: dropin(),
             "config.yaml.d/99-old.yaml": b"node-external-ip: 198.51.100.1\n"}  # fmt: skip
    findings = diagnose(healthy(k3s=k3s_facts(files)))
    f = find(findings, "problem", "k3s", f"{ETC}/config.yaml.d/99-old.yaml:1 overrides wgagent's node-external-ip")
    assert f.fix == f"delete the node-external-ip line from {ETC}/config.yaml.d/99-old.yaml, then systemctl restart k3s"
    d = find(findings, "problem", "k3s", "k3s's node-external-ip differs from the discovered public IP")
    assert f"198.51.100.1 instead of {V4}" in d.detail


def test_the_dropin_with_an_old_address_while_flannel_publishes_the_right_one() -> None:
    files = {DROPIN: dropin("198.51.100.1")}
    findings = diagnose(healthy(k3s=k3s_facts(files)))
    f = find(findings, "warn", "k3s", f"k3s's node-external-ip is not the discovered {V4} yet")
    assert f.detail.startswith("wgagent's 50-wgagent.yaml says 198.51.100.1: wgagent rewrites it and restarts k3s")
    assert f.fix == "systemctl enable --now wgagent" and is_clear(findings)


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        pytest.param(b"flannel-backend: [wireguard-native\n", "not valid YAML", id="bad-yaml"),
        pytest.param(b"- a list\n", "not a mapping of k3s flags", id="not-a-mapping"),
        pytest.param(b"\xff\xfe", "not UTF-8", id="not-utf8"),
    ],
)
def test_a_k3s_config_file_that_does_not_parse(content: bytes, detail: str) -> None:
    files = {"config.yaml.d/10-broken.yaml": content,
             DROPIN: dropin()}  # fmt: skip
    f = find(diagnose(healthy(k3s=k3s_facts(files))), "problem", "k3s", "k3s cannot use")
    assert detail in f.detail and f.fix.startswith(f"correct or remove {ETC}/config.yaml.d/10-broken.yaml")


def test_execstart_node_external_ip_and_config_elsewhere() -> None:
    facts = healthy(k3s=k3s_facts(exec_start="/usr/local/bin/k3s server --node-external-ip=1.2.3.4 -c /srv/k3s.yaml"))
    findings = diagnose(facts)
    f = find(findings, "problem", "k3s", "k3s's ExecStart sets --node-external-ip")
    assert "systemctl daemon-reload && systemctl restart k3s" in f.fix
    assert find(findings, "problem", "k3s", "(--config)").fix == (
        f"k3s.unit: <the k3s unit> in {CONF}, so wgagent follows its --config; or k3s.config_dir: /srv"
    )
    # K3S_CONFIG_FILE wins over --config (k3s looks at the variable first): wgagent reads what k3s reads
    env = ConfigLocation("/etc/k3s/main.yaml", "K3S_CONFIG_FILE in /etc/systemd/system/k3s.service.env:1")
    facts = healthy(k3s=k3s_facts(exec_start="/usr/local/bin/k3s server -c /srv/k3s.yaml", location=env))
    f = find(diagnose(facts), "info", "k3s", "ExecStart's --config /srv/k3s.yaml is not used")
    assert "K3S_CONFIG_FILE in /etc/systemd/system/k3s.service.env:1 names /etc/k3s/main.yaml" in f.title


def test_the_dropin_missing() -> None:
    f = find(diagnose(healthy(k3s=k3s_facts({"config.yaml": b"flannel-backend: wireguard-native\n"}))), "warn",
             "k3s", "drop-in /etc/rancher/k3s/config.yaml.d/50-wgagent.yaml does not exist")  # fmt: skip
    assert f.fix.startswith("systemctl enable --now wgagent")


def dead_peers(n: int, *, ips: bool) -> tuple[Peer, ...]:
    return tuple(Peer(k(100 + i), f"203.0.113.{i}:51820", (f"10.100.0.{i}/32",) if ips else (), NOW - 3600)
                 for i in range(n))  # fmt: skip


def test_seed_peers_piling_up_are_counted_with_the_gc_command() -> None:
    n = DEAD_PEERS_PROBLEM + 10
    dev = device(PEER_N2, *dead_peers(n // 2, ips=True), *dead_peers(n - n // 2, ips=False)[::-1])
    findings = diagnose(healthy(wireguard=wireguard(dev)))
    f = find(findings, "problem", "peers", f"{n} dead peer(s) on flannel-wg")
    assert f.fix.startswith(f"wgagent --config {CONF} gc")
    assert f"{n} of {n + 1} peers" in f.detail


def test_a_few_dead_peers_are_a_warning_and_gc_off_is_named() -> None:
    cfg = Config(node_name="n1", wireguard=WireGuardConfig(gc=GCConfig(enabled=False)))
    findings = diagnose(healthy(cfg=cfg, wireguard=wireguard(device(PEER_N2, *dead_peers(3, ips=False)))))
    f = find(findings, "warn", "peers", "3 dead peer(s)")
    assert "wireguard.gc.enabled: true" in f.fix and is_clear(findings)


def test_dead_peers_without_the_node_list_are_only_those_without_allowed_ips() -> None:
    kube = KubeFacts("/k.yaml", "/l.yaml", own(OWN_ANNS), None, None, Forbidden("LIST nodes: 403"))
    dev = device(PEER_N2, *dead_peers(4, ips=True), *dead_peers(2, ips=False))
    findings = diagnose(healthy(kube=kube, wireguard=wireguard(dev)))
    f = find(findings, "warn", "peers", "2 dead peer(s)")
    assert "node list unknown" in f.detail
    find(findings, "info", "peers", "4 stale peer(s) with allowed IPs on flannel-wg not judged")
    find(findings, "warn", "kubernetes", "cannot list the cluster's Nodes")
    find(findings, "info", "wireguard", "live nodes not checked")


def test_peers_that_never_handshook_and_were_never_seen_cannot_be_judged() -> None:
    never = tuple(Peer(k(200 + i), None, (), None) for i in range(5))
    findings = diagnose(healthy(wireguard=wireguard(device(PEER_N2, *never))))
    find(findings, "info", "peers", "5 peer(s) on flannel-wg never completed a handshake")
    find(findings, "ok", "peers", "no dead peers")
    seen = {p.public_key: NOW - 3600 for p in never}
    findings = diagnose(healthy(wireguard=wireguard(device(PEER_N2, *never), first_seen=seen)))
    find(findings, "warn", "peers", "5 dead peer(s)")


def test_seed_a_live_node_unreachable() -> None:
    silent = PEER_N2._replace(last_handshake=NOW - 900)
    findings = diagnose(healthy(wireguard=wireguard(device(silent))))
    f = find(findings, "problem", "wireguard", "live node(s) unreachable over flannel-wg: n2")
    assert "198.51.100.2:51820, last handshake 900 s ago" in f.detail and "open UDP 51820" in f.fix
    never = PEER_N2._replace(last_handshake=None)
    assert "last handshake never" in find(diagnose(healthy(wireguard=wireguard(device(never)))), "problem",
                                          "wireguard", "unreachable").detail  # fmt: skip


def test_a_node_without_a_peer_here() -> None:
    cluster = ClusterView({**CLUSTER.nodes, "n3": NodeInfo("n3", node_anns(3, "198.51.100.3"))})
    kube = KubeFacts("/k.yaml", "/k.yaml", own(OWN_ANNS), None, cluster, None)
    f = find(diagnose(healthy(kube=kube)), "warn", "wireguard", "flannel has no peer on flannel-wg for: n3")
    assert f.fix.startswith("systemctl restart k3s")


def test_a_nat_that_maps_per_destination() -> None:
    facts = healthy(public_ip=discovery(stun("stun:a", 40001), stun("stun:cc", 52344)))
    f = find(diagnose(facts), "problem", "public-ip", "the NAT maps each destination to a different port")
    assert "stun:a saw 203.0.113.7:40001" in f.detail and "stun:cc saw 203.0.113.7:52344" in f.detail
    assert "forward UDP 51820 on the NAT router to this node" in f.fix


def test_no_public_ip_discovered() -> None:
    obs = (Observation("stun:a", "stun", 1.0, error="no answer within 1 s"),)
    findings = diagnose(healthy(public_ip=DiscoveryFacts(obs, decide(obs, quorum=2))))
    f = find(findings, "problem", "public-ip", "no public IP could be discovered")
    assert "1 of 1 source(s) failed, first: stun:a: no answer within 1 s" in f.detail
    assert f.fix.startswith(f"public_ip.static: [<this node's public IP>] in {CONF}")
    find(findings, "info", "flannel", "not compared: no public IP decided")


KUBE_ERRORS = {
    "kubeconfig missing": (KubeConfigError("/etc/rancher/k3s/k3s.yaml: kubeconfig not found"),
                           "no usable credential", "systemctl start k3s"),
    "API unreachable": (KubeUnreachable("GET https://127.0.0.1:6443/api/v1/nodes/n1: cannot connect"),
                        "the Kubernetes API is unreachable", "systemctl status k3s"),
    "credential refused": (Unauthorized("GET ...: 401 Unauthorized"), "refuses the credential (401)",
                           "systemctl restart k3s"),
    "another node's credential": (Forbidden("GET ...: 403 Forbidden"), "may not read Node n1 (403)",
                                  f"node_name: <this node's name in kubectl get nodes> in {CONF}"),
    "node not registered": (NotFound('GET ...: 404 NotFound: nodes "n1" not found'), "Node n1 is not registered",
                            "node_name: <the name kubectl get nodes shows"),
    "any other API failure": (KubeError("GET ...: 500 Internal Server Error"), "the Kubernetes API failed",
                              "systemctl status k3s; journalctl -u k3s"),
}  # fmt: skip


@pytest.mark.parametrize(("error", "title", "fix"), KUBE_ERRORS.values(), ids=KUBE_ERRORS.keys())
def test_api_unreachable_or_credential_refused(error: KubeError, title: str, fix: str) -> None:
    kube = KubeFacts("/etc/rancher/k3s/k3s.yaml", "/etc/rancher/k3s/k3s.yaml", None, error, None, error)
    findings = diagnose(healthy(kube=kube))
    f = find(findings, "problem", "kubernetes", title)
    assert fix in f.fix and str(error) in f.detail
    assert not any(x.title == "cannot list the cluster's Nodes" for x in findings)  # the same failure, once


def test_seed_k3s_not_installed_says_so_and_what_it_skipped() -> None:
    facts = healthy(k3s=k3s_facts(role=None, binary=None), kube=Skipped("k3s is not installed"),
                    wireguard=Skipped("k3s is not installed"))  # fmt: skip
    findings = diagnose(facts)
    f = find(findings, "problem", "k3s", "k3s is not installed")
    assert "Skipped without k3s: the Kubernetes API, flannel's annotations, flannel's WireGuard interface" in f.detail
    assert f.fix.startswith("install k3s: curl -sfL https://get.k3s.io | sh -")
    assert find(findings, "info", "kubernetes", "skipped").detail == "k3s is not installed"
    assert find(findings, "info", "wireguard", "skipped").detail == "k3s is not installed"
    assert problems(findings) == ["k3s: k3s is not installed"]


def test_a_k3s_unit_without_a_k3s_binary_is_not_k3s_installed() -> None:
    facts = healthy(k3s=k3s_facts(exec_start="/bin/sleep infinity", binary=None))
    f = find(diagnose(facts), "problem", "k3s", "k3s is not installed")
    assert "says server (k3s.service), but there is no k3s binary" in f.detail


def test_k3s_binary_without_a_role() -> None:
    f = find(diagnose(healthy(k3s=k3s_facts(role=None))), "problem", "k3s", "server or an agent")
    assert f.fix == f"k3s.role: server (or agent) in {CONF}"


def test_an_agent_restarts_k3s_agent() -> None:
    facts = healthy(k3s=k3s_facts({}, role="agent", exec_start="/usr/local/bin/k3s agent"),
                    wireguard=wireguard(bound=()))  # fmt: skip
    findings = diagnose(facts)
    assert find(findings, "problem", "wireguard", "nothing listens").fix.startswith("systemctl restart k3s-agent")
    assert not any(f.area == "flannel" and "flannel-backend" in f.title for f in findings)  # a server option


AGENT = "/usr/local/bin/k3s agent"
AGENT_UNIT = "/etc/systemd/system/k3s-agent.service"


def test_a_server_only_key_in_an_agents_config_stops_k3s_agent() -> None:
    files = {"config.yaml": b"token: x\nflannel-backend: wireguard-native\n", DROPIN: dropin()}
    findings = diagnose(healthy(k3s=k3s_facts(files, role="agent", exec_start=AGENT)))
    f = find(findings, "problem", "k3s", f"k3s agent will not start: flannel-backend in {ETC}/config.yaml:2")
    assert "flag provided but not defined: -flannel-backend" in f.detail
    assert f.fix == f"delete the flannel-backend line from {ETC}/config.yaml (it belongs in the servers' config), " \
                    "then systemctl restart k3s-agent"  # fmt: skip
    # wgagent's own server drop-in on an agent: every server key in it, named by line
    keys = {x.title.split(": ")[1].split(" in ")[0] for x in findings if "will not start" in x.title}
    assert keys == {"flannel-backend", "flannel-external-ip"}, keys
    assert not any(x.area == "flannel" and "flannel-backend is" in x.title for x in findings)


def test_a_server_only_flag_in_an_agents_execstart_stops_k3s_agent() -> None:
    facts = healthy(k3s=k3s_facts({}, role="agent", exec_start=f"{AGENT} --cluster-cidr=10.0.0.0/16"))
    f = find(diagnose(facts), "problem", "k3s", "k3s agent will not start: its ExecStart gives --cluster-cidr")
    assert f.fix == (f"remove --cluster-cidr from ExecStart in {UNIT} (INSTALL_K3S_EXEC), then systemctl daemon-reload"
                     " && systemctl restart k3s-agent")  # fmt: skip


def test_an_uncertain_role_is_not_checked_for_server_or_agent_keys_and_says_so() -> None:
    facts = healthy(k3s=k3s_facts({"config.yaml": b"flannel-backend: vxlan\n"}, role="agent", certain=False))
    findings = diagnose(facts)
    assert not any("will not start" in x.title for x in findings)  # as the k3s part: only a certain role's keys
    f = find(findings, "info", "k3s", "the k3s role 'agent' is a guess (ExecStart of")
    assert f.fix == f"k3s.role: agent in {CONF}"


def test_a_disputed_role_is_a_problem_with_the_keys_that_settle_it() -> None:
    conflict = "several k3s units could run here: k3s.service (k3s server), k3s-agent.service (k3s agent)"
    facts = healthy(k3s=k3s_facts(role=None, conflict=conflict))
    findings = diagnose(facts)
    f = find(findings, "problem", "k3s", "cannot tell whether k3s runs here as a server or an agent")
    assert f.detail == f"{conflict} (wgagent writes only the agent-safe drop-in until then)"
    assert f.fix == f"k3s.role: server|agent in {CONF} (or k3s.unit: <the k3s unit in use>)"
    assert not any(x.title == "k3s is not installed" for x in findings)


def test_role_notes_are_shown() -> None:
    notes = ("k3s.service is not enabled: ignored",)
    facts = healthy(k3s=k3s_facts(role="agent", exec_start=AGENT, notes=notes, files={}))
    find(diagnose(facts), "info", "k3s", "k3s role: k3s.service is not enabled: ignored")


def test_no_backend_names_the_config_file_k3s_reads() -> None:
    where = ConfigLocation("/srv/k3s/main.yaml", "K3S_CONFIG_FILE in /etc/systemd/system/k3s.service.env:1")
    f = find(diagnose(healthy(k3s=k3s_facts({}, location=where))), "problem", "flannel", "nothing sets flannel-backend")
    assert f.fix.startswith("flannel-backend: wireguard-native in /srv/k3s/main.yaml on every server")
    missing = find(diagnose(healthy(k3s=k3s_facts({}, location=where))), "warn", "k3s", "drop-in")
    assert missing.title == "wgagent's drop-in /srv/k3s/main.yaml.d/50-wgagent.yaml does not exist"


def servers(own_type: str, others: Mapping[str, tuple[str, str | None]], *, own_server: bool = True) -> ClusterView:
    """n1 (own) and other Nodes: name -> (their flannel backend-type, their wgagent's wanted backend)."""
    nodes = {"n1": NodeInfo("n1", {**OWN_ANNS, ANN_BACKEND_TYPE: own_type}, server=own_server)}
    for name, (backend, wanted) in others.items():
        anns = {**node_anns(int(name[1:]), f"198.51.100.{name[1:]}"), ANN_BACKEND_TYPE: backend}
        if wanted:
            anns[ANN_BACKEND_WANTED] = wanted
        nodes[name] = NodeInfo(name, anns, server=True)
    return ClusterView(nodes)


def test_a_server_holding_back_a_backend_switch_says_which_servers_are_not_configured() -> None:
    cluster = servers("vxlan", {"n2": ("vxlan", "wireguard-native"), "n3": ("vxlan", None)})
    findings = diagnose(healthy(kube=kube(cluster=cluster)))
    f = find(findings, "warn", "flannel", "this server keeps flannel-backend vxlan for now")
    assert (
        "not yet: n3" in f.detail and f.fix == "k3s.flannel_backend: wireguard-native in every server's wgagent config"
    )
    # every server wants it: no hold
    ready = servers("vxlan", {"n2": ("vxlan", "wireguard-native"), "n3": ("vxlan", "wireguard-native")})
    assert not any("keeps flannel-backend" in x.title for x in diagnose(healthy(kube=kube(cluster=ready))))


def test_an_agent_on_another_backend_than_the_servers() -> None:
    cluster = servers("vxlan", {"n2": ("wireguard", "wireguard-native")}, own_server=False)
    facts = healthy(k3s=k3s_facts({}, role="agent", exec_start=AGENT), kube=kube(cluster=cluster))
    f = find(diagnose(facts), "problem", "flannel", "flannel here runs backend vxlan, the servers wireguard")
    assert f.fix == "systemctl restart k3s-agent (wgagent does it once)"
    same = servers("wireguard", {"n2": ("wireguard", None)}, own_server=False)
    facts = replace(facts, kube=kube(cluster=same))
    assert not any("the servers" in x.title for x in diagnose(facts))


def test_a_server_advertises_its_node_external_ip_to_the_api_clients() -> None:
    f = find(diagnose(healthy()), "info", "k3s", f"kube-apiserver advertises {V4}, this server's node-external-ip")
    assert f.fix == f"k3s.advertise_private_address: true in {CONF} to advertise its private IPv4 instead"
    advertising = render_dropin("server", PublicAddresses(IPv4Address(V4)), K3sConfig(), "10.0.0.5").encode()
    for facts in (
        healthy(k3s=k3s_facts({DROPIN: advertising})),
        healthy(k3s=k3s_facts(exec_start="/usr/local/bin/k3s server --advertise-address=10.0.0.5")),
        healthy(k3s=k3s_facts({DROPIN: render_dropin("agent", PublicAddresses(IPv4Address(V4)), K3sConfig()).encode()},
                              role="agent", exec_start=AGENT)),
    ):  # fmt: skip
        assert not any("advertises" in x.title for x in diagnose(facts))


def test_without_the_own_node_k3s_node_external_ip_from_another_file_is_a_problem() -> None:
    files = {"config.yaml": b"flannel-backend: wireguard-native\nnode-external-ip: 198.51.100.1\n"}
    facts = healthy(cfg=Config(node_name="n1", k3s=K3sConfig(enabled=False)), k3s=k3s_facts(files),
                    kube=Skipped("kube.enabled is false"))  # fmt: skip
    f = find(diagnose(facts), "problem", "k3s", "k3s's node-external-ip differs from the discovered public IP")
    assert f.detail == f"{ETC}/config.yaml:2 gives 198.51.100.1 instead of {V4}"
    assert (
        f.fix
        == f"remove node-external-ip from {ETC}/config.yaml:2 (wgagent's drop-in sets it), then systemctl restart k3s"
    )


def test_an_own_node_read_without_annotations_or_error_reports_only_the_list() -> None:
    findings = diagnose(healthy(kube=KubeFacts("/k.yaml", "/k.yaml", None, None, CLUSTER, None)))
    assert [f.title for f in findings if f.area == "kubernetes"] == ["2 Node(s) listed"]
    assert not any("annotation" in f.title for f in findings)


@pytest.mark.parametrize("area", ["k3s", "module", "public_ip", "kube", "wireguard"])
def test_a_probe_that_failed_is_a_problem_not_a_crash(area: str) -> None:
    findings = diagnose(healthy(**{area: Failed("it did not finish within 1 s")}))
    hits = [f for f in findings if f.severity == "problem" and f.title.startswith("could not check")]
    assert len(hits) == 1 and hits[0].detail == "it did not finish within 1 s" and hits[0].fix


def test_disabled_parts_are_skipped_with_the_reason() -> None:
    facts = healthy(public_ip=Skipped("public_ip.enabled is false"), kube=Skipped("kube.enabled is false"),
                    wireguard=Skipped("wireguard.enabled is false"))  # fmt: skip
    findings = diagnose(facts)
    assert is_clear(findings)
    assert {f.detail for f in findings if f.title.startswith("skipped")} == {
        "public_ip.enabled is false", "kube.enabled is false", "wireguard.enabled is false"}  # fmt: skip


# --- reports -----------------------------------------------------------------------------------------


def test_json_report() -> None:
    findings = diagnose(healthy(wireguard=wireguard(bound=())))
    data = json.loads(render_json(findings))
    assert data["ok"] is False and set(data) == {"ok", "findings"}
    assert all(set(f) == {"severity", "area", "title", "detail", "fix"} for f in data["findings"])
    assert {"severity": "problem", "area": "wireguard", "title": "nothing listens on UDP 51820"}.items() <= next(
        f for f in data["findings"] if f["title"] == "nothing listens on UDP 51820").items()  # fmt: skip
    assert json.loads(render_json(diagnose(healthy())))["ok"] is True


def test_text_report_groups_by_area_problems_first_each_with_its_fix() -> None:
    findings = [
        Finding("ok", "wireguard", "flannel-wg: up"),
        Finding("warn", "peers", "3 dead peer(s)", "old ones", "wgagent gc"),
        Finding("problem", "wireguard", "nothing listens on UDP 51820", "netstat", "systemctl restart k3s"),
        Finding("problem", "kernel", "no WireGuard", "EOPNOTSUPP", "apt dist-upgrade && reboot"),
        Finding("info", "wgagent", "the wgagent daemon is not running"),
    ]
    text = render_text(findings, "wgagent doctor: node n1")
    lines = text.splitlines()
    assert lines[0] == "wgagent doctor: node n1"
    areas = [line for line in lines if line and not line.startswith(" ")]
    assert areas[1:5] == ["kernel", "wireguard", "peers", "wgagent"]
    wg = lines.index("wireguard")
    assert lines[wg + 1 : wg + 5] == [
        "  PROBLEM  nothing listens on UDP 51820",
        "           netstat",
        "           fix: systemctl restart k3s",
        "  ok       flannel-wg: up",
    ]
    assert lines[-1] == "2 problem(s) and 1 warning(s): apply the fixes above, then run 'wgagent doctor' again."
    assert render_text([Finding("ok", "kernel", "fine")]).splitlines()[-1] == "All clear."
    assert render_text([Finding("warn", "peers", "3")]).splitlines()[-1] == "No problem; 1 warning(s) above."
