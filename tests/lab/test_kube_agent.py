"""The agent's Kubernetes side against the API stand-in over real HTTPS on loopback.

The client, the node watch and the annotation part talk to ``tests.kubeapi.KubeAPI``
(a test CA and client certificates made with openssl), so TLS, client-certificate and token
authentication, the node authorizer, watch streaming, 410s and dropped connections are the
real thing; only time is injected (backoff sleeps are recorded, not waited).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.kubeapi import CONTROLLER, PKI, KubeAPI, User, shared_pki
from wgagent.errors import Forbidden, KubeConfigError, KubeUnreachable, NotFound, ServerError, Unauthorized
from wgagent.k3s.view import ExternalIP, K3sView
from wgagent.kube.annotation import STEADY_INTERVAL_S, AnnotationPart
from wgagent.kube.client import KubeClient
from wgagent.kube.protocol import NodeAPI
from wgagent.kube.watch import NodeWatch
from wgagent.model import ANN_PUBLIC_IP, ANN_PUBLIC_IP_OVERWRITE, PublicAddresses, RestartResult
from wgagent.state import State

V4 = "203.0.113.7"
ADDRS = PublicAddresses(ipv4=ip_address(V4))  # type: ignore[arg-type]


def api_with(*nodes: str, **kw: Any) -> KubeAPI:
    require("openssl")
    return KubeAPI(nodes=nodes, pki=shared_pki(), **kw)


async def until(cond: Callable[[], object], what: str, timeout_s: float = 5.0) -> None:
    """Wait for a condition with a deadline (the watch runs on the same loop)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.005)


def names(watch: NodeWatch) -> set[str]:
    view = watch.view()
    return set(view.nodes) if view is not None else set()


def public_ip(watch: NodeWatch, node: str) -> str | None:
    view = watch.view()
    info = view.nodes.get(node) if view is not None else None
    return info.public_ip if info is not None else None


class Sleeps:
    """Backoff waits recorded, not waited; ``hook(n)`` runs at the n-th (e.g. brings the API back)."""

    def __init__(self, hook: Callable[[int], Any] | None = None) -> None:
        self.delays: list[float] = []
        self.hook = hook

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.hook is not None:
            result = self.hook(len(self.delays))
            if asyncio.iscoroutine(result):
                await result
        await asyncio.sleep(0)


K3S_CONFIG = (("/etc/rancher/k3s/config.yaml", f"node-external-ip: {V4}\n"),)
RUNS_WITH_V4 = K3sView(ExternalIP(V4, "wgagent's 50-wgagent.yaml", True), ExternalIP(None, "not set", False), None)
"""k3s is told node-external-ip V4 by wgagent's drop-in (what the k3s part writes)."""


@dataclass
class K3sStarts:
    """A restarter whose restart is a k3s start in the stand-in on ``node`` with wgagent's drop-in."""

    api: KubeAPI
    node: str
    needs: dict[str, str] = field(default_factory=dict)

    def need(self, kind: str, want: str, why: str, *, alone: bool = True) -> RestartResult:
        self.needs[kind] = want
        self.api.k3s_start(self.node, files=K3S_CONFIG)
        return RestartResult(True, f"restarted k3s.service ({why})")

    def drop(self, kind: str) -> None:
        self.needs.pop(kind, None)

    @property
    def stuck(self) -> Mapping[str, str]:
        return {}

    @property
    def open_needs(self) -> frozenset[str]:
        return frozenset()


def annotation_part(state: State, node: str, client: NodeAPI, **kw: Any) -> AnnotationPart:
    return AnnotationPart(state, node, client, public_ip=lambda: ADDRS, k3s_view=lambda _: RUNS_WITH_V4, **kw)


async def test_node_credential_patches_its_own_node_and_is_refused_another() -> None:
    async with api_with("n1", "n2") as api:
        client = KubeClient(api.node_kubeconfig("n1"))
        state = State(node="n1", version="test")
        restarter = K3sStarts(api, "n1")
        part = annotation_part(state, "n1", client, restarter=restarter)
        await part.reconcile()  # k3s v1.32.4 with flannel-external-ip off: it leaves the overwrite to wgagent
        anns = api.store.nodes["n1"]["metadata"]["annotations"]
        assert anns[ANN_PUBLIC_IP_OVERWRITE] == V4 and restarter.needs == {"overwrite": V4}
        detail = state.checks["annotation"].detail
        assert "did not set public-ip-overwrite" in detail and "setting it" in detail
        await part.reconcile()
        anns = api.store.nodes["n1"]["metadata"]["annotations"]
        assert state.checks["annotation"].ok and anns[ANN_PUBLIC_IP] == V4
        assert state.checks["annotation"].detail == "Node n1: public-ip is 203.0.113.7"
        assert api.counts[("system:node:n1", "patch")] == 1

        # The same credential for another node's Node: refused, and the check says why.
        other_state = State(node="n2", version="test")
        other = annotation_part(other_state, "n2", client)
        await other.reconcile()
        detail = other_state.checks["annotation"].detail
        assert not other_state.checks["annotation"].ok
        assert f"the credential in {api.node_kubeconfig('n1')} may not read or patch Node n2" in detail
        assert "node 'n1' cannot read 'n2', only its own Node object" in detail
        assert ANN_PUBLIC_IP_OVERWRITE not in api.store.nodes["n2"]["metadata"]["annotations"]
        with pytest.raises(Forbidden):
            await client.patch_node("n2", {"metadata": {"annotations": {"a/b": "c"}}})
        await client.close()


async def test_credentials_inline_token_and_token_file() -> None:
    async with api_with("n1") as api:
        inline = KubeClient(api.node_kubeconfig("n1", inline=True))
        assert (await inline.get_node("n1"))["metadata"]["name"] == "n1"
        token = KubeClient(api.token_kubeconfig("token-for-ops-0123456789", User("ops", ("system:masters",))))
        assert (await token.list_nodes_metadata())["kind"] == "PartialObjectMetadataList"
        tf = KubeClient(api.token_kubeconfig("file-token-0123456789", User(CONTROLLER), token_file=True))
        assert [i["metadata"]["name"] for i in (await tf.list_nodes_metadata())["items"]] == ["n1"]
        wrong = KubeClient(api.token_kubeconfig("nobody-knows-this-token-0", User("x")))
        api.tokens.pop("nobody-knows-this-token-0")
        with pytest.raises(Unauthorized) as exc:
            await wrong.get_node("n1")
        assert "401 Unauthorized" in str(exc.value) and "nobody-knows" not in str(exc.value)
        with pytest.raises(NotFound) as nf:
            await token.get_node("n9")  # (a node credential gets 403 for any other name)
        assert str(nf.value).endswith('404 NotFound: nodes "n9" not found')
        missing = KubeClient(api.dir + "/nope.yaml")
        with pytest.raises(KubeConfigError):
            await missing.get_node("n1")
        for c in (inline, token, tf, wrong, missing):
            await c.close()


async def test_unauthorized_reloads_a_rotated_credential() -> None:
    async with api_with("n1") as api:
        path = api.token_kubeconfig("old-token-0123456789abc", User("admin", ("system:masters",)))
        client = KubeClient(path)
        await client.get_node("n1")
        # The token is rotated: the server forgets the old one, the file gets the new one.
        api.tokens.pop("old-token-0123456789abc")
        assert api.token_kubeconfig("new-token-0123456789abc", User("admin", ("system:masters",))) == path
        await client.get_node("n1")
        assert api.requests[-2].status == 401 and api.requests[-1].status == 200
        await client.close()


async def test_transient_errors_are_retried_with_backoff() -> None:
    async with api_with("n1") as api:
        sleeps = Sleeps()
        client = KubeClient(api.node_kubeconfig("n1"), retries=3, sleep=sleeps, rand=lambda: 0.0)
        api.fail_next(2, status=503)
        assert (await client.get_node("n1"))["metadata"]["name"] == "n1"
        assert sleeps.delays == [0.5, 1.0]
        # A connection closed without an answer: aiohttp >= 3.9 itself retries a reused
        # connection once, 3.8 does not; either way the request succeeds.
        api.drop_next(2)
        await client.get_node("n1")
        assert [r.status for r in api.requests[-3:]] == [0, 0, 200]
        assert len(sleeps.delays) in (3, 4)
        del sleeps.delays[2:]
        api.fail_next(5, status=500)
        with pytest.raises(ServerError) as exc:
            await client.get_node("n1")
        assert "500 InternalError: injected fault" in str(exc.value)
        assert sleeps.delays[2:] == [0.5, 1.0, 2.0]
        await client.close()


async def test_api_down_then_back_backoff_then_recovery() -> None:
    async with api_with("n1") as api:
        port = api.port
        await api.stop()

        async def back_after_three(n: int) -> None:
            if n == 3:
                await api.start()

        sleeps = Sleeps(back_after_three)
        client = KubeClient(api.node_kubeconfig("n1"), retries=5, sleep=sleeps, rand=lambda: 1.0)
        assert (await client.get_node("n1"))["metadata"]["name"] == "n1"
        assert sleeps.delays == [1.0, 2.0, 4.0] and api.port == port

        # The annotation part: each pass while the API is down fails its check and comes
        # back later (capped backoff); the first pass after recovery makes it right.
        await api.stop()
        quick = KubeClient(api.node_kubeconfig("n1"), retries=0)
        state = State(node="n1", version="test")
        part = annotation_part(state, "n1", quick, rand=lambda: 1.0)
        intervals = []
        for _ in range(6):
            intervals.append(await part.reconcile())
        assert intervals == [5.0, 10.0, 20.0, 20.0, 20.0, 20.0]
        detail = state.checks["annotation"].detail
        assert detail.startswith("cannot reach the API server to check Node n1:") and "cannot connect" in detail
        await api.start()
        await part.reconcile()
        assert api.store.nodes["n1"]["metadata"]["annotations"][ANN_PUBLIC_IP_OVERWRITE] == V4
        assert "setting it, which this k3s leaves alone" in state.checks["annotation"].detail  # the API part is done
        for c in (client, quick):
            await c.close()


async def test_overwrite_removed_behind_the_agents_back_is_put_back_where_k3s_leaves_it() -> None:
    async with api_with("n1", "n2") as api:
        api.store.set_annotations("n1", {ANN_PUBLIC_IP_OVERWRITE: V4, ANN_PUBLIC_IP: V4})
        state = State(node="n1", version="test")
        watch = NodeWatch(state, KubeClient(api.controller_kubeconfig()))
        part = annotation_part(state, "n1", KubeClient(api.node_kubeconfig("n1")), cluster=watch.view)
        watch.changed.connect(lambda names: part.wake.set() if "n1" in names else None)
        task = asyncio.ensure_future(watch.run())
        try:
            await until(lambda: watch.view() is not None, "the first LIST")
            part.wake.clear()
            await part.reconcile()
            assert state.checks["annotation"].ok
            assert api.count(user="system:node:n1") == 0  # the watch's view sufficed: no request

            api.store.set_annotations("n1", {ANN_PUBLIC_IP_OVERWRITE: None})  # someone with kubectl
            await until(part.wake.is_set, "the watch to wake the annotation part")
            await part.reconcile()  # the stand-in's k3s (v1.32.4) leaves the overwrite alone: put back
            assert api.store.nodes["n1"]["metadata"]["annotations"][ANN_PUBLIC_IP_OVERWRITE] == V4
            assert state.checks["annotation"].ok
            assert "public-ip-overwrite was removed, put back" in state.checks["annotation"].detail
            assert api.count(user="system:node:n1", verb="get") == 1
            assert api.count(user="system:node:n1", verb="patch") == 1
        finally:
            task.cancel()
            await watch.close()
            await part.close()


async def test_watch_relists_on_410_gone() -> None:
    async with api_with("n1", "n2") as api:
        state = State(node="n1", version="test")
        watch = NodeWatch(state, KubeClient(api.controller_kubeconfig()))
        task = asyncio.ensure_future(watch.run())
        try:
            await until(lambda: api.count(verb="watch") == 1 and api.store.watchers, "the watch")
            api.expire_watches()  # 410 Expired on the open watch
            api.store.add("n3")
            await until(lambda: api.count(verb="watch") == 2 and api.store.watchers, "a new watch")
            assert api.count(verb="list") == 2
            await until(lambda: "n3" in names(watch), "n3 in the view")
            api.gone_next_watch()  # the next watch is refused with 410 at once
            api.drop_watches()
            await until(lambda: api.count(verb="list") == 3 and api.store.watchers, "a third LIST and a watch")
            api.store.delete("n2")
            await until(lambda: "n2" not in names(watch), "n2 gone from the view")
        finally:
            task.cancel()
            await watch.close()


async def test_bookmarks_advance_the_resource_version() -> None:
    async with api_with("n1") as api:
        state = State(node="n1", version="test")
        sleeps = Sleeps()
        watch = NodeWatch(state, KubeClient(api.controller_kubeconfig()), sleep=sleeps, rand=lambda: 1.0)
        task = asyncio.ensure_future(watch.run())
        try:
            await until(lambda: api.store.watchers, "the watch")
            listed_at = watch.resource_version
            api.other_changes(40)  # other objects change: no Node event, the cluster's rv moves
            api.bookmark_now()
            await until(lambda: watch.resource_version == str(api.store.rv), "a bookmark")
            assert int(watch.resource_version or 0) > int(listed_at or 0)
            # The history is compacted and the watch cut: thanks to the bookmark the new
            # watch resumes at once, without a LIST (an old resourceVersion would get 410).
            api.store.compact()
            api.drop_watches()
            await until(lambda: api.count(verb="watch") == 2 and api.store.watchers, "the watch again")
            assert api.count(verb="list") == 1
            assert api.requests[-1].query.count(f"resourceVersion={api.store.rv}") == 1
            assert "allowWatchBookmarks=true" in api.requests[-1].query
            assert sleeps.delays == [1.0]  # one backoff after the cut
        finally:
            task.cancel()
            await watch.close()


async def test_a_node_that_does_not_exist_yet_is_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="wgagent.kube")
    async with api_with() as api:
        state = State(node="n1", version="test")
        watch = NodeWatch(state, KubeClient(api.controller_kubeconfig()))
        part = annotation_part(state, "n1", KubeClient(api.node_kubeconfig("n1")), cluster=watch.view, rand=lambda: 1.0)
        watch.changed.connect(lambda names: part.wake.set() if "n1" in names else None)
        task = asyncio.ensure_future(watch.run())
        try:
            for _ in range(3):
                next_s = await part.reconcile()
            check = state.checks["annotation"]
            assert not check.ok and "Node n1 does not exist yet" in check.detail
            assert caplog.text.count("does not exist yet") == 1
            assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert next_s == 20.0  # 5, 10, 20: waiting, not hammering
            await until(lambda: watch.view() is not None, "the first LIST")
            part.wake.clear()
            api.store.add("n1")  # k3s registers the node
            await until(part.wake.is_set, "the watch to wake the annotation part")
            next_s = await part.reconcile()
            assert api.store.nodes["n1"]["metadata"]["annotations"][ANN_PUBLIC_IP_OVERWRITE] == V4
            assert next_s == 60.0  # now waiting for a k3s restart (no restarter here)
        finally:
            task.cancel()
            await watch.close()
            await part.close()


async def test_watch_reconnects_with_backoff_when_the_api_goes_away() -> None:
    async with api_with("n1") as api:
        state = State(node="n1", version="test")

        async def back_at_third(n: int) -> None:
            if n == 3:
                await api.start()

        sleeps = Sleeps(back_at_third)
        watch = NodeWatch(state, KubeClient(api.controller_kubeconfig(), retries=0), sleep=sleeps, rand=lambda: 1.0)
        task = asyncio.ensure_future(watch.run())
        try:
            await until(lambda: api.store.watchers, "the watch")
            await api.stop()
            await until(lambda: len(sleeps.delays) >= 3 and api.store.watchers, "reconnect after three waits")
            assert sleeps.delays == [1.0, 2.0, 4.0]
            assert api.count(verb="list") == 1  # resumed from the last resourceVersion
            api.store.add("n2")
            await until(lambda: "n2" in names(watch), "n2 in the view")
            assert state.status()["parts"]["node_watch"]["state"] == "watching"
        finally:
            task.cancel()
            await watch.close()


async def test_watch_with_a_node_credential_is_refused_and_says_so() -> None:
    async with api_with("n1") as api:
        state = State(node="n1", version="test")
        sleeps = Sleeps()
        watch = NodeWatch(state, KubeClient(api.node_kubeconfig("n1")), sleep=sleeps)
        task = asyncio.ensure_future(watch.run())
        try:
            await until(lambda: sleeps.delays, "the first retry")
            assert watch.view() is None
            section = state.status()["parts"]["node_watch"]
            assert section["state"] == "refused"
            assert "node 'n1' cannot read all nodes" in section["error"]
            assert "needs a credential that may list and watch all Nodes" in section["error"]
        finally:
            task.cancel()
            await watch.close()


async def test_large_watch_events() -> None:
    """An event line beyond aiohttp 3.8's readline limit (128 KiB) is read whole."""
    async with api_with("n1") as api:
        state = State(node="n1", version="test")
        watch = NodeWatch(state, KubeClient(api.controller_kubeconfig()))
        task = asyncio.ensure_future(watch.run())
        try:
            await until(lambda: api.store.watchers, "the watch")
            api.store.set_annotations("n1", {"example.com/big": "x" * 200_000, ANN_PUBLIC_IP: "198.51.100.9"})
            await until(lambda: public_ip(watch, "n1") == "198.51.100.9", "the big event")
        finally:
            task.cancel()
            await watch.close()


async def test_reconcile_once_lists_once_and_the_annotation_needs_no_get() -> None:
    """What ``run --once`` does: the watch LISTs once; the annotation reads that."""
    async with api_with("n1", "n2") as api:
        api.store.set_annotations("n1", {ANN_PUBLIC_IP_OVERWRITE: V4, ANN_PUBLIC_IP: V4})
        state = State(node="n1", version="test")
        watch = NodeWatch(state, KubeClient(api.controller_kubeconfig()))
        part = annotation_part(state, "n1", KubeClient(api.node_kubeconfig("n1")), cluster=watch.view)
        await watch.reconcile()
        next_s = await part.reconcile()
        assert state.checks["annotation"].ok and next_s == STEADY_INTERVAL_S
        assert dict(api.counts) == {(CONTROLLER, "list"): 1}
        await watch.close()
        await part.close()


async def test_unreachable_error_names_the_server() -> None:
    async with api_with("n1") as api:
        client = KubeClient(api.node_kubeconfig("n1"), retries=0)
        await api.stop()
        with pytest.raises(KubeUnreachable) as exc:
            await client.get_node("n1")
        assert str(exc.value).startswith(f"GET {api.url}/api/v1/nodes/n1: cannot connect")
        await client.close()


async def test_untrusted_server_certificate_is_a_clear_error(tmp_path: Path) -> None:
    async with api_with("n1") as api:
        other_ca = PKI.create(str(tmp_path / "other"))
        cert = api.pki.client("system:node:n1", "system:nodes")
        path = other_ca.kubeconfig(str(tmp_path / "k.yaml"), api.url, cert=cert)  # trusts the wrong CA
        client = KubeClient(path, retries=0)
        with pytest.raises(KubeUnreachable) as exc:
            await client.get_node("n1")
        assert "TLS certificate not trusted" in str(exc.value) and str(exc.value).startswith(f"GET {api.url}/")
        await client.close()
