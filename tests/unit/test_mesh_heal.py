"""Endpoint drift: which endpoints are set back, and the setters that do it (UAPI on a real unix
socket, netlink against a fake pyroute2 ``WireGuard``)."""

from __future__ import annotations

import asyncio
import errno

import pytest

from tests.unit.test_wireguard_netlink import World
from wgagent.errors import DeviceNotFound
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


def obs(*views: ob.PeerView) -> ob.Look:
    return ob.Look("n0", NOW, "flannel-wg", True, peers=views)


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


def test_a_dual_stack_ipv4_change_flannel_did_not_pass_on_is_healed() -> None:
    """flannel passes another Node's update only when both families changed (kube.go
    ``handleUpdateLeaseEvent``): n1's new IPv4 alone leaves n0's peer at the old address. Once
    the handshake is older than 180 s, the look names it drift and the heal sets the new one."""
    from tests.unit.test_mesh_observe import cluster, device, node, peer

    moved = cluster(node(1, ip="198.51.100.1"))
    stale = device(peer(1, hs_age=200, endpoint="203.0.113.1:51820"))
    look = ob.observe("n0", stale, moved, previous=None, now=NOW)
    seen = look.peer("n1")
    assert seen is not None and seen.status == ob.DRIFT
    assert heal.decide_heal(look, heal.HealMemory(), NOW) == [
        heal.Reset("n1", K1, "203.0.113.1:51820", "198.51.100.1:51820")
    ]
    fresh = device(peer(1, hs_age=20, endpoint="203.0.113.1:51820"))  # a fresh handshake: never touched
    assert heal.decide_heal(ob.observe("n0", fresh, moved, previous=None, now=NOW), heal.HealMemory(), NOW) == []


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
        asyncio.run(ep.NetlinkEndpointSetter(World("mixed").backend()).set_endpoints("wg0", bad))


async def test_netlink_sets_endpoints_with_the_kernels_update_only_flag() -> None:
    world = World("mixed")
    setter = ep.NetlinkEndpointSetter(world.backend())
    await setter.set_endpoints("flannel-wg", {K1: RIGHT, K2: "[2001:db8::2]:51821"})
    # WGPEER_F_UPDATE_ONLY = 1 << 2 (never pyroute2 0.7.2's 2 = REPLACE_ALLOWEDIPS), no allowed IPs sent
    assert world.endpoint_sets == [[(K1, RIGHT), (K2, "[2001:db8::2]:51821")]]
    assert all(s.closed for s in world.sockets)


async def test_netlink_setter_sends_one_message() -> None:
    world = World("mixed")
    await ep.NetlinkEndpointSetter(world.backend()).set_endpoints("flannel-wg", {K1: RIGHT, K2: RIGHT})
    assert len(world.endpoint_sets) == 1 and len(world.endpoint_sets[0]) == 2


async def test_netlink_setter_translates_errors() -> None:
    world = World("mixed")
    world.set_errors = {0: errno.ENODEV}
    with pytest.raises(DeviceNotFound, match="flannel-wg"):
        await ep.NetlinkEndpointSetter(world.backend()).set_endpoints("flannel-wg", {K1: RIGHT})
    assert all(s.closed for s in world.sockets)
