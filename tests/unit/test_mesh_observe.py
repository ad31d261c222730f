"""The mesh observation: named cases of ``observe()`` (one look, then looks in sequence)."""

from __future__ import annotations

import json

import pytest

from wgagent.mesh import observe as ob
from wgagent.mesh.model import advertised_endpoint, advertised_endpoints, endpoint_ip, parse_port
from wgagent.model import ANN_BACKEND_DATA, ANN_BACKEND_V6_DATA, ANN_PUBLIC_IP, ANN_PUBLIC_IPV6, ClusterView, NodeInfo
from wgagent.wireguard.model import Device, Peer, key_from_bytes

NOW = 1_800_000_000.0
OWN = key_from_bytes(b"\xee" * 32)


def k(n: int) -> str:
    return key_from_bytes(bytes([n]) * 32)


def node(n: int, *, key: int | None = None, ip: str | None = None, port: int | None = 51820) -> NodeInfo:
    data: dict[str, object] = {"PublicKey": k(key if key is not None else n)}
    if port is not None:
        data["Port"] = port
    anns = {ANN_BACKEND_DATA: json.dumps(data), ANN_PUBLIC_IP: ip or f"203.0.113.{n}"}
    return NodeInfo(f"n{n}", anns)


def cluster(*nodes: NodeInfo) -> ClusterView:
    me = NodeInfo("n0", {ANN_BACKEND_DATA: json.dumps({"PublicKey": OWN, "Port": 51820})})
    return ClusterView({n.name: n for n in (me, *nodes)})


def peer(
    n: int,
    *,
    hs_age: float | None = 30.0,
    endpoint: str | None = None,
    rx: int = 1000,
    tx: int = 1000,
    keepalive: int | None = 25,
    ips: tuple[str, ...] = ("10.42.9.0/24",),
    key: int | None = None,
) -> Peer:
    return Peer(
        k(key if key is not None else n),
        endpoint if endpoint is not None else f"203.0.113.{n}:51820",
        ips,
        None if hs_age is None else NOW - hs_age,
        rx,
        tx,
        keepalive,
    )


def device(*peers: Peer, name: str = "flannel-wg") -> Device:
    return Device(name, 51820, OWN, peers)


def look(dev: Device | None, view: ClusterView, *, now: float = NOW, previous: ob.Memory | None = None) -> ob.Look:
    return ob.observe("n0", dev, view, previous=previous, now=now)


# --- one look ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "p", "status"),
    [
        ("fresh handshake", peer(1, hs_age=30), ob.OK),
        ("port-only roaming is NAT, and fine", peer(1, endpoint="203.0.113.1:40123"), ob.OK),
        ("a live session from another address", peer(1, endpoint="198.51.100.9:51820"), ob.ROAMED),
        ("no handshake for 181 s with keepalive", peer(1, hs_age=181), ob.DOWN),
        ("dead and not where the Node says", peer(1, hs_age=600, endpoint="203.0.113.1:9999"), ob.DRIFT),
        ("no keepalive and nothing said: idle", peer(1, hs_age=900, keepalive=None), ob.IDLE),
        ("exactly 180 s is still a session", peer(1, hs_age=180), ob.OK),
    ],
)
def test_status_of_one_look(case: str, p: Peer, status: str) -> None:
    obs = look(device(p), cluster(node(1)))
    assert [v.status for v in obs.peers] == [status], case


def test_a_peer_first_seen_within_180_s_that_never_handshook_is_new() -> None:
    first = look(device(peer(1, hs_age=None)), cluster(node(1)), now=NOW - 100)
    obs = look(device(peer(1, hs_age=None)), cluster(node(1)), previous=first.memory)
    assert obs.peers[0].status == ob.NEW and obs.peers[0].fine


def test_never_a_handshake_for_more_than_180_s_with_keepalive_is_down() -> None:
    first = look(device(peer(1, hs_age=None)), cluster(node(1)), now=NOW - 181)
    assert look(device(peer(1, hs_age=None)), cluster(node(1)), previous=first.memory).peers[0].status == ob.DOWN


def test_missing_current_key_with_an_old_key_at_the_nodes_endpoint() -> None:
    # n1 re-keyed (now key 11); this device still has its old key 1 at n1's endpoint.
    obs = look(device(peer(1, hs_age=900)), cluster(node(1, key=11)))
    (v,) = obs.peers
    assert (v.status, v.key, v.old_key) == (ob.MISSING, None, k(1))
    assert obs.others == 0  # the old key is n1's, not a stranger


def test_missing_key_without_any_old_one() -> None:
    obs = look(device(), cluster(node(1)))
    assert obs.peers[0].status == ob.MISSING and obs.peers[0].old_key is None


def test_old_key_found_by_pod_cidr_when_the_endpoint_says_nothing() -> None:
    n1 = NodeInfo("n1", node(1, key=11).annotations, ("10.42.1.0/24",))
    obs = look(device(peer(1, endpoint="198.51.100.200:51820", ips=("10.42.1.0/24",))), cluster(n1))
    assert obs.peers[0].old_key == k(1)


def test_an_endpoint_two_missing_nodes_share_names_neither() -> None:
    a, b = node(1, key=11, ip="203.0.113.50"), node(2, key=12, ip="203.0.113.50")
    obs = look(device(peer(3, endpoint="203.0.113.50:51820")), cluster(a, b))
    assert [v.old_key for v in obs.peers] == [None, None] and obs.others == 1


def test_own_node_nodes_without_keys_and_strangers() -> None:
    vxlan = NodeInfo("vx", {ANN_PUBLIC_IP: "203.0.113.80"})
    obs = look(device(peer(1), peer(77, endpoint="198.51.100.77:51820")), cluster(node(1), vxlan))
    assert [v.node for v in obs.peers] == ["n1"] and obs.others == 1


def test_no_device_is_an_interface_problem_and_keeps_the_statuses() -> None:
    first = look(device(peer(1)), cluster(node(1)))
    obs = ob.observe(
        "n0", None, cluster(node(1)), previous=first.memory, now=NOW + 30, interface_detail="no flannel-wg"
    )
    assert (obs.interface_ok, obs.interface_detail, obs.peers) == (False, "no flannel-wg", ())
    assert obs.memory.statuses == first.memory.statuses


def test_ipv6_device_uses_the_v6_key_and_endpoint() -> None:
    anns = {
        ANN_BACKEND_V6_DATA: json.dumps({"PublicKey": k(5), "Port": 51821}),
        ANN_PUBLIC_IPV6: "2001:db8::5",
        ANN_PUBLIC_IP: "203.0.113.5",
    }
    v6 = Peer(k(5), "[2001:db8::5]:51821", (), NOW - 10, 1, 1, 25)
    obs = look(device(v6, name="flannel-wg-v6"), cluster(NodeInfo("n5", anns)))
    assert [(v.status, v.advertised) for v in obs.peers] == [(ob.OK, "[2001:db8::5]:51821")]


# --- looks in sequence -------------------------------------------------------------------------


def test_rx_silence_with_keepalive_is_down_before_the_handshake_expires() -> None:
    view = cluster(node(1))
    mem = look(device(peer(1, hs_age=10, rx=500, tx=500)), view, now=NOW - 70).memory
    # 70 s later: we sent (tx +), received nothing (rx same); the handshake is 80 s old.
    obs = look(device(peer(1, hs_age=80, rx=500, tx=900)), view, previous=mem)
    assert obs.peers[0].status == ob.DOWN
    assert (obs.peers[0].rx_delta, obs.peers[0].tx_delta, obs.peers[0].rx_quiet_s) == (0, 400, 70.0)


def test_rx_silence_shorter_than_two_keepalives_is_not_down() -> None:
    view = cluster(node(1))
    mem = look(device(peer(1, hs_age=10, rx=500, tx=500)), view, now=NOW - 60).memory
    assert look(device(peer(1, hs_age=70, rx=500, tx=900)), view, previous=mem).peers[0].status == ob.OK


def test_a_silent_peer_looked_at_every_2_s_stays_down_between_its_retries() -> None:
    """A dead peer is sent an initiation every 5 s at best: looks 2 s apart often see no tx at
    all. Sent since last heard is what counts, not sent since the last look (the fault lab's
    drift flickered to ok when it was the latter)."""
    view = cluster(node(1, port=51820))
    mem = look(device(peer(1, hs_age=10, rx=500, tx=500, keepalive=2)), view, now=NOW - 30).memory
    statuses = []
    for t in range(-28, 1, 2):  # a look every 2 s; tx grows only every 5 s
        tx = 500 + 148 * ((30 + t) // 5)
        obs = look(device(peer(1, hs_age=40 + t, rx=500, tx=tx, keepalive=2)), view, now=NOW + t, previous=mem)
        mem = obs.memory
        statuses.append(obs.peers[0].status)
    assert statuses[:4] == [ob.OK] * 4  # 2 x keepalive + 15 s: not yet
    assert set(statuses[10:]) == {ob.DOWN}, statuses


def test_no_keepalive_and_tx_growing_with_an_old_handshake_is_down() -> None:
    view = cluster(node(1))
    mem = look(device(peer(1, hs_age=900, keepalive=None, tx=100)), view, now=NOW - 30).memory
    assert look(device(peer(1, hs_age=930, keepalive=None, tx=400)), view, previous=mem).peers[0].status == ob.DOWN


def test_since_is_kept_while_the_status_lasts_and_moves_when_it_changes() -> None:
    view = cluster(node(1))
    dead = device(peer(1, hs_age=260))  # the last handshake at NOW - 260
    o1 = look(dead, view, now=NOW - 60)
    o2 = look(dead, view, previous=o1.memory)
    o3 = look(device(peer(1, hs_age=5)), view, previous=o2.memory, now=NOW + 30)
    assert [(o.peers[0].status, o.peers[0].since) for o in (o1, o2)] == [(ob.DOWN, NOW - 60)] * 2
    assert (o3.peers[0].status, o3.peers[0].since) == (ob.OK, NOW + 30)


def test_counters_that_went_backwards_mean_a_re_added_peer() -> None:
    view = cluster(node(1))
    mem = look(device(peer(1, rx=9000, tx=9000)), view, now=NOW - 30).memory
    v = look(device(peer(1, rx=10, tx=10)), view, previous=mem).peers[0]
    assert (v.rx_delta, v.tx_delta) == (None, None)


def test_listed_skips_fine_and_young_missing() -> None:
    fine = ob.PeerView("n1", ob.OK, NOW)
    young = ob.PeerView("n1", ob.MISSING, NOW - 30)
    old = ob.PeerView("n1", ob.MISSING, NOW - 61)
    down = ob.PeerView("n1", ob.DOWN, NOW)
    assert [ob.listed(v, NOW) for v in (fine, young, old, down)] == [False, False, True, True]


# --- advertised endpoints ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "anns", "local_port", "expected"),
    [
        (
            "port from backend-data",
            {ANN_PUBLIC_IP: "203.0.113.7", ANN_BACKEND_DATA: '{"Port":51830}'},
            51820,
            "203.0.113.7:51830",
        ),
        (
            "no Port: the local device's port, as flannel does",
            {ANN_PUBLIC_IP: "203.0.113.7", ANN_BACKEND_DATA: '"k="'},
            51999,
            "203.0.113.7:51999",
        ),
        ("no Port, no device: 51820", {ANN_PUBLIC_IP: "203.0.113.7"}, None, "203.0.113.7:51820"),
        ("no public-ip", {ANN_BACKEND_DATA: '{"Port":51820}'}, None, None),
        ("garbage public-ip", {ANN_PUBLIC_IP: "x.y"}, None, None),
        ("an IPv6 address in public-ip is not an IPv4 endpoint", {ANN_PUBLIC_IP: "2001:db8::1"}, None, None),
    ],
)
def test_advertised_endpoint(case: str, anns: dict[str, str], local_port: int | None, expected: str | None) -> None:
    assert advertised_endpoint(NodeInfo("n", anns), local_port=local_port) == expected, case


def test_advertised_endpoints_include_ipv6() -> None:
    anns = {ANN_PUBLIC_IP: "203.0.113.7", ANN_PUBLIC_IPV6: "2001:db8::7", ANN_BACKEND_V6_DATA: '{"Port":51821}'}
    assert advertised_endpoints(NodeInfo("n", anns)) == {"203.0.113.7:51820", "[2001:db8::7]:51821"}


@pytest.mark.parametrize(
    ("text", "port"),
    [('{"Port":0}', None), ('{"Port":70000}', None), ('{"Port":true}', None), ("{", None), (None, None)],
)
def test_parse_port_rejects_what_is_not_a_port(text: str | None, port: int | None) -> None:
    assert parse_port(text) == port


def test_endpoint_ip_without_a_port_is_none() -> None:
    assert endpoint_ip("203.0.113.7") is None
