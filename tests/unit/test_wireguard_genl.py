"""The struct walker over WireGuard's generic netlink dump, against pyroute2 and ``wg show``.

The dumps in tests/data/wg-dumps.json.gz were recorded from a real kernel (Linux 6.1 with
WireGuard, in user-mode Linux: ``python -m tests.uml.record_dumps``), byte for byte, with
``wg show <if> dump`` taken right after each. Here the same bytes are decoded three ways and
must agree field by field: by :mod:`wgagent.wireguard.genl`, by the installed pyroute2's
``wgmsg`` (0.7.2 under Debian's python3, 0.9.x in the venv), and as ``wg`` printed them.
Hand-built messages cover what a healthy kernel does not send.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from pyroute2.netlink.generic.wireguard import wgmsg

from tests.uml import wgshow
from wgagent.errors import WireGuardError
from wgagent.wireguard import genl
from wgagent.wireguard.genl import DumpReader
from wgagent.wireguard.model import Device, Peer, key_from_bytes

FULL = ("mixed", "mixed-wg-sized", "bare")


def read(name: str) -> genl.Dump:
    rec = wgshow.recorded()[name]
    reader = DumpReader(rec.ifname, rec.seq)
    for i, datagram in enumerate(rec.datagrams):
        done = reader.feed(datagram)
        assert done == (i == len(rec.datagrams) - 1)  # DONE comes last, and is seen
    return reader.result()


# --- pyroute2's decoding of the same bytes: the reference ---------------------------------------------


def _endpoint(nla: Any) -> str | None:
    if nla is None:
        return None
    addr, port = nla.get("addr"), nla.get("port")
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def pyroute2_dump(name: str) -> tuple[Device, int | None]:
    """The device as pyroute2 decodes the recorded messages (adjacent same-key peers merged,
    as ``coalesce_peers`` in wireguard-tools does), and the fwmark."""
    rec = wgshow.recorded()[name]
    port = pub = fwmark = None
    peers: list[Peer] = []
    for datagram in rec.datagrams:
        off = 0
        while off < len(datagram):
            length, msg_type = struct.unpack_from("=IH", datagram, off)
            if msg_type not in (genl.NLMSG_DONE, genl.NLMSG_ERROR):
                msg = wgmsg(datagram[off : off + length])
                msg.decode()
                port = msg.get_attr("WGDEVICE_A_LISTEN_PORT") or port
                fwmark = msg.get_attr("WGDEVICE_A_FWMARK") or fwmark
                key = msg.get_attr("WGDEVICE_A_PUBLIC_KEY")
                pub = key.decode() if key else pub
                for nla in msg.get_attr("WGDEVICE_A_PEERS") or ():
                    key = nla.get_attr("WGPEER_A_PUBLIC_KEY").decode()
                    ips = tuple(a.get("addr") for a in nla.get_attr("WGPEER_A_ALLOWEDIPS") or ())
                    if peers and peers[-1].public_key == key:
                        peers[-1] = peers[-1]._replace(allowed_ips=peers[-1].allowed_ips + ips)
                        continue
                    hs = nla.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
                    sec, nsec = hs.get("tv_sec"), hs.get("tv_nsec")
                    peers.append(
                        Peer(
                            key,
                            _endpoint(nla.get_attr("WGPEER_A_ENDPOINT")),
                            ips,
                            sec + nsec / 1e9 if sec or nsec else None,
                            nla.get_attr("WGPEER_A_RX_BYTES"),
                            nla.get_attr("WGPEER_A_TX_BYTES"),
                            nla.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or None,
                        )
                    )
            off += (length + 3) & ~3
    return Device(rec.ifname, port, pub, tuple(peers)), fwmark


@pytest.mark.parametrize("name", FULL)
def test_the_walker_equals_pyroute2_field_by_field(name: str) -> None:
    ours = read(name)
    theirs, fwmark = pyroute2_dump(name)
    assert (ours.device.name, ours.device.listen_port, ours.device.public_key, ours.fwmark) == (
        theirs.name,
        theirs.listen_port,
        theirs.public_key,
        fwmark,
    )
    assert len(ours.device.peers) == len(theirs.peers)
    for mine, ref in zip(ours.device.peers, theirs.peers, strict=True):
        for field in Peer._fields:
            assert getattr(mine, field) == getattr(ref, field), (mine.public_key, field)


@pytest.mark.parametrize("name", FULL)
def test_the_walker_equals_wg_show_dump(name: str) -> None:
    rec = wgshow.recorded()[name]
    assert rec.wg_show_dump is not None
    assert wgshow.differences(read(name), wgshow.parse(rec.wg_show_dump)) == []


def test_the_recordings_cover_what_they_are_for() -> None:
    """Guard against a re-recording that lost a case: the layout facts the tests rely on."""
    for name in ("mixed", "mixed-wg-sized"):
        dump = read(name)
        peers = dump.device.peers
        assert dump.messages > 1 and dump.continued > 0, name  # peers continued across messages
        assert (dump.device.listen_port, dump.fwmark) == (51820, 0x2A)
        assert len(peers) == 403
        live4, live6 = peers[0], peers[1]
        assert live4.last_handshake and live4.rx_bytes and live4.keepalive == 25
        assert live4.endpoint == "198.51.100.2:51820"
        assert live6.last_handshake and live6.endpoint == "[2001:db8:6::2]:51820"
        assert live6.allowed_ips == ("10.42.6.0/24", "fd00:6::/64")
        assert sum(p.last_handshake is None for p in peers) == 401
        assert max(len(p.allowed_ips) for p in peers) == 2500
        assert any(p.endpoint is None and not p.allowed_ips and p.keepalive == 25 for p in peers)
    assert read("mixed-wg-sized").messages > read("mixed").messages  # 4 KiB vs 32 KiB messages
    bare = read("bare").device
    assert (bare.listen_port, bare.public_key, bare.peers) == (None, None, ())


def test_an_interrupted_dump_raises_eintr_to_read_again() -> None:
    rec = wgshow.recorded()["interrupted"]
    reader = DumpReader(rec.ifname, rec.seq)
    with pytest.raises(OSError) as err:
        for datagram in rec.datagrams:
            reader.feed(datagram)
    assert err.value.errno == errno.EINTR


# --- hand-built messages: what a healthy kernel does not send ------------------------------------------


def nla(kind: int, payload: bytes, nested: bool = False) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind | (genl.NLA_F_NESTED if nested else 0)) + payload + bytes(-size % 4)


def message(attrs: bytes, *, seq: int = 2, flags: int = genl.NLM_F_MULTI, msg_type: int = 0x1B) -> bytes:
    body = struct.pack("=BBH", 0, 1, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), msg_type, flags, seq, 0) + body


def peer(*attrs: bytes) -> bytes:
    return nla(0, b"".join(attrs), nested=True)


def peers(*items: bytes) -> bytes:
    return nla(genl.WGDEVICE_A_PEERS, b"".join(items), nested=True)


KEY = nla(genl.WGPEER_A_PUBLIC_KEY, bytes([7]) * 32)


def parse(*datagrams: bytes, seq: int = 2) -> genl.Dump:
    reader = DumpReader("wg0", seq)
    for d in datagrams:
        reader.feed(d)
    return reader.result()


def test_an_ipv6_endpoint_with_a_scope_keeps_it() -> None:
    sockaddr = struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", 51820, 0)
    sockaddr += socket.inet_pton(socket.AF_INET6, "fe80::1") + struct.pack("=I", 3)
    dump = parse(message(peers(peer(KEY, nla(genl.WGPEER_A_ENDPOINT, sockaddr)))) + genl.done_message(2))
    assert dump.device.peers[0].endpoint == "[fe80::1%3]:51820"


def test_a_zero_public_key_and_port_are_unset() -> None:
    attrs = nla(genl.WGDEVICE_A_PUBLIC_KEY, bytes(32)) + nla(genl.WGDEVICE_A_LISTEN_PORT, b"\0\0\0\0"[:2])
    dev = parse(message(attrs), genl.done_message(2)).device
    assert (dev.public_key, dev.listen_port) == (None, None)


def test_messages_of_another_request_are_ignored() -> None:
    other = message(peers(peer(KEY)), seq=1)
    dump = parse(other + message(peers()) + genl.done_message(2))
    assert dump.device.peers == () and dump.messages == 1


def test_only_adjacent_same_key_peers_are_merged() -> None:
    """``coalesce_peers`` merges a peer with the next one only; the kernel never repeats a key
    otherwise, and a repeat that is not adjacent is kept as the kernel sent it."""
    ip = nla(genl.WGPEER_A_ALLOWEDIPS, nla(0, b"".join((
        nla(genl.WGALLOWEDIP_A_CIDR_MASK, b"\x18"),
        nla(genl.WGALLOWEDIP_A_FAMILY, struct.pack("=H", socket.AF_INET)),
        nla(genl.WGALLOWEDIP_A_IPADDR, socket.inet_aton("10.42.1.0")),
    )), nested=True), nested=True)  # fmt: skip
    other = nla(genl.WGPEER_A_PUBLIC_KEY, bytes([8]) * 32)
    first, second = message(peers(peer(KEY, ip))), message(peers(peer(KEY, ip), peer(other), peer(KEY)))
    dump = parse(first, second, genl.done_message(2))
    assert [(p.public_key[:4], p.allowed_ips) for p in dump.device.peers] == [
        ("BwcH", ("10.42.1.0/24", "10.42.1.0/24")),
        ("CAgI", ()),
        ("BwcH", ()),
    ]
    assert dump.continued == 1


@pytest.mark.parametrize(
    ("datagram", "code"),
    [
        pytest.param(genl.done_message(2, errno.ENODEV), errno.ENODEV, id="done-with-enodev"),
        pytest.param(
            struct.pack("=IHHII", 36, genl.NLMSG_ERROR, 0, 2, 0) + struct.pack("=i", -errno.EPERM) + bytes(16),
            errno.EPERM,
            id="error-eperm",
        ),
        pytest.param(message(peers(), flags=genl.NLM_F_MULTI | genl.NLM_F_DUMP_INTR), errno.EINTR, id="interrupted"),
    ],
)
def test_kernel_answers_are_oserrors_to_translate(datagram: bytes, code: int) -> None:
    with pytest.raises(OSError) as err:
        parse(datagram)
    assert err.value.errno == code


@pytest.mark.parametrize(
    ("datagram", "match"),
    [
        pytest.param(message(peers(peer(KEY)))[:-4], "malformed netlink reply: a message of", id="truncated-message"),
        pytest.param(message(peers(peer(nla(genl.WGPEER_A_RX_BYTES, bytes(8))))), "a peer without a public key",
                     id="peer-without-key"),
        pytest.param(message(peers(peer(KEY, struct.pack("=HH", 40, genl.WGPEER_A_RX_BYTES)))),
                     "a peer attribute overruns", id="attribute-overrun"),
        pytest.param(message(peers(peer(KEY, nla(genl.WGPEER_A_ALLOWEDIPS, nla(0, nla(
            genl.WGALLOWEDIP_A_FAMILY, struct.pack("=H", socket.AF_INET)), nested=True), nested=True)))),
            "an allowed IP of family 2, 0 bytes, mask -1", id="allowed-ip-without-address"),
    ],
)  # fmt: skip
def test_a_reply_that_breaks_the_layout_is_a_wireguard_error(datagram: bytes, match: str) -> None:
    with pytest.raises(WireGuardError, match=match):
        parse(datagram + genl.done_message(2))


def test_a_dump_without_its_done_is_incomplete() -> None:
    reader = DumpReader("wg0", 2)
    assert reader.feed(message(peers(peer(KEY)))) is False
    with pytest.raises(WireGuardError, match="ended early, after 1 messages"):
        reader.result()


# --- requests, read back as the kernel reads them ---------------------------------------------------------


def attrs_of(data: bytes) -> Iterator[tuple[int, bool, bytes]]:
    off = 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        yield kind & genl.NLA_TYPE_MASK, bool(kind & genl.NLA_F_NESTED), data[off + 4 : off + length]
        off += (length + 3) & ~3


def header(data: bytes) -> tuple[int, int, int, int, int]:
    length, msg_type, flags, seq, _ = struct.unpack_from("=IHHII", data)
    assert length == len(data)
    cmd, version, _ = struct.unpack_from("=BBH", data, 16)
    return msg_type, flags, seq, cmd, version


def test_the_get_request_is_what_wg_sends() -> None:
    data = genl.get_device_request(0x1B, 2, "flannel-wg")
    assert header(data) == (0x1B, genl.NLM_F_REQUEST | genl.NLM_F_DUMP, 2, genl.WG_CMD_GET_DEVICE, 1)
    assert list(attrs_of(data[20:])) == [(genl.WGDEVICE_A_IFNAME, False, b"flannel-wg\0")]


def test_the_family_request_names_wireguard() -> None:
    data = genl.family_request(1)
    assert header(data) == (genl.GENL_ID_CTRL, genl.NLM_F_REQUEST, 1, genl.CTRL_CMD_GETFAMILY, 1)
    assert list(attrs_of(data[20:])) == [(genl.CTRL_ATTR_FAMILY_NAME, False, b"wireguard\0")]


def test_removals_are_batched_with_the_remove_flag_and_nested_flags() -> None:
    keys = [i.to_bytes(4, "big") * 8 for i in range(2 * genl.PEERS_PER_MESSAGE + 500)]
    requests = genl.remove_requests(0x1B, 5, "flannel-wg", keys)
    sent = []
    for n, data in enumerate(requests):
        msg_type, flags, seq, cmd, _ = header(data)
        assert (msg_type, flags, seq, cmd) == (0x1B, genl.NLM_F_REQUEST | genl.NLM_F_ACK, 5 + n, genl.WG_CMD_SET_DEVICE)
        (name, peer_list) = list(attrs_of(data[20:]))
        assert name == (genl.WGDEVICE_A_IFNAME, False, b"flannel-wg\0")
        kind, nested, payload = peer_list
        assert (kind, nested) == (genl.WGDEVICE_A_PEERS, True) and len(payload) + 4 < 1 << 16
        batch = []
        for _, peer_nested, body in attrs_of(payload):
            assert peer_nested  # nla_parse_nested in the kernel wants NLA_F_NESTED
            fields = {k: v for k, _, v in attrs_of(body)}
            assert set(fields) == {genl.WGPEER_A_PUBLIC_KEY, genl.WGPEER_A_FLAGS}
            assert struct.unpack("=I", fields[genl.WGPEER_A_FLAGS]) == (genl.WGPEER_F_REMOVE_ME,)
            batch.append(fields[genl.WGPEER_A_PUBLIC_KEY])
        sent.append(batch)
    assert [len(b) for b in sent] == [genl.PEERS_PER_MESSAGE, genl.PEERS_PER_MESSAGE, 500]
    assert [k for b in sent for k in b] == keys


@pytest.mark.parametrize("ifname", ["", "x" * 16, "a/b", "a:1", "a b", ".."])
def test_a_bad_interface_name_is_refused_before_anything_is_sent(ifname: str) -> None:
    with pytest.raises(ValueError, match="not an interface name"):
        genl.get_device_request(0x1B, 2, ifname)


def test_the_family_id_is_read_from_the_controller_answer() -> None:
    reply = message(nla(genl.CTRL_ATTR_FAMILY_NAME, b"wireguard\0") + nla(genl.CTRL_ATTR_FAMILY_ID, b"\x1b\0"),
                    seq=1, flags=0, msg_type=genl.GENL_ID_CTRL)  # fmt: skip
    assert genl.parse_family_id(reply, 1) == 0x1B
    missing = struct.pack("=IHHII", 36, genl.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -errno.ENOENT) + bytes(16)
    with pytest.raises(OSError) as err:
        genl.parse_family_id(missing, 1)
    assert err.value.errno == errno.ENOENT


def test_keys_come_out_as_wg_prints_them() -> None:
    dump = parse(message(peers(peer(KEY))) + genl.done_message(2))
    assert dump.device.peers[0].public_key == key_from_bytes(bytes([7]) * 32)


def kernel_peer_attrs() -> list[bytes]:
    """A peer's attributes in get_peer()'s order and sizes (the walker's fast path)."""
    ep = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 51820) + socket.inet_aton("198.51.100.7") + bytes(8)
    ips = b"".join(
        nla(0, nla(genl.WGALLOWEDIP_A_CIDR_MASK, bytes([mask])) + nla(genl.WGALLOWEDIP_A_FAMILY, struct.pack("=H", fam))
            + nla(genl.WGALLOWEDIP_A_IPADDR, socket.inet_pton(fam, addr)), nested=True)
        for fam, addr, mask in ((socket.AF_INET, "10.42.1.0", 24), (socket.AF_INET6, "fd00:1::", 64))
    )  # fmt: skip
    return [
        KEY,
        nla(2, bytes(32)),  # preshared key
        nla(genl.WGPEER_A_LAST_HANDSHAKE_TIME, struct.pack("=qq", 1700000000, 250000000)),
        nla(genl.WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, struct.pack("=H", 25)),
        nla(genl.WGPEER_A_TX_BYTES, struct.pack("=Q", 4157)),
        nla(genl.WGPEER_A_RX_BYTES, struct.pack("=Q", 4028)),
        nla(10, struct.pack("=I", 1)),  # protocol version
        nla(genl.WGPEER_A_ENDPOINT, ep),
        nla(genl.WGPEER_A_ALLOWEDIPS, ips, nested=True),
    ]


@pytest.mark.parametrize(
    "order",
    [
        pytest.param(lambda a: a, id="kernel-layout"),
        pytest.param(lambda a: a[::-1], id="reversed"),
        pytest.param(lambda a: [*a[:4], nla(0, b""), *a[4:]], id="pad-before-u64"),
    ],
)
def test_the_fast_path_and_the_attribute_walk_agree(order: Any) -> None:
    dump = parse(message(peers(peer(*order(kernel_peer_attrs())))) + genl.done_message(2))
    assert dump.device.peers == (
        Peer(
            key_from_bytes(bytes([7]) * 32),
            "198.51.100.7:51820",
            ("10.42.1.0/24", "fd00:1::/64"),
            1700000000.25,
            4028,
            4157,
            25,
        ),
    )
