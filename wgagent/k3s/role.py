"""Who this node is, decided once: its Node name, its k3s role and unit, and where k3s reads its config.

:func:`decide_identity_from` reads the host once (k3s's units, their environment, the config
files) and returns an :class:`Identity`; the composition root hands it to every consumer,
and decides it again on reload or when k3s turns up after wgagent started.

Role, ``k3s.role: auto``: the k3s unit present and its ExecStart (``install.decide_role``);
without any unit, the data dir (``<data_dir>/server`` -> server, else ``<data_dir>/agent``;
a server has both), which is weak evidence: then wgagent writes no server-only key.

Node name, as k3s derives it (``util.GetHostnameAndIPs`` and the agent config): ``--node-name``
on the command line, else ``node-name`` in the config files (last value wins: k3s turns them
into flags before the command line's), else ``K3S_NODE_NAME`` in the unit's environment
(urfave/cli reads a flag's variable only when the flag is unset), else the hostname,
lower-cased; with ``with-node-id: true`` k3s appends ``-`` and the id in ``/etc/rancher/node/id``.
wgagent's own ``node_name``, when given, is taken as is. The config file, data dir and the
server's admin kubeconfig follow the same order (``--config``/``K3S_CONFIG_FILE``,
``--data-dir``/``K3S_DATA_DIR``, ``--write-kubeconfig``/``K3S_KUBECONFIG_OUTPUT``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from wgagent import fsutil
from wgagent.config import Config, K3sConfig
from wgagent.k3s.install import DEFAULT_UNITS, UNIT_DIRS, Role, Unit, decide_role, find_units
from wgagent.k3s.scan import ConfigLocation, FileContent, read_config_files, scan_config

__all__ = [
    "UNIT_DIRS",
    "Identity",
    "NodeName",
    "Role",
    "decide_identity_from",
    "detect_role",
    "node_name",
    "role_missing_detail",
]

NODE_ID_FILE = "/etc/rancher/node/id"


@dataclass(frozen=True)
class NodeName:
    name: str
    source: str
    """Where it came from: "wgagent node_name", "node-name in <file>:<line>", "hostname"."""


@dataclass(frozen=True)
class Identity:
    """Who this node is, decided once at start (and again on reload) and handed to every
    consumer: the Kubernetes Node name, the k3s role (None while no k3s is installed, or while
    the evidence disagrees), the unit that runs k3s, and where k3s reads its config."""

    node: str
    node_source: str
    """Where the name came from (:class:`NodeName`'s ``source``)."""
    role: Role | None
    config: ConfigLocation
    """Where k3s reads its config (never a default: every caller says where)."""
    data_dir: str
    unit: Unit | None = None
    conflict: str = ""
    """Why the role is not known although k3s seems installed (two units...)."""
    notes: tuple[str, ...] = ()
    kubeconfig: str | None = None
    """Where the server writes its admin kubeconfig when told (``--write-kubeconfig``,
    ``K3S_KUBECONFIG_OUTPUT``); None: ``<k3s.config_dir>/k3s.yaml`` (k3s's default is
    ``/etc/rancher/k3s/k3s.yaml``)."""

    @property
    def role_name(self) -> str | None:
        return self.role.name if self.role is not None else None

    @property
    def server_keys_safe(self) -> bool:
        """Whether wgagent may write server-only keys: only for a server known for sure (an
        agent given one does not start at all)."""
        return self.role is not None and self.role.name == "server" and self.role.certain


def decide_identity_from(
    cfg: Config,
    *,
    unit_dirs: Sequence[str] = UNIT_DIRS,
    hostname: Callable[[], str] = socket.gethostname,
    files: Mapping[str, FileContent] | None = None,
) -> Identity:
    """Read the host once and decide the node's identity (see the module doc).

    >>> ident = decide_identity_from(Config(node_name="web-1", k3s=K3sConfig(role="agent")), unit_dirs=())
    >>> ident.node, ident.role_name, ident.config.main
    ('web-1', 'agent', '/etc/rancher/k3s/config.yaml')
    """
    k3s = cfg.k3s
    units = find_units(unit_dirs, named=k3s.unit)
    data_dirs = {r: os.path.isdir(os.path.join(k3s.data_dir, r)) for r in ("server", "agent")}
    decision = decide_role(k3s.role, k3s.unit, units, data_dirs)
    unit = decision.unit
    flags = _unit_flags(unit)
    location = config_location(k3s, unit, flags)
    files = read_config_files(location) if files is None else files
    settings = {
        k: (s.value, f"{k} in {s.path}:{s.line}") for k, s in scan_config(location, files, role=None).settings.items()
    }
    name = node_name(cfg, files, hostname=hostname, location=location, flags=flags, env=_env(unit))
    return Identity(
        name.name,
        name.source,
        decision.role,
        location,
        _first(flags, settings, _env(unit), ("data-dir", "d"), "K3S_DATA_DIR") or k3s.data_dir,
        unit,
        decision.conflict,
        decision.notes,
        _first(flags, settings, _env(unit), ("write-kubeconfig", "o"), "K3S_KUBECONFIG_OUTPUT"),
    )


def _unit_flags(unit: Unit | None) -> dict[str, str]:
    """``--name=value`` / ``--name value`` flags of the unit's ExecStart (the last one wins)."""
    out: dict[str, str] = {}
    args = list(unit.flags) if unit is not None else []
    i = 0
    while i < len(args):
        name, eq, value = args[i].lstrip("-").partition("=")
        i += 1
        if not args[i - 1].startswith("-"):
            continue
        if not eq and i < len(args) and not args[i].startswith("-"):
            value, i = args[i], i + 1
        out[name] = value
    return out


def _env(unit: Unit | None) -> dict[str, str]:
    return {k: s.value for k, s in unit.env.items()} if unit is not None else {}


def _first(
    flags: Mapping[str, str],
    settings: Mapping[str, tuple[object, str]],
    env: Mapping[str, str],
    names: tuple[str, ...],
    variable: str,
) -> str | None:
    """A setting as k3s takes it: command line, config files, then the environment."""
    for name in names:
        if flags.get(name):
            return flags[name]
    for name in names:
        value = settings.get(name, (None, ""))[0]
        if isinstance(value, str) and value:
            return value
    return env.get(variable) or None


def config_location(k3s: K3sConfig, unit: Unit | None, flags: Mapping[str, str]) -> ConfigLocation:
    """Where k3s reads its config: ``K3S_CONFIG_FILE`` in its environment, else ``--config``/``-c``
    on its command line (k3s ``pkg/configfilearg/parser.go``: the variable is looked at first;
    docs/UPSTREAM.md §2), else ``<k3s.config_dir>/config.yaml``."""
    setting = unit.env.get("K3S_CONFIG_FILE") if unit is not None else None
    if setting is not None and setting.value:
        return ConfigLocation(os.path.normpath(setting.value), f"K3S_CONFIG_FILE in {setting.source}")
    for name in ("config", "c"):
        if flags.get(name):
            where = unit.path if unit is not None else "?"
            return ConfigLocation(os.path.normpath(flags[name]), f"--{name} in ExecStart of {where}")
    return ConfigLocation.in_dir(k3s.config_dir)


def detect_role(k3s: K3sConfig, *, unit_dirs: Sequence[str] = UNIT_DIRS) -> Role | None:
    """The role alone, from a fresh look at the host (None: unknown or disputed)."""
    data_dirs = {r: os.path.isdir(os.path.join(k3s.data_dir, r)) for r in ("server", "agent")}
    return decide_role(k3s.role, k3s.unit, find_units(unit_dirs, named=k3s.unit), data_dirs).role


def role_missing_detail(cfg: K3sConfig, unit_dirs: Sequence[str] = UNIT_DIRS, identity: Identity | None = None) -> str:
    """One line for the check when no role is known."""
    if identity is not None and identity.conflict:
        return f"{identity.conflict} (wgagent writes only the agent-safe drop-in until then)"
    return (
        f"no k3s found: neither {DEFAULT_UNITS['server']} nor {DEFAULT_UNITS['agent']} (nor another k3s-*.service) in "
        f"{', '.join(unit_dirs)}, nor {cfg.data_dir}/server or /agent; install k3s, or set k3s.role "
        "(or k3s.enabled: false)"
    )


def node_name(
    cfg: Config,
    files: Mapping[str, FileContent] | None = None,
    *,
    hostname: Callable[[], str] = socket.gethostname,
    node_id: Callable[[], str | None] | None = None,
    location: ConfigLocation | None = None,
    flags: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> NodeName:
    """The Kubernetes Node name k3s registers this node under.

    ``files`` are k3s's config files (:func:`wgagent.k3s.scan.read_config_files`), read
    from ``location`` when not given; ``flags`` and ``env`` are the unit's command line and
    environment; ``node_id`` returns the content of ``/etc/rancher/node/id`` (None when
    absent: k3s has not created it yet, and the name is then given without the suffix).

    >>> node_name(Config(node_name="web-1"), {}).name
    'web-1'
    >>> node_name(Config(), {"config.yaml": b"node-name: Web-2"}).name
    'web-2'
    >>> node_name(Config(), {"config.yaml": b"node-name: web-2"}, flags={"node-name": "web-3"}).name
    'web-3'
    """
    if cfg.node_name:
        return NodeName(cfg.node_name, "wgagent node_name")
    location = location or ConfigLocation.in_dir(cfg.k3s.config_dir)
    if files is None:
        files = read_config_files(location)
    settings = scan_config(location, files, role=None).settings
    name, source = _given_name(settings, flags or {}, env or {}, hostname)
    name = name.lower()
    with_id = (flags or {}).get("with-node-id")
    with_id_setting = settings.get("with-node-id")
    if with_id is None and with_id_setting is not None and isinstance(with_id_setting.value, str):
        with_id = with_id_setting.value
    if with_id is not None and _go_bool(with_id or "true"):
        ident = (node_id or _read_node_id)()
        if ident:
            name, source = f"{name}-{ident}", f"{source} + with-node-id ({NODE_ID_FILE})"
        else:
            source += f" (with-node-id is set but {NODE_ID_FILE} does not exist yet)"
    return NodeName(name, source)


def _given_name(
    settings: Mapping[str, object], flags: Mapping[str, str], env: Mapping[str, str], hostname: Callable[[], str]
) -> tuple[str, str]:
    if flags.get("node-name", "").strip():
        return flags["node-name"].strip(), "--node-name in k3s's ExecStart"
    given = settings.get("node-name")
    value = getattr(given, "value", None)
    if isinstance(value, str) and value.strip():
        return value.strip(), f"node-name in {getattr(given, 'path', '?')}:{getattr(given, 'line', '?')}"
    if env.get("K3S_NODE_NAME", "").strip():
        return env["K3S_NODE_NAME"].strip(), "K3S_NODE_NAME in k3s's environment"
    return hostname(), "hostname"


def _go_bool(text: str) -> bool:
    # strconv.ParseBool, which k3s's boolean flags use
    return text.strip() in ("1", "t", "T", "true", "TRUE", "True")


def _read_node_id() -> str | None:
    return (fsutil.peek_text(NODE_ID_FILE, 256) or "").strip() or None
