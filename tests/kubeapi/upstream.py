"""What each k3s / flannel / Kubernetes release does, as data the stand-ins decide on.

Every function names the upstream source it follows; docs/UPSTREAM.md has the long form.
The k3s history was read in a full clone of k3s (the fork k3s-vip/k3s, whose branches carry
upstream's commits up to 2026-08); flannel's in flannel-io/flannel at its tags.

    >>> v = K3sVersion.parse("v1.32.11+k3s3")
    >>> (v.minor, v.patch, v.k3s), annotation_writer(v)
    ((32, 11, 3), 'syncAnnotations')
    >>> str(flannel_of_k3s(K3sVersion.parse("v1.32.3+k3s1"))), str(flannel_of_k3s(K3sVersion.parse("v1.32.4+k3s1")))
    ('v0.25.7', 'v0.26.7')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

_K3S_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:-rc(\d+))?(?:\+k3s(\d+|-[0-9a-f]+.*))?$")


@dataclass(frozen=True, order=True)
class K3sVersion:
    """A k3s release as the kubelet reports it in ``status.nodeInfo.kubeletVersion``.

    k3s builds set the Kubernetes ``gitVersion`` to the k3s tag (k3s ``scripts/build``
    ``-X .../version.gitVersion=${VERSION}``, ``scripts/version.sh``: ``VERSION=$GIT_TAG``), so
    a release reports ``v1.32.4+k3s1``, a release candidate ``v1.32.4-rc1+k3s1`` and a
    development build ``v1.32.4+k3s-0123abcd`` (taken here as the ``+k3s0`` of that patch).
    Ordering: (major, minor, patch, final-after-rc, k3s number).
    """

    major: int
    minor: int
    patch: int
    final: int
    """1 for a release, 0 for a release candidate (which sorts before it)."""
    rc: int
    k3s: int

    @classmethod
    def parse(cls, text: str) -> K3sVersion:
        match = _K3S_VERSION.match(text.strip())
        if match is None:
            raise ValueError(f"not a k3s version: {text!r} (want e.g. v1.32.4+k3s1)")
        major, minor, patch, rc, k3s = match.groups()
        k3s_n = int(k3s) if k3s and k3s.isdigit() else 0
        return cls(int(major), int(minor), int(patch), 0 if rc else 1, int(rc or 0), k3s_n)

    @property
    def line(self) -> tuple[int, int]:
        """The release line, e.g. (1, 32)."""
        return (self.major, self.minor)

    def __str__(self) -> str:
        rc = f"-rc{self.rc}" if not self.final else ""
        return f"v{self.major}.{self.minor}.{self.patch}{rc}+k3s{self.k3s}"


def _at_least(version: K3sVersion, firsts: dict[tuple[int, int], str], *, later_lines: bool) -> bool:
    """Whether ``version`` is at or after the first release of its line listed in ``firsts``;
    lines newer than all listed ones count as having it when ``later_lines``."""
    first = firsts.get(version.line)
    if first is not None:
        return version >= K3sVersion.parse(first)
    return later_lines and version.line > max(firsts)


# --- k3s: who writes the flannel overwrite annotations, and when -----------------------------

_SET_ANNOTATIONS_FIRST = {
    (1, 32): "v1.32.11+k3s1",
    (1, 33): "v1.33.7+k3s1",
    (1, 34): "v1.34.3+k3s1",
    (1, 35): "v1.35.0+k3s1",
}
"""k3s commit "Use patch helper for node labels and annotations" (main 57210b87c, 2025-12-08;
release-1.32 cf94e4de6 and release-1.34 5e2602ef2, 2025-12-09): the overwrite moves from
``pkg/agent/run.go`` ``updateAddressAnnotations`` to ``pkg/agent/flannel/setup.go``
``setAnnotations``. First in the December 2025 releases (1.33's branch was not available to
read: v1.33.7+k3s1 is inferred from the same release cycle)."""

_PR_13431_FIRST = {
    (1, 32): "v1.32.11+k3s2",
    (1, 33): "v1.33.7+k3s2",
    (1, 34): "v1.34.3+k3s2",
    (1, 35): "v1.35.0+k3s2",
}
"""k3s PR #13431 "Remove flannel external-ip annotations when disabled" (issue #13388; main
1f2f610b5 2026-01-07, release-1.34 c3c40c495 and release-1.32 0cdf1c712 2026-01-09;
backport issues #13501-#13504 for 1.35/1.34/1.33/1.32). Every release of those lines cut
after the December 2025 one has it: the January 2026 releases were ``+k3s3`` of the same
Kubernetes patch (go.mod k3s-io/kubernetes v1.32.11-k3s3, v1.34.3-k3s3, v1.35.0-k3s3; PR
#13554 "Update stable channel to v1.34.3+k3s3"); a ``+k3s2`` build, if any was published,
was cut after the merge too. 1.31 and older never got it (end of life)."""


def annotation_writer(version: K3sVersion) -> str:
    """Which k3s function writes ``public-ip(v6)-overwrite`` at this version's start.

    - ``updateAddressAnnotations`` (k3s ``pkg/agent/run.go``, called by ``configureNode``
      before the CNI starts, kubelet credential, ``nodes.Update`` of a merged map): adds the
      overwrites with ``node-external-ip`` set, ``flannel-external-ip`` on and the cloud
      controller not disabled; never removes them.
    - ``setAnnotations`` (``pkg/agent/flannel/setup.go``, first thing in ``flannel.Run``,
      kubelet credential, JSON patch ``add``): the same adds, now whether or not the cloud
      controller is disabled; never removes them.
    - ``syncAnnotations`` (same file, PR #13431): with ``flannel-external-ip`` on, adds each
      ``node-external-ip`` whose annotation differs; with it off, removes both overwrites.
    """
    if version >= K3sVersion.parse("v1.36.0-rc0+k3s0") or _at_least(version, _PR_13431_FIRST, later_lines=False):
        return "syncAnnotations"
    if _at_least(version, _SET_ANNOTATIONS_FIRST, later_lines=False):
        return "setAnnotations"
    return "updateAddressAnnotations"


# --- k3s and Kubernetes: which credential may list Nodes -------------------------------------

_CONTROLLER_LISTS_NODES_FIRST = {
    (1, 29): "v1.29.13+k3s1",
    (1, 30): "v1.30.9+k3s1",
    (1, 31): "v1.31.5+k3s1",
    (1, 32): "v1.32.0+k3s1",
}
"""k3s ``manifests/rolebindings.yaml``: ClusterRole ``system:k3s-controller`` gains ``list``,
``watch`` on ``nodes`` and ``patch`` on ``nodes/status`` in PR #11478 (v1.32.0+k3s1,
2024-12-20), back-ported as "RBAC changes for compat with AuthorizeNodeWithSelectors"
(issues #11551/#11552; release-1.29 d8da89b26, 2025-01-10) to the January 2025 releases of
1.29, 1.30 and 1.31. Before, the role had only ``get`` on ``nodes``."""


def controller_can_list_nodes(server: K3sVersion) -> bool:
    """Whether ``system:k3s-controller`` (``k3scontroller.kubeconfig``) may list/watch Nodes
    on a cluster whose servers run ``server``. k3s itself probes this (``pkg/util/api.go``
    ``CheckRBAC``, a SelfSubjectAccessReview) before using that credential (PR #11569)."""
    return _at_least(server, _CONTROLLER_LISTS_NODES_FIRST, later_lines=True)


def node_reads_only_its_own_node(server: K3sVersion) -> bool:
    """Whether the Node authorizer limits a node's credential to reading its own Node object:
    the ``AuthorizeNodeWithSelectors`` feature gate, beta and on by default since Kubernetes
    1.32, GA in 1.34 (KEP-4601, kubernetes PR #128168). Before, the ``system:node`` rules let a
    node get/list/watch every Node (``bootstrappolicy.NodeRules``)."""
    return server.line >= (1, 32)


# --- flannel, as shipped in k3s --------------------------------------------------------------


class FlannelVersion(NamedTuple):
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> FlannelVersion:
        match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", text.strip())
        if match is None:
            raise ValueError(f"not a flannel version: {text!r} (want e.g. v0.26.7)")
        return cls(*(int(g) for g in match.groups()))

    def __str__(self) -> str:
        return f"v{self.major}.{self.minor}.{self.patch}"


_FLANNEL_OF_K3S: dict[tuple[int, int], tuple[tuple[str, str], ...]] = {
    (1, 29): (("v1.29.0+k3s0", "v0.24.0"), ("v1.29.11+k3s0", "v0.25.7")),
    (1, 30): (("v1.30.0+k3s0", "v0.24.2"), ("v1.30.7+k3s0", "v0.25.7"), ("v1.30.12+k3s0", "v0.26.7"),
              ("v1.30.14+k3s0", "v0.27.0")),
    (1, 31): (("v1.31.0+k3s0", "v0.25.4"), ("v1.31.3+k3s0", "v0.25.7"), ("v1.31.8+k3s0", "v0.26.7"),
              ("v1.31.10+k3s0", "v0.27.0"), ("v1.31.14+k3s0", "v0.27.4")),
    (1, 32): (("v1.32.0+k3s0", "v0.25.7"), ("v1.32.4+k3s0", "v0.26.7"), ("v1.32.6+k3s0", "v0.27.0"),
              ("v1.32.10+k3s0", "v0.27.4"), ("v1.32.11+k3s2", "v0.28.0"), ("v1.32.13+k3s2", "v0.28.2")),
    (1, 33): (("v1.33.0+k3s0", "v0.26.7"), ("v1.33.2+k3s0", "v0.27.0"), ("v1.33.6+k3s0", "v0.27.4"),
              ("v1.33.7+k3s2", "v0.28.0")),
    (1, 34): (("v1.34.0+k3s0", "v0.27.0"), ("v1.34.2+k3s0", "v0.27.4"), ("v1.34.3+k3s2", "v0.28.0"),
              ("v1.34.7+k3s0", "v0.28.4")),
    (1, 35): (("v1.35.0+k3s0", "v0.27.4"), ("v1.35.0+k3s2", "v0.28.0"), ("v1.35.4+k3s0", "v0.28.4")),
}  # fmt: skip
"""k3s ``go.mod`` ``github.com/flannel-io/flannel`` per release branch (commits "Update flannel
and base cni plugins version" 2024-11-06 -> v0.25.7; "Bump flannel to 0.26.7" 2025-04-16/17;
"Update network components" 2025-06-16 -> v0.27.0; "Update flannel, kube-router and cni
plugins" 2025-10-08 -> v0.27.4; "Bump CNI plugins" 2026-01-08 -> v0.28.0; 2026-03-27 ->
v0.28.2; 2026-04-15 -> v0.28.4), placed at the first release cut after each commit, with the
release tables of docs.k3s.io (v1.31.7+k3s1 v0.25.7, v1.31.8+k3s1 v0.26.7, v1.35.0+k3s1
v0.27.4). What matters most is exact: v0.25.7 up to the March 2025 releases, v0.26.7 from the
April 2025 cycle (published 2025-05-01: v1.32.4, v1.31.8, v1.30.12)."""


def flannel_of_k3s(version: K3sVersion) -> FlannelVersion:
    """The flannel version embedded in this k3s release (see ``_FLANNEL_OF_K3S``); lines after
    the table get its newest, lines before it flannel v0.24 (pre-v0.26 behaviour)."""
    steps = _FLANNEL_OF_K3S.get(version.line)
    if steps is None:
        newest = max(_FLANNEL_OF_K3S)
        return FlannelVersion.parse("v0.28.4" if version.line > newest else "v0.24.0")
    found = steps[0][1]
    for first, flannel in steps:
        if version >= K3sVersion.parse(first):
            found = flannel
    return FlannelVersion.parse(found)


def flannel_cleans_endpoint_peers(flannel: FlannelVersion) -> bool:
    """flannel ``pkg/backend/wireguard/device.go`` ``addPeer`` calls ``cleanupEndpointPeers``
    (removes every other peer whose endpoint IP equals the added peer's) up to v0.25.x; PR
    #2073 "Try not to cleanup multiple peers behind same PublicIP" removed it in v0.26.0."""
    return flannel < FlannelVersion(0, 26, 0)


def flannel_publishes_port(flannel: FlannelVersion) -> bool:
    """flannel ``wireguard_network.go`` ``wireguardLeaseAttrs`` has ``Port`` (backend-data
    ``{"PublicKey":..,"Port":..}``, and peers' endpoints use the peer's port, falling back to
    the local listen port when 0) since v0.26.6 (PR #2200, "Use peer's wireguard port, not our
    own"). Before, backend-data is ``{"PublicKey":..}`` and every endpoint uses the local port."""
    return flannel >= FlannelVersion(0, 26, 6)


# --- k3s agent: the flags it accepts ----------------------------------------------------------

AGENT_FLAGS = frozenset(
    {
        *("config", "c", "debug", "v", "vmodule", "log", "l", "alsologtostderr", "token", "t", "token-file"),
        *("server", "s", "data-dir", "d", "node-name", "with-node-id", "node-label", "node-taint"),
        *("image-credential-provider-bin-dir", "image-credential-provider-config", "selinux", "lb-server-port"),
        *("protect-kernel-defaults", "container-runtime-endpoint", "default-runtime", "image-service-endpoint"),
        *("pause-image", "snapshotter", "private-registry", "disable-default-registry-endpoint", "nonroot-devices"),
        *("airgap-extra-registry", "node-ip", "i", "bind-address", "node-external-ip", "node-internal-dns"),
        *("node-external-dns", "resolv-conf", "flannel-iface", "flannel-conf", "flannel-cni-conf", "kubelet-arg"),
        *("kube-proxy-arg", "enable-pprof", "rootless", "prefer-bundled-bin", "docker", "vpn-auth", "vpn-auth-file"),
        "disable-apiserver-lb",
    }
)
"""Names and aliases of ``k3s agent``'s flags (k3s ``pkg/cli/cmds/agent.go``
``NewAgentCommand``), identical on release-1.29 (5aac2aafc), release-1.32 (b07ff4b26),
release-1.34 (75826e8af) and main (2026-08). Five came in 2024 (so older agents refuse them
too): bind-address and enable-pprof (7ef30a2c6, 2024-05-31), nonroot-devices (2024-11-06),
node-internal-dns and node-external-dns (#10852, 2024-12-11); wgagent writes none of them."""


def agent_accepts(flag: str) -> bool:
    """Whether ``k3s agent`` defines the flag ``flag`` (a name without dashes). Only ``server``
    and ``etcd-snapshot`` drop config-file keys they do not define (k3s
    ``pkg/configfilearg/defaultparser.go`` ``ValidFlags``, ``parser.go`` ``stripInvalidFlags``);
    an agent given one exits ``flag provided but not defined: -<flag>`` (urfave/cli on Go's
    flag package; k3s issues #3142, #5999)."""
    return flag in AGENT_FLAGS
