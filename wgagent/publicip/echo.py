"""HTTP(S) echo services: a strict parser of their bodies, and the source that asks them.

Two body shapes are understood::

    >>> parse_echo_body(b"203.0.113.7\\n")                        # ipify, icanhazip, checkip
    IPv4Address('203.0.113.7')
    >>> parse_echo_body(b"fl=1\\nh=example\\nip=2001:db8::7\\nts=1\\n")   # Cloudflare /cdn-cgi/trace
    IPv6Address('2001:db8::7')

Anything else (HTML, JSON, two addresses, a scope ID, leading zeros, more than
``ECHO_LIMIT`` bytes) raises MalformedReply, and nothing else does. Status 200 only.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from ipaddress import IPv6Address, ip_address
from urllib.parse import urlsplit

from wgagent.errors import MalformedReply, SourceError
from wgagent.publicip.model import Answer, IPAddress
from wgagent.publicip.sources import BUDGET_SHARE, HttpClient, gather_within

ECHO_LIMIT = 512
"""Bytes of body read at most: an address is 45, Cloudflare's trace about 250."""

_IP_CHARS = frozenset("0123456789abcdefABCDEF:.")


def parse_ip(text: str) -> IPAddress:
    """One address, strictly: no spaces, no scope ID, no leading zeros in IPv4 octets.

    An IPv4-mapped IPv6 address (``::ffff:203.0.113.7``, seen from dual-stack servers)
    is returned as the IPv4 address it maps.
    """
    if not text or len(text) > 45 or not set(text) <= _IP_CHARS:
        raise MalformedReply(f"{_show(text)} is not an IP address")
    try:
        ip = ip_address(text)
    except ValueError:
        raise MalformedReply(f"{_show(text)} is not an IP address") from None
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_ip_body(body: bytes) -> IPAddress:
    """A body holding one address and optional surrounding whitespace (metadata services)."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedReply("the body is not ASCII text") from None
    return parse_ip(text.strip(" \t\r\n"))


def parse_echo_body(body: bytes) -> IPAddress:
    """The caller's address in an echo service's body (plain, or ``key=value`` lines)."""
    if len(body) > ECHO_LIMIT:
        raise MalformedReply(f"body is larger than {ECHO_LIMIT} bytes")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedReply("the body is not ASCII text") from None
    lines = text.strip(" \t\r\n").split("\n")
    lines = [line.rstrip("\r") for line in lines]
    if len(lines) == 1 and "=" not in lines[0]:
        return parse_ip(lines[0])
    values = []
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep or not key or not key.replace("_", "").replace("-", "").isalnum():
            raise MalformedReply(f"neither one address nor key=value lines: {_show(line)}")
        if key == "ip":
            values.append(value)
    if len(values) != 1:
        raise MalformedReply(f"key=value body with {len(values)} 'ip=' lines; expected one")
    return parse_ip(values[0])


def _show(text: str) -> str:
    shown = repr(text[:40])
    return shown + ("..." if len(text) > 40 else "")


class HttpEchoSource:
    """One echo URL, asked over IPv4 and IPv6 (just one for an address-literal host)."""

    kind = "http"
    why_not = ""

    def __init__(self, url: str, http: HttpClient, timeout_s: float) -> None:
        self.url = url
        self.name = url
        self.http = http
        self.timeout_s = timeout_s
        host = urlsplit(url).hostname or ""
        try:
            version = ip_address(host).version
        except ValueError:
            self.families = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}
        else:
            self.families = {f"ipv{version}": socket.AF_INET if version == 4 else socket.AF_INET6}

    async def observe(self) -> Sequence[Answer] | None:
        deadline = asyncio.get_running_loop().time() + self.timeout_s * BUDGET_SHARE
        answers = await gather_within(
            {label: self._ask(family) for label, family in self.families.items()},
            deadline - asyncio.get_running_loop().time(),
        )
        unique: dict[IPAddress, Answer] = {}
        for answer in answers:
            unique.setdefault(answer.ip, answer)
        return list(unique.values())

    async def _ask(self, family: int) -> Answer:
        headers = {"Accept": "text/plain"}
        reply = await self.http.request("GET", self.url, headers=headers, limit=ECHO_LIMIT, family=family)
        if reply.status != 200:
            where = f" to {reply.headers.get('location', '?')}" if 300 <= reply.status < 400 else ""
            raise SourceError(f"HTTP status {reply.status}{where} (only 200 is accepted)")
        return Answer(parse_echo_body(reply.body), server=reply.peer)
