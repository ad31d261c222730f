"""The probe adapters' pure parts: the BPF program (run by a small classic-BPF interpreter over
built packets), the packet parser, the nftables script and counter reader; and the sender
over loopback."""

from __future__ import annotations

import socket
import struct
from ipaddress import ip_address

import pytest

from wgagent.mesh import nft, sender, tap
from wgagent.mesh import probe as pb

PROBE = pb.encode("n1", 1_800_000_000, bytes(8))


def ipv4_udp(payload: bytes, dport: int = 51820, *, frag: int = 0, proto: int = 17, ihl: int = 5) -> bytes:
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload
    options = b"\x01" * (4 * ihl - 20)
    total = 4 * ihl + len(udp)
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 0, frag, 64, proto, 0,
                       ip_address("198.51.100.6").packed, ip_address("198.51.100.10").packed)  # fmt: skip
    return head + options + udp


def ipv6_udp(payload: bytes, dport: int = 51820, *, nexthdr: int = 17) -> bytes:
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload
    head = struct.pack("!IHBB16s16s", 6 << 28, len(udp), nexthdr, 64,
                       ip_address("2001:db8::6").packed, ip_address("2001:db8::10").packed)  # fmt: skip
    return head + udp


def run_bpf(prog: list[tuple[int, int, int, int]], data: bytes, *, protocol: int, pkttype: int = 0) -> int:
    """A classic BPF interpreter for the instructions bpf_program uses (linux net/core/filter.c)."""
    a = x = pc = 0
    ancillary = {tap._ad(tap.SKF_AD_PKTTYPE): pkttype, tap._ad(tap.SKF_AD_PROTOCOL): protocol}
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        if code in (tap.LD_W_ABS, tap.LD_H_ABS, tap.LD_B_ABS):
            if k in ancillary:
                a = ancillary[k]
                continue
            size = {tap.LD_W_ABS: 4, tap.LD_H_ABS: 2, tap.LD_B_ABS: 1}[code]
            if k + size > len(data):
                return 0
            a = int.from_bytes(data[k : k + size], "big")
        elif code in (tap.LD_H_IND, tap.LD_W_IND):
            size = 2 if code == tap.LD_H_IND else 4
            if x + k + size > len(data):
                return 0
            a = int.from_bytes(data[x + k : x + k + size], "big")
        elif code == tap.LDX_B_MSH:
            x = 4 * (data[k] & 0x0F)
        elif code == tap.JEQ_K:
            pc += jt if a == k else jf
        elif code == tap.JSET_K:
            pc += jt if a & k else jf
        elif code == tap.RET_K:
            return k
        else:
            raise AssertionError(f"unknown opcode {code:#x}")


@pytest.mark.parametrize(
    ("case", "data", "protocol", "pkttype", "passed"),
    [
        ("an IPv4 probe", ipv4_udp(PROBE), tap.ETH_P_IP, 0, True),
        ("an IPv4 probe with IP options", ipv4_udp(PROBE, ihl=7), tap.ETH_P_IP, 0, True),
        ("an IPv6 probe", ipv6_udp(PROBE), tap.ETH_P_IPV6, 0, True),
        ("our own probe going out", ipv4_udp(PROBE), tap.ETH_P_IP, tap.PACKET_OUTGOING, False),
        ("another port", ipv4_udp(PROBE, 51821), tap.ETH_P_IP, 0, False),
        ("a WireGuard initiation", ipv4_udp(b"\x01\x00\x00\x00" + bytes(144)), tap.ETH_P_IP, 0, False),
        ("TCP", ipv4_udp(PROBE, proto=6), tap.ETH_P_IP, 0, False),
        ("a later fragment", ipv4_udp(PROBE, frag=0x0010), tap.ETH_P_IP, 0, False),
        ("IPv6 with an extension header", ipv6_udp(PROBE, nexthdr=0), tap.ETH_P_IPV6, 0, False),
        ("ARP", b"\x00\x01\x08\x00" + bytes(24), 0x0806, 0, False),
        ("a short packet", b"\x45\x00", tap.ETH_P_IP, 0, False),
    ],
)
def test_bpf_program_passes_only_incoming_probes(
    case: str, data: bytes, protocol: int, pkttype: int, passed: bool
) -> None:
    verdict = run_bpf(tap.bpf_program(51820), data, protocol=protocol, pkttype=pkttype)
    assert (verdict == tap.SNAP) is passed and verdict in (0, tap.SNAP), case


def test_parse_packet() -> None:
    assert tap.parse_packet(ipv4_udp(PROBE), 51820) == ("198.51.100.6", PROBE)
    assert tap.parse_packet(ipv4_udp(PROBE, ihl=6), 51820) == ("198.51.100.6", PROBE)
    assert tap.parse_packet(ipv6_udp(PROBE), 51820) == ("2001:db8::6", PROBE)
    assert tap.parse_packet(ipv4_udp(PROBE), 1) is None
    assert tap.parse_packet(ipv4_udp(PROBE, proto=6), 51820) is None
    assert tap.parse_packet(b"\x00" * 30, 51820) is None
    truncated = ipv4_udp(PROBE)[:30]
    assert tap.parse_packet(truncated, 51820) == ("198.51.100.6", truncated[28:])  # decode() refuses it later


def test_nft_script_counts_and_decides_nothing() -> None:
    script = nft.ruleset(51830)
    assert script.startswith("add table inet wgagent_probe\ndelete table inet wgagent_probe\n")
    assert "type filter hook input priority 2000000000; policy accept;" in script
    assert "type filter hook prerouting priority -2000000000; policy accept;" in script
    assert script.count("udp dport 51830 @th,64,32 0x77676167 update @pass") == 2
    for kind in ("hs_pre", "hs_post"):
        assert script.count(f"udp dport 51830 udp length 156 @th,64,32 0x1000000 update @{kind}") == 2
        assert script.count(f"udp dport 51830 udp length 100 @th,64,32 0x2000000 update @{kind}") == 2
    rules = "".join(part.split("}")[0] for part in script.split("policy accept;")[1:])
    for verdict in ("drop", "reject", "accept", "jump", "goto", "queue"):
        assert verdict not in rules


def test_the_handshake_matches_are_wireguard_initiations_and_responses() -> None:
    # linux drivers/net/wireguard/messages.h: the type as __le32; an initiation is 148 bytes in
    # all, a response 92 (wireguard-go device/noise-protocol.go: MessageInitiationSize, ...ResponseSize)
    initiation, response = struct.pack("<I", 1) + bytes(144), struct.pack("<I", 2) + bytes(88)
    assert [(int.from_bytes(m[:4], "big"), 8 + len(m)) for m in (initiation, response)] == list(nft.HANDSHAKE)


def test_parse_counts() -> None:
    doc = {"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"set": {"family": "inet", "name": "pass4", "table": "wgagent_probe", "elem": [
            {"elem": {"val": "198.51.100.6", "expires": 86399, "counter": {"packets": 3, "bytes": 159}}},
            {"elem": {"val": "198.51.100.7", "expires": 86399}},
        ]}},
        {"set": {"family": "inet", "name": "pass6", "table": "wgagent_probe", "elem": [
            {"elem": {"val": "2001:db8::6", "counter": {"packets": 1, "bytes": 60}}}]}},
        {"set": {"family": "inet", "name": "other", "table": "filter", "elem": [
            {"elem": {"val": "203.0.113.1", "counter": {"packets": 9, "bytes": 9}}}]}},
    ]}  # fmt: skip
    doc["nftables"].append({"set": {"family": "inet", "name": "hs_pre4", "table": "wgagent_probe", "elem": [
        {"elem": {"val": "198.51.100.9", "counter": {"packets": 7, "bytes": 1092}}}]}})  # fmt: skip
    assert nft.parse_counts(doc) == {
        "pass": {"198.51.100.6": 3, "2001:db8::6": 1},
        "hs_pre": {"198.51.100.9": 7},
        "hs_post": {},
    }
    assert nft.parse_counts({"nftables": [1, "x", {"set": []}]}) == {"pass": {}, "hs_pre": {}, "hs_post": {}}


def test_sender_sends_one_probe_per_target_over_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        port = rx.getsockname()[1]
        targets = [pb.Target("a", "127.0.0.1", port), pb.Target("b", "127.0.0.1", port)]
        result = sender.send("n1", targets, clock=lambda: 1_800_000_000.0, nonce=lambda n: bytes(n))
        assert result == {"a": None, "b": None}
        got = [rx.recvfrom(1024) for _ in range(2)]
    assert [pb.decode(d) for d, _ in got] == [pb.Probe("n1", 1_800_000_000, "0" * 16)] * 2
    assert got[0][1][1] != port  # from an ephemeral port, not the WireGuard one


def test_sender_reports_a_failed_send_and_goes_on() -> None:
    result = sender.send("n1", [pb.Target("bad", "127.0.0.1", 0), pb.Target("ok", "127.0.0.1", 9)])  # port 0: EINVAL
    assert result["bad"] is not None and "127.0.0.1:0" in result["bad"]
    assert result["ok"] is None
