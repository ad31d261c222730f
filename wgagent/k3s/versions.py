"""What a k3s release does that wgagent must follow, by version (docs/UPSTREAM.md has the sources).

The running version is the Node's ``status.nodeInfo.kubeletVersion``: k3s builds set
Kubernetes' ``gitVersion`` to the k3s tag (k3s ``scripts/version.sh``), e.g. ``v1.32.4+k3s1``.

Who writes ``flannel.alpha.coreos.com/public-ip(v6)-overwrite`` at every k3s start
(:func:`overwrite_writer`):

- ``updateAddressAnnotations`` (k3s ``pkg/agent/run.go``, before December 2025): *adds* the
  overwrite from ``node-external-ip`` when ``flannel-external-ip`` is on and k3s's cloud
  controller is not disabled; never removes it.
- ``setAnnotations`` (``pkg/agent/flannel/setup.go``, the December 2025 releases): the same
  adds, cloud controller or not; never removes.
- ``syncAnnotations`` (same file, k3s PR #13431 for issue #13388, January 2026 releases on):
  with ``flannel-external-ip`` on, adds; with it off, *removes* both overwrites, whoever set
  them.

So with ``flannel-external-ip`` on, k3s derives the overwrite itself and wgagent's drop-in
(``node-external-ip``) is the way; with it off, a new k3s wipes any overwrite at every
start (setting it is pointless) and an old one leaves it alone (setting it, then one
restart, converges).

    >>> v = K3sVersion.parse("v1.32.11+k3s3")
    >>> overwrite_writer(v), overwrite_writer(K3sVersion.parse("v1.32.11+k3s1"))
    ('syncAnnotations', 'setAnnotations')
    >>> controller_can_list_nodes(K3sVersion.parse("v1.31.4+k3s1"))
    False
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:-rc(\d+))?(?:\+k3s(\d+|-[0-9a-f].*))?$")


@dataclass(frozen=True, order=True)
class K3sVersion:
    """A k3s release: (major, minor, patch, release after its candidates, k3s build)."""

    major: int
    minor: int
    patch: int
    final: int
    rc: int
    k3s: int

    @classmethod
    def parse(cls, text: str) -> K3sVersion:
        """``v1.32.4+k3s1``, ``v1.32.4-rc1+k3s1``; a dev build ``v1.32.4+k3s-0a1b2c`` is ``+k3s0``."""
        match = _VERSION.match(text.strip())
        if match is None:
            raise ValueError(f"not a k3s version: {text!r} (want e.g. v1.32.4+k3s1)")
        major, minor, patch, rc, build = match.groups()
        number = int(build) if build and build.isdigit() else 0
        return cls(int(major), int(minor), int(patch), 0 if rc else 1, int(rc or 0), number)

    @classmethod
    def find(cls, text: str | None) -> K3sVersion | None:
        try:
            return cls.parse(text) if text else None
        except ValueError:
            return None

    @property
    def line(self) -> tuple[int, int]:
        return (self.major, self.minor)

    def __str__(self) -> str:
        rc = "" if self.final else f"-rc{self.rc}"
        return f"v{self.major}.{self.minor}.{self.patch}{rc}+k3s{self.k3s}"


def _first_of_line(version: K3sVersion, firsts: dict[tuple[int, int], str], *, later_lines: bool) -> bool:
    first = firsts.get(version.line)
    if first is not None:
        return version >= K3sVersion.parse(first)
    return later_lines and version.line > max(firsts)


SET_ANNOTATIONS_FIRST = {
    (1, 32): "v1.32.11+k3s1",
    (1, 33): "v1.33.7+k3s1",
    (1, 34): "v1.34.3+k3s1",
    (1, 35): "v1.35.0+k3s1",
}
"""k3s "Use patch helper for node labels and annotations" (main 57210b87c, 2025-12-08, and its
back-ports): the overwrite moves to ``setAnnotations``. The December 2025 releases."""

SYNC_ANNOTATIONS_FIRST = {
    (1, 32): "v1.32.11+k3s2",
    (1, 33): "v1.33.7+k3s2",
    (1, 34): "v1.34.3+k3s2",
    (1, 35): "v1.35.0+k3s2",
}
"""k3s PR #13431 "Remove flannel external-ip annotations when disabled" (main 1f2f610b5,
2026-01-07; back-ports #13501-#13504): every later release of these lines, and every newer
line. 1.31 and older never got it."""

CONTROLLER_LISTS_NODES_FIRST = {
    (1, 29): "v1.29.13+k3s1",
    (1, 30): "v1.30.9+k3s1",
    (1, 31): "v1.31.5+k3s1",
    (1, 32): "v1.32.0+k3s1",
}
"""k3s ``manifests/rolebindings.yaml``: ``system:k3s-controller`` may list and watch Nodes
since PR #11478 (v1.32.0+k3s1), back-ported to the January 2025 releases of 1.29-1.31."""


def overwrite_writer(version: K3sVersion) -> str:
    """Which k3s function writes the overwrite annotations at this version's start (module doc)."""
    if version.line >= (1, 36) or _first_of_line(version, SYNC_ANNOTATIONS_FIRST, later_lines=False):
        return "syncAnnotations"
    if _first_of_line(version, SET_ANNOTATIONS_FIRST, later_lines=False):
        return "setAnnotations"
    return "updateAddressAnnotations"


def wipes_overwrite_when_off(version: K3sVersion) -> bool:
    """Whether this k3s removes both overwrites at every start with ``flannel-external-ip`` off."""
    return overwrite_writer(version) == "syncAnnotations"


def controller_can_list_nodes(server: K3sVersion) -> bool:
    """Whether ``k3scontroller.kubeconfig`` may list/watch Nodes on servers of this version (k3s
    itself does not assume it: ``pkg/util/api.go`` ``CheckRBAC`` asks first)."""
    return _first_of_line(server, CONTROLLER_LISTS_NODES_FIRST, later_lines=True)
