"""Kubernetes errors are mapped once, by status, into wgagent.errors; watch lines decoded."""

from __future__ import annotations

import json

import aiohttp
import pytest

from wgagent.errors import (
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    KubeError,
    KubeStatusError,
    KubeUnreachable,
    NotFound,
    ServerError,
    Unauthorized,
)
from wgagent.kube.client import _watch_event, status_error, unreachable


def status_body(code: int, reason: str, message: str) -> bytes:
    return json.dumps(
        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message}
    ).encode()


@pytest.mark.parametrize(
    ("code", "cls", "transient"),
    [
        pytest.param(401, Unauthorized, False, id="401"),
        pytest.param(403, Forbidden, False, id="403"),
        pytest.param(404, NotFound, False, id="404"),
        pytest.param(409, Conflict, True, id="409"),
        pytest.param(410, Gone, False, id="410"),
        pytest.param(422, Invalid, False, id="422"),
        pytest.param(429, ServerError, True, id="429-too-many-requests"),
        pytest.param(500, ServerError, True, id="500"),
        pytest.param(503, ServerError, True, id="503"),
        pytest.param(504, ServerError, True, id="504"),
        pytest.param(400, KubeStatusError, False, id="400-other"),
        pytest.param(415, KubeStatusError, False, id="415-other"),
    ],
)
def test_status_maps_to_class(code: int, cls: type[KubeStatusError], transient: bool) -> None:
    err = status_error(code, status_body(code, "Some", "the API says no"), "GET https://api/x")
    assert type(err) is cls
    assert err.transient is transient
    assert err.status == code
    assert str(err) == f"GET https://api/x: {code} Some: the API says no"


def test_forbidden_keeps_the_servers_explanation() -> None:
    body = status_body(403, "Forbidden", 'nodes "n2" is forbidden: User "system:node:n1" cannot get resource "nodes"')
    err = status_error(403, body, "GET https://api/api/v1/nodes/n2")
    assert isinstance(err, Forbidden) and err.reason == "Forbidden"
    assert 'User "system:node:n1" cannot get' in str(err)


@pytest.mark.parametrize(
    ("body", "text"),
    [
        pytest.param(b"", "GET u: 502 BadGateway", id="empty"),
        pytest.param(b"upstream connect error\n  reset", "GET u: 502 BadGateway: upstream connect error reset",
                     id="plain-text-one-line"),
        pytest.param(b"<html><body>Bad gateway</body></html>", "GET u: 502 BadGateway", id="html-dropped"),
        pytest.param(b'{"kind":"Other"}', 'GET u: 502 BadGateway: {"kind":"Other"}', id="json-not-status"),
        pytest.param(b"x" * 1000, "GET u: 502 BadGateway: " + "x" * 200, id="long-body-cut"),
    ],
)  # fmt: skip
def test_non_status_bodies(body: bytes, text: str) -> None:
    err = status_error(502, body, "GET u")
    assert isinstance(err, ServerError) and str(err) == text


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        pytest.param(TimeoutError(), "GET u: timed out", id="timeout"),
        pytest.param(aiohttp.ServerDisconnectedError(), "GET u: the server closed the connection", id="disconnect"),
        pytest.param(aiohttp.ClientPayloadError("Response payload is not completed"),
                     "GET u: Response payload is not completed", id="payload"),
        pytest.param(OSError(), "GET u: OSError", id="bare-oserror"),
    ],
)  # fmt: skip
def test_unreachable(exc: BaseException, text: str) -> None:
    err = unreachable("GET u", exc)
    assert isinstance(err, KubeUnreachable) and err.transient and str(err) == text


def test_watch_event_lines() -> None:
    event = _watch_event(b'{"type":"MODIFIED","object":{"metadata":{"name":"n1","resourceVersion":"7"}}}', "W")
    assert event.type == "MODIFIED" and event.resource_version == "7"
    bookmark = _watch_event(b'{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"9"}}}', "W")
    assert bookmark.resource_version == "9"


def test_watch_error_event_410_is_gone() -> None:
    line = json.dumps({"type": "ERROR", "object": json.loads(status_body(410, "Expired", "too old resource version"))})
    with pytest.raises(Gone) as exc:
        _watch_event(line.encode(), "WATCH u")
    assert "too old resource version" in str(exc.value)


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"[1,2]", id="not-an-object"),
        pytest.param(b'{"type":"ADDED"}', id="no-object"),
        pytest.param(b'{"type":"ERROR","object":{"kind":"Status"}}', id="error-without-code"),
    ],
)
def test_bad_watch_lines_are_errors(line: bytes) -> None:
    with pytest.raises(KubeError):
        _watch_event(line, "W")
