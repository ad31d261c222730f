"""An in-memory WireGuard backend for tests (and for doctor's tests): no kernel, no socket.

    >>> from wgagent.wireguard.model import Device
    >>> fake = FakeBackend({"wg0": Device("wg0", 51820)})
    >>> fake.transactions
    []

It records every ``remove_peers`` call as one transaction, so tests can assert that a GC
pass removed everything in one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from wgagent.errors import DeviceNotFound, WireGuardError
from wgagent.wireguard.model import Device


class FakeBackend:
    kind = "fake"

    def __init__(self, devices: Mapping[str, Device] | None = None) -> None:
        self.devices: dict[str, Device] = dict(devices or {})
        self.transactions: list[tuple[str, tuple[str, ...]]] = []
        self.fail_get: WireGuardError | None = None
        self.fail_remove: WireGuardError | None = None

    async def get(self, ifname: str) -> Device:
        if self.fail_get is not None:
            raise self.fail_get
        try:
            return self.devices[ifname]
        except KeyError:
            raise DeviceNotFound(f"no interface {ifname}") from None

    async def remove_peers(self, ifname: str, keys: Sequence[str]) -> None:
        if self.fail_remove is not None:
            raise self.fail_remove
        device = await self.get(ifname)
        self.transactions.append((ifname, tuple(keys)))
        self.devices[ifname] = device.without(keys)
