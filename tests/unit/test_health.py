"""The health endpoint on a real socket: codes, JSON shape, 404/405, garbage requests."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket

import pytest

from tests.labkit import free_port
from wgagent import health
from wgagent.config import ListenAddress
from wgagent.errors import WgAgentError
from wgagent.health import REQUEST_DEADLINE_S, HealthServer
from wgagent.state import State


async def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the whole answer (Connection: close), parse status, headers, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


async def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await request(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())


async def serving(state: State) -> tuple[HealthServer, int]:
    port = free_port()
    server = HealthServer(state, ListenAddress("127.0.0.1", port))
    await server.start()
    return server, port


async def test_endpoints_codes_and_shapes() -> None:
    state = State(node="n1", version="0.1.0")
    state.set_check("config", True, "loaded /etc/wgagent/config.yaml")
    server, port = await serving(state)
    try:
        status, headers, body = await get(port, "/livez")
        assert (status, body) == (200, b"ok\n")

        status, headers, body = await get(port, "/healthz")
        assert status == 200 and headers["content-type"].startswith("application/json")
        health = json.loads(body)
        assert health["status"] == "ok"
        assert set(health["checks"]["config"]) == {"ok", "detail", "since"}

        state.set_check("public_ip", False, "no source answered; last adopted 203.0.113.7 kept")
        status, _, body = await get(port, "/healthz")  # served fresh after the change
        assert status == 503
        assert json.loads(body)["checks"]["public_ip"]["ok"] is False

        status, _, body = await get(port, "/status")
        full = json.loads(body)
        assert status == 200 and full["node"] == "n1" and full["version"] == "0.1.0" and "uptime_s" in full

        status, headers, body = await get(port, "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        text = body.decode()
        for needle in (
            'wgagent_build_info{version="0.1.0"} 1',
            'wgagent_check_ok{check="public_ip"} 0',
            "wgagent_reconcile_total 0",
            "# TYPE wgagent_reconcile_errors_total counter",
        ):
            assert needle in text

        assert (await get(port, "/healthz", "HEAD"))[0] == 503
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            assert (await get(port, "/healthz", method))[0] == 405
        for path in ("/", "/nope", "/healthz/x", "/%00", "/" + "a" * 2000):
            assert (await get(port, path))[0] == 404
    finally:
        await server.stop()


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost x-without-colon\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
        b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(32)) + b"\r\n\r\n",  # a TLS hello
    ],
    ids=["garbage", "header-without-colon", "huge-header", "huge-line", "bad-length", "tls"],
)
async def test_malformed_requests_get_4xx_and_the_server_keeps_serving(raw: bytes) -> None:
    state = State(node="n1", version="0.1.0")
    state.set_check("config", True, "loaded")
    server, port = await serving(state)
    try:
        status, _, _ = await request(port, raw)
        assert 400 <= status < 500
        assert (await get(port, "/healthz"))[0] == 200
    finally:
        await server.stop()


async def test_a_slow_client_does_not_block_others() -> None:
    state = State(node="n1", version="0.1.0")
    server, port = await serving(state)
    try:
        _, slow = await asyncio.open_connection("127.0.0.1", port)
        slow.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
        await slow.drain()
        assert (await get(port, "/livez"))[0] == 200
        slow.close()
    finally:
        await server.stop()


async def test_busy_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = HealthServer(State(node="n1", version="1"), ListenAddress("127.0.0.1", port))
        with pytest.raises(
            WgAgentError, match=rf"cannot serve the health endpoint on 127.0.0.1:{port}: .*health.listen"
        ):
            await server.start()


async def connections_seen(server: HealthServer, n: int) -> None:
    """Until the server has accepted ``n`` connections (accepting takes a few loop turns)."""
    for _ in range(1000):
        if len(server._connections()) == n:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"the server has {len(server._connections())} connections, not {n}")


async def keepalive_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    """One request on a kept-alive connection; its status."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(v) for k, _, v in (line.partition(":") for line in lines) if k.lower() == "content-length")
    await reader.readexactly(length)
    return int(lines[0].split()[1])


async def test_the_guard_closes_a_client_that_sends_no_request_in_time_and_keeps_an_active_one() -> None:
    server, port = await serving(State(node="n1", version="0.1.0"))
    clock = [1000.0]
    server.guard.clock = lambda: clock[0]
    try:
        silent_r, silent_w = await asyncio.open_connection("127.0.0.1", port)
        silent_w.write(b"GET /healthz HTTP/1.1\r\n")  # a trickle that never ends its headers
        busy_r, busy_w = await asyncio.open_connection("127.0.0.1", port)
        await connections_seen(server, 2)
        assert server.guard.sweep() == 0  # both first seen now
        clock[0] = 1015.0
        assert await keepalive_get(busy_r, busy_w, "/livez") == 200
        clock[0] = 1000.0 + REQUEST_DEADLINE_S + 1
        assert server.guard.sweep() == 1
        assert await asyncio.wait_for(silent_r.read(), 5) == b""  # closed by the server
        assert await keepalive_get(busy_r, busy_w, "/livez") == 200  # still open
        await connections_seen(server, 1)
        busy_w.close()
        silent_w.close()
    finally:
        await server.stop()


async def test_beyond_the_cap_the_stalest_connections_are_closed() -> None:
    server, port = await serving(State(node="n1", version="0.1.0"))
    clock = [1000.0]
    server.guard.clock = lambda: clock[0]
    try:
        clients = []
        for i in range(4):
            clients.append(await asyncio.open_connection("127.0.0.1", port))
            await connections_seen(server, i + 1)
            clock[0] += 1
            assert server.guard.sweep() == 0  # notes when each was first seen
        server.guard.max_connections = 2
        assert server.guard.sweep() == 2
        for reader, _ in clients[:2]:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        await connections_seen(server, 2)
        for reader, writer in clients[2:]:
            assert await keepalive_get(reader, writer, "/livez") == 200
        for _, writer in clients:
            writer.close()
    finally:
        await server.stop()


async def test_the_guard_sleeps_while_no_connection_is_open_and_sweeps_by_itself_when_one_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(health, "GUARD_TICK_S", 0.01)
    server, port = await serving(State(node="n1", version="0.1.0"))
    clock = itertools.count(1000.0, REQUEST_DEADLINE_S + 1)  # every reading is past the last
    server.guard.clock = lambda: next(clock)
    sweeps = []
    sweep = server.guard.sweep

    def recording_sweep(now: float | None = None) -> int:
        sweeps.append(now)
        return sweep(now)

    server.guard.sweep = recording_sweep  # type: ignore[method-assign]
    try:
        await asyncio.sleep(0.2)  # twenty ticks' worth of idling
        assert sweeps == []
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the guard on its own
        assert len(sweeps) >= 2 and server.guard.closed == 1
        writer.close()
    finally:
        await server.stop()
