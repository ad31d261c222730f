"""STUN (RFC 5389/8489) Binding over UDP: a pure codec, and a client sharing one socket.

    >>> txid = bytes(12)
    >>> binding_request(txid).hex()
    '000100002112a442000000000000000000000000'

``parse_binding_response()`` checks the message type, magic cookie, transaction ID,
length and every attribute's bounds (and FINGERPRINT when present), then returns the
XOR-MAPPED-ADDRESS (type 0x0020, or 0x8020 that pre-RFC 5389 servers such as stund
use), falling back to MAPPED-ADDRESS (0x0001). Anything malformed raises MalformedReply
and nothing else.

``StunClient`` sends every query of a round from one UDP socket per address family, so
the mapped ports different servers report can be compared: a NAT that maps one socket
to different ports per destination ("symmetric") breaks inbound WireGuard.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import cast

from wgagent.config import split_host_port
from wgagent.errors import MalformedReply, SourceError
from wgagent.publicip.model import Answer, IPAddress
from wgagent.publicip.sources import BUDGET_SHARE, gather_within

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111
ATTR_MAPPED_ADDRESS = 0x0001
ATTR_ERROR_CODE = 0x0009
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_XOR_MAPPED_ADDRESS_OLD = 0x8020
ATTR_FINGERPRINT = 0x8028
FINGERPRINT_XOR = 0x5354554E
HEADER = struct.Struct("!HHI12s")

RTO_S = 0.5
"""Initial retransmission timeout (RFC 8489 §6.2.1); doubled after every retransmission."""


@dataclass(frozen=True)
class Mapped:
    ip: IPAddress
    port: int


def new_transaction_id() -> bytes:
    return os.urandom(12)


def binding_request(txid: bytes) -> bytes:
    """A Binding Request without attributes."""
    if len(txid) != 12:
        raise ValueError("a STUN transaction ID is 12 bytes")
    return HEADER.pack(BINDING_REQUEST, 0, MAGIC_COOKIE, txid)


def parse_binding_response(data: bytes, txid: bytes) -> Mapped:
    """The mapped address in a Binding success response to ``txid``; MalformedReply if not."""
    if len(data) < HEADER.size:
        raise MalformedReply(f"{len(data)} bytes is shorter than a STUN header")
    msg_type, length, cookie, got_txid = HEADER.unpack_from(data)
    if msg_type & 0xC000:
        raise MalformedReply("not a STUN message (first two bits set)")
    if cookie != MAGIC_COOKIE:
        raise MalformedReply(f"wrong magic cookie 0x{cookie:08x}")
    if got_txid != txid:
        raise MalformedReply("transaction ID does not match the request")
    if length != len(data) - HEADER.size or length % 4:
        raise MalformedReply(f"length field {length} does not fit a {len(data)}-byte message")
    attrs = _attributes(data)
    if msg_type == BINDING_ERROR:
        raise MalformedReply("server answered an error: " + _error_code(attrs.get(ATTR_ERROR_CODE)))
    if msg_type != BINDING_SUCCESS:
        raise MalformedReply(f"message type 0x{msg_type:04x} is not a Binding success response")
    for attr in (ATTR_XOR_MAPPED_ADDRESS, ATTR_XOR_MAPPED_ADDRESS_OLD):
        if attr in attrs:
            return _address(attrs[attr], xor_with=struct.pack("!I", MAGIC_COOKIE) + txid)
    if ATTR_MAPPED_ADDRESS in attrs:
        return _address(attrs[ATTR_MAPPED_ADDRESS], xor_with=None)
    raise MalformedReply("no XOR-MAPPED-ADDRESS or MAPPED-ADDRESS in the response")


def _attributes(data: bytes) -> dict[int, bytes]:
    """Attribute type -> value (the first of each type), every bound checked."""
    attrs: dict[int, bytes] = {}
    offset = HEADER.size
    while offset < len(data):
        if offset + 4 > len(data):
            raise MalformedReply("truncated attribute header")
        attr_type, attr_len = struct.unpack_from("!HH", data, offset)
        start = offset + 4
        end = start + attr_len
        padded = start + (attr_len + 3) // 4 * 4
        if padded > len(data):
            raise MalformedReply(f"attribute 0x{attr_type:04x} of {attr_len} bytes runs past the message")
        value = data[start:end]
        if attr_type == ATTR_FINGERPRINT:
            if padded != len(data) or attr_len != 4:
                raise MalformedReply("FINGERPRINT is not a 4-byte last attribute")
            expected = (zlib.crc32(data[:offset]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
            if struct.unpack("!I", value)[0] != expected:
                raise MalformedReply("FINGERPRINT does not match")
        attrs.setdefault(attr_type, value)
        offset = padded
    return attrs


def _address(value: bytes, *, xor_with: bytes | None) -> Mapped:
    if len(value) < 4:
        raise MalformedReply("address attribute shorter than 4 bytes")
    family, port = struct.unpack_from("!xBH", value)
    raw = value[4:]
    if family == 0x01 and len(raw) == 4:
        size = 4
    elif family == 0x02 and len(raw) == 16:
        size = 16
    else:
        raise MalformedReply(f"address attribute with family 0x{family:02x} and {len(raw)} address bytes")
    if xor_with is not None:
        port ^= MAGIC_COOKIE >> 16
        raw = bytes(a ^ b for a, b in zip(raw, xor_with[:size], strict=True))
    if port == 0:
        raise MalformedReply("mapped port 0")
    ip: IPAddress = IPv4Address(raw) if size == 4 else IPv6Address(raw)
    return Mapped(ip, port)


def _error_code(value: bytes | None) -> str:
    if value is None or len(value) < 4:
        return "no ERROR-CODE"
    code = (value[2] & 0x07) * 100 + value[3] % 100
    reason = value[4:].decode("utf-8", "replace")[:80]
    return " ".join(f"{code} {reason}".split())


# --- the UDP adapter ---------------------------------------------------------------------------


class _Endpoint(asyncio.DatagramProtocol):
    """One unconnected UDP socket; replies are matched to queries by transaction ID."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[bytes, tuple[tuple[str, int], asyncio.Future[Mapped]]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if len(data) < HEADER.size:
            return
        waiting = self.pending.get(data[8:20])
        if waiting is None:
            return  # a late retransmission's answer, or a stray packet
        expected, future = waiting
        if (_norm(addr[0]), addr[1]) != expected or future.done():
            return  # only the server we asked may answer
        try:
            future.set_result(parse_binding_response(data, data[8:20]))
        except MalformedReply as exc:
            future.set_exception(exc)

    def error_received(self, exc: Exception) -> None:
        pass  # an unconnected socket: a refused query simply times out

    @property
    def local_port(self) -> int | None:
        if self.transport is None:
            return None
        sockname = self.transport.get_extra_info("sockname")
        return int(sockname[1]) if sockname else None


def _norm(host: object) -> str:
    text = str(host).split("%", 1)[0]
    with contextlib.suppress(ValueError):
        return str(ip_address(text))
    return text


class StunClient:
    """Sends Binding Requests from one socket per address family until ``close()``.

    The part closes it after every round, so each round uses fresh sockets.
    """

    def __init__(self) -> None:
        self._endpoints: dict[int, _Endpoint] = {}
        self._lock = asyncio.Lock()

    async def query(self, server: tuple[str, int], family: int) -> tuple[Mapped, int | None]:
        """Ask ``server`` (an address, not a name); the mapped address and our local port.

        Retransmits with RTO_S doubling until cancelled (the source's timeout cancels it).
        """
        endpoint = await self._endpoint(family)
        host = _norm(server[0])
        txid = new_transaction_id()
        future: asyncio.Future[Mapped] = asyncio.get_running_loop().create_future()
        endpoint.pending[txid] = ((host, server[1]), future)
        request = binding_request(txid)
        rto = RTO_S
        try:
            while True:
                assert endpoint.transport is not None
                try:
                    endpoint.transport.sendto(request, (host, server[1]))
                except OSError as exc:
                    raise SourceError(f"cannot send to {host} port {server[1]}: {exc.strerror or exc}") from exc
                done, _ = await asyncio.wait({future}, timeout=rto)
                if done:
                    return future.result(), endpoint.local_port
                rto *= 2
        finally:
            endpoint.pending.pop(txid, None)

    async def _endpoint(self, family: int) -> _Endpoint:
        async with self._lock:
            endpoint = self._endpoints.get(family)
            if endpoint is None or endpoint.transport is None or endpoint.transport.is_closing():
                bind = ("0.0.0.0", 0) if family == socket.AF_INET else ("::", 0)  # noqa: S104
                try:
                    _, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
                        _Endpoint, local_addr=bind, family=family
                    )
                except OSError as exc:
                    raise SourceError(f"cannot open a UDP socket: {exc.strerror or exc}") from exc
                endpoint = protocol
                self._endpoints[family] = endpoint
            return endpoint

    def close(self) -> None:
        for endpoint in self._endpoints.values():
            if endpoint.transport is not None:
                endpoint.transport.close()
        self._endpoints.clear()


class StunSource:
    """One STUN server (``host:port``), asked over IPv4 and IPv6 where it has addresses."""

    kind = "stun"
    why_not = ""

    def __init__(self, server: str, client: StunClient, timeout_s: float) -> None:
        self.server = server
        self.name = f"stun:{server}"
        self.client = client
        self.timeout_s = timeout_s

    async def observe(self) -> Sequence[Answer] | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s * BUDGET_SHARE
        host, port = split_host_port(self.server)
        targets = await resolve(host, port, socket.SOCK_DGRAM)
        return await gather_within(
            {addr[0]: self._ask(addr, family) for family, addr in targets}, deadline - loop.time()
        )

    async def _ask(self, addr: tuple[str, int], family: int) -> Answer:
        mapped, local_port = await self.client.query(addr, family)
        return Answer(mapped.ip, server=ip_address(_norm(addr[0])), port=mapped.port, local_port=local_port)


async def resolve(host: str, port: int, socktype: int) -> list[tuple[int, tuple[str, int]]]:
    """The first address of each family for ``host`` (an address literal is used as is)."""
    try:
        literal = ip_address(host)
    except ValueError:
        pass
    else:
        return [(socket.AF_INET if literal.version == 4 else socket.AF_INET6, (str(literal), port))]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socktype)
    except socket.gaierror as exc:
        raise SourceError(f"cannot resolve {host}: {exc.strerror or exc}") from exc
    out: dict[int, tuple[str, int]] = {}
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and family not in out:
            out[family] = (str(sockaddr[0]), int(sockaddr[1]))
    if not out:
        raise SourceError(f"no IPv4 or IPv6 address for {host}")
    return sorted(out.items())
