"""Time as people and programs read it: the one place wgagent formats a timestamp.

>>> iso8601(1780000000.0)
'2026-05-28T20:26:40+00:00'
>>> rfc3339(1780000000.5)
'2026-05-28T20:26:40Z'
>>> utc_text(1780000000.0)
'2026-05-28 20:26:40 UTC'
>>> duration_text(3725)
'1h2m'
"""

from __future__ import annotations


def iso8601(ts: float) -> str:
    """Epoch seconds as ISO 8601 in UTC, to the second (JSON, ``/status``)."""
    from datetime import UTC, datetime  # here: ``wgagent status`` needs only duration_text

    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def iso8601_or_none(ts: float | None) -> str | None:
    return None if ts is None else iso8601(ts)


def rfc3339(ts: float) -> str:
    """``metav1.Time`` as the API server writes it: whole seconds, UTC, ``Z``
    (``2026-05-28T20:26:40Z``)."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_text(ts: float) -> str:
    """Epoch seconds for a sentence: ``2026-05-28 20:26:40 UTC``."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration_text(seconds: float) -> str:
    """A duration at a glance: ``45s``, ``3m20s``, ``1h2m``, ``2d4h``."""
    s = max(0, int(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h}h"
    if h:
        return f"{h}h{m}m"
    return f"{m}m{s}s" if m else f"{s}s"
