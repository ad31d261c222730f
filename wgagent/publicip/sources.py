"""What every public IP source is, and the runner that asks them all at once.

A source is a small class::

    class StaticSource:
        name = "static"          # unique: names the observation and the error metric
        kind = "static"          # static | interface | metadata | stun | http
        timeout_s = 5.0          # observe() is cancelled after this long
        why_not = ""             # set when observe() returns None: why it does not apply

        async def observe(self) -> Sequence[Answer] | None: ...

``observe()`` returns the addresses it found, ``None`` when it does not apply here (no
cloud detected, IMDS switched off, no public address on any interface), and raises when
it is broken. ``observe_all()`` runs every source concurrently, each under its own
timeout, and turns every outcome into ``Observation``s: a broken source is an
observation with an error, never an exception out of the runner.

HTTP-based sources (echo, metadata) reach the network through ``HttpClient``, so tests
plug in a fake; the aiohttp implementation lives in ``httpclient.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from wgagent.errors import SourceError
from wgagent.publicip.model import Answer, IPAddress, Observation

log = logging.getLogger(__name__)

BUDGET_SHARE = 0.9
"""A source asking over IPv4 and IPv6 at once ends both after this share of its timeout,
so that the answer of one family survives the other hanging until the hard cut."""


class Source(Protocol):
    name: str
    kind: str
    timeout_s: float
    why_not: str

    async def observe(self) -> Sequence[Answer] | None: ...


class Closable(Protocol):
    def close(self) -> object:
        """Release sockets; the result is awaited when it is awaitable."""
        ...


@dataclass
class SourceSet:
    """The sources of one config and the clients they share (HTTP sessions, STUN sockets).

    ``end_round()`` after each round releases what a round should not keep (STUN sockets,
    so each round uses fresh ones); ``close()`` releases everything.
    """

    sources: list[Source]
    per_round: list[Closable] = field(default_factory=list)
    shared: list[Closable] = field(default_factory=list)

    async def end_round(self) -> None:
        for client in self.per_round:
            await _close(client)

    async def close(self) -> None:
        for client in (*self.per_round, *self.shared):
            await _close(client)


async def _close(client: Closable) -> None:
    result = client.close()
    if asyncio.iscoroutine(result):
        await result


@dataclass(frozen=True)
class HttpReply:
    status: int
    body: bytes
    peer: IPAddress | None = None
    """The address of the server that answered, when known."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Response headers, names lower-cased."""


class HttpClient(Protocol):
    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        limit: int,
        family: int = 0,
    ) -> HttpReply:
        """One request, never through a proxy, never following a redirect.

        Reads at most ``limit`` body bytes: a longer body raises MalformedReply without
        being read further. ``family`` (socket.AF_INET/AF_INET6, 0 for any) picks the
        address family of the connection. Connection failures raise SourceError.
        """
        ...


async def observe_all(
    sources: Sequence[Source], *, monotonic: Callable[[], float] = time.monotonic
) -> list[Observation]:
    """Ask every source at once; one or more observations per source, in source order."""
    results = await asyncio.gather(*(_observe_one(s, monotonic) for s in sources))
    return [o for group in results for o in group]


async def _observe_one(source: Source, monotonic: Callable[[], float]) -> list[Observation]:
    start = monotonic()

    def elapsed() -> float:
        return max(0.0, monotonic() - start)

    try:
        answers = await asyncio.wait_for(source.observe(), source.timeout_s)
    except TimeoutError:
        return [_error(source, f"no answer within {source.timeout_s:g} s", elapsed())]
    except SourceError as exc:
        return [_error(source, str(exc) or type(exc).__name__, elapsed())]
    except Exception as exc:  # a bug in a source must not stop discovery
        log.warning("public IP source %s failed unexpectedly", source.name, exc_info=True)
        return [_error(source, f"unexpected {type(exc).__name__}: {exc}", elapsed())]
    took = elapsed()
    if not answers:
        return [Observation(source.name, source.kind, took, applicable=False, note=source.why_not)]
    return [
        Observation(
            source.name,
            source.kind,
            took,
            ip=a.ip,
            server=a.server,
            port=a.port,
            local_port=a.local_port,
            note=a.note,
        )
        for a in answers
    ]


async def gather_within(attempts: Mapping[str, Awaitable[Answer]], budget_s: float) -> list[Answer]:
    """Run ``attempts`` (label -> awaitable) concurrently for at most ``budget_s`` seconds.

    The answers that arrived in time; when none did, SourceError naming each failure.
    """
    tasks = {asyncio.ensure_future(a): label for label, a in attempts.items()}
    try:
        done, _ = await asyncio.wait(tasks, timeout=budget_s) if tasks else (set(), set())
    finally:
        for task in tasks:
            task.cancel()
    answers: list[Answer] = []
    errors: list[SourceError] = []
    for task, label in tasks.items():
        prefix = f"{label}: " if len(tasks) > 1 else ""
        if task not in done:
            errors.append(SourceError(f"{prefix}no answer within {budget_s:.2g} s"))
            continue
        exc = task.exception()
        if exc is None:
            answers.append(task.result())
        elif isinstance(exc, SourceError):
            errors.append(type(exc)(f"{prefix}{exc}") if prefix else exc)
        else:
            raise exc
    if answers:
        return answers
    if len(errors) == 1:
        raise errors[0]
    raise SourceError("; ".join(map(str, errors)) or "nothing to ask")


def _error(source: Source, message: str, elapsed_s: float) -> Observation:
    return Observation(source.name, source.kind, elapsed_s, error=" ".join(message.split()))


class StaticSource:
    """``public_ip.static``: the pinned address(es); when set, no other source is asked."""

    name = "static"
    kind = "static"
    why_not = ""

    def __init__(self, addresses: Sequence[IPAddress], timeout_s: float = 1.0) -> None:
        self.addresses = tuple(addresses)
        self.timeout_s = timeout_s

    async def observe(self) -> Sequence[Answer] | None:
        return [Answer(ip, note="public_ip.static") for ip in self.addresses] or None
