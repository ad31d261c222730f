"""The lab's stand-in systemctl (tests/cluster/systemctl.py) as a process against the API
stand-in: a try-restart starts k3s as upstream would on that node, from its config files."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from tests.cluster import systemctl
from tests.conftest import ROOT, require
from tests.kubeapi import ADMIN_TOKEN, KubeAPI, shared_pki
from tests.kubeapi.k3s import OVERWRITE_V4

UNIT = "k3s-agent.service"


async def call(state: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.cluster.systemctl", str(state), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT), "NO_PROXY": "127.0.0.1"},
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode().strip()


async def test_an_agent_with_a_server_key_fails_to_start_and_changes_nothing(tmp_path: Path) -> None:
    require("openssl")
    etc, state = tmp_path / "etc", tmp_path / "state"
    (etc / "config.yaml.d").mkdir(parents=True)
    state.mkdir()
    async with KubeAPI(pki=shared_pki()) as api:
        api.set_cluster(flannel_external_ip=True)
        api.store.add("n1", internal_ip="10.1.0.2")
        with open(state / systemctl.STANDIN, "w") as f:
            json.dump({"url": api.url, "ca": api.pki.ca_cert, "token": ADMIN_TOKEN, "node": "n1", "unit": UNIT,
                       "config_dir": str(etc)}, f)  # fmt: skip
        systemctl.mark_started(str(state))
        (etc / "config.yaml.d" / "50-wgagent.yaml").write_text("node-external-ip: [203.0.113.14]\n")
        (etc / "config.yaml").write_text("flannel-backend: wireguard-native\n")
        rv = api.store.rv

        assert await call(state, "--no-block", "try-restart", UNIT) == (0, "")  # systemd queued the job
        assert await call(state, "is-active", UNIT) == (3, "activating")  # k3s exits, systemd retries
        [record] = systemctl.restarts(str(state))
        assert (record["started"], record["error"]) == (False, "flag provided but not defined: -flannel-backend")
        assert api.store.rv == rv  # nothing written

        (etc / "config.yaml").unlink()
        assert await call(state, "--no-block", "try-restart", UNIT) == (0, "")
        assert await call(state, "is-active", UNIT) == (0, "active")
        anns = api.store.nodes["n1"]["metadata"]["annotations"]
        assert anns[OVERWRITE_V4] == anns["flannel.alpha.coreos.com/public-ip"] == "203.0.113.14"
        assert systemctl.restarts(str(state))[-1]["public_ip"] == "203.0.113.14"
