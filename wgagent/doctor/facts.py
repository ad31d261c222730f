"""What the probes found: plain data, the input of ``diagnose()``.

A probe that failed is ``Failed``, one that was not run ``Skipped``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from wgagent.config import Config
from wgagent.errors import KubeError
from wgagent.k3s.role import NodeName, Role
from wgagent.k3s.scan import (
    FileContent,
)
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
class K3sFacts:
    role: Role | None
    role_missing: str
    """``role_missing_detail()`` when ``role`` is None."""
    binary: str | None
    looked_for: str
    """Where the k3s binary was looked for, for the report when there is none."""
    files: Mapping[str, FileContent]
    """k3s's config files, as ``read_config_files()`` returns them."""
    unit_files: tuple[tuple[str, str], ...]
    node: NodeName

    @property
    def installed(self) -> bool:
        return self.role is not None and self.binary is not None


@dataclass(frozen=True)
class KubeFacts:
    own_source: str
    list_source: str
    annotations: Mapping[str, str] | None
    """Every annotation of the own Node; None when it could not be read."""
    node_error: KubeError | None
    cluster: ClusterView | None
    list_error: KubeError | None


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
