"""The annotation: pure decisions (named cases), and AnnotationPart over an in-memory NodeAPI."""

from __future__ import annotations

import copy
import logging
from collections.abc import AsyncIterator, Mapping
from ipaddress import ip_address
from typing import Any

import pytest

from wgagent.errors import Forbidden, KubeConfigError, KubeError, KubeUnreachable, NotFound
from wgagent.kube.annotation import (
    PENDING_INTERVAL_S,
    STEADY_INTERVAL_S,
    AnnotationPart,
    assess,
    overwrite_patch,
    same_ip,
    wanted,
)
from wgagent.kube.protocol import JSONObject, WatchEvent
from wgagent.model import (
    ANN_PUBLIC_IP,
    ANN_PUBLIC_IP_OVERWRITE,
    ANN_PUBLIC_IPV6,
    ANN_PUBLIC_IPV6_OVERWRITE,
    ANN_SUBNET_MANAGER,
    ClusterView,
    NodeInfo,
    PublicAddresses,
    RestartResult,
)
from wgagent.state import State

V4 = "203.0.113.7"
V6 = "2001:db8::7"
OW, PUB, OW6, PUB6 = ANN_PUBLIC_IP_OVERWRITE, ANN_PUBLIC_IP, ANN_PUBLIC_IPV6_OVERWRITE, ANN_PUBLIC_IPV6


# --- pure --------------------------------------------------------------------------------


def test_wanted_only_decided_families() -> None:
    assert wanted(PublicAddresses()) == {}
    assert wanted(PublicAddresses(ipv4=ip_address(V4), ipv6=ip_address(V6))) == {OW: V4, OW6: V6}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("have", "want", "same"),
    [
        pytest.param("203.0.113.7", "203.0.113.7", True, id="equal"),
        pytest.param(" 203.0.113.7 ", "203.0.113.7", True, id="spaces"),
        pytest.param("2001:0db8:0:0:0:0:0:7", "2001:db8::7", True, id="ipv6-long-form"),
        pytest.param("203.0.113.8", "203.0.113.7", False, id="different"),
        pytest.param("garbage", "203.0.113.7", False, id="not-an-ip"),
        pytest.param(None, "203.0.113.7", False, id="unset"),
    ],
)
def test_same_ip(have: str | None, want: str, same: bool) -> None:
    assert same_ip(have, want) is same


@pytest.mark.parametrize(
    ("current", "want", "patch"),
    [
        pytest.param({}, {OW: V4}, {OW: V4}, id="unset"),
        pytest.param({OW: V4}, {OW: V4}, None, id="already-right"),
        pytest.param({OW: "198.51.100.1"}, {OW: V4}, {OW: V4}, id="wrong"),
        pytest.param({OW: V4}, {OW: V4, OW6: V6}, {OW6: V6}, id="only-the-differing-family"),
        pytest.param({OW: V4, OW6: "2001:db8::1"}, {OW: V4}, None, id="undecided-family-left-alone"),
    ],
)
def test_overwrite_patch(current: dict[str, str], want: dict[str, str], patch: dict[str, str] | None) -> None:
    expected = None if patch is None else {"metadata": {"annotations": patch}}
    assert overwrite_patch(current, want) == expected


@pytest.mark.parametrize(
    ("current", "want", "ok", "restart", "words"),
    [
        pytest.param({OW: V4, PUB: V4}, {OW: V4}, True, False, ["public-ip-overwrite and public-ip are 203.0.113.7"],
                     id="all-right"),
        pytest.param({PUB: V4}, {OW: V4}, False, False, ["public-ip-overwrite is not set, should be 203.0.113.7"],
                     id="overwrite-unset"),
        pytest.param({OW: "198.51.100.1", PUB: "198.51.100.1"}, {OW: V4}, False, False,
                     ["public-ip-overwrite is 198.51.100.1, should be 203.0.113.7"], id="overwrite-wrong"),
        pytest.param({OW: V4, PUB: "10.0.0.3", ANN_SUBNET_MANAGER: "true"}, {OW: V4}, False, True,
                     ["flannel's public-ip is still 10.0.0.3", "reads the overwrite only when it starts"],
                     id="flannel-stale"),
        pytest.param({OW: V4, ANN_SUBNET_MANAGER: "true"}, {OW: V4}, False, False,
                     ["flannel has published no public-ip yet"], id="flannel-not-yet"),
        pytest.param({OW: V4}, {OW: V4}, False, False, ["is flannel running with the kube subnet manager?"],
                     id="no-flannel-at-all"),
        pytest.param({OW: V4, PUB: V4, OW6: V6, PUB6: "2001:db8::1"}, {OW: V4, OW6: V6}, False, True,
                     ["public-ipv6 is still 2001:db8::1"], id="ipv6-stale"),
        pytest.param({OW: "198.51.100.1", PUB: "10.0.0.3"}, {OW: V4}, False, False, ["should be 203.0.113.7"],
                     id="wrong-overwrite-no-restart-yet"),
    ],
)  # fmt: skip
def test_assess(current: dict[str, str], want: dict[str, str], ok: bool, restart: bool, words: list[str]) -> None:
    verdict = assess(current, want)
    assert (verdict.ok, verdict.needs_restart) == (ok, restart)
    for word in words:
        assert word in verdict.detail


# --- the part over a fake API ------------------------------------------------------------


class FakeAPI:
    """One Node in memory; ``fail`` holds errors the next calls raise, in order."""

    source = "/fake/kubelet.kubeconfig"

    def __init__(self, node: str = "n1", annotations: Mapping[str, str] | None = None, exists: bool = True) -> None:
        self.node = node
        self.annotations: dict[str, str] | None = dict(annotations or {}) if exists else None
        self.fail: list[KubeError] = []
        self.calls: list[str] = []
        self.closed = False

    def _obj(self) -> JSONObject:
        return {"metadata": {"name": self.node, "annotations": copy.deepcopy(self.annotations)}}

    def _check(self, name: str) -> None:
        if self.fail:
            raise self.fail.pop(0)
        if name != self.node or self.annotations is None:
            raise NotFound(f"GET {name}: 404 NotFound")

    async def get_node(self, name: str) -> JSONObject:
        self.calls.append("get")
        self._check(name)
        return self._obj()

    async def patch_node(self, name: str, patch: Mapping[str, Any]) -> JSONObject:
        self.calls.append("patch")
        self._check(name)
        assert self.annotations is not None
        for key, value in patch["metadata"]["annotations"].items():
            if value is None:
                self.annotations.pop(key, None)
            else:
                self.annotations[key] = value
        return self._obj()

    async def list_nodes_metadata(self, *, resource_version: str | None = None) -> JSONObject:
        raise AssertionError("the annotation never lists")

    def watch_nodes_metadata(self, resource_version: str, *, timeout_s: int) -> AsyncIterator[WatchEvent]:
        raise AssertionError("the annotation never watches")

    async def close(self) -> None:
        self.closed = True


class Restarts:
    def __init__(self, api: FakeAPI | None = None, detail: str = "restarted k3s.service") -> None:
        self.reasons: list[str] = []
        self.api = api
        self.detail = detail

    async def defer(self, reason: str) -> RestartResult:
        self.reasons.append(reason)
        if self.api is not None and self.api.annotations is not None:  # flannel re-reads the overwrite
            self.api.annotations[PUB] = self.api.annotations.get(OW, "")
        return RestartResult(self.api is not None, self.detail, pending=self.api is None)


def part_for(api: FakeAPI, *, addrs: PublicAddresses | None = None, **kw: Any) -> tuple[AnnotationPart, State]:
    state = State(node="n1", version="test", clock=lambda: 1000.0)
    decided = addrs if addrs is not None else PublicAddresses(ipv4=ip_address(V4))  # type: ignore[arg-type]
    part = AnnotationPart(state, "n1", api, public_ip=lambda: decided, rand=lambda: 1.0, **kw)
    return part, state


async def test_sets_overwrite_then_asks_for_a_restart_and_reports_it() -> None:
    api = FakeAPI(annotations={PUB: "10.0.0.3", ANN_SUBNET_MANAGER: "true"})
    restarts = Restarts(detail="restart pending: rate limit, next allowed 12:40:00 UTC")
    part, state = part_for(api, restarter=restarts)
    next_s = await part.reconcile()
    assert api.calls == ["get", "patch"] and api.annotations is not None and api.annotations[OW] == V4
    check = state.checks["annotation"]
    assert not check.ok
    assert "public-ip-overwrite is 203.0.113.7 but flannel's public-ip is still 10.0.0.3" in check.detail
    assert check.detail.endswith("restart pending: rate limit, next allowed 12:40:00 UTC")
    assert len(restarts.reasons) == 1 and "public-ip-overwrite" in restarts.reasons[0]
    assert next_s == PENDING_INTERVAL_S
    assert state.metrics.counter("wgagent_annotation_patches_total", "", ("reason",)).get(reason="set") == 1


async def test_restart_makes_it_right() -> None:
    api = FakeAPI(annotations={PUB: "10.0.0.3", ANN_SUBNET_MANAGER: "true"})
    part, state = part_for(api, restarter=Restarts(api))
    await part.reconcile()
    assert not state.checks["annotation"].ok  # the patch response still shows the old public-ip
    next_s = await part.reconcile()
    assert state.checks["annotation"].ok
    assert state.checks["annotation"].detail == "Node n1: public-ip-overwrite and public-ip are 203.0.113.7"
    assert next_s == STEADY_INTERVAL_S


async def test_without_a_restarter_the_detail_says_so() -> None:
    api = FakeAPI(annotations={OW: V4, PUB: "10.0.0.3"})
    part, state = part_for(api)
    await part.reconcile()
    assert api.calls == ["get"]
    assert "no k3s restarter is wired" in state.checks["annotation"].detail


async def test_right_view_from_the_watch_costs_no_request() -> None:
    api = FakeAPI(annotations={OW: V4, PUB: V4})
    view = ClusterView({"n1": NodeInfo("n1", {OW: V4, PUB: V4})})
    part, state = part_for(api, cluster=lambda: view)
    for _ in range(3):
        await part.reconcile()
    assert api.calls == []
    assert state.checks["annotation"].ok


async def test_wrong_view_is_checked_against_the_api_before_patching() -> None:
    api = FakeAPI(annotations={OW: V4, PUB: V4})  # the view is stale, the Node is right
    view = ClusterView({"n1": NodeInfo("n1", {PUB: V4})})
    part, state = part_for(api, cluster=lambda: view)
    await part.reconcile()
    assert api.calls == ["get"]
    assert state.checks["annotation"].ok


async def test_removed_overwrite_is_put_back_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    api = FakeAPI(annotations={OW: V4, PUB: V4})
    part, state = part_for(api)
    await part.reconcile()
    assert state.checks["annotation"].ok
    assert api.annotations is not None
    del api.annotations[OW]
    caplog.set_level(logging.INFO, logger="wgagent.kube.annotation")
    await part.reconcile()
    assert api.annotations[OW] == V4
    assert state.checks["annotation"].ok
    assert "public-ip-overwrite was removed by someone else" in caplog.text
    assert "putting back 203.0.113.7" in caplog.text
    assert state.metrics.counter("wgagent_annotation_patches_total", "", ("reason",)).get(reason="restore") == 1


async def test_changed_overwrite_is_put_back(caplog: pytest.LogCaptureFixture) -> None:
    api = FakeAPI(annotations={OW: V4, PUB: V4})
    part, _state = part_for(api)
    await part.reconcile()
    assert api.annotations is not None
    api.annotations[OW] = "198.51.100.66"
    await part.reconcile()
    assert api.annotations[OW] == V4
    assert "was changed to 198.51.100.66 by someone else" in caplog.text


async def test_missing_node_is_waited_for_quietly(caplog: pytest.LogCaptureFixture) -> None:
    api = FakeAPI(exists=False)
    part, state = part_for(api)
    caplog.set_level(logging.DEBUG, logger="wgagent.kube")
    intervals = []
    for _ in range(4):
        intervals.append(await part.reconcile())
    check = state.checks["annotation"]
    assert not check.ok
    assert "Node n1 does not exist yet (k3s not started or the node not registered); waiting" in check.detail
    assert caplog.text.count("does not exist yet") == 1  # logged once, not every pass
    assert all(r.levelno == logging.INFO for r in caplog.records)
    assert intervals == [5.0, 10.0, 20.0, 20.0]
    api.annotations = {PUB: V4}
    next_s = await part.reconcile()
    assert api.annotations[OW] == V4 and state.checks["annotation"].ok
    assert next_s == STEADY_INTERVAL_S


async def test_forbidden_says_which_credential_and_node() -> None:
    api = FakeAPI()
    api.fail = [Forbidden('GET n1: 403 Forbidden: nodes "n1" is forbidden: User "system:node:n2" cannot get')]
    part, state = part_for(api)
    next_s = await part.reconcile()
    detail = state.checks["annotation"].detail
    assert "the credential in /fake/kubelet.kubeconfig may not read or patch Node n1" in detail
    assert 'User "system:node:n2" cannot get' in detail
    assert "node_name is wrong" in detail
    assert next_s == 10.0  # the slow backoff: a credential does not fix itself quickly


async def test_missing_kubeconfig_fails_the_check_not_the_daemon() -> None:
    api = FakeAPI()
    api.fail = [KubeConfigError("/var/lib/rancher/k3s/agent/kubelet.kubeconfig: kubeconfig not found")]
    part, state = part_for(api)
    next_s = await part.reconcile()
    assert "kubelet.kubeconfig: kubeconfig not found" in state.checks["annotation"].detail
    assert next_s == 15.0  # reading the file again costs the API server nothing


async def test_api_down_backs_off_then_recovers(caplog: pytest.LogCaptureFixture) -> None:
    api = FakeAPI(annotations={PUB: V4})
    api.fail = [KubeUnreachable("GET https://127.0.0.1:6444/api/v1/nodes/n1: cannot connect: refused")] * 6
    part, state = part_for(api)
    caplog.set_level(logging.INFO, logger="wgagent.kube.annotation")
    intervals = []
    for _ in range(6):
        intervals.append(await part.reconcile())
        assert state.checks["annotation"].detail.startswith("cannot reach the API server to check Node n1: GET https")
    assert intervals == [5.0, 10.0, 20.0, 20.0, 20.0, 20.0]  # capped: backoff.OUTAGE_CAP_S
    assert caplog.text.count("cannot reach the API") == 1  # logged once, not on every retry
    next_s = await part.reconcile()
    assert state.checks["annotation"].ok and next_s == STEADY_INTERVAL_S
    assert "public-ip-overwrite and public-ip are 203.0.113.7" in caplog.text  # recovery is logged


async def test_no_public_ip_yet_makes_no_request() -> None:
    api = FakeAPI()
    part, state = part_for(api, addrs=PublicAddresses())
    await part.reconcile()
    assert api.calls == []
    assert state.checks["annotation"].detail == "no public IP decided yet; nothing to annotate on Node n1"


async def test_dual_stack() -> None:
    api = FakeAPI(annotations={PUB: V4, PUB6: V6})
    addrs = PublicAddresses(ipv4=ip_address(V4), ipv6=ip_address(V6))  # type: ignore[arg-type]
    part, state = part_for(api, addrs=addrs)
    await part.reconcile()
    assert api.annotations == {PUB: V4, PUB6: V6, OW: V4, OW6: V6}
    assert state.checks["annotation"].ok
    assert "public-ipv6-overwrite and public-ipv6 are 2001:db8::7" in state.checks["annotation"].detail


async def test_status_section_and_close() -> None:
    api = FakeAPI(annotations={OW: V4, PUB: V4})
    part, state = part_for(api)
    await part.reconcile()
    section = state.status()["parts"]["annotation"]
    assert section["want"] == {OW: V4} and section["have"] == {OW: V4, PUB: V4}
    assert section["kubeconfig"] == "/fake/kubelet.kubeconfig" and section["read_from"] == "api"
    await part.close()
    assert api.closed
