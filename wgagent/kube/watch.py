"""The node watch: every Node's flannel annotations, kept current by one long watch.

    LIST (metadata only) ──> WATCH from its resourceVersion, with bookmarks ──┐
         ^                        ^ the server ended it (timeoutSeconds):     │
         │ 410 Gone               └── watch again from the last version ──────┤
         └────────────────────────────────────────────────────────────────────┘
    any other failure: wait (capped, jittered backoff), then watch again (or list, after 410)

At steady state this costs the API server one open watch and, about once an hour, a new
one: the watch asks a long ``timeoutSeconds`` (45-60 min, jittered so that agents do not
come back together), bookmarks keep its resourceVersion fresh so the next watch need not
list again, and there are no periodic full lists.

Objects are ``PartialObjectMetadata`` (the API server strips spec and status), so the
memory and traffic per Node stay small; only the ``flannel.alpha.coreos.com/``
annotations are kept. ``view()`` is None until the first LIST succeeded, and again while
the list credential is missing or refused (then nothing can be known about other nodes).

The part has no check of its own: it reports in ``/status`` (``node_watch``) and metrics,
and emits ``changed`` with the names of the Nodes whose flannel annotations changed (or
that appeared or went away); the wiring wakes the annotation part with it.

:func:`list_once` is the same LIST, once, for a command (``wgagent gc``, ``doctor``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import types
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from wgagent.errors import Forbidden, Gone, KubeConfigError, KubeError, Unauthorized
from wgagent.kube.backoff import OUTAGE_CAP_S, Backoff, backoff_delay
from wgagent.kube.protocol import NodeAPI, NodeLister, WatchEvent
from wgagent.model import CONTROL_PLANE_LABEL, KEPT_ANNOTATIONS, ClusterView, NodeInfo
from wgagent.part import Signal, StreamPart
from wgagent.state import State

log = logging.getLogger(__name__)

WATCH_TIMEOUT_S = (2700, 3600)
"""The range ``timeoutSeconds`` is drawn from (the API server honours what it is asked)."""
CREDENTIAL_FILE_RETRY_S = 15.0
"""A missing or unreadable kubeconfig is read again this often."""
AUTH_RETRY_CAP_S = 60.0
"""A refused credential is retried from 10 s up to this rarely: a fresh server may still be
creating its RBAC (k3s applies ``rolebindings.yaml`` after the API server is up), so a refusal
right after start must not cost minutes."""


def node_info(obj: Mapping[str, Any]) -> NodeInfo | None:
    """The NodeInfo of a Node or PartialObjectMetadata object, or None without a name.

    Only flannel's, ``k3s.io/external-ip`` and wgagent's own annotations are kept
    (``model.KEPT_ANNOTATIONS``). ``pod_cidrs`` come from ``spec`` and are therefore empty for
    the metadata-only objects the watch receives.

    >>> node_info({"metadata": {"name": "n1", "annotations": {"flannel.alpha.coreos.com/public-ip": "203.0.113.1",
    ...                                                        "other": "x"}}}).annotations
    {'flannel.alpha.coreos.com/public-ip': '203.0.113.1'}
    """
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        return None
    anns = meta.get("annotations") or {}
    flannel = {
        k: v for k, v in anns.items() if isinstance(k, str) and k.startswith(KEPT_ANNOTATIONS) and isinstance(v, str)
    }
    spec = obj.get("spec") or {}
    cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    labels = meta.get("labels") or {}
    server = isinstance(labels, dict) and labels.get(CONTROL_PLANE_LABEL) == "true"
    return NodeInfo(meta["name"], flannel, tuple(c for c in cidrs if isinstance(c, str)), server)


def parse_node_list(lst: Mapping[str, Any], source: str) -> tuple[str, dict[str, NodeInfo]]:
    """The resourceVersion and the NodeInfos of a (metadata) Node LIST answer."""
    rv = (lst.get("metadata") or {}).get("resourceVersion")
    items = lst.get("items")
    if not isinstance(rv, str) or not rv or not isinstance(items, list):
        raise KubeError(f"LIST of Nodes from {source}: the answer has no resourceVersion or items")
    nodes = {}
    for item in items:
        info = node_info(item) if isinstance(item, dict) else None
        if info is not None:
            nodes[info.name] = info
    return rv, nodes


async def list_once(api: NodeLister) -> ClusterView:
    """Every Node's flannel annotations from one metadata LIST; KubeError when it fails."""
    _, nodes = parse_node_list(await api.list_nodes_metadata(), api.source)
    return ClusterView(types.MappingProxyType(nodes))


class NodeWatch(StreamPart):
    name = "node_watch"
    checks = ()
    interval_s = 3600.0
    """The daemon also calls ``reconcile()`` this often: while the stream runs, that only
    refreshes ``/status`` (no request)."""

    def __init__(
        self,
        state: State,
        api: NodeAPI,
        *,
        fallback: NodeAPI | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        watch_timeout_s: tuple[int, int] = WATCH_TIMEOUT_S,
    ) -> None:
        super().__init__(state)
        self.api = api
        self._candidates = [api, *([fallback] if fallback is not None else [])]
        """Credentials to list with, best first: k3s's controller credential, then the kubelet's.
        Like k3s (``pkg/util/api.go`` ``CheckRBAC`` before using the controller credential,
        PR #11569): the controller may list Nodes only on servers since v1.32.0 (and the
        January 2025 back-ports); before, the node authorizer let the kubelet's list them."""
        self._refused: set[int] = set()
        self.changed: Signal[frozenset[str]] = Signal("node_watch.changed")
        self._sleep = sleep
        self._rand = rand
        self._watch_timeout_s = watch_timeout_s
        self._backoff = Backoff(rand, cap_s=OUTAGE_CAP_S)
        self._slow = Backoff(rand, base_s=10.0, cap_s=AUTH_RETRY_CAP_S)
        self._gone_streak = 0
        self._nodes: dict[str, NodeInfo] = {}
        self._view: ClusterView | None = None
        self._listed = False
        self._usable = True  # False while the credential is missing or refused
        self._rv: str | None = None
        self._streaming = False
        self._status = "starting"
        self._error: str | None = None
        self._retry_in_s: float | None = None
        self._lists = 0
        self._watches = 0
        m = state.metrics
        self._m_nodes = m.gauge("wgagent_node_watch_nodes", "Nodes the node watch knows.")
        self._m_up = m.gauge("wgagent_node_watch_up", "1 while the node watch is connected and current.")
        self._m_events = m.counter("wgagent_node_watch_events_total", "Watch events received, by type.", ("type",))
        self._m_lists = m.counter("wgagent_node_watch_lists_total", "Full (metadata-only) LISTs of all Nodes.")
        self._m_watches = m.counter("wgagent_node_watch_watches_total", "WATCH requests started.")
        self._m_errors = m.counter("wgagent_node_watch_errors_total", "Failed LISTs and WATCHes, by kind.", ("kind",))

    # --- what other parts read ---------------------------------------------------------

    def view(self) -> ClusterView | None:
        """Every Node's flannel annotations; None until listed, or while the credential fails."""
        if not self._listed or not self._usable:
            return None
        if self._view is None:
            self._view = ClusterView(types.MappingProxyType(dict(self._nodes)))
        return self._view

    @property
    def resource_version(self) -> str | None:
        return self._rv

    # --- the part ----------------------------------------------------------------------

    async def reconcile(self) -> None:
        """``run --once``: one LIST. While ``run()`` streams: only refresh ``/status``."""
        if self._streaming:
            self._publish()
            return
        for _ in self._candidates:
            try:
                await self._list()
                break
            except KubeError as exc:
                self._failed(exc)
                if not self._fall_back(exc):
                    break
        self._publish()

    async def run(self) -> None:
        self._streaming = True
        try:
            while True:
                try:
                    if self._rv is None:
                        await self._list()
                    await self._watch()
                    # The server ended the watch (its timeoutSeconds): watch again from the
                    # last resourceVersion at once. That is the steady state, not a failure.
                except Gone:
                    # Our resourceVersion fell out of the server's history: list again, at
                    # once the first time; a 410 again before any event waits its backoff.
                    self._m_errors.inc(kind="gone")
                    log.info("node watch: resourceVersion %s expired (410 Gone); listing again", self._rv)
                    self._rv = None
                    self._gone_streak += 1
                    if self._gone_streak > 1:
                        await self._wait(backoff_delay(self._gone_streak - 2, rand=self._rand))
                except KubeError as exc:
                    self._failed(exc)
                    if self._fall_back(exc):
                        continue
                    if isinstance(exc, KubeConfigError):
                        # Reading a file costs the API nothing: look again soon (k3s writes
                        # its controller kubeconfig when it first starts, after us).
                        delay = CREDENTIAL_FILE_RETRY_S
                    else:
                        delay = self._backoff.next() if self._usable else self._slow.next()
                    await self._wait(delay)
        finally:
            self._streaming = False
            self._m_up.set(0)

    async def close(self) -> None:
        for api in self._candidates:
            await api.close()

    def _fall_back(self, exc: KubeError) -> bool:
        """After a refused or missing credential, switch to the next one not yet refused (at
        once, listing again); when all were refused, start over from the best after the wait."""
        if not isinstance(exc, Forbidden | Unauthorized | KubeConfigError):
            return False
        self._refused.add(self._candidates.index(self.api))
        left = [i for i in range(len(self._candidates)) if i not in self._refused]
        if not left:
            self._refused.clear()
            self._use(0)
            return False
        self._use(left[0])
        log.info("node watch: trying %s instead", self.api.source)
        return True

    def _use(self, index: int) -> None:
        if self._candidates[index] is not self.api:
            self.api = self._candidates[index]
            self._rv = None  # another credential: list again

    # --- LIST and WATCH ----------------------------------------------------------------

    async def _list(self) -> None:
        self._status = "listing"
        self._lists += 1
        self._m_lists.inc()
        # The first LIST may come from the API server's cache (resourceVersion=0, cheap for
        # it); after a 410 a consistent one, as client-go's reflector does.
        lst = await self.api.list_nodes_metadata(resource_version=None if self._listed else "0")
        rv, nodes = parse_node_list(lst, self.api.source)
        changed = {n for n in nodes.keys() | self._nodes.keys() if nodes.get(n) != self._nodes.get(n)}
        first = not self._listed
        self._nodes = nodes
        self._rv = rv
        self._listed = True
        self._recovered()
        self._changed(changed if not first else set(nodes) | changed)
        log.info("node watch: listed %d Nodes at resourceVersion %s", len(nodes), rv)
        self._publish()

    async def _watch(self) -> None:
        assert self._rv is not None
        lo, hi = self._watch_timeout_s
        timeout_s = int(lo + (hi - lo) * self._rand())
        self._watches += 1
        self._m_watches.inc()
        # Still "reconnecting" after a failure until the new watch delivers something.
        self._status = "watching" if self._error is None else "reconnecting"
        self._m_up.set(1 if self._error is None else 0)
        self._publish()
        async for event in self.api.watch_nodes_metadata(self._rv, timeout_s=timeout_s):
            self._apply(event)
            self._gone_streak = 0
            self._recovered()
        log.debug("node watch: the server ended the watch at resourceVersion %s; watching again", self._rv)

    def _apply(self, event: WatchEvent) -> None:
        self._m_events.inc(type=event.type)
        rv = event.resource_version
        if event.type == "BOOKMARK":
            if rv:
                self._rv = rv
            return
        info = node_info(event.object)
        if info is None:
            log.debug("node watch: ignoring a %s event without a name", event.type)
            return
        changed = False
        if event.type == "DELETED":
            changed = self._nodes.pop(info.name, None) is not None
        elif event.type in ("ADDED", "MODIFIED"):
            changed = self._nodes.get(info.name) != info
            self._nodes[info.name] = info
        if rv:
            self._rv = rv
        if changed:
            self._changed({info.name})

    # --- bookkeeping -------------------------------------------------------------------

    def _changed(self, names: set[str]) -> None:
        if not names:
            return
        self._view = None
        self._m_nodes.set(len(self._nodes))
        self._publish()
        self.changed.emit(frozenset(names))

    def _recovered(self) -> None:
        self._refused.clear()
        if self._backoff.failures or self._slow.failures or not self._usable or self._error:
            if self._error:
                log.info("node watch: working again (%d Nodes)", len(self._nodes))
            self._backoff.reset()
            self._slow.reset()
            self._error = None
            self._retry_in_s = None
            if self._status == "reconnecting":
                self._status = "watching"
                self._m_up.set(1)
            if not self._usable:
                self._usable = True
                self._view = None
            self._publish()

    def _failed(self, exc: KubeError) -> None:
        message = str(exc)
        if isinstance(exc, KubeConfigError):
            kind, self._status, self._usable = "credential", "no credential", False
        elif isinstance(exc, Forbidden | Unauthorized):
            kind, self._status, self._usable = "refused", "refused", False
            message += (
                f" (the node watch needs a credential that may list and watch all Nodes; {self.api.source} may not)"
            )
        else:
            kind, self._status = "unreachable" if exc.transient else "error", "reconnecting"
        self._m_errors.inc(kind=kind)
        self._m_up.set(0)
        if message != self._error:  # log a new problem once, not every retry
            log.warning("node watch: %s", message)
        self._error = message
        self._publish()

    async def _wait(self, delay: float) -> None:
        self._retry_in_s = round(delay, 1)
        self._publish()
        await self._sleep(delay)
        self._retry_in_s = None

    def _publish(self) -> None:
        data: dict[str, Any] = {
            "state": self._status,
            "nodes": len(self._nodes) if self._listed else None,
            "kubeconfig": self.api.source,
            "lists": self._lists,
            "watches": self._watches,
        }
        if self._error:
            data["error"] = self._error
        if self._retry_in_s is not None:
            data["retry_in_s"] = self._retry_in_s
        self.state.set_part(self.name, data)
