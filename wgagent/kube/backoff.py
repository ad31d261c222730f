"""Capped, jittered exponential backoff: how long to wait before the next try.

Pure: the random source is passed in, so tests name exact delays::

    >>> backoff_delay(0, rand=lambda: 1.0)
    1.0
    >>> backoff_delay(3, rand=lambda: 0.0)     # 8 s, jittered down to half
    4.0
    >>> backoff_delay(20, rand=lambda: 1.0)    # never above the cap
    60.0

The jitter keeps the lower half of the window ("equal jitter"): every wait is at least
half the exponential step, so a struggling API server is not hit early, and a thousand
agents that lost it at the same moment come back spread over the other half.
"""

from __future__ import annotations

from collections.abc import Callable

CAP_S = 60.0
BASE_S = 1.0
OUTAGE_CAP_S = 20.0
"""The longest wait between tries while the API server does not answer or answers 5xx
(the node watch reconnecting, the annotation part retrying). After an outage of any
length the next try comes within 20 s of its end, so a 30 s window of availability is
never missed (60 s waits could miss one: the reliability suite flaps the API 30 s down,
30 s up). A thousand agents then try about 100 times a second at most while the API is
down, what their kubelets' lease renewals (every 10 s) cost anyway."""


def backoff_delay(
    attempt: int,
    *,
    rand: Callable[[], float],
    base_s: float = BASE_S,
    cap_s: float = CAP_S,
) -> float:
    """Seconds to wait after the ``attempt``-th consecutive failure (0 = the first).

    The step is ``base_s * 2**attempt``, capped at ``cap_s``; the wait is drawn from
    ``[step/2, step]`` with ``rand()`` in ``[0, 1]``.
    """
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    step = cap_s if attempt >= 63 else min(cap_s, base_s * (2**attempt))
    r = min(1.0, max(0.0, rand()))
    return step / 2 + step / 2 * r


class Backoff:
    """Counts consecutive failures and hands out the next delay; ``reset()`` on success."""

    def __init__(self, rand: Callable[[], float], *, base_s: float = BASE_S, cap_s: float = CAP_S) -> None:
        self._rand = rand
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0

    def next(self) -> float:
        delay = backoff_delay(self.failures, rand=self._rand, base_s=self.base_s, cap_s=self.cap_s)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0
