"""The stand-in's data: Node objects, resourceVersions, the event history, and watchers.

Follows the API server where wgagent and kubectl can tell: every change bumps one
cluster-wide resourceVersion; a change that changes nothing bumps nothing; the event
history covers a window (``history_s``, 75 s like the watch cache's fresh-event window),
so a watch from an older resourceVersion gets 410 Gone; watchers get each event once.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import copy
import functools
import hashlib
import ipaddress
import json
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.kubeapi import k3s
from tests.kubeapi.events import EventStore
from tests.kubeapi.k3s import FLANNEL, Cluster, StartRequest, go_json

KUBELET_VERSION = "v1.32.4+k3s1"
"""The k3s version every stand-in Node reports unless told otherwise (flannel v0.26.7, the
overwrite written by ``updateAddressAnnotations``, no removal: see tests/kubeapi/upstream.py)."""

Obj = dict[str, Any]


class TooOld(Exception):
    """A watch asked for a resourceVersion older than the history window."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")


class ApiError(Exception):
    """An answer with a Status object: code, reason, message (and optional details)."""

    def __init__(self, code: int, reason: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.details = dict(details or {})

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def not_found(name: str) -> ApiError:
    return ApiError(404, "NotFound", f'nodes "{name}" not found', {"name": name, "kind": "nodes"})


def conflict(name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on nodes "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        {"name": name, "kind": "nodes"},
    )


@dataclass
class Event:
    rv: int
    at: float
    type: str
    object: Obj


@dataclass(eq=False)
class Watcher:
    """One open watch: the store puts events (and control words) on its queue."""

    queue: asyncio.Queue[Event | str] = field(default_factory=asyncio.Queue)


def now_iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fake_wg_key(name: str) -> str:
    return base64.b64encode(hashlib.sha256(b"wg:" + name.encode()).digest()).decode()


def published_key(node: Obj) -> str | None:
    """The WireGuard key in the Node's flannel backend-data (what its key file holds), or None."""
    try:
        data = json.loads((node["metadata"].get("annotations") or {})[FLANNEL + "backend-data"])
        return str(data["PublicKey"]) if isinstance(data, dict) and data.get("PublicKey") else None
    except (KeyError, ValueError, TypeError):
        return None


def _unversioned(node: Obj) -> Obj:
    # a write computed from an older copy: k3s and flannel patch, so no precondition
    new = copy.deepcopy(node)
    new["metadata"]["resourceVersion"] = ""
    return new


def _replaced_by(node: Obj, _current: Obj) -> Obj:
    """An ``update`` that stores ``node`` whatever the current object is (see _unversioned)."""
    return _unversioned(node)


def node_role(node: Obj) -> str:
    labels = node["metadata"].get("labels") or {}
    return "server" if "node-role.kubernetes.io/control-plane" in labels else "agent"


def server_args(cluster: Cluster) -> tuple[str, ...]:
    """The flags a server needs to hand out ``cluster``'s settings."""
    args = [f"--flannel-backend={cluster.flannel_backend}"]
    if cluster.cluster_cidrs != ("10.42.0.0/16",):
        args.append("--cluster-cidr=" + ",".join(cluster.cluster_cidrs))
    if cluster.flannel_external_ip:
        args.append("--flannel-external-ip=true")
    if cluster.disable_ccm:
        args.append("--disable-cloud-controller=true")
    return tuple(args)


def pod_cidrs(cluster_cidrs: Iterable[str], index: int) -> list[str]:
    """The node's podCIDRs as kube-controller-manager allocates them: one per cluster CIDR
    family, a /24 of an IPv4 range and a /64 of an IPv6 one (k3s's defaults)."""
    out = []
    for text in cluster_cidrs:
        net = ipaddress.ip_network(text, strict=False)
        prefix = 24 if net.version == 4 else 64
        sub = ipaddress.ip_network((int(net.network_address) + (index % 256) * (1 << (net.max_prefixlen - prefix)),
                                    prefix))  # fmt: skip
        out.append(str(sub))
    return out


class NodeStore:
    def __init__(
        self,
        *,
        clock: Callable[[], float],
        history_s: float = 75.0,
        cluster: Cluster | None = None,
        new_key: Callable[[], str] = k3s.random_key,
    ) -> None:
        self.clock = clock
        """Simulated seconds (the server's time scale applied)."""
        self.history_s = history_s
        self.rv = 100
        self.nodes: dict[str, Obj] = {}
        self.history: deque[Event] = deque()
        self.oldest_rv = self.rv
        """A watch may start from this resourceVersion or any later one."""
        self.watchers: set[Watcher] = set()
        self.restarts: dict[str, int] = {}
        """k3s starts per node (:meth:`k3s_start`, failed ones too)."""
        self.cluster = cluster or Cluster(flannel_backend="wireguard-native", server_version=KUBELET_VERSION)
        """The servers' settings every k3s start receives; a server's successful start sets them."""
        self.k3s_requests: dict[str, StartRequest] = {}
        """Each node's last k3s start (:meth:`k3s_restart` starts k3s again with it)."""
        self.k3s_outcomes: dict[str, k3s.Outcome] = {}
        self.wg_keys: dict[str, str] = {}
        """flannel's key file per node (its public key), once a start used one."""
        self.new_key = new_key
        self.events = EventStore(next_rv=self._next_rv)
        """core/v1 Events; they share the cluster-wide resourceVersion, not the Node history."""

    # --- reading -----------------------------------------------------------------------

    def get(self, name: str) -> Obj:
        node = self.nodes.get(name)
        if node is None:
            raise not_found(name)
        return copy.deepcopy(node)

    def list(self) -> list[Obj]:
        return [copy.deepcopy(self.nodes[n]) for n in sorted(self.nodes)]

    def events_since(self, rv: int) -> builtins.list[Event]:
        self._trim()
        if rv < self.oldest_rv:
            raise TooOld(rv, self.oldest_rv)
        return [e for e in self.history if e.rv > rv]

    # --- writing -----------------------------------------------------------------------

    def add(
        self,
        name: str,
        *,
        role: str = "agent",
        internal_ip: str | None = None,
        annotations: Mapping[str, str] | None = None,
        flannel: bool = True,
        version: str | None = None,
    ) -> Obj:
        """A registered Node, as k3s and flannel leave it (flannel's annotations unless told not).

        Its k3s was started with no config of its own (a server: with the cluster's settings,
        :func:`server_args`); :meth:`k3s_restart` starts it again that way."""
        if name in self.nodes:
            raise ApiError(409, "AlreadyExists", f'nodes "{name}" already exists', {"name": name, "kind": "nodes"})
        index = len(self.nodes) + len(self.restarts) + 1
        ip = internal_ip or f"10.0.{index // 250}.{index % 250 + 1}"
        labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": "amd64",
        }
        if role == "server":
            labels["node-role.kubernetes.io/control-plane"] = "true"
            labels["node-role.kubernetes.io/master"] = "true"
        anns: dict[str, str] = {}
        if flannel:
            anns.update(
                {
                    FLANNEL + "kube-subnet-manager": "true",
                    FLANNEL + "backend-type": "wireguard",
                    FLANNEL + "backend-data": go_json({"PublicKey": fake_wg_key(name), "Port": 51820}),
                    FLANNEL + "public-ip": ip,
                }
            )
        anns.update(annotations or {})
        created = now_iso()
        cidrs = pod_cidrs(self.cluster.cluster_cidrs, index)
        node: Obj = {
            "kind": "Node",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "uid": str(uuid.uuid4()),
                "resourceVersion": "",
                "creationTimestamp": created,
                "labels": labels,
                "annotations": anns,
            },
            "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs, "providerID": f"k3s://{name}"},
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "lastHeartbeatTime": created,
                        "lastTransitionTime": created,
                        "reason": "KubeletReady",
                        "message": "kubelet is posting ready status",
                    }
                ],
                "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                "nodeInfo": {
                    "kubeletVersion": version or KUBELET_VERSION,
                    "kubeProxyVersion": version or KUBELET_VERSION,
                    "osImage": "Debian GNU/Linux 12 (bookworm)",
                    "kernelVersion": "6.1.0-28-amd64",
                    "containerRuntimeVersion": "containerd://2.0.4-k3s2",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            },
        }
        validate(node)
        self.k3s_requests[name] = StartRequest(role=role, args=server_args(self.cluster) if role == "server" else ())
        return self._commit("ADDED", node)

    def create(self, obj: Obj) -> Obj:
        name = (obj.get("metadata") or {}).get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(422, "Invalid", "Node is invalid: metadata.name: Required value: name is required")
        if name in self.nodes:
            raise ApiError(409, "AlreadyExists", f'nodes "{name}" already exists', {"name": name, "kind": "nodes"})
        node = copy.deepcopy(obj)
        node.setdefault("kind", "Node")
        node.setdefault("apiVersion", "v1")
        meta = node["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now_iso())
        validate(node)
        return self._commit("ADDED", node)

    def update(self, name: str, mutate: Callable[[Obj], Obj | None], *, dry_run: bool = False) -> Obj:
        """Apply ``mutate`` to a copy; store it (new resourceVersion) only if it changed."""
        current = self.nodes.get(name)
        if current is None:
            raise not_found(name)
        new = copy.deepcopy(current)
        result = mutate(new)
        if result is not None:
            new = result
        meta = new.get("metadata")
        if not isinstance(meta, dict) or meta.get("name") != name:
            raise ApiError(
                422, "Invalid", f'Node "{name}" is invalid: metadata.name: Invalid value: the name cannot change'
            )
        rv = meta.get("resourceVersion")
        if rv not in (None, "", current["metadata"]["resourceVersion"]):
            raise conflict(name)
        meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        meta["uid"] = current["metadata"]["uid"]
        meta["creationTimestamp"] = current["metadata"]["creationTimestamp"]
        validate(new)
        if new == current or dry_run:
            return copy.deepcopy(new)
        return self._commit("MODIFIED", new)

    def delete(self, name: str) -> Obj:
        node = self.nodes.get(name)
        if node is None:
            raise not_found(name)
        del self.nodes[name]
        self.rv += 1
        gone = copy.deepcopy(node)
        gone["metadata"]["resourceVersion"] = str(self.rv)
        self._record("DELETED", gone)
        return gone

    def set_annotations(self, name: str, changes: Mapping[str, str | None]) -> Obj:
        """Set (or, for None, remove) annotations, as someone with kubectl would."""

        def mutate(node: Obj) -> None:
            anns = node["metadata"].setdefault("annotations", {})
            for key, value in changes.items():
                if value is None:
                    anns.pop(key, None)
                else:
                    anns[key] = value

        return self.update(name, mutate)

    def heartbeat(self, name: str) -> Obj:
        """The kubelet's periodic status update (every 5 min without change): a new resourceVersion."""

        def mutate(node: Obj) -> None:
            for cond in node.get("status", {}).get("conditions", []):
                if cond.get("type") == "Ready":
                    cond["lastHeartbeatTime"] = now_iso()
                    cond["heartbeats"] = int(cond.get("heartbeats", 0)) + 1  # unique even within one second

        return self.update(name, mutate)

    def k3s_start(self, name: str, request: StartRequest | None = None) -> k3s.Outcome:
        """k3s (re)starts on Node ``name`` as upstream k3s and flannel do (tests/kubeapi/k3s.py):
        each write k3s makes is committed in order (a watcher sees each); an agent whose
        config k3s refuses changes nothing. ``request`` None: the node's last start again.

        A server that starts hands its settings to the cluster (what agents get from then on).
        """
        node = self.nodes.get(name)
        if node is None:
            raise not_found(name)
        req = request or self.k3s_requests.get(name) or StartRequest(role=node_role(node))
        self.restarts[name] = self.restarts.get(name, 0) + 1
        self.k3s_requests[name] = req
        key = self.wg_keys.get(name) or published_key(node) or fake_wg_key(name)
        outcome = k3s.start(node, req, self.cluster, public_key=key, new_key=self.new_key)
        for write in outcome.writes:
            self.update(name, functools.partial(_replaced_by, write.node))
        if outcome.writes and outcome.public_key is not None:
            self.wg_keys[name] = outcome.public_key
        if outcome.started and outcome.cluster is not None:
            self.cluster = outcome.cluster
        self.k3s_outcomes[name] = outcome
        return outcome

    def k3s_restart(self, name: str) -> Obj:
        """``systemctl restart k3s`` with nothing changed: :meth:`k3s_start` with the node's last
        start's inputs. The Node object afterwards."""
        self.k3s_start(name)
        return self.get(name)

    # --- watchers ----------------------------------------------------------------------

    def subscribe(self) -> Watcher:
        watcher = Watcher()
        self.watchers.add(watcher)
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    def signal(self, word: str) -> None:
        """Tell every open watch something: "gone", "drop", "bookmark", "close"."""
        for watcher in list(self.watchers):
            watcher.queue.put_nowait(word)

    def compact(self) -> None:
        """Forget the history: every watch from an older resourceVersion now gets 410."""
        self.history.clear()
        self.oldest_rv = self.rv

    def _next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def _commit(self, type_: str, node: Obj) -> Obj:
        self.rv += 1
        node["metadata"]["resourceVersion"] = str(self.rv)
        self.nodes[node["metadata"]["name"]] = node
        self._record(type_, node)
        return copy.deepcopy(node)

    def _record(self, type_: str, node: Obj) -> None:
        event = Event(self.rv, self.clock(), type_, copy.deepcopy(node))
        self.history.append(event)
        self._trim()
        for watcher in list(self.watchers):
            watcher.queue.put_nowait(event)

    def _trim(self) -> None:
        horizon = self.clock() - self.history_s
        while self.history and self.history[0].at < horizon:
            self.oldest_rv = self.history.popleft().rv


# --- validation ------------------------------------------------------------------------

_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
MAX_ANNOTATIONS_BYTES = 256 * 1024


def annotation_key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid annotation key (a qualified name), or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        return "prefix part must be non-empty"
    if slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return (
            "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
            "'.', and must start and end with an alphanumeric character"
        )
    if not name:
        return "name part must be non-empty"
    if len(name) > 63:
        return "name part must be no more than 63 characters"
    if not _NAME_PART.match(name):
        return (
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
            "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
            "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        )
    return None


def validate(node: Obj) -> None:
    name = node["metadata"].get("name", "")
    anns = node["metadata"].get("annotations") or {}
    causes = []
    if not isinstance(anns, dict):
        raise ApiError(400, "BadRequest", "metadata.annotations must be a map of strings")
    for key, value in anns.items():
        if not isinstance(value, str):
            raise ApiError(400, "BadRequest", f"json: cannot unmarshal {type(value).__name__} into annotation {key}")
        problem = annotation_key_problem(key)
        if problem:
            causes.append(f'Invalid value: "{key}": {problem}')
    size = sum(len(k) + len(v) for k, v in anns.items())
    if size > MAX_ANNOTATIONS_BYTES:
        causes.append(f"metadata.annotations: Too long: must have at most {MAX_ANNOTATIONS_BYTES} bytes")
    if causes:
        raise ApiError(
            422,
            "Invalid",
            f'Node "{name}" is invalid: ' + ", ".join("metadata.annotations: " + c for c in causes),
            {
                "name": name,
                "kind": "Node",
                "causes": [
                    {"reason": "FieldValueInvalid", "message": c, "field": "metadata.annotations"} for c in causes
                ],
            },
        )


# --- patches ---------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: maps merge, null removes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


_MERGE_KEYS = {"conditions": "type", "addresses": "type", "taints": "key", "images": None}


def strategic_merge_patch(target: Any, patch: Any, field_name: str = "") -> Any:
    """The part of Kubernetes' strategic merge patch a Node needs: maps merge as in a merge
    patch, ``$patch: replace|delete`` on maps, lists with a merge key (conditions,
    addresses by ``type``; taints by ``key``) merge item by item, other lists replace;
    ``$setElementOrder``/``$retainKeys`` directives are accepted and ignored."""
    if isinstance(patch, dict):
        directive = patch.get("$patch")
        if directive == "delete":
            return None
        base = {} if directive == "replace" or not isinstance(target, dict) else dict(target)
        for key, value in patch.items():
            if key.startswith("$"):  # $patch, $retainKeys, $setElementOrder/...
                continue
            if value is None:
                base.pop(key, None)
                continue
            merged = strategic_merge_patch(base.get(key), value, key)
            if merged is None:
                base.pop(key, None)
            else:
                base[key] = merged
        return base
    if isinstance(patch, list):
        merge_key = _MERGE_KEYS.get(field_name)
        if merge_key and isinstance(target, list) and all(isinstance(i, dict) for i in patch):
            out = [copy.deepcopy(i) for i in target]
            for item in patch:
                idx = next((n for n, old in enumerate(out) if old.get(merge_key) == item.get(merge_key)), None)
                if item.get("$patch") == "delete":
                    if idx is not None:
                        del out[idx]
                elif idx is None:
                    out.append(copy.deepcopy(item))
                else:
                    out[idx] = strategic_merge_patch(out[idx], item)
            return out
        return copy.deepcopy(patch)
    return copy.deepcopy(patch)


def json_patch(target: Obj, ops: Iterable[Any]) -> Obj:
    """RFC 6902 JSON patch: add, remove, replace, test (enough for ``kubectl patch --type=json``)."""
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise ApiError(400, "BadRequest", "the JSON patch must be a list of operations with op and path")
        parts = [p.replace("~1", "/").replace("~0", "~") for p in str(op["path"]).split("/")[1:]]
        if not parts:
            raise ApiError(422, "Invalid", "a JSON patch may not replace the whole object")
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.get(part)
            if parent is None:
                raise ApiError(422, "Invalid", f"the path {op['path']!r} does not exist")
        last = parts[-1]
        kind = op["op"]
        if kind == "test":
            have = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if have != op.get("value"):
                raise ApiError(422, "Invalid", f"test operation for path {op['path']!r} failed")
        elif kind == "remove":
            if isinstance(parent, list):
                del parent[int(last)]
            elif last in parent:
                del parent[last]
            else:
                raise ApiError(422, "Invalid", f"the path {op['path']!r} does not exist")
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op.get("value"))
                elif kind == "add":
                    parent.insert(int(last), op.get("value"))
                else:
                    parent[int(last)] = op.get("value")
            else:
                if kind == "replace" and last not in parent:
                    raise ApiError(422, "Invalid", f"the path {op['path']!r} does not exist")
                parent[last] = op.get("value")
        else:
            raise ApiError(400, "BadRequest", f"unsupported JSON patch operation {kind!r}")
    return doc
