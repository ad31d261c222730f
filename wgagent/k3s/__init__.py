"""k3s: the role, the config drop-in wgagent owns, the scan of k3s's config, k3s restarts.

    role.py      detect_role(cfg.k3s) -> Role | None; node_name(cfg) -> NodeName
    dropin.py    render_dropin(role, addresses, cfg) -> str                     pure
    scan.py      scan_config(config_dir, files, role=) -> Scan (findings)       pure
                 read_config_files(config_dir) -> the files, as k3s reads them
    unit.py      scan_unit(read_unit(role.unit, UNIT_DIRS), role=, config_dir=)  ExecStart flags
    restart.py   should_restart(history, now, min_interval_s, enabled)          pure
                 Restarter.request(reason) -> model.RestartResult               systemctl
    part.py      K3sPart: write, scan, restart; the ``k3s_config`` check

The daemon's wiring builds the part (``wiring._Builder._k3s``)::

    restarter = Restarter(cfg.k3s, state_dir=cfg.state_dir, unit=role.unit if role else None, ...)
    part = K3sPart(state, cfg.k3s, identity, public_ip=..., restarter=restarter, ...)

``doctor`` calls ``scan_config(cfg.k3s.config_dir, read_config_files(cfg.k3s.config_dir),
role=...)`` and ``scan_unit(...)``, and prints the findings.

This package imports nothing itself: import what you use from its modules
(``from wgagent.k3s.role import detect_role``): a command that needs only the node's identity
(``wgagent gc``) then does not pay for the part and the restarter.
"""
