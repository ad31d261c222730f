"""``wgagent run --once`` against the API stand-in leaves the drop-in and the annotation right.

One agent node in a namespace, the stand-in in another (a k3s server's API on 10.9.0.1:6443),
joined by one veth pair. The Node was registered by k3s with flannel's annotations and
``public-ip`` = its InternalIP 10.9.0.2, as flannel publishes it without an overwrite. The
public address is pinned (``public_ip.static``: nothing outside is asked). k3s is "active"
through the lab's fake ``systemctl`` (:mod:`tests.cluster.systemctl`), whose try-restart has
the stand-in do what flannel does at start: copy ``public-ip-overwrite`` into ``public-ip``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

import pytest

from tests.cluster import systemctl
from tests.cluster.netns import InNetns
from tests.conftest import ROOT, require
from tests.kubeapi import ADMIN_TOKEN
from tests.labkit import Host, Lab, wait_for
from tests.support import configs
from wgagent.config import K3sConfig
from wgagent.k3s.dropin import render_dropin
from wgagent.model import ANN_PUBLIC_IP, ANN_PUBLIC_IP_OVERWRITE, PublicAddresses

PUBLIC = "203.0.113.7"
INTERNAL = "10.9.0.2"
API_HOST = "10.9.0.1"
UNIT = "k3s-agent.service"


@dataclass
class Setup:
    lab: Lab
    node: Host
    api_ns: InNetns
    standin: dict[str, Any]
    config: str
    systemctl_dir: str

    def api(self, method: str, path: str, body: Any = None) -> Any:
        status, data = self.api_ns.http(
            self.standin["url"] + path,
            method=method,
            body=body,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            cafile=self.standin["ca"],
        )
        assert status == 200, (status, data)
        return json.loads(data)

    def annotations(self) -> dict[str, str]:
        return dict(self.api("GET", "/api/v1/nodes/node1")["metadata"]["annotations"])

    def patches(self) -> int:
        counts = self.api("GET", "/_standin/counts")["requests"]
        return sum(c["count"] for c in counts if c["verb"] == "patch")

    def run_once(self) -> tuple[int, dict[str, Any], str]:
        env = dict(os.environ, PYTHONPATH=str(ROOT), PATH=f"{self.node.dir}/bin:{os.environ['PATH']}")
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM"):
            env.pop(name, None)
        proc = subprocess.run(
            self.node.argv(sys.executable, "-m", "wgagent", "--config", self.config, "run", "--once"),
            capture_output=True, text=True, timeout=60, env=env, cwd=str(ROOT),
        )  # fmt: skip
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.returncode, json.loads(proc.stdout), proc.stderr


@pytest.fixture
def setup(lab: Lab) -> Iterator[Setup]:
    require("openssl", "ip", root=True)
    cp, node = lab.host("cp"), lab.host("node1")
    lab.link(node, "eth0", f"{INTERNAL}/24", cp, "eth0", f"{API_HOST}/24")
    argv = [sys.executable, "-m", "tests.kubeapi", "--host", API_HOST, "--port", "6443", "--san", API_HOST]
    argv += ["--nodes", f"node1={INTERNAL}", "--dir", os.path.join(cp.dir, "kubeapi")]
    proc = lab.spawn(cp, argv, name="kubeapi", cwd=str(ROOT), env={"PYTHONPATH": str(ROOT)})
    wait_for(lambda: proc.output().startswith("{"), 30, "the API stand-in", proc=proc)
    standin = json.loads(proc.output().splitlines()[0])
    # k3s runs on node1: the fake systemctl, first on wgagent's PATH
    sdir = os.path.join(node.dir, "systemctl")
    os.makedirs(sdir)
    with open(os.path.join(sdir, systemctl.STANDIN), "w") as f:
        json.dump({"url": standin["url"], "ca": standin["ca"], "token": ADMIN_TOKEN, "node": "node1", "unit": UNIT}, f)
    systemctl.mark_started(sdir)
    os.makedirs(os.path.join(node.dir, "bin"))
    wrapper = os.path.join(node.dir, "bin", "systemctl")
    with open(wrapper, "w") as f:
        f.write(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m tests.cluster.systemctl {sdir} "$@"\n')
    os.chmod(wrapper, 0o700)
    cfg = configs.sandbox(
        node.dir,
        8795,
        node_name="node1",
        public_ip={"enabled": True, "static": [PUBLIC]},
        # The default rate limit (600 s): one pass needs one restart, for both of its reasons.
        k3s={"enabled": True, "role": "agent", "restart": True},
        kube={
            "enabled": True,
            "kubeconfig": standin["nodes"]["node1"],
            "list_kubeconfig": standin["k3scontroller"],
        },
    )
    path = configs.write(os.path.join(node.dir, "config.yaml"), cfg)
    with InNetns(cp.netns) as api_ns:
        yield Setup(lab, node, api_ns, standin, path, sdir)


def test_run_once_leaves_the_drop_in_and_the_annotation_right(setup: Setup) -> None:
    before = setup.annotations()
    assert before[ANN_PUBLIC_IP] == INTERNAL and ANN_PUBLIC_IP_OVERWRITE not in before

    code, status, log = setup.run_once()

    # The drop-in: exactly what render_dropin() makes for an agent with the pinned address, mode 0600.
    dropin = os.path.join(setup.node.dir, "etc-rancher-k3s", "config.yaml.d", "50-wgagent.yaml")
    with open(dropin) as f:
        assert f.read() == render_dropin("agent", PublicAddresses(IPv4Address(PUBLIC)), K3sConfig())
    assert os.stat(dropin).st_mode & 0o777 == 0o600
    checks = status["checks"]
    assert checks["k3s_config"]["ok"], checks["k3s_config"]
    assert checks["k3s_config"]["detail"].startswith(f"{dropin} written (agent): node-external-ip {PUBLIC}")
    # The annotation: set, and flannel (restarted by wgagent) publishes it.
    after = setup.annotations()
    assert after[ANN_PUBLIC_IP_OVERWRITE] == PUBLIC and after[ANN_PUBLIC_IP] == PUBLIC
    assert setup.patches() == 1
    # One restart for both needs, after both writes: k3s must restart for the new drop-in anyway,
    # and this k3s (v1.32.4, flannel-external-ip off in the stand-in's cluster) leaves the
    # overwrite alone, so the annotation part set it ahead of that restart (rule "restart" with
    # its patch); the k3s part then wrote the drop-in and restarted k3s once. The annotation
    # check was written before that restart, so it says so and the exit code is 1.
    restarts = systemctl.restarts(setup.systemctl_dir)
    assert [r["unit"] for r in restarts] == [UNIT] and restarts[-1]["public_ip"] == PUBLIC
    assert "50-wgagent.yaml changed: node-external-ip unset -> 203.0.113.7" in log
    assert not checks["annotation"]["ok"] and code == 1
    detail = checks["annotation"]["detail"]
    assert detail == f"Node node1: k3s has not restarted since node-external-ip became {PUBLIC}", detail

    # A second pass finds everything right: exit 0, no patch, no restart, the drop-in untouched.
    mtime = os.stat(dropin).st_mtime_ns
    code, status, _ = setup.run_once()
    assert code == 0, status["checks"]
    checks = status["checks"]
    assert checks["annotation"]["detail"] == f"Node node1: public-ip is {PUBLIC}", checks["annotation"]
    assert checks["k3s_config"]["detail"].startswith(f"{dropin} up to date (agent)")
    assert setup.patches() == 1 and len(systemctl.restarts(setup.systemctl_dir)) == 1
    assert os.stat(dropin).st_mtime_ns == mtime
    assert setup.annotations()[ANN_PUBLIC_IP] == PUBLIC
