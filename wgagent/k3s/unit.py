"""k3s's command line in its systemd unit: flags there beat every config file.

The install script puts ``INSTALL_K3S_EXEC`` into ``ExecStart=``. k3s inserts the config
files' flags before the command line's (``configfilearg.Parser``), so a scalar flag on the
command line (``--flannel-backend``) wins over wgagent's drop-in, and a list flag
(``--node-external-ip``) is added to it. ``--config``/``-c`` makes k3s read another file
(and *its* ``.d`` directory) instead of ``<k3s.config_dir>/config.yaml``.

    >>> [f.message.split(":")[0] for f in scan_unit([("/etc/systemd/system/k3s.service",
    ...     "[Service]\\nExecStart=/usr/local/bin/k3s server --node-external-ip=1.2.3.4\\n")],
    ...     role="server", config_dir="/etc/rancher/k3s")]
    ['ExecStart sets --node-external-ip=1.2.3.4']
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from wgagent.k3s.flags import agent_accepts
from wgagent.k3s.install import exec_start
from wgagent.k3s.scan import (
    FLANNEL_BACKEND,
    FLANNEL_EXTERNAL_IP,
    NODE_EXTERNAL_IP,
    ConfigFinding,
    ConfigLocation,
    as_location,
    backend_problem,
    owned_keys,
)


def scan_unit(files: Sequence[tuple[str, str]], *, role: str, config_dir: str | ConfigLocation) -> list[ConfigFinding]:
    """Findings about k3s's command line: flags that defeat wgagent's drop-in, a ``--config``
    elsewhere, and on an agent every flag ``k3s agent`` does not define (it will not start)."""
    found = exec_start(files)
    if found is None:
        return []
    path, argv = found
    loc = as_location(config_dir)
    findings: list[ConfigFinding] = []
    for name, value, shown in _flags(argv):
        if name in ("config", "c"):
            findings += _config_elsewhere(path, value, loc)
        elif role == "agent" and not agent_accepts(name):
            findings.append(_agent_flag(path, name, shown))
        elif name in owned_keys(role):
            findings.append(_owned_flag(path, name, value, shown))
    return findings


def _flags(argv: Sequence[str]) -> list[tuple[str, str | None, str]]:
    """(name, value or None, as written) of each flag after the subcommand."""
    out: list[tuple[str, str | None, str]] = []
    args = list(argv[1:])
    while args and not args[0].startswith("-"):
        args.pop(0)  # the subcommand (server, agent)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-"):
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        takes_next = not eq and name != FLANNEL_EXTERNAL_IP and not _boolean(name)
        if takes_next and i < len(args) and not args[i].startswith("-"):
            value, i = args[i], i + 1
        shown = f"--{name}={value}" if value else f"--{name}"
        out.append((name, value or None, shown))
    return out


def _boolean(name: str) -> bool:
    return name in ("debug", "cluster-init", "with-node-id", "selinux", "rootless", "docker", "prefer-bundled-bin",
                    "protect-kernel-defaults", "disable-default-registry-endpoint", "enable-pprof",
                    "disable-apiserver-lb", "alsologtostderr")  # fmt: skip


def _config_elsewhere(path: str, value: str | None, loc: ConfigLocation) -> list[ConfigFinding]:
    if value is None or os.path.normpath(value) == loc.main:
        return []
    if loc.source.startswith("K3S_CONFIG_FILE"):
        # k3s looks at the variable first (pkg/configfilearg/parser.go, docs/UPSTREAM.md §2)
        return [
            ConfigFinding(
                path,
                None,
                f"ExecStart's --config {value} is not used: {loc.source} names {loc.main}, which k3s reads "
                "instead (and wgagent with it)",
                error=False,
                code="exec_config_unused",
                value=value,
            )
        ]
    return [
        ConfigFinding(
            path,
            None,
            f"ExecStart makes k3s read {value} (--config), so it never reads {loc.dropin_dir}/; "
            f"wgagent follows it when it finds the unit (k3s.unit), or set k3s.config_dir to {os.path.dirname(value)}",
            code="exec_config",
            value=value,
        )
    ]


def _agent_flag(path: str, name: str, shown: str) -> ConfigFinding:
    return ConfigFinding(
        path,
        None,
        f"ExecStart gives k3s agent {shown}, which it does not define: k3s agent will not start "
        f'("flag provided but not defined: -{name}"); remove it from ExecStart (INSTALL_K3S_EXEC), then '
        "systemctl daemon-reload",
        code="agent_key",
        key=name,
    )


def _owned_flag(path: str, name: str, value: str | None, shown: str) -> ConfigFinding:
    if name == NODE_EXTERNAL_IP:
        effect = "k3s adds it to the drop-in's node-external-ip"
    else:
        effect = f"it overrides the drop-in's {name} (command-line flags beat config files)"
        if name == FLANNEL_BACKEND and (problem := backend_problem(value)) is not None:
            effect += f" ({problem})"
    where = "wgagent's k3s.flannel_backend" if name == FLANNEL_BACKEND else "wgagent"
    return ConfigFinding(
        path,
        None,
        f"ExecStart sets {shown}: {effect}; remove it from ExecStart (INSTALL_K3S_EXEC) and let {where} "
        "set it, then systemctl daemon-reload",
        code="exec_flag",
        key=name,
        value=value,
    )
