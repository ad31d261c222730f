"""The aiohttp implementation of ``HttpClient``: the only module here that imports aiohttp.

Every request bypasses proxies (``trust_env=False``: a proxy would answer with its own
address, and metadata services must never be asked through one), never follows a
redirect, opens a fresh connection (a kept-alive connection could outlive a NAT change
and report the old address), and stops reading a body at ``limit`` bytes.
"""

from __future__ import annotations

import contextvars
import socket
from collections.abc import Mapping
from ipaddress import IPv6Address, ip_address
from typing import Any

import aiohttp
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace

from wgagent import __version__
from wgagent.errors import MalformedReply, SourceError
from wgagent.publicip.model import IPAddress
from wgagent.publicip.sources import HttpReply

USER_AGENT = f"wgagent/{__version__}"
"""Short on purpose: Cloudflare's /cdn-cgi/trace echoes it, and echo bodies are capped."""


_peers: contextvars.ContextVar[list[IPAddress]] = contextvars.ContextVar("wgagent_http_peers")


class _PeerConnector(aiohttp.TCPConnector):
    """Notes the remote address of every connection it opens, for the request in progress.

    aiohttp drops a response's connection as soon as a short body is complete, so the
    address cannot be read from the response afterwards.
    """

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
    ) -> Connection:
        conn = await super().connect(req, traces, timeout)
        peers = _peers.get(None)
        if peers is not None and conn.transport is not None:
            peer = _peer_of(conn.transport.get_extra_info("peername"))
            if peer is not None:
                peers.append(peer)
        return conn


class AiohttpClient:
    """One session per address family, created on first use, closed by ``close()``."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._sessions: dict[int, aiohttp.ClientSession] = {}

    def _session(self, family: int) -> aiohttp.ClientSession:
        session = self._sessions.get(family)
        if session is None or session.closed:
            connector = _PeerConnector(family=socket.AddressFamily(family), force_close=True, use_dns_cache=False)
            session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers={"User-Agent": USER_AGENT},
            )
            self._sessions[family] = session
        return session

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        limit: int,
        family: int = 0,
    ) -> HttpReply:
        session = self._session(family)
        peers: list[IPAddress] = []
        _peers.set(peers)
        try:
            async with session.request(method, url, headers=dict(headers or {}), allow_redirects=False) as resp:
                peer = peers[-1] if peers else None
                if resp.content_length is not None and resp.content_length > limit:
                    raise MalformedReply(f"body of {resp.content_length} bytes is larger than {limit}")
                body = bytearray()
                while len(body) <= limit:
                    chunk = await resp.content.read(limit + 1 - len(body))
                    if not chunk:
                        break
                    body += chunk
                if len(body) > limit:
                    raise MalformedReply(f"body is larger than {limit} bytes")
                reply_headers = {k.lower(): v for k, v in resp.headers.items()}
                return HttpReply(resp.status, bytes(body), peer, reply_headers)
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror if exc.os_error and exc.os_error.strerror else str(exc.os_error or exc)
            raise SourceError(f"cannot connect to {exc.host} port {exc.port}: {reason}") from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise SourceError("the server closed the connection without answering") from exc
        except aiohttp.ClientPayloadError as exc:
            raise MalformedReply(f"broken reply body: {exc}") from exc
        except aiohttp.ClientResponseError as exc:
            raise MalformedReply(f"invalid HTTP reply: {exc.message}") from exc
        except aiohttp.InvalidURL as exc:
            raise SourceError(f"invalid URL {url}") from exc
        except aiohttp.ClientError as exc:
            raise SourceError(f"HTTP request failed: {type(exc).__name__}: {exc}") from exc
        except TimeoutError as exc:
            raise SourceError(f"no complete answer within {self.timeout_s:g} s") from exc
        except (ValueError, UnicodeError) as exc:  # e.g. a header aiohttp cannot decode
            raise MalformedReply(f"invalid HTTP reply: {exc}") from exc

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()


def _peer_of(peername: Any) -> IPAddress | None:
    """An address from a socket's peername tuple (IPv4-mapped IPv6 as IPv4)."""
    if not peername:
        return None
    try:
        ip = ip_address(str(peername[0]).split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
