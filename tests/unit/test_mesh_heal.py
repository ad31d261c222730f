"""Endpoint drift: which endpoints are set back, and the setters that do it (UAPI on a real unix
socket, netlink against a fake pyroute2 ``WireGuard``)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from wgagent.errors import DeviceNotFound, WireGuardError
from wgagent.mesh import heal
from wgagent.mesh import observe as ob
from wgagent.wireguard import endpoints as ep
from wgagent.wireguard.model import key_from_bytes

NOW = 1_800_000_000.0
K1, K2 = key_from_bytes(b"\x01" * 32), key_from_bytes(b"\x02" * 32)
RIGHT = "203.0.113.1:51820"


def view(
    status: str = ob.DRIFT, *, age: float | None = 600, endpoint: str = "203.0.113.1:9999", key: str = K1
) -> ob.PeerView:
    return ob.PeerView("n1", status, NOW - 600, key=key, endpoint=endpoint, advertised=RIGHT, handshake_age_s=age)


def obs(*views: ob.PeerView) -> ob.Observation:
    return ob.Observation("n0", NOW, "flannel-wg", True, peers=views)


@pytest.mark.parametrize(
    ("case", "v", "memory", "expected"),
    [
        ("dead and drifted: set back", view(), {}, [heal.Reset("n1", K1, "203.0.113.1:9999", RIGHT)]),
        ("never handshook and drifted", view(age=None), {}, [heal.Reset("n1", K1, "203.0.113.1:9999", RIGHT)]),
        ("a fresh handshake is never touched", view(age=30), {}, []),
        ("exactly 180 s: still not", view(age=180), {}, []),
        ("down but where the Node says", view(ob.DOWN, endpoint=RIGHT), {}, []),
        ("roamed with a live session", view(ob.ROAMED, age=20), {}, []),
        ("reset 9 minutes ago", view(), {K1: NOW - 540}, []),
        ("reset 10 minutes ago", view(), {K1: NOW - 600}, [heal.Reset("n1", K1, "203.0.113.1:9999", RIGHT)]),
    ],
)
def test_decide_heal(case: str, v: ob.PeerView, memory: dict[str, float], expected: list[heal.Reset]) -> None:
    assert heal.decide_heal(obs(v), heal.HealMemory(memory), NOW) == expected, case


def test_nothing_when_healing_is_off() -> None:
    assert heal.decide_heal(obs(view()), heal.HealMemory(), NOW, enabled=False) == []


def test_a_missing_peer_or_unknown_address_is_not_healed() -> None:
    missing = ob.PeerView("n1", ob.MISSING, NOW, advertised=RIGHT)
    no_addr = ob.PeerView("n2", ob.DRIFT, NOW, key=K2, endpoint="203.0.113.2:9", handshake_age_s=900)
    assert heal.decide_heal(obs(missing, no_addr), heal.HealMemory(), NOW) == []


def test_at_most_max_per_pass() -> None:
    views = [view(key=key_from_bytes(i.to_bytes(2, "big") * 16)) for i in range(heal.MAX_PER_PASS + 5)]
    assert len(heal.decide_heal(obs(*views), heal.HealMemory(), NOW)) == heal.MAX_PER_PASS


def test_remember_records_and_forgets() -> None:
    mem = heal.HealMemory({K2: NOW - 100, "gone": NOW - 100, key_from_bytes(b"\x03" * 32): NOW - 700})
    after = heal.remember(mem, [heal.Reset("n1", K1, None, RIGHT)], NOW, {K1, K2, key_from_bytes(b"\x03" * 32)})
    assert after.last == {K1: NOW, K2: NOW - 100}


# --- encoders ----------------------------------------------------------------------------------


def test_uapi_encoding_updates_only_existing_peers() -> None:
    text = ep.encode_set_endpoints({K1: RIGHT, K2: "[2001:db8::2]:51821"}).decode()
    assert text == (
        "set=1\n"
        f"public_key={'01' * 32}\nupdate_only=true\nendpoint={RIGHT}\n"
        f"public_key={'02' * 32}\nupdate_only=true\nendpoint=[2001:db8::2]:51821\n\n"
    )


@pytest.mark.parametrize("bad", [{"nokey": RIGHT}, {K1: "203.0.113.1"}, {K1: "x:51820"}, {K1: "203.0.113.1:0"}])
def test_encoders_refuse_bad_input(bad: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        ep.encode_set_endpoints(bad)
    with pytest.raises(ValueError):
        ep.set_endpoints_message("wg0", bad)


def test_netlink_message_uses_the_kernels_update_only_flag() -> None:
    from pyroute2.netlink.generic.wireguard import wgmsg

    msg = ep.set_endpoints_message("flannel-wg", {K1: RIGHT, K2: "[2001:db8::2]:51821"})
    msg["header"]["type"] = 20
    msg.encode()
    back = wgmsg(msg.data)
    back.decode()
    assert back.get_attr("WGDEVICE_A_IFNAME") == "flannel-wg"
    peers = back.get_attr("WGDEVICE_A_PEERS")
    assert [p.get_attr("WGPEER_A_FLAGS") for p in peers] == [4, 4]  # 1 << 2; never 2 (REPLACE_ALLOWEDIPS)
    assert [(p.get_attr("WGPEER_A_ENDPOINT")["addr"], p.get_attr("WGPEER_A_ENDPOINT")["port"]) for p in peers] == [
        ("203.0.113.1", 51820),
        ("2001:db8::2", 51821),
    ]
    assert [p.get_attr("WGPEER_A_ALLOWEDIPS") for p in peers] == [None, None]


# --- setters -----------------------------------------------------------------------------------


@pytest.fixture
def uapi_dir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="wgm", dir="/tmp")  # a unix socket path must fit in 108 bytes
    yield d
    for name in os.listdir(d):
        os.unlink(os.path.join(d, name))
    os.rmdir(d)


async def serve(path: str, reply: bytes, got: list[bytes]) -> asyncio.AbstractServer:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await reader.readuntil(b"\n\n"))
        writer.write(reply)
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(handler, path)


async def test_uapi_setter_sends_one_transaction(uapi_dir: str) -> None:
    got: list[bytes] = []
    server = await serve(os.path.join(uapi_dir, "wg0.sock"), b"errno=0\n\n", got)
    async with server:
        await ep.UapiEndpointSetter(uapi_dir).set_endpoints("wg0", {K1: RIGHT})
    assert got == [ep.encode_set_endpoints({K1: RIGHT})]


async def test_uapi_setter_reports_a_refusal(uapi_dir: str) -> None:
    server = await serve(os.path.join(uapi_dir, "wg0.sock"), b"errno=-22\n\n", [])
    async with server:
        with pytest.raises(WireGuardError, match="Invalid argument"):
            await ep.UapiEndpointSetter(uapi_dir).set_endpoints("wg0", {K1: RIGHT})


async def test_uapi_setter_without_a_socket(uapi_dir: str) -> None:
    with pytest.raises(DeviceNotFound):
        await ep.UapiEndpointSetter(uapi_dir).set_endpoints("wg0", {K1: RIGHT})


async def test_nothing_to_set_sends_nothing(uapi_dir: str) -> None:
    await ep.UapiEndpointSetter(uapi_dir).set_endpoints("wg0", {})  # no socket needed


class FakeWireGuard:
    prid = 33

    def __init__(self, error: Exception | None = None) -> None:
        self.sent: list[Any] = []
        self.error = error
        self.closed = False

    def nlm_request(self, msg: Any, msg_type: int, msg_flags: int) -> list[Any]:
        assert (msg_type, msg_flags) == (33, 0x1 | 0x4)
        if self.error is not None:
            raise self.error
        self.sent.append(msg)
        return []

    def close(self) -> None:
        self.closed = True


async def test_netlink_setter_sends_one_message_and_closes() -> None:
    fake = FakeWireGuard()
    await ep.NetlinkEndpointSetter(factory=lambda: fake).set_endpoints("flannel-wg", {K1: RIGHT, K2: RIGHT})
    assert len(fake.sent) == 1 and len(fake.sent[0].get_attr("WGDEVICE_A_PEERS")) == 2 and fake.closed


async def test_netlink_setter_translates_errors() -> None:
    fake = FakeWireGuard(OSError(19, "No such device"))
    with pytest.raises(DeviceNotFound, match="no interface flannel-wg"):
        await ep.NetlinkEndpointSetter(factory=lambda: fake).set_endpoints("flannel-wg", {K1: RIGHT})
    assert fake.closed
