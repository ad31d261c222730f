"""AiohttpClient against real servers on loopback: caps, no redirects, no proxies, timeouts."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import ipservices
from wgagent.errors import MalformedReply, SourceError
from wgagent.publicip.echo import ECHO_LIMIT, HttpEchoSource
from wgagent.publicip.httpclient import AiohttpClient
from wgagent.publicip.sources import observe_all


async def start(*specs: dict[str, Any]) -> ipservices.Services:
    return await ipservices.start([{"kind": "echo", "listen": "127.0.0.1:0", **s} for s in specs])


def url(services: ipservices.Services, name: str, path: str = "/") -> str:
    return f"http://127.0.0.1:{services.port(name)}{path}"


async def test_the_answer_and_the_answering_address() -> None:
    services = await start({"name": "echo"})
    http = AiohttpClient(2.0)
    try:
        reply = await http.request("GET", url(services, "echo"), limit=ECHO_LIMIT, family=socket.AF_INET)
    finally:
        await http.close()
        await services.close()
    assert (reply.status, reply.body, str(reply.peer)) == (200, b"127.0.0.1\n", "127.0.0.1")
    assert services["echo"].requests[0].headers["user-agent"].startswith("wgagent/")


async def test_a_10_mb_body_without_length_is_cut_at_the_cap() -> None:
    services = await start({"name": "big", "mode": "big"})
    http = AiohttpClient(5.0)
    try:
        with pytest.raises(MalformedReply, match=f"larger than {ECHO_LIMIT} bytes"):
            await http.request("GET", url(services, "big"), limit=ECHO_LIMIT)
    finally:
        await http.close()
        await services.close()


async def test_a_declared_length_over_the_cap_is_refused_unread() -> None:
    services = await start({"name": "slow", "mode": "slowloris"})  # declares 100 bytes, sends 1 per 0.2 s
    http = AiohttpClient(5.0)
    try:
        with pytest.raises(MalformedReply, match="body of 100 bytes is larger than 50"):
            await http.request("GET", url(services, "slow"), limit=50)
    finally:
        await http.close()
        await services.close()


async def test_a_redirect_is_returned_not_followed() -> None:
    services = await start({"name": "target"}, {"name": "redirect", "mode": "status", "status": 302})
    target = url(services, "target")
    services["redirect"].spec["location"] = target
    http = AiohttpClient(2.0)
    try:
        reply = await http.request("GET", url(services, "redirect"), limit=ECHO_LIMIT)
    finally:
        await http.close()
        await services.close()
    assert reply.status == 302 and reply.headers["location"] == target
    assert services["target"].requests == []


@pytest.fixture
def proxy_env() -> Iterator[dict[str, str]]:
    names = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "NO_PROXY", "no_proxy")
    saved = {n: os.environ.get(n) for n in names}
    yield os.environ  # type: ignore[misc]
    for n, v in saved.items():
        if v is None:
            os.environ.pop(n, None)
        else:
            os.environ[n] = v


async def test_proxies_in_the_environment_are_ignored(proxy_env: dict[str, str]) -> None:
    services = await start({"name": "echo"}, {"name": "proxy", "mode": "fixed", "ip": "198.51.100.99"})
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        proxy_env[name] = url(services, "proxy")
    proxy_env.pop("NO_PROXY", None)
    proxy_env.pop("no_proxy", None)
    http = AiohttpClient(2.0)
    try:
        reply = await http.request("GET", url(services, "echo"), limit=ECHO_LIMIT)
    finally:
        await http.close()
        await services.close()
    assert reply.body == b"127.0.0.1\n"
    assert services["proxy"].requests == []


async def test_a_refused_connection_is_a_source_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        http = AiohttpClient(2.0)
        try:
            with pytest.raises(SourceError, match=f"cannot connect to 127.0.0.1 port {port}"):
                await http.request("GET", f"http://127.0.0.1:{port}/", limit=ECHO_LIMIT)
        finally:
            await http.close()


async def test_a_slow_loris_and_a_silent_server_end_at_the_source_timeout() -> None:
    services = await start({"name": "slow", "mode": "slowloris"}, {"name": "hang", "mode": "hang"})
    http = AiohttpClient(0.5)
    try:
        observations = await observe_all([HttpEchoSource(url(services, n), http, 0.5) for n in ("slow", "hang")])
    finally:
        await http.close()
        await services.close()
    for o in observations:
        assert o.ip is None and o.error is not None and "no answer" in o.error
        assert o.elapsed_s <= 0.5 * 1.1


async def test_every_request_uses_a_fresh_connection() -> None:
    """A kept-alive connection could outlive a NAT change and report the old address."""
    services = await start({"name": "echo"})
    http = AiohttpClient(2.0)
    try:
        for _ in range(2):
            await http.request("GET", url(services, "echo"), limit=ECHO_LIMIT)
    finally:
        await http.close()
        await services.close()
    ports = [r.peer[1] for r in services["echo"].requests]
    assert len(ports) == 2 and ports[0] != ports[1]
