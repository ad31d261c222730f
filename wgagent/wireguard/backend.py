"""What a WireGuard backend does, which one serves an interface, and which interfaces to watch.

Like wireguard-tools' ``ipc.c``: an interface with a UAPI socket
(``<uapi_dir>/<ifname>.sock``) belongs to a userspace implementation (wireguard-go,
boringtun); any other is asked through the kernel's generic netlink family. Callers hold
a :class:`Backend` and never learn which one it is, except from ``kind`` in reports.

``wireguard.interface: auto`` means flannel's devices: ``flannel-wg`` and ``flannel-wg-v6``
(wireguard-native), or ``flannel.1`` of k3s's old extension backend when it is a WireGuard
device (with the vxlan backend ``flannel.1`` is a vxlan device, and is not ours).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from wgagent.wireguard.model import Device


class Backend(Protocol):
    kind: str
    """``uapi`` or ``netlink``, for reports."""

    async def get(self, ifname: str) -> Device:
        """The device and its peers; DeviceNotFound if there is no such WireGuard device."""
        ...

    async def remove_peers(self, ifname: str, keys: Sequence[str]) -> None:
        """Remove ``keys`` (base64) in one transaction (netlink: as few messages as fit).

        Keys that are not peers are ignored. WireGuardError if the device refused.
        """
        ...


def uapi_socket(uapi_dir: str, ifname: str) -> str:
    return os.path.join(uapi_dir, f"{ifname}.sock")


def has_uapi_socket(uapi_dir: str, ifname: str) -> bool:
    return os.path.exists(uapi_socket(uapi_dir, ifname))


BackendFactory = Callable[[str, str], Backend]
"""``(ifname, uapi_dir) -> Backend``: :func:`open_backend` in the daemon, a fake in tests."""


def open_backend(ifname: str, uapi_dir: str, *, timeout_s: float = 10.0) -> Backend:
    """The backend serving ``ifname``: UAPI if its socket exists, else kernel netlink."""
    if has_uapi_socket(uapi_dir, ifname):
        from wgagent.wireguard.uapi import UapiBackend

        return UapiBackend(uapi_dir, timeout_s=timeout_s)
    from wgagent.wireguard.netlink import NetlinkBackend

    return NetlinkBackend(timeout_s=timeout_s)


FLANNEL_INTERFACES = ("flannel-wg", "flannel-wg-v6", "flannel.1")
IFF_UP = 0x1


@dataclass(frozen=True)
class Link:
    """What sysfs says about a network interface."""

    name: str
    exists: bool
    up: bool = False
    devtype: str | None = None
    """``DEVTYPE`` of its uevent: ``wireguard`` for a kernel device, ``vxlan``...; None for tun."""


@dataclass
class HostNet:
    """Reads links and bound UDP ports of the network namespace we run in; paths replaceable."""

    sys_class_net: str = "/sys/class/net"
    proc_net: str = "/proc/net"

    def link(self, name: str) -> Link:
        base = os.path.join(self.sys_class_net, name)
        if "/" in name or not os.path.isdir(base):
            return Link(name, exists=False)
        try:
            with open(os.path.join(base, "flags")) as f:
                up = bool(int(f.read().strip(), 16) & IFF_UP)
        except (OSError, ValueError):
            up = False
        devtype = None
        try:
            with open(os.path.join(base, "uevent")) as f:
                for line in f:
                    if line.startswith("DEVTYPE="):
                        devtype = line.strip().partition("=")[2] or None
        except OSError:
            pass
        return Link(name, exists=True, up=up, devtype=devtype)

    def udp_tables(self) -> list[str]:
        """The text of /proc/net/udp and /proc/net/udp6 (those that exist)."""
        out = []
        for table in ("udp", "udp6"):
            try:
                with open(os.path.join(self.proc_net, table)) as f:
                    out.append(f.read())
            except OSError:
                continue
        return out


def is_wireguard(link: Link, uapi_dir: str) -> bool:
    return has_uapi_socket(uapi_dir, link.name) or (link.exists and link.devtype == "wireguard")


def resolve_interfaces(setting: str, net: HostNet, uapi_dir: str) -> tuple[list[str], str]:
    """The interfaces to watch, and a note when ``auto`` found none (what it found instead).

    A configured name is returned as is, present or not: its absence is for the check to report.
    """
    if setting != "auto":
        return [setting], ""
    found: list[str] = []
    other: list[str] = []
    for name in FLANNEL_INTERFACES:
        link = net.link(name)
        if is_wireguard(link, uapi_dir):
            found.append(name)
        elif link.exists:
            other.append(f"{name} is a {link.devtype or 'non-WireGuard'} device")
    if found:
        return found, ""
    note = "no WireGuard interface of flannel (looked for " + ", ".join(FLANNEL_INTERFACES) + ")"
    if other:
        note += ": " + "; ".join(other) + " (is flannel-backend wireguard-native?)"
    return [], note
