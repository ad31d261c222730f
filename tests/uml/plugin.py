"""pytest plugin: a test marked ``kernel`` runs inside a user-mode Linux kernel, reported here.

A test module declares ``pytest_plugins = ("tests.uml.plugin",)`` and marks its tests
``pytest.mark.kernel("wireguard")`` (or ``"stock"``); the body is then an ordinary lab test
that runs as root in a fresh kernel (namespaces, ``tests.labkit.Lab``, ``wg``, ``ip``...)::

    pytestmark = pytest.mark.kernel("wireguard")

    @pytest.mark.parametrize("python", PYTHONS)   # optional: run under each interpreter
    def test_something(lab, python): ...

On the host, the first test of a module is where the kernel boots, once for the module: it
runs pytest inside on that module's kernel tests (per interpreter: the ``python`` parameter,
else this interpreter), and each test's setup/call/teardown reports come back through a file
and are reported here as that test's own; no fixture of a kernel test runs on the host. A
kernel that cannot boot here (no root, not built) skips the tests, and fails them with
``CI=true``, as :func:`tests.conftest.cannot_run` does. A kernel that crashed or hung fails
every test it did not report, with the tail of its console.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.uml import EXCHANGE_DIR, VENV_ENV, BootResult, boot, inside, python_path, why_not

RESULTS_ENV = "WGAGENT_UML_RESULTS"
BOOT_TIMEOUT_S = 900.0
_results = pytest.StashKey[dict[tuple[str, str], "_Group"]]()


class _Group:
    """One kernel boot's run of one module's kernel tests, and what it reported."""

    def __init__(self, kind: str, items: list[pytest.Item]) -> None:
        self.kind = kind
        self.items = items
        self.reports: dict[str, list[dict[str, Any]]] = {}
        self.boot: BootResult | None = None
        self.skip_reason: str | None = None
        """Why the kernel cannot boot here."""
        self.missing: dict[str, str] = {}
        """Tests that cannot run here, and why (their interpreter is missing)."""

    def run(self) -> None:
        self.skip_reason = why_not(self.kind)
        by_python: dict[str, list[str]] = {}
        for item in self.items:
            name = _python_of(item)
            path = python_path(name) if name else sys.executable
            if path is None:
                self.missing[item.nodeid] = f"no {name} interpreter here (make test builds .venv)"
            else:
                by_python.setdefault(path, []).append(item.nodeid)
        if self.skip_reason or not by_python:
            return
        fd, results = tempfile.mkstemp(prefix="wgagent-uml-results-", dir=EXCHANGE_DIR)
        os.close(fd)
        try:
            steps = [
                shlex.join([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.uml.plugin", *ids])
                for py, ids in by_python.items()
            ]
            env = {RESULTS_ENV: results, VENV_ENV: python_path("venv") or ""}
            self.boot = boot(self.kind, ["sh", "-c", "; ".join(steps)], env=env, timeout_s=BOOT_TIMEOUT_S)
            with open(results) as f:
                for line in f:
                    data = json.loads(line)
                    self.reports.setdefault(data["nodeid"], []).append(data)
        finally:
            os.unlink(results)


def _python_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("python") if callspec is not None else None


def _kind(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("kernel")
    if marker is None:
        return None
    return str(marker.args[0]) if marker.args else "wireguard"


def _group(item: pytest.Item, kind: str) -> _Group:
    groups = item.config.stash.setdefault(_results, {})
    key = (kind, str(item.path))
    if key not in groups:
        items = [i for i in item.session.items if _kind(i) == kind and str(i.path) == key[1]]
        groups[key] = _Group(kind, items)
        groups[key].run()
    return groups[key]


def _reports(item: pytest.Item, group: _Group) -> Iterator[pytest.TestReport]:
    keywords = {k: 1 for k in item.keywords}

    def report(when: str, outcome: str, longrepr: Any, sections: Any = (), duration: float = 0.0) -> pytest.TestReport:
        return pytest.TestReport(
            item.nodeid, item.location, keywords, outcome, longrepr, when,  # type: ignore[arg-type]
            sections=[tuple(s) for s in sections], duration=duration,
        )  # fmt: skip

    reason = group.skip_reason or group.missing.get(item.nodeid)
    if reason:
        if IN_CI:
            yield report("setup", "failed", f"CI=true and this test cannot run: {reason}")
        else:
            yield report("setup", "skipped", (str(item.path), item.location[1] or 0, f"Skipped: {reason}"))
        yield report("teardown", "passed", None)
        return
    inner = group.reports.get(item.nodeid)
    if not inner:
        b = group.boot
        what = "the kernel did not run it" if b is None else f"the {group.kind} kernel exited, status {b.status}"
        tail = "" if b is None else "\n" + b.tail()
        yield report("setup", "failed", f"no result from inside the kernel: {what}{tail}")
        yield report("teardown", "passed", None)
        return
    where = f"(inside the {group.kind} user-mode Linux kernel)"
    for data in inner:
        longrepr = data["longrepr"]
        if data["outcome"] == "skipped" and isinstance(longrepr, list):
            longrepr = tuple(longrepr)
        elif data["outcome"] == "failed":
            longrepr = f"{where}\n{longrepr}"
        yield report(data["when"], data["outcome"], longrepr, data["sections"], data["duration"])


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    kind = _kind(item)
    if kind is None or inside():
        return None  # an ordinary test, or this is the kernel: run it here
    group = _group(item, kind)
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for rep in _reports(item, group):
        item.ihook.pytest_runtest_logreport(report=rep)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Inside the kernel: each phase's report, one JSON line, for the host to report."""
    path = os.environ.get(RESULTS_ENV)
    if not (path and inside()):
        return
    longrepr: Any = None
    if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
        longrepr = list(report.longrepr)
    elif report.longrepr is not None:
        longrepr = report.longreprtext
    data = {
        "nodeid": report.nodeid,
        "when": report.when,
        "outcome": report.outcome,
        "longrepr": longrepr,
        "sections": [list(s) for s in report.sections],
        "duration": report.duration,
    }
    with open(path, "a") as f:
        f.write(json.dumps(data) + "\n")
