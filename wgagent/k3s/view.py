"""What k3s will use at its next start, for the parts that must not fight it.

k3s turns config-file keys into flags placed before its command line's (k3s
``pkg/configfilearg``), so a list flag such as ``node-external-ip`` is the config files'
items followed by ExecStart's, each split on commas; a scalar such as
``flannel-external-ip`` is the command line's when given, else the last file's. At start,
k3s publishes the list as ``k3s.io/external-ip`` and, with ``flannel-external-ip`` on, sets
each family's overwrite to that family's last address (docs/UPSTREAM.md).

:func:`read_view` predicts this with wgagent's drop-in as the k3s part is about to write
it, so the annotation part can tell "the drop-in will say so" from "something overrides
wgagent" before either part has run.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from wgagent.config import K3sConfig
from wgagent.k3s.dropin import render_dropin
from wgagent.k3s.role import Identity
from wgagent.k3s.scan import (
    DROPIN_DIR,
    DROPIN_NAME,
    FLANNEL_EXTERNAL_IP,
    NODE_EXTERNAL_IP,
    FileContent,
    Setting,
    read_config_files,
    scan_config,
)
from wgagent.model import PublicAddresses


@dataclass(frozen=True)
class ExternalIP:
    """One family's ``node-external-ip`` as k3s will take it."""

    value: str | None
    source: str
    """Where it was set: "wgagent's 50-wgagent.yaml", "/etc/rancher/k3s/config.yaml.d/90-x.yaml:3", "ExecStart"."""
    ours: bool


@dataclass(frozen=True)
class K3sView:
    ipv4: ExternalIP
    ipv6: ExternalIP
    flannel_external_ip: bool | None
    """This node's effective ``flannel-external-ip``: known on a server; None on an agent,
    which takes the servers' (k3s hands it to every agent)."""
    dropin_written: bool = True
    """wgagent's drop-in on disk already says what it is about to say (False: the k3s part has
    yet to write it, so k3s cannot have started with it)."""

    def family(self, version: int) -> ExternalIP:
        return self.ipv4 if version == 4 else self.ipv6


def _family_of(item: str) -> int | None:
    try:
        return ipaddress.ip_address(item).version
    except ValueError:
        return None


def view_of(
    setting: Setting | None, own_path: str, cli_items: Sequence[str], cli_source: str, fei: str | None
) -> K3sView:
    """The view from the merged config setting of ``node-external-ip``, the command line's
    items and ``flannel-external-ip``'s value (pure).

    >>> s = Setting(("203.0.113.7",), "/etc/rancher/k3s/config.yaml.d/50-wgagent.yaml", 7)
    >>> v = view_of(s, s.path, [], "", "true")
    >>> v.ipv4, v.ipv6.value, v.flannel_external_ip
    (ExternalIP(value='203.0.113.7', source="wgagent's 50-wgagent.yaml", ours=True), None, True)
    """
    found: dict[int, ExternalIP] = {}
    items = [(i, setting.path, setting.line) for i in setting.items()] if setting is not None else []
    for item, path, line in [*items, *((i, cli_source, None) for i in cli_items)]:
        family = _family_of(item)
        if family is None:
            continue
        ours = path == own_path
        source = f"wgagent's {DROPIN_NAME}" if ours else (f"{path}:{line}" if line is not None else path)
        found[family] = ExternalIP(item, source, ours)
    none = ExternalIP(None, "not set", False)
    flag = None if fei is None else fei.strip().lower() in ("true", "1", "t")
    return K3sView(found.get(4, none), found.get(6, none), flag)


def read_view(identity: Identity, k3s: K3sConfig, addresses: PublicAddresses | None) -> K3sView:
    """k3s's view at its next start, with wgagent's drop-in as it is about to be written
    (``addresses`` in the families wgagent manages; None: as it is now)."""
    return view_from(identity, k3s, read_config_files(identity.config), addresses)


def view_from(
    identity: Identity, k3s: K3sConfig, config_files: Mapping[str, FileContent], addresses: PublicAddresses | None
) -> K3sView:
    """:func:`read_view` over config files already read (``read_config_files(identity.config)``;
    pure: ``wgagent doctor`` passes the files it gathered, as on disk, with ``addresses`` None)."""
    files = dict(config_files)
    own_rel = f"{DROPIN_DIR}/{DROPIN_NAME}"
    role_keys = "server" if identity.server_keys_safe else "agent"
    written = True
    if k3s.enabled and addresses is not None:
        rendered = render_dropin(role_keys, addresses, k3s).encode()
        written = files.get(own_rel) == rendered
        files[own_rel] = rendered
    settings = scan_config(identity.config, files, role=None).settings
    cli: list[str] = []
    fei_cli: str | None = None
    unit = identity.unit
    if unit is not None:
        args = list(unit.flags)
        for i, arg in enumerate(args):
            name, eq, value = arg.lstrip("-").partition("=")
            if name == NODE_EXTERNAL_IP:
                value = value if eq else (args[i + 1] if i + 1 < len(args) else "")
                cli += [v.strip() for v in value.split(",") if v.strip()]
            elif name == FLANNEL_EXTERNAL_IP:
                fei_cli = value if eq else "true"
    fei_setting = settings.get(FLANNEL_EXTERNAL_IP)
    fei: str | None = fei_cli if fei_cli is not None else (str(fei_setting.value) if fei_setting else "false")
    if identity.role_name != "server":
        fei = None  # an agent takes the servers' value
    own_path = identity.config.path(own_rel)
    cli_source = f"ExecStart of {unit.path}" if unit is not None else "ExecStart"
    return replace(view_of(settings.get(NODE_EXTERNAL_IP), own_path, cli, cli_source, fei), dropin_written=written)
