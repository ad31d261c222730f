"""``wgagent doctor``: one report for a person, every failure of the seed and around it, each with its fix.

    gather(cfg, config_path, env) -> Facts      adapters; every probe bounded, a failing one is data
    diagnose(facts) -> [Finding, ...]           pure; built on the parts' own decision functions
    render_text(...) / render_json(...)         grouped by area, each finding with its fix
    doctor_command(...) -> exit code            0 when all is clear, 1 when any finding is a problem

The probes (k3s's files first, as they name the node and the role; the rest at once):

    k3s         role (detect_role), binary, config files (scan_config), unit (scan_unit), node name
    kernel      the module facts (ModuleHost): loaded, built in, /lib/modules, modprobe, link probe
    public-ip   one discovery round over the configured sources, exactly as ``wgagent discover``
    kubernetes  GET the own Node (own credential), LIST the Nodes (list credential)
    wireguard   flannel's interfaces (read_device), bound UDP ports, first-seen times of peers
    wgagent     the daemon's /healthz (informational: doctor works without it)

A finding is ``Finding(severity, area, title, detail, fix)``; severity is ``ok``, ``info``,
``warn`` or ``problem``. Only a problem makes the exit code 1. A probe that times out or fails
is a problem finding ("could not check ..."), never a traceback. Without k3s the report says so
and which checks it skipped.

Doctor changes nothing: modprobe runs with ``--dry-run``, and no annotation, drop-in, peer or
state file is written. (The link probe makes a throwaway wireguard link in a private network
namespace; that may make the kernel load the module, as the daemon would.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO, TypeVar

from wgagent.config import Config
from wgagent.errors import Forbidden, KubeConfigError, KubeError, KubeUnreachable, NotFound, Unauthorized
from wgagent.k3s.dropin import dropin_path
from wgagent.k3s.role import UNIT_DIRS, NodeName, Role, detect_role, node_name, role_missing_detail
from wgagent.k3s.scan import (
    DROPIN_DIR,
    DROPIN_NAME,
    FLANNEL_BACKEND,
    NODE_EXTERNAL_IP,
    FileContent,
    backend_problem,
    read_config_files,
    scan_config,
)
from wgagent.k3s.scan import Finding as K3sFinding
from wgagent.k3s.unit import exec_start, read_unit, scan_unit
from wgagent.kube.annotation import annotations_of, assess, short, wanted
from wgagent.kube.kubeconfig import credential_paths
from wgagent.kube.protocol import NodeAPI
from wgagent.kube.watch import node_info
from wgagent.model import ANN_BACKEND_TYPE, ANN_PUBLIC_IP, ANN_PUBLIC_IPV6, ClusterView
from wgagent.publicip.model import Decision, Observation
from wgagent.publicip.sources import Source
from wgagent.wireguard.backend import Backend, HostNet, is_wireguard, open_backend, resolve_interfaces
from wgagent.wireguard.gc import FirstSeenStore, GCPolicy, select_stale_peers
from wgagent.wireguard.interface import (
    HANDSHAKE_FRESH_S,
    BackendFactory,
    DeviceRead,
    bound_udp_ports,
    expected_port,
    interface_facts,
    read_device,
)
from wgagent.wireguard.model import Device
from wgagent.wireguard.module import MODULE, ModuleFacts, ModuleHost, ProbeResult, check_module
from wgagent.wireguard.module import diagnose as diagnose_module

Severity = Literal["ok", "info", "warn", "problem"]
SEVERITIES: tuple[Severity, ...] = ("ok", "info", "warn", "problem")
AREAS = ("kernel", "k3s", "flannel", "kubernetes", "public-ip", "wireguard", "peers", "wgagent")
"""Report order."""

DEAD_PEERS_PROBLEM = 50
"""Dead peers from this many on are a problem ("piling up", k3s #5216); fewer are a warning:
a running daemon's GC removes a peer within one ``wireguard.gc.interval_s`` after it went stale."""

START_WGAGENT = "systemctl enable --now wgagent"
WITHOUT_K3S = "the Kubernetes API, flannel's annotations, flannel's WireGuard interface, its UDP port and peers"
"""What doctor skips when k3s is not installed."""

T = TypeVar("T")


# --- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    severity: Severity
    area: str
    title: str
    detail: str = ""
    fix: str = ""
    """A command or a config line; empty for ``ok`` and most ``info``."""

    def to_json(self) -> dict[str, str]:
        return {
            "severity": self.severity,
            "area": self.area,
            "title": self.title,
            "detail": self.detail,
            "fix": self.fix,
        }


def is_clear(findings: Sequence[Finding]) -> bool:
    return not any(f.severity == "problem" for f in findings)


def render_json(findings: Sequence[Finding]) -> str:
    """``{"ok": bool, "findings": [{"severity", "area", "title", "detail", "fix"}, ...]}``."""
    return json.dumps({"ok": is_clear(findings), "findings": [f.to_json() for f in findings]}, indent=2)


_LABEL = {"ok": "ok", "info": "info", "warn": "WARN", "problem": "PROBLEM"}
_INDENT = " " * 11


def render_text(findings: Sequence[Finding], header: str = "") -> str:
    """The report: one block per area (problems first), each finding with its detail and fix."""
    lines = [header, ""] if header else []
    rank = {s: i for i, s in enumerate(reversed(SEVERITIES))}
    areas = [a for a in AREAS if any(f.area == a for f in findings)]
    areas += sorted({f.area for f in findings} - set(AREAS))
    for area in areas:
        lines.append(area)
        for f in sorted((f for f in findings if f.area == area), key=lambda f: rank[f.severity]):
            lines.append(f"  {_LABEL[f.severity]:<8} {f.title}")
            if f.detail:
                lines.append(_INDENT + f.detail)
            if f.fix:
                lines.append(_INDENT + "fix: " + f.fix)
        lines.append("")
    count = {s: sum(1 for f in findings if f.severity == s) for s in SEVERITIES}
    if count["problem"]:
        more = f" and {count['warn']} warning(s)" if count["warn"] else ""
        lines.append(f"{count['problem']} problem(s){more}: apply the fixes above, then run 'wgagent doctor' again.")
    elif count["warn"]:
        lines.append(f"No problem; {count['warn']} warning(s) above.")
    else:
        lines.append("All clear.")
    return "\n".join(lines)


# --- facts: what the probes found --------------------------------------------------------------


@dataclass(frozen=True)
class Failed:
    """A probe that timed out or raised."""

    error: str


@dataclass(frozen=True)
class Skipped:
    """A probe not run, and why (disabled in the config, or k3s is not installed)."""

    why: str


@dataclass(frozen=True)
class K3sFacts:
    role: Role | None
    role_missing: str
    """``role_missing_detail()`` when ``role`` is None."""
    binary: str | None
    looked_for: str
    """Where the k3s binary was looked for, for the report when there is none."""
    files: Mapping[str, FileContent]
    """k3s's config files, as ``read_config_files()`` returns them."""
    unit_files: tuple[tuple[str, str], ...]
    node: NodeName

    @property
    def installed(self) -> bool:
        return self.role is not None and self.binary is not None


@dataclass(frozen=True)
class KubeFacts:
    own_source: str
    list_source: str
    annotations: Mapping[str, str] | None
    """Every annotation of the own Node; None when it could not be read."""
    node_error: KubeError | None
    cluster: ClusterView | None
    list_error: KubeError | None


@dataclass(frozen=True)
class DiscoveryFacts:
    observations: tuple[Observation, ...]
    decision: Decision


@dataclass(frozen=True)
class InterfaceRead:
    name: str
    read: DeviceRead
    first_seen: Mapping[str, float]
    """When wgagent first saw each peer (its state file); empty when it never ran."""


@dataclass(frozen=True)
class WireGuardFacts:
    interfaces: tuple[InterfaceRead, ...]
    note: str
    """Why ``auto`` found no interface (what it found instead)."""
    bound_ports: frozenset[int]
    other_devices: tuple[str, ...] = ()
    """WireGuard devices here that are not the ones watched (a hint for ``wireguard.interface``)."""


@dataclass(frozen=True)
class DaemonFacts:
    url: str
    status: int | None
    """HTTP status of /healthz; None when nothing answered."""
    failing: tuple[str, ...] = ()
    error: str = ""


@dataclass(frozen=True)
class Facts:
    cfg: Config
    config_path: str
    now: float
    node: str
    node_source: str
    k3s: K3sFacts | Failed
    module: ModuleFacts | Failed
    public_ip: DiscoveryFacts | Failed | Skipped
    kube: KubeFacts | Failed | Skipped
    wireguard: WireGuardFacts | Failed | Skipped
    daemon: DaemonFacts | Failed


# --- diagnose: pure -------------------------------------------------------------------------------


def diagnose(facts: Facts) -> list[Finding]:
    """Every finding, in area order; the parts' decision functions do the deciding."""
    out: list[Finding] = []
    out += _daemon(facts)
    out += _kernel(facts)
    out += _k3s(facts)
    out += _public_ip(facts)
    out += _kube(facts)
    out += _wireguard(facts)
    return out


def _unit(facts: Facts) -> str:
    """``k3s`` or ``k3s-agent``, for ``systemctl restart ...``."""
    role = facts.k3s.role if isinstance(facts.k3s, K3sFacts) else None
    return role.unit.removesuffix(".service") if role is not None else "k3s"


def _failed(area: str, what: str, failed: Failed, by_hand: str) -> Finding:
    return Finding(
        "problem",
        area,
        f"could not check {what}",
        failed.error,
        f"run 'wgagent doctor' again as root; meanwhile check by hand: {by_hand}",
    )


def _daemon(facts: Facts) -> list[Finding]:
    path = facts.config_path
    exists = os.path.exists(path)
    out = [Finding("ok", "wgagent", f"config {path}" if exists else f"no config file at {path}: all defaults")]
    d = facts.daemon
    if isinstance(d, Failed):
        out.append(Finding("info", "wgagent", "could not ask the wgagent daemon", d.error))
    elif d.status == 200:
        out.append(Finding("ok", "wgagent", f"the wgagent daemon answers at {d.url}: every check passes"))
    elif d.status is not None:
        title = f"the wgagent daemon reports failing checks: {', '.join(d.failing) or '?'}"
        out.append(Finding("info", "wgagent", title, f"{d.url}/healthz answered {d.status}", "wgagent status"))
    else:
        detail = f"nothing answers at {d.url}/healthz ({d.error}); doctor works without it"
        out.append(Finding("info", "wgagent", "the wgagent daemon is not running", detail, START_WGAGENT))
    return out


_MODULE_TITLES = {
    "old_kernel": "kernel {rel} is too old for WireGuard (before 5.6) and has no wireguard module",
    "no_modules_dir": "/lib/modules/{rel} is missing (kernel {rel})",
    "not_built": "kernel {rel} has no wireguard module",
    "no_kernel_support": "no WireGuard support in kernel {rel} ('Operation not supported')",
    "probe_failed": "could not test WireGuard support in kernel {rel}",
    "modprobe_failed": "modprobe wireguard fails (kernel {rel})",
    "no_modprobe": "modprobe is missing",
    "not_loaded": "the wireguard module is not loaded (kernel {rel})",
}


def _kernel(facts: Facts) -> list[Finding]:
    m = facts.module
    if isinstance(m, Failed):
        return [_failed("kernel", "the wireguard module", m, "lsmod | grep wireguard; modprobe wireguard")]
    diag = diagnose_module(m)
    if diag.ok:
        return [Finding("ok", "kernel", f"WireGuard is available in kernel {m.release}", diag.detail())]
    fallback = (
        f"apt install wireguard-dkms linux-headers-{m.release} (kernels before 5.6); or boot a kernel with"
        " WireGuard: apt update && apt dist-upgrade && reboot"
    )
    return [
        Finding(
            "problem", "kernel", _MODULE_TITLES.get(f.code, f.code).format(rel=m.release), f.message, f.fix or fallback
        )
        for f in diag.findings
    ]


def _k3s(facts: Facts) -> list[Finding]:
    k = facts.k3s
    if isinstance(k, Failed):
        return [_failed("k3s", "k3s", k, "systemctl status k3s; ls /etc/rancher/k3s")]
    cfg = facts.cfg
    out: list[Finding] = []
    role = k.role
    install = "install k3s: curl -sfL https://get.k3s.io | sh -"
    skipped = f"Skipped without k3s: {WITHOUT_K3S}."
    if k.installed:
        assert role is not None
        out.append(Finding("ok", "k3s", f"k3s {role.name} installed ({k.binary})", f"role from {role.how}"))
    elif role is None and k.binary is None:
        out.append(
            Finding(
                "problem",
                "k3s",
                "k3s is not installed",
                f"{k.role_missing}; {k.looked_for}. {skipped}",
                f"{install}; if it is installed elsewhere, set k3s.role: server (or agent) in {facts.config_path}",
            )
        )
    elif role is None:
        out.append(
            Finding(
                "problem",
                "k3s",
                "cannot tell whether k3s runs here as a server or an agent",
                k.role_missing,
                f"k3s.role: server (or agent) in {facts.config_path}",
            )
        )
    else:
        out.append(
            Finding(
                "problem",
                "k3s",
                "k3s is not installed",
                f"{role.how} says {role.name} ({role.unit}), but {k.looked_for}. {skipped}",
                install,
            )
        )
    scan = scan_config(cfg.k3s.config_dir, k.files, role=role.name if role else None)
    found = [_k3s_finding(f, facts) for f in scan.findings]
    if role is not None:
        found += [
            _k3s_finding(f, facts) for f in scan_unit(k.unit_files, role=role.name, config_dir=cfg.k3s.config_dir)
        ]
        own = f"{DROPIN_DIR}/{DROPIN_NAME}"
        if cfg.k3s.enabled and own not in k.files:
            found.append(
                Finding(
                    "warn",
                    "k3s",
                    f"wgagent's drop-in {dropin_path(cfg.k3s)} does not exist",
                    "k3s runs without the node-external-ip and flannel settings wgagent writes",
                    "systemctl enable --now wgagent (it writes the drop-in; k3s reads it when it starts)",
                )
            )
    out += found
    if role is not None and not any(f.severity in ("warn", "problem") for f in found):
        out.append(
            Finding(
                "ok",
                "k3s",
                "nothing in k3s's config defeats wgagent's drop-in",
                f"checked {len(scan.files)} config file(s) and {len(k.unit_files)} unit file(s)",
            )
        )
    if role is not None and role.name == "server" and not any(f.area == "flannel" for f in found):
        setting = scan.settings.get(FLANNEL_BACKEND)
        where = f" ({setting.path}:{setting.line})" if setting is not None else ""
        out.append(Finding("ok", "flannel", f"flannel-backend is wireguard-native{where}"))
    return out


def _k3s_finding(f: K3sFinding, facts: Facts) -> Finding:
    """A finding of k3s's config scan, with the fix for its kind."""
    where = f"{f.path}:{f.line}" if f.line is not None else f.path
    unit = _unit(facts)
    if f.code == "replaced":  # wgagent's drop-in wins: nothing to do
        return Finding("info", "k3s", str(f))
    if f.key == FLANNEL_BACKEND:
        return _backend_finding(f, where, facts)
    if f.code == "override":
        return Finding(
            "problem",
            "k3s",
            f"{where} overrides wgagent's {f.key}",
            str(f),
            f"delete the {f.key} line from {f.path}, then systemctl restart {unit}",
        )
    if f.code == "exec_flag":
        return Finding(
            "problem",
            "k3s",
            f"k3s's ExecStart sets --{f.key}",
            str(f),
            f"remove --{f.key} from ExecStart in {f.path} (INSTALL_K3S_EXEC), then systemctl "
            f"daemon-reload && systemctl restart {unit}",
        )
    if f.code == "exec_config":
        return Finding(
            "problem",
            "k3s",
            f"k3s reads its config from {f.value} (--config)",
            str(f),
            f"k3s.config_dir: {os.path.dirname(str(f.value))} in {facts.config_path}",
        )
    if not f.error:
        return Finding("info", "k3s", str(f))
    if f.code in ("unreadable", "invalid"):
        return Finding(
            "problem",
            "k3s",
            f"k3s cannot use {f.path}",
            str(f),
            f"correct or remove {f.path} (k3s will not start with it), then systemctl restart {unit}",
        )
    return Finding("problem", "k3s", str(f), "", f"correct {f.path}, then systemctl restart {unit}")


def _backend_finding(f: K3sFinding, where: str, facts: Facts) -> Finding:
    unit = _unit(facts)
    restart = f"then systemctl restart {unit} (on every server)"
    wg_line = f"{FLANNEL_BACKEND}: wireguard-native"
    main = os.path.join(facts.cfg.k3s.config_dir, "config.yaml")
    if f.code == "no_backend":
        return Finding(
            "problem",
            "flannel",
            "flannel backend is vxlan: nothing sets flannel-backend",
            str(f),
            f"{wg_line} in {main} on every server (wgagent's drop-in sets it while k3s.enabled is true), {restart}",
        )
    problem = backend_problem(f.value)
    if problem is None:  # the right value, but set where it defeats wgagent's drop-in
        fix = (
            f"remove --{FLANNEL_BACKEND} from ExecStart in {f.path}, then systemctl daemon-reload"
            if f.code == "exec_flag"
            else f"delete the {FLANNEL_BACKEND} line from {f.path}"
        )
        return Finding("warn", "k3s", f"{where} sets {FLANNEL_BACKEND} itself", str(f), fix)
    raw = f.value[-1] if isinstance(f.value, tuple) and f.value else f.value if isinstance(f.value, str) else ""
    name = raw.partition("=")[0].strip() or "empty"
    title = (
        "flannel backend 'wireguard' was removed in k3s 1.26"
        if name == "wireguard"
        else f"flannel backend is '{name}', not WireGuard"
    )
    if f.code == "backend" and not f.error:  # wgagent's own k3s.flannel_backend
        return Finding(
            "warn", "flannel", title, str(f), f"k3s.flannel_backend: wireguard-native in {facts.config_path}"
        )
    if f.code == "exec_flag":
        fix = (
            f"remove --{FLANNEL_BACKEND} from ExecStart in {f.path} (INSTALL_K3S_EXEC; wgagent's drop-in sets "
            f"wireguard-native), then systemctl daemon-reload, {restart}"
        )
    elif f.code == "override":
        fix = f"delete the {FLANNEL_BACKEND} line from {f.path} (wgagent's drop-in sets wireguard-native), {restart}"
    else:
        fix = f"{wg_line} in {f.path} instead, {restart}"
    return Finding("problem", "flannel", title, str(f), fix)


def _public_ip(facts: Facts) -> list[Finding]:
    p = facts.public_ip
    if isinstance(p, Skipped):
        return [Finding("info", "public-ip", "skipped: public IP discovery and the NAT check", p.why)]
    if isinstance(p, Failed):
        return [_failed("public-ip", "the public IP", p, "wgagent discover")]
    d = p.decision
    out: list[Finding] = []
    errors = [o for o in p.observations if o.error]
    failed = (
        f"; {len(errors)} of {len(p.observations)} source(s) failed, first: {errors[0].source}: {errors[0].error}"
        if errors
        else ""
    )
    if d.decided:
        methods = "/".join(m for m in (d.method4, d.method6) if m)
        out.append(Finding("ok", "public-ip", f"public IP {d.addresses} (by {methods})", d.reason + failed))
    else:
        out.append(
            Finding(
                "problem",
                "public-ip",
                "no public IP could be discovered",
                d.reason + failed,
                f"public_ip.static: [<this node's public IP>] in {facts.config_path}, or fix the sources"
                " ('wgagent discover' shows each answer)",
            )
        )
    if d.stun_ports_differ:
        ports = ", ".join(f"{o.source} saw {o.ip}:{o.port}" for o in p.observations if o.kind == "stun" and o.port)
        port = facts.cfg.wireguard.listen_port
        out.append(
            Finding(
                "problem",
                "public-ip",
                "the NAT maps each destination to a different port (STUN mapped ports differ)",
                f"{ports}: an endpoint-dependent NAT; peers cannot reach this node at the port they "
                "learn, so WireGuard works only towards nodes that can be dialled",
                f"forward UDP {port} on the NAT router to this node (a static port mapping), or give the "
                f"node a public IP and pin it: public_ip.static: [<ip>] in {facts.config_path}",
            )
        )
    elif d.stun_ports_differ is False:
        out.append(Finding("ok", "public-ip", "the NAT keeps one mapping for all destinations (STUN ports agree)"))
    k = facts.k3s
    if d.decided and isinstance(k, K3sFacts) and k.role is not None:
        out += _node_external_ip(facts, k, d)
    return out


def _node_external_ip(facts: Facts, k: K3sFacts, d: Decision) -> list[Finding]:
    scan = scan_config(facts.cfg.k3s.config_dir, k.files, role=k.role.name if k.role else None)
    setting = scan.settings.get(NODE_EXTERNAL_IP)
    unit = _unit(facts)
    if setting is None:
        if not facts.cfg.k3s.enabled:
            return []
        return [
            Finding(
                "warn",
                "k3s",
                f"k3s's {NODE_EXTERNAL_IP} is not set",
                f"k3s does not know this node's public IP {d.addresses}",
                "systemctl enable --now wgagent (its drop-in sets it)",
            )
        ]
    have = []
    for item in setting.items():
        with contextlib.suppress(ValueError):
            have.append(ipaddress.ip_address(item))
    wrong = []
    for ip in (d.ipv4, d.ipv6):
        if ip is None:
            continue
        same_family = [h for h in have if h.version == ip.version]
        if ip not in same_family:
            wrong.append(f"{', '.join(map(str, same_family)) or f'no IPv{ip.version} address'} instead of {ip}")
    if not wrong:
        return [
            Finding(
                "ok",
                "k3s",
                f"k3s's {NODE_EXTERNAL_IP} is the discovered {d.addresses}",
                f"{setting.path}:{setting.line}",
            )
        ]
    if setting.path.endswith(f"/{DROPIN_DIR}/{DROPIN_NAME}"):
        fix = f"systemctl restart wgagent (it rewrites {setting.path} and restarts {unit} when it must)"
    else:
        fix = (
            f"delete {NODE_EXTERNAL_IP} from {setting.path} (wgagent's drop-in sets it), then systemctl restart {unit}"
        )
    return [
        Finding(
            "problem",
            "k3s",
            f"k3s's {NODE_EXTERNAL_IP} differs from the discovered public IP",
            f"{setting.path}:{setting.line} gives {'; '.join(wrong)}",
            fix,
        )
    ]


_KUBE_ERRORS: tuple[tuple[type[KubeError], str, str, str], ...] = (
    # The first class that matches; templates take e, source, node, unit, conf, name_from.
    (
        KubeConfigError,
        "no usable credential for the Kubernetes API",
        "{e}",
        "start k3s so that it writes {source} (systemctl start {unit}), or set kube.kubeconfig: <a kubeconfig for "
        "Node {node}> in {conf}",
    ),
    (
        KubeUnreachable,
        "the Kubernetes API is unreachable",
        "{e}",
        "systemctl status {unit} (the API server, or on agents k3s's local load balancer, must run); check the server "
        "address in {source}",
    ),
    (
        Unauthorized,
        "the API server refuses the credential (401)",
        "{source}: {e}",
        "systemctl restart {unit} (k3s renews its certificates when it starts), or set kube.kubeconfig: <a valid "
        "kubeconfig> in {conf}",
    ),
    (
        Forbidden,
        "the credential may not read Node {node} (403)",
        "{source}: {e}",
        "node_name: <this node's name in kubectl get nodes> in {conf}, or kube.kubeconfig: <this node's own "
        "credential>",
    ),
    (
        NotFound,
        "Node {node} is not registered",
        "{e} (name from {name_from})",
        "node_name: <the name kubectl get nodes shows for this node> in {conf}; or start k3s (systemctl start {unit}) "
        "so that it registers",
    ),
    (KubeError, "the Kubernetes API failed", "{e}", "systemctl status {unit}; journalctl -u {unit}"),
)


def _kube(facts: Facts) -> list[Finding]:
    kf = facts.kube
    if isinstance(kf, Skipped):
        return [Finding("info", "kubernetes", "skipped: the Kubernetes API and flannel's annotations", kf.why)]
    if isinstance(kf, Failed):
        return [_failed("kubernetes", "the Kubernetes API", kf, f"kubectl get node {facts.node} -o yaml")]
    out: list[Finding] = []
    e = kf.node_error
    if e is not None:
        for cls, title, detail, fix in _KUBE_ERRORS:
            if isinstance(e, cls):
                where = {
                    "e": e,
                    "source": kf.own_source,
                    "node": facts.node,
                    "unit": _unit(facts),
                    "conf": facts.config_path,
                    "name_from": facts.node_source,
                }
                out.append(
                    Finding("problem", "kubernetes", title.format(**where), detail.format(**where), fix.format(**where))
                )
                break
    elif kf.annotations is not None:
        detail = f"credential {kf.own_source}; name from {facts.node_source}"
        out.append(Finding("ok", "kubernetes", f"the API answers; Node {facts.node} is registered", detail))
        out += _annotations(facts, kf.annotations)
    le = kf.list_error
    if le is not None and not (e is not None and (kf.list_source == kf.own_source or type(e) is type(le))):
        out.append(
            Finding(
                "warn",
                "kubernetes",
                "cannot list the cluster's Nodes",
                f"{kf.list_source}: {le}; "
                "dead peers are then told only by their missing allowed IPs, and unreachable live nodes "
                "are not named",
                f"kube.list_kubeconfig: <a kubeconfig that may list Nodes> in {facts.config_path}",
            )
        )
    elif kf.cluster is not None:
        out.append(
            Finding("ok", "kubernetes", f"{len(kf.cluster.nodes)} Node(s) listed", f"credential {kf.list_source}")
        )
    return out


def _annotations(facts: Facts, anns: Mapping[str, str]) -> list[Finding]:
    out: list[Finding] = []
    node, unit = facts.node, _unit(facts)
    backend = anns.get(ANN_BACKEND_TYPE)
    wg_fix = (
        f"{FLANNEL_BACKEND}: wireguard-native in {facts.cfg.k3s.config_dir}/config.yaml on every server (wgagent's "
        f"drop-in does it), then systemctl restart k3s on the servers and k3s-agent on the agents"
    )
    if backend is not None and backend != "wireguard":
        what = "k3s's removed 'wireguard' extension backend" if backend == "extension" else f"the '{backend}' backend"
        out.append(
            Finding(
                "problem",
                "flannel",
                f"flannel on Node {node} runs {what}, not WireGuard",
                f"{ANN_BACKEND_TYPE} is {backend!r}",
                wg_fix,
            )
        )
    elif backend == "wireguard":
        out.append(Finding("ok", "flannel", f"flannel on Node {node} runs the WireGuard backend"))
    p = facts.public_ip
    if not isinstance(p, DiscoveryFacts) or not p.decision.decided:
        out.append(Finding("info", "flannel", "flannel's public IP annotations not compared: no public IP decided"))
        return out
    want = wanted(p.decision.addresses)
    verdict = assess(anns, want)
    if verdict.ok:
        out.append(
            Finding(
                "ok",
                "flannel",
                f"flannel's public-ip annotations are the discovered {p.decision.addresses}",
                verdict.detail,
            )
        )
        return out
    if verdict.wrong_overwrites:
        sets = " ".join(f"{k}={want[k]}" for k in verdict.wrong_overwrites)
        fix = (
            f"kubectl annotate node {node} --overwrite {sets}, then systemctl restart {unit}; or systemctl "
            "enable --now wgagent, which does both"
        )
    elif verdict.stale:
        fix = f"systemctl restart {unit} (flannel reads public-ip-overwrite only when it starts)"
    else:
        fix = (
            f"systemctl status {unit}: flannel has not annotated Node {node} (is it running, with the kube subnet "
            "manager?)"
        )
    published = [f"{short(k)} is {anns[k]}" for k in (ANN_PUBLIC_IP, ANN_PUBLIC_IPV6) if k in anns]
    shown = "; ".join(p for p in published if p.split(" is ")[-1] not in verdict.detail)
    out.append(
        Finding(
            "problem",
            "flannel",
            f"flannel's public IP on Node {node} is not the discovered {p.decision.addresses}",
            verdict.detail + (f"; flannel's {shown}" if shown else ""),
            fix,
        )
    )
    return out


def _module_ok(facts: Facts) -> bool | None:
    return diagnose_module(facts.module).ok if isinstance(facts.module, ModuleFacts) else None


def _missing_fix(facts: Facts, w: WireGuardFacts, otherwise: str) -> str:
    """The fix for a missing interface: another WireGuard device here, the kernel first, or ``otherwise``."""
    if w.other_devices:
        return f"wireguard.interface: {w.other_devices[0]} in {facts.config_path} (if that is flannel's device)"
    if _module_ok(facts) is False:
        return f"make WireGuard available in the kernel first (see 'kernel'), then systemctl restart {_unit(facts)}"
    return otherwise


def _wireguard(facts: Facts) -> list[Finding]:
    w = facts.wireguard
    if isinstance(w, Skipped):
        return [Finding("info", "wireguard", "skipped: flannel's WireGuard interface, its UDP port and peers", w.why)]
    if isinstance(w, Failed):
        return [_failed("wireguard", "the WireGuard interface", w, "wg show; ss -ulnp")]
    unit = _unit(facts)
    others = f" WireGuard devices here: {', '.join(w.other_devices)}." if w.other_devices else ""
    if not w.interfaces:
        fix = _missing_fix(
            facts, w, f"{FLANNEL_BACKEND}: wireguard-native on every server, then systemctl restart {unit}"
        )
        return [Finding("problem", "wireguard", "flannel's WireGuard interface is missing", w.note + others, fix)]
    cluster = facts.kube.cluster if isinstance(facts.kube, KubeFacts) else None
    out: list[Finding] = []
    for one in w.interfaces:
        out += _interface(facts, one, cluster, w, others)
    if cluster is None:
        out.append(Finding("info", "wireguard", "live nodes not checked: the node list is unknown"))
    return out


def _interface(
    facts: Facts, one: InterfaceRead, cluster: ClusterView | None, w: WireGuardFacts, others: str
) -> list[Finding]:
    cfg, unit, name, read = facts.cfg, _unit(facts), one.name, one.read
    port = expected_port(name, cfg.wireguard)
    f = interface_facts(
        read.link,
        read.device,
        w.bound_ports,
        cluster,
        now=facts.now,
        expected_port=port,
        backend=read.backend,
        error=read.error,
        own_node=facts.node,
    )
    out: list[Finding] = []
    if not f.exists:
        fix = _missing_fix(facts, w, f"systemctl restart {unit} (flannel creates {name} when it starts)")
        return [Finding("problem", "wireguard", f"interface {name} does not exist", (f.error or "") + others, fix)]
    if read.device is None:
        return [
            Finding(
                "problem",
                "wireguard",
                f"cannot read WireGuard interface {name}",
                f.error or "",
                f"run 'wgagent doctor' as root; by hand: wg show {name}",
            )
        ]
    if not f.up:
        out.append(
            Finding(
                "problem",
                "wireguard",
                f"{name} is down",
                f"the {f.backend} device exists but is not up",
                f"ip link set {name} up, or systemctl restart {unit}",
            )
        )
    if f.device_port is not None and f.device_port != port:
        out.append(
            Finding(
                "problem",
                "wireguard",
                f"{name} listens on UDP {f.device_port}, not {port}",
                f"wireguard.listen_port is {cfg.wireguard.listen_port}; flannel uses 51820 (51821 for IPv6)",
                f"systemctl restart {unit} (flannel sets the port); if {f.device_port} is meant, "
                f"wireguard.listen_port: {f.device_port} in {facts.config_path}",
            )
        )
    if not f.port_bound:
        out.append(
            Finding(
                "problem",
                "wireguard",
                f"nothing listens on UDP {port}",
                f"no UDP socket on port {port} in /proc/net/udp or udp6 (what 'netstat -ulnp' / "
                f"'ss -ulnp' shows): peers cannot reach {name}",
                f"systemctl restart {unit} (flannel recreates {name} on {port}); check: ss -ulnp | grep {port}",
            )
        )
    if not out:
        out.append(
            Finding(
                "ok",
                "wireguard",
                f"{name}: up, listening on UDP {port}",
                f"{f.peers} peer(s), {f.active} with a handshake in the last {HANDSHAKE_FRESH_S:g} s; "
                f"{f.backend} backend",
            )
        )
    if f.unreachable:
        nodes = sorted({u.node for u in f.unreachable})
        listed = "; ".join(
            f"{u.node} at {u.endpoint or '(no endpoint)'}, last handshake "
            + ("never" if u.last_handshake is None else f"{int(facts.now - u.last_handshake)} s ago")
            for u in f.unreachable[:10]
        )
        out.append(
            Finding(
                "problem",
                "wireguard",
                f"live node(s) unreachable over {name}: {', '.join(nodes[:5])}"
                + (f" and {len(nodes) - 5} more" if len(nodes) > 5 else ""),
                f"no handshake in the last {HANDSHAKE_FRESH_S:g} s: {listed}",
                f"open UDP 51820 between this node and {', '.join(nodes[:3])} (firewall, security group), "
                "check that their flannel public-ip annotation is an address this node can reach, and run "
                "'wgagent doctor' on them",
            )
        )
    if f.nodes_without_peer:
        out.append(
            Finding(
                "warn",
                "wireguard",
                f"flannel has no peer on {name} for: {', '.join(f.nodes_without_peer[:5])}",
                "these Nodes publish a WireGuard key that is no peer here",
                f"systemctl restart {unit} (flannel adds a peer for every Node when it starts)",
            )
        )
    out += _peers(facts, one, read.device, cluster)
    return out


def _peers(facts: Facts, one: InterfaceRead, device: Device, cluster: ClusterView | None) -> list[Finding]:
    cfg = facts.cfg
    policy = GCPolicy.from_config(cfg.wireguard.gc)
    keys = cluster.current_keys if cluster is not None else None
    sel = select_stale_peers(device, keys, one.first_seen, facts.now, policy)
    dead = (*sel.remove, *sel.deferred)
    name = one.name
    out: list[Finding] = []
    if dead:
        no_ips = sum(1 for p in dead if not p.allowed_ips)
        detail = (
            f"{len(dead)} of {len(device.peers)} peers are silent for more than {policy.stale_after_s:g} s "
            f"and belong to no live Node: {len(dead) - no_ips} hold no Node's key, {no_ips} have no allowed "
            "IPs (a re-keyed node's leftovers)"
        )
        if sel.note:
            detail += f"; {sel.note}"
        gc_off = (
            ""
            if cfg.wireguard.gc.enabled
            else f"; to keep them away: wireguard.gc.enabled: true in {facts.config_path}"
        )
        severity: Severity = "problem" if len(dead) >= DEAD_PEERS_PROBLEM else "warn"
        out.append(
            Finding(
                severity,
                "peers",
                f"{len(dead)} dead peer(s) on {name}",
                detail,
                f"wgagent --config {facts.config_path} gc (removes them in one transaction; --dry-run "
                f"lists them){gc_off}",
            )
        )
    else:
        out.append(Finding("ok", "peers", f"no dead peers on {name}", f"{len(device.peers)} peer(s)"))
    live = keys or frozenset()
    unjudged = sum(
        1
        for p in device.peers
        if p.last_handshake is None and p.public_key not in one.first_seen and p.public_key not in live
    )
    if unjudged:
        out.append(
            Finding(
                "info",
                "peers",
                f"{unjudged} peer(s) on {name} never completed a handshake",
                "wgagent has not watched them yet (it records when it first sees a peer), so doctor "
                "cannot tell how long they have been silent",
                "systemctl enable --now wgagent (its peer GC removes them once they are stale)",
            )
        )
    if sel.kept_unknown:
        out.append(
            Finding(
                "info",
                "peers",
                f"{len(sel.kept_unknown)} stale peer(s) with allowed IPs on {name} not judged",
                sel.note or "the node list is unknown",
            )
        )
    return out


# --- gather: the adapters ---------------------------------------------------------------------------


def _default_module_host() -> ModuleHost:
    """The real module facts, changing nothing: ``modprobe --dry-run`` and a bounded link probe."""

    async def prober() -> ProbeResult:
        from wgagent.wireguard.netlink import probe_link_support

        result, detail = await probe_link_support(timeout_s=15.0)
        return ProbeResult(result, detail)

    # sbin is often not on a user's PATH; modprobe lives there
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    modprobe = shutil.which("modprobe", path=search) or "modprobe"
    return ModuleHost(modprobe_argv=(modprobe, "--dry-run", MODULE), modprobe_timeout_s=10.0, prober=prober)


def _default_backend(ifname: str, uapi_dir: str) -> Backend:
    return open_backend(ifname, uapi_dir, timeout_s=10.0)


def _kube_client(path: str, timeout_s: float) -> NodeAPI:
    from wgagent.kube.client import KubeClient

    return KubeClient(path, timeout_s=timeout_s, retries=0)


def fetch_health(url: str, timeout_s: float) -> DaemonFacts:
    """GET ``<url>/healthz`` (blocking; never through a proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url + "/healthz", timeout=timeout_s) as resp:
            status, body = resp.status, resp.read(1 << 20)
    except urllib.error.HTTPError as exc:  # 503: it answers, with failing checks
        status, body = exc.code, exc.read(1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return DaemonFacts(url, None, error=str(getattr(exc, "reason", exc)))
    try:
        checks = json.loads(body).get("checks") or {}
        failing = tuple(n for n, c in checks.items() if isinstance(c, dict) and not c.get("ok"))
    except (ValueError, AttributeError):
        failing = ()
    return DaemonFacts(url, status, failing)


@dataclass
class Environment:
    """Where doctor's probes look: the real host by default; tests replace any of it."""

    module: ModuleHost = field(default_factory=_default_module_host)
    net: HostNet = field(default_factory=HostNet)
    backend_factory: BackendFactory = _default_backend
    unit_dirs: Sequence[str] = UNIT_DIRS
    which: Callable[[str], str | None] = shutil.which
    k3s_bin_dirs: Sequence[str] = ("/usr/local/bin",)
    sources: Sequence[Source] | None = None
    """Public IP sources; None: those the config names, as ``wgagent discover``."""
    kube_client: Callable[[str, float], NodeAPI] = _kube_client
    health: Callable[[str, float], DaemonFacts] = fetch_health
    clock: Callable[[], float] = time.time
    timeouts: Mapping[str, float] = field(default_factory=dict)
    """Per probe (k3s, module, public_ip, kube, wireguard, daemon), replacing the defaults."""


def timeouts(cfg: Config, env: Environment) -> dict[str, float]:
    out = {
        "k3s": 10.0,
        "module": 30.0,
        "public_ip": cfg.public_ip.timeout_s + 5.0,
        "kube": cfg.kube.request_timeout_s + 5.0,
        "wireguard": 20.0,
        "daemon": 5.0,
    }
    out.update(env.timeouts)
    return out


def _in_thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """Run blocking ``fn`` in a daemon thread: a read that hangs cannot hold doctor's exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            (future.set_result if ok else future.set_exception)(value)

    def run() -> None:
        try:
            result: Any = fn()
            ok = True
        except Exception as exc:
            result, ok = exc, False
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, ok, result)

    threading.Thread(target=run, name="doctor-probe", daemon=True).start()
    return future


async def _bounded(what: str, timeout_s: float, work: Awaitable[T]) -> T | Failed:
    try:
        return await asyncio.wait_for(work, timeout_s)
    except TimeoutError:
        return Failed(f"{what} did not finish within {timeout_s:g} s")
    except Exception as exc:  # a probe's failure is a finding, never a traceback
        if os.environ.get("WGAGENT_DEBUG"):  # as the CLI does for a bug: the trace on request
            raise
        return Failed(f"{what} failed: {type(exc).__name__}: {exc}")


def find_k3s_binary(
    unit_files: Sequence[tuple[str, str]], which: Callable[[str], str | None], bin_dirs: Sequence[str]
) -> tuple[str | None, str]:
    """The k3s executable (the unit's ExecStart, PATH, the install script's directory), and where
    it was looked for (for the report when there is none)."""
    candidates: list[str] = []
    runs = ""
    found = exec_start(unit_files)
    if found is not None and found[1]:
        argv0 = found[1][0]
        runs = f"; {os.path.basename(found[0])} runs {argv0}"
        if os.path.basename(argv0).startswith("k3s"):
            candidates.append(argv0)
    on_path = which("k3s")
    if on_path:
        candidates.append(on_path)
    candidates += [os.path.join(d, "k3s") for d in bin_dirs]
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path, ""
    return None, f"there is no k3s binary (not on PATH, nor in {', '.join(bin_dirs)}){runs}"


def read_k3s(cfg: Config, env: Environment) -> K3sFacts:
    files = read_config_files(cfg.k3s.config_dir)
    role = detect_role(cfg.k3s, unit_dirs=env.unit_dirs)
    unit_files = tuple(read_unit(role.unit, env.unit_dirs)) if role is not None else ()
    # Without a role, the unit a server would have still tells what it runs.
    unit_files_any = unit_files if role is not None else tuple(read_unit("k3s.service", env.unit_dirs))
    binary, looked = find_k3s_binary(unit_files_any, env.which, env.k3s_bin_dirs)
    missing = role_missing_detail(cfg.k3s, env.unit_dirs) if role is None else ""
    return K3sFacts(role, missing, binary, looked, files, unit_files, node_name(cfg, files))


async def read_kube(cfg: Config, role: str | None, node: str, env: Environment) -> KubeFacts:
    paths = credential_paths(cfg.kube, cfg.k3s, role)
    timeout = cfg.kube.request_timeout_s
    own = env.kube_client(paths.own, timeout)
    lister = own if paths.list == paths.own else env.kube_client(paths.list, timeout)

    async def get() -> tuple[dict[str, str] | None, KubeError | None]:
        try:
            return annotations_of(await own.get_node(node)), None
        except KubeError as exc:
            return None, exc

    async def listing() -> tuple[ClusterView | None, KubeError | None]:
        try:
            items = (await lister.list_nodes_metadata()).get("items") or []
        except KubeError as exc:
            return None, exc
        infos = [node_info(i) for i in items if isinstance(i, dict)]
        return ClusterView({i.name: i for i in infos if i is not None}), None

    try:
        (anns, node_error), (cluster, list_error) = await asyncio.gather(get(), listing())
    finally:
        for client in {id(own): own, id(lister): lister}.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 2.0)
    return KubeFacts(paths.own, paths.list, anns, node_error, cluster, list_error)


def other_wireguard_devices(net: HostNet, uapi_dir: str, exclude: Sequence[str]) -> tuple[str, ...]:
    """WireGuard devices (kernel links and UAPI sockets) other than ``exclude``."""
    names: set[str] = set()
    with contextlib.suppress(OSError):
        names.update(os.listdir(net.sys_class_net))
    with contextlib.suppress(OSError):
        names.update(n.removesuffix(".sock") for n in os.listdir(uapi_dir) if n.endswith(".sock"))
    return tuple(sorted(n for n in names if n not in exclude and is_wireguard(net.link(n), uapi_dir)))


async def read_wireguard(cfg: Config, env: Environment) -> WireGuardFacts:
    wg = cfg.wireguard

    def local() -> tuple[list[str], str, frozenset[int], tuple[str, ...], dict[str, dict[str, float]]]:
        names, note = resolve_interfaces(wg.interface, env.net, wg.uapi_dir)
        bound = bound_udp_ports(env.net.udp_tables())
        others = other_wireguard_devices(env.net, wg.uapi_dir, names)
        store = FirstSeenStore(cfg.state_dir)  # read only: doctor saves nothing
        return names, note, bound, others, {n: dict(store.get(n)) for n in names}

    names, note, bound, others, seen = await _in_thread(local)
    reads = await asyncio.gather(*(read_device(n, wg.uapi_dir, env.net, env.backend_factory) for n in names))
    interfaces = tuple(InterfaceRead(n, r, seen[n]) for n, r in zip(names, reads, strict=True))
    return WireGuardFacts(interfaces, note, bound, others)


async def _discover(cfg: Config, env: Environment) -> DiscoveryFacts:
    from wgagent.publicip.report import discover_once

    observations, decision = await discover_once(cfg.public_ip, sources=env.sources)
    return DiscoveryFacts(tuple(observations), decision)


async def gather(cfg: Config, config_path: str, env: Environment | None = None) -> Facts:
    """Every probe's facts; k3s's first (they name the node and role), the rest at once."""
    env = env or Environment()
    t = timeouts(cfg, env)
    k3s = await _bounded("reading k3s's config and unit", t["k3s"], _in_thread(lambda: read_k3s(cfg, env)))
    if isinstance(k3s, K3sFacts):
        node, source = k3s.node.name, k3s.node.source
        role = k3s.role.name if k3s.role is not None else None
        installed: bool | None = k3s.installed
    else:
        node, source, role, installed = cfg.node_name or socket.gethostname().lower(), "hostname", None, None
    without_k3s = "k3s is not installed" if installed is False else ""

    async def skipped(why: str) -> Skipped:
        return Skipped(why)

    module = _bounded("the wireguard module check", t["module"], check_module(env.module, load=True))
    if not cfg.public_ip.enabled:
        public_ip: Awaitable[DiscoveryFacts | Failed | Skipped] = skipped("public_ip.enabled is false")
    else:
        public_ip = _bounded("public IP discovery", t["public_ip"], _discover(cfg, env))
    if not cfg.kube.enabled or without_k3s:
        kube: Awaitable[KubeFacts | Failed | Skipped] = skipped(without_k3s or "kube.enabled is false")
    else:
        kube = _bounded("asking the Kubernetes API", t["kube"], read_kube(cfg, role, node, env))
    if not cfg.wireguard.enabled or without_k3s:
        wireguard: Awaitable[WireGuardFacts | Failed | Skipped] = skipped(without_k3s or "wireguard.enabled is false")
    else:
        wireguard = _bounded("reading the WireGuard interface", t["wireguard"], read_wireguard(cfg, env))
    url = cfg.health.listen.url
    daemon = _bounded("asking the daemon", t["daemon"], _in_thread(lambda: env.health(url, t["daemon"] - 1.0)))
    m, p, k, w, d = await asyncio.gather(module, public_ip, kube, wireguard, daemon)
    return Facts(cfg, config_path, env.clock(), node, source, k3s, m, p, k, w, d)


# --- the command -----------------------------------------------------------------------------------


def doctor_command(cfg: Config, config_path: str, *, as_json: bool, out: TextIO, env: Environment | None = None) -> int:
    """Gather, diagnose, print; 0 when all is clear, 1 when any finding is a problem."""
    facts = asyncio.run(gather(cfg, config_path, env))
    findings = diagnose(facts)
    if as_json:
        out.write(render_json(findings) + "\n")
    else:
        role = facts.k3s.role if isinstance(facts.k3s, K3sFacts) else None
        what = f"k3s {role.name}" if role is not None else "k3s role unknown"
        header = f"wgagent doctor: node {facts.node} ({what}; name from {facts.node_source}), config {config_path}"
        out.write(render_text(findings, header) + "\n")
    return 0 if is_clear(findings) else 1
