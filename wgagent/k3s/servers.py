"""Several servers (HA) and the flannel backend: what k3s demands of them, as pure decisions.

``flannel-backend`` and ``flannel-external-ip`` are *critical* server flags: every server
must agree, and a server joining with another value fails "critical configuration value
mismatch" (k3s ``pkg/daemons/config`` ``CriticalControlArgs``, ``pkg/cluster``
``compareConfig``). Switching the backend (vxlan to wireguard-native) therefore means every
server, then every agent, restarted with the new value; an agent that keeps the old backend
partitions the pod network (flannel ignores nodes of another backend type,
``pkg/subnet/kube/kube.go``).

What wgagent does about it:

- servers restart one at a time: before restarting k3s a server writes the time on its own
  Node (``wgagent.io/k3s-restarted-at``, which its credential may patch) and does not restart
  while another server's is younger than :data:`STAGGER_S`; each server also waits a delay of
  its own (0-60 s, from a hash of its name) after a need arises, so two servers seldom decide
  in the same moment (the one left a few seconds of watch latency is accepted);
- a server whose new drop-in would set another backend than the other servers publish
  (``flannel.alpha.coreos.com/backend-type``) does not restart for it and says why;
- an agent whose flannel runs another backend type than all servers publish needs one restart
  (kind ``backend``), rate-limited, never repeated when it did not help.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from wgagent.model import ANN_BACKEND_TYPE, ClusterView

STAGGER_S = 180.0
"""Long enough for a k3s server to come back and rejoin etcd before the next one restarts."""
ANN_RESTARTED = "wgagent.io/k3s-restarted-at"
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


def server_backend_problem(own: str, configured: str, cluster: ClusterView | None) -> str | None:
    """On a server: why restarting with ``flannel-backend: configured`` would break the cluster."""
    theirs, each = servers_backend(own, cluster)
    want = BACKEND_TYPES.get(configured)
    if theirs is None or want is None or theirs == want:
        return None
    names = ", ".join(f"{n} ({t})" for n, t in each.items())
    return (
        f"the other servers run flannel backend {theirs} ({names}) and flannel-backend is a critical server flag: "
        f"this server would not rejoin with {configured}; change k3s.flannel_backend on every server together, "
        "then restart them one by one, then the agents"
    )


def agent_backend_mismatch(own: str, cluster: ClusterView | None) -> tuple[str, str] | None:
    """On an agent: (its flannel's backend type, the servers') when they differ, else None."""
    theirs, _ = servers_backend(own, cluster)
    mine = cluster.nodes[own].annotations.get(ANN_BACKEND_TYPE) if cluster and own in cluster.nodes else None
    if theirs is None or not mine or mine == theirs:
        return None
    return mine, theirs
