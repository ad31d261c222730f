"""Which k3s runs here (server or agent, and its systemd unit), and the node's name.

Role, ``k3s.role: auto``: the unit file that exists (``k3s.service`` -> server,
``k3s-agent.service`` -> agent; a masked unit, linked to /dev/null or empty, does not
count), then the data dir (``<data_dir>/server`` -> server, else ``<data_dir>/agent`` ->
agent: a server has both). The k3s install script writes its unit to /etc/systemd/system.

Node name, as k3s derives it (``util.GetHostnameAndIPs`` and the agent config): the
``node-name`` flag (last value in the config files) or else the hostname, lower-cased;
with ``with-node-id: true`` k3s appends ``-`` and the id in ``/etc/rancher/node/id``. wgagent's
own ``node_name`` setting, when given, is taken as is. (``K3S_NODE_NAME`` in k3s's unit
environment and ``--node-name`` on its command line are not read: set ``node_name`` then.)
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from wgagent import fsutil
from wgagent.config import Config, K3sConfig
from wgagent.k3s.scan import FileContent, scan_config

UNIT_DIRS = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
)
"""Where systemd looks for unit files, highest priority first."""

UNITS = {"server": "k3s.service", "agent": "k3s-agent.service"}
NODE_ID_FILE = "/etc/rancher/node/id"


@dataclass(frozen=True)
class Role:
    name: str
    """``server`` or ``agent``."""
    unit: str
    """The systemd unit that runs it: ``k3s.service`` or ``k3s-agent.service``."""
    how: str
    """How it was found, for /status: "k3s.role: server", "unit /etc/systemd/system/k3s.service"."""


def find_unit(unit: str, unit_dirs: Sequence[str] = UNIT_DIRS) -> str | None:
    """The path of the unit file systemd would use, or None (absent or masked)."""
    for directory in unit_dirs:
        path = os.path.join(directory, unit)
        try:
            if os.path.realpath(path) == os.devnull or os.path.getsize(path) == 0:
                return None  # masked here: lower-priority copies do not count
        except OSError:
            continue
        return path
    return None


def detect_role(cfg: K3sConfig, *, unit_dirs: Sequence[str] = UNIT_DIRS) -> Role | None:
    """This node's k3s role and unit, or None when nothing says (no k3s installed yet).

    >>> detect_role(K3sConfig(role="agent")).unit
    'k3s-agent.service'
    """
    if cfg.role != "auto":
        return Role(cfg.role, UNITS[cfg.role], f"k3s.role: {cfg.role}")
    found = {role: find_unit(unit, unit_dirs) for role, unit in UNITS.items()}
    present = {role: path for role, path in found.items() if path is not None}
    if len(present) == 1:
        (role, path), *_ = present.items()
        return Role(role, UNITS[role], f"unit {path}")
    for role in ("server", "agent"):  # the order matters: a server has an agent dir too
        if os.path.isdir(os.path.join(cfg.data_dir, role)):
            both = " (both units exist)" if present else ""
            return Role(role, UNITS[role], f"data dir {os.path.join(cfg.data_dir, role)}{both}")
    return None


def role_missing_detail(cfg: K3sConfig, unit_dirs: Sequence[str] = UNIT_DIRS) -> str:
    """One line for the check when :func:`detect_role` found nothing."""
    present = [u for u in UNITS.values() if find_unit(u, unit_dirs)]
    if len(present) == 2:
        return (
            f"both k3s.service and k3s-agent.service exist and {cfg.data_dir} does not tell which runs; "
            "set k3s.role to server or agent"
        )
    return (
        f"no k3s found: neither k3s.service nor k3s-agent.service in {', '.join(unit_dirs)}, "
        f"nor {cfg.data_dir}/server or /agent; install k3s, or set k3s.role (or k3s.enabled: false)"
    )


@dataclass(frozen=True)
class NodeName:
    name: str
    source: str
    """Where it came from: "wgagent node_name", "node-name in <file>:<line>", "hostname"."""


def node_name(
    cfg: Config,
    files: Mapping[str, FileContent] | None = None,
    *,
    hostname: Callable[[], str] = socket.gethostname,
    node_id: Callable[[], str | None] | None = None,
) -> NodeName:
    """The Kubernetes Node name k3s registers this node under.

    ``files`` are k3s's config files (:func:`wgagent.k3s.scan.read_config_files`), read
    from ``cfg.k3s.config_dir`` when not given; ``node_id`` returns the content of
    ``/etc/rancher/node/id`` (None when absent: k3s has not created it yet, and the name
    is then given without the suffix).

    >>> node_name(Config(node_name="web-1"), {}).name
    'web-1'
    >>> node_name(Config(), {"config.yaml": b"node-name: Web-2"}).name
    'web-2'
    """
    if cfg.node_name:
        return NodeName(cfg.node_name, "wgagent node_name")
    if files is None:
        from wgagent.k3s.scan import read_config_files

        files = read_config_files(cfg.k3s.config_dir)
    settings = scan_config(cfg.k3s.config_dir, files, role=None).settings
    given = settings.get("node-name")
    if given is not None and isinstance(given.value, str) and given.value.strip():
        name, source = given.value.strip(), f"node-name in {given.path}:{given.line}"
    else:
        name, source = hostname(), "hostname"
    name = name.lower()
    with_id = settings.get("with-node-id")
    if with_id is not None and isinstance(with_id.value, str) and _go_bool(with_id.value):
        ident = (node_id or _read_node_id)()
        if ident:
            name, source = f"{name}-{ident}", f"{source} + with-node-id ({NODE_ID_FILE})"
        else:
            source += f" (with-node-id is set but {NODE_ID_FILE} does not exist yet)"
    return NodeName(name, source)


@dataclass(frozen=True)
class Identity:
    """Who this node is, decided once at start (and again on reload) and handed to every
    consumer: the Kubernetes Node name and the k3s role (None while no k3s is installed)."""

    node: str
    node_source: str
    """Where the name came from (:class:`NodeName`'s ``source``)."""
    role: Role | None

    @property
    def role_name(self) -> str | None:
        return self.role.name if self.role is not None else None


def decide_identity_from(
    cfg: Config,
    *,
    unit_dirs: Sequence[str] = UNIT_DIRS,
    hostname: Callable[[], str] = socket.gethostname,
    files: Mapping[str, FileContent] | None = None,
) -> Identity:
    """The node's name (:func:`node_name`) and role (:func:`detect_role`), together.

    >>> ident = decide_identity_from(Config(node_name="web-1", k3s=K3sConfig(role="agent")))
    >>> ident.node, ident.role_name
    ('web-1', 'agent')
    """
    name = node_name(cfg, files, hostname=hostname)
    return Identity(name.name, name.source, detect_role(cfg.k3s, unit_dirs=unit_dirs))


def _go_bool(text: str) -> bool:
    # strconv.ParseBool, which k3s's boolean flags use
    return text.strip() in ("1", "t", "T", "true", "TRUE", "True")


def _read_node_id() -> str | None:
    return (fsutil.peek_text(NODE_ID_FILE, 256) or "").strip() or None
