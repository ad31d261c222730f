"""A stand-in for ``systemctl`` on one lab node, where k3s cannot be installed.

    python -m tests.cluster.systemctl STATE_DIR ARGS...      (the node's ``bin/systemctl`` execs this)

It answers the calls wgagent's k3s Restarter makes, for the node's one k3s unit:

    is-active UNIT                 "active" while the last k3s start succeeded; "activating"
                                   (exit 3) while k3s fails to start and systemd retries it
                                   (the units install.sh writes: Restart=always, RestartSec=5s)
    show --property=ExecMainStartTimestampMonotonic --value UNIT
                                   when k3s last (re)started, CLOCK_MONOTONIC microseconds
    --no-block try-restart UNIT    k3s starts again, as upstream k3s would on this node: it
                                   reads the node's k3s config (``config.yaml`` and
                                   ``config.yaml.d/*.yaml``, or ``K3S_CONFIG_FILE`` / ``--config``),
                                   the unit's ``ExecStart`` flags and its environment, then the
                                   API stand-in's ``k3s_start`` does what that start does to the
                                   Node (tests/kubeapi/k3s.py: an agent with a server-only key
                                   does not start and changes nothing)
    daemon-reload                  succeeds (the unit is read at each start anyway)

``--no-block`` returns at once with 0 whether or not k3s will come up, as systemd does; the
stand-in is told before this returns, where a real k3s takes seconds. Every call is appended
to ``STATE_DIR/calls.log``, every start to ``STATE_DIR/restarts.log`` (one JSON line each:
``at``, ``unit``, ``started``, ``error``, ``public_ip``). ``STATE_DIR/standin.json`` says where
the stand-in is and what k3s reads on this node::

    {"url", "ca", "token", "node", "unit",          # required
     "config_dir": "...",     # the node's /etc/rancher/k3s (none: k3s reads no config file)
     "unit_file": "...",      # the k3s unit (its <unit>.d/*.conf too): ExecStart, Environment(File)
     "env_files": ["..."],    # more environment files (KEY=VALUE lines)
     "role": "agent", "version": "v1.32.4+k3s1", "start": {...}}   # more k3s_start inputs
"""

from __future__ import annotations

import json
import os
import shlex
import ssl
import sys
import time
import urllib.request
from typing import Any

from tests.kubeapi.k3s import config_files

STANDIN = "standin.json"
STARTED = "started"
ACTIVE = "active"
CALLS = "calls.log"
RESTARTS = "restarts.log"


def now_us() -> int:
    return int(time.monotonic() * 1e6)


def mark_started(state_dir: str, *, active: bool = True) -> None:
    with open(os.path.join(state_dir, STARTED), "w") as f:
        f.write(f"{now_us()}\n")
    with open(os.path.join(state_dir, ACTIVE), "w") as f:
        f.write("active\n" if active else "activating\n")


def restarts(state_dir: str) -> list[dict[str, Any]]:
    """The restarts recorded so far, oldest first."""
    try:
        with open(os.path.join(state_dir, RESTARTS)) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


# --- what k3s reads on this node -----------------------------------------------------------------


def read_unit(unit_file: str) -> tuple[list[str], dict[str, str], list[str]]:
    """(ExecStart argv, Environment=, EnvironmentFile= paths) of a unit and its drop-ins
    (``<unit>.d/*.conf`` in name order; an empty ``ExecStart=`` clears the earlier ones)."""
    texts = [_read(unit_file) or ""]
    dropins = unit_file + ".d"
    if os.path.isdir(dropins):
        texts += [_read(os.path.join(dropins, n)) or "" for n in sorted(os.listdir(dropins)) if n.endswith(".conf")]
    argv: list[str] = []
    env: dict[str, str] = {}
    env_files: list[str] = []
    for text in texts:
        for key, value in _directives(text):
            if key == "ExecStart":
                argv = shlex.split(value) if value.strip() else []
            elif key == "Environment":
                env.update(dict(item.split("=", 1) for item in shlex.split(value) if "=" in item))
            elif key == "EnvironmentFile":
                env_files.append(value.strip())
    return argv, env, env_files


def _directives(text: str) -> list[tuple[str, str]]:
    out, pending = [], ""
    for raw in [*text.splitlines(), ""]:  # a continuation at the end of the file ends there
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.append((key.strip(), value))
    return out


def read_env_file(path: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (systemd's EnvironmentFile; a leading ``-`` means optional)."""
    text = _read(path.lstrip("-")) or ""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")) and "=" in line:
            key, value = line.split("=", 1)
            env[key.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    return env


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError:
        return None


def start_inputs(cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``k3s_start`` body for this node: config files as k3s finds them, the unit's flags
    (after ``k3s agent|server``) and environment (k3s ``pkg/configfilearg``: ``K3S_CONFIG_FILE``,
    then ``--config``/``-c``, then ``<config_dir>/config.yaml``)."""
    argv, env, env_files = read_unit(cfg["unit_file"]) if cfg.get("unit_file") else ([], {}, [])
    for path in [*env_files, *cfg.get("env_files", [])]:
        env.update(read_env_file(path))
    args = argv[2:] if len(argv) >= 2 and argv[1] in ("server", "agent") else argv[1:]
    config = env.get("K3S_CONFIG_FILE") or _config_flag(args)
    if config is None and cfg.get("config_dir"):
        config = os.path.join(cfg["config_dir"], "config.yaml")
    files = [[path, _read(path) or ""] for path in config_files(config)] if config else []
    body: dict[str, Any] = {"files": files, "args": args, "env": env}
    role = cfg.get("role") or (argv[1] if len(argv) >= 2 and argv[1] in ("server", "agent") else None)
    role = role or ("agent" if "agent" in cfg["unit"] else "server")
    body.update({"role": role, **({"version": cfg["version"]} if cfg.get("version") else {}), **cfg.get("start", {})})
    return body


def _config_flag(args: list[str]) -> str | None:
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(("--config=", "-c=")):
            return arg.split("=", 1)[1]
    return None


# --- the stand-in --------------------------------------------------------------------------------


def k3s_starts(cfg: dict[str, Any]) -> dict[str, Any]:
    """POST the stand-in's ``k3s_start`` action for this node; its outcome."""
    ctx = ssl.create_default_context(cafile=cfg["ca"])
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))
    body = {"action": "k3s_start", "node": cfg["node"], **start_inputs(cfg)}
    req = urllib.request.Request(  # noqa: S310 (an https URL from the lab's own file)
        cfg["url"] + "/_standin/control",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {cfg['token']}", "Content-Type": "application/json"},
        method="POST",
    )
    with opener.open(req, timeout=10) as resp:
        return dict(json.loads(resp.read())["result"])


def main(argv: list[str]) -> int:
    state_dir, args = argv[0], argv[1:]
    with open(os.path.join(state_dir, CALLS), "a") as f:
        f.write(" ".join(args) + "\n")
    with open(os.path.join(state_dir, STANDIN)) as f:
        cfg = json.load(f)
    unit = cfg["unit"]
    if args[:1] == ["is-active"]:
        state = (_read(os.path.join(state_dir, ACTIVE)) or "active").strip() if args[1:] == [unit] else "inactive"
        print(state)
        return 0 if state == "active" else 3
    if args[:1] == ["show"] and args[-1:] == [unit] and "--property=ExecMainStartTimestampMonotonic" in args:
        with open(os.path.join(state_dir, STARTED)) as f:
            print(f.read().strip())
        return 0
    if args == ["daemon-reload"]:
        return 0
    if args == ["--no-block", "try-restart", unit]:
        try:
            outcome = k3s_starts(cfg)
        except (OSError, ValueError, KeyError) as exc:
            print(f"Job for {unit} failed: the lab's k3s stand-in did not answer: {exc}", file=sys.stderr)
            return 1
        mark_started(state_dir, active=bool(outcome["started"]))
        anns = (outcome.get("node") or {}).get("metadata", {}).get("annotations", {})
        record = {"at": time.time(), "unit": unit, "started": outcome["started"], "error": outcome["error"],
                  "public_ip": anns.get("flannel.alpha.coreos.com/public-ip")}  # fmt: skip
        with open(os.path.join(state_dir, RESTARTS), "a") as f:
            f.write(json.dumps(record) + "\n")
        return 0
    print(f"lab systemctl: unexpected arguments: {' '.join(args)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
