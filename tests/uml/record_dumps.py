"""Record WireGuard netlink dumps from the user-mode Linux kernel into tests/data/wg-dumps.json.gz.

    sudo .venv/bin/python -m tests.uml.record_dumps        # boots the wireguard kernel, ~15 s

The unit tests (tests/unit/test_wireguard_genl.py) replay these byte for byte: wgagent's
decoder must equal pyroute2's decoding of the same bytes, and ``wg show <if> dump`` taken
right after each recording. Inside the kernel (``--inside``), in lab namespaces:

- ``mixed``: ``flannel-wg`` (port 51820, fwmark 0x2a) with two live peers that really
  handshook (one over IPv4, one over IPv6, keepalive 25), 400 dead ones (IPv4 and IPv6
  endpoints, none, keepalive, no allowed IPs, IPv4 and IPv6 allowed IPs) and one with 2,500
  allowed IPs, so peers continue across messages. Recorded twice: as wgagent reads it (64 KiB
  buffer: 32 KiB messages) and as ``wg`` reads it (4 KiB buffer, libmnl's size);
- ``bare``: a device with no key, no port, no peers, down;
- ``interrupted``: the ``mixed`` dump (wg-sized) while a peer is added after its first
  datagram: the kernel flags the first message built after the change ``NLM_F_DUMP_INTR``
  (``nl_dump_check_consistent``). Kept up to that datagram: a reader stops there and reads
  again, as libmnl's ``mnl_cb_run`` returns EINTR at the flag and ``wg`` retries.

Every recording is checked against ``wg show`` before it is written (it is re-recorded if a
keepalive changed a counter in between).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import gzip
import json
import os
import shutil
import subprocess
import sys
from typing import Any

from tests.cluster.netns import InNetns
from tests.labkit import Host, Lab, wait_for
from tests.uml import ROOT, boot, inside, wgshow
from tests.uml.wgkit import Device, PeerSpec, add_peers, make_device, poke, random_key, wg_dump
from wgagent.wireguard import genl
from wgagent.wireguard.netlink import NetlinkBackend, NetlinkSocket, open_socket

OUT = ROOT / "tests" / "data" / "wg-dumps.json.gz"
IF = "flannel-wg"
DEAD = 400
BIG_IPS = 2500


class Recording:
    """A socket that keeps every datagram received after the family lookup."""

    def __init__(self, sock: NetlinkSocket, recv_size: int | None) -> None:
        self.sock, self.recv_size = sock, recv_size
        self.datagrams: list[bytes] = []
        self._first = True

    def send(self, data: bytes, /) -> int:
        return self.sock.send(data)

    def recv(self, size: int, /) -> bytes:
        data = self.sock.recv(self.recv_size or size)
        if not self._first:
            self.datagrams.append(data)
        self._first = False
        return data

    def close(self) -> None:
        self.sock.close()


def record(ns: InNetns, ifname: str, recv_size: int | None) -> tuple[list[bytes], genl.Dump]:
    made: list[Recording] = []

    def factory(timeout: float) -> NetlinkSocket:
        made.append(Recording(ns.call(open_socket, timeout), recv_size))
        return made[-1]

    dump = asyncio.run(NetlinkBackend(socket_factory=factory).dump(ifname))
    return made[-1].datagrams, dump


def record_interrupted(lab: Lab, host: Host, ns: InNetns) -> list[bytes]:
    """The dump of ``IF`` with a peer added after its first datagram (wg-sized reads)."""
    sock = ns.call(open_socket, 10.0)
    try:
        sock.send(genl.family_request(1))
        family = genl.parse_family_id(sock.recv(4096), 1)
        sock.send(genl.get_device_request(family, 2, IF))
        datagrams = [sock.recv(4096)]
        lab.run(host, "wg", "set", IF, "peer", random_key(), "allowed-ips", "10.99.0.1/32")
        while not any(flags & genl.NLM_F_DUMP_INTR for _, flags, *_ in genl.messages(datagrams[-1])):
            if any(t == genl.NLMSG_DONE for t, *_ in genl.messages(datagrams[-1])):
                raise SystemExit("record_dumps: the dump ended without NLM_F_DUMP_INTR")
            datagrams.append(sock.recv(4096))
    finally:
        sock.close()
    return datagrams


def mixed_world(lab: Lab) -> tuple[Host, Device]:
    node, peer4, peer6 = lab.host("node"), lab.host("peer4"), lab.host("peer6")
    lab.link(node, "eth4", "198.51.100.1/30", peer4, "eth0", "198.51.100.2/30")
    lab.link(node, "eth6", None, peer6, "eth0", None)
    lab.run(node, "ip", "-6", "addr", "add", "2001:db8:6::1/64", "dev", "eth6", "nodad")
    lab.run(peer6, "ip", "-6", "addr", "add", "2001:db8:6::2/64", "dev", "eth0", "nodad")
    dev = make_device(lab, node, IF, port=51820, fwmark=0x2A, address="10.42.0.1/16")
    d4 = make_device(lab, peer4, "wg0", port=51820, address="10.42.4.1/16")
    d6 = make_device(lab, peer6, "wg0", port=51820, address="10.42.6.1/16")
    add_peers(lab, peer4, "wg0", [PeerSpec(dev.public_key, "198.51.100.1:51820", ("10.42.0.0/24",))])
    add_peers(lab, peer6, "wg0", [PeerSpec(dev.public_key, "[2001:db8:6::1]:51820", ("10.42.0.0/24",))])
    peers = [
        PeerSpec(d4.public_key, "198.51.100.2:51820", ("10.42.4.0/24",), keepalive=25),
        PeerSpec(d6.public_key, "[2001:db8:6::2]:51820", ("10.42.6.0/24", "fd00:6::/64"), keepalive=25),
    ]
    for i in range(DEAD):
        kind = i % 4
        if kind == 0:
            peers.append(PeerSpec(random_key(), f"203.0.113.{i % 250 + 1}:51820", (f"10.100.{i >> 8}.{i & 255}/32",)))
        elif kind == 1:
            peers.append(PeerSpec(random_key(), f"[2001:db8:ffff::{i:x}]:51821", (f"fd00:100::{i:x}/128",)))
        elif kind == 2:
            peers.append(PeerSpec(random_key(), keepalive=25))  # no endpoint: it never sends
        else:
            peers.append(PeerSpec(random_key(), None, (f"10.101.{i >> 8}.{i & 255}/32", f"fd00:101::{i:x}/128")))
    big = [f"10.{102 + (j >> 16)}.{(j >> 8) & 255}.{j & 255}/32" for j in range(BIG_IPS - 100)]
    big += [f"fd00:102::{j:x}/128" for j in range(100)]
    peers.insert(300, PeerSpec(random_key(), "203.0.113.77:51820", big))
    add_peers(lab, node, IF, peers)

    def handshook() -> bool:
        shown = wgshow.parse(wg_dump(lab, node, IF))
        return all(p.handshake_s for p in shown.peers[:2])

    poke(lab, node, "10.42.4.1", "10.42.6.1")
    wait_for(handshook, 20, "handshakes with peer4 and peer6")
    return node, dev


def consistent(lab: Lab, host: Host, ifname: str, ns: InNetns, recv_size: int | None) -> dict[str, Any]:
    for _ in range(5):
        datagrams, dump = record(ns, ifname, recv_size)
        shown = wg_dump(lab, host, ifname)
        if not wgshow.differences(dump, wgshow.parse(shown)):
            return {
                "ifname": ifname,
                "seq": 2,
                "datagrams": [base64.b64encode(d).decode() for d in datagrams],
                "wg_show_dump": shown,
                "messages": dump.messages,
                "continued": dump.continued,
            }
    diff = wgshow.differences(dump, wgshow.parse(shown))
    raise SystemExit(f"record_dumps: {ifname} never read the same as wg show: {diff}")


def inside_main(out: str) -> int:
    data: dict[str, Any] = {
        "recorded": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        "kernel": os.uname().release,
        "wg": subprocess.run(["wg", "--version"], capture_output=True, text=True).stdout.strip(),
        "dumps": {},
    }
    with Lab() as lab:
        node, _ = mixed_world(lab)
        bare = lab.host("bare")
        lab.run(bare, "ip", "link", "add", "wg-bare", "type", "wireguard")
        with InNetns(node.netns) as ns, InNetns(bare.netns) as bare_ns:
            data["dumps"]["mixed"] = consistent(lab, node, IF, ns, None)
            data["dumps"]["mixed-wg-sized"] = consistent(lab, node, IF, ns, 4096)
            data["dumps"]["bare"] = consistent(lab, bare, "wg-bare", bare_ns, None)
            interrupted = record_interrupted(lab, node, ns)
            data["dumps"]["interrupted"] = {
                "ifname": IF,
                "seq": 2,
                "datagrams": [base64.b64encode(d).decode() for d in interrupted],
            }
    with gzip.open(out, "wt") as f:
        json.dump(data, f, indent=0)
    for name, d in data["dumps"].items():
        print(f"{name}: {len(d['datagrams'])} datagrams, {d.get('messages')} messages, {d.get('continued')} continued")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inside", metavar="OUT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inside:
        assert inside(), "--inside runs in the kernel"
        return inside_main(args.inside)
    tmp = f"/var/tmp/wg-dumps-{os.getpid()}.json.gz"
    result = boot("wireguard", [sys.executable, "-m", "tests.uml.record_dumps", "--inside", tmp], timeout_s=300)
    print(result.output)
    if result.status != 0:
        print(result.tail(), file=sys.stderr)
        return 1
    shutil.move(tmp, OUT)
    print(f"written: {OUT} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
