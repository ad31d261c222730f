"""An HTTPS Kubernetes API stand-in for a k3s cluster's Nodes and Events, good enough for the
real kubectl and for wgagent, following upstream release by release (docs/UPSTREAM.md).

    async with KubeAPI(nodes=["n1", "n2"]) as api:       # 127.0.0.1, a free port, a test PKI
        kc = api.node_kubeconfig("n1")                    # CN=system:node:n1, O=system:nodes
        ...
        api.store.set_annotations("n1", {"k": None})      # someone removes an annotation
        api.k3s_start("n1", files=((path, text),), version="v1.32.11+k3s3")  # k3s starts
        api.k3s_restart("n1")                             # k3s starts again, same inputs
        api.set_cluster(server_version="v1.31.4+k3s1")    # the servers' version and settings
        api.counts                                        # Counter[(user, verb)]

What it serves, as the API server does:
- ``/version`` (the servers' k3s version), ``/api``, ``/apis`` (legacy and aggregated
  discovery v2/v2beta1), ``/api/v1``, ``/apis/authorization.k8s.io/v1``;
- ``/api/v1/nodes``: LIST (``fieldSelector`` ``metadata.name``/``spec.unschedulable``,
  ``labelSelector``), WATCH (``resourceVersion``, ``allowWatchBookmarks``,
  ``timeoutSeconds``; 410 as an ERROR event for a resourceVersion older than the history
  window), POST; ``/api/v1/nodes/{name}``: GET, PATCH (merge, strategic merge, JSON patch),
  PUT (resourceVersion conflicts are 409; status kept), DELETE; ``.../status``: PATCH, PUT
  (spec kept), as flannel's AcquireLease writes;
- core/v1 Events (tests/kubeapi/events.py): ``/api/v1/namespaces/{ns}/events[/{name}]``
  POST, GET, PUT, PATCH (all three types), DELETE; LIST there and at ``/api/v1/events`` with
  the events' field selectors; no watch;
- ``/api/v1[/namespaces/{ns}]/pods``: an empty list (``kubectl describe node`` asks);
- ``POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`` in JSON or kubectl's
  protobuf: the authorizers' answer (``kubectl auth can-i``, k3s's ``util.CheckRBAC``);
- content negotiation: ``as=Table`` (kubectl's columns), ``as=PartialObjectMetadata(List)``,
  plain JSON; 406 otherwise. Errors are ``Status`` objects (401, 403, 404, 409, 410, 415, 422).

Authentication: client certificates signed by the test CA (CN = user, O = groups) and
bearer tokens. Authorization (tests/kubeapi/authz.py), by the servers' k3s version
(``store.cluster.server_version``): ``system:masters`` may do anything; a node
(``system:node:<name>``) has the Node authorizer's rights (its own Node only from Kubernetes
1.32, every Node before; create/update/patch Events) and NodeRestriction's limits;
``system:k3s-controller`` gets Nodes, and lists/watches them only from k3s v1.29.13, v1.30.9,
v1.31.5, v1.32.0 on.

k3s starts (:meth:`k3s_start`, tests/kubeapi/k3s.py): what k3s and flannel write to the Node
when k3s starts with a given config, version and environment; a server's start sets the
cluster's settings (flannel-external-ip, backend, cluster CIDRs) that agents then receive.

Time: ``time_scale`` real seconds per simulated second. Watch timeouts (``timeoutSeconds``,
or 1800-3600 s when not given, like ``--min-request-timeout``), bookmarks (every 60 s, and
just before a watch times out) and the history window run on simulated time, so a test or
the benchmark can run an honest hour in seconds.

Faults: :meth:`fail_next` (5xx), :meth:`drop_next` (connection closed before an answer),
``latency_s``, :meth:`expire_watches` (410), :meth:`drop_watches`, :meth:`stop`/:meth:`start`
(the API down and back on the same port), and ``store.set_annotations(...)`` behind the
agent's back. Every request is counted by user and verb (Node requests by their verb,
others as ``verb:resource``, e.g. ``create:events``).

Control endpoint (admin credential), for a stand-in run as a process:
``GET /_standin/counts`` (requests, restarts, each node's last k3s start) and
``POST /_standin/control`` with ``{"action": ...}``: ``k3s_start`` (``node``; optional
``role``, ``files`` [[path, text], ...], ``args``, ``env`` {}, ``version``, ``reboot``,
``iface_ipv4``, ``iface_ipv6``, ``listen_port``, ``flannel_version``), ``k3s_restart``
(``node``), ``set_cluster`` (``flannel_backend``, ``flannel_external_ip``,
``cluster_cidrs``, ``disable_ccm``, ``server_version``), ``set_annotations``, ``add_node``,
``delete_node``, ``fail``, ``drop``, ``latency``, ``expire_watches``, ``drop_watches``,
``reset_counts``. ``k3s_start``/``k3s_restart`` answer ``{"started", "error", "steps",
"args", "public_key", "node"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import json
import os
import random
import shutil
import socket
import ssl
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.kubeapi import discovery, protobuf
from tests.kubeapi import events as ev
from tests.kubeapi.authz import CONTROLLER, Attributes, User, authorize, forbidden_message, node_restriction
from tests.kubeapi.discovery import RequestInfo, classify
from tests.kubeapi.k3s import Cluster, Outcome, StartRequest, request_from_json
from tests.kubeapi.pki import PKI
from tests.kubeapi.store import (
    ApiError,
    NodeStore,
    Obj,
    TooOld,
    json_patch,
    merge_patch,
    node_role,
    strategic_merge_patch,
)
from tests.kubeapi.upstream import K3sVersion

ADMIN_TOKEN = "admin-token-0123456789"
JSON_CT = "application/json"
NODE_FIELDS = frozenset({"metadata.name", "spec.unschedulable"})
"""Node field selectors (kubernetes ``pkg/apis/core/v1/conversion.go``)."""

__all__ = ["ADMIN_TOKEN", "CONTROLLER", "KubeAPI", "User"]


@dataclass
class Fault:
    kind: str  # "fail" | "drop" | "gone"
    times: int
    status: int = 503
    verbs: frozenset[str] | None = None
    users: frozenset[str] | None = None

    def matches(self, verb: str, user: str) -> bool:
        return (self.verbs is None or verb in self.verbs) and (self.users is None or user in self.users)


@dataclass
class Record:
    method: str
    path: str
    query: str
    user: str
    verb: str
    status: int = 0
    bytes: int = 0
    at: float = field(default_factory=time.monotonic)


class KubeAPI:
    def __init__(
        self,
        *,
        nodes: Iterable[str] = (),
        servers: Iterable[str] = (),
        pki: PKI | None = None,
        workdir: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        time_scale: float = 1.0,
        bookmark_interval_s: float = 60.0,
        history_s: float = 75.0,
        seed: int = 1,
        cluster: Cluster | None = None,
    ) -> None:
        self._own_dir = workdir is None
        self.dir = workdir or tempfile.mkdtemp(prefix="kubeapi-")
        self._pki = pki
        self.host = host
        self.port = port
        self.time_scale = time_scale
        self.bookmark_interval_s = bookmark_interval_s
        self._t0 = time.monotonic()
        self.store = NodeStore(clock=self.sim_now, history_s=history_s, cluster=cluster)
        self.tokens: dict[str, User] = {ADMIN_TOKEN: User("admin", ("system:masters",))}
        self.counts: Counter[tuple[str, str]] = Counter()
        self.bytes_sent: Counter[str] = Counter()
        self.requests: list[Record] = []
        self.faults: list[Fault] = []
        self.latency_s = 0.0
        self._rand = random.Random(seed)
        self._runner: web.AppRunner | None = None
        self._ssl: ssl.SSLContext | None = None
        self._transports: set[asyncio.Transport] = set()
        self._lifecycle = asyncio.Lock()
        self._stopping = False
        for name in servers:
            self.store.add(name, role="server")
        for name in nodes:
            self.store.add(name)

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def pki(self) -> PKI:
        if self._pki is None:
            self._pki = PKI.create(os.path.join(self.dir, "pki"))
        return self._pki

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    def sim_now(self) -> float:
        return (time.monotonic() - self._t0) / self.time_scale

    async def start(self) -> None:
        """Listen (again, on the same port after :meth:`stop`)."""
        async with self._lifecycle:
            if self._runner is not None:
                return
            if self._ssl is None:
                ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.pki.ca_cert)
                ctx.load_cert_chain(self.pki.server_cert, self.pki.server_key)
                ctx.verify_mode = ssl.CERT_OPTIONAL  # bearer tokens need no client certificate
                self._ssl = ctx
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            self.port = sock.getsockname()[1]
            app = web.Application(client_max_size=8 << 20)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            # Where the shutdown grace is given moved between aiohttp 3.8 and 3.9.
            grace: dict[str, Any] = {"shutdown_timeout": 1.0}
            runner_takes_it = "shutdown_timeout" in inspect.signature(web.BaseRunner.__init__).parameters
            self._runner = web.AppRunner(app, access_log=None, **(grace if runner_takes_it else {}))
            await self._runner.setup()
            site = web.SockSite(self._runner, sock, ssl_context=self._ssl, **({} if runner_takes_it else grace))
            await site.start()
            self._stopping = False

    async def stop(self) -> None:
        """The API server goes away, as if it crashed: open connections are cut, new ones refused."""
        async with self._lifecycle:
            runner, self._runner = self._runner, None
            if runner is None:
                return
            self._stopping = True  # a request arriving meanwhile has its connection cut
            self.store.signal("close")
            for _ in range(200):  # open watches see "close" and end (bounded: 1 s)
                if not self.store.watchers:
                    break
                await asyncio.sleep(0.005)
            for transport in list(self._transports):
                transport.abort()
            await runner.cleanup()

    async def close(self) -> None:
        await self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    async def __aenter__(self) -> KubeAPI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- credentials ---------------------------------------------------------------------

    def node_kubeconfig(self, node: str, *, inline: bool = False) -> str:
        cert = self.pki.client(f"system:node:{node}", "system:nodes")
        return self.pki.kubeconfig(self._kc_path(f"node-{node}", inline), self.url, cert=cert, inline=inline)

    def controller_kubeconfig(self) -> str:
        cert = self.pki.client(CONTROLLER)
        return self.pki.kubeconfig(self._kc_path("k3scontroller", False), self.url, cert=cert)

    def admin_kubeconfig(self) -> str:
        return self.pki.kubeconfig(self._kc_path("admin", True), self.url, token=ADMIN_TOKEN, inline=True)

    def token_kubeconfig(self, token: str, user: User, *, token_file: bool = False) -> str:
        self.tokens[token] = user
        name = "token-" + "".join(c if c.isalnum() else "_" for c in user.name)
        if token_file:
            tf = os.path.join(self.dir, name + ".token")
            with open(tf, "w") as f:
                f.write(token + "\n")
            return self.pki.kubeconfig(self._kc_path(name, True), self.url, token_file=tf, inline=True)
        return self.pki.kubeconfig(self._kc_path(name, True), self.url, token=token, inline=True)

    def _kc_path(self, name: str, inline: bool) -> str:
        os.makedirs(os.path.join(self.dir, "kubeconfigs"), exist_ok=True)
        return os.path.join(self.dir, "kubeconfigs", name + ("-inline" if inline else "") + ".yaml")

    # --- faults and simulations ----------------------------------------------------------

    def fail_next(self, times: int = 1, *, status: int = 503, verbs: Sequence[str] | None = None) -> None:
        """The next ``times`` matching requests are answered ``status`` (a Status object)."""
        self.faults.append(Fault("fail", times, status, frozenset(verbs) if verbs else None))

    def drop_next(self, times: int = 1, *, verbs: Sequence[str] | None = None) -> None:
        """The next ``times`` matching requests see their connection closed, no answer."""
        self.faults.append(Fault("drop", times, 0, frozenset(verbs) if verbs else None))

    def gone_next_watch(self, times: int = 1) -> None:
        """The next ``times`` watches are answered with an ERROR event 410 (Expired)."""
        self.faults.append(Fault("gone", times, 410, frozenset({"watch"})))

    def expire_watches(self) -> None:
        """Compact the history: open watches get 410 Gone, and so does any watch from before."""
        self.store.compact()
        self.store.signal("gone")

    def drop_watches(self) -> None:
        """Cut every open watch mid-stream (as a broken connection would)."""
        self.store.signal("drop")

    def bookmark_now(self) -> None:
        """Send a bookmark on every watch that allowed them, now."""
        self.store.signal("bookmark")

    @property
    def server_version(self) -> K3sVersion:
        """The k3s version of the servers (RBAC, the Node authorizer and ``/version`` follow it)."""
        return K3sVersion.parse(self.store.cluster.server_version)

    def set_cluster(self, **changes: Any) -> Cluster:
        """Change the servers' settings (:class:`tests.kubeapi.k3s.Cluster` fields), as if the
        servers had been started so: ``api.set_cluster(server_version="v1.31.4+k3s1")``."""
        self.store.cluster = replace(self.store.cluster, **changes)
        return self.store.cluster

    def k3s_start(self, node: str, request: StartRequest | None = None, **inputs: Any) -> Outcome:
        """k3s starts on ``node`` with ``request`` (or a :class:`StartRequest` made of ``inputs``:
        ``files``, ``args``, ``env``, ``version``, ``reboot``...; the role is the Node's unless
        given): see :meth:`NodeStore.k3s_start` and tests/kubeapi/k3s.py."""
        if request is None:
            role = inputs.pop("role", None) or node_role(self.store.get(node))
            request = StartRequest(role=role, **inputs)
        elif inputs:
            request = replace(request, **inputs)
        return self.store.k3s_start(node, request)

    def k3s_restart(self, node: str) -> Obj:
        """k3s restarts on ``node`` with the same inputs as its last start; the Node afterwards."""
        return self.store.k3s_restart(node)

    def other_changes(self, n: int = 1) -> None:
        """Other objects changed: the cluster-wide resourceVersion moves, no Node event."""
        self.store.rv += n

    def reset_counts(self) -> None:
        self.counts.clear()
        self.bytes_sent.clear()
        self.requests.clear()

    def count(self, *, user: str | None = None, verb: str | None = None) -> int:
        return sum(
            n for (u, v), n in self.counts.items() if (user is None or u == user) and (verb is None or v == verb)
        )

    def _take_fault(self, verb: str, user: str) -> Fault | None:
        for fault in self.faults:
            if fault.times > 0 and fault.matches(verb, user):
                fault.times -= 1
                return fault
        self.faults = [f for f in self.faults if f.times > 0]
        return None

    # --- request handling ---------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            self._transports.add(transport)
        try:
            if self._stopping:
                if transport is not None:
                    transport.abort()
                raise _Dropped()
            return await self._handle_counted(request)
        except _Dropped:
            return web.Response(status=500)  # never reaches the client: its connection is gone
        finally:
            if transport is not None:
                self._transports.discard(transport)

    async def _handle_counted(self, request: web.Request) -> web.StreamResponse:
        user = self._authenticate(request)
        info = classify(request.method, request.path, request.query)
        verb = info.label
        record = Record(request.method, request.path, request.query_string, user.name if user else "-", verb)
        if info.verb != "control":
            self.requests.append(record)
            self.counts[(record.user, verb)] += 1
        try:
            if self.latency_s and info.verb != "control":
                await asyncio.sleep(self.latency_s)
            fault = self._take_fault(verb, record.user) if info.verb != "control" else None
            if fault is not None and fault.kind == "drop":
                if request.transport is not None:
                    request.transport.abort()
                raise _Dropped()
            if fault is not None and fault.kind == "fail":
                reason = "ServiceUnavailable" if fault.status == 503 else "InternalError"
                raise ApiError(fault.status, reason, "injected fault")
            if user is None:
                raise ApiError(401, "Unauthorized", "Unauthorized")
            resp = await self._route(request, user, info, record, fault)
        except ApiError as exc:
            resp = _json(exc.status(), exc.code)
        if isinstance(resp, web.Response) and resp.body is not None:
            record.bytes = len(resp.body)  # type: ignore[arg-type]
            self.bytes_sent[record.user] += record.bytes
        record.status = resp.status
        return resp

    def _authenticate(self, request: web.Request) -> User | None:
        transport = request.transport
        peer = transport.get_extra_info("peercert") if transport is not None else None
        if peer:
            cn, orgs = "", []
            for rdn in peer.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        cn = value
                    elif key == "organizationName":
                        orgs.append(value)
            if cn:
                return User(cn, tuple(orgs))
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return self.tokens.get(auth[len("Bearer ") :].strip())
        return None

    async def _route(
        self, request: web.Request, user: User, info: RequestInfo, record: Record, fault: Fault | None
    ) -> web.StreamResponse:
        if info.verb == "control":
            return await self._control(request, user)
        if info.verb == "discovery":
            found = discovery.document(info.path, request.headers.get("Accept", ""), self.url.split("://", 1)[1],
                                       self.server_version)  # fmt: skip
            if found is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return _json(found[0], content_type=found[1] or JSON_CT)
        if info.verb == "unknown":
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        attrs = Attributes(info.verb, info.resource, info.subresource, info.namespace, info.name, info.group,
                           field_selector=request.query.get("fieldSelector", ""))  # fmt: skip
        allowed, reason = authorize(user, attrs, self.server_version)
        if not allowed:
            details = {"name": info.name, "kind": info.resource} if info.name else {"kind": info.resource}
            raise ApiError(403, "Forbidden", forbidden_message(user, attrs, reason), details)
        denied = node_restriction(user, attrs, info.name) if info.name else None
        if denied:
            raise ApiError(403, "Forbidden", denied, {"name": info.name, "kind": info.resource})
        if info.resource == "nodes":
            return await self._nodes(request, user, info, record, fault)
        if info.resource == "events":
            try:
                return await self._events(request, info)
            except ev.EventError as exc:
                raise ApiError(exc.code, exc.reason, exc.message, exc.details) from exc
        if info.resource == "pods":
            return self._pods(request, info)
        return await self._access_review(request, user)

    def _pods(self, request: web.Request, info: RequestInfo) -> web.StreamResponse:
        """Pods: the stand-in runs none (``kubectl describe node`` lists them)."""
        if info.verb == "get":
            raise ApiError(404, "NotFound", f'pods "{info.name}" not found', {"name": info.name, "kind": "pods"})
        if info.verb != "list":
            raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported here")
        fmt, rv = _negotiate(request.headers.get("Accept", ""), "list"), str(self.store.rv)
        if fmt == "table":
            columns = [{"name": n, "type": "string", "format": "name" if n == "Name" else "", "description": "",
                        "priority": 0} for n in ("Name", "Ready", "Status", "Restarts", "Age")]  # fmt: skip
            return _json({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
                          "columnDefinitions": columns, "rows": []})  # fmt: skip
        kind = "PartialObjectMetadataList" if fmt == "metadata" else "PodList"
        api_version = "meta.k8s.io/v1" if fmt == "metadata" else "v1"
        return _json({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv}, "items": []})

    async def _nodes(
        self, request: web.Request, user: User, info: RequestInfo, record: Record, fault: Fault | None
    ) -> web.StreamResponse:
        accept = request.headers.get("Accept", "")
        verb, name = info.verb, info.name
        selector = _parse_selector(request.query.get("fieldSelector", ""), NODE_FIELDS)
        if verb == "watch":
            visible = lambda n: ev.matches(_node_fields(n), selector)  # noqa: E731
            return await self._watch(request, visible, record, gone=fault is not None)
        if verb == "list":
            fmt = _negotiate(accept, "list")
            items = [n for n in self.store.list() if ev.matches(_node_fields(n), selector)]
            items = _label_filter(items, request.query.get("labelSelector", ""))
            return _json(_render_list(items, fmt, str(self.store.rv), request.query))
        if verb == "get":
            fmt = _negotiate(accept, "object")
            return _json(_render_object(self.store.get(name), fmt, request.query))
        if verb == "create":
            body = await _body_json(request)
            body_name = str((body.get("metadata") or {}).get("name"))
            denied = node_restriction(user, Attributes("create", "nodes"), body_name)
            if denied:
                raise ApiError(403, "Forbidden", denied, {"kind": "nodes"})
            return _json(self.store.create(body), 201)
        if verb == "delete":
            self.store.delete(name)
            return _json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                          "details": {"name": name, "kind": "nodes"}})  # fmt: skip
        if verb not in ("update", "patch"):
            raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported here")
        apply = await _change(request, verb)
        keep = _keep_status if not info.subresource else _keep_spec

        def mutate(node: Obj) -> Obj:
            new = apply(node)
            return keep(new, node)

        node = self.store.update(name, mutate, dry_run=request.query.get("dryRun") == "All")
        return _json(_render_object(node, _negotiate(accept, "object"), request.query))

    async def _events(self, request: web.Request, info: RequestInfo) -> web.StreamResponse:
        """core/v1 Events (tests/kubeapi/events.py)."""
        store, q = self.store.events, request.query
        accept, ns, name = request.headers.get("Accept", ""), info.namespace, info.name
        dry_run = q.get("dryRun") == "All"
        if info.verb == "list":
            fmt = _negotiate(accept, "list")
            items = store.list(ns or None, ev.parse_field_selector(q.get("fieldSelector", "")))
            items = _label_filter(items, q.get("labelSelector", ""))
            return _json(self._render_events(items, fmt, q))
        if info.verb == "watch":
            raise ApiError(405, "MethodNotAllowed", "the stand-in does not serve watches of events")
        if info.verb == "get":
            fmt = _negotiate(accept, "object")
            event = store.get(ns, name)
            return _json(self._render_events([event], fmt, q) if fmt == "table" else _one(event, fmt))
        if info.verb == "create":
            return _json(store.create(ns, await _body_json(request), dry_run=dry_run), 201)
        if info.verb == "delete":
            gone = store.delete(ns, name)
            return _json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                          "details": {"name": name, "kind": "events", "uid": gone["metadata"]["uid"]}})  # fmt: skip
        if info.verb in ("update", "patch"):
            apply = await _change(request, info.verb)
            return _json(store.update(ns, name, apply, dry_run=dry_run, create=info.verb == "update"))
        raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported here")

    def _render_events(self, items: list[Obj], fmt: str, query: Mapping[str, str]) -> Obj:
        rv = str(self.store.rv)
        if fmt == "table":
            return ev.table(items, rv=rv, include=query.get("includeObject", "Metadata"), age=_age)
        if fmt == "metadata":
            return {"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                    "metadata": {"resourceVersion": rv}, "items": [_partial(e) for e in items]}  # fmt: skip
        for item in items:
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return {"kind": "EventList", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items}

    async def _access_review(self, request: web.Request, user: User) -> web.StreamResponse:
        """``POST .../selfsubjectaccessreviews``: the authorizers' answer for the caller (what
        ``kubectl auth can-i`` and k3s's ``util.CheckRBAC`` ask; admission is not consulted)."""
        if request.method != "POST":
            raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported here")
        if request.content_type == protobuf.PROTOBUF:  # kubectl's typed client
            try:
                body = protobuf.self_subject_access_review(await request.read())
            except ValueError as exc:
                raise ApiError(400, "BadRequest", f"the request body is not valid protobuf: {exc}") from exc
        else:
            body = await _body_json(request)
        spec = body.get("spec") or {}
        res, nonres = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
        if isinstance(res, dict):
            keys = ("verb", "resource", "subresource", "namespace", "name", "group")
            attrs = Attributes(*(str(res.get(k) or "") for k in keys))
        elif isinstance(nonres, dict):
            attrs = Attributes(str(nonres.get("verb", "")), path=str(nonres.get("path", "")))
        else:
            raise ApiError(422, "Invalid", 'SelfSubjectAccessReview.authorization.k8s.io "" is invalid: '
                           "spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes "
                           "or resourceAttributes must be specified")  # fmt: skip
        allowed, reason = authorize(user, attrs, self.server_version)
        status: Obj = {"allowed": allowed}
        if reason:
            status["reason"] = reason
        review = {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                  "metadata": {"creationTimestamp": None}, "spec": spec, "status": status}  # fmt: skip
        return _json(review, 201)

    async def _watch(
        self, request: web.Request, visible: Callable[[Obj], bool], record: Record, *, gone: bool
    ) -> web.StreamResponse:
        fmt = _negotiate(request.headers.get("Accept", ""), "watch")
        q = request.query
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        timeout_s = float(q["timeoutSeconds"]) if q.get("timeoutSeconds", "").isdigit() else 1800 * (
            1 + self._rand.random())  # fmt: skip
        rv_text = q.get("resourceVersion", "")
        watcher = self.store.subscribe()
        resp = web.StreamResponse(headers={"Content-Type": JSON_CT, "Cache-Control": "no-cache, private"})
        resp.enable_chunked_encoding()
        headers_sent = [False]
        last_rv = self.store.rv

        async def send(event_type: str, obj: Obj) -> None:
            if fmt == "table" and event_type != "BOOKMARK":
                obj = _table([obj], headers=not headers_sent[0], rv=obj["metadata"]["resourceVersion"], query=q)
                headers_sent[0] = True
            elif fmt == "metadata":
                obj = _partial(obj)
            line = (json.dumps({"type": event_type, "object": obj}, separators=(",", ":")) + "\n").encode()
            record.bytes += len(line)
            self.bytes_sent[record.user] += len(line)
            await resp.write(line)

        async def bookmark() -> None:
            nonlocal last_rv
            if not bookmarks:
                return
            if watcher.queue.empty():  # everything up to now was sent: the cluster's rv is safe
                last_rv = max(last_rv, self.store.rv)
            await send("BOOKMARK", _bookmark(str(last_rv), fmt))

        try:
            if gone:
                raise TooOld(int(rv_text) if rv_text.isdigit() else 0, self.store.oldest_rv)
            if rv_text in ("", "0"):
                initial = [("ADDED", n) for n in self.store.list()]
            elif not rv_text.isdigit():
                raise ApiError(400, "BadRequest", f"invalid resource version: {rv_text}")
            else:
                initial = [(e.type, e.object) for e in self.store.events_since(int(rv_text))]
                last_rv = int(rv_text)
            await resp.prepare(request)
            for event_type, obj in initial:
                last_rv = max(last_rv, int(obj["metadata"]["resourceVersion"]))
                if visible(obj):
                    await send(event_type, obj)
            last_rv = max(last_rv, self.store.rv if rv_text in ("", "0") else last_rv)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s * self.time_scale
            next_bookmark = loop.time() + self.bookmark_interval_s * self.time_scale
            while True:
                now = loop.time()
                if now >= deadline:
                    await bookmark()  # the API server sends one as a watch times out
                    break
                if now >= next_bookmark:
                    await bookmark()
                    next_bookmark += self.bookmark_interval_s * self.time_scale
                    continue
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), min(deadline, next_bookmark) - now)
                except TimeoutError:
                    continue
                if isinstance(item, str):
                    if item == "bookmark":
                        await bookmark()
                    elif item == "gone":
                        raise TooOld(last_rv, self.store.oldest_rv)
                    elif item in ("drop", "close"):
                        if request.transport is not None:
                            request.transport.abort()
                        raise _Dropped()
                    continue
                if item.rv <= last_rv:
                    continue  # already sent from the history
                last_rv = item.rv
                if visible(item.object):
                    await send(item.type, item.object)
        except TooOld as exc:
            status = ApiError(410, "Expired", str(exc)).status()
            if not resp.prepared:
                await resp.prepare(request)
            await resp.write((json.dumps({"type": "ERROR", "object": status}) + "\n").encode())
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self.store.unsubscribe(watcher)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await resp.write_eof()
        return resp

    async def _control(self, request: web.Request, user: User) -> web.StreamResponse:
        """``/_standin/...`` for a stand-in run as a script (admin only): counts and faults."""
        if "system:masters" not in user.groups:
            raise ApiError(403, "Forbidden", "the stand-in's control endpoints need the admin credential")
        if request.method == "GET" and request.path == "/_standin/counts":
            return _json(
                {
                    "requests": [{"user": u, "verb": v, "count": n} for (u, v), n in sorted(self.counts.items())],
                    "restarts": dict(self.store.restarts),
                    "k3s": {n: _outcome_json(o, node=False) for n, o in self.store.k3s_outcomes.items()},
                }
            )
        if request.method != "POST" or request.path != "/_standin/control":
            raise ApiError(404, "NotFound", "control: GET /_standin/counts or POST /_standin/control")
        body = await _body_json(request)
        action = body.get("action")
        node = str(body.get("node", ""))
        result: Any = None
        if action == "k3s_start":
            request_ = request_from_json(body, default_role=node_role(self.store.get(node)))
            result = _outcome_json(self.k3s_start(node, request_))
        elif action == "k3s_restart":
            result = _outcome_json(self.store.k3s_start(node))
        elif action == "set_cluster":
            known = {f.name for f in fields(Cluster)}
            changes = {k: tuple(v) if isinstance(v, list) else v for k, v in body.items() if k in known}
            result = self.set_cluster(**changes).__dict__
        elif action == "set_annotations":
            result = self.store.set_annotations(node, body.get("annotations") or {})
        elif action == "add_node":
            result = self.store.add(node, role=str(body.get("role", "agent")), annotations=body.get("annotations"),
                                    internal_ip=body.get("internal_ip"), version=body.get("version"))  # fmt: skip
        elif action == "delete_node":
            result = self.store.delete(node)
        elif action == "fail":
            self.fail_next(int(body.get("times", 1)), status=int(body.get("status", 503)), verbs=body.get("verbs"))
        elif action == "drop":
            self.drop_next(int(body.get("times", 1)), verbs=body.get("verbs"))
        elif action == "latency":
            self.latency_s = float(body.get("seconds", 0))
        elif action == "expire_watches":
            self.expire_watches()
        elif action == "drop_watches":
            self.drop_watches()
        elif action == "reset_counts":
            self.reset_counts()
        else:
            raise ApiError(400, "BadRequest", f"unknown action {action!r}")
        return _json({"ok": True, "result": result})


class _Dropped(Exception):
    pass


# --- helpers: classification, authorization -----------------------------------------------


def _parse_selector(text: str, allowed: Iterable[str]) -> list[ev.Requirement]:
    try:
        return ev.parse_field_selector(text, allowed)
    except ev.EventError as exc:
        raise ApiError(exc.code, exc.reason, exc.message) from exc


def _node_fields(node: Obj) -> dict[str, str]:
    unschedulable = bool((node.get("spec") or {}).get("unschedulable"))
    return {"metadata.name": node["metadata"]["name"], "spec.unschedulable": str(unschedulable).lower()}


async def _change(request: web.Request, verb: str) -> Callable[[Obj], Obj]:
    """The body of a PUT, or a PATCH of any of the three types, as a function of the object."""
    if verb == "update":
        body = await _body_json(request)
        return lambda _old: body
    ctype = request.content_type
    patch = await _body_json(request, allow_list=ctype == "application/json-patch+json")
    appliers: dict[str, Callable[[Obj, Any], Obj]] = {
        "application/merge-patch+json": merge_patch,
        "application/strategic-merge-patch+json": strategic_merge_patch,
        "application/json-patch+json": json_patch,
    }
    applier = appliers.get(ctype)
    if applier is None:
        raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {ctype}")

    def apply(obj: Obj) -> Obj:
        return applier(obj, patch)

    rv = (patch.get("metadata") or {}).get("resourceVersion") if isinstance(patch, dict) else None
    return lambda obj: _keep_rv(apply(obj), rv)


def _keep_status(new: Obj, old: Obj) -> Obj:
    # nodeStrategy.PrepareForUpdate: a write to the Node cannot change its status
    if "status" in old:
        new["status"] = copy.deepcopy(old["status"])
    return new


def _keep_spec(new: Obj, old: Obj) -> Obj:
    # nodeStatusStrategy.PrepareForUpdate: a write to nodes/status changes metadata and status only
    if "spec" in old:
        new["spec"] = copy.deepcopy(old["spec"])
    return new


def _one(obj: Obj, fmt: str) -> Obj:
    return _partial(obj) if fmt == "metadata" else obj


def _outcome_json(outcome: Outcome, *, node: bool = True) -> Obj:
    out: Obj = {
        "started": outcome.started,
        "error": outcome.error,
        "steps": [{"step": w.step, "source": w.source, "credential": w.credential} for w in outcome.writes],
        "args": list(outcome.args),
        "public_key": outcome.public_key,
    }
    if node:
        out["node"] = outcome.node
    return out


def _label_filter(items: list[Obj], selector: str) -> list[Obj]:
    if not selector:
        return items
    out = items
    for term in selector.split(","):
        term = term.strip()
        if "!=" in term:
            k, v = term.split("!=", 1)
            out = [n for n in out if (n["metadata"].get("labels") or {}).get(k.strip()) != v.strip()]
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            out = [n for n in out if (n["metadata"].get("labels") or {}).get(k.strip()) == v.strip()]
        elif term.startswith("!"):
            out = [n for n in out if term[1:] not in (n["metadata"].get("labels") or {})]
        else:
            out = [n for n in out if term in (n["metadata"].get("labels") or {})]
    return out


def _keep_rv(node: Obj, rv: Any) -> Obj:
    """A patch that names a resourceVersion is a precondition (409 when stale)."""
    meta = node.setdefault("metadata", {})
    meta["resourceVersion"] = rv if isinstance(rv, str) else None
    return node


async def _body_json(request: web.Request, *, allow_list: bool = False) -> Any:
    try:
        body = json.loads(await request.read())
    except ValueError as exc:
        raise ApiError(400, "BadRequest", f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict) and not (allow_list and isinstance(body, list)):
        raise ApiError(400, "BadRequest", "the request body must be a JSON object")
    return body


# --- helpers: rendering ----------------------------------------------------------------


def _json(obj: Any, status: int = 200, content_type: str = JSON_CT) -> web.Response:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return web.Response(body=body, status=status, headers={"Content-Type": content_type})


def _negotiate(accept: str, want: str) -> str:
    """The rendering ("table", "metadata" or "full") an Accept header asks for; 406 if none fits."""
    if not accept.strip():
        return "full"
    for entry in accept.split(","):
        mtype, *raw = (p.strip() for p in entry.split(";"))
        params = dict(p.split("=", 1) for p in raw if "=" in p)
        if mtype not in ("application/json", "application/*", "*/*"):
            continue
        kind = params.get("as")
        if kind is None:
            return "full"
        if params.get("g") != "meta.k8s.io" or params.get("v") not in ("v1", "v1beta1"):
            continue
        if kind == "Table":
            return "table"
        if kind == "PartialObjectMetadata" and want in ("object", "watch"):
            return "metadata"
        if kind == "PartialObjectMetadataList" and want in ("list", "watch"):
            return "metadata"
    raise ApiError(406, "NotAcceptable", f"only the following media types are accepted: application/json; got {accept}")


def _partial(node: Obj) -> Obj:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": node["metadata"]}


def _bookmark(rv: str, fmt: str) -> Obj:
    kind, api = ("PartialObjectMetadata", "meta.k8s.io/v1") if fmt == "metadata" else ("Node", "v1")
    return {"kind": kind, "apiVersion": api, "metadata": {"resourceVersion": rv, "creationTimestamp": None}}


def _render_object(node: Obj, fmt: str, query: Mapping[str, str]) -> Obj:
    if fmt == "table":
        return _table([node], headers=True, rv=node["metadata"]["resourceVersion"], query=query)
    return _partial(node) if fmt == "metadata" else node


def _render_list(items: list[Obj], fmt: str, rv: str, query: Mapping[str, str]) -> Obj:
    if fmt == "table":
        return _table(items, headers=True, rv=rv, query=query)
    if fmt == "metadata":
        return {
            "kind": "PartialObjectMetadataList",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": rv},
            "items": [_partial(n) for n in items],
        }
    for item in items:
        item.pop("kind", None)
        item.pop("apiVersion", None)
    return {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items}


_COLUMNS = [
    ("Name", "name", 0, "Name must be unique within a namespace."),
    ("Status", "", 0, "The status of the node"),
    ("Roles", "", 0, "The roles of the node"),
    ("Age", "", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
    ("Version", "", 0, "Kubelet Version reported by the node."),
    ("Internal-IP", "", 1, "List of internal IPs in the node."),
    ("External-IP", "", 1, "List of external IPs in the node."),
    ("OS-Image", "", 1, "OS Image reported by the node from /etc/os-release (e.g. Ubuntu 14.04 LTS)."),
    ("Kernel-Version", "", 1, "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
    ("Container-Runtime", "", 1, "Container Runtime Version reported by the node through runtime remote API."),
]


def _table(nodes: list[Obj], *, headers: bool, rv: str, query: Mapping[str, str]) -> Obj:
    """The API server's Table for Nodes (what ``kubectl get nodes`` prints)."""
    include = query.get("includeObject", "Metadata")
    rows = []
    for node in nodes:
        row: Obj = {"cells": _cells(node)}
        if include == "Object":
            row["object"] = node
        elif include != "None":
            row["object"] = _partial(node)
        rows.append(row)
    table: Obj = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv}}
    if headers:
        table["columnDefinitions"] = [
            {"name": n, "type": "string", "format": f, "description": d, "priority": p} for n, f, p, d in _COLUMNS
        ]
    table["rows"] = rows
    return table


def _cells(node: Obj) -> list[str]:
    meta, spec, status = node["metadata"], node.get("spec") or {}, node.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    state = "Ready" if ready else "NotReady"
    if spec.get("unschedulable"):
        state += ",SchedulingDisabled"
    prefix = "node-role.kubernetes.io/"
    roles = sorted(k[len(prefix) :] for k in (meta.get("labels") or {}) if k.startswith(prefix))
    addresses = status.get("addresses") or []
    info = status.get("nodeInfo") or {}

    def addr(kind: str) -> str:
        return next((a["address"] for a in addresses if a.get("type") == kind), "<none>")

    return [
        meta["name"],
        state,
        ",".join(roles) or "<none>",
        _age(meta.get("creationTimestamp")),
        info.get("kubeletVersion", ""),
        addr("InternalIP"),
        addr("ExternalIP"),
        info.get("osImage", ""),
        info.get("kernelVersion", ""),
        info.get("containerRuntimeVersion", ""),
    ]


def _age(created: str | None) -> str:
    if not created:
        return "<unknown>"
    then = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    s = max(0, int((datetime.now(UTC) - then).total_seconds()))
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m"
    return f"{h}h" if h < 48 else f"{h // 24}d"
