"""Logging: journald priority prefixes when stderr is the journal, secrets never printed."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from wgagent import logs


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def log_through(stream: io.TextIOBase | object, level: str = "debug") -> logging.Logger:
    logs.setup(level, stream)  # type: ignore[arg-type]
    return logging.getLogger("wgagent.test")


@pytest.mark.usefixtures("restore_root")
def test_journal_lines_carry_their_syslog_priority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "journal", "w+") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        log = log_through(stream)
        log.error("e")
        log.warning("w")
        log.info("two\nlines")
        log.debug("d")
        stream.seek(0)
        assert stream.read().splitlines() == [
            "<3>wgagent.test: e",
            "<4>wgagent.test: w",
            "<6>wgagent.test: two",
            "<6>lines",
            "<7>wgagent.test: d",
        ]


@pytest.mark.usefixtures("restore_root")
def test_no_prefix_when_stderr_is_not_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # someone else's journal stream
    stream = io.StringIO()
    log_through(stream).warning("plain")
    line = stream.getvalue().strip()
    assert not line.startswith("<") and line.endswith("WARNING wgagent.test: plain")


@pytest.mark.usefixtures("restore_root")
def test_level_filters() -> None:
    stream = io.StringIO()
    log = log_through(stream, "warning")
    log.info("hidden")
    log.warning("shown")
    assert "hidden" not in stream.getvalue() and "shown" in stream.getvalue()


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.payload.sig", "eyJhbGciOiJSUzI1NiJ9.payload.sig"),
        ("set=1\nprivate_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a\n", "e84b5a6d27"),
        ('{"token": "abcdef123456"}', "abcdef123456"),
        ("client-key-data: LS0tLS1CRUdJTiBFQyBQUklW", "LS0tLS1CRUdJTiBFQyBQUklW"),
        ("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\n-----END EC PRIVATE KEY-----", "MHcCAQEEIB"),
        ("password=hunter2hunter2", "hunter2hunter2"),
    ],
    ids=["bearer", "uapi-private-key", "json-token", "kubeconfig-key", "pem", "password"],
)
@pytest.mark.usefixtures("restore_root")
def test_secret_shapes_are_redacted(text: str, secret: str) -> None:
    stream = io.StringIO()
    log_through(stream).info("%s", text)
    assert secret not in stream.getvalue() and "<redacted>" in stream.getvalue()


@pytest.mark.usefixtures("restore_root")
def test_registered_secrets_are_redacted_anywhere_even_in_tracebacks() -> None:
    logs.add_secret("s3cr3t-t0ken-value")
    logs.add_secret("short")  # too short to redact safely: ignored
    stream = io.StringIO()
    log = log_through(stream)
    try:
        raise ValueError("bad credential s3cr3t-t0ken-value")
    except ValueError:
        log.exception("failed with %s", "s3cr3t-t0ken-value")
    out = stream.getvalue()
    assert "s3cr3t-t0ken-value" not in out and out.count("<redacted>") >= 2
    assert logs.redact("short and sweet") == "short and sweet"


def test_ordinary_lines_are_untouched() -> None:
    line = "wg0: removed peer AbC= endpoint=203.0.113.9:51820 allowed_ips=10.42.1.0/24 last_handshake=never"
    assert logs.redact(line) == line
