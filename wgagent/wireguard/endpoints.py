"""Setting peers' endpoints on a WireGuard device, through either backend, in one transaction.

Only existing peers are touched, never created:

- UAPI (wireguard-go, boringtun): ``set=1``, then per peer ``public_key=<hex>``,
  ``update_only=true`` (wireguard-go device/uapi.go: a peer that does not exist becomes a dummy
  that is never added), ``endpoint=<ip:port>``; the reply is ``errno=0``.
- netlink: one ``WG_CMD_SET_DEVICE`` with, per peer, ``WGPEER_A_PUBLIC_KEY``, ``WGPEER_A_FLAGS``
  = ``WGPEER_F_UPDATE_ONLY`` and ``WGPEER_A_ENDPOINT`` (``genl.set_endpoints_request``). The
  flag is 1 << 2 = 4 (include/uapi/linux/wireguard.h, ``enum wgpeer_flag``); pyroute2 0.7.2
  (Debian 12) defines its ``WGPEER_F_UPDATE_ONLY`` as 2, which is
  ``WGPEER_F_REPLACE_ALLOWEDIPS``: sent with no allowed IPs it would *wipe the peer's allowed IPs*.

:func:`encode_set_endpoints` is pure; the two setters are thin adapters implementing
:class:`wgagent.mesh.heal.EndpointSetter`, and :func:`open_endpoint_setter` picks one per
interface as :func:`wgagent.wireguard.backend.open_backend` picks the reader.

Why not a method of :class:`~wgagent.wireguard.backend.Backend`: only the mesh part's heal sets
endpoints; peer GC, the interface check, doctor and ``wgagent gc`` read and remove. The
consumer states what it needs (``heal.EndpointSetter``), and every reader (and every test
fake of one) stays as small as it is.
"""

from __future__ import annotations

import asyncio
import binascii
import os
from collections.abc import Mapping
from ipaddress import ip_address

from wgagent.errors import DeviceNotFound, WireGuardError
from wgagent.wireguard.backend import has_uapi_socket
from wgagent.wireguard.model import KEY_LEN, key_to_bytes
from wgagent.wireguard.netlink import NetlinkBackend
from wgagent.wireguard.uapi import errno_text, parse_errno


def _check_endpoint(endpoint: str) -> tuple[str, int]:
    """``203.0.113.7:51820`` or ``[2001:db8::7]:51820`` -> (address, port); ValueError otherwise."""
    host, _, port_text = endpoint.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip_address(host)
    except ValueError:
        raise ValueError(f"not an endpoint: {endpoint!r}") from None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"not an endpoint: {endpoint!r}")
    return host, int(port_text)


def encode_set_endpoints(endpoints: Mapping[str, str]) -> bytes:
    """One UAPI ``set=1`` transaction setting each existing peer's endpoint.

    >>> encode_set_endpoints({"q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=": "203.0.113.7:51820"}).decode().split()
    ['set=1', 'public_key=abcdef1234567890abcdef1234567890abcdef1234567890abcdef1234567890', 'update_only=true', \
'endpoint=203.0.113.7:51820']
    """
    parts = ["set=1\n"]
    for key, endpoint in endpoints.items():
        try:
            raw = binascii.a2b_base64(key, strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("not a base64 WireGuard key") from exc
        if len(raw) != KEY_LEN:
            raise ValueError("not a base64 WireGuard key")
        _check_endpoint(endpoint)
        parts.append(f"public_key={raw.hex()}\nupdate_only=true\nendpoint={endpoint}\n")
    parts.append("\n")
    return "".join(parts).encode("ascii")


def open_endpoint_setter(
    ifname: str, uapi_dir: str, *, timeout_s: float = 10.0
) -> UapiEndpointSetter | NetlinkEndpointSetter:
    """The setter for ``ifname``: UAPI if its socket exists, else kernel netlink (as ``open_backend``)."""
    if has_uapi_socket(uapi_dir, ifname):
        return UapiEndpointSetter(uapi_dir, timeout_s=timeout_s)
    return NetlinkEndpointSetter(timeout_s=timeout_s)


class UapiEndpointSetter:
    """Sets endpoints through ``<uapi_dir>/<ifname>.sock``."""

    def __init__(self, uapi_dir: str, *, timeout_s: float = 10.0) -> None:
        self.uapi_dir = uapi_dir
        self.timeout_s = timeout_s

    async def set_endpoints(self, ifname: str, endpoints: Mapping[str, str]) -> None:
        if not endpoints:
            return
        request = encode_set_endpoints(endpoints)
        path = os.path.join(self.uapi_dir, f"{ifname}.sock")
        try:
            reply = await asyncio.wait_for(_exchange(path, request), self.timeout_s)
        except FileNotFoundError as exc:
            raise DeviceNotFound(f"{ifname}: no UAPI socket {path}") from exc
        except (TimeoutError, OSError) as exc:
            raise WireGuardError(f"{path}: setting endpoints on {ifname} failed: {exc or 'timed out'}") from exc
        code = parse_errno(reply, path)
        if code != 0:
            raise WireGuardError(f"{path}: setting endpoints on {ifname} failed: {errno_text(code)}")


async def _exchange(path: str, request: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(request)
        await writer.drain()
        reply = b""
        while not reply.endswith(b"\n\n") and len(reply) <= 4096:
            chunk = await reader.read(4096)
            if not chunk:
                break
            reply += chunk
        return reply
    finally:
        writer.close()


class NetlinkEndpointSetter:
    """Sets endpoints through the kernel's ``wireguard`` generic netlink family
    (:meth:`wgagent.wireguard.netlink.NetlinkBackend.set_endpoints`)."""

    def __init__(self, backend: NetlinkBackend | None = None, *, timeout_s: float = 10.0) -> None:
        self._backend = backend or NetlinkBackend(timeout_s=timeout_s)

    async def set_endpoints(self, ifname: str, endpoints: Mapping[str, str]) -> None:
        if not endpoints:
            return
        checked = []
        for key, endpoint in endpoints.items():
            key_to_bytes(key)
            host, port = _check_endpoint(endpoint)
            checked.append((key, host, port))
        await self._backend.set_endpoints(ifname, checked)
