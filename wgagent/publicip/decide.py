"""The decision: which public address(es) the observations support, and when to adopt one.

Pure functions over plain data, tested with named cases::

    >>> from ipaddress import ip_address as ip
    >>> obs = [Observation("stun:a", "stun", 0.1, ip=ip("203.0.113.1")),
    ...        Observation("http:b", "http", 0.2, ip=ip("203.0.113.1"))]
    >>> decide(obs, quorum=2).reason
    'ipv4 203.0.113.1 (2 of 2 STUN/HTTP sources agree, quorum 2); ipv6 undecided (no source answered an IPv6 address)'

Priority, for IPv4 and IPv6 separately: ``static`` > the cloud's metadata (authoritative
alone) > ``quorum`` distinct STUN/HTTP sources agreeing > a public interface address.
Never accepted (except when pinned by ``static``): private (RFC 1918, ULA), CGNAT, loopback,
link-local, multicast, unspecified, reserved addresses, and the answering server's own
address. The documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24,
2001:db8::/32) are accepted on purpose: test networks use them and no real service
answers them.

Adoption (``adopt()``): a decision that differs from the adopted address must win
``confirmations`` consecutive rounds first, so one bad round cannot flip the node; the
very first decision (nothing adopted yet) and a ``static`` pin are adopted at once. A
family no source decided this round keeps its adopted address: "no answer" is never
evidence that the address went away.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

from wgagent.model import PublicAddresses
from wgagent.publicip.model import Adoption, Decision, IPAddress, Observation, Verdict

_REJECT_V4: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(net), why)
    for net, why in (
        ("0.0.0.0/32", "unspecified address"),
        ("0.0.0.0/8", "reserved address ('this network')"),
        ("10.0.0.0/8", "private address (RFC 1918)"),
        ("100.64.0.0/10", "shared address (CGNAT, RFC 6598)"),
        ("127.0.0.0/8", "loopback address"),
        ("169.254.0.0/16", "link-local address"),
        ("172.16.0.0/12", "private address (RFC 1918)"),
        ("192.0.0.0/24", "reserved address (IETF protocol assignments)"),
        ("192.168.0.0/16", "private address (RFC 1918)"),
        ("198.18.0.0/15", "reserved address (benchmarking)"),
        ("224.0.0.0/4", "multicast address"),
        ("240.0.0.0/4", "reserved address"),
    )
)
_REJECT_V6: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(net), why)
    for net, why in (
        ("::/128", "unspecified address"),
        ("::1/128", "loopback address"),
        ("::ffff:0:0/96", "IPv4-mapped address"),
        ("fc00::/7", "private address (ULA)"),
        ("fe80::/10", "link-local address"),
        ("ff00::/8", "multicast address"),
    )
)
_GLOBAL_UNICAST_V6 = IPv6Network("2000::/3")


def rejection(ip: IPAddress) -> str | None:
    """Why ``ip`` cannot be a node's public address, or None when it can.

    >>> rejection(ip_address("10.1.2.3"))
    'private address (RFC 1918)'
    >>> rejection(ip_address("203.0.113.7")) is None
    True
    """
    if isinstance(ip, IPv4Address):
        for net4, why in _REJECT_V4:
            if ip in net4:
                return why
        return None
    for net6, why in _REJECT_V6:
        if ip in net6:
            return why
    if ip not in _GLOBAL_UNICAST_V6:
        return "reserved address (outside 2000::/3)"
    return None


def decide(observations: Iterable[Observation], *, quorum: int) -> Decision:
    """Choose the public IPv4 and IPv6 address from one round's observations.

    ``quorum`` is how many distinct STUN/HTTP sources must agree. Sources that answered
    through the same server address count once (two URLs on one host are one witness).
    """
    observed = [o for o in observations if o.ip is not None]
    v4, m4, r4, verdicts4 = _decide_family(observed, 4, quorum)
    v6, m6, r6, verdicts6 = _decide_family(observed, 6, quorum)
    return Decision(
        ipv4=v4 if isinstance(v4, IPv4Address) else None,
        ipv6=v6 if isinstance(v6, IPv6Address) else None,
        method4=m4,
        method6=m6,
        reason=f"ipv4 {_phrase(v4, r4)}; ipv6 {_phrase(v6, r6)}",
        verdicts=tuple(verdicts4 + verdicts6),
        stun_ports_differ=stun_ports_differ(observed),
    )


@dataclass(frozen=True)
class _Choice:
    """One family's outcome: the address and method (None when undecided), the reason, and
    the note an agreeing source's verdict carries."""

    ip: IPAddress | None
    method: str | None
    reason: str
    agree_note: str = ""


def _decide_family(
    observed: Sequence[Observation], version: int, quorum: int
) -> tuple[IPAddress | None, str | None, str, list[Verdict]]:
    """One family's decision, in three steps: reject, choose by priority, give verdicts."""
    mine = [o for o in observed if o.ip is not None and o.ip.version == version]
    rejected = _rejections(mine)
    usable = [o for i, o in enumerate(mine) if i not in rejected]
    choice = _choose(usable, quorum) or _undecided(mine, rejected, usable, version, quorum)
    return choice.ip, choice.method, choice.reason, _verdicts(mine, rejected, choice)


def _rejections(mine: Sequence[Observation]) -> dict[int, str]:
    """Index in ``mine`` -> why that answer cannot be the public address.

    A ``static`` answer is never rejected: it is the operator's word, reported as is.
    """
    rejected: dict[int, str] = {}
    for i, o in enumerate(mine):
        assert o.ip is not None
        if o.kind == "static":
            continue
        why = rejection(o.ip)
        if why is None and o.server is not None and o.ip == o.server:
            why = "the answering server's own address"
        if why is not None:
            rejected[i] = why
    return rejected


def _choose(usable: Sequence[Observation], quorum: int) -> _Choice | None:
    """The address by priority: static > metadata > a STUN/HTTP quorum > an interface address."""
    static = _first(usable, "static")
    if static is not None:
        return _Choice(static.ip, "static", "pinned by public_ip.static", "agrees with public_ip.static")
    metadata = _first(usable, "metadata")
    if metadata is not None:
        return _Choice(
            metadata.ip, "metadata", f"the cloud's metadata, {metadata.source}", "agrees with the cloud's metadata"
        )
    ranked = _ranked(usable)
    by_quorum = _quorum(ranked, quorum)
    if by_quorum is not None:
        return by_quorum
    interface = _first(usable, "interface")
    if interface is not None:
        reason = f"on interface {interface.note or '?'}" + (f"; {_no_quorum(ranked, quorum)}" if ranked else "")
        return _Choice(interface.ip, "interface", reason, "agrees with the interface address")
    return None


def _quorum(ranked: Sequence[tuple[IPAddress, set[str]]], quorum: int) -> _Choice | None:
    """The address at least ``quorum`` distinct witnesses gave, when no other address ties it."""
    top = len(ranked[0][1]) if ranked else 0
    tied = [ip for ip, v in ranked if len(v) == top]
    if top >= quorum and len(tied) == 1:
        witnesses = sum(len(v) for _, v in ranked)
        reason = f"{top} of {witnesses} STUN/HTTP sources agree, quorum {quorum}"
        return _Choice(tied[0], "quorum", reason, "part of the quorum")
    return None


def _undecided(
    mine: Sequence[Observation], rejected: dict[int, str], usable: Sequence[Observation], version: int, quorum: int
) -> _Choice:
    """Why nothing was chosen: sources without a quorum, every answer rejected, or no answer."""
    ranked = _ranked(usable)
    if ranked:
        return _Choice(None, None, _no_quorum(ranked, quorum))
    if rejected:
        first_bad = next(iter(rejected))
        bad = mine[first_bad]
        return _Choice(None, None, f"every answer was rejected: {bad.ip} from {bad.source}, {rejected[first_bad]}")
    return _Choice(None, None, f"no source answered an IPv{version} address")


def _verdicts(mine: Sequence[Observation], rejected: dict[int, str], choice: _Choice) -> list[Verdict]:
    """One verdict per observed address, in the order observed."""
    verdicts: list[Verdict] = []
    for i, o in enumerate(mine):
        assert o.ip is not None
        if i in rejected:
            verdicts.append(Verdict(o.source, o.kind, o.ip, "rejected", rejected[i]))
        elif choice.ip is None:
            verdicts.append(Verdict(o.source, o.kind, o.ip, "undecided", choice.reason))
        elif o.ip == choice.ip:
            verdicts.append(Verdict(o.source, o.kind, o.ip, "agrees", choice.agree_note))
        else:
            reason = f"the chosen address is {choice.ip} ({choice.method})"
            verdicts.append(Verdict(o.source, o.kind, o.ip, "differs", reason))
    return verdicts


def _first(usable: Sequence[Observation], kind: str) -> Observation | None:
    return next((o for o in usable if o.kind == kind), None)


def _ranked(usable: Sequence[Observation]) -> list[tuple[IPAddress, set[str]]]:
    """STUN/HTTP answers by how many distinct witnesses gave them, most first, then by address."""
    votes = _votes(o for o in usable if o.kind in ("stun", "http"))
    return sorted(votes.items(), key=lambda kv: (-len(kv[1]), _sort_key(kv[0])))


def _phrase(chosen: IPAddress | None, why: str) -> str:
    return f"{chosen} ({why})" if chosen is not None else f"undecided ({why})"


def _votes(observations: Iterable[Observation]) -> dict[IPAddress, set[str]]:
    """Address -> the distinct witnesses (server address, else source name) answering it."""
    votes: dict[IPAddress, set[str]] = {}
    for o in observations:
        assert o.ip is not None
        witness = str(o.server) if o.server is not None else o.source
        votes.setdefault(o.ip, set()).add(witness)
    return votes


def _no_quorum(ranked: Sequence[tuple[IPAddress, set[str]]], quorum: int) -> str:
    if len(ranked) == 1:
        ip, voters = ranked[0]
        n = len(voters)
        return f"only {n} STUN/HTTP source{'s' if n != 1 else ''} answered {ip}, quorum is {quorum}"
    counts = ", ".join(f"{ip} ×{len(v)}" for ip, v in ranked)
    return f"STUN/HTTP sources disagree ({counts}), quorum is {quorum}"


def _sort_key(ip: IPAddress) -> tuple[int, int]:
    return ip.version, int(ip)


def stun_ports_differ(observations: Iterable[Observation]) -> bool | None:
    """Whether STUN servers mapped the same local socket to different public ports.

    Compared per address family and local port; None when no two STUN servers answered the
    same mapped address from the same local port.
    """
    groups: dict[tuple[int, int | None, IPAddress], set[tuple[str, int]]] = {}
    for o in observations:
        if o.kind == "stun" and o.ip is not None and o.port is not None:
            groups.setdefault((o.ip.version, o.local_port, o.ip), set()).add((o.source, o.port))
    comparable = [g for g in groups.values() if len({s for s, _ in g}) >= 2]
    if not comparable:
        return None
    return any(len({p for _, p in g}) > 1 for g in comparable)


# --- adoption ----------------------------------------------------------------------------------


def adopt(prev: Adoption, decision: Decision, now: float, *, confirmations: int) -> Adoption:
    """The adoption after one more round. ``result.adopted != prev.adopted`` means a change.

    >>> from ipaddress import ip_address as ip
    >>> d = Decision(ip("203.0.113.9"), None, "quorum", None, "…")
    >>> a = adopt(Adoption(), d, 100.0, confirmations=2)     # nothing adopted: at once
    >>> str(a.adopted), a.since
    ('203.0.113.9', 100.0)
    """
    if not decision.decided:
        return replace(prev, candidate=None, rounds=0)
    if decision.static:
        target = decision.addresses  # the pin is exact: an unpinned family is dropped
    else:
        kept = prev.adopted or PublicAddresses()
        target = PublicAddresses(decision.ipv4 or kept.ipv4, decision.ipv6 or kept.ipv6)
    if prev.adopted is None or decision.static:
        if target == prev.adopted:
            return replace(prev, candidate=None, rounds=0)
        return Adoption(adopted=target, since=now)
    if target == prev.adopted:
        return replace(prev, candidate=None, rounds=0)
    rounds = prev.rounds + 1 if target == prev.candidate else 1
    if rounds >= confirmations:
        return Adoption(adopted=target, since=now)
    return replace(prev, candidate=target, rounds=rounds)


def load_adoption(data: Any) -> Adoption | None:
    """The persisted adoption, or None when ``data`` is not a valid one (the caller logs).

    >>> load_adoption({"ipv4": "203.0.113.9", "ipv6": None, "since": 5.0}).adopted.ipv4
    IPv4Address('203.0.113.9')
    """
    if not isinstance(data, dict):
        return None
    since = data.get("since")
    if not isinstance(since, int | float) or isinstance(since, bool):
        since = None
    parsed: list[IPAddress | None] = []
    for key, version in (("ipv4", 4), ("ipv6", 6)):
        text = data.get(key)
        if text is None:
            parsed.append(None)
            continue
        if not isinstance(text, str):
            return None
        try:
            value = ip_address(text)
        except ValueError:
            return None
        if value.version != version:
            return None
        parsed.append(value)
    v4, v6 = parsed
    if v4 is None and v6 is None:
        return None
    assert v4 is None or isinstance(v4, IPv4Address)
    assert v6 is None or isinstance(v6, IPv6Address)
    return Adoption(adopted=PublicAddresses(v4, v6), since=float(since) if since is not None else None)
