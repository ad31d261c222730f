"""Config files for tests: every part that could reach outside is off unless a test turns it on.

wgagent's production defaults name real STUN servers, echo services and metadata addresses;
a test must never run with them. ``sandbox_config()`` starts from "everything off, every
path in a temp dir" and a test enables exactly what it exercises, pointed at its stand-ins.
"""

from __future__ import annotations

import os
from typing import Any

import yaml


def sandbox(tmp: str, port: int, **overrides: Any) -> dict[str, Any]:
    """A config dict with all outward parts disabled and all paths under ``tmp``.

    ``overrides`` are merged per section: ``sandbox(tmp, port, public_ip={"enabled": True, ...})``.
    """
    cfg: dict[str, Any] = {
        "node_name": "node1",
        "state_dir": os.path.join(tmp, "state"),
        "log_level": "debug",
        "startup_deadline_s": 10,
        "health": {"listen": f"127.0.0.1:{port}"},
        "public_ip": {
            "enabled": False,
            "sources": ["static"],
            "stun_servers": [],
            "http_echo_urls": [],
            "metadata_provider": "none",
            "dmi_dir": os.path.join(tmp, "dmi"),
        },
        "k3s": {
            "enabled": False,
            "config_dir": os.path.join(tmp, "etc-rancher-k3s"),
            "data_dir": os.path.join(tmp, "var-lib-rancher-k3s"),
            "restart": False,
        },
        "kube": {"enabled": False},
        "wireguard": {
            "enabled": False,
            "manage_module": False,
            "uapi_dir": os.path.join(tmp, "run-wireguard"),
            "modules_load_file": os.path.join(tmp, "modules-load.d", "wgagent.conf"),
            "gc": {"enabled": False},
        },
        "mesh": {"enabled": False},
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(cfg.get(section), dict):
            cfg[section] = {**cfg[section], **values}
        else:
            cfg[section] = values
    return cfg


def write(path: str, cfg: dict[str, Any]) -> str:
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return path
