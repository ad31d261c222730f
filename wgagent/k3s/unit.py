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
import shlex
from collections.abc import Sequence

from wgagent import fsutil
from wgagent.k3s.scan import (
    FLANNEL_BACKEND,
    FLANNEL_EXTERNAL_IP,
    MAIN,
    NODE_EXTERNAL_IP,
    Finding,
    backend_problem,
    owned_keys,
)

MAX_UNIT_BYTES = 256 << 10


def read_unit(unit: str, unit_dirs: Sequence[str]) -> list[tuple[str, str]]:
    """The unit file systemd uses and its ``<unit>.d/*.conf`` drop-ins, in systemd's order.

    Never raises: unreadable files are left out (the scan is advice, not a gate).
    """
    files: list[tuple[str, str]] = []
    for directory in unit_dirs:
        text = _read(os.path.join(directory, unit))
        if text is not None:
            files.append((os.path.join(directory, unit), text))
            break
    dropins: dict[str, str] = {}
    for directory in unit_dirs:  # a name in a higher-priority dir hides the same name below
        try:
            names = os.listdir(os.path.join(directory, unit + ".d"))
        except OSError:
            continue
        for name in names:
            if name.endswith(".conf") and name not in dropins:
                dropins[name] = os.path.join(directory, unit + ".d", name)
    for name in sorted(dropins):
        text = _read(dropins[name])
        if text is not None:
            files.append((dropins[name], text))
    return files


def _read(path: str) -> str | None:
    return fsutil.peek_text(path, MAX_UNIT_BYTES)


def exec_start(files: Sequence[tuple[str, str]]) -> tuple[str, list[str]] | None:
    """The effective ``ExecStart=`` (the file that set it, its argv), or None.

    An empty ``ExecStart=`` in a drop-in clears the ones before it, as in systemd.
    """
    found: tuple[str, list[str]] | None = None
    for path, text in files:
        section = ""
        for line in _logical_lines(text):
            if line.startswith("[") and line.endswith("]"):
                section = line
                continue
            key, sep, value = line.partition("=")
            if not sep or section != "[Service]" or key.strip() != "ExecStart":
                continue
            value = value.strip().lstrip("-@+!:")
            if not value:
                found = None
                continue
            try:
                found = (path, shlex.split(value))
            except ValueError:
                found = (path, value.split())
    return found


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped[0] in "#;"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    if pending:
        lines.append(pending)
    return lines


def scan_unit(files: Sequence[tuple[str, str]], *, role: str, config_dir: str) -> list[Finding]:
    """Findings about k3s's command line that defeat wgagent's drop-in."""
    found = exec_start(files)
    if found is None:
        return []
    path, argv = found
    findings: list[Finding] = []
    owned = owned_keys(role)
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-"):
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if name in ("config", "c"):
            if not eq and i < len(argv):
                value, i = argv[i], i + 1
            if os.path.normpath(value) != os.path.join(config_dir, MAIN):
                findings.append(
                    Finding(
                        path,
                        None,
                        f"ExecStart makes k3s read {value} (--config), so it never reads {config_dir}/config.yaml.d/;"
                        f" set k3s.config_dir to {os.path.dirname(value)}",
                        code="exec_config",
                        value=value,
                    )
                )
            continue
        if name not in owned:
            continue
        if not eq and name != FLANNEL_EXTERNAL_IP and i < len(argv) and not argv[i].startswith("-"):
            value, i = argv[i], i + 1
        shown = f"--{name}={value}" if eq or value else f"--{name}"
        if name == NODE_EXTERNAL_IP:
            effect = "k3s adds it to the drop-in's node-external-ip"
        else:
            effect = f"it overrides the drop-in's {name} (command-line flags beat config files)"
            if name == FLANNEL_BACKEND and (problem := backend_problem(value)) is not None:
                effect += f" ({problem})"
        where = "wgagent's k3s.flannel_backend" if name == FLANNEL_BACKEND else "wgagent"
        findings.append(
            Finding(
                path,
                None,
                f"ExecStart sets {shown}: {effect}; remove it from ExecStart (INSTALL_K3S_EXEC) and let {where} "
                "set it, then systemctl daemon-reload",
                code="exec_flag",
                key=name,
                value=value if eq or value else None,
            )
        )
    return findings
