"""The one-shot commands' client (kube/oneshot.py) against the API stand-in over real HTTPS on
loopback: the kubeconfig's CA is what it trusts, client certificates (files and inline data),
tokens and token files authenticate it, refusals are the daemon's errors, and
``wiring.list_nodes_once`` (``wgagent gc``) falls back from k3s's controller credential to the
kubelet's where the controller may not list Nodes (servers before the January 2025 RBAC fix).

Only the TLS half is here; tests/unit/test_kube_oneshot.py has the rest on plain HTTP.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.conftest import require
from tests.kubeapi import CONTROLLER, PKI, KubeAPI, User, shared_pki
from wgagent.config import Config, K3sConfig, KubeConfig
from wgagent.errors import Forbidden, KubeError, KubeUnreachable
from wgagent.kube.client import KubeClient
from wgagent.kube.oneshot import OneShotClient
from wgagent.kube.protocol import NodeLister
from wgagent.wiring import Seams, decide_identity, list_nodes_once


def api_with(*nodes: str) -> KubeAPI:
    require("openssl")
    return KubeAPI(nodes=nodes, pki=shared_pki())


async def names(client: NodeLister) -> list[str]:
    try:
        return [item["metadata"]["name"] for item in (await client.list_nodes_metadata())["items"]]
    finally:
        await client.close()


async def error(client: NodeLister) -> KubeError:
    try:
        await client.list_nodes_metadata()
    except KubeError as exc:
        return exc
    finally:
        await client.close()
    raise AssertionError("the list succeeded")


async def test_every_kind_of_credential_lists_over_tls() -> None:
    async with api_with("n1", "n2") as api:
        api.set_cluster(server_version="v1.31.5+k3s1")  # the controller may list, and a node still too
        assert await names(OneShotClient(api.controller_kubeconfig())) == ["n1", "n2"]  # files
        assert await names(OneShotClient(api.node_kubeconfig("n1", inline=True))) == ["n1", "n2"]  # inline data
        admin = User("ops", ("system:masters",))
        assert await names(OneShotClient(api.token_kubeconfig("ops-token-0123456789", admin))) == ["n1", "n2"]
        tf = api.token_kubeconfig("file-token-0123456789", admin, token_file=True)
        assert await names(OneShotClient(tf)) == ["n1", "n2"]
        assert [(r.verb, r.status) for r in api.requests] == [("list", 200)] * 4


async def test_a_refusal_is_the_daemons_error() -> None:
    async with api_with("n1", "n2") as api:  # k3s v1.32: a node credential sees its own Node only
        kc = api.node_kubeconfig("n1")
        oneshot, daemon = await error(OneShotClient(kc)), await error(KubeClient(kc))
    assert type(oneshot) is type(daemon) is Forbidden
    assert str(oneshot) == str(daemon)
    assert "node 'n1' cannot read all nodes, only its own Node object" in str(oneshot)


async def test_a_server_certificate_of_another_ca_is_not_trusted(tmp_path: Path) -> None:
    require("openssl")
    other = PKI.create(str(tmp_path / "other-pki"))
    async with api_with("n1") as api:
        kc = other.kubeconfig(str(tmp_path / "kc.yaml"), api.url, cert=other.client(CONTROLLER))
        oneshot = await error(OneShotClient(kc, retries=0))
        daemon = await error(KubeClient(kc, retries=0))
        insecure = tmp_path / "insecure.yaml"
        doc = Path(api.controller_kubeconfig()).read_text()
        ca_line = next(line for line in doc.splitlines() if "certificate-authority:" in line)
        insecure.write_text(doc.replace(ca_line, ca_line.split(":")[0] + ": null\n    insecure-skip-tls-verify: true"))
        assert await names(OneShotClient(str(insecure))) == ["n1"]
    assert isinstance(oneshot, KubeUnreachable) and isinstance(daemon, KubeUnreachable)
    assert str(oneshot) == str(daemon)  # both say what OpenSSL's verification said
    assert str(oneshot).startswith(f"GET {api.url}/api/v1/nodes: TLS certificate not trusted: ")


@pytest.mark.parametrize(
    ("version", "listed_by"),
    [("v1.31.4+k3s1", "system:node:n1"), ("v1.32.4+k3s1", CONTROLLER)],
    ids=["controller-may-not-list-yet", "controller-lists"],
)
async def test_wgagent_gc_lists_with_the_controller_else_the_kubelet(
    tmp_path: Path, version: str, listed_by: str
) -> None:
    """As the node watch does (k3s pkg/util/api.go CheckRBAC): the controller's credential
    first, the kubelet's when the controller may not list Nodes on this server version."""
    async with api_with("n1", "n2") as api:
        api.set_cluster(server_version=version)
        kube = KubeConfig(kubeconfig=api.node_kubeconfig("n1"), list_kubeconfig=api.controller_kubeconfig())
        k3s = K3sConfig(config_dir=str(tmp_path / "k3s"), data_dir=str(tmp_path / "data"))
        cfg = Config(node_name="n1", kube=kube, k3s=k3s)
        seams = Seams(unit_dirs=(str(tmp_path / "units"),))  # no k3s unit: an agent, by its credentials
        identity = decide_identity(cfg, seams)
        view, note = await list_nodes_once(cfg, identity, seams)
        assert note == "" and view is not None and set(view.nodes) == {"n1", "n2"}
        assert [(r.user, r.status) for r in api.requests if r.verb == "list"][-1] == (listed_by, 200)
        refused = dataclasses.replace(kube, kubeconfig=api.token_kubeconfig("nobody-0123456789", User("x")))
        api.set_cluster(server_version="v1.31.4+k3s1")
        view, note = await list_nodes_once(dataclasses.replace(cfg, kube=refused), identity, seams)
    assert view is None and note.startswith("node list unavailable: GET ") and "; GET " in note
