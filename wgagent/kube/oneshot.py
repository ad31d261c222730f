"""The one-shot commands' Kubernetes client, on the standard library (``http.client``, ``ssl``).

    client = OneShotClient("/var/lib/rancher/k3s/agent/k3scontroller.kubeconfig", timeout_s=10)
    lst = await client.list_nodes_metadata()        # one LIST, in a worker thread
    await client.close()

``wgagent gc`` lists the Nodes once and exits: importing aiohttp (and building its default
TLS contexts) would cost it more than the rest of the command. This client sends the same
request as the daemon's :class:`~wgagent.kube.client.KubeClient` (``request.list_nodes``),
trusts and authenticates the same way (``request.ssl_context``, ``request.headers``), retries
the same errors the same way and maps a status to the same error and message
(``request.call``, ``request.status_error``). Only what differs with the library is here:
its failures to get an answer become ``KubeUnreachable`` (:func:`unreachable`), worded as
the daemon's client words them.

- One connection per request, never through a proxy, no redirects followed (a 3xx is an
  error, as in the daemon's client).
- ``timeout_s`` bounds each request as a whole: connect, send, and every read, which gets
  what is left of it.
- The blocking exchange runs in the event loop's default executor: the loop stays free,
  and the command's other work (the WireGuard device) is not held up by it.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import random
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from wgagent.errors import KubeError, KubeUnreachable
from wgagent.kube import kubeconfig
from wgagent.kube import request as rq
from wgagent.kube.protocol import JSONObject
from wgagent.kube.request import MAX_BODY, MAX_ERROR_BODY, Sleep, json_object, ssl_context, status_error, too_large

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def _unreachable(what: str, exc: BaseException) -> KubeUnreachable:
    """``KubeUnreachable`` for a request that got no HTTP answer, saying why in one line.

    >>> str(_unreachable("GET https://127.0.0.1:6443/api/v1/nodes", ConnectionRefusedError(111, "Connection refused")))
    'GET https://127.0.0.1:6443/api/v1/nodes: cannot connect: Connection refused'
    """
    if isinstance(exc, TimeoutError):
        why = "timed out"
    elif isinstance(exc, ssl.SSLCertVerificationError):
        why = f"TLS certificate not trusted: {exc.verify_message or exc}"
    elif isinstance(exc, ssl.SSLError):
        why = f"TLS handshake failed: {exc}"
    elif isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError | http.client.IncompleteRead):
        why = "the server closed the connection"
    elif isinstance(exc, OSError):
        why = f"cannot connect: {exc.strerror or exc}"
    else:
        why = str(exc) or type(exc).__name__
    return KubeUnreachable(f"{what}: {' '.join(why.split())}")


class OneShotClient:
    """Implements :class:`wgagent.kube.protocol.NodeLister` against one kubeconfig."""

    def __init__(
        self,
        kubeconfig_path: str,
        *,
        timeout_s: float = 10.0,
        retries: int = 2,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.source = kubeconfig_path
        self.timeout_s = timeout_s
        self.retries = retries
        self._sleep = sleep
        self._rand = rand
        self._session: tuple[kubeconfig.Credential, ssl.SSLContext | None] | None = None
        self._closed = False

    async def list_nodes_metadata(self, *, resource_version: str | None = None) -> JSONObject:
        return await self._call(rq.list_nodes(resource_version=resource_version))

    async def close(self) -> None:
        self._closed = True
        self._session = None

    async def _call(self, req: rq.Request) -> JSONObject:
        """One request with retries of transient failures; the decoded JSON object."""

        async def once() -> JSONObject:
            if self._closed:
                raise KubeError("the Kubernetes client is closed")
            data = await asyncio.to_thread(self._exchange, req)
            return json_object(data, f"{req.method} {req.path}")

        return await rq.call(once, retries=self.retries, sleep=self._sleep, rand=self._rand, reload=self._reload)

    async def _reload(self) -> None:
        self._session = None  # the next request reads the kubeconfig again

    def _credential(self) -> tuple[kubeconfig.Credential, ssl.SSLContext | None]:
        if self._session is None:
            cred = kubeconfig.load(self.source)
            self._session = cred, ssl_context(cred) if cred.server.startswith("https:") else None
        return self._session

    def _exchange(self, req: rq.Request) -> bytes:
        """Send ``req`` and read the answer (blocking): its body when the status is 2xx, else
        the mapped error."""
        cred, ctx = self._credential()
        url = cred.server + req.path
        what = f"{req.method} {url}"
        deadline = time.monotonic() + self.timeout_s
        conn = _connection(cred.server, ctx, self.timeout_s)
        started = time.monotonic()
        try:
            try:
                conn.request(req.method, req.target(cred.server), req.body, rq.headers(req, cred))
                _bound(conn, deadline)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                if isinstance(exc, ssl.SSLError):
                    self._session = None  # maybe a new CA or certificate on disk: reload next time
                error = _unreachable(what, exc)
                log.debug("%s", error)
                raise error from exc
            log.debug("%s -> %d (%.0f ms)", what, resp.status, (time.monotonic() - started) * 1000)
            if resp.status >= 300:
                try:
                    body = resp.read(MAX_ERROR_BODY)
                except (OSError, http.client.HTTPException):
                    body = b""
                raise status_error(resp.status, body, what)
            return _read_limited(conn, resp, deadline, f"{req.method} {req.path}")
        finally:
            conn.close()


def _connection(server: str, ctx: ssl.SSLContext | None, timeout_s: float) -> http.client.HTTPConnection:
    where = urlsplit(server)
    host = where.hostname or ""
    if ctx is not None:
        return http.client.HTTPSConnection(host, where.port, timeout=timeout_s, context=ctx)
    return http.client.HTTPConnection(host, where.port, timeout=timeout_s)


def _bound(conn: http.client.HTTPConnection, deadline: float) -> None:
    """Give the next read what is left of the request's time (TimeoutError when none is)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    if conn.sock is not None:
        conn.sock.settimeout(left)


def _read_limited(
    conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, deadline: float, what: str
) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= MAX_BODY:
            _bound(conn, deadline)
            chunk = resp.read(min(_CHUNK, MAX_BODY + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except (OSError, http.client.HTTPException) as exc:
        raise _unreachable(what, exc) from exc
    if size > MAX_BODY:
        raise too_large(what)
    return b"".join(chunks)
