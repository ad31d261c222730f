"""A stand-in for ``systemctl`` on one lab node, where k3s cannot be installed.

    python -m tests.cluster.systemctl STATE_DIR ARGS...      (the node's ``bin/systemctl`` execs this)

It answers the three calls wgagent's k3s Restarter makes, for the node's one k3s unit:

    is-active UNIT                 "active": k3s runs here (since the lab started)
    show --property=ExecMainStartTimestampMonotonic --value UNIT
                                   when k3s last (re)started, CLOCK_MONOTONIC microseconds
    --no-block try-restart UNIT    a k3s restart: record it, then tell the API stand-in to act
                                   as flannel does when k3s starts (copy public-ip-overwrite
                                   into public-ip), and remember the start time

The stand-in is told before this returns, so "flannel re-read the overwrite" is true once
``systemctl`` has answered; a real k3s takes seconds, which the daemon does not wait for
either (``--no-block``). Every call is appended to ``STATE_DIR/calls.log``, every restart to
``STATE_DIR/restarts.log`` (one JSON line each). ``STATE_DIR/standin.json`` says where the
stand-in is: ``{"url", "ca", "token", "node", "unit"}``.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.request

STANDIN = "standin.json"
STARTED = "started"
CALLS = "calls.log"
RESTARTS = "restarts.log"


def now_us() -> int:
    return int(time.monotonic() * 1e6)


def mark_started(state_dir: str) -> None:
    with open(os.path.join(state_dir, STARTED), "w") as f:
        f.write(f"{now_us()}\n")


def restarts(state_dir: str) -> list[dict[str, object]]:
    """The restarts recorded so far, oldest first."""
    try:
        with open(os.path.join(state_dir, RESTARTS)) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def _flannel_starts(cfg: dict[str, str]) -> str:
    """POST the stand-in's k3s_restart action for this node; the public-ip flannel published."""
    ctx = ssl.create_default_context(cafile=cfg["ca"])
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))
    req = urllib.request.Request(  # noqa: S310 (an https URL from the lab's own file)
        cfg["url"] + "/_standin/control",
        data=json.dumps({"action": "k3s_restart", "node": cfg["node"]}).encode(),
        headers={"Authorization": f"Bearer {cfg['token']}", "Content-Type": "application/json"},
        method="POST",
    )
    with opener.open(req, timeout=10) as resp:
        node = json.loads(resp.read())["result"]
    return str(node["metadata"]["annotations"].get("flannel.alpha.coreos.com/public-ip"))


def main(argv: list[str]) -> int:
    state_dir, args = argv[0], argv[1:]
    with open(os.path.join(state_dir, CALLS), "a") as f:
        f.write(" ".join(args) + "\n")
    with open(os.path.join(state_dir, STANDIN)) as f:
        cfg = json.load(f)
    unit = cfg["unit"]
    if args[:1] == ["is-active"]:
        active = args[1:] == [unit]
        print("active" if active else "inactive")
        return 0 if active else 3
    if args[:1] == ["show"] and args[-1:] == [unit] and "--property=ExecMainStartTimestampMonotonic" in args:
        with open(os.path.join(state_dir, STARTED)) as f:
            print(f.read().strip())
        return 0
    if args == ["--no-block", "try-restart", unit]:
        try:
            published = _flannel_starts(cfg)
        except (OSError, ValueError, KeyError) as exc:
            print(f"Job for {unit} failed: the lab's flannel stand-in did not answer: {exc}", file=sys.stderr)
            return 1
        mark_started(state_dir)
        with open(os.path.join(state_dir, RESTARTS), "a") as f:
            f.write(json.dumps({"at": time.time(), "unit": unit, "public_ip": published}) + "\n")
        return 0
    print(f"lab systemctl: unexpected arguments: {' '.join(args)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
