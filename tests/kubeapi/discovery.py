"""What the stand-in says it serves, and how it names a request (verb, resource, namespace, name).

Discovery follows the API server's two forms: legacy (``/api``, ``/api/v1``, ``/apis``,
``/apis/<group>/<version>``) and aggregated (``Accept: ...;g=apidiscovery.k8s.io;v=v2;
as=APIGroupDiscoveryList``, which kubectl >= 1.26 asks for first). Served: core/v1 ``nodes``
(+``status``), ``events`` and (always none) ``pods``, ``authorization.k8s.io/v1`` ``selfsubjectaccessreviews`` (what
``kubectl auth can-i`` and k3s's ``util.CheckRBAC`` post).

    >>> info = classify("GET", "/api/v1/nodes", {"fieldSelector": "metadata.name=n1"})
    >>> (info.verb, info.resource, info.name, info.label)
    ('list', 'nodes', 'n1', 'list')
    >>> classify("POST", "/api/v1/namespaces/default/events", {}).label
    'create:events'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tests.kubeapi.upstream import K3sVersion

Obj = dict[str, Any]
AGGREGATED = "application/json;g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList"
AUTHZ = "authorization.k8s.io"

_ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
_RESOURCES: list[tuple[str, str, str, str, bool, list[str], list[str]]] = [
    # (group, resource, singular, kind, namespaced, verbs, shortNames)
    ("", "nodes", "node", "Node", False, _ALL_VERBS, ["no"]),
    ("", "events", "event", "Event", True, _ALL_VERBS, ["ev"]),
    ("", "pods", "pod", "Pod", True, _ALL_VERBS, ["po"]),
    (AUTHZ, "selfsubjectaccessreviews", "selfsubjectaccessreview", "SelfSubjectAccessReview", False, ["create"], []),
]
_SUBRESOURCES = {("", "nodes"): [("status", ["get", "patch", "update"])]}


@dataclass(frozen=True)
class RequestInfo:
    """A request as the apiserver's ``RequestInfoFactory`` names it."""

    verb: str
    """An RBAC verb, or ``discovery``, ``control`` (the stand-in's own), ``unknown``."""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    group: str = ""
    path: str = ""

    @property
    def label(self) -> str:
        """How requests are counted: Node verbs by themselves (``patch``), others with their
        resource (``create:events``)."""
        if self.resource in ("", "nodes"):
            return self.verb + (f":{self.subresource}" if self.subresource else "")
        return f"{self.verb}:{self.resource}"


_PATHS = [
    (re.compile(r"^/api/v1/nodes(?:/(?P<name>[^/]+)(?:/(?P<sub>status))?)?$"), "", "nodes", False),
    (re.compile(r"^/api/v1/events$"), "", "events", False),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/events(?:/(?P<name>[^/]+))?$"), "", "events", True),
    (re.compile(r"^/api/v1/pods$"), "", "pods", False),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods(?:/(?P<name>[^/]+))?$"), "", "pods", True),
    (re.compile(r"^/apis/authorization\.k8s\.io/v1/selfsubjectaccessreviews$"), AUTHZ, "selfsubjectaccessreviews",
     False),
]  # fmt: skip
_DISCOVERY = re.compile(r"^/(version|api|api/v1|apis|apis/[^/]+|apis/[^/]+/[^/]+|openapi/.*)$")


def classify(method: str, path: str, query: Mapping[str, str]) -> RequestInfo:
    path = path.rstrip("/") or "/"
    if path.startswith("/_standin/"):
        return RequestInfo("control", path=path)
    for pattern, group, resource, _ in _PATHS:
        match = pattern.match(path)
        if match is None:
            continue
        groups = match.groupdict()
        name, ns, sub = groups.get("name") or "", groups.get("ns") or "", groups.get("sub") or ""
        verb = _verb(method, bool(name), query)
        if not name and verb in ("list", "watch"):
            name = _selector_name(query.get("fieldSelector", ""))
        return RequestInfo(verb, resource, sub, ns, name, group, path)
    if _DISCOVERY.match(path) and method == "GET":
        return RequestInfo("discovery", path=path)
    return RequestInfo("unknown", path=path)


def _verb(method: str, named: bool, query: Mapping[str, str]) -> str:
    if method == "GET":
        if named:
            return "get"
        return "watch" if query.get("watch") in ("true", "1") else "list"
    if method == "DELETE":
        return "delete" if named else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, "unknown")


def _selector_name(text: str) -> str:
    # request_info.go: a list/watch whose fieldSelector requires metadata.name=X is named X
    for term in text.split(","):
        key, _, value = term.replace("==", "=").partition("=")
        if key.strip() == "metadata.name" and "!" not in key and value:
            return value.strip()
    return ""


# --- documents ----------------------------------------------------------------------------------


def version_info(server: K3sVersion) -> Obj:
    """``/version``: k3s sets gitVersion to its own tag (k3s ``scripts/build``)."""
    return {
        "major": str(server.major),
        "minor": str(server.minor),
        "gitVersion": str(server),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-22T00:00:00Z",
        "goVersion": "go1.23.6",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def _groups() -> list[str]:
    return sorted({g for g, *_ in _RESOURCES if g})


def resource_list(group: str) -> Obj:
    """Legacy discovery of one group version (``/api/v1``, ``/apis/<group>/v1``)."""
    resources: list[Obj] = []
    for g, resource, singular, kind, namespaced, verbs, short in _RESOURCES:
        if g != group:
            continue
        entry: Obj = {"name": resource, "singularName": singular, "namespaced": namespaced, "kind": kind,
                      "verbs": verbs}  # fmt: skip
        if short:
            entry["shortNames"] = short
        resources.append(entry)
        for sub, sub_verbs in _SUBRESOURCES.get((g, resource), []):
            resources.append({"name": f"{resource}/{sub}", "singularName": "", "namespaced": namespaced,
                              "kind": kind, "verbs": sub_verbs})  # fmt: skip
    return {"kind": "APIResourceList", "groupVersion": f"{group}/v1" if group else "v1", "resources": resources}


def group_list() -> Obj:
    """``/apis``: the named groups, each served at v1."""
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [{"name": g, "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                    "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"}} for g in _groups()],
    }  # fmt: skip


def aggregated(path: str, version: str) -> Obj:
    """The aggregated discovery document for ``/api`` (the core group) or ``/apis``."""
    groups = [""] if path == "/api" else _groups()
    items = []
    for group in groups:
        resources = []
        for g, resource, singular, kind, namespaced, verbs, short in _RESOURCES:
            if g != group:
                continue
            response_kind = {"group": g, "version": "v1", "kind": kind}
            entry: Obj = {"resource": resource, "responseKind": response_kind,
                          "scope": "Namespaced" if namespaced else "Cluster", "singularResource": singular,
                          "verbs": verbs}  # fmt: skip
            if short:
                entry["shortNames"] = short
            subs = _SUBRESOURCES.get((g, resource))
            if subs:
                entry["subresources"] = [{"subresource": s, "responseKind": response_kind, "verbs": v}
                                         for s, v in subs]  # fmt: skip
            resources.append(entry)
        meta: Obj = {"creationTimestamp": None}
        if group:
            meta["name"] = group
        items.append({"metadata": meta, "versions": [{"version": "v1", "resources": resources,
                                                      "freshness": "Current"}]})  # fmt: skip
    return {"kind": "APIGroupDiscoveryList", "apiVersion": f"apidiscovery.k8s.io/{version}", "metadata": {},
            "items": items}  # fmt: skip


def wants_aggregated(accept: str) -> str | None:
    """The aggregated discovery version the Accept header asks for (v2, v2beta1), or None."""
    for entry in accept.split(","):
        params = dict(p.strip().split("=", 1) for p in entry.split(";")[1:] if "=" in p)
        aggregated = params.get("g") == "apidiscovery.k8s.io" and params.get("as") == "APIGroupDiscoveryList"
        if aggregated and params.get("v", "") in ("v2", "v2beta1"):
            return params["v"]
    return None


def document(path: str, accept: str, host: str, server: K3sVersion) -> tuple[Obj, str | None] | None:
    """The discovery document for ``path`` and its content type (None: plain JSON), or None
    when the stand-in serves nothing there (404)."""
    if path == "/version":
        return version_info(server), None
    aggregated_version = wants_aggregated(accept)
    if path in ("/api", "/apis") and aggregated_version:
        return aggregated(path, aggregated_version), AGGREGATED.format(v=aggregated_version)
    if path == "/api":
        versions = {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]}  # fmt: skip
        return versions, None
    if path == "/apis":
        return group_list(), None
    if path == "/api/v1":
        return resource_list(""), None
    parts = path.split("/")
    if len(parts) == 4 and parts[1] == "apis" and parts[2] in _groups() and parts[3] == "v1":
        return resource_list(parts[2]), None
    if len(parts) == 3 and parts[1] == "apis" and parts[2] in _groups():
        g = parts[2]
        return {"kind": "APIGroup", "apiVersion": "v1", "name": g,
                "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"}}, None  # fmt: skip
    return None
