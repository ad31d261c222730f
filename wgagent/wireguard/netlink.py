"""The kernel backend: generic netlink family ``wireguard``, through pyroute2's ``WireGuard``.

The only module that imports pyroute2; its ``NetlinkError`` is translated here, once,
into ``errors.py`` classes. It works with pyroute2 0.7.2 (Debian 12) and 0.9.x:

- ``WireGuard()`` resolves the family when it is made; without kernel WireGuard both
  versions raise ``NetlinkError(2)`` there (and 0.7.2 logs two lines on the root logger,
  which we filter: the translated error says it better).
- ``info(ifname)`` returns the dump's messages (a list in 0.7.2, a tuple in 0.9.x). A device
  with many peers spans several messages: only the first carries the device attributes, and
  a peer with many allowed IPs continues in the next message under the same public key.
  Keys come back as base64 ``bytes``; the endpoint as an nla with ``addr``/``port``; the
  handshake as ``tv_sec``/``tv_nsec``; each allowed IP as an nla whose ``addr`` is a CIDR.
- ``set(peer={"remove": True})`` takes one peer per call, and 0.7.2 names the flag wrong
  (its ``WGPEER_F_REMOVE_ME`` is 0, a bit index), so removals are built here: one
  ``WG_CMD_SET_DEVICE`` message per ``PEERS_PER_MESSAGE`` peers, each with flag 1
  (``WGPEER_F_REMOVE_ME`` in ``uapi/linux/wireguard.h``), sent with ``nlm_request``.

pyroute2's sync API is blocking (0.9.x even runs its own event loop), so every call runs
in a worker thread with its own short-lived socket.

This module also holds the probe the module keeper uses: in a child process (standard
library only), in a private network namespace, create a throwaway link of kind ``wireguard``
and report what the kernel says (:func:`probe_link_support`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from wgagent.errors import DeviceNotFound, WireGuardError
from wgagent.wireguard.model import Device, Peer, key_to_bytes

log = logging.getLogger(__name__)

WGPEER_F_REMOVE_ME = 1
PEERS_PER_MESSAGE = 1000
"""The peers of one message sit in one nested attribute, whose length is 16 bits: a removal
is 48 bytes (nest header, key, flags), so 1000 of them (48 kB) fit with room to spare."""

WireGuardFactory = Callable[[], Any]
"""Makes a pyroute2 ``WireGuard`` (or, in tests, a fake with ``info``, ``nlm_request``,
``prid`` and ``close``)."""

T = TypeVar("T")


def _pyroute2_wireguard() -> Any:
    _quiet_family_lookup_errors()
    from pyroute2 import WireGuard

    return WireGuard()


class NetlinkBackend:
    kind = "netlink"

    def __init__(self, *, factory: WireGuardFactory | None = None, timeout_s: float = 10.0) -> None:
        self._factory = factory or _pyroute2_wireguard
        self.timeout_s = timeout_s

    async def get(self, ifname: str) -> Device:
        return await self._in_thread(self._get_sync, ifname)

    async def remove_peers(self, ifname: str, keys: Sequence[str]) -> None:
        keys = list(keys)
        if keys:
            await self._in_thread(self._remove_sync, ifname, keys)

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args), self.timeout_s)
        except TimeoutError as exc:
            raise WireGuardError(f"{args[0]}: the kernel did not answer within {self.timeout_s:g} s") from exc

    # --- blocking halves, run in a worker thread -------------------------------------------------

    def _get_sync(self, ifname: str) -> Device:
        wg = self._open(ifname)
        try:
            msgs = list(wg.info(ifname))
        except Exception as exc:
            raise translate(exc, ifname, "reading the device") from exc
        finally:
            _close(wg)
        return device_from_messages(ifname, msgs)

    def _remove_sync(self, ifname: str, keys: list[str]) -> None:
        from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST

        wg = self._open(ifname)
        try:
            for start in range(0, len(keys), PEERS_PER_MESSAGE):
                msg = remove_message(ifname, keys[start : start + PEERS_PER_MESSAGE])
                try:
                    for _ in wg.nlm_request(msg, msg_type=wg.prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK):
                        pass  # the ACK; an error is raised while iterating
                except Exception as exc:
                    done = f" ({start} of {len(keys)} removed before)" if start else ""
                    raise translate(exc, ifname, "removing peers" + done) from exc
        finally:
            _close(wg)

    def _open(self, ifname: str) -> Any:
        try:
            return self._factory()
        except Exception as exc:
            raise translate(exc, ifname, "opening the wireguard netlink family") from exc


def _close(wg: Any) -> None:
    with contextlib.suppress(Exception):
        wg.close()


def translate(exc: BaseException, ifname: str, doing: str) -> WireGuardError:
    """pyroute2's NetlinkError (or OSError) as the errors.py class a caller can act on."""
    from pyroute2.netlink.exceptions import NetlinkError

    if isinstance(exc, NetlinkError):
        code = exc.code
    elif isinstance(exc, OSError) and exc.errno is not None:
        code = exc.errno
    else:
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


# --- message shapes ----------------------------------------------------------------------------


def _key(value: Any) -> str:
    text = value.decode("ascii") if isinstance(value, bytes) else str(value)
    key_to_bytes(text)  # ValueError if the kernel (or pyroute2) gave something else
    return text


def _endpoint(nla: Any) -> str | None:
    if nla is None:
        return None
    addr, port = nla.get("addr"), nla.get("port")
    if not addr or addr in ("0.0.0.0", "::") or not port:  # noqa: S104 - the kernel's "unset"
        return None
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _handshake(nla: Any) -> float | None:
    if nla is None:
        return None
    sec, nsec = int(nla.get("tv_sec") or 0), int(nla.get("tv_nsec") or 0)
    return None if sec == 0 and nsec == 0 else sec + nsec / 1e9


def device_from_messages(ifname: str, msgs: Iterable[Any]) -> Device:
    """The Device in a ``WG_CMD_GET_DEVICE`` dump, as pyroute2 decodes it (both versions).

    Peers continued across messages (same key, more allowed IPs) are merged, as
    wireguard-tools does.
    """
    listen_port: int | None = None
    public_key: str | None = None
    peers: dict[str, dict[str, Any]] = {}
    try:
        for msg in msgs:
            port = msg.get_attr("WGDEVICE_A_LISTEN_PORT")
            if port:
                listen_port = int(port)
            pub = msg.get_attr("WGDEVICE_A_PUBLIC_KEY")
            if pub:
                key = _key(pub)
                public_key = None if key == "A" * 43 + "=" else key  # all zero: no private key yet
            for nla in msg.get_attr("WGDEVICE_A_PEERS") or ():
                key = _key(nla.get_attr("WGPEER_A_PUBLIC_KEY"))
                allowed = [a.get("addr") for a in (nla.get_attr("WGPEER_A_ALLOWEDIPS") or ()) if a.get("addr")]
                if key in peers:
                    peers[key]["allowed_ips"].extend(allowed)
                    continue
                keepalive = nla.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL")
                peers[key] = {
                    "public_key": key,
                    "endpoint": _endpoint(nla.get_attr("WGPEER_A_ENDPOINT")),
                    "allowed_ips": allowed,
                    "last_handshake": _handshake(nla.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")),
                    "rx_bytes": int(nla.get_attr("WGPEER_A_RX_BYTES") or 0),
                    "tx_bytes": int(nla.get_attr("WGPEER_A_TX_BYTES") or 0),
                    "keepalive": int(keepalive) if keepalive else None,
                }
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        raise WireGuardError(f"{ifname}: unexpected netlink reply: {type(exc).__name__}: {exc}") from exc
    built = tuple(Peer(**{**p, "allowed_ips": tuple(p["allowed_ips"])}) for p in peers.values())
    return Device(ifname, listen_port, public_key, built)


def remove_message(ifname: str, keys: Sequence[str]) -> Any:
    """One ``WG_CMD_SET_DEVICE`` message removing ``keys`` (at most PEERS_PER_MESSAGE)."""
    from pyroute2.netlink.generic.wireguard import WG_CMD_SET_DEVICE, WG_GENL_VERSION, wgmsg

    if len(keys) > PEERS_PER_MESSAGE:
        raise ValueError(f"at most {PEERS_PER_MESSAGE} peers per message")
    for key in keys:
        key_to_bytes(key)
    msg = wgmsg()
    msg["cmd"] = WG_CMD_SET_DEVICE
    msg["version"] = WG_GENL_VERSION
    msg["attrs"].append(["WGDEVICE_A_IFNAME", ifname])
    peers = [{"attrs": [["WGPEER_A_PUBLIC_KEY", key], ["WGPEER_A_FLAGS", WGPEER_F_REMOVE_ME]]} for key in keys]
    msg["attrs"].append(["WGDEVICE_A_PEERS", peers])
    return msg


class _FamilyLookupNoise(logging.Filter):
    """pyroute2 logs "Generic netlink protocol wireguard not found" on the root logger before
    raising; the raised error is translated into a better message, so the lines are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (
            record.name == "root"
            and (msg.startswith("Generic netlink protocol") or msg.startswith("Please check if the protocol module"))
        )


_noise_filter = _FamilyLookupNoise()


def _quiet_family_lookup_errors() -> None:
    root = logging.getLogger()
    if _noise_filter not in root.filters:
        root.addFilter(_noise_filter)


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
