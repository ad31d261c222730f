"""Stand-ins for what public IP discovery asks: echo services, STUN servers, cloud metadata.

Used in-process (unit tests and the benchmark, on loopback) and as a script inside a lab
namespace::

    python -m tests.support.ipservices SPEC.json      # prints "ready" once all listen

SPEC is ``{"services": [ ... ]}``, each service one of::

    {"kind": "echo", "listen": "203.0.113.251:8081", "mode": "reflect"}
        modes: reflect (the caller's address), fixed (``ip``), self (the server's own
        address), file (the address in the text file ``file``, read per request), trace
        (Cloudflare /cdn-cgi/trace with ip=caller), html, big (10 MB, no
        Content-Length), slowloris (headers, then a byte every 0.2 s), hang (never
        answers), status (``status`` with a Location header)
    {"kind": "stun", "listen": "203.0.113.251:3490", "mode": "reflect"}
        modes: reflect (XOR-MAPPED-ADDRESS of the caller), fixed (``ip``), old (0x8020
        only), mapped (MAPPED-ADDRESS only), garbage (wrong cookie), overrun (an attribute
        running past the end), error (a 400 error response), silent; ``drop_first`` drops
        that many requests first (to exercise retransmission)
    {"kind": "metadata", "provider": "aws", "listen": "203.0.113.251:8101", "ipv4": "203.0.113.1"}
        providers aliyun aws gcp azure digitalocean hetzner vultr tencent, each with its
        paths and headers; optional ``ipv6``, ``eip`` (aliyun), ``imds: "off"`` (aws: the
        token request gets 403), ``hardened: true`` (aliyun: a token is required). The AWS
        one enforces IMDSv2 (401 without a valid token); GCP answers 403 without
        ``Metadata-Flavor: Google``; Azure 400 without ``Metadata: true``; all refuse a
        request carrying X-Forwarded-For (a proxy), as the real services do.

As a script, every request is logged to stdout as ``REQ <name> <METHOD> <path> <header
names>``; in-process, requests are kept in ``Service.requests``.
The STUN encoder here is written apart from wgagent's decoder on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import os
import secrets
import signal
import socket
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, cast

PRINT_REQUESTS = False
COOKIE = 0x2112A442
BIG_BODY = 10 * 1024 * 1024


def split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    peer: tuple[str, int] = ("", 0)
    """The caller's address and port, as the service saw them."""


@dataclass
class Service:
    spec: dict[str, Any]
    requests: list[Request] = field(default_factory=list)
    server: Any = None
    tokens: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return str(self.spec.get("name") or self.spec.get("provider") or self.spec["kind"] + ":" + self.spec["listen"])

    def log(self, req: Request) -> None:
        self.requests.append(req)
        if PRINT_REQUESTS:
            print(f"REQ {self.name} {req.method} {req.path} {','.join(sorted(req.headers))}", flush=True)


# --- HTTP --------------------------------------------------------------------------------------


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = [*lines[0].split(" "), "", "", ""][:3]
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0") or 0)
    if length:
        await reader.readexactly(min(length, 1 << 16))
    return Request(method, path, headers)


async def _respond(
    writer: asyncio.StreamWriter, status: int, body: bytes = b"", headers: dict[str, str] | None = None
) -> None:
    head = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'X'}", f"Content-Length: {len(body)}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    await writer.drain()


def _peer_ip(writer: asyncio.StreamWriter) -> str:
    host = str(writer.get_extra_info("peername")[0])
    ip = ip_address(host)
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


async def _echo(svc: Service, req: Request, writer: asyncio.StreamWriter) -> None:
    mode = svc.spec.get("mode", "reflect")
    peer = _peer_ip(writer)
    if mode == "reflect":
        await _respond(writer, 200, peer.encode() + b"\n", {"Content-Type": "text/plain"})
    elif mode == "fixed":
        await _respond(writer, 200, str(svc.spec["ip"]).encode() + b"\n")
    elif mode == "file":
        with open(svc.spec["file"], "rb") as f:
            await _respond(writer, 200, f.read().strip() + b"\n")
    elif mode == "self":
        await _respond(writer, 200, str(writer.get_extra_info("sockname")[0]).encode() + b"\n")
    elif mode == "trace":
        body = f"fl=1f1\nh=test\nip={peer}\nts=1700000000.1\nvisit_scheme=https\nuag=x\ncolo=TST\nloc=ZZ\n"
        await _respond(writer, 200, body.encode())
    elif mode == "html":
        await _respond(writer, 200, b"<!DOCTYPE html><html><body>Your IP is 203.0.113.1</body></html>\n")
    elif mode == "big":
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\n")
        chunk = b"203.0.113.1\n" * 5000
        sent = 0
        while sent < BIG_BODY:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
    elif mode == "slowloris":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n")
        for _ in range(100):
            writer.write(b"2")
            await writer.drain()
            await asyncio.sleep(0.2)
    elif mode == "hang":
        await asyncio.sleep(3600)
    elif mode == "status":
        status = int(svc.spec.get("status", 302))
        await _respond(writer, status, b"203.0.113.1\n", {"Location": str(svc.spec.get("location", "http://x/"))})
    else:
        raise ValueError(f"unknown echo mode {mode}")


async def _metadata(svc: Service, req: Request, writer: asyncio.StreamWriter) -> None:
    spec = svc.spec
    provider = spec["provider"]
    ipv4, ipv6 = spec.get("ipv4"), spec.get("ipv6")
    path, _, query = req.path.partition("?")
    h = req.headers

    async def text(value: object | None, headers: dict[str, str] | None = None) -> None:
        if value:
            await _respond(writer, 200, str(value).encode(), headers)
        else:
            await _respond(writer, 404, b"not found", headers)

    if "x-forwarded-for" in h:
        return await _respond(writer, 403, b"forwarded requests are refused")
    if provider in ("aws", "aliyun") and path == "/latest/api/token":
        ttl_header = f"x-{'aws-ec2' if provider == 'aws' else 'aliyun-ecs'}-metadata-token-ttl-seconds"
        if req.method != "PUT":
            return await _respond(writer, 405, b"")
        if spec.get("imds") == "off":
            return await _respond(writer, 403, b"")
        ttl = h.get(ttl_header, "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            return await _respond(writer, 400, b"missing or invalid ttl")
        token = secrets.token_urlsafe(24)
        svc.tokens.add(token)
        return await _respond(writer, 200, token.encode())
    if provider == "aws":
        if h.get("x-aws-ec2-metadata-token") not in svc.tokens:
            return await _respond(writer, 401, b"")
        if path == "/latest/meta-data/public-ipv4":
            return await text(ipv4)
    elif provider == "aliyun":
        given = h.get("x-aliyun-ecs-metadata-token")
        if (given is not None or spec.get("hardened")) and given not in svc.tokens:
            return await _respond(writer, 401, b"")
        if path == "/latest/meta-data/eipv4":
            return await text(spec.get("eip"))
        if path == "/latest/meta-data/public-ipv4":
            return await text(ipv4)
    elif provider == "gcp":
        if h.get("metadata-flavor") != "Google":
            return await _respond(writer, 403, b"Missing Metadata-Flavor:Google header.")
        if path == "/computeMetadata/v1/instance/network-interfaces/0/access-configs/0/external-ip":
            return await text(ipv4, {"Metadata-Flavor": "Google"})
    elif provider == "azure":
        if h.get("metadata") != "true":
            return await _respond(writer, 400, b'{"error":"Bad request. Required metadata header not specified"}')
        if path == "/metadata/instance/network" and "api-version=" in query:
            v4 = [{"privateIpAddress": "10.9.0.2", "publicIpAddress": ipv4 or ""}]
            v6 = [{"privateIpAddress": "fd00::2", "publicIpAddress": ipv6}] if ipv6 else []
            doc = {"interface": [{"ipv4": {"ipAddress": v4, "subnet": []}, "ipv6": {"ipAddress": v6}}]}
            return await _respond(writer, 200, json.dumps(doc).encode(), {"Content-Type": "application/json"})
    elif provider == "digitalocean":
        if path == "/metadata/v1/interfaces/public/0/ipv4/address":
            return await text(ipv4)
        if path == "/metadata/v1/interfaces/public/0/ipv6/address":
            return await text(ipv6)
    elif provider == "hetzner":
        if path == "/hetzner/v1/metadata/public-ipv4":
            return await text(ipv4)
    elif provider == "vultr":
        if path == "/v1.json":
            public: dict[str, Any] = {
                "network-type": "public",
                "ipv4": {"address": ipv4 or ""},
                "ipv6": {"address": ipv6 or ""},
            }
            private: dict[str, Any] = {"network-type": "private", "ipv4": {"address": "10.9.0.2"}}
            vultr = {"hostname": "node", "interfaces": [private, public], "user-data": "x" * 3000}
            return await _respond(writer, 200, json.dumps(vultr).encode(), {"Content-Type": "application/json"})
    elif provider == "tencent" and path == "/latest/meta-data/public-ipv4":
        return await text(ipv4)
    await _respond(writer, 404, b"not found")


async def _serve_http(svc: Service, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        req = await _read_request(reader)
        if req is None:
            return
        peername = writer.get_extra_info("peername")
        req.peer = (str(peername[0]), int(peername[1]))
        svc.log(req)
        if svc.spec["kind"] == "echo":
            await _echo(svc, req, writer)
        else:
            await _metadata(svc, req, writer)
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


# --- STUN --------------------------------------------------------------------------------------


def _stun_address(ip: str, port: int, txid: bytes, xor: bool) -> bytes:
    addr = ip_address(ip)
    raw = addr.packed
    if xor:
        port ^= COOKIE >> 16
        pad = struct.pack("!I", COOKIE) + txid
        raw = bytes(b ^ pad[i] for i, b in enumerate(raw))
    return struct.pack("!BBH", 0, 1 if isinstance(addr, IPv4Address) else 2, port) + raw


def stun_reply(mode: str, request: bytes, peer: tuple[str, int], fixed_ip: str | None = None) -> bytes | None:
    """The reply a STUN stand-in in ``mode`` sends to ``request`` from ``peer``."""
    if len(request) < 20 or request[:2] != b"\x00\x01":
        return None
    txid = request[8:20]
    ip = ip_address(peer[0].split("%")[0])
    host = str(ip.ipv4_mapped) if isinstance(ip, IPv6Address) and ip.ipv4_mapped else str(ip)
    if mode in ("reflect", "fixed", "old", "mapped"):
        shown = str(fixed_ip) if mode == "fixed" else host
        attr_type = {"reflect": 0x0020, "fixed": 0x0020, "old": 0x8020, "mapped": 0x0001}[mode]
        value = _stun_address(shown, peer[1], txid, xor=mode != "mapped")
        attrs = struct.pack("!HH", attr_type, len(value)) + value
        return struct.pack("!HHI", 0x0101, len(attrs), COOKIE) + txid + attrs
    if mode == "garbage":
        return struct.pack("!HHI", 0x0101, 0, 0xDEADBEEF) + txid
    if mode == "overrun":
        attrs = struct.pack("!HH", 0x0020, 200) + b"\x00\x01\x00\x00"
        return struct.pack("!HHI", 0x0101, len(attrs), COOKIE) + txid + attrs
    if mode == "error":
        value = struct.pack("!HBB", 0, 4, 0) + b"Bad Request"
        value += b"\x00" * (-len(value) % 4)
        attrs = struct.pack("!HH", 0x0009, 15) + value
        return struct.pack("!HHI", 0x0111, len(attrs), COOKIE) + txid + attrs
    return None  # silent


class _StunProtocol(asyncio.DatagramProtocol):
    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.transport: asyncio.DatagramTransport | None = None
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.svc.log(Request("BINDING", f"{addr[0]}:{addr[1]}", {}, (str(addr[0]), int(addr[1]))))
        if self.dropped < int(self.svc.spec.get("drop_first", 0)):
            self.dropped += 1
            return
        mode = self.svc.spec.get("mode", "reflect")
        reply = stun_reply(mode, data, (str(addr[0]), int(addr[1])), self.svc.spec.get("ip"))
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


# --- running -----------------------------------------------------------------------------------


class Services:
    """Started stand-ins; ``close()`` stops them all."""

    def __init__(self, services: Sequence[Service]) -> None:
        self.services = list(services)
        self._handlers: set[asyncio.Task[None]] = set()

    def __getitem__(self, name: str) -> Service:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise KeyError(name)

    def port(self, name: str) -> int:
        server = self[name].server
        if isinstance(server, asyncio.Server):
            return int(server.sockets[0].getsockname()[1])
        return int(server.get_extra_info("sockname")[1])

    async def close(self) -> None:
        for task in list(self._handlers):
            task.cancel()
        for svc in self.services:
            svc.server.close()
        await asyncio.sleep(0)


async def start(specs: Sequence[dict[str, Any]]) -> Services:
    """Start every service in ``specs``; a port 0 gets a free one (see ``Services.port``)."""
    loop = asyncio.get_running_loop()
    started = Services([Service(dict(spec)) for spec in specs])
    for svc in started.services:
        host, port = split(svc.spec["listen"])
        if svc.spec["kind"] == "stun":
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            transport, _ = await loop.create_datagram_endpoint(
                functools.partial(_StunProtocol, svc), local_addr=(host, port), family=family
            )
            svc.server = transport
        else:

            def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, svc: Service = svc) -> None:
                task = asyncio.ensure_future(_serve_http(svc, r, w))
                started._handlers.add(task)
                task.add_done_callback(started._handlers.discard)

            svc.server = await asyncio.start_server(handler, host, port, reuse_address=True)
    return started


async def _main(path: str) -> None:
    global PRINT_REQUESTS
    PRINT_REQUESTS = True
    with open(path) as f:
        spec = json.load(f)
    services = await start(spec["services"])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", len(services.services), flush=True)
    await stop.wait()
    await services.close()


if __name__ == "__main__":
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(sys.argv[1]))
    os._exit(0)
