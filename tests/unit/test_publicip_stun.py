"""STUN: the codec against RFC 5769's vectors and hand-made damage, fuzzed; the UDP client on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from ipaddress import ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import ipservices
from wgagent.errors import MalformedReply, SourceError
from wgagent.publicip.sources import observe_all
from wgagent.publicip.stun import (
    MAGIC_COOKIE,
    Mapped,
    StunClient,
    StunSource,
    _Endpoint,
    binding_request,
    parse_binding_response,
)

# RFC 5769 §2.2 and §2.3: sample responses with SOFTWARE, XOR-MAPPED-ADDRESS,
# MESSAGE-INTEGRITY and FINGERPRINT.
TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
RFC5769_IPV4 = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)
RFC5769_IPV6 = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    "00080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c"
)


def response(attrs: bytes, *, msg_type: int = 0x0101, cookie: int = MAGIC_COOKIE, txid: bytes = TXID) -> bytes:
    return struct.pack("!HHI", msg_type, len(attrs), cookie) + txid + attrs


def attr(attr_type: int, value: bytes) -> bytes:
    return struct.pack("!HH", attr_type, len(value)) + value + b"\x00" * (-len(value) % 4)


def mapped_v4(ip: str, port: int, *, xor: bool) -> bytes:
    raw = ip_address(ip).packed
    if xor:
        port ^= MAGIC_COOKIE >> 16
        raw = bytes(a ^ b for a, b in zip(raw, struct.pack("!I", MAGIC_COOKIE), strict=True))
    return struct.pack("!BBH", 0, 1, port) + raw


def test_binding_request_is_a_bare_header() -> None:
    req = binding_request(TXID)
    assert req == bytes.fromhex("000100002112a442") + TXID
    with pytest.raises(ValueError):
        binding_request(b"short")


def test_rfc5769_ipv4_response() -> None:
    mapped = parse_binding_response(RFC5769_IPV4, TXID)
    assert (str(mapped.ip), mapped.port) == ("192.0.2.1", 32853)


def test_rfc5769_ipv6_response() -> None:
    mapped = parse_binding_response(RFC5769_IPV6, TXID)
    assert (str(mapped.ip), mapped.port) == ("2001:db8:1234:5678:11:2233:4455:6677", 32853)


def test_a_damaged_fingerprint_is_rejected() -> None:
    damaged = RFC5769_IPV4[:-1] + bytes([RFC5769_IPV4[-1] ^ 1])
    with pytest.raises(MalformedReply, match="FINGERPRINT"):
        parse_binding_response(damaged, TXID)


def test_xor_mapped_address_is_preferred_over_mapped_address() -> None:
    data = response(
        attr(0x0001, mapped_v4("10.0.0.1", 1, xor=False)) + attr(0x0020, mapped_v4("203.0.113.1", 4000, xor=True))
    )
    mapped = parse_binding_response(data, TXID)
    assert (str(mapped.ip), mapped.port) == ("203.0.113.1", 4000)


def test_the_pre_rfc5389_xor_type_0x8020_is_understood() -> None:
    mapped = parse_binding_response(response(attr(0x8020, mapped_v4("203.0.113.1", 4000, xor=True))), TXID)
    assert (str(mapped.ip), mapped.port) == ("203.0.113.1", 4000)


def test_mapped_address_is_the_fallback() -> None:
    mapped = parse_binding_response(response(attr(0x0001, mapped_v4("203.0.113.1", 4000, xor=False))), TXID)
    assert (str(mapped.ip), mapped.port) == ("203.0.113.1", 4000)


GOOD_ATTR = attr(0x0020, mapped_v4("203.0.113.1", 4000, xor=True))
MALFORMED = {
    "shorter than a header": (b"\x01\x01\x00\x00", "shorter than a STUN header"),
    "first two bits set": (response(GOOD_ATTR, msg_type=0xC101), "not a STUN message"),
    "wrong magic cookie": (response(GOOD_ATTR, cookie=0xDEADBEEF), "magic cookie"),
    "another transaction": (response(GOOD_ATTR, txid=bytes(12)), "transaction ID"),
    "length field too long": (response(GOOD_ATTR)[:2] + b"\x00\x40" + response(GOOD_ATTR)[4:], "length field"),
    "length not a multiple of 4": (response(GOOD_ATTR) + b"\x00", "length field"),
    "attribute runs past the end": (response(struct.pack("!HH", 0x0020, 200) + b"\x00" * 8), "runs past"),
    "a request, not a response": (response(GOOD_ATTR, msg_type=0x0001), "not a Binding success"),
    "an error response": (
        response(attr(0x0009, struct.pack("!HBB", 0, 4, 20) + b"Unknown Attribute"), msg_type=0x0111),
        "error: 420 Unknown Attribute",
    ),
    "no address attribute": (response(attr(0x8022, b"software")), "no XOR-MAPPED-ADDRESS"),
    "unknown address family": (response(attr(0x0020, struct.pack("!BBH", 0, 3, 1) + b"\x00" * 4)), "family"),
    "IPv4 family with 16 bytes": (response(attr(0x0020, struct.pack("!BBH", 0, 1, 1) + b"\x00" * 16)), "family"),
    "mapped port 0": (response(attr(0x0001, mapped_v4("203.0.113.1", 0, xor=False))), "port 0"),
    "fingerprint not last": (response(attr(0x8028, b"\x00\x00\x00\x00") + GOOD_ATTR), "FINGERPRINT"),
}


@pytest.mark.parametrize(("data", "message"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_responses_are_rejected(data: bytes, message: str) -> None:
    with pytest.raises(MalformedReply, match=message):
        parse_binding_response(data, TXID)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_random_bytes_only_ever_raise_malformed_reply(data: bytes) -> None:
    with contextlib.suppress(MalformedReply):
        parse_binding_response(data, TXID)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80), st.integers(0, 0xFFFF))
def test_fuzz_well_framed_messages_with_random_attributes(body: bytes, msg_type: int) -> None:
    """Past the header checks: random attribute bytes behind a valid header and length."""
    body += b"\x00" * (-len(body) % 4)
    try:
        mapped = parse_binding_response(response(body, msg_type=msg_type & 0x3FFF), TXID)
    except MalformedReply:
        return
    assert 0 < mapped.port < 65536


# --- the UDP client, against the stand-in on loopback ------------------------------------------


async def start(*specs: dict[str, object]) -> ipservices.Services:
    return await ipservices.start([{"kind": "stun", "listen": "127.0.0.1:0", **s} for s in specs])


async def test_two_servers_are_asked_from_one_local_port() -> None:
    services = await start({"name": "a"}, {"name": "b", "mode": "old"})
    client = StunClient()
    try:
        sources = [StunSource(f"127.0.0.1:{services.port(n)}", client, 2.0) for n in ("a", "b")]
        observations = await observe_all(sources)
    finally:
        client.close()
        await services.close()
    assert [o.error for o in observations] == [None, None]
    assert {o.local_port for o in observations} == {observations[0].port}  # loopback: no NAT
    assert all(str(o.ip) == "127.0.0.1" and str(o.server) == "127.0.0.1" for o in observations)


async def test_a_lost_request_is_retransmitted() -> None:
    services = await start({"name": "lossy", "drop_first": 1})
    client = StunClient()
    try:
        answers = await StunSource(f"127.0.0.1:{services.port('lossy')}", client, 3.0).observe()
    finally:
        client.close()
        await services.close()
    assert answers is not None and str(answers[0].ip) == "127.0.0.1"
    assert len(services["lossy"].requests) == 2


async def test_a_malformed_reply_fails_the_source_with_the_reason() -> None:
    services = await start({"name": "bad", "mode": "garbage"})
    client = StunClient()
    try:
        with pytest.raises(MalformedReply, match="magic cookie"):
            await StunSource(f"127.0.0.1:{services.port('bad')}", client, 2.0).observe()
    finally:
        client.close()
        await services.close()


async def test_a_silent_server_fails_within_its_timeout() -> None:
    services = await start({"name": "silent", "mode": "silent"})
    client = StunClient()
    try:
        (obs,) = await observe_all([StunSource(f"127.0.0.1:{services.port('silent')}", client, 0.3)])
    finally:
        client.close()
        await services.close()
    assert obs.ip is None and obs.error is not None and "no answer" in obs.error
    assert obs.elapsed_s < 0.3 * 1.5


async def test_replies_from_anyone_but_the_server_asked_are_ignored() -> None:
    endpoint = _Endpoint()
    future: asyncio.Future[Mapped] = asyncio.get_running_loop().create_future()
    endpoint.pending[TXID] = (("198.51.100.1", 3478), future)
    good = response(GOOD_ATTR)
    endpoint.datagram_received(good, ("198.51.100.1", 3479))  # right host, wrong port
    endpoint.datagram_received(good, ("198.51.100.2", 3478))  # another host
    endpoint.datagram_received(response(GOOD_ATTR, txid=bytes(12)), ("198.51.100.1", 3478))  # stray
    assert not future.done()
    endpoint.datagram_received(good, ("198.51.100.1", 3478))
    assert str(future.result().ip) == "203.0.113.1"


def test_a_malformed_reply_to_a_pending_query_fails_it() -> None:
    loop = asyncio.new_event_loop()
    try:
        endpoint = _Endpoint()
        future: asyncio.Future[Mapped] = loop.create_future()
        endpoint.pending[TXID] = (("198.51.100.1", 3478), future)
        endpoint.datagram_received(response(b"", msg_type=0x0001), ("198.51.100.1", 3478))
        with pytest.raises(MalformedReply):
            future.result()
    finally:
        loop.close()


async def test_an_unresolvable_name_is_a_clear_error() -> None:
    client = StunClient()
    try:
        with pytest.raises(SourceError, match="cannot resolve"):
            await StunSource("no-such-host.invalid:3478", client, 2.0).observe()
    finally:
        client.close()
