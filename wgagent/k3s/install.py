"""How k3s is installed on this host: its systemd unit, command line and environment, and so its role.

What the install script does (k3s-io/k3s ``install.sh``, ``setup_env``/``create_env_file``/
``create_systemd_service_file``; docs/UPSTREAM.md):

- the unit is ``k3s.service`` for a server, ``k3s-agent.service`` for an agent, or
  ``k3s-<INSTALL_K3S_NAME>.service`` for either, in ``/etc/systemd/system``;
- ``ExecStart=/usr/local/bin/k3s server|agent <INSTALL_K3S_EXEC...>``;
- ``EnvironmentFile=-/etc/default/%N``, ``-/etc/sysconfig/%N`` and
  ``-/etc/systemd/system/<unit>.service.env`` (``K3S_*`` variables the script was given).

k3s itself reads ``K3S_CONFIG_FILE`` (else ``--config``/``-c``, else
``/etc/rancher/k3s/config.yaml``) and that file's ``.d`` directory; ``K3S_NODE_NAME``,
``K3S_DATA_DIR`` and ``K3S_KUBECONFIG_OUTPUT`` stand in for ``--node-name``, ``--data-dir``
and ``--write-kubeconfig`` (urfave/cli ``EnvVars``). A flag given on the command line or in a
config file wins over the variable: k3s turns config-file keys into flags
(``pkg/configfilearg``), and urfave/cli reads a flag's variable only when the flag is unset.

:func:`find_units` reads every k3s unit present; :func:`decide_role` picks the one that runs
k3s, pure, and says so when the evidence disagrees (two units both enabled, a unit whose
name says one role and whose ExecStart the other): then no role is taken, and the k3s part
writes the agent-safe drop-in (no server-only key: an agent exits on them).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from wgagent import fsutil

UNIT_DIRS = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
)
"""Where systemd looks for unit files, highest priority first."""

DEFAULT_UNITS = {"server": "k3s.service", "agent": "k3s-agent.service"}
MAX_UNIT_BYTES = 256 << 10
ENV_KEYS = ("K3S_CONFIG_FILE", "K3S_NODE_NAME", "K3S_DATA_DIR", "K3S_KUBECONFIG_OUTPUT")
"""The variables of k3s's environment that wgagent reads."""


@dataclass(frozen=True)
class EnvSetting:
    """A value and where it came from, for messages: ``/etc/systemd/system/k3s.service.env:2``."""

    value: str
    source: str


@dataclass(frozen=True)
class Unit:
    """One k3s unit as systemd would run it."""

    name: str
    path: str
    """The unit file systemd uses (the highest-priority directory's)."""
    files: tuple[tuple[str, str], ...]
    """The unit file and its ``.d/*.conf`` drop-ins, in systemd's order: (path, text)."""
    argv: tuple[str, ...] = ()
    """The effective ``ExecStart=`` command line; empty when none."""
    exec_from: str = ""
    """The file that set it."""
    env: Mapping[str, EnvSetting] = field(default_factory=dict)
    """``Environment=`` and ``EnvironmentFile=`` variables (later ones win), with their source."""
    enabled: bool = False
    """A ``*.wants/`` link to it exists (``systemctl enable``)."""

    @property
    def subcommand(self) -> str | None:
        """``server`` or ``agent``: the first argument after the binary that is not a flag."""
        for arg in self.argv[1:]:
            if not arg.startswith("-"):
                return arg if arg in ("server", "agent") else None
        return None

    @property
    def flags(self) -> tuple[str, ...]:
        """The command line after the subcommand."""
        for i, arg in enumerate(self.argv[1:], 1):
            if arg in ("server", "agent"):
                return self.argv[i + 1 :]
        return ()


@dataclass(frozen=True)
class Role:
    name: str
    """``server`` or ``agent``."""
    unit: str
    """The systemd unit that runs it."""
    how: str
    """How it was found, for /status: "k3s.role: server", "ExecStart of /etc/systemd/system/k3s.service"."""
    certain: bool = True
    """False when only a data dir says so (no unit, no config): then no server-only key is written."""


@dataclass(frozen=True)
class RoleDecision:
    role: Role | None
    unit: Unit | None
    """The unit that runs k3s, when one was chosen (its command line and environment count)."""
    conflict: str = ""
    """Why the evidence disagrees (then ``role`` is None and the drop-in is agent-safe)."""
    notes: tuple[str, ...] = ()
    """Evidence set aside (a stale data dir, a second unit that is not enabled)."""


# --- reading units -----------------------------------------------------------------------------


def find_units(unit_dirs: Sequence[str] = UNIT_DIRS, named: str | None = None) -> list[Unit]:
    """Every k3s unit present (``k3s.service``, ``k3s-agent.service``, ``k3s-*.service``), or
    only ``named``. Masked units (linked to /dev/null, or empty) do not count."""
    names = [named] if named else _k3s_unit_names(unit_dirs)
    units = []
    for name in names:
        unit = read_unit(name, unit_dirs)
        if unit is not None:
            units.append(unit)
    return units


def _k3s_unit_names(unit_dirs: Sequence[str]) -> list[str]:
    found: set[str] = set()
    for directory in unit_dirs:
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        found.update(n for n in entries if n.endswith(".service") and (n == "k3s.service" or n.startswith("k3s-")))
    return sorted(found)


def unit_file(name: str, unit_dirs: Sequence[str]) -> str | None:
    """The path of the unit file systemd would use, or None (absent or masked)."""
    for directory in unit_dirs:
        path = os.path.join(directory, name)
        try:
            if os.path.realpath(path) == os.devnull or os.path.getsize(path) == 0:
                return None  # masked here: lower-priority copies do not count
        except OSError:
            continue
        return path
    return None


def read_unit(name: str, unit_dirs: Sequence[str] = UNIT_DIRS) -> Unit | None:
    """The unit as systemd would run it, or None when absent or masked. Never raises:
    unreadable files are left out (this is evidence, not a gate)."""
    path = unit_file(name, unit_dirs)
    if path is None:
        return None
    files = [(path, fsutil.peek_text(path, MAX_UNIT_BYTES) or "")]
    files += _dropins(name, unit_dirs)
    found = exec_start(files)
    argv, exec_from = (tuple(found[1]), found[0]) if found is not None else ((), "")
    env = unit_environment(name, files)
    return Unit(name, path, tuple(files), argv, exec_from, env, _enabled(name, unit_dirs))


def _dropins(name: str, unit_dirs: Sequence[str]) -> list[tuple[str, str]]:
    chosen: dict[str, str] = {}
    for directory in unit_dirs:  # a name in a higher-priority dir hides the same name below
        try:
            entries = os.listdir(os.path.join(directory, name + ".d"))
        except OSError:
            continue
        for entry in entries:
            if entry.endswith(".conf") and entry not in chosen:
                chosen[entry] = os.path.join(directory, name + ".d", entry)
    out = []
    for entry in sorted(chosen):
        text = fsutil.peek_text(chosen[entry], MAX_UNIT_BYTES)
        if text is not None:
            out.append((chosen[entry], text))
    return out


def _enabled(name: str, unit_dirs: Sequence[str]) -> bool:
    for directory in unit_dirs:
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        for entry in entries:
            if entry.endswith((".wants", ".requires")) and os.path.lexists(os.path.join(directory, entry, name)):
                return True
    return False


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(line number, text) of a unit file's settings: comments dropped, ``\\`` continuations joined."""
    lines: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped[0] in "#;"):
            continue
        if stripped.endswith("\\"):
            start = start or number
            pending += stripped[:-1] + " "
            continue
        lines.append((start or number, pending + stripped))
        pending, start = "", 0
    if pending:
        lines.append((start, pending))
    return lines


def _service_settings(files: Sequence[tuple[str, str]]) -> list[tuple[str, int, str, str]]:
    """(path, line, key, value) of every setting in a ``[Service]`` section, in order."""
    out = []
    for path, text in files:
        section = ""
        for number, line in logical_lines(text):
            if line.startswith("[") and line.endswith("]"):
                section = line
                continue
            key, sep, value = line.partition("=")
            if sep and section == "[Service]":
                out.append((path, number, key.strip(), value.strip()))
    return out


def exec_start(files: Sequence[tuple[str, str]]) -> tuple[str, list[str]] | None:
    """The effective ``ExecStart=`` (the file that set it, its argv), or None.

    An empty ``ExecStart=`` in a drop-in clears the ones before it, as in systemd.
    """
    found: tuple[str, list[str]] | None = None
    for path, _, key, value in _service_settings(files):
        if key != "ExecStart":
            continue
        value = value.lstrip("-@+!:")
        if not value:
            found = None
            continue
        try:
            found = (path, shlex.split(value))
        except ValueError:
            found = (path, value.split())
    return found


def unit_environment(name: str, files: Sequence[tuple[str, str]]) -> dict[str, EnvSetting]:
    """The ``K3S_*`` variables wgagent reads (:data:`ENV_KEYS`), from ``Environment=`` and
    ``EnvironmentFile=`` in order (systemd: files are read when the unit starts; a later
    assignment wins; ``%N`` is the unit name without its suffix)."""
    env: dict[str, EnvSetting] = {}
    for path, line, key, value in _service_settings(files):
        if key == "Environment":
            for item in _split_words(value):
                k, sep, v = item.partition("=")
                if sep and k in ENV_KEYS:
                    env[k] = EnvSetting(v, f"{path}:{line} (Environment=)")
        elif key == "EnvironmentFile" and value:
            file = value.lstrip("-").replace("%N", name.removesuffix(".service")).replace("%n", name)
            env.update(read_env_file(file))
    return env


def _split_words(value: str) -> list[str]:
    try:
        return shlex.split(value)
    except ValueError:
        return value.split()


def read_env_file(path: str) -> dict[str, EnvSetting]:
    """``KEY=VALUE`` lines of a systemd EnvironmentFile (quotes removed, ``#`` comments), the
    keys wgagent reads only; absent or unreadable: empty."""
    text = fsutil.peek_text(path, MAX_UNIT_BYTES)
    out: dict[str, EnvSetting] = {}
    for number, raw in enumerate((text or "").splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key = key.strip()
        if sep and key in ENV_KEYS:
            words = _split_words(value.strip())
            out[key] = EnvSetting(words[0] if len(words) == 1 else value.strip(), f"{path}:{number}")
    return out


# --- the role --------------------------------------------------------------------------------


def decide_role(
    configured_role: str,
    configured_unit: str | None,
    units: Sequence[Unit],
    data_dirs: Mapping[str, bool],
) -> RoleDecision:
    """Which unit runs k3s and in which role, from the config and the evidence (pure).

    ``configured_role`` is ``k3s.role`` (``auto``, ``server``, ``agent``); ``configured_unit``
    ``k3s.unit``; ``units`` what :func:`find_units` read; ``data_dirs`` whether
    ``<data_dir>/server`` and ``<data_dir>/agent`` exist.

    >>> u = Unit("k3s-edge.service", "/etc/systemd/system/k3s-edge.service", (), ("/usr/local/bin/k3s", "agent"))
    >>> decide_role("auto", None, [u], {}).role
    Role(name='agent', unit='k3s-edge.service', how='ExecStart of /etc/systemd/system/k3s-edge.service', certain=True)
    """
    if configured_unit is not None:
        return _configured_unit(configured_role, configured_unit, units)
    if configured_role != "auto":
        unit = _unit_for_role(configured_role, units)
        name = unit.name if unit is not None else DEFAULT_UNITS[configured_role]
        return RoleDecision(Role(configured_role, name, f"k3s.role: {configured_role}"), unit)
    return _detected(units, data_dirs)


def _configured_unit(role: str, name: str, units: Sequence[Unit]) -> RoleDecision:
    unit = next((u for u in units if u.name == name), None)
    if role != "auto":
        return RoleDecision(Role(role, name, f"k3s.role: {role}, k3s.unit: {name}"), unit)
    if unit is None or unit.subcommand is None:
        why = "does not exist" if unit is None else "has no ExecStart running k3s server or k3s agent"
        return RoleDecision(None, unit, f"k3s.unit {name} {why}; set k3s.role to server or agent")
    return RoleDecision(Role(unit.subcommand, name, f"k3s.unit: {name}, its ExecStart"), unit)


def _unit_for_role(role: str, units: Sequence[Unit]) -> Unit | None:
    running = [u for u in units if u.subcommand == role]
    return _prefer_enabled(running) or next((u for u in units if u.name == DEFAULT_UNITS[role]), None)


def _prefer_enabled(units: Sequence[Unit]) -> Unit | None:
    enabled = [u for u in units if u.enabled]
    pick = enabled if enabled else list(units)
    return pick[0] if len(pick) == 1 else None


def _detected(units: Sequence[Unit], data_dirs: Mapping[str, bool]) -> RoleDecision:
    running = [u for u in units if u.subcommand is not None]
    if not running:
        return _by_name(units) or _from_data_dir(data_dirs, units)
    chosen = _prefer_enabled(running)
    if chosen is None:
        names = ", ".join(f"{u.name} (k3s {u.subcommand})" for u in running)
        return RoleDecision(
            None, None, f"several k3s units could run here: {names}; set k3s.unit (and k3s.role) to the one in use"
        )
    role = chosen.subcommand
    assert role is not None
    notes = [f"{u.name} is not enabled: ignored" for u in running if u is not chosen]
    named_for = next((r for r, n in DEFAULT_UNITS.items() if n == chosen.name), role)
    if named_for != role:
        notes.append(f"{chosen.name} is named for a {named_for} but its ExecStart runs k3s {role}")
    if role == "agent" and data_dirs.get("server"):
        notes.append("a server data dir is left from an earlier install (k3s agent does not use it)")
    return RoleDecision(Role(role, chosen.name, f"ExecStart of {chosen.path}"), chosen, notes=tuple(notes))


def _by_name(units: Sequence[Unit]) -> RoleDecision | None:
    """One unit named as install.sh names a server's or an agent's, whose ExecStart does not
    say which (k3s started through a wrapper or a variable): weak evidence, no server keys."""
    named = [(role, u) for u in units for role, name in DEFAULT_UNITS.items() if u.name == name]
    if len(named) != 1:
        return None
    role, unit = named[0]
    how = f"unit name {unit.path} (its ExecStart does not say k3s server or agent)"
    return RoleDecision(Role(role, unit.name, how, certain=False), unit)


def _from_data_dir(data_dirs: Mapping[str, bool], units: Sequence[Unit]) -> RoleDecision:
    for role in ("server", "agent"):  # the order matters: a server has an agent dir too
        if data_dirs.get(role):
            # no unit runs k3s: nothing for wgagent to restart, but the drop-in is still right
            how = f"data dir {role}/ (no k3s unit found)"
            return RoleDecision(Role(role, DEFAULT_UNITS[role], how, certain=False), None)
    if units:
        names = ", ".join(u.name for u in units)
        return RoleDecision(None, None, f"{names}: no ExecStart running k3s server or k3s agent")
    return RoleDecision(None, None)
