"""The ``peer_gc`` check: remove dead WireGuard peers, never a live node's.

flannel adds a peer per Node key and removes it only when the Node is deleted, so peers of
nodes that re-keyed (reboot: new key, its routes moved to the new peer, the old one left with
no allowed IPs) and of nodes that vanished pile up (k3s #5216: tens of thousands).

:func:`select_stale_peers` decides, as a pure function of the device, the live nodes' keys,
when wgagent first saw each peer, ``now`` and the policy:

- candidates: the last handshake is older than ``stale_after_s``, or there never was one and
  wgagent has seen the peer for longer than that (first-seen times persist in ``state_dir``);
- of those, remove (a) peers whose key is no live Node's current key, (b) peers with no
  allowed IPs;
- never a live Node's current key, stale or not: flannel would not re-add it until it
  restarts or that Node changes, so removing it cuts the node off. It is reported as
  unreachable instead;
- node list unknown: only (b). The node list is also not trusted (only (b) again) when a
  peer with allowed IPs handshakes but holds no Node's key: the list is then incomplete (a
  credential that sees only its own Node), and (a) would cut off nodes it does not show;
- at most ``max_removals_per_pass``, the longest silent first.

This module is the rule, pure: no I/O, ``now`` passed in. ``firstseen.py`` keeps the
first-seen times, ``sweep.py`` runs one pass over a device (read, decide, remove in one
transaction), ``part.py`` is the daemon's part, and ``wgagent gc`` (``commands/gc.py``)
runs one pass on demand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from wgagent.config import GCConfig
from wgagent.wireguard.model import REJECT_AFTER_S, Device, Peer


@dataclass(frozen=True)
class GCPolicy:
    stale_after_s: float = 300.0
    max_removals_per_pass: int = 1000

    @classmethod
    def from_config(cls, cfg: GCConfig) -> GCPolicy:
        return cls(cfg.stale_after_s, cfg.max_removals_per_pass)


@dataclass(frozen=True)
class Selection:
    remove: tuple[Peer, ...] = ()
    """Removed by this pass (or, in a dry run, what a real pass would remove), oldest first."""
    kept_unreachable: tuple[Peer, ...] = ()
    """Stale, but a live Node's current key: kept, and reported."""
    kept_unknown: tuple[Peer, ...] = ()
    """Stale with allowed IPs while the node list is unknown or untrusted: kept."""
    deferred: tuple[Peer, ...] = ()
    """Removable, but over ``max_removals_per_pass``: the next pass takes them."""
    node_list: str = "known"
    """``known``, ``unknown`` (no list) or ``untrusted`` (see the module doc)."""
    note: str = ""

    @property
    def removed_keys(self) -> list[str]:
        return [p.public_key for p in self.remove]


@dataclass
class _Sorted:
    """The peers of one device by what the rule makes of them; each list of (since, key, peer)."""

    unreachable: list[tuple[float, str, Peer]] = field(default_factory=list)
    no_ips: list[tuple[float, str, Peer]] = field(default_factory=list)
    with_ips: list[tuple[float, str, Peer]] = field(default_factory=list)
    strangers: list[Peer] = field(default_factory=list)
    """Handshaking peers with allowed IPs whose key no Node holds: the node list is incomplete."""


def select_stale_peers(
    device: Device,
    cluster_keys: frozenset[str] | None,
    first_seen: Mapping[str, float],
    now: float,
    policy: GCPolicy,
) -> Selection:
    """Which peers of ``device`` to remove now (see the module doc for the rules).

    ``cluster_keys``: every live Node's current public key, or None when the node list is
    unknown. ``first_seen``: epoch seconds at which wgagent first saw each key; a peer that
    never handshook and is missing here counts as seen just now (never a candidate).
    """
    peers = _sort_peers(device, cluster_keys, first_seen, now, policy.stale_after_s)
    node_list, note = _node_list_trust(cluster_keys, peers.strangers)
    if node_list == "known":
        removable, unknown = peers.no_ips + peers.with_ips, []
    else:
        removable, unknown = peers.no_ips, peers.with_ips
    removable.sort()  # the longest silent first; keys are unique, so Peers are never compared
    unknown.sort()
    peers.unreachable.sort()
    cap = policy.max_removals_per_pass
    return Selection(
        remove=tuple(t[2] for t in removable[:cap]),
        kept_unreachable=tuple(t[2] for t in peers.unreachable),
        kept_unknown=tuple(t[2] for t in unknown),
        deferred=tuple(t[2] for t in removable[cap:]),
        node_list=node_list,
        note=note,
    )


def _sort_peers(
    device: Device, cluster_keys: frozenset[str] | None, first_seen: Mapping[str, float], now: float, stale_after: float
) -> _Sorted:
    """One loop, no calls per peer: this runs over every peer of a device that may hold 10,000."""
    out = _Sorted()
    live = cluster_keys if cluster_keys is not None else frozenset()
    check_strangers = cluster_keys is not None
    own = device.public_key
    for peer in device.peers:
        key = peer.public_key
        hs = peer.last_handshake
        since = hs if hs is not None else first_seen.get(key)
        if since is None or now - since <= stale_after or key == own:
            if check_strangers and hs is not None and peer.allowed_ips and key not in live and key != own:
                out.strangers.append(peer)
        elif key in live:
            out.unreachable.append((since, key, peer))
        elif peer.allowed_ips:
            out.with_ips.append((since, key, peer))
        else:
            out.no_ips.append((since, key, peer))
    return out


def _node_list_trust(cluster_keys: frozenset[str] | None, strangers: list[Peer]) -> tuple[str, str]:
    """``known``, ``unknown`` or ``untrusted``, and the note that says why not known."""
    if cluster_keys is None:
        return "unknown", "node list unknown: only peers without allowed IPs are removed"
    if strangers:
        return "untrusted", (
            f"node list looks incomplete: {len(strangers)} peer(s) with allowed IPs handshake but hold no"
            f" Node's key (e.g. {strangers[0].public_key}); only peers without allowed IPs are removed"
        )
    return "known", ""


def update_first_seen(previous: Mapping[str, float], device: Device, now: float) -> dict[str, float]:
    """First-seen times for the device's peers now: kept for known keys, ``now`` for new ones;
    keys no longer on the device are dropped (a peer added again is new again)."""
    get, seen_now = previous.get, int(now)
    return {p.public_key: get(p.public_key, seen_now) for p in device.peers}


def peer_states(device: Device, selection: Selection, now: float, *, removed: bool) -> dict[str, int]:
    """``wgagent_peers{state=...}`` after a pass: active (handshake in the last 180 s),
    unreachable (stale live node), stale (stale, kept or deferred), idle (the rest)."""
    selected = len(selection.remove)
    # Selected peers are stale (older than stale_after_s >= 180 s), so never active.
    active = sum(1 for p in device.peers if p.last_handshake is not None and now - p.last_handshake <= REJECT_AFTER_S)
    unreachable = len(selection.kept_unreachable)
    stale = len(selection.kept_unknown) + len(selection.deferred) + (0 if removed else selected)
    left = len(device.peers) - (selected if removed else 0)
    return {"active": active, "idle": left - active - unreachable - stale, "stale": stale, "unreachable": unreachable}
