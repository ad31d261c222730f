"""The real daemon against k3s and flannel as upstream starts them (issue 11 §1): does it
ask for k3s restarts that cannot converge?

The daemon (``Daemon.serve()`` with the real wiring, its timers and ``k3s.min_restart_interval_s``
at the default 600 s) and the API stand-in run on a
:class:`~tests.support.virtualtime.VirtualTimeLoop` for one simulated hour; the daemon's
clocks are the loop's. Its ``systemctl`` is :class:`tests.support.k3s_unit.K3sUnit`: each
``try-restart`` starts k3s in the stand-in with the node's config files as they are on disk
then, the k3s version's overwrite handling, then flannel's AcquireLease
(tests/kubeapi/k3s.py). A loop shows as a restart every ten minutes.

The cases are the loops issue 11 describes: wgagent must neither fight k3s nor wait forever,
and its ``annotation`` check must say what is going on and how to fix it. Before wgagent
followed k3s, the user-file and PR #13431 cases looped (6 restarts in the hour) and the IPv6
case failed its annotation check for good.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.kubeapi import KubeAPI, shared_pki
from tests.kubeapi.k3s import Cluster
from tests.labkit import free_port
from tests.support.k3s_unit import K3sUnit
from tests.support.virtualtime import VirtualTimeLoop, wall
from wgagent.config import Config, HealthConfig, K3sConfig, KubeConfig, ListenAddress, PublicIPConfig, WireGuardConfig
from wgagent.daemon import Daemon
from wgagent.model import ANN_PUBLIC_IP, ANN_PUBLIC_IP_OVERWRITE
from wgagent.publicip.model import Answer
from wgagent.wiring import Seams

NODE = "n1"
ADDRESS = "203.0.113.7"
"""What the node's public IP sources answer: the address wgagent decides."""
INTERNAL = "10.0.0.2"
RUN_S = 3600.0


@dataclass
class Fixed:
    """A public IP source that always answers ``ADDRESS`` (and ``ipv6`` when set)."""

    name: str
    ipv6: str | None = None
    kind: str = "http"
    timeout_s: float = 5.0
    why_not: str = ""

    async def observe(self) -> Sequence[Answer]:
        return [Answer(IPv4Address(ADDRESS))] + ([Answer(IPv6Address(self.ipv6))] if self.ipv6 else [])


def config(tmp: Path, api: KubeAPI) -> Config:
    return Config(
        node_name=NODE,
        state_dir=str(tmp / "state"),
        health=HealthConfig(listen=ListenAddress("127.0.0.1", free_port())),
        public_ip=PublicIPConfig(),
        k3s=K3sConfig(role="agent", config_dir=str(tmp / "etc"), data_dir=str(tmp / "data")),
        kube=KubeConfig(kubeconfig=api.node_kubeconfig(NODE), list_kubeconfig=api.controller_kubeconfig()),
        wireguard=WireGuardConfig(enabled=False),
    )


async def one_run(
    tmp: Path, loop: VirtualTimeLoop, api: KubeAPI, version: str, ipv6: str | None = None
) -> tuple[K3sUnit, dict[str, Any]]:
    (tmp / "units").mkdir()
    unit = K3sUnit(api, NODE, str(tmp / "etc"), clock=wall(loop), monotonic=loop.time, start={"version": version},
                   unit_dirs=[str(tmp / "units")])  # fmt: skip
    seams = Seams(clock=wall(loop), monotonic=loop.time, runner=unit, unit_dirs=[str(tmp / "units")],
                  public_ip_sources=[Fixed("http:a", ipv6), Fixed("http:b", ipv6)])  # fmt: skip
    daemon = Daemon(config(tmp, api), str(tmp / "absent.yaml"), config_required=False, seams=seams)
    task = asyncio.ensure_future(daemon.serve())
    await asyncio.sleep(RUN_S)
    assert not task.done(), "the daemon stopped"
    checks = daemon.state.status()["checks"]
    daemon.stop()
    assert await task == 0
    return unit, checks


@pytest.mark.parametrize(
    ("version", "flannel_external_ip", "user_file", "published", "check"),
    [
        pytest.param("v1.32.4+k3s1", False, None, ADDRESS, "public-ip is 203.0.113.7",
                     id="k3s leaves the overwrite alone"),
        pytest.param("v1.32.4+k3s1", True, None, ADDRESS, "public-ip is 203.0.113.7",
                     id="k3s writes the same address"),
        pytest.param("v1.32.4+k3s1", True, "node-external-ip: 198.51.100.99\n", "198.51.100.99",
                     "k3s will use node-external-ip 198.51.100.99 from ",
                     id="a later user file overrides node-external-ip"),
        pytest.param("v1.32.11+k3s3", False, None, INTERNAL, "set flannel-external-ip: true on every server",
                     id="k3s with PR 13431 removes the overwrite"),
    ],
)  # fmt: skip
def test_no_restart_that_cannot_converge(
    tmp_path: Path, version: str, flannel_external_ip: bool, user_file: str | None, published: str, check: str
) -> None:
    require("openssl")
    if user_file is not None:
        (tmp_path / "etc" / "config.yaml.d").mkdir(parents=True)
        (tmp_path / "etc" / "config.yaml.d" / "90-user.yaml").write_text(user_file)
    cluster = Cluster(flannel_backend="wireguard-native", flannel_external_ip=flannel_external_ip,
                      server_version=version)  # fmt: skip
    loop = VirtualTimeLoop()
    try:

        async def main() -> tuple[K3sUnit, dict[str, Any], dict[str, str]]:
            api = KubeAPI(pki=shared_pki(), cluster=cluster)
            api.store.add(NODE, internal_ip=INTERNAL, version=version)
            async with api:
                unit, checks = await one_run(tmp_path, loop, api, version)
                return unit, checks, dict(api.store.nodes[NODE]["metadata"]["annotations"])

        unit, checks, anns = loop.run_until_complete(main())
    finally:
        loop.close()
    assert all(outcome.started for _, outcome in unit.restarts)
    # What flannel publishes is k3s's doing; wgagent must not loop over it.
    seen = (anns.get(ANN_PUBLIC_IP_OVERWRITE), anns.get(ANN_PUBLIC_IP))
    assert len(unit.restarts) <= 1, (
        f"{len(unit.restarts)} k3s restarts in {RUN_S / 3600:g} simulated hour(s); overwrite, public-ip: {seen}"
    )
    assert anns.get(ANN_PUBLIC_IP) == published, seen
    assert check in checks["annotation"]["detail"], checks["annotation"]
    assert checks["annotation"]["ok"] == (published == ADDRESS)


def test_an_ipv6_address_on_an_ipv4_only_cluster_is_no_failure(tmp_path: Path) -> None:
    require("openssl")
    cluster = Cluster(flannel_backend="wireguard-native", flannel_external_ip=False)
    loop = VirtualTimeLoop()
    try:

        async def main() -> tuple[K3sUnit, dict[str, Any], dict[str, str]]:
            api = KubeAPI(pki=shared_pki(), cluster=cluster)
            api.store.add(NODE, internal_ip=INTERNAL)
            async with api:
                unit, checks = await one_run(tmp_path, loop, api, "v1.32.4+k3s1", ipv6="2001:db8::7")
                return unit, checks, dict(api.store.nodes[NODE]["metadata"]["annotations"])

        unit, checks, anns = loop.run_until_complete(main())
    finally:
        loop.close()
    assert "flannel.alpha.coreos.com/public-ipv6" not in anns  # flannel on an IPv4-only cluster
    assert len(unit.restarts) <= 1
    assert all(check["ok"] for check in checks.values()), checks
