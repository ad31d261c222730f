"""wgagent's Events and ``wgagent mesh`` through the real Kubernetes client, against the API stand-in.

- the EventRecorder with a node's own credential (kubelet's, as k3s gives an agent): a new
  Event is a POST, a repeat a JSON merge patch of count/lastTimestamp/message; a POST of a name
  that exists is answered 409 (client-go treats it as done, so does the recorder); a patch of
  an Event that expired (deleted) makes it again;
- real ``kubectl get events --field-selector involvedObject.name=<node>`` and
  ``kubectl describe node`` show wgagent's timeline;
- ``wgagent mesh --json`` reads the reports with the list credential (k3s's controller's), exit 1
  while a Node does not report, and its JSON holds the contract's keys.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import require
from tests.kubeapi import KubeAPI, shared_pki
from tests.lab.test_kube_kubectl import kubectl
from tests.support import configs
from wgagent import events as ev
from wgagent import wiring
from wgagent.commands import mesh as mesh_command
from wgagent.config import load
from wgagent.errors import Conflict
from wgagent.kube.client import KubeClient
from wgagent.mesh import report as rp
from wgagent.model import ANN_BACKEND_DATA, ANN_PUBLIC_IP

NOW = 1_800_000_000.0


async def test_events_are_created_then_counted_by_merge_patch_and_kubectl_shows_them(tmp_path: Path) -> None:
    require("kubectl", "openssl")
    async with KubeAPI(nodes=["n1", "n2"], pki=shared_pki()) as api:
        client = KubeClient(api.node_kubeconfig("n1"), timeout_s=5)
        clock = [NOW]
        recorder = ev.EventRecorder(client, "n1", clock=lambda: clock[0])
        try:
            down = ev.mesh_path_down("n1", "n2", "down", "inbound-blocked-host", "n2", "accept UDP 51820")
            await recorder.record(down)
            clock[0] += 60
            await recorder.record(down)  # the same again: counted on the Event (merge patch)
            await recorder.record(ev.endpoint_reset("n2", "203.0.113.2:40001", "203.0.113.2:51820"))
            assert recorder.failed == 0 and recorder.written == 3
            entry = recorder.ledger.entries["MeshPathDown"]
            body = ev.body("n1", entry, "MeshPathDown")
            with pytest.raises(Conflict):  # the same name again: 409, as the API server answers
                await client.create_event(ev.NAMESPACE, body)
        finally:
            await client.close()

        code, out, err = await kubectl(
            api, tmp_path, "get", "events", "-A", "--field-selector", "involvedObject.name=n1", "-o", "json"
        )
        assert code == 0, err
        items = {i["reason"]: i for i in json.loads(out)["items"]}
        assert set(items) == {"MeshPathDown", "EndpointReset"}
        assert items["MeshPathDown"]["count"] == 2 and items["MeshPathDown"]["type"] == "Warning"
        assert items["MeshPathDown"]["source"]["component"] == "wgagent"
        code, out, err = await kubectl(api, tmp_path, "describe", "node", "n1")
        assert code == 0, err
        assert "MeshPathDown" in out and "EndpointReset" in out and "wgagent" in out


async def test_a_patch_of_an_expired_event_makes_it_again(tmp_path: Path) -> None:
    require("openssl")
    async with KubeAPI(nodes=["n1"], pki=shared_pki()) as api:
        client = KubeClient(api.node_kubeconfig("n1"), timeout_s=5)
        clock = [NOW]
        recorder = ev.EventRecorder(client, "n1", clock=lambda: clock[0])
        try:
            record = ev.k3s_restarted("k3s-agent.service", "the drop-in changed")
            await recorder.record(record)
            first = recorder.ledger.entries["K3sRestarted"].name
            api.store.events.delete("default", first)  # the API server's --event-ttl expired it
            clock[0] += 7200
            await recorder.record(record)
            again = recorder.ledger.entries["K3sRestarted"]
            assert again.name != first and again.count == 2 and recorder.failed == 0
        finally:
            await client.close()


async def test_wgagent_mesh_reads_the_reports_with_the_list_credential(tmp_path: Path) -> None:
    require("openssl")
    async with KubeAPI(nodes=["n1", "n2"], pki=shared_pki()) as api:
        writer = KubeClient(api.node_kubeconfig("n1"), timeout_s=5)
        try:
            backend = '{"PublicKey":"%s","Port":51820}'
            for node, key, ip in (("n1", "a" * 43 + "=", "203.0.113.1"), ("n2", "b" * 43 + "=", "203.0.113.2")):
                own = KubeClient(api.node_kubeconfig(node), timeout_s=5)
                anns = {ANN_BACKEND_DATA: backend % key, ANN_PUBLIC_IP: ip}
                await own.patch_node(node, {"metadata": {"annotations": anns}})
                await own.close()
            await writer.patch_node("n1", rp.patch(rp.Report(at=int(time.time()), interface="flannel-wg")))
        finally:
            await writer.close()
        path = configs.write(str(tmp_path / "config.yaml"), configs.sandbox(
            str(tmp_path), 18795, node_name="n1", kube={"enabled": True, "kubeconfig": api.node_kubeconfig("n1"),
                                                         "list_kubeconfig": api.controller_kubeconfig()},
        ))  # fmt: skip
        code, text = await mesh_command.mesh_command(load(path), wiring.Seams(), as_json=True)
    assert code == 1  # n2 publishes no report
    doc = json.loads(text)
    assert set(doc) >= {"nodes", "pairs", "problems", "reports"}
    assert doc["nodes"] == ["n1", "n2"]
    assert {(p["node"], p["cause"]) for p in doc["problems"]} == {("n2", "no-report")}
    assert all(set(p) == {"from", "to", "state", "cause", "node", "fix", "since"} for p in doc["pairs"])
    assert doc["reports"]["n2"] == {"age_s": None, "stale": True, "state": "missing"}
    assert doc["reports"]["n1"]["stale"] is False
