"""What the probes found: plain data, the input of ``diagnose()``.

A probe that failed is ``Failed``, one that was not run ``Skipped``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from wgagent.config import Config
from wgagent.errors import KubeError
from wgagent.k3s.restart import Served
from wgagent.k3s.role import Identity, NodeName, Role
from wgagent.k3s.scan import (
    FileContent,
)
from wgagent.kube.annotation import OwnNode
from wgagent.model import ClusterView
from wgagent.publicip.model import Decision, Observation
from wgagent.wireguard.interface import (
    DeviceRead,
)
from wgagent.wireguard.module import ModuleFacts

# --- facts: what the probes found --------------------------------------------------------------


@dataclass(frozen=True)
class Failed:
    """A probe that timed out or raised."""

    error: str


@dataclass(frozen=True)
class Skipped:
    """A probe not run, and why (disabled in the config, or k3s is not installed)."""

    why: str


@dataclass(frozen=True)
class RestartBook:
    """What the daemon's k3s restarter recorded (``<state_dir>/k3s-restarts.json``, read only;
    ``k3s/restart.py`` ``Book``): empty when wgagent never ran or the file cannot be read."""

    needs: frozenset[str] = frozenset()
    """The kinds of need still waiting for a restart (``config``: k3s runs an older drop-in)."""
    served: Mapping[str, Served] = field(default_factory=dict)
    """kind -> what wgagent's last restart for it was for, and when."""


@dataclass(frozen=True)
class K3sFacts:
    identity: Identity
    """Who this node is, decided as the daemon decides it (``decide_identity_from``): role,
    conflict, notes, where k3s reads its config, its data dir and unit."""
    role_missing: str
    """``role_missing_detail()`` when the role is not known."""
    binary: str | None
    looked_for: str
    """Where the k3s binary was looked for, for the report when there is none."""
    files: Mapping[str, FileContent]
    """k3s's config files, as ``read_config_files(identity.config)`` returns them."""
    unit_files: tuple[tuple[str, str], ...]
    subnet_env: Mapping[str, str] = field(default_factory=dict)
    """flannel's subnet file (``families.read_subnet_env``); empty when flannel has not written it."""
    restarts: RestartBook = field(default_factory=RestartBook)

    @property
    def role(self) -> Role | None:
        return self.identity.role

    @property
    def node(self) -> NodeName:
        return NodeName(self.identity.node, self.identity.node_source)

    @property
    def installed(self) -> bool:
        """A k3s binary, and a role or units whose role is disputed."""
        return (self.role is not None or bool(self.identity.conflict)) and self.binary is not None


@dataclass(frozen=True)
class KubeFacts:
    own_source: str
    list_source: str
    node: OwnNode | None
    """The own Node (annotations, pod CIDRs, k3s version) as ``own_node_of`` reads it; None when
    it could not be read."""
    node_error: KubeError | None
    cluster: ClusterView | None
    list_error: KubeError | None

    @property
    def annotations(self) -> Mapping[str, str] | None:
        return self.node.annotations if self.node is not None else None


@dataclass(frozen=True)
class DiscoveryFacts:
    observations: tuple[Observation, ...]
    decision: Decision


@dataclass(frozen=True)
class InterfaceRead:
    name: str
    read: DeviceRead
    first_seen: Mapping[str, float]
    """When wgagent first saw each peer (its state file); empty when it never ran."""


@dataclass(frozen=True)
class WireGuardFacts:
    interfaces: tuple[InterfaceRead, ...]
    note: str
    """Why ``auto`` found no interface (what it found instead)."""
    bound_ports: frozenset[int]
    other_devices: tuple[str, ...] = ()
    """WireGuard devices here that are not the ones watched (a hint for ``wireguard.interface``)."""


@dataclass(frozen=True)
class DaemonFacts:
    url: str
    status: int | None
    """HTTP status of /healthz; None when nothing answered."""
    failing: tuple[str, ...] = ()
    error: str = ""


@dataclass(frozen=True)
class Facts:
    cfg: Config
    config_path: str
    now: float
    node: str
    node_source: str
    k3s: K3sFacts | Failed
    module: ModuleFacts | Failed
    public_ip: DiscoveryFacts | Failed | Skipped
    kube: KubeFacts | Failed | Skipped
    wireguard: WireGuardFacts | Failed | Skipped
    daemon: DaemonFacts | Failed


def unit_name(facts: Facts) -> str:
    """``k3s`` or ``k3s-agent``, for ``systemctl restart ...``."""
    role = facts.k3s.role if isinstance(facts.k3s, K3sFacts) else None
    return role.unit.removesuffix(".service") if role is not None else "k3s"


def config_main(facts: Facts) -> str:
    """The config file k3s reads: ``K3S_CONFIG_FILE``, ``--config``, else ``<k3s.config_dir>/config.yaml``."""
    k = facts.k3s
    return k.identity.config.main if isinstance(k, K3sFacts) else os.path.join(facts.cfg.k3s.config_dir, "config.yaml")
