"""The annotation: decide_family's rules as named cases, by k3s version; AnnotationPart over an in-memory API."""

from __future__ import annotations

import copy
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any

import pytest

from wgagent.errors import Forbidden, KubeConfigError, KubeError, KubeUnreachable, NotFound
from wgagent.families import Families
from wgagent.k3s.versions import K3sVersion
from wgagent.k3s.view import ExternalIP, K3sView
from wgagent.kube.annotation import (
    PENDING_INTERVAL_S,
    STEADY_INTERVAL_S,
    AnnotationPart,
    FamilyFacts,
    decide_family,
    own_node_of,
    same_ip,
    shared_with,
)
from wgagent.kube.protocol import JSONObject, WatchEvent
from wgagent.model import (
    ANN_BACKEND_DATA,
    ANN_K3S_EXTERNAL_IP,
    ANN_K3S_NODE_ARGS,
    ANN_PUBLIC_IP,
    ANN_PUBLIC_IP_OVERWRITE,
    ANN_PUBLIC_IPV6,
    ANN_PUBLIC_IPV6_OVERWRITE,
    ClusterView,
    NodeInfo,
    PublicAddresses,
    RestartResult,
)
from wgagent.state import State

V4 = "203.0.113.7"
V6 = "2001:db8::7"
OLD = "10.0.0.3"
OW, PUB, OW6, PUB6, K3S, NODE_ARGS = (
    ANN_PUBLIC_IP_OVERWRITE,
    ANN_PUBLIC_IP,
    ANN_PUBLIC_IPV6_OVERWRITE,
    ANN_PUBLIC_IPV6,
    ANN_K3S_EXTERNAL_IP,
    ANN_K3S_NODE_ARGS,
)
OURS = ExternalIP(V4, "wgagent's 50-wgagent.yaml", True)
USERS = ExternalIP("198.51.100.9", "/etc/rancher/k3s/config.yaml.d/90-mine.yaml:2", False)
OLD_K3S = K3sVersion.parse("v1.31.4+k3s1")  # updateAddressAnnotations: adds only
DEC_K3S = K3sVersion.parse("v1.32.11+k3s1")  # setAnnotations: adds only
NEW_K3S = K3sVersion.parse("v1.33.7+k3s3")  # syncAnnotations (PR #13431): removes when off


# --- the rules (pure) ----------------------------------------------------------------------------


def facts(anns: dict[str, str], k3s: ExternalIP = OURS, version: K3sVersion | None = NEW_K3S, **kw: Any) -> FamilyFacts:
    return FamilyFacts(4, V4, anns, k3s, version, **kw)


@pytest.mark.parametrize(
    ("case", "rule", "patch", "restart"),
    [
        pytest.param(facts({PUB: V4, OW: V4}), "ok", None, False, id="published"),
        pytest.param(facts({PUB: V4}, version=OLD_K3S), "restore", V4, False, id="removed-put-back-old-k3s"),
        pytest.param(facts({PUB: V4, OW: "198.51.100.5"}, version=DEC_K3S), "restore", V4, False,
                     id="changed-put-back-december-k3s"),
        pytest.param(facts({PUB: V4}, version=NEW_K3S), "ok", None, False, id="not-put-back-where-k3s-removes-it"),
        pytest.param(facts({PUB: V4}, version=None), "ok", None, False, id="not-put-back-version-unknown"),
        pytest.param(facts({PUB: V4}, shared_with="nat2"), "shared", None, False, id="another-node-publishes-it"),
        pytest.param(facts({PUB: OLD}, USERS), "override", None, False, id="a-later-file-overrides"),
        pytest.param(facts({PUB: OLD}, ExternalIP("198.51.100.1", "wgagent's", True)), "drop-in", None, False,
                     id="our-drop-in-not-written-yet"),
        pytest.param(facts({PUB: OLD}, k3s_restart_pending=True), "restart", None, False, id="k3s-not-restarted-yet"),
        pytest.param(facts({PUB: OLD}, version=OLD_K3S, k3s_restart_pending=True), "restart", V4, False,
                     id="set-ahead-of-the-restart-old-k3s-leaves-it"),
        pytest.param(facts({PUB: OLD, K3S: "198.51.100.1"}), "restart", None, False, id="running-k3s-has-another"),
        pytest.param(facts({PUB: OLD}, dropin_written=False), "restart", None, False,
                     id="flags-unknown-drop-in-not-written-yet-is-no-wipe"),
        pytest.param(facts({PUB: OLD, NODE_ARGS: '["agent","--node-external-ip","198.51.100.1"]', K3S: V4}),
                     "restart", None, False, id="node-args-beat-a-stale-k3s-io-external-ip"),
        pytest.param(facts({PUB: OLD, NODE_ARGS: f'["agent","--node-external-ip","{V4}"]'}, version=DEC_K3S),
                     "patch", V4, True, id="node-args-say-k3s-runs-with-it"),
        pytest.param(facts({PUB: OLD, K3S: V4}, version=NEW_K3S), "wiped", None, False, id="new-k3s-fei-off-wipes"),
        pytest.param(facts({PUB: OLD, K3S: V4}, version=None), "wiped", None, False, id="unknown-version-no-patch"),
        pytest.param(facts({PUB: OLD, K3S: V4}, version=DEC_K3S), "patch", V4, True, id="december-k3s-leaves-it"),
        pytest.param(facts({PUB: OLD, K3S: V4}, version=OLD_K3S), "patch", V4, True, id="old-k3s-leaves-it"),
        pytest.param(facts({PUB: OLD}, version=OLD_K3S), "patch", V4, True, id="old-k3s-cloud-controller-off"),
        pytest.param(facts({PUB: OLD, OW: V4, K3S: V4}), "flannel", None, True, id="flannel-started-before"),
        pytest.param(facts({PUB: OLD, OW: V4, K3S: V4}, stuck=True), "stuck", None, False, id="restart-did-not-help"),
    ],
)  # fmt: skip
def test_decide_family(case: FamilyFacts, rule: str, patch: str | None, restart: bool) -> None:
    verdict = decide_family(case)
    assert (verdict.rule, verdict.patch, verdict.restart) == (rule, patch, restart), verdict.detail
    assert verdict.ok == (rule in ("ok", "restore"))
    assert (verdict.fix != "") == (rule in ("shared", "override", "wiped", "stuck"))


def test_the_override_names_its_source_and_asks_for_no_restart() -> None:
    verdict = decide_family(facts({PUB: OLD}, USERS))
    assert verdict.detail == (
        "k3s will use node-external-ip 198.51.100.9 from /etc/rancher/k3s/config.yaml.d/90-mine.yaml:2, not "
        f"{V4}, so flannel publishes {OLD}; not restarting k3s, which would not change it"
    )
    assert verdict.fix.startswith("remove node-external-ip from /etc/rancher/k3s/config.yaml.d/90-mine.yaml:2")


def test_wiped_says_why_and_the_fix_is_flannel_external_ip_on_the_servers() -> None:
    verdict = decide_family(facts({PUB: OLD, K3S: V4}))
    assert (
        "k3s v1.33.7+k3s3 runs with node-external-ip 203.0.113.7 but public-ip-overwrite is not set" in verdict.detail
    )
    assert "k3s PR #13431" in verdict.detail
    assert verdict.fix.startswith("set flannel-external-ip: true on every server")


@pytest.mark.parametrize(
    ("published", "own", "other", "expect"),
    [
        pytest.param({"nat2": V4}, None, "nat2", "nat2", id="already-published-elsewhere"),
        pytest.param({"nat2": V4, "nat1": V4}, "nat1", "nat2", None, id="both-publish-first-name-keeps-it"),
        pytest.param({"nat0": V4, "nat1": V4}, "nat1", "nat0", "nat0", id="both-publish-later-name-yields"),
        pytest.param({"nat2": "198.51.100.9"}, None, "nat2", None, id="another-address"),
    ],
)
def test_shared_with(published: dict[str, str], own: str | None, other: str, expect: str | None) -> None:
    nodes = {name: NodeInfo(name, {PUB: ip}) for name, ip in published.items()}
    nodes.setdefault("nat1", NodeInfo("nat1", {}))
    assert shared_with("nat1", V4, 4, ClusterView(nodes)) == expect
    assert shared_with("nat1", V4, 4, None) is None


def backend(port: int | None) -> str:
    return '{"PublicKey":"k="}' if port is None else f'{{"PublicKey":"k=","Port":{port}}}'


@pytest.mark.parametrize(
    ("ports", "expect"),
    [
        pytest.param({"nat1": 51821, "nat0": 51820, "pub": 51820}, None, id="own-ports-every-flannel-dials-them"),
        pytest.param({"nat1": 51820, "nat0": 51820, "pub": 51820}, "nat0", id="the-same-port"),
        pytest.param({"nat1": 51821, "nat0": 51820, "pub": None}, "nat0", id="a-flannel-before-v0.26.6-dials-its-own"),
        pytest.param({"nat1": None, "nat0": 51820, "pub": 51820}, "nat0", id="own-flannel-not-publishing-a-port"),
    ],
)
def test_nodes_behind_one_ip_on_their_own_ports_are_not_shared(
    ports: dict[str, int | None], expect: str | None
) -> None:
    """Issue 11 §4's per-node port: flannel v0.26.6+ dials each peer at its published Port."""
    ips = {"nat1": V4, "nat0": V4, "pub": "198.51.100.9"}
    nodes = {n: NodeInfo(n, {PUB: ips[n], ANN_BACKEND_DATA: backend(p)}) for n, p in ports.items()}
    assert shared_with("nat1", V4, 4, ClusterView(nodes)) == expect


@pytest.mark.parametrize(
    ("have", "want", "same"),
    [
        (V4, V4, True),
        (" 203.0.113.7 ", V4, True),
        ("2001:0db8:0:0:0:0:0:7", V6, True),
        (None, V4, False),
        ("not-an-ip", V4, False),
        ("203.0.113.8", V4, False),
    ],
)
def test_same_ip(have: str | None, want: str, same: bool) -> None:
    assert same_ip(have, want) is same


def test_own_node_of_a_k3s_node() -> None:
    node = own_node_of(
        {
            "metadata": {"name": "n1", "annotations": {PUB: V4, "x": 1}},
            "spec": {"podCIDRs": ["10.42.1.0/24", "2001:db8:42::/64"], "providerID": "k3s://n1"},
            "status": {"nodeInfo": {"kubeletVersion": "v1.32.4+k3s1"}},
        }
    )
    assert node.annotations == {PUB: V4} and node.pod_cidrs == ("10.42.1.0/24", "2001:db8:42::/64")
    assert str(node.version) == "v1.32.4+k3s1" and node.k3s_ccm
    assert not own_node_of({"spec": {"providerID": "aws:///i-1"}}).k3s_ccm
    assert own_node_of({"status": {"nodeInfo": {"kubeletVersion": "garbage"}}}).version is None


# --- the part over a fake API and a fake restarter ------------------------------------------------


class FakeAPI:
    """One Node in memory; ``fail`` holds errors the next calls raise, in order."""

    source = "/fake/kubelet.kubeconfig"

    def __init__(
        self, annotations: Mapping[str, str] | None = None, *, exists: bool = True, version: str = "v1.31.4+k3s1"
    ) -> None:
        self.node = "n1"
        self.annotations: dict[str, str] | None = dict(annotations or {}) if exists else None
        self.version = version
        self.pod_cidrs = ["10.42.1.0/24"]
        self.fail: list[KubeError] = []
        self.calls: list[str] = []
        self.closed = False

    def _obj(self) -> JSONObject:
        return {
            "metadata": {"name": self.node, "annotations": copy.deepcopy(self.annotations)},
            "spec": {"podCIDRs": list(self.pod_cidrs), "providerID": "k3s://n1"},
            "status": {"nodeInfo": {"kubeletVersion": self.version}},
        }

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
        self.annotations.update(patch["metadata"]["annotations"])
        return self._obj()

    async def list_nodes_metadata(self, *, resource_version: str | None = None) -> JSONObject:
        raise AssertionError("the annotation never lists")

    def watch_nodes_metadata(self, resource_version: str, *, timeout_s: int) -> AsyncIterator[WatchEvent]:
        raise AssertionError("the annotation never watches")

    async def close(self) -> None:
        self.closed = True


@dataclass
class FakeRestarter:
    needs: dict[str, str] = field(default_factory=dict)
    stuck_kinds: dict[str, str] = field(default_factory=dict)

    def need(self, kind: str, want: str, why: str, *, alone: bool = True) -> RestartResult:
        self.needs[kind] = want
        return RestartResult(False, f"restart of k3s.service queued ({why})", pending=True)

    def drop(self, kind: str) -> None:
        self.needs.pop(kind, None)

    @property
    def stuck(self) -> Mapping[str, str]:
        return self.stuck_kinds

    @property
    def open_needs(self) -> frozenset[str]:
        return frozenset(self.needs)


IPV4_ONLY = Families(True, False, "test")


def view(v4: ExternalIP = OURS, v6: ExternalIP | None = None) -> K3sView:
    return K3sView(v4, v6 or ExternalIP(None, "not set", False), None)


def part_for(
    api: FakeAPI,
    *,
    addrs: PublicAddresses | None = None,
    k3s: K3sView | None = None,
    families: Families = IPV4_ONLY,
    **kw: Any,
) -> tuple[AnnotationPart, State]:
    state = State(node="n1", version="test", clock=lambda: 1000.0)
    decided = addrs if addrs is not None else PublicAddresses(ipv4=ip_address(V4))  # type: ignore[arg-type]
    part = AnnotationPart(
        state,
        "n1",
        api,
        public_ip=lambda: decided,
        k3s_view=lambda _: k3s or view(),
        families=lambda: families,
        rand=lambda: 1.0,
        **kw,
    )
    return part, state


async def test_old_k3s_that_did_not_set_it_gets_it_set_and_one_restart() -> None:
    api = FakeAPI({PUB: OLD, K3S: V4})  # k3s runs with node-external-ip V4; flannel-external-ip off
    restarter = FakeRestarter()
    part, state = part_for(api, restarter=restarter)
    next_s = await part.reconcile()
    assert api.calls == ["get", "patch"] and api.annotations is not None and api.annotations[OW] == V4
    assert restarter.needs == {"overwrite": V4} and next_s == PENDING_INTERVAL_S
    check = state.checks["annotation"]
    assert not check.ok and "setting it, which this k3s leaves alone" in check.detail
    assert state.metrics.counter("wgagent_annotation_patches_total", "", ("reason",)).get(reason="set") == 1
    api.annotations[PUB] = V4  # the restart: flannel re-read it
    assert await part.reconcile() == STEADY_INTERVAL_S
    assert state.checks["annotation"].ok and restarter.needs == {}


async def test_new_k3s_with_flannel_external_ip_off_is_never_patched() -> None:
    api = FakeAPI({PUB: OLD, K3S: V4}, version="v1.34.3+k3s3")
    restarter = FakeRestarter()
    part, state = part_for(api, restarter=restarter)
    for _ in range(3):
        await part.reconcile()
    assert api.calls == ["get"] * 3 and restarter.needs == {}
    assert "set flannel-external-ip: true on every server" in state.checks["annotation"].detail


async def test_an_override_is_reported_and_neither_patched_nor_restarted() -> None:
    api = FakeAPI({PUB: "198.51.100.9", OW: "198.51.100.9", K3S: "198.51.100.9"})
    restarter = FakeRestarter()
    part, state = part_for(api, k3s=view(USERS), restarter=restarter)
    await part.reconcile()
    assert api.calls == ["get"] and restarter.needs == {}
    detail = state.checks["annotation"].detail
    assert "from /etc/rancher/k3s/config.yaml.d/90-mine.yaml:2, not 203.0.113.7" in detail
    assert state.status()["parts"]["annotation"]["rules"]["ipv4"]["rule"] == "override"


async def test_waiting_for_the_k3s_restart_of_the_drop_in_sets_it_ahead_and_asks_no_restart_itself() -> None:
    api = FakeAPI({PUB: OLD, K3S: "198.51.100.1"})  # k3s v1.31.4: leaves the overwrite alone
    restarter = FakeRestarter(needs={"config": "node-external-ip=203.0.113.7"})
    part, state = part_for(api, restarter=restarter)
    await part.reconcile()
    assert api.calls == ["get", "patch"] and api.annotations is not None and api.annotations[OW] == V4
    assert restarter.needs == {"config": "node-external-ip=203.0.113.7"}  # the one restart serves both
    assert "k3s has not restarted since node-external-ip became 203.0.113.7" in state.checks["annotation"].detail


async def test_a_stuck_restart_is_reported_not_repeated() -> None:
    api = FakeAPI({PUB: OLD, OW: V4, K3S: V4})
    restarter = FakeRestarter(stuck_kinds={"overwrite": V4})
    part, state = part_for(api, restarter=restarter)
    await part.reconcile()
    assert restarter.needs == {} and "not restarting again" in state.checks["annotation"].detail


async def test_a_node_behind_a_shared_ip_does_not_advertise_it() -> None:
    api = FakeAPI({PUB: "10.1.0.3"})
    cluster = ClusterView({"n1": NodeInfo("n1", {PUB: "10.1.0.3"}), "n0": NodeInfo("n0", {PUB: V4})})
    part, state = part_for(api, cluster=lambda: cluster, restarter=FakeRestarter())
    await part.reconcile()
    assert api.calls == ["get"]
    detail = state.checks["annotation"].detail
    assert "203.0.113.7 is already published by Node n0" in detail and "own public IP" in detail


async def test_right_view_from_the_watch_costs_no_request() -> None:
    api = FakeAPI({OW: V4, PUB: V4})
    cluster = ClusterView({"n1": NodeInfo("n1", {OW: V4, PUB: V4})})
    part, state = part_for(api, cluster=lambda: cluster)
    assert await part.reconcile() == STEADY_INTERVAL_S
    assert api.calls == [] and state.checks["annotation"].ok
    assert state.checks["annotation"].detail == "Node n1: public-ip is 203.0.113.7"


async def test_the_own_node_read_feeds_the_families() -> None:
    api = FakeAPI({PUB: V4})
    api.pod_cidrs = ["10.42.1.0/24", "2001:db8:42:1::/64"]
    part, _ = part_for(api)
    assert part.own_node() is None
    await part.reconcile()
    own = part.own_node()
    assert own is not None and own.pod_cidrs == ("10.42.1.0/24", "2001:db8:42:1::/64")


async def test_only_managed_families_are_looked_at() -> None:
    # an IPv4-only cluster on a VPS with native IPv6: no public-ipv6 will ever come
    api = FakeAPI({PUB: V4})
    addrs = PublicAddresses(ipv4=ip_address(V4), ipv6=ip_address(V6))  # type: ignore[arg-type]
    part, state = part_for(api, addrs=addrs)
    await part.reconcile()
    assert state.checks["annotation"].ok and "ipv6" not in state.checks["annotation"].detail
    assert state.status()["parts"]["annotation"]["families"]["ipv6"] is False


async def test_dual_stack_both_families() -> None:
    api = FakeAPI({PUB: V4, PUB6: OLD_V6, K3S: f"{V4},{V6}"}, version="v1.31.4+k3s1")
    addrs = PublicAddresses(ipv4=ip_address(V4), ipv6=ip_address(V6))  # type: ignore[arg-type]
    restarter = FakeRestarter()
    k3s = view(OURS, ExternalIP(V6, "wgagent's 50-wgagent.yaml", True))
    part, state = part_for(api, addrs=addrs, k3s=k3s, families=Families(True, True, "test"), restarter=restarter)
    await part.reconcile()
    assert api.annotations is not None and api.annotations[OW6] == V6
    assert api.annotations[OW] == V4  # put back too: this k3s leaves it alone (rule "restore")
    assert restarter.needs == {"overwrite": f"{V4},{V6}"}
    assert "public-ipv6-overwrite" in state.checks["annotation"].detail


OLD_V6 = "2001:db8::99"


async def test_no_public_ip_yet_makes_no_request() -> None:
    api = FakeAPI()
    part, state = part_for(api, addrs=PublicAddresses())
    await part.reconcile()
    assert api.calls == []
    assert state.checks["annotation"].detail == "no public IP decided yet; nothing to annotate on Node n1"


async def test_missing_node_is_waited_for_quietly(caplog: pytest.LogCaptureFixture) -> None:
    api = FakeAPI(exists=False)
    part, state = part_for(api)
    caplog.set_level(logging.DEBUG, logger="wgagent.kube")
    intervals = [await part.reconcile() for _ in range(4)]
    check = state.checks["annotation"]
    assert not check.ok
    assert "Node n1 does not exist yet (k3s not started or the node not registered); waiting" in check.detail
    assert caplog.text.count("does not exist yet") == 1  # logged once, not every pass
    assert all(r.levelno == logging.INFO for r in caplog.records)
    assert intervals == [5.0, 10.0, 20.0, 20.0]
    api.annotations = {PUB: V4}
    assert await part.reconcile() == STEADY_INTERVAL_S
    assert state.checks["annotation"].ok


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
    api = FakeAPI({PUB: V4})
    api.fail = [KubeUnreachable("GET https://127.0.0.1:6444/api/v1/nodes/n1: cannot connect: refused")] * 6
    part, state = part_for(api)
    caplog.set_level(logging.INFO, logger="wgagent.kube.annotation")
    intervals = []
    for _ in range(6):
        intervals.append(await part.reconcile())
        assert state.checks["annotation"].detail.startswith("cannot reach the API server to check Node n1: GET https")
    assert intervals == [5.0, 10.0, 20.0, 20.0, 20.0, 20.0]  # capped: backoff.OUTAGE_CAP_S
    assert caplog.text.count("cannot reach the API") == 1  # logged once, not on every retry
    assert await part.reconcile() == STEADY_INTERVAL_S
    assert state.checks["annotation"].ok
    assert "public-ip is 203.0.113.7" in caplog.text  # recovery is logged


async def test_every_pass_emits_done_for_the_k3s_part() -> None:
    api = FakeAPI(exists=False)
    part, _ = part_for(api)
    passes: list[None] = []
    part.done.connect(passes.append)
    await part.reconcile()
    api.annotations = {PUB: V4}
    await part.reconcile()
    assert passes == [None, None]


async def test_status_section_and_close() -> None:
    api = FakeAPI({OW: V4, PUB: V4, K3S: V4})
    part, state = part_for(api)
    await part.reconcile()
    section = state.status()["parts"]["annotation"]
    assert section["want"] == {OW: V4} and section["have"] == {OW: V4, PUB: V4, K3S: V4}
    assert section["kubeconfig"] == "/fake/kubelet.kubeconfig" and section["read_from"] == "api"
    assert section["k3s_version"] == "v1.31.4+k3s1"
    await part.close()
    assert api.closed


async def test_a_removed_overwrite_is_seen_from_the_watch_and_put_back_without_a_restart() -> None:
    api = FakeAPI({PUB: V4, OW: V4, K3S: V4})
    restarter = FakeRestarter()
    info = {PUB: V4, OW: V4}
    part, state = part_for(api, cluster=lambda: ClusterView({"n1": NodeInfo("n1", dict(info))}), restarter=restarter)
    assert await part.reconcile() == STEADY_INTERVAL_S and api.calls == []
    del info[OW]  # someone removes it: the watch shows it
    assert api.annotations is not None
    del api.annotations[OW]
    await part.reconcile()
    assert api.calls == ["get", "patch"] and api.annotations[OW] == V4 and restarter.needs == {}
    assert "public-ip-overwrite was removed, put back" in state.checks["annotation"].detail
    assert state.checks["annotation"].ok
