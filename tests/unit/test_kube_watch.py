"""NodeWatch over a scripted in-memory NodeAPI: LIST, WATCH, bookmarks, 410, failures, view()."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest

from wgagent.errors import Forbidden, Gone, KubeConfigError, KubeError, KubeUnreachable
from wgagent.kube.protocol import JSONObject, WatchEvent
from wgagent.kube.watch import NodeWatch, node_info
from wgagent.model import ANN_BACKEND_DATA, ANN_PUBLIC_IP
from wgagent.state import State

END = "end"  # the server ends the watch (its timeout)


def meta(name: str, rv: int, **anns: str) -> JSONObject:
    annotations = {f"flannel.alpha.coreos.com/{k.replace('_', '-')}": v for k, v in anns.items()}
    return {"kind": "PartialObjectMetadata", "metadata": {"name": name, "resourceVersion": str(rv),
                                                          "annotations": annotations}}  # fmt: skip


def ev(type_: str, obj: JSONObject) -> WatchEvent:
    return WatchEvent(type_, obj)


def bookmark(rv: int) -> WatchEvent:
    return WatchEvent("BOOKMARK", {"metadata": {"resourceVersion": str(rv)}})


class ScriptedAPI:
    """LIST answers from ``lists`` (a list or an error per call); each WATCH plays the next
    script from ``watches``: events, errors (raised), END (stream ends), or waits forever."""

    source = "/fake/k3scontroller.kubeconfig"

    def __init__(self) -> None:
        self.lists: list[JSONObject | KubeError] = []
        self.watches: list[list[WatchEvent | KubeError | str]] = []
        self.list_calls: list[str | None] = []
        self.watch_calls: list[tuple[str, int]] = []
        self.idle = asyncio.Event()  # set while a watch waits with nothing left to play

    async def get_node(self, name: str) -> JSONObject:
        raise AssertionError("the watch never GETs")

    async def patch_node(self, name: str, patch: Mapping[str, Any]) -> JSONObject:
        raise AssertionError("the watch never patches")

    async def list_nodes_metadata(self, *, resource_version: str | None = None) -> JSONObject:
        self.list_calls.append(resource_version)
        answer = self.lists.pop(0)
        if isinstance(answer, KubeError):
            raise answer
        return answer

    async def watch_nodes_metadata(self, resource_version: str, *, timeout_s: int) -> AsyncIterator[WatchEvent]:
        self.watch_calls.append((resource_version, timeout_s))
        script = self.watches.pop(0) if self.watches else []
        for item in script:
            if item == END:
                return
            if isinstance(item, KubeError):
                raise item
            assert isinstance(item, WatchEvent)
            yield item
        self.idle.set()
        await asyncio.Event().wait()  # an open watch with nothing to say

    async def close(self) -> None:
        pass


def listing(rv: int, *nodes: JSONObject) -> JSONObject:
    return {"kind": "PartialObjectMetadataList", "metadata": {"resourceVersion": str(rv)}, "items": list(nodes)}


class Sleeps:
    """Records each backoff instead of waiting; ``on_sleep`` looks at the watch meanwhile."""

    def __init__(self, on_sleep: Callable[[], None] | None = None) -> None:
        self.delays: list[float] = []
        self.on_sleep = on_sleep

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.on_sleep is not None:
            self.on_sleep()
        await asyncio.sleep(0)


async def run_until(watch: NodeWatch, api: ScriptedAPI, cond: Callable[[], bool] | None = None) -> None:
    """Run the watch until the script is played out (and ``cond`` holds), then stop it."""
    task = asyncio.ensure_future(watch.run())
    try:
        await asyncio.wait_for(api.idle.wait(), 5)
        if cond is not None:
            for _ in range(500):
                if cond():
                    break
                await asyncio.sleep(0.001)
            assert cond()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def make(api: ScriptedAPI, sleeps: Sleeps | None = None) -> tuple[NodeWatch, State, list[frozenset[str]]]:
    state = State(node="n1", version="test")
    watch = NodeWatch(state, api, sleep=sleeps or Sleeps(), rand=lambda: 1.0, watch_timeout_s=(2700, 3600))
    changes: list[frozenset[str]] = []
    watch.changed.connect(changes.append)
    return watch, state, changes


def test_node_info_keeps_only_flannel_annotations() -> None:
    info = node_info({"metadata": {"name": "n1", "annotations": {ANN_PUBLIC_IP: "203.0.113.1", "x/y": "z"}}})
    assert info is not None and dict(info.annotations) == {ANN_PUBLIC_IP: "203.0.113.1"}
    full = node_info({"metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.42.1.0/24", "fd00::/64"]}})
    assert full is not None and full.pod_cidrs == ("10.42.1.0/24", "fd00::/64")
    assert node_info({"metadata": {}}) is None


async def test_list_then_watch_keeps_the_view_current() -> None:
    api = ScriptedAPI()
    api.lists = [listing(10, meta("n1", 5, public_ip="203.0.113.1"), meta("n2", 6))]
    api.watches = [[
        ev("MODIFIED", meta("n2", 11, backend_data='{"PublicKey":"k2=","Port":51820}')),
        ev("ADDED", meta("n3", 12)),
        ev("MODIFIED", meta("n1", 13, public_ip="203.0.113.1")),  # only status changed: not a change
        ev("DELETED", meta("n3", 14)),
    ]]  # fmt: skip
    watch, state, changes = make(api)
    assert watch.view() is None
    await run_until(watch, api)
    view = watch.view()
    assert view is not None and sorted(view.nodes) == ["n1", "n2"]
    assert view.current_keys == frozenset({"k2="})
    assert view.nodes["n1"].public_ip == "203.0.113.1"
    assert changes == [frozenset({"n1", "n2"}), frozenset({"n2"}), frozenset({"n3"}), frozenset({"n3"})]
    assert api.list_calls == ["0"]  # the first LIST may come from the API server's cache
    assert api.watch_calls == [("10", 3600)]
    assert watch.resource_version == "14"
    section = state.status()["parts"]["node_watch"]
    assert section["state"] == "watching" and section["nodes"] == 2 and section["lists"] == 1


async def test_bookmarks_advance_the_resource_version_and_a_timed_out_watch_resumes_without_listing() -> None:
    api = ScriptedAPI()
    api.lists = [listing(10, meta("n1", 5))]
    api.watches = [[bookmark(50), bookmark(80), END], [bookmark(90)]]
    watch, _state, changes = make(api)
    await run_until(watch, api)
    assert api.watch_calls == [("10", 3600), ("80", 3600)]
    assert len(api.list_calls) == 1  # a watch that ends is resumed, not re-listed
    assert watch.resource_version == "90"
    assert changes == [frozenset({"n1"})]  # bookmarks change nothing


async def test_410_gone_lists_again() -> None:
    api = ScriptedAPI()
    api.lists = [listing(10, meta("n1", 5)), listing(40, meta("n1", 5), meta("n4", 33))]
    api.watches = [[ev("ADDED", meta("n2", 11)), Gone("WATCH: 410 Expired: too old resource version")], []]
    sleeps = Sleeps()
    watch, _state, changes = make(api, sleeps)
    await run_until(watch, api)
    assert api.list_calls == ["0", None]  # after a 410 a consistent LIST
    assert api.watch_calls[-1][0] == "40"
    view = watch.view()
    assert view is not None and sorted(view.nodes) == ["n1", "n4"]  # n2 went away while we were gone
    assert sleeps.delays == []  # the first 410 re-lists at once
    assert changes[-1] == frozenset({"n2", "n4"})


async def test_repeated_410_backs_off() -> None:
    api = ScriptedAPI()
    api.lists = [listing(10), listing(11), listing(12), listing(13)]
    api.watches = [[Gone("410")], [Gone("410")], [Gone("410")], []]
    sleeps = Sleeps()
    watch, _, _ = make(api, sleeps)
    await run_until(watch, api)
    assert sleeps.delays == [1.0, 2.0]
    assert len(api.list_calls) == 4


async def test_unreachable_reconnects_with_backoff_and_keeps_the_last_view() -> None:
    api = ScriptedAPI()
    down = KubeUnreachable("WATCH https://127.0.0.1:6444/api/v1/nodes: cannot connect: refused")
    api.lists = [listing(10, meta("n1", 5))]
    api.watches = [[ev("ADDED", meta("n2", 11)), down], [down], [down], [down], [ev("ADDED", meta("n3", 12))]]
    watch, state, _ = make(api)
    seen: list[tuple[str, str, list[str]]] = []

    def look() -> None:
        section = state.status()["parts"]["node_watch"]
        view = watch.view()
        seen.append((section["state"], section["error"], sorted(view.nodes) if view else []))

    sleeps = Sleeps(look)
    watch._sleep = sleeps
    await run_until(watch, api)
    assert sleeps.delays == [1.0, 2.0, 4.0, 8.0]
    for st, error, nodes in seen:
        assert st == "reconnecting" and "cannot connect: refused" in error
        assert nodes == ["n1", "n2"]  # the last view is kept while reconnecting
    assert [rv for rv, _ in api.watch_calls] == ["10", "11", "11", "11", "11"]  # resumes where it was
    assert len(api.list_calls) == 1
    section = state.status()["parts"]["node_watch"]
    assert section["state"] == "watching" and "error" not in section
    view = watch.view()
    assert view is not None and sorted(view.nodes) == ["n1", "n2", "n3"]


async def test_a_long_outage_is_retried_at_least_every_20_s() -> None:
    """Regression: with 60 s waits a 30 s window of API availability could pass unseen."""
    api = ScriptedAPI()
    down = KubeUnreachable("WATCH https://127.0.0.1:6444/api/v1/nodes: cannot connect: refused")
    api.lists = [listing(10, meta("n1", 5))]
    outage: list[WatchEvent | KubeError | str] = [down]
    api.watches = [outage] * 9 + [[ev("ADDED", meta("n2", 11))]]
    sleeps = Sleeps()
    watch, _, _ = make(api, sleeps)
    await run_until(watch, api)
    assert sleeps.delays == [1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0, 20.0, 20.0]  # rand 1.0: the longest waits


@pytest.mark.parametrize(
    ("error", "status", "delays"),
    [
        pytest.param(Forbidden('nodes is forbidden: User "system:node:n1" cannot list'), "refused",
                     [10.0, 20.0, 40.0], id="forbidden"),
        pytest.param(KubeConfigError("/x/k3scontroller.kubeconfig: kubeconfig not found"), "no credential",
                     [15.0, 15.0, 15.0], id="no-kubeconfig"),
    ],
)  # fmt: skip
async def test_missing_or_refused_list_credential(error: KubeError, status: str, delays: list[float]) -> None:
    api = ScriptedAPI()
    api.lists = [error, error, error, listing(10, meta("n1", 5))]
    seen: list[tuple[bool, str, str]] = []
    watch, state, _ = make(api)
    sleeps = Sleeps(
        lambda: seen.append(
            (
                watch.view() is None,
                state.status()["parts"]["node_watch"]["state"],
                state.status()["parts"]["node_watch"]["error"],
            )
        )
    )
    watch._sleep = sleeps
    await run_until(watch, api)
    # A refused credential costs a request per try: slow backoff. A missing file costs nothing.
    assert sleeps.delays == delays
    assert [(none, st) for none, st, _ in seen] == [(True, status)] * 3
    if status == "refused":
        assert "needs a credential that may list and watch all Nodes" in seen[0][2]
    assert watch.view() is not None
    assert state.status()["parts"]["node_watch"]["state"] == "watching"


async def test_a_refused_controller_credential_falls_back_to_the_kubelets_at_once() -> None:
    # A server older than v1.32 (k3s PR #11478): system:k3s-controller may not list Nodes, the
    # kubelet's credential may (the node authorizer before AuthorizeNodeWithSelectors).
    controller, kubelet = ScriptedAPI(), ScriptedAPI()
    kubelet.source = "/fake/kubelet.kubeconfig"
    refused = Forbidden('nodes is forbidden: User "system:k3s-controller" cannot list resource "nodes"')
    controller.lists = [refused]
    kubelet.lists = [listing(10, meta("n1", 5), meta("n2", 6))]
    state = State(node="n1", version="test")
    sleeps = Sleeps()
    watch = NodeWatch(state, controller, fallback=kubelet, sleep=sleeps, rand=lambda: 1.0)
    await run_until(watch, kubelet)
    assert sleeps.delays == []  # no wait: the next credential is tried at once
    view = watch.view()
    assert view is not None and sorted(view.nodes) == ["n1", "n2"]
    assert state.status()["parts"]["node_watch"]["kubeconfig"] == "/fake/kubelet.kubeconfig"


async def test_when_every_credential_is_refused_it_waits_at_most_a_minute_and_starts_over() -> None:
    controller, kubelet = ScriptedAPI(), ScriptedAPI()
    kubelet.source = "/fake/kubelet.kubeconfig"
    refused: KubeError = Forbidden("nodes is forbidden")
    controller.lists = [refused] * 5 + [listing(10, meta("n1", 5))]  # its RBAC arrives at last
    kubelet.lists = [refused] * 5
    state = State(node="n1", version="test")
    sleeps = Sleeps()
    watch = NodeWatch(state, controller, fallback=kubelet, sleep=sleeps, rand=lambda: 1.0)
    await run_until(watch, controller)
    assert sleeps.delays == [10.0, 20.0, 40.0, 60.0, 60.0]  # capped at a minute
    assert state.status()["parts"]["node_watch"]["kubeconfig"] == "/fake/k3scontroller.kubeconfig"
    assert watch.view() is not None


async def test_reconcile_falls_back_too() -> None:
    controller, kubelet = ScriptedAPI(), ScriptedAPI()
    controller.lists = [Forbidden("nodes is forbidden")]
    kubelet.lists = [listing(10, meta("n1", 5))]
    watch = NodeWatch(State(node="n1", version="test"), controller, fallback=kubelet, sleep=Sleeps())
    await watch.reconcile()
    assert watch.view() is not None and controller.list_calls == ["0"] and kubelet.list_calls == ["0"]


async def test_reconcile_lists_once_when_not_streaming() -> None:
    api = ScriptedAPI()
    api.lists = [listing(10, meta("n1", 5, public_ip="203.0.113.9"))]
    watch, state, _ = make(api)
    await watch.reconcile()
    view = watch.view()
    assert view is not None and view.nodes["n1"].public_ip == "203.0.113.9"
    assert api.watch_calls == []
    assert state.status()["parts"]["node_watch"]["lists"] == 1


async def test_reconcile_failure_is_reported_not_raised() -> None:
    api = ScriptedAPI()
    api.lists = [KubeUnreachable("GET https://127.0.0.1:6443/api/v1/nodes: timed out")]
    watch, state, _ = make(api)
    await watch.reconcile()
    assert watch.view() is None
    assert "timed out" in state.status()["parts"]["node_watch"]["error"]


async def test_reconcile_while_streaming_makes_no_request() -> None:
    api = ScriptedAPI()
    api.lists = [listing(10)]
    watch, _, _ = make(api)
    task = asyncio.ensure_future(watch.run())
    try:
        await asyncio.wait_for(api.idle.wait(), 5)
        await watch.reconcile()
        assert len(api.list_calls) == 1
    finally:
        task.cancel()


async def test_a_failing_on_change_does_not_stop_the_watch() -> None:
    api = ScriptedAPI()
    api.lists = [listing(10, meta("n1", 5))]
    api.watches = [[ev("ADDED", meta("n2", 11, backend_data="x"))]]
    watch, _, _ = make(api)

    def boom(_: frozenset[str]) -> None:
        raise RuntimeError("consumer bug")

    watch.changed.connect(boom)
    await run_until(watch, api)
    view = watch.view()
    assert view is not None and view.nodes["n2"].annotations == {ANN_BACKEND_DATA: "x"}
