"""``diagnose(facts) -> [Finding, ...]``: pure, built on the parts' own decision functions; one helper per area."""

from __future__ import annotations

import os

from wgagent.doctor.facts import (
    Facts,
    Failed,
)
from wgagent.doctor.findings import Finding, could_not_check
from wgagent.doctor.flannel_findings import check_backends
from wgagent.doctor.k3s_findings import check_k3s, check_public_ip
from wgagent.doctor.mesh_findings import check_mesh
from wgagent.doctor.network_findings import check_kube, check_wireguard
from wgagent.wireguard.module import diagnose as diagnose_module

START_WGAGENT = "systemctl enable --now wgagent"


def diagnose(facts: Facts) -> list[Finding]:
    """Every finding, in area order; the parts' decision functions do the deciding."""
    out: list[Finding] = []
    out += _daemon(facts)
    out += _kernel(facts)
    out += check_k3s(facts)
    out += check_public_ip(facts)
    out += check_kube(facts)
    out += check_backends(facts)
    out += check_wireguard(facts)
    out += check_mesh(facts)
    return out


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
        return [could_not_check("kernel", "the wireguard module", m, "lsmod | grep wireguard; modprobe wireguard")]
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
