"""Plain data that one part produces and another consumes; ``daemon.py`` passes it along.

    public IP part  --PublicAddresses-->  k3s drop-in, annotation, doctor
    node watch      --ClusterView------>  peer GC, interface check, doctor
    k3s restarter   <--request(reason)---  k3s drop-in, annotation   (-> RestartResult)

Parts never import each other: they take callables returning these (``None`` meaning
"not known yet"), which the daemon wires.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Protocol

FLANNEL = "flannel.alpha.coreos.com/"
ANN_BACKEND_DATA = FLANNEL + "backend-data"
ANN_BACKEND_V6_DATA = FLANNEL + "backend-v6-data"
ANN_BACKEND_TYPE = FLANNEL + "backend-type"
ANN_PUBLIC_IP = FLANNEL + "public-ip"
ANN_PUBLIC_IPV6 = FLANNEL + "public-ipv6"
ANN_PUBLIC_IP_OVERWRITE = FLANNEL + "public-ip-overwrite"
ANN_PUBLIC_IPV6_OVERWRITE = FLANNEL + "public-ipv6-overwrite"
ANN_SUBNET_MANAGER = FLANNEL + "kube-subnet-manager"
ANN_K3S_EXTERNAL_IP = "k3s.io/external-ip"
"""k3s's ``node-external-ip`` list, comma-joined, as the running k3s took it (k3s ``pkg/agent/run.go``
``updateAddressAnnotations``, with the cloud controller on): what k3s actually uses."""
ANN_K3S_NODE_ARGS = "k3s.io/node-args"
"""The running k3s's effective flags after the config merge, a JSON list (k3s ``pkg/nodeconfig``
``SetNodeConfigAnnotations``, every start): the best evidence of what it runs with."""
WGAGENT = "wgagent.io/"
CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"
KEPT_ANNOTATIONS = (FLANNEL, ANN_K3S_EXTERNAL_IP, WGAGENT)
"""The annotation prefixes the node watch keeps of every Node (the rest is dropped to save memory)."""


@dataclass(frozen=True)
class PublicAddresses:
    """The adopted public address of each family; ``None`` where the node has none."""

    ipv4: IPv4Address | None = None
    ipv6: IPv6Address | None = None

    def __bool__(self) -> bool:
        return self.ipv4 is not None or self.ipv6 is not None

    def __str__(self) -> str:
        return ", ".join(str(ip) for ip in (self.ipv4, self.ipv6) if ip is not None) or "none"


@dataclass(frozen=True)
class NodeInfo:
    """What flannel publishes about one Node, read from its annotations."""

    name: str
    annotations: Mapping[str, str] = field(default_factory=dict)
    pod_cidrs: tuple[str, ...] = ()
    server: bool = False
    """A k3s server: labelled ``node-role.kubernetes.io/control-plane`` (k3s sets it on servers,
    ``pkg/agent/run.go`` ``configureNode``)."""

    @property
    def wireguard_keys(self) -> frozenset[str]:
        """The node's current WireGuard public keys (base64), IPv4 and IPv6 backends."""
        keys = set()
        for ann in (ANN_BACKEND_DATA, ANN_BACKEND_V6_DATA):
            key = wireguard_key_from_backend_data(self.annotations.get(ann))
            if key:
                keys.add(key)
        return frozenset(keys)

    @property
    def public_ip(self) -> str | None:
        return self.annotations.get(ANN_PUBLIC_IP)


@dataclass(frozen=True)
class ClusterView:
    """Every Node the watch knows, by name; complete once the first LIST has finished."""

    nodes: Mapping[str, NodeInfo]

    @property
    def current_keys(self) -> frozenset[str]:
        """Every live node's current WireGuard public key: GC never removes these."""
        keys: set[str] = set()
        for node in self.nodes.values():
            keys |= node.wireguard_keys
        return frozenset(keys)

    def owner_of(self, key: str) -> str | None:
        for node in self.nodes.values():
            if key in node.wireguard_keys:
                return node.name
        return None


def wireguard_key_from_backend_data(data: str | None) -> str | None:
    """The public key in flannel's backend-data annotation, or None.

    wireguard-native stores ``{"PublicKey": "<base64>", "Port": 51820}`` (``Port`` since
    flannel v0.26.6); k3s's old extension backend stored a bare JSON string of the key.

    >>> wireguard_key_from_backend_data('{"PublicKey":"abc=","Port":51820}')
    'abc='
    >>> wireguard_key_from_backend_data('"abc="')
    'abc='
    >>> wireguard_key_from_backend_data('{"VNI":1,"VtepMAC":"aa:bb"}') is None
    True
    """
    if not data:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    if isinstance(value, dict):
        value = value.get("PublicKey")
    return value if isinstance(value, str) and value else None


def port_from_backend_data(data: str | None) -> int | None:
    """The ``Port`` in flannel's backend-data (``{"PublicKey": ..., "Port": 51820}``), written since
    flannel v0.26.6 (PR #2200, ``pkg/backend/wireguard/wireguard.go`` ``newSubnetAttrs``); None
    before that, for another backend, or when it does not parse. Peers dial ``public-ip:Port``
    since v0.26.6 (``wireguard_network.go`` ``handleSubnetEvents``), their own listen port before.

    >>> port_from_backend_data('{"PublicKey":"abc=","Port":51822}'), port_from_backend_data('{"PublicKey":"abc="}')
    (51822, None)
    """
    try:
        value = json.loads(data) if data else None
    except ValueError:
        return None
    port = value.get("Port") if isinstance(value, dict) else None
    return port if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536 else None


@dataclass(frozen=True)
class RestartResult:
    """What became of a request to restart k3s (so flannel re-reads its config/annotation)."""

    restarted: bool
    detail: str
    """One line for a check detail: "restarted k3s.service: drop-in changed",
    "restart pending: rate limit, next allowed 12:40:00 UTC", "restarts are off (k3s.restart: false)"."""
    pending: bool = False
    """True when k3s still runs without what was asked for (rate limit, ``k3s.restart: false``,
    a failed ``systemctl``): the restarter keeps the request and retries it when allowed.
    False with ``restarted`` False means no restart was needed (k3s is not running, and
    reads its config when it starts)."""


class RestartRequests(Protocol):
    """What a part that needs k3s restarted holds: the k3s restarter, seen from outside
    (``k3s/restart.py``: needs keyed by kind, one restart serves them all)."""

    def need(self, kind: str, want: str, why: str, *, alone: bool = True) -> RestartResult:
        """k3s must restart so that ``want`` takes effect; what will become of it, now."""
        ...

    def drop(self, kind: str) -> None:
        """The need of this kind is gone."""
        ...

    @property
    def stuck(self) -> Mapping[str, str]:
        """kind -> want of the needs a restart did not fix (never served again)."""
        ...

    @property
    def open_needs(self) -> frozenset[str]:
        """The kinds still waiting for a restart."""
        ...
