"""The k3s part: keep the drop-in right, say what defeats it, restart k3s when it must.

One pass::

    role      the one decided at start (``Identity``); while k3s is not installed, look for
              it every pass and, once found, emit ``role_found`` (the daemon rebuilds)
    address   the adopted public IP; while there is none, the one already in the drop-in
    write     render_dropin() -> fsutil.atomic_write (only on change, mode 0600)
    scan      scan_config() over config.yaml and config.yaml.d/ with the new drop-in,
              scan_unit() over k3s's ExecStart (command-line flags beat config files)
    restart   when a value k3s reads changed (not the comments), Restarter.request();
              otherwise Restarter.retry_pending(), so a rate-limited or refused restart
              happens once allowed, or is dropped once someone restarted k3s

The ``k3s_config`` check fails on a write error (the old file stays), on a finding that
defeats the drop-in or stops k3s from starting, and while a restart is pending; its detail
is the first of those, one line. ``/status`` gets the whole picture under ``parts.k3s``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from wgagent import fsutil
from wgagent.config import K3sConfig
from wgagent.errors import WriteError
from wgagent.k3s.dropin import addresses_from_dropin, dropin_path, render_dropin
from wgagent.k3s.restart import Restarter
from wgagent.k3s.role import UNIT_DIRS, Identity, Role, detect_role, role_missing_detail
from wgagent.k3s.scan import (
    DROPIN_DIR,
    DROPIN_NAME,
    FLANNEL_BACKEND,
    NODE_EXTERNAL_IP,
    Finding,
    Value,
    owned_keys,
    parse_file,
    read_config_files,
    scan_config,
)
from wgagent.k3s.unit import read_unit, scan_unit
from wgagent.model import PublicAddresses, RestartResult
from wgagent.part import Part, Signal
from wgagent.state import State

log = logging.getLogger(__name__)

CHECK = "k3s_config"
_OWN_REL = f"{DROPIN_DIR}/{DROPIN_NAME}"


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
        unit_dirs: Sequence[str] = UNIT_DIRS,
    ) -> None:
        super().__init__(state)
        self.cfg = cfg
        self.role = identity.role
        self.restarter = restarter
        self.role_found: Signal[Role] = Signal("k3s.role_found")
        """k3s turned up after the daemon was built without it: the identity must be decided again."""
        self._public_ip = public_ip
        self._unit_dirs = tuple(unit_dirs)
        self._reported: tuple[str, ...] = ()

    async def reconcile(self) -> None:
        role = self.role
        path = dropin_path(self.cfg)
        if role is None:
            found = detect_role(self.cfg, unit_dirs=self._unit_dirs)
            if found is not None:
                log.info("k3s found: %s (%s), unit %s; rebuilding", found.name, found.how, found.unit)
                self.role_found.emit(found)
            detail = role_missing_detail(self.cfg, self._unit_dirs)
            self.state.set_check(CHECK, False, detail)
            self.state.set_part(self.name, {"role": None, "dropin": path, "error": detail})
            return

        files = read_config_files(self.cfg.config_dir)
        old = files.get(_OWN_REL)
        old_bytes = old if isinstance(old, bytes) else None
        adopted = self._public_ip()
        addresses = adopted or addresses_from_dropin(old_bytes)
        content = render_dropin(role.name, addresses, self.cfg).encode()

        write_error: str | None = None
        changed = False
        try:
            changed = fsutil.atomic_write(path, content, mode=0o600)
        except WriteError as exc:
            write_error = str(exc)
            log.error("%s; k3s keeps the previous %s", exc, DROPIN_NAME)
        else:
            files[_OWN_REL] = content
        scan = scan_config(self.cfg.config_dir, files, role=role.name)
        unit_files = read_unit(role.unit, self._unit_dirs)
        errors = [*scan.errors, *scan_unit(unit_files, role=role.name, config_dir=self.cfg.config_dir)]

        diff = _diff(_values(old_bytes, role.name), _values(content, role.name)) if changed else ""
        if changed:
            log.info("wrote %s: %s", path, diff or "comments only")
        restart: RestartResult | None
        if diff:
            restart = await self.restarter.request(f"{DROPIN_NAME} changed: {diff}")
        else:
            restart = await self.restarter.retry_pending()
        if restart is not None and restart.restarted:
            log.info("%s", restart.detail)
        self._log_findings(errors)

        ok, detail = self._verdict(path, role, addresses, changed, write_error, errors, restart)
        self.state.set_check(CHECK, ok, detail)
        self.state.set_part(
            self.name,
            {
                "role": role.name,
                "role_from": role.how,
                "unit": role.unit,
                "dropin": path,
                "dropin_state": "error" if write_error else "written" if changed else "unchanged",
                "write_error": write_error,
                "node_external_ip": [str(ip) for ip in (addresses.ipv4, addresses.ipv6) if ip] if addresses else [],
                "address_from": "public_ip" if adopted else "existing drop-in" if addresses else None,
                "files": list(scan.files),
                "unit_files": [p for p, _ in unit_files],
                "findings": [str(f) for f in errors],
                "notes": [str(f) for f in scan.notes],
                "restart": {
                    "result": None if restart is None else restart.detail,
                    **self.restarter.status(),
                },
            },
        )

    def _verdict(
        self,
        path: str,
        role: Role,
        addresses: PublicAddresses | None,
        changed: bool,
        write_error: str | None,
        errors: Sequence[Finding],
        restart: RestartResult | None,
    ) -> tuple[bool, str]:
        problems: list[str] = []
        if write_error:
            problems.append(f"{write_error}; k3s keeps the previous {DROPIN_NAME}")
        if errors:
            more = f" (and {len(errors) - 1} more, see 'wgagent status')" if len(errors) > 1 else ""
            problems.append(f"{errors[0]}{more}")
        if restart is not None and restart.pending:
            problems.append(restart.detail)
        if problems:
            return False, "; ".join(problems)
        what = f"{NODE_EXTERNAL_IP} {addresses}" if addresses else f"no {NODE_EXTERNAL_IP} yet (no public IP)"
        if role.name == "server":
            what += f", {FLANNEL_BACKEND} {self.cfg.flannel_backend}"
        detail = f"{path} {'written' if changed else 'up to date'} ({role.name}): {what}"
        if restart is not None:
            detail += f"; {restart.detail}"
        return True, detail

    def _log_findings(self, errors: Sequence[Finding]) -> None:
        texts = tuple(str(f) for f in errors)
        if texts != self._reported:
            for text in texts:
                if text not in self._reported:
                    log.warning("k3s config: %s", text)
            self._reported = texts


def _values(content: bytes | None, role: str) -> dict[str, Value]:
    """What a drop-in tells k3s: the owned keys' values (comments do not count)."""
    if content is None:
        return {}
    entries, problem = parse_file(DROPIN_NAME, content)
    if problem is not None:
        return {"<unparsable>": problem.message}
    keys = owned_keys(role)
    return {e.key: e.value for e in entries if e.key in keys}


def _diff(old: dict[str, Value], new: dict[str, Value]) -> str:
    """``node-external-ip ['198.51.100.1'] -> ['203.0.113.7']``; empty when equal."""
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
