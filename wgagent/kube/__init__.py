"""The Kubernetes side: credentials, a small API client, the node watch, the annotation.

    kubeconfig.py  which kubeconfig (by role) and what is in it            (pure)
    backoff.py     capped, jittered exponential backoff                     (pure)
    protocol.py    NodeAPI: what the parts need of the API                  (Protocol)
    client.py      KubeClient: NodeAPI over aiohttp; errors mapped once     (adapter)
    watch.py       NodeWatch: LIST + WATCH of Node metadata -> ClusterView  (StreamPart)
    annotation.py  AnnotationPart: public-ip-overwrite on the own Node      (Part)

``clients()`` makes the two clients the parts use: one with the node's own credential
(get/patch its Node), one with a credential that may list and watch all Nodes. Their
kubeconfig paths are resolved when they are first needed (and again after a 401), from
``kube.*``, ``k3s.*`` and the role the k3s part found (``State.role``).
"""

from __future__ import annotations

from wgagent.config import Config
from wgagent.kube.annotation import AnnotationPart
from wgagent.kube.client import KubeClient
from wgagent.kube.kubeconfig import credential_paths
from wgagent.kube.watch import NodeWatch
from wgagent.state import State

__all__ = ["AnnotationPart", "KubeClient", "NodeWatch", "clients"]


def clients(cfg: Config, state: State) -> tuple[KubeClient, KubeClient]:
    """(own Node client, list/watch client) for ``cfg``; paths resolved lazily by role."""

    def own() -> str:
        return credential_paths(cfg.kube, cfg.k3s, state.role).own

    def lister() -> str:
        return credential_paths(cfg.kube, cfg.k3s, state.role).list

    timeout = cfg.kube.request_timeout_s
    return (
        KubeClient(own, timeout_s=timeout, metrics=state.metrics),
        KubeClient(lister, timeout_s=timeout, metrics=state.metrics),
    )
