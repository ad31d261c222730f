"""The kernel backend against a fake pyroute2 ``WireGuard``.

There is no kernel WireGuard here, so the fake stands in for the socket, not for pyroute2's
decoding: replies are built as the kernel lays them out (``drivers/net/wireguard/netlink.c``:
device attributes in the first message only, peers nested, a peer continued in the next
message under the same key), then decoded by the installed pyroute2's own ``wgmsg``. So the
adapter sees exactly the shapes pyroute2 produces, 0.7.2 under /usr/bin/python3 and 0.9.x in
the venv. Requests go the other way: the adapter's messages are encoded by pyroute2 and the
bytes are parsed here, as the kernel would read them.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic.wireguard import wgmsg

from wgagent.errors import DeviceNotFound, WireGuardError
from wgagent.wireguard.model import key_from_bytes
from wgagent.wireguard.netlink import PEERS_PER_MESSAGE, NetlinkBackend, device_from_messages

NLA_F_NESTED = 0x8000
WG_FAMILY_ID = 30


def nla(kind: int, payload: bytes, nested: bool = False) -> bytes:
    length = 4 + len(payload)
    return struct.pack("HH", length, kind | (NLA_F_NESTED if nested else 0)) + payload + b"\0" * (-length % 4)


def message(attrs: bytes, cmd: int = 0) -> bytes:
    body = struct.pack("BBH", cmd, 1, 0) + attrs
    return struct.pack("IHHII", 16 + len(body), WG_FAMILY_ID, 2, 1, 0) + body


def key(n: int) -> bytes:
    return bytes([n]) * 32


def b64(n: int) -> str:
    return key_from_bytes(key(n))


def endpoint4(addr: str, port: int) -> bytes:
    return struct.pack("H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton(addr) + b"\0" * 8


def endpoint6(addr: str, port: int) -> bytes:
    return (
        struct.pack("H", socket.AF_INET6)
        + struct.pack(">HI", port, 0)
        + socket.inet_pton(socket.AF_INET6, addr)
        + struct.pack(">I", 0)
    )


def allowed(cidr: str) -> bytes:
    addr, mask = cidr.split("/")
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    inner = nla(1, struct.pack("H", fam)) + nla(2, socket.inet_pton(fam, addr)) + nla(3, struct.pack("B", int(mask)))
    return nla(0, inner, nested=True)


def peer(
    n: int,
    *,
    ep: bytes | None = None,
    ips: tuple[str, ...] = (),
    hs: tuple[int, int] = (0, 0),
    rx: int = 0,
    tx: int = 0,
    keepalive: int = 0,
    first_part: bool = True,
) -> bytes:
    attrs = nla(1, key(n))
    if first_part:  # a continuation carries only the key and more allowed IPs
        attrs += nla(2, b"\0" * 32)
        if ep is not None:
            attrs += nla(4, ep)
        attrs += nla(5, struct.pack("H", keepalive))
        attrs += nla(6, struct.pack("qq", *hs))
        attrs += nla(7, struct.pack("Q", rx)) + nla(8, struct.pack("Q", tx))
    attrs += nla(9, b"".join(allowed(c) for c in ips), nested=True)
    if first_part:
        attrs += nla(10, struct.pack("I", 1))
    return nla(0, attrs, nested=True)


def device_attrs(ifname: str, port: int, pub: bytes) -> bytes:
    return (
        nla(6, struct.pack("H", port))
        + nla(7, struct.pack("I", 0))
        + nla(1, struct.pack("I", 4))
        + nla(2, ifname.encode() + b"\0")
        + nla(3, b"\x42" * 32)  # the private key: the adapter must never read it
        + nla(4, pub)
    )


def decode(data: bytes) -> Any:
    msg = wgmsg(data)
    msg.decode()
    return msg


def parse_attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    off = 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("HH", data, off)
        yield kind & ~NLA_F_NESTED, data[off + 4 : off + length]
        off += (length + 3) & ~3


def parse_set(data: bytes) -> tuple[str, list[tuple[bytes, int, int]], int]:
    """A WG_CMD_SET_DEVICE message as the kernel reads it: ifname, [(key, flags, n_attrs)], peers nest length."""
    length, _type, _flags, _seq, _pid = struct.unpack_from("IHHII", data)
    assert length == len(data)
    cmd, version, _ = struct.unpack_from("BBH", data, 16)
    assert (cmd, version) == (1, 1)
    ifname, peers, nest_len = "", [], 0
    for kind, payload in parse_attrs(data[20:]):
        if kind == 2:
            ifname = payload.rstrip(b"\0").decode()
        elif kind == 8:
            nest_len = 4 + len(payload)
            for _, p in parse_attrs(payload):
                attrs = dict(parse_attrs(p))
                peers.append((attrs[1], struct.unpack("I", attrs[3])[0], len(attrs)))
    return ifname, peers, nest_len


class FakeWireGuard:
    """What the adapter uses of pyroute2's WireGuard: info, nlm_request, prid, close."""

    prid = WG_FAMILY_ID

    def __init__(self, dump: list[bytes], *, lazy: bool = False) -> None:
        self.dump = dump
        self.lazy = lazy  # 0.9.x-style: errors surface while iterating
        self.info_error: Exception | None = None
        self.request_error: tuple[int, Exception] | None = None
        self.sent: list[tuple[str, list[tuple[bytes, int, int]], int]] = []
        self.closed = False

    def info(self, ifname: str) -> Any:
        if self.info_error is not None and not self.lazy:
            raise self.info_error
        msgs = [decode(d) for d in self.dump]
        if not self.lazy:
            return msgs

        def gen() -> Iterator[Any]:
            if self.info_error is not None:
                raise self.info_error
            yield from msgs

        return gen()

    def nlm_request(self, msg: Any, msg_type: int, msg_flags: int) -> Any:
        assert msg_type == WG_FAMILY_ID
        assert msg_flags == 0x1 | 0x4  # NLM_F_REQUEST | NLM_F_ACK
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = msg_flags
        msg.encode()
        if self.request_error is not None and len(self.sent) == self.request_error[0]:
            raise self.request_error[1]
        self.sent.append(parse_set(msg.data))
        return iter(()) if self.lazy else []

    def close(self) -> None:
        self.closed = True


def backend(fake: FakeWireGuard) -> NetlinkBackend:
    return NetlinkBackend(factory=lambda: fake, timeout_s=10)


DUMP = [
    message(
        device_attrs("flannel-wg", 51820, key(9))
        + nla(
            8,
            peer(
                1,
                ep=endpoint4("198.51.100.7", 51820),
                ips=("10.42.1.0/24",),
                hs=(1700000000, 250000000),
                rx=4028,
                tx=4157,
                keepalive=25,
            )
            + peer(2, ep=endpoint6("2001:db8::2", 51820), ips=("10.42.2.0/24", "fd00:2::/64"))
            + peer(3, ips=tuple(f"10.43.{i}.0/24" for i in range(3))),
            nested=True,
        )
    ),
    # The kernel ran out of room: peer 3 continues, then more peers; no device attributes.
    message(nla(8, peer(3, ips=("10.43.3.0/24",), first_part=False) + peer(4), nested=True)),
]


@pytest.mark.parametrize("lazy", [False, True], ids=["list-0.7", "generator-0.9"])
async def test_get_maps_pyroute2_messages_to_the_model(lazy: bool) -> None:
    fake = FakeWireGuard(DUMP, lazy=lazy)
    dev = await backend(fake).get("flannel-wg")
    assert fake.closed
    assert (dev.name, dev.listen_port, dev.public_key) == ("flannel-wg", 51820, b64(9))
    assert [p.public_key for p in dev.peers] == [b64(1), b64(2), b64(3), b64(4)]
    p1, p2, p3, p4 = dev.peers
    assert p1.endpoint == "198.51.100.7:51820"
    assert p1.last_handshake == 1700000000.25
    assert (p1.rx_bytes, p1.tx_bytes, p1.keepalive, p1.allowed_ips) == (4028, 4157, 25, ("10.42.1.0/24",))
    assert p2.endpoint == "[2001:db8::2]:51820"
    assert p2.allowed_ips == ("10.42.2.0/24", "fd00:2::/64")
    assert (p2.last_handshake, p2.keepalive) == (None, None)
    assert p3.allowed_ips == ("10.43.0.0/24", "10.43.1.0/24", "10.43.2.0/24", "10.43.3.0/24")  # merged
    assert (p4.endpoint, p4.allowed_ips) == (None, ())


def test_private_key_never_reaches_the_model() -> None:
    dev = device_from_messages("wg0", [decode(d) for d in DUMP])
    assert key_from_bytes(b"\x42" * 32) not in repr(dev)


def test_a_device_without_keys_has_none() -> None:
    dev = device_from_messages("wg0", [decode(message(device_attrs("wg0", 0, b"\0" * 32)))])
    assert (dev.listen_port, dev.public_key, dev.peers) == (None, None, ())


async def test_removal_is_batched_with_the_kernels_remove_flag() -> None:
    fake = FakeWireGuard(DUMP)
    keys = [key_from_bytes(i.to_bytes(4, "big") * 8) for i in range(2 * PEERS_PER_MESSAGE + 500)]
    await backend(fake).remove_peers("flannel-wg", keys)
    assert fake.closed
    assert [len(peers) for _, peers, _ in fake.sent] == [PEERS_PER_MESSAGE, PEERS_PER_MESSAGE, 500]
    sent_keys = []
    for ifname, peers, nest_len in fake.sent:
        assert ifname == "flannel-wg"
        assert nest_len < 1 << 16  # one nested attribute: its length field is 16 bits
        for raw, flags, n_attrs in peers:
            assert flags == 1  # WGPEER_F_REMOVE_ME; pyroute2 0.7.2's constant of that name is 0
            assert n_attrs == 2  # key and flags, nothing else
            sent_keys.append(key_from_bytes(raw))
    assert sent_keys == keys


async def test_removing_nothing_sends_nothing() -> None:
    fake = FakeWireGuard(DUMP)
    await backend(fake).remove_peers("flannel-wg", [])
    assert fake.sent == []


@pytest.mark.parametrize(
    ("code", "cls", "message"),
    [
        (19, DeviceNotFound, "no interface flannel-wg"),
        (95, DeviceNotFound, "flannel-wg is not a WireGuard interface"),
        (1, WireGuardError, "permission denied; wgagent needs CAP_NET_ADMIN"),
        (105, WireGuardError, r"reading the device failed: No buffer space available \(netlink error 105\)"),
    ],
)
@pytest.mark.parametrize("lazy", [False, True], ids=["list-0.7", "generator-0.9"])
async def test_netlink_errors_are_translated_once(code: int, cls: type[Exception], message: str, lazy: bool) -> None:
    fake = FakeWireGuard(DUMP, lazy=lazy)
    fake.info_error = NetlinkError(code)
    with pytest.raises(cls, match=message) as err:
        await backend(fake).get("flannel-wg")
    assert isinstance(err.value.__cause__, NetlinkError)
    assert fake.closed


async def test_no_wireguard_family_is_device_not_found() -> None:
    def factory() -> Any:
        raise NetlinkError(2, "No such file or directory")

    with pytest.raises(DeviceNotFound, match="no generic netlink family 'wireguard'"):
        await NetlinkBackend(factory=factory).get("flannel-wg")


async def test_a_failed_batch_says_how_far_it_got() -> None:
    fake = FakeWireGuard(DUMP)
    fake.request_error = (1, NetlinkError(22))
    keys = [key_from_bytes(i.to_bytes(4, "big") * 8) for i in range(PEERS_PER_MESSAGE + 10)]
    with pytest.raises(WireGuardError, match=rf"\({PEERS_PER_MESSAGE} of {len(keys)} removed before\)"):
        await backend(fake).remove_peers("flannel-wg", keys)
    assert fake.closed


async def test_an_unexpected_reply_shape_is_an_error_not_a_crash() -> None:
    class Odd:
        def get_attr(self, name: str) -> Any:
            return [object()] if name == "WGDEVICE_A_PEERS" else None

    fake = FakeWireGuard([])
    fake.info = lambda ifname: [Odd()]  # type: ignore[method-assign]
    with pytest.raises(WireGuardError, match="unexpected netlink reply"):
        await backend(fake).get("wg0")
