"""Interface addresses: the pure filter (named cases), the source, and the netlink dump itself."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from wgagent.errors import SourceError
from wgagent.publicip.interface import (
    IFA_F_DADFAILED,
    IFA_F_DEPRECATED,
    IFA_F_TEMPORARY,
    IFA_F_TENTATIVE,
    AddrRecord,
    InterfaceSource,
    netlink_dump,
    public_addresses,
)


def rec(ifname: str, ip: str, *, index: int = 2, flags: int = 0, scope: int = 0) -> AddrRecord:
    return AddrRecord(ifname, index, ip_address(ip), flags, scope)


CASES = {
    "a public IPv4 on eth0 is kept": ([rec("eth0", "198.51.100.7")], ["198.51.100.7"]),
    "private and CGNAT addresses are skipped": ([rec("eth0", "10.0.0.5"), rec("eth1", "100.64.0.9")], []),
    "a global IPv6 is kept": ([rec("eth0", "2001:db8:5::7")], ["2001:db8:5::7"]),
    "a temporary (privacy) IPv6 is skipped": ([rec("eth0", "2001:db8:5::99", flags=IFA_F_TEMPORARY)], []),
    "a deprecated IPv6 is skipped": ([rec("eth0", "2001:db8:5::98", flags=IFA_F_DEPRECATED)], []),
    "a tentative IPv6 is skipped": ([rec("eth0", "2001:db8:5::97", flags=IFA_F_TENTATIVE)], []),
    "a DAD-failed IPv6 is skipped": ([rec("eth0", "2001:db8:5::96", flags=IFA_F_DADFAILED)], []),
    "a non-global scope is skipped": ([rec("eth0", "198.51.100.8", scope=253)], []),
    "flannel's WireGuard interface is skipped": ([rec("flannel-wg", "198.51.100.9")], []),
    "kube-ipvs0 (service IPs) is skipped": ([rec("kube-ipvs0", "198.51.100.10")], []),
    "CNI bridges and container veths are skipped": (
        [rec("cni0", "198.51.100.11"), rec("veth1a2b", "198.51.100.12")],
        [],
    ),
    "loopback is skipped": ([rec("lo", "127.0.0.1", index=1)], []),
    "IPv4 first, then by interface index, then address": (
        [
            rec("eth1", "2001:db8:5::1", index=3),
            rec("eth1", "203.0.113.9", index=3),
            rec("eth0", "203.0.113.20", index=2),
            rec("eth0", "203.0.113.10", index=2),
        ],
        ["203.0.113.10", "203.0.113.20", "203.0.113.9", "2001:db8:5::1"],
    ),
}


@pytest.mark.parametrize(("records", "expected"), CASES.values(), ids=CASES.keys())
def test_public_addresses(records: list[AddrRecord], expected: list[str]) -> None:
    assert [str(a.ip) for a in public_addresses(records)] == expected


def test_answers_name_their_interface() -> None:
    (answer,) = public_addresses([rec("enp1s0", "198.51.100.7")])
    assert answer.note == "enp1s0"


async def test_the_source_answers_or_says_why_not() -> None:
    assert [str(a.ip) for a in await InterfaceSource(1.0, lambda: [rec("eth0", "198.51.100.7")]).observe() or []] == [
        "198.51.100.7"
    ]
    behind_nat = InterfaceSource(1.0, lambda: [rec("eth0", "10.9.0.2")])
    assert await behind_nat.observe() is None
    assert "no public address" in behind_nat.why_not


async def test_a_dump_failure_is_a_source_error() -> None:
    def broken() -> list[AddrRecord]:
        raise SourceError("cannot list the interface addresses: boom")

    with pytest.raises(SourceError, match="boom"):
        await InterfaceSource(1.0, broken).observe()


def test_netlink_dump_reads_this_namespace() -> None:
    """Reading addresses needs no root and sends nothing: the real pyroute2 (either version)."""
    records = netlink_dump()
    assert any(r.ifname == "lo" and str(r.ip) == "127.0.0.1" for r in records)
    assert all(r.index > 0 for r in records)
