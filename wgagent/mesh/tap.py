"""Seeing inbound probes at the device, before the host firewall: AF_PACKET with a BPF filter.

Why AF_PACKET rather than an nftables counter in a raw/prerouting hook: a packet socket gets
its copy in ``__netif_receive_skb_core`` (linux net/core/dev.c: the ``ptype_all`` taps, before
``ip_rcv`` runs ``NF_INET_PRE_ROUTING``), so nothing netfilter does, nftables or
iptables-legacy, raw or filter, hides an arrival; it carries the payload, so the sender's
name in the probe is read (a prerouting counter sees only addresses); and it changes nothing
on the host: no rule is added to the host's ruleset for this half.

The classic BPF program (:func:`bpf_program`) runs in the kernel for every packet and passes
only incoming (not ``PACKET_OUTGOING``) IPv4/IPv6 UDP datagrams, unfragmented, to the
WireGuard port whose payload starts with ``wgag`` (the probe's prefix); everything else costs
one short filter run and no copy, no wake-up. The socket is made for ``ETH_P_ALL`` on every
interface (Python's ``bind`` cannot name "all interfaces"), the filter attached at once, and
what was queued in between is discarded. Each datagram is parsed again here
(:func:`parse_packet`) and the probe decoded strictly (:func:`wgagent.mesh.probe.decode`).

Needs CAP_NET_RAW (the systemd unit must allow it and ``AF_PACKET`` in
``RestrictAddressFamilies=``: phase 2).
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

from wgagent.errors import TapUnavailable
from wgagent.mesh.probe import MAGIC32, MAX_BYTES, Arrival, decode

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4
SKF_AD_OFF = -0x1000
SKF_AD_PROTOCOL = 0
SKF_AD_PKTTYPE = 4
IPPROTO_UDP = 17
SNAP = 64 + MAX_BYTES
RCVBUF = 1 << 20

# classic BPF opcodes (linux include/uapi/linux/filter.h, bpf_common.h)
LD_W_ABS, LD_H_ABS, LD_B_ABS = 0x20, 0x28, 0x30
LD_H_IND, LD_W_IND = 0x48, 0x40
LDX_B_MSH = 0xB1
JEQ_K, JSET_K = 0x15, 0x45
RET_K = 0x06


def _ad(offset: int) -> int:
    return (SKF_AD_OFF + offset) & 0xFFFFFFFF


def bpf_program(port: int) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) instructions passing only probes to ``port`` (see the module doc)."""
    drop, v6 = "drop", "v6"
    prog: list[tuple[int, object, object, int]] = [
        (LD_W_ABS, 0, 0, _ad(SKF_AD_PKTTYPE)),
        (JEQ_K, drop, 0, PACKET_OUTGOING),
        (LD_H_ABS, 0, 0, _ad(SKF_AD_PROTOCOL)),
        (JEQ_K, 0, v6, ETH_P_IP),
        # IPv4: UDP, not a later fragment, destination port, payload prefix
        (LD_B_ABS, 0, 0, 9),
        (JEQ_K, 0, drop, IPPROTO_UDP),
        (LD_H_ABS, 0, 0, 6),
        (JSET_K, drop, 0, 0x1FFF),
        (LDX_B_MSH, 0, 0, 0),
        (LD_H_IND, 0, 0, 2),
        (JEQ_K, 0, drop, port),
        (LD_W_IND, 0, 0, 8),
        (JEQ_K, 0, drop, MAGIC32),
        (RET_K, 0, 0, SNAP),
        # IPv6 (no extension headers): next header UDP, port at 40+2, payload at 40+8
        (JEQ_K, 0, drop, ETH_P_IPV6),
        (LD_B_ABS, 0, 0, 6),
        (JEQ_K, 0, drop, IPPROTO_UDP),
        (LD_H_ABS, 0, 0, 42),
        (JEQ_K, 0, drop, port),
        (LD_W_ABS, 0, 0, 48),
        (JEQ_K, 0, drop, MAGIC32),
        (RET_K, 0, 0, SNAP),
        (RET_K, 0, 0, 0),
    ]
    labels = {v6: 14, drop: len(prog) - 1}
    out = []
    for i, (code, jt, jf, k) in enumerate(prog):
        out.append((code, _jump(jt, labels, i), _jump(jf, labels, i), k))
    return out


def _jump(target: object, labels: dict[str, int], at: int) -> int:
    if isinstance(target, str):
        offset = labels[target] - at - 1
        assert 0 <= offset < 256
        return offset
    assert isinstance(target, int)
    return target


def parse_packet(data: bytes, port: int) -> tuple[str, bytes] | None:
    """(source address, UDP payload) of an IPv4/IPv6 datagram to ``port``, or None."""
    if len(data) < 28:
        return None
    version = data[0] >> 4
    if version == 4:
        ihl = (data[0] & 0x0F) * 4
        if ihl < 20 or data[9] != IPPROTO_UDP or len(data) < ihl + 8:
            return None
        src = str(IPv4Address(data[12:16]))
        udp = data[ihl:]
    elif version == 6 and len(data) >= 48:
        if data[6] != IPPROTO_UDP:
            return None
        src = str(IPv6Address(data[8:24]))
        udp = data[40:]
    else:
        return None
    dport, length = struct.unpack("!2xHH", udp[:6])
    if dport != port or length < 8:
        return None
    return src, udp[8:length]


class ProbeTap:
    """The AF_PACKET socket; :meth:`drain` returns the probes that arrived since the last call."""

    def __init__(self, port: int, *, clock: Callable[[], float] = time.time) -> None:
        self.port = port
        self.clock = clock
        self._sock: socket.socket | None = None
        self.rejected = 0
        """Datagrams that passed the filter but are no valid probe (counted, never kept)."""

    def open(self) -> None:
        """Create, filter and bind the socket; TapUnavailable saying why it cannot."""
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        except PermissionError as exc:
            raise TapUnavailable("no CAP_NET_RAW: the AF_PACKET socket that sees probes needs it") from exc
        except OSError as exc:
            raise TapUnavailable(f"no AF_PACKET socket: {exc.strerror or exc}") from exc
        try:
            _attach(sock, bpf_program(self.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.setblocking(False)
            _discard_queued(sock)
        except OSError as exc:
            sock.close()
            raise TapUnavailable(f"cannot set up the AF_PACKET socket: {exc.strerror or exc}") from exc
        self._sock = sock

    def fileno(self) -> int:
        if self._sock is None:
            raise TapUnavailable("the tap is not open")
        return self._sock.fileno()

    def drain(self, max_packets: int = 4096) -> list[Arrival]:
        """Every probe queued now (at most ``max_packets``), without blocking."""
        if self._sock is None:
            return []
        out = []
        for _ in range(max_packets):
            try:
                data = self._sock.recv(SNAP)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN):
                    break
                raise TapUnavailable(f"reading the AF_PACKET socket failed: {exc.strerror or exc}") from exc
            parsed = parse_packet(data, self.port)
            probe = decode(parsed[1]) if parsed is not None else None
            if parsed is None or probe is None:
                self.rejected += 1
                continue
            out.append(Arrival(probe.node, parsed[0], self.clock()))
        return out

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _discard_queued(sock: socket.socket) -> None:
    """Drop what arrived between the socket's creation and its filter (not filtered)."""
    while True:
        try:
            sock.recv(1)
        except (BlockingIOError, InterruptedError):
            return


def _attach(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER with ``struct sock_fprog { unsigned short len; struct sock_filter *filter; }``."""
    insns = b"".join(struct.pack("HBBI", code, jt, jf, k) for code, jt, jf, k in program)
    buf = ctypes.create_string_buffer(insns)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
