"""The flannel stand-in (tests/support/flannel.py) on a real wireguard-go device."""

from __future__ import annotations

import base64
import os

from tests.kubeapi.upstream import FlannelVersion
from tests.labkit import Lab, uapi
from tests.support.flannel import Flannel, FlannelDevice, node, wireguard_go
from wgagent.wireguard.uapi import parse_get

IF = "flannel-wg"
KEYS = [base64.b64encode(os.urandom(32)).decode() for _ in range(4)]


def test_flannel_v025_and_v026_on_wireguard_go(lab: Lab) -> None:
    host = lab.host("a")
    _, uapi_dir = lab.wireguard_go(host, IF)
    set_, get = wireguard_go(uapi_dir, IF)
    set_([f"private_key={os.urandom(32).hex()}", "listen_port=51820"])
    nodes = [
        node("a", "198.51.100.1", "10.42.0.0/24", KEYS[0]),
        node("b", "198.51.100.2", "10.42.1.0/24", KEYS[1]),
        node("c", "203.0.113.3", "10.42.2.0/24", KEYS[2], port=51999),
    ]

    def peers() -> dict[str, tuple[str | None, tuple[str, ...], int | None]]:
        device = parse_get(uapi(uapi_dir, "get=1\n\n", ifname=IF), IF)
        return {p.public_key: (p.endpoint, p.allowed_ips, p.keepalive) for p in device.peers}

    new = FlannelDevice("a", set_, get, Flannel(FlannelVersion(0, 26, 7)))
    new.start(nodes)
    assert peers() == {KEYS[1]: ("198.51.100.2:51820", ("10.42.1.0/24",), 25),
                       KEYS[2]: ("203.0.113.3:51999", ("10.42.2.0/24",), 25)}  # fmt: skip
    behind_b = node("d", "198.51.100.2", "10.42.3.0/24", KEYS[3])  # a second node behind b's NAT
    new.node_added(behind_b)
    assert set(peers()) == {KEYS[1], KEYS[2], KEYS[3]}

    old = FlannelDevice("a", set_, get, Flannel(FlannelVersion(0, 25, 7)))
    old.start(nodes)  # a restart: ReplacePeers
    old.node_added(behind_b)  # cleanupEndpointPeers removes b's peer
    assert set(peers()) == {KEYS[2], KEYS[3]}
    old.node_deleted(nodes[2])
    assert set(peers()) == {KEYS[3]}
