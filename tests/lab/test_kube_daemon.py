"""The daemon's wiring of the node watch and the annotation part, one pass against the stand-in.

Only the Kubernetes parts are enabled (public IP discovery, k3s and WireGuard are off), so
nothing but the stand-in on 127.0.0.1 is asked.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import require
from tests.kubeapi import CONTROLLER, KubeAPI, shared_pki
from wgagent.config import Config, K3sConfig, KubeConfig, PublicIPConfig, WireGuardConfig
from wgagent.daemon import Daemon
from wgagent.k3s.role import Identity
from wgagent.k3s.scan import ConfigLocation
from wgagent.model import ANN_PUBLIC_IP, ANN_PUBLIC_IP_OVERWRITE
from wgagent.state import State
from wgagent.wiring import build_parts


def kube_only(tmp_path: Path, api: KubeAPI) -> Config:
    return Config(
        node_name="n1",
        state_dir=str(tmp_path / "state"),
        public_ip=PublicIPConfig(enabled=False),
        k3s=K3sConfig(enabled=False, config_dir=str(tmp_path / "etc"), data_dir=str(tmp_path / "data")),
        wireguard=WireGuardConfig(enabled=False),
        kube=KubeConfig(kubeconfig=api.node_kubeconfig("n1"), list_kubeconfig=api.controller_kubeconfig()),
    )


async def test_build_parts_stages_the_watch_before_the_annotation(tmp_path: Path) -> None:
    require("openssl")
    async with KubeAPI(nodes=["n1"], pki=shared_pki()) as api:
        stages = build_parts(
            kube_only(tmp_path, api),
            Identity("n1", "test", None, ConfigLocation.in_dir(str(tmp_path / "etc")), str(tmp_path / "data")),
            State(node="n1", version="test"),
        )
        assert [[p.name for p in stage] for stage in stages] == [["events", "node_watch"], ["annotation"]]
        for stage in stages:
            for part in stage:
                await part.close()


async def test_run_once_lists_once_and_reports_the_annotation(tmp_path: Path) -> None:
    require("openssl")
    async with KubeAPI(nodes=["n1", "n2"], pki=shared_pki()) as api:
        api.store.set_annotations("n1", {ANN_PUBLIC_IP_OVERWRITE: "203.0.113.7", ANN_PUBLIC_IP: "203.0.113.7"})
        daemon = Daemon(kube_only(tmp_path, api), str(tmp_path / "none.yaml"), config_required=False)
        code = await daemon.once()
        status = daemon.state.status()
        assert status["parts"]["node_watch"]["nodes"] == 2
        # Public IP discovery is off here: nothing is decided, so nothing is annotated.
        assert code == 1
        assert status["checks"]["annotation"]["detail"] == "no public IP decided yet; nothing to annotate on Node n1"
        assert dict(api.counts) == {(CONTROLLER, "list"): 1}
