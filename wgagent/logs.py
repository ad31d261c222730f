"""Logging to stderr, journald-aware, with secrets scrubbed from every line.

Under systemd (``JOURNAL_STREAM`` names our stderr) each line starts with its syslog
priority, ``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug, and carries no
timestamp (journald adds one). Otherwise lines read ``2026-11-26 12:00:00 INFO name: msg``.

Secrets never reach a log: code must not log them, and as a second line of defence the
formatter replaces every value passed to :func:`add_secret` (tokens, keys read from a
kubeconfig, WireGuard private keys) and anything shaped like a PEM private key, a bearer
token or a UAPI ``private_key=`` line with ``<redacted>``.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import TextIO

_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


# (trigger, pattern): a pattern runs only when the lower-cased text holds its trigger, so
# the common line costs a few substring searches, not four regex scans (a GC pass logs
# 10,000 removal lines in one record).
def _assignment(word: str) -> re.Pattern[str]:
    """``word: value``, ``word=value``, ``"word": "value"``: the value goes."""
    return re.compile(rf"(?i)(\b{re.escape(word)}[\"']?\s*[=:]\s*[\"']?)[^\s\"',}}]+")


_PATTERNS = [
    (
        "private key-----",
        re.compile(r"()-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.S),
    ),
    ("bearer", re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")),
    ("private_key", re.compile(r"(?i)(private_key[=:]\s*)[A-Za-z0-9+/=]+")),
    *((word, _assignment(word)) for word in ("token", "client-key-data", "password")),
]
_secrets: set[str] = set()


def add_secret(value: str | bytes | None) -> None:
    """Never print ``value`` (nor its text form) in a log line from now on."""
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            return
    if value and len(value.strip()) >= 8:
        _secrets.add(value.strip())


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "<redacted>")
    lower = text.lower()
    for trigger, pattern in _PATTERNS:
        if trigger in lower:
            text = pattern.sub(r"\1<redacted>", text)
    return text


class _Formatter(logging.Formatter):
    def __init__(self, journal: bool) -> None:
        fmt = "%(name)s: %(message)s" if journal else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        super().__init__(fmt, datefmt="%Y-%m-%d %H:%M:%S")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        if self.journal:
            prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
            return "\n".join(prefix + line for line in text.splitlines())
        return text


def journal_stream(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """Whether ``stream`` is the journal connection systemd told us about."""
    value = (environ if environ is not None else os.environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def setup(level: str, stream: TextIO | None = None) -> None:
    """Configure the root logger once (and again on reload, for a new level)."""
    stream = stream or sys.stderr
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_wgagent", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_Formatter(journal_stream(stream)))
    handler._wgagent = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp logs every request at INFO and every client error at length; we report our own.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    logging.getLogger("pyroute2").setLevel(logging.ERROR)
