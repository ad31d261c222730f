"""Plain data of public IP discovery: what sources answer, and what ``decide()`` made of it.

    Source.observe() -> [Answer, ...] | None      one source, one round
    observe_all()    -> [Observation, ...]         every source, with errors and timings
    decide()         -> Decision                   pure: chosen addresses, verdicts, reason
    adopt()          -> Adoption                   pure: hysteresis over rounds

Nothing here does I/O; every type turns into JSON with ``to_json()`` for ``/status`` and
``wgagent discover --json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from wgagent.model import PublicAddresses

IPAddress = IPv4Address | IPv6Address


@dataclass(frozen=True)
class Answer:
    """One address a source reports.

    ``server`` is the address that answered (STUN server, echo server): an answer equal to
    it is rejected. ``port``/``local_port`` are the STUN mapped and local UDP ports.
    """

    ip: IPAddress
    server: IPAddress | None = None
    port: int | None = None
    local_port: int | None = None
    note: str = ""


@dataclass(frozen=True)
class Observation:
    """What one source said in one round: an address, an error, or "not applicable".

    A source that answered two addresses (IPv4 and IPv6) makes two observations.
    """

    source: str
    kind: str
    elapsed_s: float
    ip: IPAddress | None = None
    error: str | None = None
    applicable: bool = True
    server: IPAddress | None = None
    port: int | None = None
    local_port: int | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "ip": _str(self.ip),
            "error": self.error,
            "elapsed_s": round(self.elapsed_s, 3),
            "applicable": self.applicable,
            "server": _str(self.server),
            "port": self.port,
            "note": self.note,
        }


@dataclass(frozen=True)
class Verdict:
    """What ``decide()`` made of one observed address.

    ``outcome``: ``agrees`` with the chosen address, ``differs`` from it, was ``rejected``
    (never acceptable: private, CGNAT, the server's own address, ...), or its family stayed
    ``undecided``. ``reason`` says why, for a person.
    """

    source: str
    kind: str
    ip: IPAddress
    outcome: str
    reason: str

    @property
    def agreed(self) -> bool:
        return self.outcome == "agrees"

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "ip": str(self.ip),
            "outcome": self.outcome,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Decision:
    """The outcome of one round. ``method4``/``method6`` say how an address was chosen:
    ``static``, ``metadata``, ``quorum`` or ``interface`` (None when undecided)."""

    ipv4: IPv4Address | None
    ipv6: IPv6Address | None
    method4: str | None
    method6: str | None
    reason: str
    verdicts: tuple[Verdict, ...] = ()
    stun_ports_differ: bool | None = None
    """True when STUN servers saw different mapped ports for the same local socket (a NAT
    that maps per destination: inbound WireGuard will fail); None with fewer than two answers."""

    @property
    def addresses(self) -> PublicAddresses:
        return PublicAddresses(self.ipv4, self.ipv6)

    @property
    def decided(self) -> bool:
        return self.ipv4 is not None or self.ipv6 is not None

    @property
    def static(self) -> bool:
        """Every decided family was pinned by ``public_ip.static``."""
        methods = {m for m in (self.method4, self.method6) if m is not None}
        return methods == {"static"}

    def to_json(self) -> dict[str, Any]:
        return {
            "ipv4": _str(self.ipv4),
            "ipv6": _str(self.ipv6),
            "method": {"ipv4": self.method4, "ipv6": self.method6},
            "reason": self.reason,
            "agreed": [v.to_json() for v in self.verdicts if v.agreed],
            "disagreed": [v.to_json() for v in self.verdicts if not v.agreed],
            "stun_mapped_ports_differ": self.stun_ports_differ,
        }


@dataclass(frozen=True)
class Adoption:
    """The address the node uses, and a different one waiting for confirmation.

    ``adopted`` is None until the first decision ever; ``candidate`` is the address the
    last ``rounds`` consecutive rounds decided, when it differs from ``adopted``.
    """

    adopted: PublicAddresses | None = None
    since: float | None = None
    candidate: PublicAddresses | None = None
    rounds: int = 0

    def to_json(self) -> dict[str, Any] | None:
        """The persisted form (``public_ip.json`` in ``state_dir``)."""
        if self.adopted is None:
            return None
        return {"ipv4": _str(self.adopted.ipv4), "ipv6": _str(self.adopted.ipv6), "since": self.since}


def _str(value: object | None) -> str | None:
    return None if value is None else str(value)
