"""observe_all(): concurrency, per-source timeouts, and every outcome turned into observations."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from ipaddress import ip_address

import pytest

from wgagent.errors import MalformedReply, SourceError
from wgagent.publicip.model import Answer
from wgagent.publicip.sources import StaticSource, gather_within, observe_all


class Fake:
    """A source whose observe() runs ``behaviour``."""

    def __init__(
        self,
        name: str,
        behaviour: Callable[[], Awaitable[Sequence[Answer] | None]],
        *,
        timeout_s: float = 1.0,
        kind: str = "http",
        why_not: str = "",
    ) -> None:
        self.name = name
        self.kind = kind
        self.timeout_s = timeout_s
        self.why_not = why_not
        self._behaviour = behaviour

    async def observe(self) -> Sequence[Answer] | None:
        return await self._behaviour()


def answers(*ips: str, **kw: object) -> Callable[[], Awaitable[Sequence[Answer]]]:
    async def run() -> Sequence[Answer]:
        return [Answer(ip_address(ip), **kw) for ip in ips]  # type: ignore[arg-type]

    return run


def raises(exc: Exception) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        raise exc

    return run


async def hang() -> None:
    await asyncio.Event().wait()


async def test_sources_run_concurrently() -> None:
    """Each source waits for the other to have started: only possible when both run at once."""
    started = {"a": asyncio.Event(), "b": asyncio.Event()}

    def meet(me: str, other: str) -> Callable[[], Awaitable[Sequence[Answer]]]:
        async def run() -> Sequence[Answer]:
            started[me].set()
            await started[other].wait()
            return [Answer(ip_address("203.0.113.1"))]

        return run

    observations = await observe_all([Fake("a", meet("a", "b")), Fake("b", meet("b", "a"))])
    assert [o.error for o in observations] == [None, None]


async def test_a_hanging_source_is_cut_at_its_own_timeout_and_the_others_answer() -> None:
    observations = await observe_all(
        [Fake("slow", hang, timeout_s=0.05), Fake("quick", answers("203.0.113.1"), timeout_s=5)]
    )
    slow, quick = observations
    assert slow.error == "no answer within 0.05 s" and slow.ip is None
    assert str(quick.ip) == "203.0.113.1" and quick.error is None


async def test_outcomes_become_observations_in_source_order() -> None:
    observations = await observe_all(
        [
            Fake("two", answers("203.0.113.1", "2001:db8::1", server=ip_address("198.51.100.1"), port=4000)),
            Fake("broken", raises(SourceError("connection refused"))),
            Fake("malformed", raises(MalformedReply("not an IP address"))),
            Fake("n/a", _none, why_not="no cloud detected"),
        ]
    )
    assert [(o.source, str(o.ip) if o.ip else None, o.error, o.applicable) for o in observations] == [
        ("two", "203.0.113.1", None, True),
        ("two", "2001:db8::1", None, True),
        ("broken", None, "connection refused", True),
        ("malformed", None, "not an IP address", True),
        ("n/a", None, None, False),
    ]
    assert observations[0].port == 4000 and str(observations[0].server) == "198.51.100.1"
    assert observations[-1].note == "no cloud detected"


async def _none() -> None:
    return None


async def test_a_bug_in_a_source_is_logged_and_reported_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        (obs,) = await observe_all([Fake("buggy", raises(KeyError("oops")))])
    assert obs.error == "unexpected KeyError: 'oops'"
    assert "buggy failed unexpectedly" in caplog.text


async def test_errors_are_one_line() -> None:
    (obs,) = await observe_all([Fake("x", raises(SourceError("line one\nline two")))])
    assert obs.error == "line one line two"


async def test_elapsed_time_comes_from_the_injected_clock() -> None:
    ticks = iter([10.0, 10.25])
    (obs,) = await observe_all([Fake("x", answers("203.0.113.1"))], monotonic=lambda: next(ticks))
    assert obs.elapsed_s == 0.25


async def test_cancelling_the_round_cancels_the_sources() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def watch() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.ensure_future(observe_all([Fake("x", watch, timeout_s=60)]))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()


async def test_static_source_reports_the_pins() -> None:
    src = StaticSource([ip_address("203.0.113.5"), ip_address("2001:db8::5")])
    got = await src.observe()
    assert got is not None and [str(a.ip) for a in got] == ["203.0.113.5", "2001:db8::5"]
    assert await StaticSource([]).observe() is None


async def one(ip: str) -> Answer:
    return Answer(ip_address(ip))


async def test_gather_within_keeps_the_answers_that_came_in_time() -> None:
    got = await gather_within({"ipv4": one("203.0.113.1"), "ipv6": hang()}, 0.05)  # type: ignore[dict-item]
    assert [str(a.ip) for a in got] == ["203.0.113.1"]


async def test_gather_within_names_every_failure() -> None:
    with pytest.raises(SourceError, match=r"ipv4: refused; ipv6: no answer within 0.05 s"):
        await gather_within({"ipv4": raises(SourceError("refused"))(), "ipv6": hang()}, 0.05)  # type: ignore[dict-item]


async def test_gather_within_keeps_a_lone_error_as_it_is() -> None:
    with pytest.raises(MalformedReply, match=r"^bad$"):
        await gather_within({"ipv4": raises(MalformedReply("bad"))()}, 1.0)  # type: ignore[dict-item]
