"""Findings about k3s (install, role, config, unit, flannel backend, advertise address) and the public IP."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping

from wgagent.doctor.facts import (
    DiscoveryFacts,
    Facts,
    Failed,
    K3sFacts,
    Skipped,
    config_main,
    unit_name,
)
from wgagent.doctor.findings import Finding, could_not_check
from wgagent.doctor.flannel_findings import K3S_RULES, external_ip, families_of, verdicts, view_of, wanted
from wgagent.families import Families
from wgagent.k3s.dropin import dropin_path
from wgagent.k3s.role import Role
from wgagent.k3s.scan import (
    ADVERTISE_ADDRESS,
    DROPIN_DIR,
    DROPIN_NAME,
    FLANNEL_BACKEND,
    NODE_EXTERNAL_IP,
    ConfigFinding,
    Scan,
    backend_problem,
    scan_config,
)
from wgagent.k3s.unit import scan_unit
from wgagent.k3s.view import ExternalIP
from wgagent.kube.annotation import same_ip
from wgagent.publicip.model import Decision

WITHOUT_K3S = "the Kubernetes API, flannel's annotations, flannel's WireGuard interface, its UDP port and peers"
"""What doctor skips when k3s is not installed."""


def check_k3s(facts: Facts) -> list[Finding]:
    """Is k3s installed, in which role, and does anything in its config or unit defeat wgagent's
    drop-in or stop k3s from starting (as the k3s part scans: ``k3s/part.py``)."""
    k = facts.k3s
    if isinstance(k, Failed):
        return [could_not_check("k3s", "k3s", k, "systemctl status k3s; ls /etc/rancher/k3s")]
    role = k.role
    scan_role = _scan_role(role)
    scan = scan_config(k.identity.config, k.files, role=scan_role)
    found = [_k3s_finding(f, facts) for f in scan.findings]
    notes = [Finding("info", "k3s", f"k3s role: {note}") for note in k.identity.notes]
    if role is None:
        return [_install_finding(facts, k), *notes, *found]
    found += _unit_and_dropin(facts, k, scan_role)
    return [
        _install_finding(facts, k),
        *notes,
        *_uncertain_role(facts, role),
        *found,
        *_k3s_all_clear(found, scan, k, scan_role),
        *_advertise_address(facts, k, scan),
    ]


def _scan_role(role: Role | None) -> str | None:
    """The role k3s's config is checked for: only one known for sure (``K3sPart._scan_role``)."""
    return role.name if role is not None and role.certain else None


def _install_finding(facts: Facts, k: K3sFacts) -> Finding:
    """Installed (ok), not installed, the role disputed or unknown, or a unit without the binary."""
    role = k.role
    install = "install k3s: curl -sfL https://get.k3s.io | sh -"
    skipped = f"Skipped without k3s: {WITHOUT_K3S}."
    if k.identity.conflict:
        return Finding(
            "problem",
            "k3s",
            "cannot tell whether k3s runs here as a server or an agent",
            k.role_missing,
            f"k3s.role: server|agent in {facts.config_path} (or k3s.unit: <the k3s unit in use>)",
        )
    if role is not None and k.binary is not None:
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


def _uncertain_role(facts: Facts, role: Role) -> list[Finding]:
    """A role only the data dir or the unit's name suggests: wgagent writes no server-only key."""
    if role.certain:
        return []
    return [
        Finding(
            "info",
            "k3s",
            f"the k3s role '{role.name}' is a guess ({role.how})",
            "wgagent writes no server-only key (flannel-backend, flannel-external-ip, advertise-address) and "
            "checks k3s's config only for what every role reads, until the role is certain",
            f"k3s.role: {role.name} in {facts.config_path}",
        )
    ]


def _unit_and_dropin(facts: Facts, k: K3sFacts, scan_role: str | None) -> list[Finding]:
    """What k3s's unit files set against wgagent, and whether wgagent's drop-in is there at all."""
    cfg, location = facts.cfg, k.identity.config
    found = [_k3s_finding(f, facts) for f in scan_unit(k.unit_files, role=scan_role or "unknown", config_dir=location)]
    if cfg.k3s.enabled and f"{DROPIN_DIR}/{DROPIN_NAME}" not in k.files:
        found.append(
            Finding(
                "warn",
                "k3s",
                f"wgagent's drop-in {dropin_path(location)} does not exist",
                "k3s runs without the node-external-ip and flannel settings wgagent writes",
                "systemctl enable --now wgagent (it writes the drop-in; k3s reads it when it starts)",
            )
        )
    return found


def _k3s_all_clear(found: list[Finding], scan: Scan, k: K3sFacts, scan_role: str | None) -> list[Finding]:
    """The ok findings when nothing was found: k3s's config, and (on a server) the flannel backend."""
    out: list[Finding] = []
    if not any(f.severity in ("warn", "problem") for f in found):
        detail = f"checked {len(scan.files)} config file(s) and {len(k.unit_files)} unit file(s)"
        out.append(Finding("ok", "k3s", "nothing in k3s's config defeats wgagent's drop-in", detail))
    if scan_role == "server" and not any(f.area == "flannel" for f in found):
        setting = scan.settings.get(FLANNEL_BACKEND)
        where = f" ({setting.path}:{setting.line})" if setting is not None else ""
        out.append(Finding("ok", "flannel", f"flannel-backend is wireguard-native{where}"))
    return out


def _k3s_finding(f: ConfigFinding, facts: Facts) -> Finding:
    """A finding of k3s's config scan, with the fix for its kind."""
    where = f"{f.path}:{f.line}" if f.line is not None else f.path
    if f.code == "replaced":  # wgagent's drop-in wins: nothing to do
        return Finding("info", "k3s", str(f))
    if f.code == "agent_key":
        return _agent_key_finding(f, where, facts)
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


def _agent_key_finding(f: ConfigFinding, where: str, facts: Facts) -> Finding:
    """A key ``k3s agent`` does not define, in a config file or its ExecStart: it exits at start
    (only ``k3s server`` and ``etcd-snapshot`` drop unknown config keys: k3s ``pkg/configfilearg``)."""
    unit = unit_name(facts)
    if f.line is None:  # the unit's ExecStart (scan_unit)
        return Finding(
            "problem",
            "k3s",
            f"k3s agent will not start: its ExecStart gives --{f.key}",
            str(f),
            f"remove --{f.key} from ExecStart in {f.path} (INSTALL_K3S_EXEC), then systemctl daemon-reload && "
            f"systemctl restart {unit}",
        )
    return Finding(
        "problem",
        "k3s",
        f"k3s agent will not start: {f.key} in {where}",
        str(f),
        f"delete the {f.key} line from {f.path} (it belongs in the servers' config), then systemctl restart {unit}",
    )


def _defeating_finding(f: ConfigFinding, where: str, facts: Facts) -> Finding:
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
        f"k3s.unit: <the k3s unit> in {facts.config_path}, so wgagent follows its --config; or "
        f"k3s.config_dir: {os.path.dirname(str(f.value))}",
    )


def _backend_finding(f: ConfigFinding, where: str, facts: Facts) -> Finding:
    """flannel-backend: unset (vxlan), right but set where it defeats the drop-in, or not WireGuard."""
    restart = f"then systemctl restart {unit_name(facts)} (on every server)"
    if f.code == "no_backend":
        main = config_main(facts)
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


def _backend_title(f: ConfigFinding) -> str:
    """Names the backend set instead of WireGuard (the last one when a flag is repeated)."""
    raw = f.value[-1] if isinstance(f.value, tuple) and f.value else f.value if isinstance(f.value, str) else ""
    name = raw.partition("=")[0].strip() or "empty"
    if name == "wireguard":
        return "flannel backend 'wireguard' was removed in k3s 1.26"
    return f"flannel backend is '{name}', not WireGuard"


def _backend_fix(f: ConfigFinding, restart: str) -> str:
    if f.code == "exec_flag":
        return (
            f"remove --{FLANNEL_BACKEND} from ExecStart in {f.path} (INSTALL_K3S_EXEC; wgagent's drop-in sets "
            f"wireguard-native), then systemctl daemon-reload, {restart}"
        )
    if f.code == "override":
        return f"delete the {FLANNEL_BACKEND} line from {f.path} (wgagent's drop-in sets wireguard-native), {restart}"
    return f"{FLANNEL_BACKEND}: wireguard-native in {f.path} instead, {restart}"


def check_public_ip(facts: Facts) -> list[Finding]:
    """The discovered public IP, whether the NAT keeps one mapping, the families the cluster
    uses, and whether k3s's node-external-ip is the discovered address."""
    p = facts.public_ip
    if isinstance(p, Skipped):
        return [Finding("info", "public-ip", "skipped: public IP discovery and the NAT check", p.why)]
    if isinstance(p, Failed):
        return [could_not_check("public-ip", "the public IP", p, "wgagent discover")]
    out = [_discovery_finding(facts, p), *_nat_finding(facts, p)]
    if not p.decision.decided:
        return out
    families = families_of(facts)
    out += _unmanaged(families, p.decision)
    k = facts.k3s
    if isinstance(k, K3sFacts) and (k.role is not None or k.identity.conflict):
        out += _node_external_ip(facts, wanted(families, p.decision.addresses))
    return out


def _unmanaged(families: Families, d: Decision) -> list[Finding]:
    """A discovered address of a family the cluster does not use: k3s and flannel ignore it."""
    out = []
    for version, ip, managed in ((4, d.ipv4, families.ipv4), (6, d.ipv6, families.ipv6)):
        if ip is not None and not managed:
            detail = (
                f"the discovered {ip} is not advertised: k3s and flannel use IPv{version} only on a cluster that "
                f"has it; cluster families: {families.describe()}"
            )
            out.append(Finding("info", "public-ip", f"IPv{version} not checked: {families.why}", detail))
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


def _node_external_ip(facts: Facts, want: Mapping[int, str]) -> list[Finding]:
    """Per managed family, whether k3s's effective node-external-ip (``k3s/view.py``) is the
    discovered address. A difference the annotation verdict is about (``drop-in``, ``override``)
    is left to it; any other is said here (flannel may publish the address now and k3s take
    another at its next start)."""
    view = view_of(facts)
    if view is None:
        return []
    said = {family for family, (_, v) in verdicts(facts).items() if v.rule in K3S_RULES}
    out = []
    for family, ip in want.items():
        ext = external_ip(facts, view, family)
        if same_ip(ext.value, ip):
            out.append(Finding("ok", "k3s", f"k3s's {NODE_EXTERNAL_IP} is the discovered {ip}", ext.source))
        elif family not in said:
            out += _external_ip_differs(facts, ext, ip)
    return out


def _external_ip_differs(facts: Facts, ext: ExternalIP, ip: str) -> list[Finding]:
    unit = unit_name(facts)
    if ext.ours:
        return [
            Finding(
                "warn",
                "k3s",
                f"k3s's {NODE_EXTERNAL_IP} is not the discovered {ip} yet",
                f"{ext.source} says {ext.value or 'nothing'}: wgagent rewrites it and restarts {unit} when it must",
                "systemctl enable --now wgagent",
            )
        ]
    if ext.value is None:
        return []  # wgagent does not manage the drop-in (k3s.enabled: false) and nothing sets it
    return [
        Finding(
            "problem",
            "k3s",
            f"k3s's {NODE_EXTERNAL_IP} differs from the discovered public IP",
            f"{ext.source} gives {ext.value} instead of {ip}",
            f"remove {NODE_EXTERNAL_IP} from {ext.source} (wgagent's drop-in sets it), then systemctl restart {unit}",
        )
    ]


def _advertise_address(facts: Facts, k: K3sFacts, scan: Scan) -> list[Finding]:
    """On a server without ``advertise-address``: kube-apiserver advertises the first
    ``node-external-ip`` (k3s ``pkg/cli/server/server.go`` ``run``, docs/UPSTREAM.md §2)."""
    identity = k.identity
    if identity.role_name != "server" or ADVERTISE_ADDRESS in scan.settings or _unit_sets(k, ADVERTISE_ADDRESS):
        return []
    setting = scan.settings.get(NODE_EXTERNAL_IP)
    first = next((i for i in (setting.items() if setting is not None else ()) if _is_ip(i)), None)
    view = view_of(facts)
    if first is None and view is not None:  # ExecStart's, after the config files'
        first = view.ipv4.value or view.ipv6.value
    if first is None:
        return []
    if facts.cfg.k3s.advertise_private_address:
        fix = "systemctl enable --now wgagent (k3s.advertise_private_address is on: its drop-in sets advertise-address)"
    else:
        fix = f"k3s.advertise_private_address: true in {facts.config_path} to advertise its private IPv4 instead"
    return [
        Finding(
            "info",
            "k3s",
            f"kube-apiserver advertises {first}, this server's {NODE_EXTERNAL_IP}",
            f"agents and other servers reach the API server at {first}: without {ADVERTISE_ADDRESS}, k3s advertises "
            f"the first {NODE_EXTERNAL_IP}",
            fix,
        )
    ]


def _unit_sets(k: K3sFacts, flag: str) -> bool:
    unit = k.identity.unit
    return unit is not None and any(a.startswith("-") and a.lstrip("-").partition("=")[0] == flag for a in unit.flags)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
