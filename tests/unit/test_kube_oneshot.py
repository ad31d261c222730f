"""The one-shot commands' client (kube/oneshot.py, the standard library) against a real HTTP
server on loopback, side by side with the daemon's (kube/client.py, aiohttp): the same request,
the same retries, the same error class and message for the same answer.

TLS and client certificates need a PKI (openssl): tests/lab/test_kube_oneshot.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from wgagent.errors import (
    Forbidden,
    KubeConfigError,
    KubeError,
    KubeStatusError,
    KubeUnreachable,
    NotFound,
    ServerError,
    Unauthorized,
)
from wgagent.kube.client import KubeClient
from wgagent.kube.oneshot import OneShotClient
from wgagent.kube.protocol import NodeLister

NODE_LIST = {
    "kind": "PartialObjectMetadataList",
    "apiVersion": "meta.k8s.io/v1",
    "metadata": {"resourceVersion": "42"},
    "items": [{"metadata": {"name": "n1", "annotations": {"flannel.alpha.coreos.com/public-ip": "203.0.113.7"}}}],
}
Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


def status(code: int, reason: str, message: str) -> web.Response:
    """A Kubernetes ``Status`` answer, as kube-apiserver writes one."""
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason,
            "code": code}  # fmt: skip
    return web.json_response(body, status=code)


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]


@dataclass
class API:
    """An HTTP server on 127.0.0.1 answering with ``answers`` in turn (the last one again)."""

    port: int
    tokens: set[str] = field(default_factory=lambda: {"t0k3n"})
    answers: list[Answer] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        keep = ("Accept", "User-Agent", "Authorization", "Content-Type")
        headers = {k: request.headers[k] for k in keep if k in request.headers}
        self.seen.append(Seen(request.method, request.path, request.query_string, headers))
        if request.headers.get("Authorization", "").removeprefix("Bearer ") not in self.tokens:
            return status(401, "Unauthorized", "Unauthorized")
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0] if self.answers else None
        return await answer(request) if answer is not None else web.json_response(NODE_LIST)

    async def __aenter__(self) -> API:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    def kubeconfig(self, path: Path, *, token: str = "t0k3n", server: str | None = None) -> str:  # noqa: S107
        path.write_text(json.dumps({
            "apiVersion": "v1", "current-context": "c",
            "clusters": [{"name": "c", "cluster": {"server": server or f"http://127.0.0.1:{self.port}"}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            "users": [{"name": "u", "user": {"token": token}}],
        }))  # fmt: skip
        return str(path)


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def both(path: str, **kw: Any) -> dict[str, NodeLister]:
    """The daemon's client and the one-shot client on the same kubeconfig."""
    return {"daemon": KubeClient(path, **kw), "one-shot": OneShotClient(path, **kw)}


async def outcome(client: NodeLister, **kw: Any) -> tuple[type[BaseException] | None, str]:
    try:
        await client.list_nodes_metadata(**kw)
    except KubeError as exc:
        return type(exc), str(exc)
    finally:
        await client.close()
    return None, ""


async def test_the_list_is_the_daemons_request(tmp_path: Path, unused_tcp_port: int) -> None:
    async with API(unused_tcp_port) as api:
        kc = api.kubeconfig(tmp_path / "kc", server=f"http://127.0.0.1:{unused_tcp_port}/k8s/clusters/c-1/")
        for name, client in both(kc).items():
            assert await client.list_nodes_metadata() == NODE_LIST, name
            assert await client.list_nodes_metadata(resource_version="41") == NODE_LIST, name
            await client.close()
    daemon, oneshot = api.seen[:2], api.seen[2:]
    assert oneshot == daemon
    assert [(s.method, s.path, s.query) for s in oneshot] == [
        ("GET", "/k8s/clusters/c-1/api/v1/nodes", ""),
        ("GET", "/k8s/clusters/c-1/api/v1/nodes", "resourceVersion=41"),
    ]
    assert oneshot[0].headers == {
        "Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
        "User-Agent": oneshot[0].headers["User-Agent"],
        "Authorization": "Bearer t0k3n",
    }
    assert oneshot[0].headers["User-Agent"].startswith("wgagent/")


def answer(make: Callable[[], web.StreamResponse]) -> Answer:
    """An answer made anew for each request (a response is sent once)."""

    async def respond(request: web.Request) -> web.StreamResponse:
        return make()

    return respond


FORBIDDEN = 'nodes is forbidden: User "system:node:n1" cannot list resource "nodes"'
ANSWERS: dict[str, tuple[Answer, type[KubeError], str]] = {
    "403": (answer(lambda: status(403, "Forbidden", FORBIDDEN)), Forbidden, f"403 Forbidden: {FORBIDDEN}"),
    "404": (answer(lambda: status(404, "NotFound", "the server could not find the requested resource")),
            NotFound, "404 NotFound: the server could not find the requested resource"),
    "500 not a Status": (answer(lambda: web.Response(text="upstream\n  broke", status=500)), ServerError,
                         "500 InternalError: upstream broke"),
    "302 not followed": (answer(lambda: web.Response(status=302, headers={"Location": "/elsewhere"})),
                         KubeStatusError, "302 error"),
    "not JSON": (answer(lambda: web.Response(text="<html>ok</html>")), KubeError, "the answer is not JSON"),
    "not an object": (answer(lambda: web.json_response([1, 2])), KubeError, "the answer is not a JSON object"),
}  # fmt: skip


@pytest.mark.parametrize("case", ANSWERS.keys())
async def test_each_answer_is_the_daemons_error(tmp_path: Path, unused_tcp_port: int, case: str) -> None:
    answer, cls, tail = ANSWERS[case]
    async with API(unused_tcp_port, answers=[answer]) as api:
        kc = api.kubeconfig(tmp_path / "kc")
        outcomes = {name: await outcome(client) for name, client in both(kc, retries=0).items()}
    assert outcomes["one-shot"] == outcomes["daemon"]
    got, message = outcomes["one-shot"]
    assert got is cls and message.endswith(tail), message
    assert message.startswith(("GET http://127.0.0.1:", "GET /api/v1/nodes: "))


async def test_transient_errors_are_retried_with_the_daemons_backoff(tmp_path: Path, unused_tcp_port: int) -> None:
    unavailable = answer(lambda: status(503, "ServiceUnavailable", "etcd is not ready"))
    ok = answer(lambda: web.json_response(NODE_LIST))
    delays = {}
    for name in ("daemon", "one-shot"):
        async with API(unused_tcp_port, answers=[unavailable, unavailable, ok]) as api:
            sleeps = Sleeps()
            client = both(api.kubeconfig(tmp_path / "kc"), retries=3, sleep=sleeps, rand=lambda: 0.0)[name]
            assert await client.list_nodes_metadata() == NODE_LIST
            await client.close()
            delays[name] = sleeps.delays
            assert len(api.seen) == 3
    assert delays["one-shot"] == delays["daemon"] == [0.5, 1.0]
    async with API(unused_tcp_port, answers=[unavailable]) as api:
        sleeps = Sleeps()
        client = OneShotClient(api.kubeconfig(tmp_path / "kc"), retries=2, sleep=sleeps, rand=lambda: 1.0)
        got, message = await outcome(client)
    assert got is ServerError and message.endswith("503 ServiceUnavailable: etcd is not ready")
    assert sleeps.delays == [1.0, 2.0] and len(api.seen) == 3


async def test_a_refused_credential_reads_the_kubeconfig_again_once(tmp_path: Path, unused_tcp_port: int) -> None:
    async with API(unused_tcp_port, tokens={"old-token"}) as api:
        kc = api.kubeconfig(tmp_path / "kc", token="old-token")
        client = OneShotClient(kc, retries=0)
        await client.list_nodes_metadata()
        api.tokens = {"new-token"}  # rotated: the server forgets the old one, the file gets the new one
        api.kubeconfig(tmp_path / "kc", token="new-token")
        assert await client.list_nodes_metadata() == NODE_LIST
        assert [s.headers["Authorization"] for s in api.seen] == ["Bearer old-token", "Bearer old-token",
                                                                  "Bearer new-token"]  # fmt: skip
        api.tokens = set()  # refused again after the reload: the error
        got, message = await outcome(client)
    assert got is Unauthorized and message.endswith("401 Unauthorized: Unauthorized") and "token" not in message
    assert len(api.seen) == 5


async def test_no_answer_is_unreachable_in_one_line(tmp_path: Path, unused_tcp_port: int) -> None:
    kc = API(unused_tcp_port).kubeconfig(tmp_path / "kc")  # nothing listens there
    got, message = await outcome(OneShotClient(kc, retries=0))
    assert got is KubeUnreachable
    assert message == f"GET http://127.0.0.1:{unused_tcp_port}/api/v1/nodes: cannot connect: Connection refused"
    daemon = await outcome(KubeClient(kc, retries=0))
    assert daemon[0] is KubeUnreachable and daemon[1].startswith(message.removesuffix("Connection refused"))


async def test_a_server_that_closes_without_answering(tmp_path: Path, unused_tcp_port: int) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", unused_tcp_port)
    async with server:
        kc = API(unused_tcp_port).kubeconfig(tmp_path / "kc")
        outcomes = {name: await outcome(client) for name, client in both(kc, retries=0).items()}
    url = f"http://127.0.0.1:{unused_tcp_port}/api/v1/nodes"
    assert outcomes["one-shot"] == (KubeUnreachable, f"GET {url}: the server closed the connection")
    assert outcomes["daemon"][0] is KubeUnreachable


async def test_a_silent_server_times_out_within_the_request_timeout(tmp_path: Path) -> None:
    listener = socket.socket()  # accepts (the kernel's backlog), never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        kc = API(port).kubeconfig(tmp_path / "kc")
        started = time.monotonic()
        got, message = await outcome(OneShotClient(kc, timeout_s=0.3, retries=0))
        took = time.monotonic() - started
    finally:
        listener.close()
    assert (got, message) == (KubeUnreachable, f"GET http://127.0.0.1:{port}/api/v1/nodes: timed out")
    assert 0.3 <= took < 3.0


async def test_a_missing_kubeconfig_and_a_closed_client(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    outcomes = {name: await outcome(c) for name, c in both(missing).items()}
    assert outcomes["one-shot"] == outcomes["daemon"] == (KubeConfigError, f"{missing}: kubeconfig not found")
    client = OneShotClient(str(tmp_path / "nope.yaml"))
    await client.close()
    with pytest.raises(KubeError, match="the Kubernetes client is closed"):
        await client.list_nodes_metadata()
