"""The UAPI codec (no sockets) and the asyncio adapter against a stand-in server on a real unix socket."""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgagent.errors import DeviceNotFound, WireGuardError
from wgagent.wireguard.model import key_from_bytes
from wgagent.wireguard.uapi import (
    GetParser,
    UapiBackend,
    _LineParser,
    _parse_fast,
    encode_remove,
    errno_text,
    parse_errno,
    parse_get,
    x25519_public,
)

# RFC 7748 section 6.1: Alice's and Bob's key pairs.
ALICE_PRIV = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
ALICE_PUB = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
BOB_PRIV = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
BOB_PUB = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"

PEER1 = "ab" * 32
PEER2 = "0bdc44a1841c7ba15ac9b8e6a71f11db9f078665243272af434e86b7730f047d"
PSK = "11" * 32

# What wireguard-go 0.0.20220316 answers (captured, keys replaced), device first, then peers.
REPLY = f"""private_key={ALICE_PRIV}
listen_port=51820
fwmark=7
public_key={PEER1}
preshared_key={"00" * 32}
protocol_version=1
last_handshake_time_sec=0
last_handshake_time_nsec=0
tx_bytes=0
rx_bytes=0
persistent_keepalive_interval=0
public_key={PEER2}
preshared_key={PSK}
protocol_version=1
endpoint=198.51.100.9:51820
last_handshake_time_sec=1700000000
last_handshake_time_nsec=500000000
tx_bytes=4157
rx_bytes=4028
persistent_keepalive_interval=25
allowed_ip=10.42.1.0/24
allowed_ip=fd00::/64
errno=0

""".encode()


def b64(hexkey: str) -> str:
    return key_from_bytes(bytes.fromhex(hexkey))


# --- the codec ---------------------------------------------------------------------------------


def test_x25519_matches_rfc7748_vectors() -> None:
    assert x25519_public(bytes.fromhex(ALICE_PRIV)).hex() == ALICE_PUB
    assert x25519_public(bytes.fromhex(BOB_PRIV)).hex() == BOB_PUB


def test_get_reply_of_wireguard_go_parses_into_the_shared_model() -> None:
    dev = parse_get(REPLY, "wg0")
    assert dev.name == "wg0"
    assert dev.listen_port == 51820
    assert dev.public_key == b64(ALICE_PUB)  # derived from the private key, which is dropped
    silent, live = dev.peers
    assert silent.public_key == b64(PEER1)
    assert (silent.endpoint, silent.allowed_ips, silent.last_handshake, silent.keepalive) == (None, (), None, None)
    assert live.public_key == b64(PEER2)
    assert live.endpoint == "198.51.100.9:51820"
    assert live.allowed_ips == ("10.42.1.0/24", "fd00::/64")
    assert live.last_handshake == 1700000000.5
    assert (live.rx_bytes, live.tx_bytes, live.keepalive) == (4028, 4157, 25)


def test_no_secret_reaches_the_model() -> None:
    dev = parse_get(REPLY, "wg0")
    text = repr(dev)
    for secret in (ALICE_PRIV, PSK, b64(ALICE_PRIV), b64(PSK)):
        assert secret not in text


def test_device_without_private_key_or_port_has_none() -> None:
    dev = parse_get(f"private_key={'00' * 32}\nlisten_port=0\nerrno=0\n\n".encode(), "wg0")
    assert (dev.public_key, dev.listen_port, dev.peers) == (None, None, ())


def test_unknown_keys_are_skipped() -> None:
    dev = parse_get(f"listen_port=1\nfuture_thing=x\npublic_key={PEER1}\nnew_peer_field=y\nerrno=0\n\n".encode(), "w")
    assert dev.peers[0].public_key == b64(PEER1)


def test_nonzero_errno_is_an_error_with_its_meaning() -> None:
    with pytest.raises(WireGuardError, match=r"errno -22 \(Invalid argument\)"):
        parse_get(b"errno=-22\n\n", "wg0")
    assert errno_text(-2) == "errno -2 (No such file or directory)"


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        pytest.param(b"listen_port\nerrno=0\n\n", r"line 1 has no '='", id="no-equals"),
        pytest.param(b"listen_port=abc\nerrno=0\n\n", r"line 1 'listen_port' is not a number", id="bad-number"),
        pytest.param(f"public_key={PEER1}\ntx_bytes=-5\nerrno=0\n\n".encode(), r"line 2 'tx_bytes'", id="negative"),
        pytest.param(b"public_key=zz\nerrno=0\n\n", r"line 1 'public_key' is not a 32-byte hex key", id="bad-key"),
        pytest.param(b"public_key=abcd\nerrno=0\n\n", r"'public_key' is not a 32-byte hex key", id="short-key"),
        pytest.param(f"public_key={PEER1}\nallowed_ip=10.0.0.1\nerrno=0\n\n".encode(), r"not a CIDR", id="cidr"),
        pytest.param(b"listen_port=\xff\nerrno=0\n\n", r"line 1 is not ASCII", id="not-ascii"),
        pytest.param(b"errno=0\nlisten_port=1\n\n", r"'listen_port' follows errno=", id="after-errno"),
        pytest.param(b"listen_port=1\n\n", r"no errno= line", id="no-errno"),
        pytest.param(b"errno=0\n\nleftover", r"follows the blank line", id="trailing"),
        pytest.param(b"listen_port=1\nerrno=0\n", r"ended early", id="truncated"),
    ],
)
def test_malformed_replies_are_clear_errors(reply: bytes, message: str) -> None:
    with pytest.raises(WireGuardError, match=message):
        parse_get(reply, "wg0")


def test_a_malformed_private_key_is_not_echoed() -> None:
    secret = "f" * 63 + "g"
    with pytest.raises(WireGuardError) as err:
        parse_get(f"private_key={secret}\nerrno=0\n\n".encode(), "wg0")
    assert secret not in str(err.value)
    assert "'private_key' is not a 32-byte hex key" in str(err.value)


def test_reply_larger_than_the_bound_is_refused() -> None:
    parser = GetParser("wg0", max_bytes=1000)
    with pytest.raises(WireGuardError, match="larger than 1000 bytes"):
        for _ in range(100):
            parser.feed(f"public_key={PEER1}\n".encode())


def _huge_reply(n: int) -> tuple[bytes, list[str]]:
    lines = [f"private_key={BOB_PRIV}", "listen_port=51820"]
    keys = []
    for i in range(n):
        raw = i.to_bytes(4, "big") * 8
        keys.append(key_from_bytes(raw))
        lines += [
            f"public_key={raw.hex()}",
            f"preshared_key={'00' * 32}",
            "protocol_version=1",
            f"endpoint=203.0.113.{i % 250 + 1}:51820",
            f"last_handshake_time_sec={i}",
            "last_handshake_time_nsec=0",
            "tx_bytes=92",
            "rx_bytes=0",
            "persistent_keepalive_interval=25",
            f"allowed_ip=10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32",
        ]
    return ("\n".join(lines) + "\nerrno=0\n\n").encode(), keys


def test_huge_reply_in_odd_chunks() -> None:
    data, keys = _huge_reply(50_000)
    parser = GetParser("wg0")
    done = False
    for start in range(0, len(data), 65_521):  # a prime: chunks split lines anywhere
        done = parser.feed(data[start : start + 65_521])
    assert done
    dev = parser.result()
    assert [p.public_key for p in dev.peers] == keys
    assert dev.peers[-1].allowed_ips == ("10.0.195.79/32",)
    assert dev.peers[0].last_handshake is None and dev.peers[1].last_handshake == 1.0


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(REPLY)), max_size=12))
def test_chunk_boundaries_do_not_matter(cuts: list[int]) -> None:
    bounds = sorted({0, len(REPLY), *cuts})
    parser = GetParser("wg0")
    for a, b in itertools.pairwise(bounds):
        parser.feed(REPLY[a:b])
    assert parser.result() == parse_get(REPLY, "wg0")


num = st.integers(min_value=0, max_value=2**40).map(str) | st.sampled_from(["0", "00", "007"])


@st.composite
def wireguard_go_replies(draw: st.DrawFn) -> bytes:
    """Replies in wireguard-go's layout, with every optional line present or not."""
    lines = []
    if draw(st.booleans()):
        lines.append(f"private_key={draw(st.sampled_from([ALICE_PRIV, '00' * 32]))}")
    if draw(st.booleans()):
        lines.append(f"listen_port={draw(num)}")
    for i in range(draw(st.integers(min_value=0, max_value=4))):
        lines += [f"public_key={i:02x}{'ab' * 31}", f"preshared_key={PSK}", "protocol_version=1"]
        if draw(st.booleans()):
            lines.append(f"endpoint={draw(st.sampled_from(['198.51.100.1:51820', '[2001:db8::1]:51820', '']))}")
        lines += [f"last_handshake_time_sec={draw(num)}", f"last_handshake_time_nsec={draw(num)}"]
        lines += [f"tx_bytes={draw(num)}", f"rx_bytes={draw(num)}", f"persistent_keepalive_interval={draw(num)}"]
        lines += [f"allowed_ip=10.{i}.{j}.0/24" for j in range(draw(st.integers(min_value=0, max_value=3)))]
    lines.append(f"errno={draw(st.sampled_from(['0', '0', '-22']))}")
    return ("\n".join(lines) + "\n").encode()


@settings(max_examples=200, deadline=None)
@given(wireguard_go_replies())
def test_fast_path_agrees_with_the_line_parser(content: bytes) -> None:
    try:
        slow = _LineParser("wg0", "x").parse(content)
    except WireGuardError as exc:
        with pytest.raises(WireGuardError, match="errno -22"):
            _parse_fast(content, "wg0", "x")
        assert "errno -22" in str(exc)
        return
    fast = _parse_fast(content, "wg0", "x")
    assert fast is not None  # wireguard-go's layout takes the fast path
    assert fast == slow


def test_another_layout_takes_the_line_parser() -> None:
    # boringtun-like: other order, an unknown key; same meaning.
    content = (
        f"listen_port=51820\nprivate_key={ALICE_PRIV}\npublic_key={PEER2}\nallowed_ip=10.42.1.0/24\nallowed_ip=fd00::/64\n"
        "endpoint=198.51.100.9:51820\nrx_bytes=4028\ntx_bytes=4157\nlast_handshake_time_nsec=500000000\n"
        "last_handshake_time_sec=1700000000\nfuture=1\npersistent_keepalive_interval=25\nerrno=0\n"
    ).encode()
    assert _parse_fast(content, "wg0", "x") is None
    dev = parse_get(content + b"\n", "wg0")
    assert dev.public_key == b64(ALICE_PUB) and dev.listen_port == 51820
    assert dev.peers[0] == parse_get(REPLY, "wg0").peers[1]


def test_a_peer_out_of_layout_between_two_in_it_takes_the_line_parser() -> None:
    # The fast path must not skip a peer it cannot read and go on with the next one.
    odd = f"public_key={'cd' * 32}\nfuture=1\nlast_handshake_time_sec=7\nlast_handshake_time_nsec=0\n"
    head, _, rest = REPLY.decode().partition(f"public_key={PEER2}")
    content = (head + odd + f"public_key={PEER2}" + rest).encode()
    assert _parse_fast(content.removesuffix(b"\n"), "wg0", "x") is None
    dev = parse_get(content, "wg0")
    assert [p.public_key for p in dev.peers] == [b64(PEER1), b64("cd" * 32), b64(PEER2)]
    assert dev.peers[1].last_handshake == 7.0


def test_encode_remove_is_one_transaction() -> None:
    keys = [b64(PEER1), b64(PEER2)]
    assert encode_remove(keys) == (
        f"set=1\npublic_key={PEER1}\nremove=true\npublic_key={PEER2}\nremove=true\n\n".encode()
    )
    assert encode_remove([]) == b"set=1\n\n"
    with pytest.raises(ValueError, match="not a base64 WireGuard key"):
        encode_remove(["not-a-key"])


@pytest.mark.parametrize(
    ("reply", "code"),
    [(b"errno=0\n\n", 0), (b"errno=-22\n\n", -22), (b"errno=5\n\n", 5)],
)
def test_parse_errno(reply: bytes, code: int) -> None:
    assert parse_errno(reply) == code


@pytest.mark.parametrize("reply", [b"", b"errno=0\n", b"errno=x\n\n", b"errno=0\nfoo=1\n\n", b"ok\n\n"])
def test_parse_errno_rejects_malformed(reply: bytes) -> None:
    with pytest.raises(WireGuardError, match="malformed set reply"):
        parse_errno(reply)


# --- the adapter, against a stand-in server on a real unix socket -------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def uapi_dir() -> Iterator[str]:
    # Short: a unix socket path must fit in 108 bytes.
    d = tempfile.mkdtemp(prefix="wgu", dir="/tmp")
    yield d
    for name in os.listdir(d):
        os.unlink(os.path.join(d, name))
    os.rmdir(d)


async def _serve(path: str, handler: Handler) -> asyncio.AbstractServer:
    return await asyncio.start_unix_server(handler, path)


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\n\n")


async def test_get_over_the_socket_in_small_writes(uapi_dir: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await _read_request(reader) == b"get=1\n\n"
        for i in range(0, len(REPLY), 7):
            writer.write(REPLY[i : i + 7])
            await writer.drain()
        await reader.read()  # wireguard-go keeps the connection open for more requests

    server = await _serve(os.path.join(uapi_dir, "wg0.sock"), handler)
    async with server:
        dev = await UapiBackend(uapi_dir, timeout_s=5).get("wg0")
    assert dev == parse_get(REPLY, "wg0")


async def test_remove_sends_one_set_and_checks_errno(uapi_dir: str) -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await _read_request(reader)
        seen.append(request)
        writer.write(b"errno=0\n\n" if len(seen) == 1 else b"errno=-22\n\n")
        await writer.drain()

    server = await _serve(os.path.join(uapi_dir, "wg0.sock"), handler)
    backend = UapiBackend(uapi_dir, timeout_s=5)
    keys = [b64(PEER1), b64(PEER2)]
    async with server:
        await backend.remove_peers("wg0", keys)
        with pytest.raises(WireGuardError, match=r"removing peers from wg0 failed: errno -22"):
            await backend.remove_peers("wg0", keys)
        await backend.remove_peers("wg0", [])  # nothing to send, nothing sent
    assert seen == [encode_remove(keys), encode_remove(keys)]


async def test_missing_and_stale_sockets_are_device_not_found(uapi_dir: str) -> None:
    backend = UapiBackend(uapi_dir, timeout_s=5)
    with pytest.raises(DeviceNotFound, match="no UAPI socket"):
        await backend.get("wg0")
    server = await _serve(os.path.join(uapi_dir, "wg1.sock"), lambda r, w: asyncio.sleep(0))
    server.close()
    await server.wait_closed()
    if not os.path.exists(os.path.join(uapi_dir, "wg1.sock")):  # newer Pythons unlink on close
        import socket

        s = socket.socket(socket.AF_UNIX)
        s.bind(os.path.join(uapi_dir, "wg1.sock"))
        s.close()
    with pytest.raises(DeviceNotFound, match="nothing listens"):
        await backend.get("wg1")


async def test_a_silent_server_times_out_with_a_clear_error(uapi_dir: str) -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    server = await _serve(os.path.join(uapi_dir, "wg0.sock"), handler)
    async with server:
        with pytest.raises(WireGuardError, match=r"no complete get reply within 0.2 s"):
            await UapiBackend(uapi_dir, timeout_s=0.2).get("wg0")
        release.set()


async def test_a_reply_cut_short_is_an_error(uapi_dir: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(REPLY[:100])
        await writer.drain()
        writer.close()

    server = await _serve(os.path.join(uapi_dir, "wg0.sock"), handler)
    async with server:
        with pytest.raises(WireGuardError, match="ended early"):
            await UapiBackend(uapi_dir, timeout_s=5).get("wg0")


def test_keys_in_the_model_are_base64_of_the_hex_on_the_wire() -> None:
    assert base64.b64decode(b64(PEER2)).hex() == PEER2


async def test_a_get_sent_early_is_read_later_on_the_same_connection(uapi_dir: str) -> None:
    """``send_get`` (``wgagent gc``, before it imports the rest of itself) sends the request
    and nothing else; ``get`` reads that reply and asks nothing more; a second get asks anew."""
    requests: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                requests.append(await _read_request(reader))
            except asyncio.IncompleteReadError:
                return
            writer.write(REPLY)
            await writer.drain()

    server = await _serve(os.path.join(uapi_dir, "wg0.sock"), handler)
    backend = UapiBackend(uapi_dir, timeout_s=5)
    async with server:
        backend.send_get("wg0")  # blocking: the server's loop has not run yet
        assert requests == []
        assert await backend.get("wg0") == parse_get(REPLY, "wg0")
        assert await backend.get("wg0") == parse_get(REPLY, "wg0")
    assert requests == [b"get=1\n\n", b"get=1\n\n"]


async def test_an_early_get_that_cannot_connect_leaves_the_error_to_get(uapi_dir: str) -> None:
    backend = UapiBackend(uapi_dir, timeout_s=5)
    backend.send_get("wg0")  # no socket: nothing is kept, nothing raised
    with pytest.raises(DeviceNotFound, match="no UAPI socket"):
        await backend.get("wg0")
