"""Test-wide rules.

- Every test is marked ``unit`` or ``lab`` (by its directory: tests/unit, tests/lab).
- A lab test needs root, network namespaces and Debian packages. Locally, when those are
  missing, it is skipped with the reason; in CI (``CI=true``) it runs and fails loudly,
  never skips: ``require()`` turns every "cannot run here" into a failure there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
ROOT = Path(__file__).resolve().parent.parent


def cannot_run(reason: str) -> None:
    """Skip locally, fail in CI."""
    if IN_CI:
        pytest.fail(f"CI=true and this test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def require(*tools: str, root: bool = False) -> None:
    """Ensure executables exist (and root when asked), or cannot_run()."""
    if root and os.geteuid() != 0:
        cannot_run("needs root")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        cannot_run("missing " + ", ".join(missing) + " (the test command installs them)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT).parts
        if len(parts) > 1 and parts[0] == "tests" and parts[1] in ("unit", "lab"):
            item.add_marker(getattr(pytest.mark, parts[1]))


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, "report_" + report.when, report)  # lets fixtures see whether the test failed


def call_failed(request: pytest.FixtureRequest) -> bool:
    """In a fixture, after its yield: whether the test itself (its call phase) failed."""
    report = getattr(request.node, "report_call", None)
    return report is not None and bool(report.failed)


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[object]:
    """A Lab (network namespaces) for one test, torn down even when the test fails.

    A failed test's report gets the tail of every process the lab started.
    """
    require("ip", "nft", root=True)
    from tests.labkit import Lab, sweep_stale

    sweep_stale()
    with Lab() as the_lab:
        yield the_lab
        if call_failed(request):
            print(the_lab.logs())
