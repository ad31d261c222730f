"""One plain model of a WireGuard device, shared by the netlink and UAPI backends.

Like wireguard-tools' ``ipc.h``: both backends return a :class:`Device`, and callers never
learn which one answered. Keys are base64 strings as ``wg`` prints them; private keys are
not part of the model at all (an adapter reads one only to derive the public key, if it
must, and drops it). ``None`` means "unset" or "never", never a magic zero::

    >>> p = Peer(public_key="x" * 43 + "=", allowed_ips=("10.42.1.0/24",), last_handshake=None)
    >>> p.handshake_age(now=100.0) is None
    True
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from wgagent.wireguard import REJECT_AFTER_S as REJECT_AFTER_S

KEY_LEN = 32


class Peer(NamedTuple):
    """One peer. Immutable; a NamedTuple rather than a frozen dataclass because a device may
    hold tens of thousands and a get builds them all (construction is ~4x cheaper)."""

    public_key: str
    """Base64, 44 characters."""
    endpoint: str | None = None
    """``198.51.100.7:51820`` or ``[2001:db8::7]:51820``; None when never set or learnt."""
    allowed_ips: tuple[str, ...] = ()
    """CIDRs, as the device reports them (``10.42.1.0/24``)."""
    last_handshake: float | None = None
    """Epoch seconds of the last completed handshake; None: never."""
    rx_bytes: int = 0
    tx_bytes: int = 0
    keepalive: int | None = None
    """Persistent keepalive interval in seconds; None: off."""

    def handshake_age(self, now: float) -> float | None:
        """Seconds since the last handshake (never negative); None if there never was one."""
        if self.last_handshake is None:
            return None
        return max(0.0, now - self.last_handshake)

    def to_json(self) -> dict[str, object]:
        return {
            "public_key": self.public_key,
            "endpoint": self.endpoint,
            "allowed_ips": list(self.allowed_ips),
            "last_handshake": self.last_handshake,
            "rx_bytes": self.rx_bytes,
            "tx_bytes": self.tx_bytes,
            "keepalive": self.keepalive,
        }


@dataclass(frozen=True)
class Device:
    name: str
    listen_port: int | None = None
    """None when the device has no port (not yet configured)."""
    public_key: str | None = None
    """None when the device has no private key yet."""
    peers: tuple[Peer, ...] = ()

    def peer(self, public_key: str) -> Peer | None:
        for p in self.peers:
            if p.public_key == public_key:
                return p
        return None

    def without(self, keys: Iterable[str]) -> Device:
        """This device after removing ``keys`` (what a removal leaves behind)."""
        gone = frozenset(keys)
        return Device(
            self.name, self.listen_port, self.public_key, tuple(p for p in self.peers if p.public_key not in gone)
        )


def key_from_bytes(raw: bytes) -> str:
    if len(raw) != KEY_LEN:
        raise ValueError(f"a WireGuard key is {KEY_LEN} bytes, not {len(raw)}")
    return base64.b64encode(raw).decode("ascii")


def key_to_bytes(key: str) -> bytes:
    """The 32 raw bytes of a base64 key; ValueError naming no secret if it is not one."""
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError("not a base64 WireGuard key") from exc
    if len(raw) != KEY_LEN:
        raise ValueError(f"not a WireGuard key: {len(raw)} bytes instead of {KEY_LEN}")
    return raw
