"""Who may do what: the API server's authorizers and the NodeRestriction admission plugin, as
far as the stand-in's users and resources go, per k3s/Kubernetes version.

    >>> node, v132 = User("system:node:n1", ("system:nodes",)), K3sVersion.parse("v1.32.4+k3s1")
    >>> authorize(node, Attributes("list", "nodes"), v132)
    (False, "node 'n1' cannot read all nodes, only its own Node object")
    >>> authorize(node, Attributes("list", "nodes"), K3sVersion.parse("v1.31.6+k3s1"))
    (True, '')
    >>> authorize(User("system:k3s-controller"), Attributes("watch", "nodes"), K3sVersion.parse("v1.31.4+k3s1"))
    (False, '')

Sources: the Node authorizer (kubernetes ``plugin/pkg/auth/authorizer/node/node_authorizer.go``
``authorizeNode``; other resources by ``bootstrappolicy.NodeRules``), the bootstrap RBAC
(``plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go``: ``cluster-admin`` for
``system:masters``, ``system:basic-user`` and ``system:discovery`` for every authenticated
user), k3s's ``system:k3s-controller`` ClusterRole (``manifests/rolebindings.yaml``), and
NodeRestriction (``plugin/pkg/admission/noderestriction/admission.go`` ``admitNode``).
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.kubeapi.upstream import K3sVersion, controller_can_list_nodes, node_reads_only_its_own_node

CONTROLLER = "system:k3s-controller"


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()

    @property
    def node(self) -> str | None:
        if "system:nodes" in self.groups and self.name.startswith("system:node:"):
            return self.name[len("system:node:") :]
        return None


@dataclass(frozen=True)
class Attributes:
    """A request's authorization attributes (the apiserver's ``authorizer.Attributes``). For a
    list/watch with ``fieldSelector=metadata.name=X``, ``name`` is X (KEP-4601)."""

    verb: str
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    group: str = ""
    path: str = ""
    """A non-resource request's path (``/version``, ``/api``...); then ``resource`` is empty."""
    field_selector: str = ""


def authorize(user: User, attrs: Attributes, server: K3sVersion) -> tuple[bool, str]:
    """(allowed, reason) for ``user`` on a cluster whose servers run ``server``."""
    if "system:masters" in user.groups:
        return True, ""  # cluster-admin
    if not attrs.resource:
        return attrs.verb == "get", ""  # system:discovery, system:public-info-viewer
    if attrs.group == "authorization.k8s.io" and attrs.resource in ("selfsubjectaccessreviews",
                                                                    "selfsubjectrulesreviews"):  # fmt: skip
        return attrs.verb == "create", ""  # system:basic-user
    if user.name == CONTROLLER:
        return _controller(attrs, server), ""
    if user.node is not None:
        return _node(user.node, attrs, server)
    return False, ""


def _controller(attrs: Attributes, server: K3sVersion) -> bool:
    # k3s manifests/rolebindings.yaml, system:k3s-controller (nodes: get; since PR #11478 and
    # its January 2025 back-ports also list, watch, and patch nodes/status)
    if attrs.group:
        return False
    if attrs.resource == "pods":
        return attrs.verb in ("get", "list", "watch")
    if attrs.resource != "nodes":
        return False
    if attrs.subresource == "status":
        return attrs.verb == "patch" and controller_can_list_nodes(server)
    if attrs.subresource:
        return False
    return attrs.verb == "get" or (attrs.verb in ("list", "watch") and controller_can_list_nodes(server))


def _node(own: str, attrs: Attributes, server: K3sVersion) -> tuple[bool, str]:
    if attrs.group:
        return False, ""
    if attrs.resource == "nodes" and not attrs.subresource:
        if attrs.verb in ("create", "update", "patch"):
            return True, ""  # NodeRestriction admission limits it to its own Node
        if attrs.verb in ("get", "list", "watch"):
            if not node_reads_only_its_own_node(server) or attrs.name == own:
                return True, ""
            if not attrs.name:
                return False, f"node '{own}' cannot read all nodes, only its own Node object"
            return False, f"node '{own}' cannot read '{attrs.name}', only its own Node object"
        return False, ""
    if attrs.resource == "nodes" and attrs.subresource == "status":
        return attrs.verb in ("update", "patch"), ""
    if attrs.resource == "events" and not attrs.subresource:
        # NodeRules: create, update, patch events (core group only), in any namespace
        return attrs.verb in ("create", "update", "patch"), ""
    if attrs.resource == "pods" and not attrs.subresource and attrs.verb in ("get", "list", "watch"):
        return _node_pods(own, attrs, server)
    return False, ""


def _node_pods(own: str, attrs: Attributes, server: K3sVersion) -> tuple[bool, str]:
    # authorizePod: with AuthorizeNodeWithSelectors a node lists/watches only its own pods
    if not node_reads_only_its_own_node(server):
        return True, ""
    if attrs.verb == "get":
        return False, f"no relationship found between node '{own}' and this object"
    terms = {t.strip().replace("==", "=") for t in attrs.field_selector.split(",")}
    if f"spec.nodeName={own}" in terms:
        return True, ""
    return False, "can only list/watch pods with spec.nodeName field selector"


def forbidden_message(user: User, attrs: Attributes, reason: str) -> str:
    """The apiserver's 403 text (``responsewriters/errors.go`` ``forbiddenMessage``)."""
    if not attrs.resource:
        return f'forbidden: User "{user.name}" cannot {attrs.verb} path "{attrs.path}"'
    resource = attrs.resource + (f"/{attrs.subresource}" if attrs.subresource else "")
    target = f'{attrs.resource} "{attrs.name}"' if attrs.name else attrs.resource
    scope = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    text = f'{target} is forbidden: User "{user.name}" cannot {attrs.verb} resource "{resource}" in API group ' \
           f'"{attrs.group}" {scope}'  # fmt: skip
    return text + (f": {reason}" if reason else "")


def node_restriction(user: User, attrs: Attributes, name: str) -> str | None:
    """NodeRestriction ``admitNode``: a node may create or modify only its own Node; the 403
    message when it tries another, else None."""
    own = user.node
    if own is None or attrs.resource != "nodes" or attrs.verb not in ("create", "update", "patch", "delete"):
        return None
    if name != own:
        return f'nodes "{name}" is forbidden: node "{own}" is not allowed to modify node "{name}"'
    return None
