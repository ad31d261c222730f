"""The real kubectl against the API stand-in: if kubectl accepts it, it follows the API closely.

kubectl runs as a child process (its own cache dir and HOME, no proxy) against the stand-in
on 127.0.0.1; the stand-in runs on the test's event loop, so kubectl is driven with asyncio.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import require
from tests.kubeapi import KubeAPI, shared_pki
from wgagent.model import ANN_PUBLIC_IP, ANN_PUBLIC_IP_OVERWRITE

TIMEOUT_S = 30


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k != "KUBECONFIG"}
    env.update(HOME=str(home), NO_PROXY="127.0.0.1,localhost")
    return env


def api_with(*nodes: str, servers: tuple[str, ...] = ()) -> KubeAPI:
    require("kubectl", "openssl")
    return KubeAPI(nodes=nodes, servers=servers, pki=shared_pki())


async def kubectl(api: KubeAPI, tmp: Path, *args: str, kubeconfig: str | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "kubectl",
        "--kubeconfig",
        kubeconfig or api.admin_kubeconfig(),
        "--cache-dir",
        str(tmp / "cache"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(tmp),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@asynccontextmanager
async def kubectl_stream(api: KubeAPI, tmp: Path, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """A long-running kubectl (``--watch``); killed by its PID on the way out."""
    proc = await asyncio.create_subprocess_exec(
        "kubectl", "--kubeconfig", api.admin_kubeconfig(), "--cache-dir", str(tmp / "cache"), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(tmp),
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def read_until(proc: asyncio.subprocess.Process, want: str, lines: list[str], start: int = 0) -> None:
    """Read kubectl's output into ``lines`` until one from ``start`` on contains ``want`` (with a deadline)."""
    assert proc.stdout is not None

    async def scan() -> None:
        while not any(want in line for line in lines[start:]):
            line = await proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise AssertionError(f"kubectl ended before printing {want!r}; output: {lines}")
            lines.append(line.decode().rstrip())

    await asyncio.wait_for(scan(), TIMEOUT_S)


async def until_watching(api: KubeAPI) -> None:
    async def wait() -> None:
        while not api.store.watchers:
            await asyncio.sleep(0.005)

    await asyncio.wait_for(wait(), TIMEOUT_S)


async def test_get_nodes(tmp_path: Path) -> None:
    async with api_with("n1", "n2", servers=("s1",)) as api:
        rc, out, err = await kubectl(api, tmp_path, "get", "nodes")
        assert rc == 0, err
        rows = [line.split() for line in out.splitlines()]
        assert rows[0] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
        assert [(r[0], r[1], r[2], r[4]) for r in rows[1:]] == [
            ("n1", "Ready", "<none>", "v1.32.4+k3s1"),
            ("n2", "Ready", "<none>", "v1.32.4+k3s1"),
            ("s1", "Ready", "control-plane,master", "v1.32.4+k3s1"),
        ]
        # kubectl asked for a server-side Table, and found nodes through discovery.
        lists = [r for r in api.requests if r.verb == "list"]
        assert len(lists) == 1
        assert {r.path for r in api.requests if r.verb == "discovery"} >= {"/api"}
        rc, out, err = await kubectl(api, tmp_path, "get", "nodes", "-o", "wide")
        assert rc == 0 and "INTERNAL-IP" in out and "Debian GNU/Linux 12 (bookworm)" in out, err


async def test_get_node_yaml(tmp_path: Path) -> None:
    async with api_with("n1") as api:
        rc, out, err = await kubectl(api, tmp_path, "get", "node", "n1", "-o", "yaml")
        assert rc == 0, err
        node = yaml.safe_load(out)
        assert node["kind"] == "Node" and node["apiVersion"] == "v1"
        assert node["metadata"]["name"] == "n1"
        assert node["metadata"]["resourceVersion"] == api.store.nodes["n1"]["metadata"]["resourceVersion"]
        assert node["metadata"]["annotations"][ANN_PUBLIC_IP].startswith("10.0.")
        assert node["status"]["conditions"][0]["type"] == "Ready"
        rc, _, err = await kubectl(api, tmp_path, "get", "node", "nope")
        assert rc == 1 and 'Error from server (NotFound): nodes "nope" not found' in err


async def test_annotate(tmp_path: Path) -> None:
    async with api_with("n1") as api:
        rc, out, err = await kubectl(api, tmp_path, "annotate", "node", "n1", f"{ANN_PUBLIC_IP_OVERWRITE}=203.0.113.5")
        assert rc == 0 and out.strip() == "node/n1 annotated", err
        assert api.store.nodes["n1"]["metadata"]["annotations"][ANN_PUBLIC_IP_OVERWRITE] == "203.0.113.5"
        assert [r.verb for r in api.requests if r.verb in ("get", "patch")] == ["get", "patch"]
        # Without --overwrite kubectl refuses to change it; with it, it does.
        rc, _, err = await kubectl(api, tmp_path, "annotate", "node", "n1", f"{ANN_PUBLIC_IP_OVERWRITE}=203.0.113.6")
        assert rc == 1 and "already has a value (203.0.113.5)" in err
        rc, _, err = await kubectl(
            api, tmp_path, "annotate", "--overwrite", "node", "n1", f"{ANN_PUBLIC_IP_OVERWRITE}=203.0.113.6"
        )
        assert rc == 0, err
        rc, _, err = await kubectl(api, tmp_path, "annotate", "node", "n1", f"{ANN_PUBLIC_IP_OVERWRITE}-")
        assert rc == 0 and ANN_PUBLIC_IP_OVERWRITE not in api.store.nodes["n1"]["metadata"]["annotations"], err
        # 422 for a key the API server would refuse.
        rc, _, err = await kubectl(api, tmp_path, "annotate", "node", "n1", "bad key!=x")
        assert rc == 1
        assert 'The Node "n1" is invalid: metadata.annotations: Invalid value: "bad key!"' in err


async def test_patch_types_and_replace_conflict(tmp_path: Path) -> None:
    async with api_with("n1") as api:
        for kind, patch in (
            ("strategic", '{"metadata":{"labels":{"a":"1"}}}'),
            ("merge", '{"metadata":{"labels":{"b":"2"}}}'),
            ("json", '[{"op":"add","path":"/metadata/labels/c","value":"3"}]'),
        ):
            rc, _, err = await kubectl(api, tmp_path, "patch", "node", "n1", "--type", kind, "-p", patch)
            assert rc == 0, (kind, err)
        labels = api.store.nodes["n1"]["metadata"]["labels"]
        assert (labels["a"], labels["b"], labels["c"]) == ("1", "2", "3")
        # PUT with a stale resourceVersion: 409 Conflict. (The stand-in serves no OpenAPI
        # document, so kubectl's client-side validation is off.)
        rc, out, err = await kubectl(api, tmp_path, "get", "node", "n1", "-o", "yaml")
        stale = tmp_path / "stale.yaml"
        stale.write_text(out)
        api.store.set_annotations("n1", {"x/changed": "meanwhile"})
        rc, _, err = await kubectl(api, tmp_path, "replace", "--validate=false", "-f", str(stale))
        assert rc == 1 and 'Operation cannot be fulfilled on nodes "n1": the object has been modified' in err
        doc = yaml.safe_load(out)
        doc["metadata"]["resourceVersion"] = api.store.nodes["n1"]["metadata"]["resourceVersion"]
        doc["metadata"]["labels"]["d"] = "4"
        fresh = tmp_path / "fresh.yaml"
        fresh.write_text(yaml.safe_dump(doc))
        rc, out, err = await kubectl(api, tmp_path, "replace", "--validate=false", "-f", str(fresh))
        assert rc == 0 and "node/n1 replaced" in out, err
        assert api.store.nodes["n1"]["metadata"]["labels"]["d"] == "4"


async def test_node_credential_sees_only_its_own_node(tmp_path: Path) -> None:
    async with api_with("n1", "n2") as api:
        own = api.node_kubeconfig("n1")
        rc, out, err = await kubectl(api, tmp_path, "get", "node", "n1", kubeconfig=own)
        assert rc == 0 and out.splitlines()[1].startswith("n1 "), err
        rc, _, err = await kubectl(api, tmp_path, "get", "node", "n2", kubeconfig=own)
        assert rc == 1 and "Error from server (Forbidden)" in err
        assert "node 'n1' cannot read 'n2', only its own Node object" in err
        rc, _, err = await kubectl(api, tmp_path, "get", "nodes", kubeconfig=own)
        assert rc == 1 and 'cannot list resource "nodes"' in err
        rc, out, err = await kubectl(
            api, tmp_path, "get", "nodes", "--field-selector", "metadata.name=n1", kubeconfig=own
        )
        assert rc == 0 and [line.split()[0] for line in out.splitlines()[1:]] == ["n1"], err


async def test_get_nodes_watch_sees_a_change(tmp_path: Path) -> None:
    async with api_with("n1", "n2") as api:
        lines: list[str] = []
        async with kubectl_stream(api, tmp_path, "get", "nodes", "--watch") as proc:
            await read_until(proc, "n2 ", lines)
            assert lines[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
            await until_watching(api)
            before = len(lines)
            api.store.set_annotations("n1", {ANN_PUBLIC_IP_OVERWRITE: "203.0.113.8"})
            await read_until(proc, "n1 ", lines, start=before)
            assert [line.split()[0] for line in lines[before:]] == ["n1"]  # one row: the change
        assert [r.verb for r in api.requests if r.verb in ("list", "watch")] == ["list", "watch"]


async def test_get_nodes_watch_shows_the_new_annotation(tmp_path: Path) -> None:
    async with api_with("n1") as api:
        column = "PUBLIC-IP:.metadata.annotations.flannel\\.alpha\\.coreos\\.com/public-ip"
        lines: list[str] = []
        async with kubectl_stream(
            api, tmp_path, "get", "node", "n1", "--watch", "-o", f"custom-columns=NAME:.metadata.name,{column}"
        ) as proc:
            await read_until(proc, "n1 ", lines)
            assert lines[1].split()[1].startswith("10.0.")
            # kubectl GETs the Node, prints it, then watches from resourceVersion 0 and skips
            # the first (synthetic ADDED) event: a change made before the watch started would
            # be skipped with it, by kubectl itself. So change only once the watch is open.
            await until_watching(api)
            api.k3s_restart("n1")  # no overwrite: flannel keeps the internal address (no change)
            api.store.set_annotations("n1", {ANN_PUBLIC_IP_OVERWRITE: "203.0.113.9"})
            api.k3s_restart("n1")  # flannel copies the overwrite into public-ip
            await read_until(proc, "203.0.113.9", lines)
            assert lines[-1].split() == ["n1", "203.0.113.9"]


async def as_node(api: KubeAPI, node: str, method: str, path: str, body: bytes, ctype: str) -> tuple[int, bytes]:
    """One request with ``node``'s client certificate (what its kubelet credential sends)."""
    cert, key = api.pki.client(f"system:node:{node}", "system:nodes")

    def call() -> tuple[int, bytes]:
        ctx = ssl.create_default_context(cafile=api.pki.ca_cert)
        ctx.load_cert_chain(cert, key)
        conn = http.client.HTTPSConnection(api.host, api.port, context=ctx, timeout=TIMEOUT_S)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": ctype})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    return await asyncio.to_thread(call)


def event_manifest(name: str, node: str, uid: str, *, reason: str, message: str, count: int = 1) -> dict[str, Any]:
    """A core/v1 Event about Node ``node`` as client-go's recorder makes one (namespace default)."""
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": "default"},
        "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid},
        "reason": reason,
        "message": message,
        "type": "Warning",
        "count": count,
        "firstTimestamp": "2026-12-01T10:00:00Z",
        "lastTimestamp": "2026-12-01T10:00:00Z",
        "source": {"component": "wgagent", "host": node},
    }


async def test_a_node_creates_and_patches_events_the_admin_reads_them(tmp_path: Path) -> None:
    async with api_with("n1", "n2") as api:
        own = api.node_kubeconfig("n1")
        doc = tmp_path / "event.yaml"
        doc.write_text(yaml.safe_dump(event_manifest("n1.a1", "n1", "n1", reason="MeshPathDown", message="n2 down")))
        rc, out, err = await kubectl(api, tmp_path, "create", "--validate=false", "-f", str(doc), kubeconfig=own)
        assert rc == 0 and "event/n1.a1 created" in out, err
        # The recorder's repeat: a strategic merge patch of count and lastTimestamp, sent as is
        # (kubectl patch would GET the event first, which a node may not).
        patch = b'{"count":2,"lastTimestamp":"2026-12-01T10:05:00Z"}'
        path = "/api/v1/namespaces/default/events/n1.a1"
        status, _ = await as_node(api, "n1", "PATCH", path, patch, "application/strategic-merge-patch+json")
        assert status == 200 and api.store.events.get("default", "n1.a1")["count"] == 2
        rc, _, err = await kubectl(api, tmp_path, "patch", "event", "n1.a1", "-p", patch.decode(), kubeconfig=own)
        assert rc == 1 and 'cannot get resource "events"' in err
        # The node may write events, not read them (system:node: create, update, patch).
        rc, _, err = await kubectl(api, tmp_path, "get", "events", kubeconfig=own)
        assert rc == 1
        assert 'User "system:node:n1" cannot list resource "events" in API group "" in the namespace "default"' in err
        doc.write_text(yaml.safe_dump(event_manifest("n2.b1", "n2", "n2", reason="Other", message="about n2")))
        rc, _, err = await kubectl(api, tmp_path, "create", "--validate=false", "-f", str(doc))
        assert rc == 0, err

        rc, out, err = await kubectl(api, tmp_path, "get", "events", "--field-selector", "involvedObject.name=n1")
        assert rc == 0, err
        rows = [line.split(None, 4) for line in out.splitlines()]
        assert rows[0] == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT    MESSAGE"]
        assert [r[1:] for r in rows[1:]] == [["Warning", "MeshPathDown", "node/n1", "n2 down"]]
        rc, out, err = await kubectl(api, tmp_path, "get", "events", "-A", "--field-selector", "reason=Other")
        assert rc == 0 and "node/n2" in out and "node/n1" not in out, err
        rc, _, err = await kubectl(api, tmp_path, "get", "events", "--field-selector", "spec.nodeName=n1")
        assert rc == 1 and "field label not supported: spec.nodeName" in err

        rc, out, err = await kubectl(api, tmp_path, "describe", "node", "n1")
        assert rc == 0, err
        events = out.split("Events:", 1)[1].splitlines()
        assert events[1].split() == ["Type", "Reason", "Age", "From", "Message"]
        assert events[3].split()[:2] == ["Warning", "MeshPathDown"]
        assert "(x2 over" in events[3] and events[3].rstrip().endswith("wgagent  n2 down")
        assert "about n2" not in out


async def test_auth_can_i_follows_the_servers_version(tmp_path: Path) -> None:
    async with api_with("n1") as api:
        controller, node = api.controller_kubeconfig(), api.node_kubeconfig("n1")
        answers = []
        for version in ("v1.31.4+k3s1", "v1.31.5+k3s1", "v1.32.4+k3s1"):
            api.set_cluster(server_version=version)
            for kc in (controller, node):
                rc, out, _ = await kubectl(api, tmp_path, "auth", "can-i", "list", "nodes", kubeconfig=kc)
                answers.append((version, kc == controller, out.strip(), rc))
        assert answers == [
            ("v1.31.4+k3s1", True, "no", 1),  # k3s-controller's RBAC before the January 2025 back-port
            ("v1.31.4+k3s1", False, "yes", 0),  # Kubernetes 1.31: no AuthorizeNodeWithSelectors
            ("v1.31.5+k3s1", True, "yes", 0),
            ("v1.31.5+k3s1", False, "yes", 0),
            ("v1.32.4+k3s1", True, "yes", 0),
            ("v1.32.4+k3s1", False, "no - node 'n1' cannot read all nodes, only its own Node object", 1),
        ]
        rc, out, _ = await kubectl(api, tmp_path, "auth", "can-i", "create", "events", kubeconfig=node)
        assert (rc, out.strip()) == (0, "yes")
        rc, out, _ = await kubectl(api, tmp_path, "auth", "can-i", "patch", "nodes/n2", kubeconfig=node)
        assert (rc, out.strip()) == (0, "yes")  # the authorizer says yes; NodeRestriction refuses the write
        rc, out, _ = await kubectl(api, tmp_path, "version", "-o", "json")
        assert json.loads(out)["serverVersion"]["gitVersion"] == "v1.32.4+k3s1"
