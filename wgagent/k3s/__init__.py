"""k3s: the role, the config drop-in wgagent owns, the scan of k3s's config, k3s restarts.

    role.py      detect_role(cfg.k3s) -> Role | None; node_name(cfg) -> NodeName
    dropin.py    render_dropin(role, addresses, cfg) -> str                     pure
    scan.py      scan_config(config_dir, files, role=) -> Scan (findings)       pure
                 read_config_files(config_dir) -> the files, as k3s reads them
    unit.py      scan_unit(read_unit(role.unit, UNIT_DIRS), role=, config_dir=)  ExecStart flags
    restart.py   should_restart(history, now, min_interval_s, enabled)          pure
                 Restarter.request(reason) -> model.RestartResult               systemctl
    part.py      K3sPart: write, scan, restart; the ``k3s_config`` check

The daemon builds it (stage "act", after the public IP is known)::

    role = k3s.detect_role(cfg.k3s)
    restarter = k3s.Restarter(cfg.k3s, state_dir=cfg.state_dir, unit=role.unit if role else None,
                              metrics=state.metrics)
    part = k3s.K3sPart(state, cfg.k3s, public_ip=..., role=role, restarter=restarter)

``doctor`` calls ``scan_config(cfg.k3s.config_dir, read_config_files(cfg.k3s.config_dir),
role=...)`` and ``scan_unit(...)``, and prints the findings.
"""

from wgagent.k3s.dropin import addresses_from_dropin, dropin_path, render_dropin
from wgagent.k3s.part import K3sPart
from wgagent.k3s.restart import RestartDecision, Restarter, should_restart
from wgagent.k3s.role import (
    UNIT_DIRS,
    Identity,
    NodeName,
    Role,
    decide_identity_from,
    detect_role,
    node_name,
    role_missing_detail,
)
from wgagent.k3s.scan import DROPIN_NAME, Finding, Scan, Unreadable, read_config_files, scan_config
from wgagent.k3s.unit import read_unit, scan_unit

__all__ = [
    "DROPIN_NAME",
    "UNIT_DIRS",
    "Finding",
    "Identity",
    "K3sPart",
    "NodeName",
    "RestartDecision",
    "Restarter",
    "Role",
    "Scan",
    "Unreadable",
    "addresses_from_dropin",
    "decide_identity_from",
    "detect_role",
    "dropin_path",
    "node_name",
    "read_config_files",
    "read_unit",
    "render_dropin",
    "role_missing_detail",
    "scan_config",
    "scan_unit",
    "should_restart",
]
