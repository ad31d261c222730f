"""The kernel backend's socket side, against a fake kernel socket answering recorded bytes.

:class:`FakeKernel` stands in for the ``AF_NETLINK`` socket, not for the decoding: it reads
each request as the kernel would (``drivers/net/wireguard/netlink.c``), answers the family
lookup as the generic netlink controller does, answers a dump with datagrams recorded from a
real kernel (tests/data, see tests/unit/test_wireguard_genl.py), and a removal with the
``NLMSG_ERROR`` ACK (0 or ``-errno``) the kernel sends. The decoding itself is tested there.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Iterator

import pytest

from tests.uml import wgshow
from wgagent.errors import DeviceNotFound, WireGuardError
from wgagent.wireguard import genl
from wgagent.wireguard.model import key_from_bytes
from wgagent.wireguard.netlink import DUMP_ATTEMPTS, PEERS_PER_MESSAGE, NetlinkBackend, NetlinkSocket

FAMILY = 0x1B


def error(seq: int, code: int) -> bytes:
    """An NLMSG_ERROR as netlink_ack() writes it: -errno, then the request's header."""
    return struct.pack("=IHHII", 36, genl.NLMSG_ERROR, 0, seq, 0) + struct.pack("=i", -code) + bytes(16)


def attrs_of(data: bytes) -> Iterator[tuple[int, bytes]]:
    off = 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        yield kind & genl.NLA_TYPE_MASK, data[off + 4 : off + length]
        off += (length + 3) & ~3


def sockaddr_text(raw: bytes) -> str:
    """``ip:port`` of a ``sockaddr_in``/``sockaddr_in6`` as the kernel reads it (by length)."""
    family, port = struct.unpack_from("=H", raw)[0], struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET and len(raw) == 16:
        return f"{ipaddress.IPv4Address(raw[4:8])}:{port}"
    assert family == socket.AF_INET6 and len(raw) == 28
    return f"[{ipaddress.IPv6Address(raw[8:24])}]:{port}"


class FakeKernel:
    """One socket: each send() is read as a request; recv() returns the queued answers."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.queue: list[bytes] = []
        self.closed = False

    def send(self, data: bytes, /) -> int:
        length, msg_type, flags, seq, _ = struct.unpack_from("=IHHII", data)
        assert length == len(data) and flags & genl.NLM_F_REQUEST
        cmd = data[16]
        attrs = dict(attrs_of(data[20:]))
        if msg_type == genl.GENL_ID_CTRL:
            assert (cmd, attrs[genl.CTRL_ATTR_FAMILY_NAME]) == (genl.CTRL_CMD_GETFAMILY, b"wireguard\0")
            self.queue.append(self.world.family_answer(seq))
        elif cmd == genl.WG_CMD_GET_DEVICE:
            assert msg_type == FAMILY and flags & genl.NLM_F_DUMP
            self.world.gets.append(attrs[genl.WGDEVICE_A_IFNAME].rstrip(b"\0").decode())
            self.queue.extend(self.world.dump_answer(seq))
        else:
            assert (msg_type, cmd, flags & genl.NLM_F_ACK) == (FAMILY, genl.WG_CMD_SET_DEVICE, genl.NLM_F_ACK)
            peers = [dict(attrs_of(p)) for _, p in attrs_of(attrs[genl.WGDEVICE_A_PEERS])]
            code = self.world.set_errors.get(len(self.world.removals) + len(self.world.endpoint_sets), 0)
            flags = {struct.unpack("=I", p[genl.WGPEER_A_FLAGS])[0] for p in peers}
            if flags == {genl.WGPEER_F_REMOVE_ME}:
                self.world.removals.append([key_from_bytes(p[genl.WGPEER_A_PUBLIC_KEY]) for p in peers])
            else:
                assert flags == {genl.WGPEER_F_UPDATE_ONLY}  # never create a peer, never touch its IPs
                assert all(genl.WGPEER_A_ALLOWEDIPS not in p for p in peers)
                self.world.endpoint_sets.append(
                    [
                        (key_from_bytes(p[genl.WGPEER_A_PUBLIC_KEY]), sockaddr_text(p[genl.WGPEER_A_ENDPOINT]))
                        for p in peers
                    ]
                )
            self.queue.append(error(seq, code))
        return len(data)

    def recv(self, size: int, /) -> bytes:
        assert size >= 1 << 16  # room for a 32 KiB dump message and a quoted removal
        if self.world.recv_error is not None:
            raise self.world.recv_error
        return self.queue.pop(0) if self.queue else b""  # a socket that broke

    def close(self) -> None:
        self.closed = True


class World:
    """What the fake kernel knows and answers; and what it was asked."""

    def __init__(self, *dumps: str) -> None:
        self.dumps = list(dumps)
        """Recording names answering successive dumps (the last one repeats)."""
        self.family_error = 0
        self.dump_error = 0
        self.set_errors: dict[int, int] = {}
        self.recv_error: Exception | None = None
        self.gets: list[str] = []
        self.removals: list[list[str]] = []
        self.endpoint_sets: list[list[tuple[str, str]]] = []
        self.sockets: list[FakeKernel] = []

    def family_answer(self, seq: int) -> bytes:
        if self.family_error:
            return error(seq, self.family_error)
        attrs = struct.pack("=HH", 14, genl.CTRL_ATTR_FAMILY_NAME) + b"wireguard\0" + bytes(2)
        attrs += struct.pack("=HHH", 6, genl.CTRL_ATTR_FAMILY_ID, FAMILY) + bytes(2)
        body = struct.pack("=BBH", 1, 2, 0) + attrs
        return struct.pack("=IHHII", 16 + len(body), genl.GENL_ID_CTRL, 0, seq, 0) + body

    def dump_answer(self, seq: int) -> list[bytes]:
        if self.dump_error:
            return [genl.done_message(seq, self.dump_error)]
        name = self.dumps.pop(0) if len(self.dumps) > 1 else self.dumps[0]
        rec = wgshow.recorded()[name]
        assert seq == rec.seq  # the backend numbers its requests as when the dumps were recorded
        return list(rec.datagrams)

    def socket(self, timeout_s: float) -> NetlinkSocket:
        assert timeout_s == 10
        self.sockets.append(FakeKernel(self))
        return self.sockets[-1]

    def backend(self) -> NetlinkBackend:
        return NetlinkBackend(socket_factory=self.socket, timeout_s=10)


@pytest.mark.parametrize("name", ["mixed", "mixed-wg-sized", "bare"])
async def test_get_reads_the_whole_dump_as_wg_shows_it(name: str) -> None:
    world = World(name)
    rec = wgshow.recorded()[name]
    dump = await world.backend().dump(rec.ifname)
    assert world.gets == [rec.ifname]
    assert wgshow.differences(dump, wgshow.parse(rec.wg_show_dump or "")) == []
    assert (await world.backend().get(rec.ifname)) == dump.device
    assert all(s.closed for s in world.sockets) and len(world.sockets) == 2


async def test_an_interrupted_dump_is_read_again_on_a_new_socket() -> None:
    """``kernel_get_device`` in wireguard-tools starts over on EINTR (NLM_F_DUMP_INTR)."""
    world = World("interrupted", "interrupted", "mixed")
    dev = await world.backend().get("flannel-wg")
    assert len(dev.peers) == 403
    assert world.gets == ["flannel-wg"] * 3 and len(world.sockets) == 3
    assert all(s.closed for s in world.sockets)


async def test_a_device_that_never_holds_still_is_an_error() -> None:
    world = World("interrupted")
    with pytest.raises(WireGuardError, match=f"changed during each of {DUMP_ATTEMPTS} reads"):
        await world.backend().get("flannel-wg")
    assert len(world.gets) == DUMP_ATTEMPTS


@pytest.mark.parametrize(
    ("code", "cls", "message"),
    [
        (errno.ENODEV, DeviceNotFound, "^no interface flannel-wg$"),
        (errno.EOPNOTSUPP, DeviceNotFound, "^flannel-wg is not a WireGuard interface$"),
        (errno.EPERM, WireGuardError, "permission denied; wgagent needs CAP_NET_ADMIN"),
        (errno.ENOBUFS, WireGuardError, r"reading the device failed: No buffer space available \(netlink error 105\)"),
    ],
)
async def test_kernel_errors_are_translated_once(code: int, cls: type[Exception], message: str) -> None:
    world = World("mixed")
    world.dump_error = code
    with pytest.raises(cls, match=message) as err:
        await world.backend().get("flannel-wg")
    assert isinstance(err.value.__cause__, OSError) and err.value.__cause__.errno == code
    assert world.sockets[0].closed


async def test_no_wireguard_family_is_device_not_found() -> None:
    world = World("mixed")
    world.family_error = errno.ENOENT
    with pytest.raises(DeviceNotFound, match="no generic netlink family 'wireguard'"):
        await world.backend().get("flannel-wg")
    assert world.gets == []


async def test_a_silent_kernel_is_a_timeout_error() -> None:
    world = World("mixed")
    world.recv_error = TimeoutError("timed out")
    with pytest.raises(WireGuardError, match="did not answer in time"):
        await world.backend().get("flannel-wg")


async def test_no_netlink_socket_at_all_is_a_wireguard_error() -> None:
    def factory(timeout_s: float) -> NetlinkSocket:
        raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")

    with pytest.raises(WireGuardError, match="opening a netlink socket failed: Address family not supported"):
        await NetlinkBackend(socket_factory=factory).get("flannel-wg")


def keys(n: int) -> list[str]:
    return [key_from_bytes(i.to_bytes(4, "big") * 8) for i in range(n)]


async def test_removal_is_one_acked_message_per_thousand_peers() -> None:
    world = World("mixed")
    wanted = keys(2 * PEERS_PER_MESSAGE + 500)
    await world.backend().remove_peers("flannel-wg", wanted)
    assert [len(batch) for batch in world.removals] == [PEERS_PER_MESSAGE, PEERS_PER_MESSAGE, 500]
    assert [k for batch in world.removals for k in batch] == wanted
    assert len(world.sockets) == 1 and world.sockets[0].closed and world.sockets[0].queue == []


async def test_removing_nothing_opens_nothing() -> None:
    world = World("mixed")
    await world.backend().remove_peers("flannel-wg", [])
    assert world.sockets == []


async def test_a_bad_key_is_refused_before_anything_is_sent() -> None:
    world = World("mixed")
    with pytest.raises(ValueError, match="not a WireGuard key"):
        await world.backend().remove_peers("flannel-wg", [*keys(3), "nonsense"])
    assert world.sockets == []


async def test_a_refused_batch_says_how_far_it_got() -> None:
    world = World("mixed")
    world.set_errors = {1: errno.EINVAL}
    wanted = keys(PEERS_PER_MESSAGE + 10)
    with pytest.raises(WireGuardError, match=rf"\({PEERS_PER_MESSAGE} of {len(wanted)} removed before\)"):
        await world.backend().remove_peers("flannel-wg", wanted)
    assert len(world.removals) == 2 and world.sockets[0].closed


@pytest.mark.parametrize("ifname", ["flannel-wg-too-long", "a/b", ""])
async def test_a_name_no_interface_can_have_is_device_not_found(ifname: str) -> None:
    world = World("mixed")
    with pytest.raises(DeviceNotFound, match="not an interface name"):
        await world.backend().get(ifname)
    with pytest.raises(DeviceNotFound, match="not an interface name"):
        await world.backend().remove_peers(ifname, keys(1))
    assert world.sockets == []


async def test_a_socket_that_returns_nothing_is_an_error_not_a_spin() -> None:
    world = World("mixed")
    world.dumps = ["bare"]
    rec = wgshow.recorded()["bare"]
    world.dump_answer = lambda seq: list(rec.datagrams[:0])  # type: ignore[method-assign]
    with pytest.raises(WireGuardError, match="returned nothing before the dump ended"):
        await world.backend().get("wg-bare")
