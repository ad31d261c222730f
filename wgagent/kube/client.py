"""A small asynchronous Kubernetes API client for Nodes, on aiohttp (no Kubernetes library).

    client = KubeClient("/etc/rancher/k3s/k3s.yaml", timeout_s=10)
    node = await client.get_node("n1")
    await client.patch_node("n1", {"metadata": {"annotations": {"k": "v"}}})
    lst = await client.list_nodes_metadata()
    async for event in client.watch_nodes_metadata(lst["metadata"]["resourceVersion"], timeout_s=3600):
        ...

- The kubeconfig is read when the first request needs it, and again after a 401 (k3s
  rotates client certificates), so a file that appears only once k3s has started is fine.
- The requests, their headers, the TLS context, the retries and the error each HTTP status
  maps to are ``request.py``'s, shared with the one-shot commands' client (``oneshot.py``);
  aiohttp's own failures are translated here (:func:`unreachable`: ``KubeUnreachable``).
- Transient errors (no answer, 5xx, 429, 409) are retried ``retries`` times, waiting
  :func:`~wgagent.kube.backoff.backoff_delay` (capped at 60 s, jittered) in between.
- Never through a proxy (``trust_env=False``); tokens and keys are never logged.
- Watch lines are split by hand rather than with ``StreamReader.readline``, whose limit
  (128 KiB in aiohttp 3.8) a large object can exceed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp

from wgagent.errors import KubeError, KubeUnreachable
from wgagent.kube import kubeconfig
from wgagent.kube import request as rq
from wgagent.kube.protocol import JSONObject, WatchEvent
from wgagent.kube.request import MAX_BODY, MAX_ERROR_BODY, Sleep, json_object, ssl_context, status_error, too_large
from wgagent.metrics import Registry

log = logging.getLogger(__name__)

MAX_WATCH_LINE = 16 << 20

__all__ = ["KubeClient", "status_error", "unreachable"]


def unreachable(what: str, exc: BaseException) -> KubeUnreachable:
    """``KubeUnreachable`` for a request that got no HTTP answer, saying why in one line."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        why = "timed out"
    elif isinstance(exc, aiohttp.ClientConnectorCertificateError):
        why = f"TLS certificate not trusted: {getattr(exc.certificate_error, 'verify_message', None) or exc}"
    elif isinstance(exc, aiohttp.ClientSSLError):
        why = f"TLS handshake failed: {exc}"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        why = f"cannot connect: {exc.strerror or exc}"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        why = "the server closed the connection"
    else:
        why = str(exc) or type(exc).__name__
    return KubeUnreachable(f"{what}: {' '.join(why.split())}")


class KubeClient:
    """Implements :class:`wgagent.kube.protocol.NodeAPI` against one kubeconfig."""

    def __init__(
        self,
        kubeconfig_path: str | Callable[[], str],
        *,
        timeout_s: float = 10.0,
        retries: int = 2,
        watch_idle_timeout_s: float = 300.0,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        metrics: Registry | None = None,
    ) -> None:
        self._path = kubeconfig_path
        self.timeout_s = timeout_s
        self.retries = retries
        self.watch_idle_timeout_s = watch_idle_timeout_s
        self._sleep = sleep
        self._rand = rand
        self._session: aiohttp.ClientSession | None = None
        self._cred: kubeconfig.Credential | None = None
        self._closed = False
        self._requests = (metrics or Registry()).counter(
            "wgagent_kube_requests_total", "Kubernetes API requests, by verb and HTTP status.", ("verb", "code")
        )

    @property
    def source(self) -> str:
        return self._path if isinstance(self._path, str) else self._path()

    # --- the NodeAPI ---------------------------------------------------------------------

    async def get_node(self, name: str) -> JSONObject:
        return await self._call(rq.get_node(name))

    async def patch_node(self, name: str, patch: Mapping[str, Any]) -> JSONObject:
        return await self._call(rq.patch_node(name, patch))

    async def list_nodes_metadata(self, *, resource_version: str | None = None) -> JSONObject:
        return await self._call(rq.list_nodes(resource_version=resource_version))

    async def watch_nodes_metadata(self, resource_version: str, *, timeout_s: int) -> AsyncIterator[WatchEvent]:
        # No total timeout: the server ends the watch after timeoutSeconds. A silent
        # connection (no event, no bookmark) for watch_idle_timeout_s is taken as dead.
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.timeout_s, sock_connect=self.timeout_s, sock_read=self.watch_idle_timeout_s
        )
        req = rq.watch_nodes(resource_version, timeout_s=timeout_s)
        what = f"WATCH {req.path}"
        resp = await self._open(req, client_timeout=timeout)
        try:
            buf = bytearray()
            while True:
                try:
                    chunk = await resp.content.readany()
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    raise unreachable(what, exc) from exc
                if not chunk:
                    return  # the server ended the watch (its timeout): not an error
                buf += chunk
                while True:
                    end = buf.find(b"\n")
                    if end < 0:
                        break
                    line = bytes(buf[:end])
                    del buf[: end + 1]
                    if line.strip():
                        yield _watch_event(line, what)
                if len(buf) > MAX_WATCH_LINE:
                    raise KubeError(f"{what}: a watch event is larger than {MAX_WATCH_LINE >> 20} MiB")
        finally:
            resp.close()  # a watch cut short must not leave its connection for reuse

    # --- Events (implements wgagent.events.EventSink) --------------------------------------

    async def create_event(self, namespace: str, event: Mapping[str, Any]) -> JSONObject:
        """POST a core/v1 Event; Conflict (409) if one of that name exists."""
        return await self._call(rq.create_event(namespace, event))

    async def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any]) -> JSONObject:
        """JSON merge patch of an Event (count, lastTimestamp, message); NotFound once it expired."""
        return await self._call(rq.patch_event(namespace, name, patch))

    async def close(self) -> None:
        self._closed = True
        await self._drop_session()

    # --- requests ----------------------------------------------------------------------

    async def _call(self, req: rq.Request) -> JSONObject:
        """One request with retries of transient failures; the decoded JSON object."""

        async def once() -> JSONObject:
            what = f"{req.method} {req.path}"
            resp = await self._open(req)
            try:
                data = await _read_limited(resp, what)
            finally:
                resp.release()
            return json_object(data, what)

        return await rq.call(once, retries=self.retries, sleep=self._sleep, rand=self._rand, reload=self._drop_session)

    async def _open(
        self, req: rq.Request, client_timeout: aiohttp.ClientTimeout | None = None
    ) -> aiohttp.ClientResponse:
        """Send one request; the response when its status is 2xx, else the mapped error."""
        session, cred = await self._ensure_session()
        url = cred.server + req.path
        what = f"{req.method} {url}"
        started = time.monotonic()
        try:
            resp = await session.request(
                req.method,
                url,
                params=req.params,
                data=req.body,
                headers=rq.headers(req, cred),
                timeout=client_timeout or aiohttp.ClientTimeout(total=self.timeout_s),
                allow_redirects=False,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self._requests.inc(verb=req.verb, code="none")
            if isinstance(exc, aiohttp.ClientSSLError):
                await self._drop_session()  # maybe a new CA or certificate on disk: reload next time
            error = unreachable(what, exc)
            log.debug("%s", error)
            raise error from exc
        self._requests.inc(verb=req.verb, code=str(resp.status))
        log.debug("%s -> %d (%.0f ms)", what, resp.status, (time.monotonic() - started) * 1000)
        if resp.status >= 300:
            try:
                data = await resp.content.read(MAX_ERROR_BODY)
            except (TimeoutError, aiohttp.ClientError, OSError):
                data = b""
            finally:
                resp.release()
            raise status_error(resp.status, data, what)
        return resp

    async def _ensure_session(self) -> tuple[aiohttp.ClientSession, kubeconfig.Credential]:
        if self._closed:
            raise KubeError("the Kubernetes client is closed")
        if self._session is None or self._cred is None:
            cred = kubeconfig.load(self.source)
            ctx = ssl_context(cred) if cred.server.startswith("https:") else None
            connector = aiohttp.TCPConnector(ssl=ctx if ctx is not None else False, limit=4)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
            self._cred = cred
        return self._session, self._cred

    async def _drop_session(self) -> None:
        session, self._session, self._cred = self._session, None, None
        if session is not None:
            with contextlib.suppress(Exception):
                await session.close()


async def _read_limited(resp: aiohttp.ClientResponse, what: str) -> bytes:
    try:
        data = await resp.content.read(MAX_BODY + 1)
        while len(data) <= MAX_BODY:
            more = await resp.content.read(MAX_BODY + 1 - len(data))
            if not more:
                break
            data += more
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise unreachable(what, exc) from exc
    if len(data) > MAX_BODY:
        raise too_large(what)
    return data


def _watch_event(line: bytes, what: str) -> WatchEvent:
    """Decode one watch line; an ERROR event becomes the error its Status names."""
    try:
        doc = json.loads(line)
    except ValueError as exc:
        raise KubeError(f"{what}: a watch line is not JSON") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("type"), str) or not isinstance(doc.get("object"), dict):
        raise KubeError(f"{what}: a watch line is not an event")
    if doc["type"] == "ERROR":
        status = doc["object"]
        code = status.get("code")
        raise status_error(code if isinstance(code, int) and code >= 400 else 500, json.dumps(status).encode(), what)
    return WatchEvent(doc["type"], doc["object"])
