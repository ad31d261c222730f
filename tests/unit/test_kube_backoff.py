"""The backoff: exponential, capped at 60 s, jittered into the upper half of each step."""

from __future__ import annotations

import functools
import itertools

import pytest

from wgagent.kube.backoff import CAP_S, Backoff, backoff_delay


@pytest.mark.parametrize(
    ("attempt", "r", "delay"),
    [
        pytest.param(0, 0.0, 0.5, id="first-low"),
        pytest.param(0, 1.0, 1.0, id="first-high"),
        pytest.param(1, 0.5, 1.5, id="second-mid"),
        pytest.param(3, 0.0, 4.0, id="fourth-low"),
        pytest.param(5, 1.0, 32.0, id="sixth-high"),
        pytest.param(6, 1.0, 60.0, id="capped"),
        pytest.param(6, 0.0, 30.0, id="capped-low"),
        pytest.param(1000, 0.5, 45.0, id="huge-attempt-no-overflow"),
        pytest.param(2, 7.0, 4.0, id="rand-above-one-clamped"),
        pytest.param(2, -1.0, 2.0, id="rand-below-zero-clamped"),
    ],
)
def test_backoff_delay(attempt: int, r: float, delay: float) -> None:
    assert backoff_delay(attempt, rand=lambda: r) == delay


def test_bounds_for_every_attempt_and_jitter() -> None:
    for attempt, r in itertools.product(range(40), (0.0, 0.1, 0.5, 0.9, 1.0)):
        step = min(CAP_S, 2.0**attempt)
        d = backoff_delay(attempt, rand=functools.partial(float, r))
        assert step / 2 <= d <= step <= CAP_S


def test_grows_until_the_cap() -> None:
    highs = [backoff_delay(a, rand=lambda: 1.0) for a in range(10)]
    assert highs == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]


def test_custom_base_and_cap() -> None:
    assert backoff_delay(0, rand=lambda: 1.0, base_s=5, cap_s=600) == 5
    assert backoff_delay(10, rand=lambda: 1.0, base_s=5, cap_s=600) == 600


def test_negative_attempt_is_a_bug() -> None:
    with pytest.raises(ValueError):
        backoff_delay(-1, rand=lambda: 0.0)


def test_backoff_counts_and_resets() -> None:
    b = Backoff(lambda: 1.0)
    assert [b.next() for _ in range(4)] == [1, 2, 4, 8]
    b.reset()
    assert b.failures == 0 and b.next() == 1
