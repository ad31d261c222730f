"""Talk to servers inside a lab namespace from this process, without a subprocess per request.

    with InNetns(host.netns) as ns:
        code, body = ns.http("http://127.0.0.1:8795/healthz")

Each :class:`InNetns` owns one thread that entered the namespace (``setns(2)`` with
``CLONE_NEWNET`` changes only the calling thread's network namespace); sockets it opens
live there, so ``127.0.0.1`` is that namespace's loopback. ``close()`` ends the thread, which
then no longer holds the namespace alive, so close every one before deleting namespaces.
"""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


def _enter(netns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
    finally:
        os.close(fd)


class InNetns:
    def __init__(self, netns: str) -> None:
        self.netns = netns
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"netns-{netns}", initializer=_enter, initargs=(netns,))

    def __enter__(self) -> InNetns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 10) -> T:
        """Run ``fn(*args)`` on the namespace's thread; its result (or its exception)."""
        return self._pool.submit(fn, *args).result(timeout)

    def http(
        self,
        url: str,
        *,
        method: str = "GET",
        body: Any = None,
        headers: dict[str, str] | None = None,
        cafile: str | None = None,
        timeout: float = 3,
    ) -> tuple[int, bytes]:
        """One HTTP(S) request from inside the namespace: (status, body). ``body`` is sent as JSON."""
        return self.call(_request, url, method, body, headers or {}, cafile, timeout, timeout=timeout + 2)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _request(
    url: str, method: str, body: Any, headers: dict[str, str], cafile: str | None, timeout: float
) -> tuple[int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        ctx = ssl.create_default_context(cafile=cafile)
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers = {"Content-Type": "application/json", **headers}
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()
