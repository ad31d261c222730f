"""Reliability: the health endpoint of a running ``wgagent run``, fuzzed.

A real daemon process (sandbox config: everything outward off, the public IP pinned, so
every check passes and ``/healthz`` is 200) is sent, from a seeded random generator:
random and malformed methods, paths (long, encoded, absolute, binary), HTTP versions,
headers (random, duplicated, conflicting lengths, folded, binary, huge single headers and
hundreds of small ones), bodies (short, long, chunked and broken chunking), pipelined
requests, early hang-ups and plain garbage (a TLS ClientHello, random bytes). Meanwhile
slow clients trickle a header byte every 100 ms or send nothing at all, and a probe asks
``/livez`` and ``/healthz`` every 50 ms.

Checked: every answer the server gives is a well-formed HTTP response whose status is not
5xx; the probe is always answered 200 (a bounded wait each time: other requests are still
served while the fuzzing and the slow clients go on); the slow clients get their answer
once they finish; afterwards the process is still running, still answers, and its log
has no traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.labkit import free_port, terminate
from tests.support import configs
from tests.support.notify import NotifySocket

SEED = 20261126
REQUESTS = 3000
WORKERS = 8
SLOW_CLIENTS = 64
PROBE_EVERY_S = 0.05
PROBE_TIMEOUT_S = 2.0

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT", "get", "PROPFIND",
           "G\x00T", "GET GET", "X" * 300, "", "\u00e9T"]  # fmt: skip
PATHS = ["/livez", "/healthz", "/status", "/metrics", "/", "/healthz/", "//healthz", "/healthz?x=1&y",
         "/%2e%2e/%2e%2e/etc/passwd", "/../../etc/passwd", "/%00", "/metrics%3f", "*", "http://127.0.0.1/healthz",
         "/\u00ff\u00fe", "/status#frag", "/a?" + "q=" * 2000, "/" + "a" * 9000, "/" + "b" * 70000,
         "healthz"]  # fmt: skip
VERSIONS = ["HTTP/1.1", "HTTP/1.0", "HTTP/1.1", "HTTP/2.0", "HTTP/0.9", "HTTP/1.1 x", "HTTP/9.9", "http/1.1", ""]


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)
    probe_worst_s: float = 0.0
    probes: int = 0


def token(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz-_0123456789") for _ in range(n))


def fuzz_request(rng: random.Random) -> tuple[bytes, str]:
    """One random request (or garbage) and the method it claims."""
    kind = rng.random()
    if kind < 0.05:
        garbage = [
            bytes.fromhex("16030100a1010000") + os.urandom(160),  # a TLS ClientHello's start
            os.urandom(rng.randint(1, 4000)),
            b"\r\n" * rng.randint(1, 50),
            b"GET /livez HTTP/1.1\r\n" + b"Host: x\r\n" * 5,  # never finished
        ]
        return rng.choice(garbage), "?"
    if rng.random() < 0.5:  # a plausible request, so that the fuzzing also rides on answers
        method, path, version = rng.choice(["GET", "HEAD"]), rng.choice(PATHS[:4]), rng.choice(VERSIONS[:2])
    else:
        method, path, version = rng.choice(METHODS), rng.choice(PATHS), rng.choice(VERSIONS)
    lines = [f"{method} {path} {version}".rstrip()]
    headers = [("Host", "127.0.0.1")] if rng.random() < 0.9 else []
    for _ in range(rng.choice([0, 0, 1, 3, 10, 300])):
        headers.append((token(rng, rng.randint(1, 20)), token(rng, rng.randint(0, 40))))
    body = b""
    extra = rng.random()
    if extra < 0.08:
        headers.append(("X-Huge", "h" * rng.choice([8000, 9000, 20000, 200000])))
    elif extra < 0.14:
        body = os.urandom(rng.randint(0, 3000))
        headers.append(("Content-Length", str(len(body) + rng.choice([0, 0, 5, -1]))))
    elif extra < 0.18:
        headers += [("Content-Length", "5"), ("Content-Length", "7")]
        body = b"12345"
    elif extra < 0.22:
        headers.append(("Transfer-Encoding", "chunked"))
        body = rng.choice([b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\nbad\r\n", b"ffffffffff\r\n", b"3\r\nabc"])
    elif extra < 0.25:
        headers += [("Transfer-Encoding", "chunked"), ("Content-Length", "3")]
        body = b"0\r\n\r\n"
    elif extra < 0.28:
        headers.append(("X-Folded", "a\r\n  folded continuation"))
    elif extra < 0.31:
        headers.append(("X-Bin", "\x01\x7f\u00ff"))
    elif extra < 0.34:
        headers.append(("Expect", "100-continue"))
    elif extra < 0.37:
        headers.append((":authority", "x"))
    if rng.random() < 0.5:
        headers.append(("Connection", rng.choice(["close", "keep-alive", "upgrade", "x"])))
    lines += [f"{k}: {v}" for k, v in headers]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body
    if rng.random() < 0.05:  # hang up half-way
        raw = raw[: rng.randint(0, len(raw))]
    return raw, method


# aiohttp answers in the request's version ("HTTP/0.9 404", "HTTP/2.0 200"): any x.y.
_STATUS = re.compile(rb"HTTP/\d\.\d (\d{3})[^\r\n]*\r\n")


def parse_responses(data: bytes, method: str) -> tuple[list[int], str | None]:
    """Status codes of the responses in ``data``; a description if the bytes are not HTTP."""
    codes: list[int] = []
    rest = data
    while rest:
        m = _STATUS.match(rest)
        if m is None:
            return codes, f"not an HTTP response: {rest[:80]!r}"
        head_end = rest.find(b"\r\n\r\n")
        if head_end < 0:
            return codes, f"unterminated headers: {rest[:200]!r}"
        code = int(m.group(1))
        codes.append(code)
        head = rest[:head_end].decode("latin-1").lower()
        length = re.search(r"\r\ncontent-length: *(\d+)", head)
        rest = rest[head_end + 4 :]
        if "\r\nconnection: close" in head or length is None:
            return codes, None  # the body runs until the server closes; nothing follows
        if (method == "HEAD" and code < 400) or code in (204, 304) or 100 <= code < 200:
            continue  # no body (aiohttp does send its error text after a HEAD: skipped below)
        rest = rest[int(length.group(1)) :]
    return codes, None


def answered(data: bytes, method: str) -> bool:
    """Whether ``data`` holds a whole final (non-1xx) response with a Content-Length."""
    rest = data
    while (m := _STATUS.match(rest)) is not None:
        head_end = rest.find(b"\r\n\r\n")
        if head_end < 0:
            return False
        code = int(m.group(1))
        length = re.search(rb"\r\ncontent-length: *(\d+)", rest[:head_end].lower())
        body = 0 if method == "HEAD" or code < 200 or length is None else int(length.group(1))
        if len(rest) < head_end + 4 + body:
            return False
        if code >= 200 and length is not None:
            return True
        rest = rest[head_end + 4 + body :]
    return False


async def exchange(port: int, raw: bytes, method: str, tally: Tally) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = b""
    try:
        writer.write(raw)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(0.5):  # a kept-alive connection does not end with EOF
                while not answered(data, method):
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    data += chunk
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    tally.sent += 1
    codes, problem = parse_responses(data, method)
    if problem is not None:
        tally.bad.append(f"{problem} (request {raw[:120]!r})")
    for code in codes:
        tally.answered += 1
        tally.statuses[code] = tally.statuses.get(code, 0) + 1
        if code >= 500:
            tally.bad.append(f"{code} for {raw[:200]!r}")


async def probe(port: int, stop: asyncio.Event, tally: Tally) -> None:
    while not stop.is_set():
        for path in ("/livez", "/healthz"):
            started = time.monotonic()
            try:
                async with asyncio.timeout(PROBE_TIMEOUT_S):
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                    data = await reader.read()
                    writer.close()
            except TimeoutError:
                tally.bad.append(f"probe {path} not answered within {PROBE_TIMEOUT_S} s")
                continue
            tally.probes += 1
            tally.probe_worst_s = max(tally.probe_worst_s, time.monotonic() - started)
            if not data.startswith(b"HTTP/1.1 200 "):
                tally.bad.append(f"probe {path}: {data[:100]!r}")
        await asyncio.sleep(PROBE_EVERY_S)


async def slow_client(port: int, stop: asyncio.Event, tally: Tally, silent: bool) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if not silent:
            writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
            while not stop.is_set():
                writer.write(b"X")  # one byte of an endless header name, every 100 ms
                await writer.drain()
                await asyncio.sleep(0.1)
            writer.write(b"-Slow: 1\r\nConnection: close\r\n\r\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 5)
            codes, problem = parse_responses(data, "GET")
            if problem or (codes != [200] and not (codes and 400 <= codes[0] < 500)):
                tally.bad.append(f"slow client got {data[:100]!r}")
        else:
            await stop.wait()
    except ConnectionError:
        pass  # the server may close a connection it finds too slow; that is allowed
    finally:
        writer.close()


async def fuzz(port: int, seed: int) -> Tally:
    tally = Tally()
    stop = asyncio.Event()
    rng = random.Random(seed)
    background = [asyncio.ensure_future(probe(port, stop, tally))]
    background += [
        asyncio.ensure_future(slow_client(port, stop, tally, silent=i % 4 == 0)) for i in range(SLOW_CLIENTS)
    ]
    queue = [fuzz_request(rng) for _ in range(REQUESTS)]

    async def worker() -> None:
        while queue:
            raw, method = queue.pop()
            await exchange(port, raw, method, tally)

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    stop.set()
    await asyncio.gather(*background)
    return tally


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    port = free_port()
    cfg = configs.sandbox(
        str(tmp_path), port, log_level="debug", public_ip={"enabled": True, "static": ["203.0.113.7"]}
    )
    path = configs.write(str(tmp_path / "config.yaml"), cfg)
    log = tmp_path / "daemon.log"
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    env = {**os.environ, **notify.env(), "PYTHONPATH": str(ROOT)}
    env.pop("JOURNAL_STREAM", None)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wgagent", "--config", path, "run"], stdout=out, stderr=out, env=env, text=True
        )
    try:
        notify.wait_for("READY=1")
        yield proc, port, log
    finally:
        terminate(proc)
        notify.close()


def test_fuzzed_health_endpoint_never_5xx_and_keeps_serving(daemon: tuple[subprocess.Popen[str], int, Path]) -> None:
    proc, port, log = daemon
    tally = asyncio.run(fuzz(port, SEED))
    assert proc.poll() is None, "the daemon died"
    summary = f"{tally.sent} sent, {tally.answered} answers {sorted(tally.statuses.items())}, {tally.probes} probes"
    assert not tally.bad, f"{summary}:\n" + "\n".join(tally.bad[:20])
    assert tally.sent == REQUESTS and tally.probes > 20, summary
    assert tally.statuses.get(200, 0) > 100 and tally.statuses.get(400, 0) > 100, summary  # both kinds really sent
    assert tally.probe_worst_s < PROBE_TIMEOUT_S, summary
    # still itself afterwards
    code = asyncio.run(asyncio.wait_for(_get(port, "/healthz"), 5))
    assert code == 200
    text = log.read_text()
    assert "Traceback" not in text and "Error handling request" not in text, text[-3000:]


async def _get(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return int(data.split(b" ", 2)[1])
