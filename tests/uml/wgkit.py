"""Kernel WireGuard devices for tests that run inside a user-mode Linux kernel (see tests/uml).

Devices are made with ``ip`` and ``wg`` in lab namespaces, as flannel's are (a link of kind
``wireguard``, a private key, a listen port, peers), and read back with ``wg show <if> dump``
as the reference. Thousands of peers are added with one ``wg addconf`` (wireguard-tools
batches them into as few netlink messages as fit)::

    node = lab.host("node")
    dev = make_device(lab, node, "flannel-wg", port=51820)
    add_peers(lab, node, "flannel-wg", [PeerSpec(random_key(), allowed_ips=("10.42.1.0/24",))])
    backend = netlink_in(node)          # wgagent's NetlinkBackend, its sockets in that namespace

Keys of peers that never answer are random 32 bytes (the kernel accepts any); devices that
must handshake get real X25519 key pairs.
"""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tests.cluster.netns import InNetns
from tests.labkit import Host, Lab
from wgagent.wireguard.model import key_from_bytes
from wgagent.wireguard.netlink import NetlinkBackend, NetlinkSocket, open_socket
from wgagent.wireguard.uapi import x25519_public


def random_key() -> str:
    return key_from_bytes(os.urandom(32))


def keypair() -> tuple[str, str]:
    """(private, public), base64."""
    private = bytearray(os.urandom(32))
    # clamp as curve25519 does, so the key is what ``wg genkey`` would make
    private[0] &= 248
    private[31] = (private[31] & 127) | 64
    return key_from_bytes(bytes(private)), key_from_bytes(x25519_public(bytes(private)))


@dataclass(frozen=True)
class Device:
    host: Host
    ifname: str
    public_key: str
    port: int


@dataclass(frozen=True)
class PeerSpec:
    public_key: str
    endpoint: str | None = None
    allowed_ips: Sequence[str] = ()
    keepalive: int | None = None


def make_device(
    lab: Lab,
    host: Host,
    ifname: str,
    *,
    port: int,
    fwmark: int | None = None,
    address: str | None = None,
    up: bool = True,
) -> Device:
    """A kernel WireGuard link in ``host`` with a fresh key pair and ``port``."""
    private, public = keypair()
    key_file = os.path.join(host.dir, f"{ifname}.key")
    with open(key_file, "w") as f:
        f.write(private + "\n")
    lab.run(host, "ip", "link", "add", ifname, "type", "wireguard")
    args = ["wg", "set", ifname, "private-key", key_file, "listen-port", str(port)]
    if fwmark is not None:
        args += ["fwmark", hex(fwmark)]
    lab.run(host, *args)
    if address:
        lab.run(host, "ip", "addr", "add", address, "dev", ifname)
    if up:
        lab.run(host, "ip", "link", "set", ifname, "up")
    return Device(host, ifname, public, port)


def peer_conf(peers: Iterable[PeerSpec]) -> str:
    """``wg addconf`` text for ``peers``."""
    lines = []
    for p in peers:
        lines += ["[Peer]", f"PublicKey = {p.public_key}"]
        if p.endpoint:
            lines.append(f"Endpoint = {p.endpoint}")
        if p.allowed_ips:
            lines.append("AllowedIPs = " + ", ".join(p.allowed_ips))
        if p.keepalive:
            lines.append(f"PersistentKeepalive = {p.keepalive}")
    return "\n".join(lines) + "\n"


def add_peers(lab: Lab, host: Host, ifname: str, peers: Iterable[PeerSpec]) -> None:
    path = os.path.join(host.dir, f"{ifname}-{os.urandom(4).hex()}.conf")
    with open(path, "w") as f:
        f.write(peer_conf(peers))
    lab.run(host, "wg", "addconf", ifname, path, timeout=300)
    os.unlink(path)


def wg_dump(lab: Lab, host: Host, ifname: str) -> str:
    """``wg show <ifname> dump``: the reference reading of the device."""
    return lab.run(host, "wg", "show", ifname, "dump", timeout=120)


def netlink_in(ns: InNetns, *, timeout_s: float = 10.0) -> NetlinkBackend:
    """wgagent's kernel backend with its sockets opened in ``ns``'s network namespace (a
    netlink socket talks to the namespace it was made in, whichever thread then uses it)."""

    def factory(timeout: float) -> NetlinkSocket:
        return ns.call(open_socket, timeout)

    return NetlinkBackend(socket_factory=factory, timeout_s=timeout_s)


def poke(lab: Lab, host: Host, *addresses: str) -> None:
    """One UDP datagram from ``host`` to each address (port 9, discard): through a WireGuard
    route, it makes the device handshake with the peer first."""
    code = "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
    code += "for a in sys.argv[1:]: s.sendto(b'x', (a, 9))"
    lab.run(host, sys.executable, "-I", "-S", "-c", code, *addresses)


def hexkey(b64: str) -> str:
    return base64.b64decode(b64).hex()
