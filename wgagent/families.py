"""Which address families the cluster uses, so wgagent manages only those.

k3s looks up an IPv6 external address only on a cluster with IPv6 (k3s
``pkg/agent/flannel/flannel.go`` ``LookupExtInterface``: ``nm.IPv6Enabled()``), and flannel
writes ``public-ipv6`` and ``backend-v6-data`` only then (flannel ``pkg/subnet/kube/kube.go``
``AcquireLease``). k3s's default cluster is IPv4-only, while most VPSs have native IPv6: an
IPv6 ``node-external-ip`` or ``public-ipv6-overwrite`` there is useless, and waiting for a
``public-ipv6`` that never comes would fail the checks forever. So a family is managed only
when the cluster uses it, on the best evidence at hand, in this order:

1. this node's Node, ``spec.podCIDRs`` (the cluster's families, as the controller assigned
   them; known once k3s has registered the node);
2. flannel's ``/run/flannel/subnet.env``: ``FLANNEL_SUBNET`` / ``FLANNEL_IPV6_SUBNET``
   (written when flannel starts; flannel ``pkg/subnet/config.go`` ``WriteSubnetFile``);
3. on a server, ``cluster-cidr`` in k3s's own config (IPv4 unless an IPv6 CIDR is listed);
4. nothing known: IPv4 only, k3s's default.

    >>> decide_families(pod_cidrs=("10.42.1.0/24", "2001:db8:42:1::/64")).describe()
    'IPv4 and IPv6 (the Node has pod CIDRs 10.42.1.0/24, 2001:db8:42:1::/64)'
    >>> decide_families().describe()
    'IPv4 only (nothing says the cluster has IPv6: k3s clusters are IPv4-only by default)'
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from wgagent import fsutil
from wgagent.model import PublicAddresses

SUBNET_ENV = "/run/flannel/subnet.env"


@dataclass(frozen=True)
class Families:
    ipv4: bool
    ipv6: bool
    why: str

    def describe(self) -> str:
        names = " and ".join(n for n, on in (("IPv4", self.ipv4), ("IPv6", self.ipv6)) if on) or "none"
        only = " only" if self.ipv4 != self.ipv6 else ""
        return f"{names}{only} ({self.why})"

    def keep(self, addrs: PublicAddresses | None) -> PublicAddresses | None:
        """Only the managed families' addresses (None when none is left)."""
        if addrs is None:
            return None
        kept = PublicAddresses(addrs.ipv4 if self.ipv4 else None, addrs.ipv6 if self.ipv6 else None)
        return kept if kept else None

    def to_json(self) -> dict[str, object]:
        return {"ipv4": self.ipv4, "ipv6": self.ipv6, "why": self.why}


def ipv4_only() -> Families:
    """The default of a part built without the wiring's evidence (tests, one-off uses)."""
    return Families(True, False, "no evidence of the cluster's families wired")


def _kinds(cidrs: Iterable[str]) -> tuple[bool, bool]:
    v4 = v6 = False
    for cidr in cidrs:
        try:
            net = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError:
            continue
        v4 |= net.version == 4
        v6 |= net.version == 6
    return v4, v6


def decide_families(
    *,
    pod_cidrs: Sequence[str] = (),
    subnet_env: Mapping[str, str] | None = None,
    cluster_cidrs: Sequence[str] = (),
) -> Families:
    """The managed families from the evidence, best first (see the module doc)."""
    v4, v6 = _kinds(pod_cidrs)
    if v4 or v6:
        return Families(v4, v6, f"the Node has pod CIDRs {', '.join(pod_cidrs)}")
    if subnet_env:
        v4, v6 = bool(subnet_env.get("FLANNEL_SUBNET")), bool(subnet_env.get("FLANNEL_IPV6_SUBNET"))
        if v4 or v6:
            return Families(v4, v6, f"flannel's {SUBNET_ENV}")
    v4, v6 = _kinds(cluster_cidrs)
    if v4 or v6:
        return Families(v4, v6, f"cluster-cidr {', '.join(cluster_cidrs)} in k3s's config")
    return Families(True, False, "nothing says the cluster has IPv6: k3s clusters are IPv4-only by default")


def read_subnet_env(path: str = SUBNET_ENV) -> dict[str, str]:
    """``KEY=VALUE`` lines of flannel's subnet file; empty when absent (flannel not started)."""
    out: dict[str, str] = {}
    for line in (fsutil.peek_text(path, 64 << 10) or "").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.startswith("FLANNEL_"):
            out[key] = value.strip()
    return out
