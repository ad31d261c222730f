"""Setting endpoints back on real wireguard-go: the UAPI setter heals a drifted pair, touches only
existing peers, and the heal decision picks exactly the dead drifted one."""

from __future__ import annotations

import base64
import json

from tests import labkit
from tests.conftest import require
from tests.labkit import Host, Lab, wait_for
from wgagent.mesh import heal
from wgagent.mesh import observe as ob
from wgagent.model import ANN_BACKEND_DATA, ANN_PUBLIC_IP, ClusterView, NodeInfo
from wgagent.wireguard.endpoints import UapiEndpointSetter
from wgagent.wireguard.model import Device, key_from_bytes
from wgagent.wireguard.uapi import parse_get, x25519_public

IF = "wg0"
PORT = 51820


def get(uapi_dir: str) -> Device:
    return parse_get(labkit.uapi(uapi_dir, "get=1\n\n", ifname=IF), IF)


def hexkey(b64: str) -> str:
    return base64.b64decode(b64).hex()


async def test_a_pair_drifted_on_both_sides_is_healed_by_setting_the_endpoints_back(lab: Lab) -> None:
    require("wireguard-go", root=True)
    router = lab.host("router", forwarding=True)
    hosts: dict[str, Host] = {}
    addr, pub, dirs = {}, {}, {}
    for i in (1, 2):
        name = f"n{i}"
        hosts[name] = host = lab.host(name)
        addr[name] = f"198.51.100.{4 * i + 2}"
        lab.link(host, "eth0", f"{addr[name]}/30", router, f"r{i}", f"198.51.100.{4 * i + 1}/30")
        lab.route(host, "default", f"198.51.100.{4 * i + 1}")
        priv = bytes([i + 20]) * 32
        pub[name] = key_from_bytes(x25519_public(priv))
        _, dirs[name] = lab.wireguard_go(host, IF)
        labkit.uapi_set(dirs[name], [f"private_key={priv.hex()}", f"listen_port={PORT}"], ifname=IF)
        lab.run(host, "ip", "addr", "add", f"10.42.{i}.1/16", "dev", IF)
        lab.run(host, "ip", "link", "set", IF, "up")
    # Both sides send to a port where nobody listens (the drift of flannel #1770), with keepalive.
    for me, other, ip in (("n1", "n2", "10.42.2.0/24"), ("n2", "n1", "10.42.1.0/24")):
        peer = [f"public_key={hexkey(pub[other])}", f"endpoint={addr[other]}:9999", f"allowed_ip={ip}",
                "persistent_keepalive_interval=1"]  # fmt: skip
        labkit.uapi_set(dirs[me], peer, ifname=IF)
    view = ClusterView({
        n: NodeInfo(n, {ANN_BACKEND_DATA: json.dumps({"PublicKey": pub[n], "Port": PORT}), ANN_PUBLIC_IP: addr[n]})
        for n in hosts
    })  # fmt: skip
    assert get(dirs["n1"]).peers[0].last_handshake is None

    # What the part would do, on each node: observe (the pair never handshook, seen for > 180 s)...
    for me, other in (("n1", "n2"), ("n2", "n1")):
        first = ob.observe(me, get(dirs[me]), view, previous=None, now=1_000.0)
        obs = ob.observe(me, get(dirs[me]), view, previous=first.memory, now=1_200.0)
        (v,) = obs.peers
        assert (v.node, v.status, v.endpoint) == (other, ob.DRIFT, f"{addr[other]}:9999")
        resets = heal.decide_heal(obs, heal.HealMemory(), 1_200.0)
        assert resets == [heal.Reset(other, pub[other], f"{addr[other]}:9999", f"{addr[other]}:{PORT}")]
        # ... and set back, in one update-only transaction (a key of no peer is not created).
        stranger = key_from_bytes(b"\x77" * 32)
        await UapiEndpointSetter(dirs[me]).set_endpoints(
            IF, {r.key: r.new for r in resets} | {stranger: "203.0.113.9:1"}
        )
        dev = get(dirs[me])
        assert [(p.public_key, p.endpoint) for p in dev.peers] == [(pub[other], f"{addr[other]}:{PORT}")]

    def handshook() -> bool:
        return all(get(dirs[n]).peers[0].last_handshake is not None for n in hosts)

    wait_for(handshook, 15, "a handshake once the endpoints are right")
