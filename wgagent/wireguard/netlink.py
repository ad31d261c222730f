"""The kernel backend: WireGuard's generic netlink family, over a standard-library socket.

:mod:`wgagent.wireguard.genl` encodes the requests and decodes the replies; this module
holds the socket (``AF_NETLINK``/``NETLINK_GENERIC``) and translates what the kernel answers
into ``errors.py`` classes, once. A call is what ``wg`` does (wireguard-tools
``src/ipc-linux.h``):

- resolve the family ``wireguard`` (``CTRL_CMD_GETFAMILY``; the kernel answers ENOENT when
  it has no WireGuard, so that is :class:`DeviceNotFound`). Resolved per call: the id
  changes when the module is reloaded;
- ``get``: dump ``WG_CMD_GET_DEVICE`` and read every message to ``NLMSG_DONE``; when the
  device changed during the dump (``NLM_F_DUMP_INTR``), read it again, as
  ``kernel_get_device`` does (here at most ``DUMP_ATTEMPTS`` times);
- ``remove_peers``: one ``WG_CMD_SET_DEVICE`` per ``PEERS_PER_MESSAGE`` keys, each peer its
  key and ``WGPEER_F_REMOVE_ME``, each message acknowledged before the next.

pyroute2 is not used here: decoding a 10,000-peer dump into its ``nla`` objects took 11.8 s
(0.7.2, user-mode Linux) where ``wg show dump`` takes 0.27 s, and its sync API runs an event
loop of its own per socket in 0.9.x. The socket is blocking, with a timeout, and every call
runs in a worker thread with its own short-lived socket.

This module also holds the probe the module keeper uses: in a child process (standard
library only), in a private network namespace, create a throwaway link of kind ``wireguard``
and report what the kernel says (:func:`probe_link_support`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from wgagent.errors import DeviceNotFound, WireGuardError
from wgagent.wireguard import genl
from wgagent.wireguard.genl import PEERS_PER_MESSAGE, Dump, DumpReader
from wgagent.wireguard.model import Device, key_to_bytes

__all__ = ["PEERS_PER_MESSAGE", "NetlinkBackend", "probe_link_support"]

RECV_BYTES = 1 << 16
"""Above the kernel's largest dump message (32 kB: ``netlink_dump`` sizes them by the reader's
buffer, up to that) and an error reply quoting a 48 kB removal request."""
DUMP_ATTEMPTS = 5

T = TypeVar("T")


class NetlinkSocket(Protocol):
    """What this module uses of a ``socket.socket`` (tests give a fake)."""

    def send(self, data: bytes, /) -> int: ...

    def recv(self, size: int, /) -> bytes: ...

    def close(self) -> None: ...


SocketFactory = Callable[[float], NetlinkSocket]
"""``timeout_s -> socket``: :func:`open_socket`, or a fake in tests."""


def open_socket(timeout_s: float) -> NetlinkSocket:
    """A generic netlink socket, bound, with a timeout on every send and receive."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, genl.NETLINK_GENERIC)
    try:
        sock.settimeout(timeout_s)
        sock.bind((0, 0))
    except BaseException:
        sock.close()
        raise
    return sock


class NetlinkBackend:
    kind = "netlink"

    def __init__(self, *, socket_factory: SocketFactory = open_socket, timeout_s: float = 10.0) -> None:
        self._socket_factory = socket_factory
        self.timeout_s = timeout_s

    async def get(self, ifname: str) -> Device:
        return (await self.dump(ifname)).device

    async def dump(self, ifname: str) -> Dump:
        """The device with what ``wg show`` also prints (fwmark) and how the dump went."""
        _check_name(ifname)
        return await self._in_thread(self._dump_sync, ifname)

    async def remove_peers(self, ifname: str, keys: Sequence[str]) -> None:
        _check_name(ifname)
        keys = list(keys)
        if keys:
            await self._in_thread(self._remove_sync, ifname, keys)

    async def set_endpoints(self, ifname: str, endpoints: Sequence[tuple[str, str, int]]) -> None:
        """Set existing peers' endpoints ((base64 key, host, port), never creating a peer)."""
        _check_name(ifname)
        if endpoints:
            await self._in_thread(self._endpoints_sync, ifname, list(endpoints))

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args), self.timeout_s)
        except TimeoutError as exc:
            raise WireGuardError(f"{args[0]}: the kernel did not answer within {self.timeout_s:g} s") from exc

    # --- blocking halves, run in a worker thread -------------------------------------------------

    def _dump_sync(self, ifname: str) -> Dump:
        for _ in range(DUMP_ATTEMPTS):
            try:
                with self._session(ifname, "reading the device") as (sock, family):
                    return _read_dump(sock, family, ifname)
            except _Interrupted:
                continue
        raise WireGuardError(f"{ifname}: the device changed during each of {DUMP_ATTEMPTS} reads; try again")

    def _remove_sync(self, ifname: str, keys: list[str]) -> None:
        raw = [key_to_bytes(k) for k in keys]  # ValueError for a bad key, before anything is sent
        with self._session(ifname, "removing peers") as (sock, family):
            requests = genl.remove_requests(family, 2, ifname, raw)
            for n, request in enumerate(requests):
                done = f" ({n * PEERS_PER_MESSAGE} of {len(keys)} removed before)" if n else ""
                try:
                    sock.send(request)
                    _read_ack(sock, 2 + n)
                except OSError as exc:
                    raise translate(exc, ifname, "removing peers" + done) from exc

    def _endpoints_sync(self, ifname: str, endpoints: list[tuple[str, str, int]]) -> None:
        raw = [(key_to_bytes(k), host, port) for k, host, port in endpoints]
        with self._session(ifname, "setting endpoints") as (sock, family):
            sock.send(genl.set_endpoints_request(family, 2, ifname, raw))
            _read_ack(sock, 2)

    @contextlib.contextmanager
    def _session(self, ifname: str, doing: str) -> Any:
        """A socket and the family id; OSError while in it becomes a WireGuardError."""
        try:
            sock = self._socket_factory(self.timeout_s)
        except OSError as exc:
            raise translate(exc, ifname, "opening a netlink socket") from exc
        try:
            try:
                sock.send(genl.family_request(1))
                family = genl.parse_family_id(sock.recv(RECV_BYTES), 1)
            except OSError as exc:
                raise translate(exc, ifname, "opening the wireguard netlink family") from exc
            try:
                yield sock, family
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    raise _Interrupted from exc
                raise translate(exc, ifname, doing) from exc
        finally:
            with contextlib.suppress(OSError):
                sock.close()


def _check_name(ifname: str) -> None:
    try:
        genl.check_ifname(ifname)
    except ValueError as exc:
        raise DeviceNotFound(f"no interface {ifname}: {exc}") from exc


class _Interrupted(Exception):
    """The dump saw NLM_F_DUMP_INTR: read again."""


def _read_dump(sock: NetlinkSocket, family: int, ifname: str) -> Dump:
    sock.send(genl.get_device_request(family, 2, ifname))
    reader = DumpReader(ifname, 2)
    while True:
        data = sock.recv(RECV_BYTES)
        if not data:  # netlink never sends an empty datagram; do not spin on a broken socket
            raise WireGuardError(f"{ifname}: the netlink socket returned nothing before the dump ended")
        if reader.feed(data):
            return reader.result()


def _read_ack(sock: NetlinkSocket, seq: int) -> None:
    """Wait for the ``NLMSG_ERROR`` answering request ``seq``; OSError(errno) if it is one."""
    while True:
        data = sock.recv(RECV_BYTES)
        if not data:
            raise WireGuardError("the netlink socket returned nothing before the kernel's answer")
        for msg_type, _, msg_seq, off, end in genl.messages(data):
            if msg_type == genl.NLMSG_ERROR and msg_seq == seq:
                genl.raise_error(genl.error_code(data, off, end), "the kernel refused")
                return


def translate(exc: BaseException, ifname: str, doing: str) -> WireGuardError:
    """An OSError (the socket's, or the errno the kernel answered) as the errors.py class a
    caller can act on."""
    if isinstance(exc, WireGuardError):
        return exc
    if isinstance(exc, TimeoutError):
        return WireGuardError(f"{ifname}: {doing}: the kernel did not answer in time")
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None:
        return WireGuardError(f"{ifname}: {doing} failed: {type(exc).__name__}: {exc}")
    if code == errno.ENOENT and doing.startswith("opening"):
        return DeviceNotFound(
            f"{ifname}: the kernel has no WireGuard (no generic netlink family 'wireguard': module not loaded?)"
            " and there is no UAPI socket"
        )
    if code == errno.ENODEV:
        return DeviceNotFound(f"no interface {ifname}")
    if code == errno.EOPNOTSUPP:
        return DeviceNotFound(f"{ifname} is not a WireGuard interface")
    if code in (errno.EPERM, errno.EACCES):
        return WireGuardError(f"{ifname}: {doing}: permission denied; wgagent needs CAP_NET_ADMIN (run as root)")
    return WireGuardError(f"{ifname}: {doing} failed: {os.strerror(code)} (netlink error {code})")


# --- the probe: can this kernel make a wireguard link at all? -----------------------------------

PROBE_IFNAME = "wgagentprobe0"

# The probe runs as ``python -I -S -c _PROBE_SOURCE``: the standard library only, no site
# packages, so the child starts in ~30 ms. (Importing wgagent and pyroute2 there took ~0.4 s,
# most of the time to READY=1 on a kernel without WireGuard, where every start probes.)
# One RTM_NEWLINK request, IFLA_IFNAME + IFLA_LINKINFO/IFLA_INFO_KIND (the kind, "wireguard"),
# with NLM_F_ACK: the kernel answers an NLMSG_ERROR carrying 0 (created) or -errno.
_PROBE_SOURCE = r"""
import ctypes, errno, json, os, socket, struct, sys
CLONE_NEWNET, CLONE_NEWUSER = 0x40000000, 0x10000000
RTM_NEWLINK, NLMSG_ERROR = 16, 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
IFLA_IFNAME, IFLA_LINKINFO, IFLA_INFO_KIND = 3, 18, 1

def out(**kw):
    print(json.dumps(kw))

def attr(kind, data):
    size = 4 + len(data)
    return struct.pack("HH", size, kind) + data + bytes(-size % 4)

def main(ifname, kind):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        first = ctypes.get_errno()
        # Without CAP_SYS_ADMIN, a user namespace may still let us own a network namespace.
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
            return out(result="unavailable", detail="cannot unshare a network namespace: " + os.strerror(first))
    body = struct.pack("BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0)
    body += attr(IFLA_IFNAME, ifname.encode() + b"\0")
    body += attr(IFLA_LINKINFO, attr(IFLA_INFO_KIND, kind.encode() + b"\0"))
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE
    request = struct.pack("IHHII", 16 + len(body), RTM_NEWLINK, flags, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as s:
        s.bind((0, 0))
        s.send(request)
        reply = s.recv(65536)
    _, msg_type, _, seq, _ = struct.unpack_from("IHHII", reply)
    if msg_type != NLMSG_ERROR or seq != 1 or len(reply) < 20:
        return out(result="error", errno=0, detail="unexpected netlink reply of type %d" % msg_type)
    code = -struct.unpack_from("i", reply, 16)[0]
    if code == 0:
        return out(result="supported", detail="created a %s link in a private namespace" % kind)
    result = "unsupported" if code == errno.EOPNOTSUPP else "error"
    return out(result=result, errno=code, detail=os.strerror(code))

main(sys.argv[1], sys.argv[2])
"""


async def probe_link_support(timeout_s: float = 20.0, *, kind: str = "wireguard") -> tuple[str, str]:
    """``(result, detail)``: result is ``supported``, ``unsupported`` (EOPNOTSUPP: this
    kernel has no WireGuard), ``error`` (another errno) or ``unavailable`` (no probe).
    ``kind`` is the link kind to create (tests probe one the kernel surely has)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-S",
            "-c",
            _PROBE_SOURCE,
            PROBE_IFNAME,
            kind,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
    except OSError as exc:
        return "unavailable", f"cannot start the probe: {exc.strerror or exc}"
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return "unavailable", f"the probe did not finish within {timeout_s:g} s"
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        data = json.loads(lines[-1]) if lines else None
    except ValueError:
        data = None
    if not isinstance(data, dict) or data.get("result") not in ("supported", "unsupported", "error", "unavailable"):
        tail = err.decode(errors="replace").strip().splitlines()
        return "unavailable", "the probe failed: " + (tail[-1] if tail else f"exit status {proc.returncode}")
    return str(data["result"]), str(data.get("detail", ""))
