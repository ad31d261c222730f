"""A small asynchronous Kubernetes API client for Nodes, on aiohttp (no Kubernetes library).

    client = KubeClient("/etc/rancher/k3s/k3s.yaml", timeout_s=10)
    node = await client.get_node("n1")
    await client.patch_node("n1", {"metadata": {"annotations": {"k": "v"}}})
    lst = await client.list_nodes_metadata()
    async for event in client.watch_nodes_metadata(lst["metadata"]["resourceVersion"], timeout_s=3600):
        ...

- The kubeconfig is read when the first request needs it, and again after a 401 (k3s
  rotates client certificates), so a file that appears only once k3s has started is fine.
- Errors are mapped once, here, by HTTP status (:func:`status_error`), into the
  ``wgagent.errors`` classes; no answer at all is ``KubeUnreachable``.
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
import os
import random
import shutil
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

from wgagent import __version__
from wgagent.errors import KubeConfigError, KubeError, KubeStatusError, KubeUnreachable, Unauthorized, kube_status_error
from wgagent.kube import kubeconfig
from wgagent.kube.backoff import backoff_delay
from wgagent.kube.protocol import JSONObject, WatchEvent
from wgagent.metrics import Registry

log = logging.getLogger(__name__)

USER_AGENT = f"wgagent/{__version__}"
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
ACCEPT_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
ACCEPT_METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
MAX_BODY = 64 << 20
MAX_WATCH_LINE = 16 << 20
NODES = "/api/v1/nodes"

Sleep = Callable[[float], Awaitable[None]]


def status_error(status: int, body: bytes, what: str) -> KubeStatusError:
    """The error for an HTTP error answer; the message names the request and, when the body
    is a Kubernetes ``Status``, says what the API said.

    >>> body = b'{"kind":"Status","message":"nodes \\\\"n9\\\\" not found","reason":"NotFound"}'
    >>> e = status_error(404, body, "GET n9")
    >>> type(e).__name__, str(e)
    ('NotFound', 'GET n9: 404 NotFound: nodes "n9" not found')
    """
    reason, message = "", ""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get("kind") == "Status":
        reason = str(doc.get("reason") or "")
        message = str(doc.get("message") or "")
    if not message:
        text = body.decode("utf-8", "replace").strip()
        message = " ".join(text.split())[:200] if text and not text.startswith("<") else ""
    label = reason or _REASONS.get(status, "error")
    text = f"{what}: {status} {label}" + (f": {message}" if message else "")
    return kube_status_error(status, text, reason)


_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Gone",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "Timeout",
}


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


def ssl_context(cred: kubeconfig.Credential) -> ssl.SSLContext:
    """A client TLS context: the kubeconfig's CA (or the system's), and its client certificate.

    ``load_cert_chain`` reads files only: inline (``-data``) material goes through a
    private temporary directory (0700, files 0600) that is removed before returning.
    """
    try:
        if cred.insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif cred.ca is not None and cred.ca.data is not None:
            ctx = ssl.create_default_context(cadata=cred.ca.data.decode("ascii", "replace"))
        elif cred.ca is not None:
            ctx = ssl.create_default_context(cafile=cred.ca.path)
        else:
            ctx = ssl.create_default_context()
    except FileNotFoundError as exc:
        where = cred.ca.describe() if cred.ca else "(system store)"
        raise KubeConfigError(f"{cred.source}: certificate-authority {where} not found") from exc
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise KubeConfigError(f"{cred.source}: cannot load certificate-authority: {_ssl_reason(exc)}") from exc
    if cred.client_cert is not None and cred.client_key is not None:
        _load_client_cert(ctx, cred, cred.client_cert, cred.client_key)
    return ctx


def _load_client_cert(
    ctx: ssl.SSLContext, cred: kubeconfig.Credential, cert: kubeconfig.Material, key: kubeconfig.Material
) -> None:
    tmp: str | None = None
    try:
        if cert.data is not None or key.data is not None:
            tmp = tempfile.mkdtemp(prefix="wgagent-kube-")  # mode 0700
        cert_path = _materialize(cert, tmp, "client.crt")
        key_path = _materialize(key, tmp, "client.key")
        ctx.load_cert_chain(cert_path, key_path)
    except FileNotFoundError as exc:
        raise KubeConfigError(
            f"{cred.source}: client certificate or key not found ({cert.describe()}, {key.describe()})"
        ) from exc
    except (ssl.SSLError, OSError) as exc:
        raise KubeConfigError(f"{cred.source}: cannot load client certificate/key: {_ssl_reason(exc)}") from exc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _materialize(material: kubeconfig.Material, tmp: str | None, name: str) -> str:
    if material.data is None:
        assert material.path is not None
        return material.path
    assert tmp is not None
    path = os.path.join(tmp, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(material.data)
    return path


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


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
        return await self._call("get", "GET", f"{NODES}/{quote(name, safe='')}")

    async def patch_node(self, name: str, patch: Mapping[str, Any]) -> JSONObject:
        body = json.dumps(patch).encode()
        return await self._call(
            "patch", "PATCH", f"{NODES}/{quote(name, safe='')}", body=body, content_type=MERGE_PATCH
        )

    async def list_nodes_metadata(self, *, resource_version: str | None = None) -> JSONObject:
        params = {} if resource_version is None else {"resourceVersion": resource_version}
        return await self._call("list", "GET", NODES, params=params, accept=ACCEPT_METADATA_LIST)

    async def watch_nodes_metadata(self, resource_version: str, *, timeout_s: int) -> AsyncIterator[WatchEvent]:
        params = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(int(timeout_s)),
        }
        # No total timeout: the server ends the watch after timeoutSeconds. A silent
        # connection (no event, no bookmark) for watch_idle_timeout_s is taken as dead.
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.timeout_s, sock_connect=self.timeout_s, sock_read=self.watch_idle_timeout_s
        )
        what = f"WATCH {NODES}"
        resp = await self._open("watch", "GET", NODES, params=params, accept=ACCEPT_METADATA, client_timeout=timeout)
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
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/events"
        return await self._call("create", "POST", path, body=json.dumps(event).encode(), content_type=JSON)

    async def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any]) -> JSONObject:
        """JSON merge patch of an Event (count, lastTimestamp, message); NotFound once it expired."""
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/events/{quote(name, safe='')}"
        return await self._call("patch", "PATCH", path, body=json.dumps(patch).encode(), content_type=MERGE_PATCH)

    async def close(self) -> None:
        self._closed = True
        await self._drop_session()

    # --- requests ----------------------------------------------------------------------

    async def _call(
        self,
        verb: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        accept: str = JSON,
    ) -> JSONObject:
        """One request with retries of transient failures; the decoded JSON object."""
        attempt = 0
        reauthenticated = False
        while True:
            try:
                resp = await self._open(
                    verb, method, path, params=params, body=body, content_type=content_type, accept=accept
                )
                try:
                    data = await _read_limited(resp, f"{method} {path}")
                finally:
                    resp.release()
                return _json_object(data, f"{method} {path}")
            except Unauthorized:
                # A rotated client certificate or token: read the kubeconfig again, once.
                await self._drop_session()
                if reauthenticated:
                    raise
                reauthenticated = True
            except KubeError as exc:
                if not exc.transient or attempt >= self.retries:
                    raise
                delay = backoff_delay(attempt, rand=self._rand)
                attempt += 1
                log.debug("%s; retry %d/%d in %.1f s", exc, attempt, self.retries, delay)
                await self._sleep(delay)

    async def _open(
        self,
        verb: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        accept: str = JSON,
        client_timeout: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        """Send one request; the response when its status is 2xx, else the mapped error."""
        session, cred = await self._ensure_session()
        url = cred.server + path
        what = f"{method} {url}"
        headers = {"Accept": accept, "User-Agent": USER_AGENT}
        if cred.token:
            headers["Authorization"] = "Bearer " + cred.token
        if content_type:
            headers["Content-Type"] = content_type
        started = time.monotonic()
        try:
            resp = await session.request(
                method,
                url,
                params=params,
                data=body,
                headers=headers,
                timeout=client_timeout or aiohttp.ClientTimeout(total=self.timeout_s),
                allow_redirects=False,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self._requests.inc(verb=verb, code="none")
            if isinstance(exc, aiohttp.ClientSSLError):
                await self._drop_session()  # maybe a new CA or certificate on disk: reload next time
            error = unreachable(what, exc)
            log.debug("%s", error)
            raise error from exc
        self._requests.inc(verb=verb, code=str(resp.status))
        log.debug("%s -> %d (%.0f ms)", what, resp.status, (time.monotonic() - started) * 1000)
        if resp.status >= 300:
            try:
                data = await resp.content.read(64 << 10)
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
        raise KubeError(f"{what}: answer larger than {MAX_BODY >> 20} MiB")
    return data


def _json_object(data: bytes, what: str) -> JSONObject:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise KubeError(f"{what}: the answer is not JSON") from exc
    if not isinstance(doc, dict):
        raise KubeError(f"{what}: the answer is not a JSON object")
    return doc


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
