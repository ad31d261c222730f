"""Findings about k3s (install, role, config files, unit flags, flannel backend) and the public IP."""

from __future__ import annotations

import contextlib
import ipaddress
import os

from wgagent.doctor.facts import (
    DiscoveryFacts,
    Facts,
    Failed,
    K3sFacts,
    Skipped,
    unit_name,
)
from wgagent.doctor.findings import Finding, could_not_check
from wgagent.k3s.dropin import dropin_path
from wgagent.k3s.role import Role
from wgagent.k3s.scan import (
    DROPIN_DIR,
    DROPIN_NAME,
    FLANNEL_BACKEND,
    NODE_EXTERNAL_IP,
    Scan,
    Setting,
    backend_problem,
    scan_config,
)
from wgagent.k3s.scan import Finding as K3sFinding
from wgagent.k3s.unit import scan_unit
from wgagent.publicip.model import Decision

WITHOUT_K3S = "the Kubernetes API, flannel's annotations, flannel's WireGuard interface, its UDP port and peers"
"""What doctor skips when k3s is not installed."""


def check_k3s(facts: Facts) -> list[Finding]:
    """Is k3s installed, in which role, and does anything in its config or unit defeat wgagent's drop-in."""
    k = facts.k3s
    if isinstance(k, Failed):
        return [could_not_check("k3s", "k3s", k, "systemctl status k3s; ls /etc/rancher/k3s")]
    role = k.role
    scan = scan_config(facts.cfg.k3s.config_dir, k.files, role=role.name if role else None)
    found = [_k3s_finding(f, facts) for f in scan.findings]
    if role is None:
        return [_install_finding(facts, k), *found]
    found += _unit_and_dropin(facts, k, role)
    return [_install_finding(facts, k), *found, *_k3s_all_clear(found, scan, k, role)]


def _install_finding(facts: Facts, k: K3sFacts) -> Finding:
    """Installed (ok), not installed, installed without a role we can tell, or a unit without the binary."""
    role = k.role
    install = "install k3s: curl -sfL https://get.k3s.io | sh -"
    skipped = f"Skipped without k3s: {WITHOUT_K3S}."
    if k.installed:
        assert role is not None
        return Finding("ok", "k3s", f"k3s {role.name} installed ({k.binary})", f"role from {role.how}")
    if role is None and k.binary is None:
        return Finding(
            "problem",
            "k3s",
            "k3s is not installed",
            f"{k.role_missing}; {k.looked_for}. {skipped}",
            f"{install}; if it is installed elsewhere, set k3s.role: server (or agent) in {facts.config_path}",
        )
    if role is None:
        return Finding(
            "problem",
            "k3s",
            "cannot tell whether k3s runs here as a server or an agent",
            k.role_missing,
            f"k3s.role: server (or agent) in {facts.config_path}",
        )
    return Finding(
        "problem",
        "k3s",
        "k3s is not installed",
        f"{role.how} says {role.name} ({role.unit}), but {k.looked_for}. {skipped}",
        install,
    )


def _unit_and_dropin(facts: Facts, k: K3sFacts, role: Role) -> list[Finding]:
    """What k3s's unit files set against wgagent, and whether wgagent's drop-in is there at all."""
    cfg = facts.cfg
    found = [_k3s_finding(f, facts) for f in scan_unit(k.unit_files, role=role.name, config_dir=cfg.k3s.config_dir)]
    if cfg.k3s.enabled and f"{DROPIN_DIR}/{DROPIN_NAME}" not in k.files:
        found.append(
            Finding(
                "warn",
                "k3s",
                f"wgagent's drop-in {dropin_path(cfg.k3s)} does not exist",
                "k3s runs without the node-external-ip and flannel settings wgagent writes",
                "systemctl enable --now wgagent (it writes the drop-in; k3s reads it when it starts)",
            )
        )
    return found


def _k3s_all_clear(found: list[Finding], scan: Scan, k: K3sFacts, role: Role) -> list[Finding]:
    """The ok findings when nothing was found: k3s's config, and (on a server) the flannel backend."""
    out: list[Finding] = []
    if not any(f.severity in ("warn", "problem") for f in found):
        detail = f"checked {len(scan.files)} config file(s) and {len(k.unit_files)} unit file(s)"
        out.append(Finding("ok", "k3s", "nothing in k3s's config defeats wgagent's drop-in", detail))
    if role.name == "server" and not any(f.area == "flannel" for f in found):
        setting = scan.settings.get(FLANNEL_BACKEND)
        where = f" ({setting.path}:{setting.line})" if setting is not None else ""
        out.append(Finding("ok", "flannel", f"flannel-backend is wireguard-native{where}"))
    return out


def _k3s_finding(f: K3sFinding, facts: Facts) -> Finding:
    """A finding of k3s's config scan, with the fix for its kind."""
    where = f"{f.path}:{f.line}" if f.line is not None else f.path
    if f.code == "replaced":  # wgagent's drop-in wins: nothing to do
        return Finding("info", "k3s", str(f))
    if f.key == FLANNEL_BACKEND:
        return _backend_finding(f, where, facts)
    if f.code in ("override", "exec_flag", "exec_config"):
        return _defeating_finding(f, where, facts)
    if not f.error:
        return Finding("info", "k3s", str(f))
    unit = unit_name(facts)
    if f.code in ("unreadable", "invalid"):
        return Finding(
            "problem",
            "k3s",
            f"k3s cannot use {f.path}",
            str(f),
            f"correct or remove {f.path} (k3s will not start with it), then systemctl restart {unit}",
        )
    return Finding("problem", "k3s", str(f), "", f"correct {f.path}, then systemctl restart {unit}")


def _defeating_finding(f: K3sFinding, where: str, facts: Facts) -> Finding:
    """A later config file, an ExecStart flag or ``--config`` that defeats wgagent's drop-in."""
    unit = unit_name(facts)
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
    return Finding(
        "problem",
        "k3s",
        f"k3s reads its config from {f.value} (--config)",
        str(f),
        f"k3s.config_dir: {os.path.dirname(str(f.value))} in {facts.config_path}",
    )


def _backend_finding(f: K3sFinding, where: str, facts: Facts) -> Finding:
    """flannel-backend: unset (vxlan), right but set where it defeats the drop-in, or not WireGuard."""
    restart = f"then systemctl restart {unit_name(facts)} (on every server)"
    if f.code == "no_backend":
        main = os.path.join(facts.cfg.k3s.config_dir, "config.yaml")
        return Finding(
            "problem",
            "flannel",
            "flannel backend is vxlan: nothing sets flannel-backend",
            str(f),
            f"{FLANNEL_BACKEND}: wireguard-native in {main} on every server (wgagent's drop-in sets it while "
            f"k3s.enabled is true), {restart}",
        )
    if backend_problem(f.value) is None:  # the right value, but set where it defeats wgagent's drop-in
        fix = (
            f"remove --{FLANNEL_BACKEND} from ExecStart in {f.path}, then systemctl daemon-reload"
            if f.code == "exec_flag"
            else f"delete the {FLANNEL_BACKEND} line from {f.path}"
        )
        return Finding("warn", "k3s", f"{where} sets {FLANNEL_BACKEND} itself", str(f), fix)
    title = _backend_title(f)
    if f.code == "backend" and not f.error:  # wgagent's own k3s.flannel_backend
        return Finding(
            "warn", "flannel", title, str(f), f"k3s.flannel_backend: wireguard-native in {facts.config_path}"
        )
    return Finding("problem", "flannel", title, str(f), _backend_fix(f, restart))


def _backend_title(f: K3sFinding) -> str:
    """Names the backend set instead of WireGuard (the last one when a flag is repeated)."""
    raw = f.value[-1] if isinstance(f.value, tuple) and f.value else f.value if isinstance(f.value, str) else ""
    name = raw.partition("=")[0].strip() or "empty"
    if name == "wireguard":
        return "flannel backend 'wireguard' was removed in k3s 1.26"
    return f"flannel backend is '{name}', not WireGuard"


def _backend_fix(f: K3sFinding, restart: str) -> str:
    if f.code == "exec_flag":
        return (
            f"remove --{FLANNEL_BACKEND} from ExecStart in {f.path} (INSTALL_K3S_EXEC; wgagent's drop-in sets "
            f"wireguard-native), then systemctl daemon-reload, {restart}"
        )
    if f.code == "override":
        return f"delete the {FLANNEL_BACKEND} line from {f.path} (wgagent's drop-in sets wireguard-native), {restart}"
    return f"{FLANNEL_BACKEND}: wireguard-native in {f.path} instead, {restart}"


def check_public_ip(facts: Facts) -> list[Finding]:
    """The discovered public IP, whether the NAT keeps one mapping, and whether k3s's node-external-ip agrees."""
    p = facts.public_ip
    if isinstance(p, Skipped):
        return [Finding("info", "public-ip", "skipped: public IP discovery and the NAT check", p.why)]
    if isinstance(p, Failed):
        return [could_not_check("public-ip", "the public IP", p, "wgagent discover")]
    out = [_discovery_finding(facts, p), *_nat_finding(facts, p)]
    k = facts.k3s
    if p.decision.decided and isinstance(k, K3sFacts) and k.role is not None:
        out += _node_external_ip(facts, k, p.decision)
    return out


def _discovery_finding(facts: Facts, p: DiscoveryFacts) -> Finding:
    d = p.decision
    errors = [o for o in p.observations if o.error]
    failed = (
        f"; {len(errors)} of {len(p.observations)} source(s) failed, first: {errors[0].source}: {errors[0].error}"
        if errors
        else ""
    )
    if d.decided:
        methods = "/".join(m for m in (d.method4, d.method6) if m)
        return Finding("ok", "public-ip", f"public IP {d.addresses} (by {methods})", d.reason + failed)
    return Finding(
        "problem",
        "public-ip",
        "no public IP could be discovered",
        d.reason + failed,
        f"public_ip.static: [<this node's public IP>] in {facts.config_path}, or fix the sources"
        " ('wgagent discover' shows each answer)",
    )


def _nat_finding(facts: Facts, p: DiscoveryFacts) -> list[Finding]:
    """Whether STUN servers saw the same mapped port: none when fewer than two could compare."""
    if p.decision.stun_ports_differ is False:
        return [Finding("ok", "public-ip", "the NAT keeps one mapping for all destinations (STUN ports agree)")]
    if not p.decision.stun_ports_differ:
        return []
    ports = ", ".join(f"{o.source} saw {o.ip}:{o.port}" for o in p.observations if o.kind == "stun" and o.port)
    port = facts.cfg.wireguard.listen_port
    return [
        Finding(
            "problem",
            "public-ip",
            "the NAT maps each destination to a different port (STUN mapped ports differ)",
            f"{ports}: an endpoint-dependent NAT; peers cannot reach this node at the port they "
            "learn, so WireGuard works only towards nodes that can be dialled",
            f"forward UDP {port} on the NAT router to this node (a static port mapping), or give the "
            f"node a public IP and pin it: public_ip.static: [<ip>] in {facts.config_path}",
        )
    ]


def _node_external_ip(facts: Facts, k: K3sFacts, d: Decision) -> list[Finding]:
    """Whether k3s's effective node-external-ip is the discovered address, and who to blame when not."""
    scan = scan_config(facts.cfg.k3s.config_dir, k.files, role=k.role.name if k.role else None)
    setting = scan.settings.get(NODE_EXTERNAL_IP)
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
    wrong = _external_ip_mismatches(setting, d)
    if not wrong:
        title = f"k3s's {NODE_EXTERNAL_IP} is the discovered {d.addresses}"
        return [Finding("ok", "k3s", title, f"{setting.path}:{setting.line}")]
    unit = unit_name(facts)
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


def _external_ip_mismatches(setting: Setting, d: Decision) -> list[str]:
    """Per decided family: what the setting gives instead of the decided address (nothing when it has it)."""
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
    return wrong
