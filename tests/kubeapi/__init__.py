"""A Kubernetes API stand-in for a k3s cluster (test support; not shipped in the package).

See :mod:`tests.kubeapi.server` for what it serves and how faults are injected,
:mod:`tests.kubeapi.k3s` for what a k3s start does to a Node, docs/UPSTREAM.md for the
upstream facts they follow, and ``python -m tests.kubeapi --help`` to run it as a process.
"""

from tests.kubeapi.k3s import Cluster, Outcome, StartRequest
from tests.kubeapi.pki import PKI, shared_pki
from tests.kubeapi.server import ADMIN_TOKEN, CONTROLLER, KubeAPI, User
from tests.kubeapi.store import ApiError, NodeStore

__all__ = [
    "ADMIN_TOKEN",
    "CONTROLLER",
    "PKI",
    "ApiError",
    "Cluster",
    "KubeAPI",
    "NodeStore",
    "Outcome",
    "StartRequest",
    "User",
    "shared_pki",
]
