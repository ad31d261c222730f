"""The API stand-in's pure parts: authorization per version, Events, request naming, and the
Node store's k3s start (tests/kubeapi/authz.py, events.py, discovery.py, protobuf.py, store.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.kubeapi import events as ev
from tests.kubeapi.authz import CONTROLLER, Attributes, User, authorize, forbidden_message, node_restriction
from tests.kubeapi.discovery import classify
from tests.kubeapi.k3s import FLANNEL, OVERWRITE_V4, Cluster, StartRequest
from tests.kubeapi.store import ApiError, NodeStore
from tests.kubeapi.upstream import K3sVersion

V131, V132 = K3sVersion.parse("v1.31.4+k3s1"), K3sVersion.parse("v1.32.4+k3s1")
NODE = User("system:node:n1", ("system:nodes",))
ADMIN = User("admin", ("system:masters",))
CTRL = User(CONTROLLER)
OTHER = "node 'n1' cannot read 'n2', only its own Node object"
ALL = "node 'n1' cannot read all nodes, only its own Node object"


@pytest.mark.parametrize(
    ("user", "attrs", "version", "expected"),
    [
        (ADMIN, Attributes("delete", "nodes", name="n2"), V132, (True, "")),
        (NODE, Attributes("get", "nodes", name="n1"), V132, (True, "")),
        (NODE, Attributes("get", "nodes", name="n2"), V132, (False, OTHER)),
        (NODE, Attributes("watch", "nodes"), V132, (False, ALL)),
        (NODE, Attributes("watch", "nodes", name="n1"), V132, (True, "")),
        (NODE, Attributes("list", "nodes"), V131, (True, "")),
        (NODE, Attributes("patch", "nodes", name="n2"), V132, (True, "")),
        (NODE, Attributes("patch", "nodes", "status", name="n1"), V132, (True, "")),
        (NODE, Attributes("create", "events", namespace="default"), V132, (True, "")),
        (NODE, Attributes("patch", "events", namespace="kube-system", name="e"), V132, (True, "")),
        (NODE, Attributes("list", "events", namespace="default"), V132, (False, "")),
        (NODE, Attributes("create", "events", group="events.k8s.io", namespace="default"), V132, (False, "")),
        (NODE, Attributes("list", "pods", field_selector="spec.nodeName=n1"), V132, (True, "")),
        (NODE, Attributes("list", "pods"), V132, (False, "can only list/watch pods with spec.nodeName field selector")),
        (CTRL, Attributes("get", "nodes", name="n2"), V131, (True, "")),
        (CTRL, Attributes("list", "nodes"), V131, (False, "")),
        (CTRL, Attributes("list", "nodes"), V132, (True, "")),
        (CTRL, Attributes("patch", "nodes", "status", name="n1"), V132, (True, "")),
        (CTRL, Attributes("patch", "nodes", name="n1"), V132, (False, "")),
        (CTRL, Attributes("create", "events", namespace="default"), V132, (False, "")),
        (User("someone"), Attributes("create", "selfsubjectaccessreviews", group="authorization.k8s.io"), V132,
         (True, "")),
        (User("someone"), Attributes("get", path="/version"), V132, (True, "")),
        (User("someone"), Attributes("get", "nodes", name="n1"), V132, (False, "")),
    ],
    ids=["admin", "node own", "node other", "node watch all", "node watch own", "node 1.31 list", "node patch other",
         "node status", "node event", "node event ns", "node list events", "node events.k8s.io", "node own pods",
         "node all pods", "ctrl get", "ctrl list 1.31.4", "ctrl list 1.32", "ctrl status", "ctrl patch", "ctrl event",
         "ssar", "discovery", "stranger"],
)  # fmt: skip
def test_authorize(user: User, attrs: Attributes, version: K3sVersion, expected: tuple[bool, str]) -> None:
    assert authorize(user, attrs, version) == expected


def test_forbidden_messages_read_as_the_api_servers() -> None:
    attrs = Attributes("get", "nodes", name="n2")
    assert forbidden_message(NODE, attrs, "why") == (
        'nodes "n2" is forbidden: User "system:node:n1" cannot get resource "nodes" in API group "" at the '
        "cluster scope: why"
    )
    listing = Attributes("list", "events", namespace="default")
    assert forbidden_message(NODE, listing, "").endswith('cannot list resource "events" in API group "" in the '
                                                         'namespace "default"')  # fmt: skip
    assert node_restriction(NODE, Attributes("patch", "nodes", name="n2"), "n2") == (
        'nodes "n2" is forbidden: node "n1" is not allowed to modify node "n2"'
    )
    assert node_restriction(NODE, Attributes("patch", "nodes", name="n1"), "n1") is None


@pytest.mark.parametrize(
    ("method", "path", "query", "named"),
    [("GET", "/api/v1/nodes", {}, ("list", "nodes", "", "", "", "list")),
     ("GET", "/api/v1/nodes", {"watch": "1", "fieldSelector": "metadata.name=n1"},
      ("watch", "nodes", "", "", "n1", "watch")),
     ("PATCH", "/api/v1/nodes/n1/status", {}, ("patch", "nodes", "status", "", "n1", "patch:status")),
     ("GET", "/api/v1/events", {"fieldSelector": "involvedObject.name=n1"},
      ("list", "events", "", "", "", "list:events")),
     ("PATCH", "/api/v1/namespaces/default/events/e1", {}, ("patch", "events", "", "default", "e1", "patch:events")),
     ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", {},
      ("create", "selfsubjectaccessreviews", "", "", "", "create:selfsubjectaccessreviews")),
     ("GET", "/apis", {}, ("discovery", "", "", "", "", "discovery")),
     ("GET", "/api/v1/secrets", {}, ("unknown", "", "", "", "", "unknown"))],
    ids=["list", "watch own", "status", "events all", "event patch", "ssar", "discovery", "unknown"],
)  # fmt: skip
def test_requests_are_named_as_the_apiserver_names_them(
    method: str, path: str, query: dict[str, str], named: tuple[str, ...]
) -> None:
    info = classify(method, path, query)
    assert (info.verb, info.resource, info.subresource, info.namespace, info.name, info.label) == named


# --- Events --------------------------------------------------------------------------------------


def event(name: str, node: str, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "involvedObject": {"kind": "Node", "name": node, "uid": node},
            "reason": "MeshPathDown", "type": "Warning", "message": "m", **extra}  # fmt: skip


def test_field_selectors_parse_escapes_and_refuse_unknown_fields() -> None:
    assert ev.parse_field_selector(r"involvedObject.name==a\,b, type != Normal".replace(" ", "")) == [
        ("involvedObject.name", "=", "a,b"),
        ("type", "!=", "Normal"),
    ]
    with pytest.raises(ev.EventError, match=r"field label not supported: spec\.nodeName"):
        ev.parse_field_selector("spec.nodeName=n1")


def test_events_list_by_namespace_and_selectors() -> None:
    store = ev.EventStore(next_rv=iter(range(10, 99)).__next__)
    store.create("default", event("a", "n1"))
    store.create("default", event("b", "n2", type="Normal"))
    store.create(
        "kube-system", event("c", "n1", involvedObject={"kind": "Pod", "name": "p", "namespace": "kube-system"})
    )

    def names(items: list[dict[str, Any]]) -> list[str]:
        return [e["metadata"]["name"] for e in items]

    assert names(store.list(None)) == ["a", "b", "c"]
    assert names(store.list("default")) == ["a", "b"]
    assert names(store.list(None, ev.parse_field_selector("involvedObject.name=n1"))) == ["a"]
    assert names(store.list(None, ev.parse_field_selector("involvedObject.namespace=kube-system"))) == ["c"]
    assert names(store.list(None, ev.parse_field_selector("involvedObject.kind=Node,type!=Normal"))) == ["a"]
    assert names(store.list(None, ev.parse_field_selector("source=wgagent"))) == []


def test_an_event_keeps_what_the_recorder_sent_and_conflicts_on_a_stale_resource_version() -> None:
    store = ev.EventStore(next_rv=iter(range(10, 99)).__next__)
    made = store.create("default", event("a", "n1", count=1))
    patched = store.update("default", "a", lambda e: {**e, "count": 2, "lastTimestamp": "2026-12-01T10:05:00Z"})
    assert (patched["count"], int(patched["metadata"]["resourceVersion"])) == (2, 11)
    assert patched["metadata"]["uid"] == made["metadata"]["uid"]
    stale = {**made, "count": 3}
    with pytest.raises(ev.EventError) as info:
        store.update("default", "a", lambda _e: stale)
    assert info.value.code == 409


@pytest.mark.parametrize(
    ("namespace", "body", "says"),
    [("kube-system", event("a", "n1"), 'involvedObject.namespace: Invalid value: "": does not match event.namespace'),
     ("default", {**event("a", "n1"), "involvedObject": {"kind": "Pod", "name": "p", "namespace": "x"}},
      'Invalid value: "x": does not match event.namespace'),
     ("default", {**event("a", "n1"), "metadata": {}}, "metadata.name: Required value"),
     ("default", {**event("a", "n1"), "metadata": {"name": "a", "namespace": "other"}},
      "does not match the namespace sent on the request")],
    ids=["node event outside default", "namespace mismatch", "no name", "url namespace"],
)  # fmt: skip
def test_event_validation_is_the_legacy_one(namespace: str, body: dict[str, Any], says: str) -> None:
    store = ev.EventStore(next_rv=iter(range(10, 99)).__next__)
    with pytest.raises(ev.EventError) as info:
        store.create(namespace, body)
    assert says in info.value.message


def test_generate_name_and_create_on_update() -> None:
    store = ev.EventStore(next_rv=iter(range(10, 99)).__next__)
    made = store.create("default", {**event("", "n1"), "metadata": {"generateName": "n1."}})
    assert made["metadata"]["name"].startswith("n1.") and len(made["metadata"]["name"]) == 8
    put = store.update("default", "z", lambda _e: event("z", "n2"))
    assert put["metadata"]["name"] == "z" and store.get("default", "z")["involvedObject"]["name"] == "n2"


def test_the_event_table_cells_follow_print_event() -> None:
    age = lambda t: f"age({t})"  # noqa: E731
    cells = ev.event_cells({**event("a", "n1"), "count": 3, "firstTimestamp": "F", "lastTimestamp": "L",
                            "source": {"component": "wgagent", "host": "n1"}}, age)  # fmt: skip
    assert cells == ["age(L)", "Warning", "MeshPathDown", "node/n1", "", "wgagent, n1", "m", "age(F)", 3, "a"]
    series = ev.event_cells({**event("b", "n1"), "eventTime": "E", "series": {"count": 5, "lastObservedTime": "S"},
                             "reportingComponent": "wgagent"}, age)  # fmt: skip
    assert (series[0], series[5], series[7], series[8]) == ("age(S)", "wgagent", "age(E)", 5)


# --- the store's k3s start -----------------------------------------------------------------------


def store(**cluster: Any) -> NodeStore:
    clock = iter(range(1000)).__next__
    s = NodeStore(clock=lambda: float(clock()), cluster=Cluster(flannel_backend="wireguard-native", **cluster),
                  new_key=lambda: "NEWKEY")  # fmt: skip
    s.add("s1", role="server")
    s.add("n1", internal_ip="10.1.0.2")
    return s


def test_k3s_restart_again_starts_with_the_last_starts_inputs() -> None:
    s = store()
    s.set_annotations("n1", {OVERWRITE_V4: "203.0.113.14"})
    s.k3s_start("n1", StartRequest(files=(("c", "node-external-ip: 203.0.113.14\n"),)))
    node = s.k3s_restart("n1")
    assert node["metadata"]["annotations"][FLANNEL + "public-ip"] == "203.0.113.14"
    assert json.loads(node["metadata"]["annotations"]["k3s.io/node-args"]) == ["agent", "--node-external-ip",
                                                                             "203.0.113.14"]  # fmt: skip
    assert s.restarts == {"n1": 2}


def test_each_write_of_a_start_is_one_watch_event_and_a_refused_start_none() -> None:
    s = store()
    watcher = s.subscribe()
    s.set_annotations("n1", {OVERWRITE_V4: "203.0.113.9"})
    outcome = s.k3s_start("n1", StartRequest(version="v1.32.11+k3s3", files=(("c", "node-external-ip: 1.2.3.4\n"),)))
    events = []
    while not watcher.queue.empty():
        events.append(watcher.queue.get_nowait())
    # the overwrite was set without a restart: public-ip is still the node's address, so
    # AcquireLease has nothing to write once syncAnnotations removed the overwrite
    assert [w.step for w in outcome.writes] == ["kubelet", "configureNode", "cloud-controller", "syncAnnotations"]
    assert len(events) == 1 + len(outcome.writes)
    assert OVERWRITE_V4 not in s.nodes["n1"]["metadata"]["annotations"]  # PR #13431 removed it
    rv = s.rv
    refused = s.k3s_start("n1", StartRequest(files=(("c", "flannel-backend: vxlan\n"),)))
    assert not refused.started and s.rv == rv and watcher.queue.empty()


def test_a_server_start_hands_its_settings_to_the_agents_that_start_after_it() -> None:
    s = store()
    agent = StartRequest(files=(("c", "node-external-ip: 198.51.100.20\n"),))
    s.k3s_start("n1", agent)
    assert OVERWRITE_V4 not in s.nodes["n1"]["metadata"]["annotations"]
    server = StartRequest(
        role="server", files=(("c", "flannel-backend: wireguard-native\nflannel-external-ip: true\n"),)
    )
    assert s.k3s_start("s1", server).started and s.cluster.flannel_external_ip
    s.k3s_restart("n1")
    assert s.nodes["n1"]["metadata"]["annotations"][OVERWRITE_V4] == "198.51.100.20"


def test_a_reboot_re_keys_a_node_whose_key_file_is_on_tmpfs() -> None:
    s = store()
    before = json.loads(s.nodes["n1"]["metadata"]["annotations"][FLANNEL + "backend-data"])["PublicKey"]
    s.k3s_start("n1", StartRequest())
    same = json.loads(s.nodes["n1"]["metadata"]["annotations"][FLANNEL + "backend-data"])["PublicKey"]
    s.k3s_start("n1", StartRequest(reboot=True))
    after = json.loads(s.nodes["n1"]["metadata"]["annotations"][FLANNEL + "backend-data"])["PublicKey"]
    assert before == same != after == "NEWKEY"


def test_pod_cidrs_follow_the_clusters_families() -> None:
    s = store(cluster_cidrs=("10.42.0.0/16", "fd42:42::/56"))
    assert s.nodes["n1"]["spec"]["podCIDRs"] == ["10.42.2.0/24", "fd42:42:0:2::/64"]


def test_an_unknown_node_is_not_found() -> None:
    with pytest.raises(ApiError) as info:
        store().k3s_start("nope")
    assert info.value.code == 404
