"""Several servers (HA) and the flannel backend: what k3s demands of them, and the restart gate.

``flannel-backend`` and ``flannel-external-ip`` are *critical* server flags (k3s
``pkg/daemons/config`` ``CriticalControlArgs``). A server joining the embedded etcd for the
first time, and a control-plane-only one (``disable-etcd``) at every start, compare theirs
with the cluster's and fail "critical configuration value mismatch between servers"
(``pkg/cluster/bootstrap.go`` ``compareConfig``); an initialized etcd member restarts with
a changed value unchecked (``shouldBootstrapLoad``), and then hands it to the agents that
join through it. Either way a backend switch (vxlan to wireguard-native) is safe only when
every server makes it, then every agent: flannel ignores nodes of another backend type
(flannel ``pkg/subnet/kube/kube.go``), so a node left on the old one is cut off.

What wgagent does about it:

- each server's wgagent publishes the backend it is configured for on its own Node
  (:data:`ANN_BACKEND_WANTED`); a server writes a backend other than the one the other servers
  publish (``flannel.alpha.coreos.com/backend-type``) only once every other server wants the
  same; until then it keeps theirs and says which servers are not configured yet
  (:func:`server_backend`);
- servers restart one at a time (:class:`Stagger`, the restarter's gate): a server waits a delay
  of its own (0-60 s, from a hash of its name) after a need arises, does not restart while
  another server's :data:`ANN_RESTARTED` is younger than :data:`STAGGER_S`, and writes its own
  just before it restarts (the few seconds of watch latency left are accepted);
- an agent whose flannel runs another backend type than all servers publish needs one restart
  (kind ``backend``), rate-limited, never repeated when it did not help.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from wgagent.errors import KubeError
from wgagent.model import ANN_BACKEND_TYPE, ClusterView

log = logging.getLogger(__name__)

STAGGER_S = 180.0
"""Long enough for a k3s server to come back and rejoin etcd before the next one restarts."""
ANN_RESTARTED = "wgagent.io/k3s-restarted-at"
"""When this server's wgagent last restarted k3s (epoch seconds), written just before it does."""
ANN_BACKEND_WANTED = "wgagent.io/flannel-backend"
"""The ``flannel-backend`` this server's wgagent is configured for (``k3s.flannel_backend``)."""
BACKEND_TYPES = {"wireguard-native": "wireguard", "vxlan": "vxlan", "host-gw": "host-gw", "none": None}
"""k3s ``flannel-backend`` -> the ``backend-type`` flannel publishes for it."""


def own_delay_s(node: str, spread_s: float = 60.0) -> float:
    """A server's own wait before it restarts for a new need: stable per node, spread out.

    >>> own_delay_s("cp-1") == own_delay_s("cp-1") and 0 <= own_delay_s("cp-2") < 60
    True
    """
    digest = hashlib.sha256(node.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 * spread_s


def other_servers(own: str, cluster: ClusterView | None) -> list[str]:
    if cluster is None:
        return []
    return sorted(name for name, info in cluster.nodes.items() if info.server and name != own)


def restart_wait(own: str, now: float, cluster: ClusterView | None) -> str | None:
    """Why this server must not restart k3s now (another restarted too recently), or None."""
    for name in other_servers(own, cluster):
        assert cluster is not None
        at = _time(cluster.nodes[name].annotations.get(ANN_RESTARTED))
        if at is not None and 0 <= now - at < STAGGER_S:
            return (
                f"server {name} restarted k3s {now - at:.0f} s ago; servers restart one at a time "
                f"(again after {STAGGER_S - (now - at):.0f} s)"
            )
    return None


def _time(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def servers_backend(own: str, cluster: ClusterView | None) -> tuple[str | None, Mapping[str, str]]:
    """The backend type every other server publishes (None when they disagree or none is
    known), and each server's, for messages."""
    types = {
        name: cluster.nodes[name].annotations.get(ANN_BACKEND_TYPE, "")
        for name in other_servers(own, cluster)
        if cluster is not None
    }
    known = {t for t in types.values() if t}
    return (known.pop() if len(known) == 1 else None), types


@dataclass(frozen=True)
class ServerBackend:
    """The ``flannel-backend`` a server's drop-in gets, and why not the configured one."""

    write: str
    held: str | None = None
    """Why the configured backend is held back (the other servers run another), else None."""


_K3S_NAME = {t: name for name, t in BACKEND_TYPES.items() if t is not None}


def server_backend(own: str, configured: str, cluster: ClusterView | None, previous: str | None) -> ServerBackend:
    """On a server: the backend to write. Without the node view, the drop-in's previous value
    (never switch blind), else the configured one. With it: the configured one unless every
    other server publishes another backend type and not all of their wgagents want the same.

    >>> server_backend("a", "wireguard-native", None, "vxlan").write
    'vxlan'
    """
    if cluster is None:
        return ServerBackend(previous or configured)
    theirs, each = servers_backend(own, cluster)
    if theirs is None or theirs == BACKEND_TYPES.get(configured) or theirs not in _K3S_NAME:
        return ServerBackend(configured)
    others = other_servers(own, cluster)
    not_yet = [n for n in others if cluster.nodes[n].annotations.get(ANN_BACKEND_WANTED) != configured]
    if not not_yet:
        return ServerBackend(configured)  # a switch every server wants: restarts one at a time
    names = ", ".join(f"{n} ({t})" for n, t in each.items())
    held = (
        f"k3s.flannel_backend is {configured} but the other servers run {theirs} ({names}): flannel-backend is "
        f"a critical server flag and a node on another backend is cut off from the pod network, so this server "
        f"keeps {_K3S_NAME[theirs]} until every server's wgagent is configured for {configured} "
        f"(not yet: {', '.join(not_yet)}); then they switch one at a time, then the agents"
    )
    return ServerBackend(_K3S_NAME[theirs], held)


def agent_backend_mismatch(own: str, cluster: ClusterView | None) -> tuple[str, str] | None:
    """On an agent: (its flannel's backend type, the servers') when they differ, else None."""
    theirs, _ = servers_backend(own, cluster)
    mine = cluster.nodes[own].annotations.get(ANN_BACKEND_TYPE) if cluster and own in cluster.nodes else None
    if theirs is None or not mine or mine == theirs:
        return None
    return mine, theirs


class NeedLike(Protocol):
    @property
    def since(self) -> float: ...


Annotate = Callable[[Mapping[str, str]], Awaitable[None]]
"""Merge these annotations into this node's own Node (raises :class:`KubeError`)."""


class Stagger:
    """The restart gate of a k3s server: servers restart one at a time (see the module doc).

    Called by the restarter with its open needs and the time, just before it would restart;
    returns why to wait, or None after writing :data:`ANN_RESTARTED` on the own Node. Without
    other servers in the node view (one server, or no view) it lets the restart through at once:
    an API that cannot be read must not keep a broken k3s from restarting.
    """

    def __init__(self, node: str, cluster: Callable[[], ClusterView | None], annotate: Annotate) -> None:
        self.node = node
        self._cluster = cluster
        self._annotate = annotate
        self.delay_s = own_delay_s(node)

    async def __call__(self, needs: Sequence[NeedLike], now: float) -> str | None:
        cluster = self._cluster()
        if not other_servers(self.node, cluster):
            return None
        since = min((n.since for n in needs), default=now)
        if now < since + self.delay_s:
            return (
                f"servers restart one at a time: this one waits its own {self.delay_s:.0f} s first "
                f"(again in {since + self.delay_s - now:.0f} s)"
            )
        why = restart_wait(self.node, now, cluster)
        if why is not None:
            return why
        try:
            await self._annotate({ANN_RESTARTED: f"{now:.0f}"})
        except KubeError as exc:
            log.warning("cannot write %s on this Node (%s); restarting k3s without it", ANN_RESTARTED, exc)
        return None
