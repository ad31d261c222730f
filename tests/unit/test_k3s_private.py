"""k3s/private.py: the default route's source IPv4, asked of the kernel without sending."""

from __future__ import annotations

import socket
from typing import Any, ClassVar

import pytest

from wgagent.k3s import private

pytestmark = pytest.mark.unit


class FakeSocket:
    """A datagram socket whose route lookup the test decides: an address or an OSError."""

    connected: ClassVar[list[tuple[str, int]]] = []

    def __init__(self, source: str | OSError) -> None:
        self.source = source

    def __enter__(self) -> FakeSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def connect(self, address: tuple[str, int]) -> None:
        FakeSocket.connected.append(address)
        if isinstance(self.source, OSError):
            raise self.source

    def getsockname(self) -> tuple[str, int]:
        assert isinstance(self.source, str)
        return (self.source, 40000)

    def sendto(self, *args: Any) -> None:
        raise AssertionError("route_source_ipv4 must send nothing")

    send = sendto


def use(monkeypatch: pytest.MonkeyPatch, source: str | OSError) -> None:
    FakeSocket.connected = []

    def make(family: int, kind: int) -> FakeSocket:
        assert (family, kind) == (socket.AF_INET, socket.SOCK_DGRAM)
        return FakeSocket(source)

    monkeypatch.setattr(socket, "socket", make)


def test_the_default_routes_source_address(monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, "10.0.0.5")
    assert private.route_source_ipv4() == "10.0.0.5"
    assert FakeSocket.connected == [private.PROBE_DESTINATION]


def test_no_route_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, OSError(101, "Network is unreachable"))
    assert private.route_source_ipv4() is None


def test_an_unspecified_source_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    use(monkeypatch, "0.0.0.0")
    assert private.route_source_ipv4() is None


def test_the_probe_destination_is_a_documentation_address() -> None:
    import ipaddress

    assert ipaddress.ip_address(private.PROBE_DESTINATION[0]) in ipaddress.ip_network("198.51.100.0/24")
