"""Heal what is safe to heal: a dead peer's drifted endpoint goes back to where its Node says.

flannel sets a peer's endpoint only on lease events and never corrects one that roamed and
died (flannel #1770): after a NAT rebinding, or a port moved on both sides, each side keeps
sending to a dead address. :func:`decide_heal` picks, as a pure function of one look:

- peers whose status is ``drift`` (the endpoint is not one the Node advertises) *and* whose
  last handshake is older than 180 s (REJECT_AFTER_TIME) or never happened: a peer with a
  fresh handshake is never touched (it roamed legitimately, behind a NAT);
- each at most once per 10 minutes;
- the new endpoint is the Node's advertised ``public-ip``:Port, as flannel would set it.

The caller sets them in one transaction (:class:`EndpointSetter`; UAPI ``update_only=true``,
netlink ``WGPEER_F_UPDATE_ONLY``), records the time in :class:`HealMemory`, and reports each
as an ``EndpointReset`` Event. No k3s restart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from wgagent.mesh import observe as ob
from wgagent.mesh.model import HEAL_AFTER_S, HEAL_MIN_INTERVAL_S

MAX_PER_PASS = 100


@dataclass(frozen=True)
class Reset:
    node: str
    key: str
    old: str | None
    new: str


@dataclass(frozen=True)
class HealMemory:
    """When each key's endpoint was last reset (epoch seconds)."""

    last: Mapping[str, float] = field(default_factory=dict)


def decide_heal(obs: ob.Look, memory: HealMemory, now: float, *, enabled: bool = True) -> list[Reset]:
    """The endpoints to set back now (see the module doc), at most :data:`MAX_PER_PASS`."""
    if not enabled:
        return []
    out = []
    for v in obs.peers:
        if v.status != ob.DRIFT or v.key is None or v.advertised is None or v.endpoint == v.advertised:
            continue
        if v.handshake_age_s is not None and v.handshake_age_s <= HEAL_AFTER_S:
            continue  # live (or just died): WireGuard may still be roaming; never touch it
        last = memory.last.get(v.key)
        if last is not None and now - last < HEAL_MIN_INTERVAL_S:
            continue
        out.append(Reset(v.node, v.key, v.endpoint, v.advertised))
    return out[:MAX_PER_PASS]


def remember(memory: HealMemory, done: Sequence[Reset], now: float, present: set[str]) -> HealMemory:
    """The memory after ``done`` were set, forgetting keys no longer on the device."""
    last = {k: t for k, t in memory.last.items() if k in present and now - t < HEAL_MIN_INTERVAL_S}
    last.update({r.key: now for r in done})
    return HealMemory(last)


class EndpointSetter(Protocol):
    async def set_endpoints(self, ifname: str, endpoints: Mapping[str, str]) -> None:
        """Set each peer's (base64 key) endpoint in one transaction, only if the peer exists.

        WireGuardError when the device refused.
        """
        ...
