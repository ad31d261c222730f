"""Public addresses configured on the node's own interfaces (a node that is not behind NAT).

The netlink dump (pyroute2, imported only here and only when asked) becomes plain
``AddrRecord``s; ``public_addresses()`` picks from them with no kernel involved::

    >>> from ipaddress import ip_address as ip
    >>> recs = [AddrRecord("eth0", 2, ip("10.0.0.5")), AddrRecord("eth1", 3, ip("198.51.100.7"))]
    >>> [str(a.ip) for a in public_addresses(recs)]
    ['198.51.100.7']

Skipped: addresses that ``decide.rejection()`` refuses, anything but global scope,
temporary (privacy), deprecated, tentative or DAD-failed IPv6 addresses, and interfaces
that carry other machines' or services' addresses (CNI bridges, flannel, kube-ipvs0,
container veths).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import ip_address

from wgagent.errors import SourceError
from wgagent.publicip.decide import rejection
from wgagent.publicip.model import Answer, IPAddress

IFA_F_TEMPORARY = 0x01
IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
IFA_F_TENTATIVE = 0x40
_UNUSABLE_FLAGS = IFA_F_TEMPORARY | IFA_F_DADFAILED | IFA_F_DEPRECATED | IFA_F_TENTATIVE
RT_SCOPE_UNIVERSE = 0

SKIPPED_INTERFACES = ("lo", "kube-ipvs0", "nodelocaldns")
SKIPPED_PREFIXES = ("flannel", "cni", "cali", "cilium", "lxc", "veth", "docker", "br-", "kube-", "virbr")


@dataclass(frozen=True)
class AddrRecord:
    ifname: str
    index: int
    ip: IPAddress
    flags: int = 0
    scope: int = RT_SCOPE_UNIVERSE


def public_addresses(records: Iterable[AddrRecord]) -> list[Answer]:
    """The usable public addresses, by interface index then address (a stable order)."""
    keep = [
        r
        for r in records
        if r.scope == RT_SCOPE_UNIVERSE
        and not r.flags & _UNUSABLE_FLAGS
        and r.ifname not in SKIPPED_INTERFACES
        and not r.ifname.startswith(SKIPPED_PREFIXES)
        and rejection(r.ip) is None
    ]
    keep.sort(key=lambda r: (r.ip.version, r.index, int(r.ip)))
    return [Answer(r.ip, note=r.ifname) for r in keep]


def netlink_dump() -> list[AddrRecord]:
    """Every address of the current network namespace (blocking: run it in a thread)."""
    try:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError
    except ImportError as exc:  # pragma: no cover - a packaging error
        raise SourceError(f"pyroute2 is not available: {exc}") from exc
    try:
        with IPRoute() as ipr:
            names = {link["index"]: link.get_attr("IFLA_IFNAME") or "?" for link in ipr.get_links()}
            records = []
            for msg in ipr.get_addr():
                # IFA_LOCAL is ours; on point-to-point links IFA_ADDRESS is the peer's.
                text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
                if not text:
                    continue
                flags = msg.get_attr("IFA_FLAGS")
                records.append(
                    AddrRecord(
                        ifname=names.get(msg["index"], "?"),
                        index=int(msg["index"]),
                        ip=ip_address(text),
                        flags=int(flags if flags is not None else msg["flags"]),
                        scope=int(msg["scope"]),
                    )
                )
            return records
    except (NetlinkError, OSError) as exc:
        raise SourceError(f"cannot list the interface addresses: {exc}") from exc


class InterfaceSource:
    kind = "interface"
    name = "interface"

    def __init__(self, timeout_s: float, dump: Callable[[], Sequence[AddrRecord]] = netlink_dump) -> None:
        self.timeout_s = timeout_s
        self.why_not = ""
        self._dump = dump

    async def observe(self) -> Sequence[Answer] | None:
        records = await asyncio.to_thread(self._dump)
        answers = public_addresses(records)
        if not answers:
            self.why_not = "no public address on any interface (the node is behind NAT or has only private ones)"
            return None
        return answers
