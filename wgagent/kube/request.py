"""The Kubernetes API requests wgagent makes, stated once for both of its clients.

    req = list_nodes()                          # GET /api/v1/nodes, metadata only
    req.target("https://127.0.0.1:6443")        # what goes on the request line
    headers(req, cred)                          # Accept, User-Agent, Authorization, Content-Type
    ctx = ssl_context(cred)                     # the kubeconfig's CA and client certificate
    data = await call(once, retries=2, ...)     # transient errors retried, a 401 reloads once

``client.KubeClient`` (aiohttp: the daemon's parts, with the watch) and
``oneshot.OneShotClient`` (the standard library: ``wgagent gc``, which must start fast) send
exactly these requests, trust and authenticate the same way, and map an HTTP error status
to the same :mod:`wgagent.errors` class with the same message (:func:`status_error`). Each
client translates only its own library's failures to send (``KubeUnreachable``).

Imports neither aiohttp nor ssl: ``ssl_context`` imports ssl when it is called.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

from wgagent import __version__
from wgagent.errors import KubeConfigError, KubeError, KubeStatusError, Unauthorized, kube_status_error
from wgagent.kube.backoff import backoff_delay

if TYPE_CHECKING:
    import ssl

    from wgagent.kube import kubeconfig
    from wgagent.kube.protocol import JSONObject

log = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

USER_AGENT = f"wgagent/{__version__}"
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
ACCEPT_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
ACCEPT_METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
MAX_BODY = 64 << 20
"""The largest answer read (a metadata LIST of 10,000 Nodes is ~10 MB)."""
MAX_ERROR_BODY = 64 << 10
"""What is read of an error answer, for its message."""
NODES = "/api/v1/nodes"


@dataclass(frozen=True)
class Request:
    """One API request. ``verb`` names it for metrics and logs (``get``, ``list``, ``watch``...)."""

    verb: str
    method: str
    path: str
    params: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    content_type: str | None = None
    accept: str = JSON

    def target(self, server: str) -> str:
        """The path and query on the request line, below ``server``'s own path, if any.

        >>> list_nodes(resource_version="7").target("https://rancher.example/k8s/clusters/c-1")
        '/k8s/clusters/c-1/api/v1/nodes?resourceVersion=7'
        """
        query = f"?{urlencode(self.params)}" if self.params else ""
        return urlsplit(server).path.rstrip("/") + self.path + query


def get_node(name: str) -> Request:
    return Request("get", "GET", f"{NODES}/{quote(name, safe='')}")


def patch_node(name: str, patch: Mapping[str, Any]) -> Request:
    """A JSON merge patch (RFC 7386) of the Node."""
    body = json.dumps(patch).encode()
    return Request("patch", "PATCH", f"{NODES}/{quote(name, safe='')}", body=body, content_type=MERGE_PATCH)


def list_nodes(*, resource_version: str | None = None) -> Request:
    """Every Node as ``PartialObjectMetadata``: the API server strips spec and status."""
    params = {} if resource_version is None else {"resourceVersion": resource_version}
    return Request("list", "GET", NODES, params, accept=ACCEPT_METADATA_LIST)


def watch_nodes(resource_version: str, *, timeout_s: int) -> Request:
    params = {
        "watch": "true",
        "resourceVersion": resource_version,
        "allowWatchBookmarks": "true",
        "timeoutSeconds": str(int(timeout_s)),
    }
    return Request("watch", "GET", NODES, params, accept=ACCEPT_METADATA)


def create_event(namespace: str, event: Mapping[str, Any]) -> Request:
    path = f"/api/v1/namespaces/{quote(namespace, safe='')}/events"
    return Request("create", "POST", path, body=json.dumps(event).encode(), content_type=JSON)


def patch_event(namespace: str, name: str, patch: Mapping[str, Any]) -> Request:
    path = f"/api/v1/namespaces/{quote(namespace, safe='')}/events/{quote(name, safe='')}"
    return Request("patch", "PATCH", path, body=json.dumps(patch).encode(), content_type=MERGE_PATCH)


def headers(req: Request, cred: kubeconfig.Credential) -> dict[str, str]:
    """The request's headers: what it accepts, who sends it, and the bearer token, if any."""
    out = {"Accept": req.accept, "User-Agent": USER_AGENT}
    if cred.token:
        out["Authorization"] = "Bearer " + cred.token
    if req.content_type:
        out["Content-Type"] = req.content_type
    return out


async def call(
    once: Callable[[], Awaitable[T]],
    *,
    retries: int,
    sleep: Sleep,
    rand: Callable[[], float],
    reload: Callable[[], Awaitable[None]],
) -> T:
    """``once()`` until it succeeds: a transient error (no answer, 5xx, 429, 409) is tried
    again ``retries`` times after :func:`~wgagent.kube.backoff.backoff_delay`; a 401 calls
    ``reload()`` (the next try reads the kubeconfig again: k3s rotates client certificates)
    and is tried once more. Anything else is raised."""
    attempt = 0
    reauthenticated = False
    while True:
        try:
            return await once()
        except Unauthorized:
            await reload()
            if reauthenticated:
                raise
            reauthenticated = True
        except KubeError as exc:
            if not exc.transient or attempt >= retries:
                raise
            delay = backoff_delay(attempt, rand=rand)
            attempt += 1
            log.debug("%s; retry %d/%d in %.1f s", exc, attempt, retries, delay)
            await sleep(delay)


# --- answers --------------------------------------------------------------------------------------


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


def too_large(what: str) -> KubeError:
    return KubeError(f"{what}: answer larger than {MAX_BODY >> 20} MiB")


def json_object(data: bytes, what: str) -> JSONObject:
    """The answer's JSON object; KubeError for anything else."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise KubeError(f"{what}: the answer is not JSON") from exc
    if not isinstance(doc, dict):
        raise KubeError(f"{what}: the answer is not a JSON object")
    return doc


# --- TLS ----------------------------------------------------------------------------------------


def ssl_context(cred: kubeconfig.Credential) -> ssl.SSLContext:
    """A client TLS context: the kubeconfig's CA (or the system's), and its client certificate.

    ``load_cert_chain`` reads files only: inline (``-data``) material goes through a
    private temporary directory (0700, files 0600) that is removed before returning.
    """
    import ssl

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
    import ssl

    tmp: str | None = None
    try:
        if cert.data is not None or key.data is not None:
            import tempfile

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
            import shutil

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
    import ssl

    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
