"""Read k3s's config files the way k3s does, and report what defeats wgagent's drop-in.

How k3s reads them (``pkg/configfilearg``, ``readConfigFile`` and ``dotDFiles``):

- ``<config_dir>/config.yaml`` if it exists, then every entry of ``config.yaml.d/`` whose
  name ends in ``.yaml`` or ``.yml`` (any case; directories skipped), in byte order of
  the name (Go's ``os.ReadDir``). Drop-ins work without the main file.
- Each file is one YAML mapping of flag names to values. The last value of a key wins;
  ``key+:`` appends to the value so far (both sides made lists). A list becomes one flag
  per item, and k3s splits list flags such as ``node-external-ip`` on commas too.
- A file that is not valid YAML, or not a mapping, stops k3s from starting at all.

:func:`scan_config` is pure (file names and contents in, findings out), so ``doctor``
and the k3s part share it; :func:`read_config_files` is its one I/O adapter::

    >>> files = {"config.yaml": b"flannel-backend: vxlan",
    ...          "config.yaml.d/50-wgagent.yaml": b"flannel-backend: wireguard-native",
    ...          "config.yaml.d/90-mine.yml": b"flannel-backend: vxlan"}
    >>> [str(f).split(": ")[0] for f in scan_config("/etc/rancher/k3s", files, role="server").errors]
    ['/etc/rancher/k3s/config.yaml.d/90-mine.yml:1']
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from wgagent import fsutil, yamlerr
from wgagent.k3s.flags import agent_accepts

MAIN = "config.yaml"
DROPIN_DIR = "config.yaml.d"
DROPIN_NAME = "50-wgagent.yaml"
MAX_FILE_BYTES = 1 << 20

NODE_EXTERNAL_IP = "node-external-ip"
ADVERTISE_ADDRESS = "advertise-address"
FLANNEL_BACKEND = "flannel-backend"
FLANNEL_EXTERNAL_IP = "flannel-external-ip"
WIREGUARD_BACKEND = "wireguard-native"


@dataclass(frozen=True)
class ConfigLocation:
    """Where k3s reads its config: the main file and its ``.d`` directory.

    ``/etc/rancher/k3s/config.yaml`` unless ``K3S_CONFIG_FILE`` or ``--config`` names another
    (k3s ``pkg/configfilearg`` ``DefaultParser``: ``ConfigFlags: ["--config", "-c"]``,
    ``EnvName: "K3S_CONFIG_FILE"``, ``DefaultConfig: "/etc/rancher/k3s/config.yaml"``); the
    drop-ins are always ``<main>.d/``. Files are named in a scan by their logical names
    (``config.yaml``, ``config.yaml.d/50-x.yaml``) and mapped here to real paths.

    >>> loc = ConfigLocation("/etc/k3s/main.yml", "K3S_CONFIG_FILE")
    >>> loc.path("config.yaml"), loc.path("config.yaml.d/50-wgagent.yaml")
    ('/etc/k3s/main.yml', '/etc/k3s/main.yml.d/50-wgagent.yaml')
    """

    main: str
    source: str = "the default"
    """Why this file: "the default", "K3S_CONFIG_FILE in /etc/systemd/system/k3s.service.env:1"..."""

    @classmethod
    def in_dir(cls, config_dir: str) -> ConfigLocation:
        return cls(os.path.join(config_dir, MAIN), "k3s.config_dir")

    @property
    def dropin_dir(self) -> str:
        return self.main + ".d"

    @property
    def directory(self) -> str:
        return os.path.dirname(self.main)

    def path(self, rel: str) -> str:
        """The real path of a logical name."""
        if rel == MAIN:
            return self.main
        if rel == DROPIN_DIR:
            return self.dropin_dir
        if rel.startswith(DROPIN_DIR + "/"):
            return os.path.join(self.dropin_dir, rel[len(DROPIN_DIR) + 1 :])
        return os.path.join(self.directory, rel)


def as_location(where: str | ConfigLocation) -> ConfigLocation:
    """A location from a config directory (``k3s.config_dir``) or a location."""
    return where if isinstance(where, ConfigLocation) else ConfigLocation.in_dir(where)


_OWNED_BY_KEY = {
    NODE_EXTERNAL_IP: "the public IP it discovers (public_ip.static pins one)",
    FLANNEL_BACKEND: "k3s.flannel_backend",
    FLANNEL_EXTERNAL_IP: "k3s.flannel_external_ip",
    ADVERTISE_ADDRESS: "k3s.advertise_private_address",
}

Value = str | tuple[str, ...] | None
"""A key's value as k3s sees it: the string of a scalar, a tuple for a list, None for null."""


def owned_keys(role: str | None) -> tuple[str, ...]:
    """The keys wgagent's drop-in sets: the flannel options are server flags, fatal on an agent."""
    if role == "server":
        return (NODE_EXTERNAL_IP, FLANNEL_BACKEND, FLANNEL_EXTERNAL_IP, ADVERTISE_ADDRESS)
    return (NODE_EXTERNAL_IP,)


@dataclass(frozen=True)
class Unreadable:
    """Stands in for a file's content when it could not be read; ``reason`` says why."""

    reason: str
    fatal: bool = True
    """Whether k3s would fail on it too (False: only wgagent declined to read it, e.g. too large)."""


FileContent = bytes | Unreadable


@dataclass(frozen=True)
class Setting:
    """Where a key got its effective value."""

    value: Value
    path: str
    line: int

    def items(self) -> tuple[str, ...]:
        """The value as k3s's list flags take it: list items, each split on commas."""
        raw = self.value if isinstance(self.value, tuple) else (self.value,) if self.value else ()
        return tuple(part.strip() for item in raw for part in item.split(",") if part.strip())


@dataclass(frozen=True)
class ConfigFinding:
    """Something in k3s's config a person should know; ``error`` ones fail the check."""

    path: str
    line: int | None
    message: str
    error: bool = True
    code: str = ""
    """What kind, for programs (``wgagent doctor``): ``unreadable``, ``invalid``, ``override`` (a
    later file sets an owned key), ``replaced`` (wgagent's drop-in replaces an earlier value),
    ``no_backend``, ``backend`` (flannel-backend is not WireGuard), ``exec_flag``, ``exec_config``,
    ``exec_config_unused`` (K3S_CONFIG_FILE wins over it), ``agent_key``."""
    key: str | None = None
    """The k3s flag it is about, when it is about one."""
    value: Value = None
    """That flag's value there."""

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Scan:
    files: tuple[str, ...]
    """Every file k3s reads, in its order (full paths)."""
    settings: Mapping[str, Setting]
    """Each key's effective value, as k3s will use it."""
    findings: tuple[ConfigFinding, ...] = ()
    own_values: Mapping[str, Setting] = field(default_factory=dict)
    """What wgagent's drop-in itself sets (empty when it is absent or unreadable)."""

    @property
    def errors(self) -> tuple[ConfigFinding, ...]:
        return tuple(f for f in self.findings if f.error)

    @property
    def notes(self) -> tuple[ConfigFinding, ...]:
        return tuple(f for f in self.findings if not f.error)


@dataclass(frozen=True)
class _Entry:
    key: str
    append: bool
    value: Value
    line: int


def k3s_reads(name: str) -> bool:
    """Whether k3s reads a ``config.yaml.d/`` entry of this name (``.yaml``/``.yml``, any case)."""
    return name.lower().endswith((".yaml", ".yml"))


def k3s_order(files: Iterable[str]) -> list[str]:
    """The relative paths k3s reads, in its order: ``config.yaml`` first, then the drop-ins
    sorted by the bytes of their name; anything else (``x.txt``, ``sub/x.yaml``) is left out."""
    names = set(files)
    dropins = [
        n for n in names if n.startswith(DROPIN_DIR + "/") and "/" not in n[len(DROPIN_DIR) + 1 :] and k3s_reads(n)
    ]
    ordered = [MAIN] if MAIN in names else []
    return ordered + sorted(dropins, key=lambda n: n.encode("utf-8", "surrogateescape"))


def go_string(value: Any) -> str:
    """A YAML scalar as k3s turns it into a flag value (wrangler's ``convert.ToString``)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _as_value(value: Any) -> Value:
    if value is None:
        return None
    if isinstance(value, list):
        return tuple(go_string(v) for v in value)
    return go_string(value)


def _as_list(value: Value) -> tuple[str, ...]:
    # k3s's toSlice(): a string is one item, a list stays, null or blank is empty
    if value is None:
        return ()
    if isinstance(value, tuple):
        return value
    return (value,)


def parse_file(path: str, content: FileContent) -> tuple[list[_Entry], ConfigFinding | None]:
    """The keys of one config file in file order, or the finding that says why k3s cannot use it."""
    text = _text(path, content)
    if isinstance(text, ConfigFinding):
        return [], text
    loader = yaml.SafeLoader(text)
    try:
        # k3s decodes only the first document of a file
        node = loader.get_node() if loader.check_node() else None
        if node is None:
            return [], None
        if not isinstance(node, yaml.MappingNode):
            return [], ConfigFinding(
                path,
                node.start_mark.line + 1,
                "not a mapping of k3s flags (key: value); k3s will not start with this file",
                code="invalid",
            )
        return _entries(loader, node), None
    except yaml.YAMLError as exc:
        message = f"not valid YAML ({yamlerr.problem(exc)}); k3s will not start until it is fixed"
        return [], ConfigFinding(path, yamlerr.line_of(exc), message, code="invalid")
    except (TypeError, ValueError) as exc:  # e.g. an unhashable key: still "does not parse"
        return [], ConfigFinding(
            path, None, f"not valid YAML ({exc}); k3s will not start until it is fixed", code="invalid"
        )
    finally:
        loader.dispose()


def _text(path: str, content: FileContent) -> str | ConfigFinding:
    """The file as text, or why k3s cannot read it (unreadable, not UTF-8)."""
    if isinstance(content, Unreadable):
        if not content.fatal:
            return ConfigFinding(path, None, f"not checked: {content.reason}", error=False, code="unreadable")
        return ConfigFinding(
            path, None, f"cannot read it ({content.reason}); k3s will not start while it cannot", code="unreadable"
        )
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"not UTF-8 text (byte {exc.start}); k3s will not start with this file"
        return ConfigFinding(path, None, message, code="invalid")


def _entries(loader: yaml.SafeLoader, node: yaml.MappingNode) -> list[_Entry]:
    """A mapping's keys in file order (merge keys flattened), ``key+`` marked as appending."""
    loader.flatten_mapping(node)
    entries = []
    for key_node, value_node in node.value:
        raw_key = go_string(loader.construct_object(key_node, deep=True))
        entries.append(
            _Entry(
                key=raw_key.removesuffix("+"),
                append=raw_key.endswith("+"),
                value=_as_value(loader.construct_object(value_node, deep=True)),
                line=key_node.start_mark.line + 1,
            )
        )
    return entries


def scan_config(
    where: str | ConfigLocation,
    files: Mapping[str, FileContent],
    *,
    role: str | None,
    own: str = DROPIN_NAME,
) -> Scan:
    """Merge k3s's config files like k3s and report what defeats wgagent's drop-in.

    ``where`` is the config location (or ``k3s.config_dir``); ``files`` maps logical names
    (``config.yaml``, ``config.yaml.d/10-x.yaml``) to their content; names k3s does not read
    are ignored, so a caller may pass a whole directory listing. ``role`` is ``server``,
    ``agent`` or None (unknown: only ``node-external-ip`` is checked). Errors (they fail the check):

    - a file k3s cannot parse or read (named, with the YAML error's line);
    - a file after wgagent's that sets (``key:``) or extends (``key+:``) a key wgagent owns;
    - on agents, every key ``k3s agent`` does not define (it exits on them: :mod:`flags`);
    - on servers, an effective ``flannel-backend`` that is not ``wireguard-native``
      (``wireguard`` gets its own message: removed in k3s 1.26).

    Notes (shown, never failing): an earlier file's value of an owned key that wgagent's
    drop-in replaces.
    """
    loc = as_location(where)
    order = k3s_order(files)
    merged = _merge(loc, files, order, f"{DROPIN_DIR}/{own}")
    findings = list(merged.problems)
    owned = _owned_key_findings(merged, role, own)
    findings += owned
    if role == "agent":
        findings += _agent_key_findings(merged)
    if role == "server":
        findings += _backend_findings(loc, merged, {(f.path, f.line) for f in owned}, own)
    rank = {loc.path(rel): index for index, rel in enumerate(order)}
    findings.sort(key=lambda f: (rank.get(f.path, -1), f.line or 0))
    return Scan(tuple(loc.path(r) for r in order), merged.settings, tuple(findings), merged.own_values)


@dataclass
class _Merged:
    """k3s's config files merged as k3s merges them, and where each key was set."""

    settings: dict[str, Setting] = field(default_factory=dict)
    own_values: dict[str, Setting] = field(default_factory=dict)
    occurrences: dict[str, list[tuple[int, str, _Entry]]] = field(default_factory=dict)
    own_index: int | None = None
    problems: list[ConfigFinding] = field(default_factory=list)


def _merge(loc: ConfigLocation, files: Mapping[str, FileContent], order: list[str], own_rel: str) -> _Merged:
    merged = _Merged()
    listing = files.get(DROPIN_DIR)
    if isinstance(listing, Unreadable):
        merged.problems.append(
            ConfigFinding(
                loc.dropin_dir,
                None,
                f"cannot list the directory ({listing.reason}); k3s will not start while it cannot",
                code="unreadable",
            )
        )
    for index, rel in enumerate(order):
        path = loc.path(rel)
        entries, problem = parse_file(path, files[rel])
        if problem is not None:
            merged.problems.append(problem)
            continue
        if rel == own_rel:
            merged.own_index = index
        for entry in entries:
            old = merged.settings.get(entry.key)
            value = _as_list(old.value) + _as_list(entry.value) if entry.append and old is not None else entry.value
            merged.settings[entry.key] = Setting(value, path, entry.line)
            merged.occurrences.setdefault(entry.key, []).append((index, path, entry))
            if rel == own_rel:
                merged.own_values[entry.key] = Setting(entry.value, path, entry.line)
    return merged


def _owned_key_findings(merged: _Merged, role: str | None, own: str) -> list[ConfigFinding]:
    """A later file overriding (error) or an earlier one replaced by (note) a key wgagent owns."""
    if merged.own_index is None:
        return []
    out = []
    for key in owned_keys(role):
        ours = merged.own_values.get(key)
        if ours is None and key == ADVERTISE_ADDRESS:  # written only when asked for: otherwise the user's
            continue
        for index, path, entry in merged.occurrences.get(key, []):
            if index > merged.own_index:
                message = _override_message(key, entry, ours, own)
                out.append(ConfigFinding(path, entry.line, message, code="override", key=key, value=entry.value))
            elif index < merged.own_index and ours is not None:
                out.append(
                    ConfigFinding(
                        path,
                        entry.line,
                        f"{key}{'+' if entry.append else ''}: {_show(entry.value)} is replaced by wgagent's "
                        f"{own} ({_show(ours.value)})",
                        error=False,
                        code="replaced",
                        key=key,
                        value=entry.value,
                    )
                )
    return out


def _agent_key_findings(merged: _Merged) -> list[ConfigFinding]:
    """Every key an agent's ``k3s agent`` does not define: it exits at start on the first one."""
    out = []
    for key, places in merged.occurrences.items():
        if agent_accepts(key):
            continue
        for _, path, entry in places:
            out.append(
                ConfigFinding(
                    path,
                    entry.line,
                    f"{key}{'+' if entry.append else ''}: is not a k3s agent flag: k3s agent will not start "
                    f'("flag provided but not defined: -{key}"); remove it from this file (it belongs in the '
                    "servers' config)",
                    code="agent_key",
                    key=key,
                    value=entry.value,
                )
            )
    return out


def _backend_findings(
    loc: ConfigLocation, merged: _Merged, reported: set[tuple[str, int | None]], own: str
) -> list[ConfigFinding]:
    """On a server: flannel-backend must be wireguard-native (unless an override already says so)."""
    backend = merged.settings.get(FLANNEL_BACKEND)
    if backend is None:
        return [
            ConfigFinding(
                loc.main,
                None,
                "no file sets flannel-backend, so k3s uses vxlan: flannel does not use WireGuard",
                code="no_backend",
                key=FLANNEL_BACKEND,
            )
        ]
    problem_text = backend_problem(backend.value)
    if (backend.path, backend.line) in reported or problem_text is None:
        return []
    ours_text = " (wgagent's k3s.flannel_backend)" if backend.path.endswith(f"/{DROPIN_DIR}/{own}") else ""
    return [
        ConfigFinding(
            backend.path,
            backend.line,
            f"{FLANNEL_BACKEND}: {problem_text}{ours_text}",
            error=not ours_text,
            code="backend",
            key=FLANNEL_BACKEND,
            value=backend.value,
        )
    ]


def backend_problem(value: Value) -> str | None:
    """Why a ``flannel-backend`` value is not flannel over WireGuard (a phrase), or None when it is.

    k3s takes options after ``=`` (``wireguard-native=Mode=auto``); only the name counts.
    """
    text = value[-1] if isinstance(value, tuple) and value else value if isinstance(value, str) else ""
    name = text.partition("=")[0].strip()
    if name == WIREGUARD_BACKEND:
        return None
    if name == "wireguard":
        return "'wireguard' was removed in k3s 1.26 (k3s refuses to start flannel with it); use 'wireguard-native'"
    return f"{name or 'empty'!r} is not WireGuard: flannel does not use wireguard-native"


def _override_message(key: str, entry: _Entry, ours: Setting | None, own: str) -> str:
    mine = f"wgagent's {_show(ours.value)} ({own})" if ours is not None else f"wgagent's {own}"
    if entry.append:
        effect = f"{key}+: {_show(entry.value)} here adds to {mine}: k3s uses both"
    else:
        effect = f"{key}: {_show(entry.value)} here overrides {mine}: k3s uses this value"
        if key == FLANNEL_BACKEND and (problem := backend_problem(entry.value)) is not None:
            effect += f" ({problem})"
    return f"{effect}; remove it here (wgagent sets {key} from {_OWNED_BY_KEY[key]})"


def _show(value: Value) -> str:
    if value is None:
        return "null"
    if isinstance(value, tuple):
        return "[" + ", ".join(value) + "]"
    return repr(value)


def read_config_files(where: str | ConfigLocation, *, max_bytes: int = MAX_FILE_BYTES) -> dict[str, FileContent]:
    """The files :func:`scan_config` needs, read from disk, by logical name; never raises.

    The main file when it exists, and every entry of its ``.d`` directory k3s would read.
    """
    loc = as_location(where)
    files: dict[str, FileContent] = {}
    candidates = [MAIN]
    dropin_dir = loc.dropin_dir
    try:
        with os.scandir(dropin_dir) as it:
            for entry in it:
                # k3s skips directories (not following symlinks) and reads the rest
                if k3s_reads(entry.name) and not entry.is_dir(follow_symlinks=False):
                    candidates.append(f"{DROPIN_DIR}/{entry.name}")
    except FileNotFoundError:
        pass
    except OSError as exc:
        files[DROPIN_DIR] = Unreadable(exc.strerror or str(exc))
    for rel in candidates:
        content = _read(loc.path(rel), max_bytes)
        if content is not None:
            files[rel] = content
    return files


def _read(path: str, max_bytes: int) -> FileContent | None:
    try:
        return fsutil.read_capped(path, max_bytes)
    except fsutil.FileTooLarge as exc:
        return Unreadable(exc.strerror or "too large", fatal=False)
    except OSError as exc:
        return Unreadable(exc.strerror or str(exc))
