"""The k3s part: keep the drop-in right, say what defeats it, restart k3s when it must.

One pass::

    role      the one decided at start (``Identity``); while k3s is not installed, look for
              it every pass and, once found, emit ``role_found`` (the daemon rebuilds). While
              the evidence for the role disagrees, write only the agent-safe drop-in
    address   the adopted public IP, in the families the cluster uses (``families()``); while
              there is none, the one already in the drop-in
    write     render_dropin() -> fsutil.atomic_write (only on change, mode 0600)
    key       the k3s unit drop-in keeping flannel's WireGuard key (k3s.persistent_wireguard_key),
              written on change; it rides along with the next restart, never causes one
    scan      scan_config() over k3s's config files with the new drop-in, scan_unit() over
              k3s's ExecStart (command-line flags beat config files; an agent exits on a
              server-only flag)
    restart   a value k3s reads changed: Restarter.need("config", ...); then Restarter.serve()
              restarts k3s once for every need of every part (the annotation's too), when it
              runs and the rate limit allows

The ``k3s_config`` check fails on a write error (the old file stays), on a finding that
defeats the drop-in or stops k3s from starting, on a disputed role, and while a restart is
pending; its detail is the first of those, one line. ``/status`` gets the whole picture
under ``parts.k3s``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from wgagent import fsutil
from wgagent.config import K3sConfig
from wgagent.errors import KubeError, WriteError
from wgagent.events import Record, ignore, k3s_config_written
from wgagent.families import Families, ipv4_only
from wgagent.k3s import wgkey
from wgagent.k3s.dropin import (
    addresses_from_dropin,
    dropin_path,
    dropin_values,
    read_dropin_values,
    render_dropin,
)
from wgagent.k3s.install import read_unit
from wgagent.k3s.restart import Restarter
from wgagent.k3s.role import UNIT_DIRS, Identity, Role, detect_role, role_missing_detail
from wgagent.k3s.scan import (
    DROPIN_DIR,
    DROPIN_NAME,
    FLANNEL_BACKEND,
    NODE_EXTERNAL_IP,
    ConfigFinding,
    Value,
    read_config_files,
    scan_config,
)
from wgagent.k3s.servers import ANN_BACKEND_WANTED, Annotate, agent_backend_mismatch, server_backend
from wgagent.k3s.unit import scan_unit
from wgagent.model import ClusterView, PublicAddresses, RestartResult
from wgagent.part import Part, Signal
from wgagent.state import State

log = logging.getLogger(__name__)

CHECK = "k3s_config"
_OWN_REL = f"{DROPIN_DIR}/{DROPIN_NAME}"


@dataclass(frozen=True)
class Written:
    """One pass's write of the drop-in."""

    content: bytes
    changed: bool
    diff: str
    error: str | None
    addresses: PublicAddresses | None
    address_from: str | None
    values: Mapping[str, Value]
    """What the drop-in tells k3s (``dropin_values``): a restart need's ``want``."""
    backend_held: str | None = None
    """On a server: why the configured flannel-backend was not written (``servers.server_backend``)."""


class K3sPart(Part):
    name = "k3s"
    checks = (CHECK,)
    interval_s = 60.0

    def __init__(
        self,
        state: State,
        cfg: K3sConfig,
        identity: Identity,
        *,
        public_ip: Callable[[], PublicAddresses | None],
        restarter: Restarter,
        families: Callable[[], Families] = ipv4_only,
        cluster: Callable[[], ClusterView | None] = lambda: None,
        private_ipv4: Callable[[], str | None] = lambda: None,
        unit_dirs: Sequence[str] = UNIT_DIRS,
        annotate: Annotate | None = None,
        events: Callable[[Record], None] = ignore,
    ) -> None:
        super().__init__(state)
        self.cfg = cfg
        self._events = events
        self.identity = identity
        self.role = identity.role
        self.restarter = restarter
        self.role_found: Signal[Role] = Signal("k3s.role_found")
        """k3s turned up after the daemon was built without it: the identity must be decided again."""
        self._public_ip = public_ip
        self._families = families
        self._cluster = cluster
        self._private_ipv4 = private_ipv4
        self._unit_dirs = tuple(unit_dirs)
        self._annotate = annotate
        self._reported: tuple[str, ...] = ()

    @property
    def _scan_role(self) -> str | None:
        """The role k3s's config is checked for: only one known for sure (an uncertain server must
        not be told it lacks flannel-backend, which wgagent then declines to write)."""
        return self.role.name if self.role is not None and self.role.certain else None

    @property
    def dropin(self) -> str:
        return dropin_path(self.identity.config)

    async def reconcile(self) -> None:
        if self.role is None and not self.identity.conflict:
            return self._no_k3s()
        role_name = "server" if self.identity.server_keys_safe else "agent"  # agent-safe unless sure
        files = read_config_files(self.identity.config)
        await self._publish_wanted_backend(role_name)
        written = self._write(role_name, files)
        key_note = self._keep_wireguard_key()
        if written.error is None:
            files[_OWN_REL] = written.content
        scan = scan_config(self.identity.config, files, role=self._scan_role)
        errors = [*scan.errors, *self._unit_findings()]
        blocked = written.backend_held
        if written.diff and self.role is not None:
            self.restarter.need("config", _fingerprint(written.values),
                                f"{DROPIN_NAME} changed: {written.diff}")  # fmt: skip
        stuck_backend = self._agent_backend() if role_name == "agent" else None
        restart = await self.restarter.serve() if self.role is not None else None
        for problem in (blocked, stuck_backend):
            if problem is not None:
                errors.insert(0, ConfigFinding(self.dropin, None, problem, code="backend_switch"))
        if restart is not None and restart.restarted:
            log.info("%s", restart.detail)
        self._log_findings(errors)
        ok, detail = self._verdict(role_name, written, errors, restart)
        self.state.set_check(CHECK, ok, detail)
        self.state.set_part(
            self.name, self._status(role_name, written, scan.files, errors, scan.notes, restart, key_note)
        )
        return None

    # --- steps ---------------------------------------------------------------------------

    def _no_k3s(self) -> None:
        found = detect_role(self.cfg, unit_dirs=self._unit_dirs)
        if found is not None:
            log.info("k3s found: %s (%s), unit %s; rebuilding", found.name, found.how, found.unit)
            self.role_found.emit(found)
        detail = role_missing_detail(self.cfg, self._unit_dirs, self.identity)
        self.state.set_check(CHECK, False, detail)
        self.state.set_part(self.name, {"role": None, "dropin": self.dropin, "error": detail})

    def _write(self, role_name: str, files: Mapping[str, object]) -> Written:
        old = files.get(_OWN_REL)
        old_bytes = old if isinstance(old, bytes) else None
        families = self._families()
        adopted = families.keep(self._public_ip())
        addresses = adopted or families.keep(addresses_from_dropin(old_bytes))
        advertise = self._advertise(role_name)
        cfg, held = self._backend_cfg(role_name, old_bytes)
        content = render_dropin(role_name, addresses, cfg, advertise).encode()
        address_from = "public_ip" if adopted else "existing drop-in" if addresses else None
        try:
            changed = fsutil.atomic_write(self.dropin, content, mode=0o600)
        except WriteError as exc:
            log.error("%s; k3s keeps the previous %s", exc, DROPIN_NAME)
            return Written(content, False, "", str(exc), addresses, address_from, {}, held)
        new_values = dropin_values(role_name, addresses, cfg, advertise)
        diff = _diff(read_dropin_values(old_bytes), new_values) if changed else ""
        if changed:
            log.info("wrote %s: %s", self.dropin, diff or "comments only")
            self._events(k3s_config_written(self.dropin, diff or "comments only"))
        return Written(content, changed, diff, None, addresses, address_from, new_values, held)

    def _backend_cfg(self, role_name: str, old: bytes | None) -> tuple[K3sConfig, str | None]:
        """The config the drop-in is rendered from: on a server, with the flannel-backend the
        other servers allow (``servers.server_backend``), and why it is not the configured one."""
        if role_name != "server":
            return self.cfg, None
        previous = read_dropin_values(old).get(FLANNEL_BACKEND)
        chosen = server_backend(self.identity.node, self.cfg.flannel_backend, self._cluster(),
                                previous if isinstance(previous, str) else None)  # fmt: skip
        cfg = self.cfg if chosen.write == self.cfg.flannel_backend else replace(self.cfg, flannel_backend=chosen.write)
        return cfg, chosen.held

    def _advertise(self, role_name: str) -> str | None:
        """``advertise-address`` for a server with ``k3s.advertise_private_address``, else None."""
        return self._private_ipv4() if role_name == "server" and self.cfg.advertise_private_address else None

    async def _publish_wanted_backend(self, role_name: str) -> None:
        """On a server: its configured backend on its own Node, for the other servers' switch."""
        cluster = self._cluster()
        own = cluster.nodes.get(self.identity.node) if cluster is not None else None
        want = self.cfg.flannel_backend
        if role_name != "server" or self._annotate is None or own is None:
            return
        if own.annotations.get(ANN_BACKEND_WANTED) == want:
            return
        try:
            await self._annotate({ANN_BACKEND_WANTED: want})
        except KubeError as exc:
            log.warning("cannot publish %s=%s on this Node: %s", ANN_BACKEND_WANTED, want, exc)

    def _agent_backend(self) -> str | None:
        """On an agent whose flannel runs another backend than the servers: one restart
        (kind ``backend``); a problem line when that restart did not help."""
        mismatch = agent_backend_mismatch(self.identity.node, self._cluster()) if self.role is not None else None
        if mismatch is None:
            self.restarter.drop("backend")
            return None
        mine, theirs = mismatch
        why = f"flannel here runs backend {mine}, the servers {theirs}"
        result = self.restarter.need("backend", theirs, why)
        return None if result.pending else f"{why}: {result.detail}"

    def _unit_findings(self) -> list[ConfigFinding]:
        """ExecStart as it is now (someone may edit the unit while wgagent runs)."""
        if self.role is None:
            return []
        unit = read_unit(self.role.unit, self._unit_dirs)
        if unit is None:
            return []
        return scan_unit(unit.files, role=self._scan_role or "unknown", config_dir=self.identity.config)

    def _keep_wireguard_key(self) -> str | None:
        """Write the unit drop-in keeping flannel's key; a note for /status (None: not wanted, or
        no k3s unit file to drop it in: a drop-in is only written beside a unit that exists)."""
        unit = self.role.unit if self.role is not None else None
        if not self.cfg.persistent_wireguard_key or unit is None or read_unit(unit, self._unit_dirs) is None:
            return None
        path = wgkey.unit_dropin_path(unit, *self._unit_dirs[:1])
        try:
            changed = fsutil.atomic_write(path, wgkey.render(self.identity.data_dir).encode(), mode=0o644)
        except WriteError as exc:
            return f"cannot write {path} ({exc}); flannel's key stays on tmpfs (/run/flannel/wgkey)"
        if changed:
            log.info("wrote %s: flannel keeps its WireGuard key in %s from k3s's next start", path,
                     wgkey.key_file(self.identity.data_dir))  # fmt: skip
            self.restarter.need("wireguard-key", path, f"{path} changed", alone=False)
        return f"{path}: {wgkey.VARIABLE}={wgkey.key_file(self.identity.data_dir)}"

    def _verdict(
        self, role_name: str, written: Written, errors: Sequence[ConfigFinding], restart: RestartResult | None
    ) -> tuple[bool, str]:
        problems: list[str] = []
        if self.identity.conflict:
            problems.append(role_missing_detail(self.cfg, self._unit_dirs, self.identity))
        if written.error:
            problems.append(f"{written.error}; k3s keeps the previous {DROPIN_NAME}")
        if errors:
            more = f" (and {len(errors) - 1} more, see 'wgagent status')" if len(errors) > 1 else ""
            problems.append(f"{errors[0]}{more}")
        if restart is not None and restart.pending:
            problems.append(restart.detail)
        if problems:
            return False, "; ".join(problems)
        addresses = written.addresses
        what = f"{NODE_EXTERNAL_IP} {addresses}" if addresses else f"no {NODE_EXTERNAL_IP} yet (no public IP)"
        if role_name == "server":
            what += f", {FLANNEL_BACKEND} {self.cfg.flannel_backend}"
        detail = f"{self.dropin} {'written' if written.changed else 'up to date'} ({role_name}): {what}"
        if restart is not None:
            detail += f"; {restart.detail}"
        return True, detail

    def _status(
        self,
        role_name: str,
        written: Written,
        files: Sequence[str],
        errors: Sequence[ConfigFinding],
        notes: Sequence[ConfigFinding],
        restart: RestartResult | None,
        key_note: str | None,
    ) -> dict[str, Any]:
        role, ident = self.role, self.identity
        addresses = written.addresses
        return {
            "role": role.name if role else None,
            "role_from": role.how if role else None,
            "role_conflict": ident.conflict or None,
            "role_notes": list(ident.notes),
            "dropin_keys": role_name,
            "unit": role.unit if role else None,
            "config": {"main": ident.config.main, "from": ident.config.source},
            "dropin": self.dropin,
            "dropin_state": "error" if written.error else "written" if written.changed else "unchanged",
            "write_error": written.error,
            "families": self._families().to_json(),
            "node_external_ip": [str(ip) for ip in (addresses.ipv4, addresses.ipv6) if ip] if addresses else [],
            "address_from": written.address_from,
            "files": list(files),
            "unit_files": self._unit_paths(),
            "findings": [str(f) for f in errors],
            "notes": [str(f) for f in notes],
            "wireguard_key": key_note,
            "restart": {"result": None if restart is None else restart.detail, **self.restarter.status()},
        }

    def _unit_paths(self) -> list[str]:
        unit = read_unit(self.role.unit, self._unit_dirs) if self.role is not None else None
        return [p for p, _ in unit.files] if unit is not None else []

    def _log_findings(self, errors: Sequence[ConfigFinding]) -> None:
        texts = tuple(str(f) for f in errors)
        if texts != self._reported:
            for text in texts:
                if text not in self._reported:
                    log.warning("k3s config: %s", text)
            self._reported = texts


def _fingerprint(values: Mapping[str, Value]) -> str:
    """A need's ``want``: the drop-in's values, one string (``key=value;...``)."""
    return ";".join(f"{k}={_fmt(v)}" for k, v in sorted(values.items()))


def _diff(old: Mapping[str, Value], new: Mapping[str, Value]) -> str:
    """``node-external-ip 198.51.100.1 -> 203.0.113.7``; empty when equal."""
    parts = []
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key):
            parts.append(f"{key} {_fmt(old.get(key))} -> {_fmt(new.get(key))}")
    return ", ".join(parts)


def _fmt(value: Value) -> str:
    if value is None:
        return "unset"
    if isinstance(value, tuple):
        return ",".join(value) or "[]"
    return value
