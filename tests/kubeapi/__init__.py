"""A Kubernetes API stand-in for Nodes (test support; not shipped in the package).

See :mod:`tests.kubeapi.server` for what it serves and how faults are injected, and
``python -m tests.kubeapi --help`` to run it as a process (for the lab).
"""

from tests.kubeapi.pki import PKI, shared_pki
from tests.kubeapi.server import ADMIN_TOKEN, CONTROLLER, KubeAPI, User
from tests.kubeapi.store import ApiError, NodeStore

__all__ = ["ADMIN_TOKEN", "CONTROLLER", "PKI", "ApiError", "KubeAPI", "NodeStore", "User", "shared_pki"]
