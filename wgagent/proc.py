"""Running a program with a timeout: the one place wgagent starts a child process.

    result = await run(["systemctl", "is-active", "k3s.service"], timeout_s=30)
    result.returncode, result.stdout, result.first_line()

Never raises for a program that fails, is missing or hangs: a missing program is exit
status 127, one that outlives ``timeout_s`` is killed and reported as 124 (as coreutils'
``timeout`` does). Cancellation kills the child too, so nothing outlives its caller.
Callers that take a :class:`Runner` (the k3s restarter) get a fake one in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

EXIT_MISSING = 127
EXIT_TIMEOUT = 124


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str

    def first_line(self) -> str:
        """The first non-empty line of stderr, else of stdout, else the exit status."""
        for text in (self.stderr, self.stdout):
            for line in text.splitlines():
                if line.strip():
                    return line.strip()
        return f"exit status {self.returncode}"


class Runner(Protocol):
    async def run(self, argv: Sequence[str], *, timeout_s: float) -> CommandResult:
        """Run ``argv`` to completion; never raises for a failing or missing program."""
        ...


async def run(argv: Sequence[str], *, timeout_s: float, merge_stderr: bool = False) -> CommandResult:
    """Run ``argv`` (stdin from /dev/null) and collect its output, within ``timeout_s``.

    ``merge_stderr``: stderr goes into ``stdout`` (interleaved as the program wrote it).
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        return CommandResult(EXIT_MISSING, "", f"cannot run {argv[0]}: {exc.strerror or exc}")
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except BaseException as exc:  # timeout or cancellation: do not leave it running
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 1.0)
        if isinstance(exc, TimeoutError):
            return CommandResult(EXIT_TIMEOUT, "", f"{argv[0]} did not finish within {timeout_s:g} s")
        raise
    code = proc.returncode if proc.returncode is not None else -1
    return CommandResult(code, out.decode("utf-8", "replace"), (err or b"").decode("utf-8", "replace"))


class SubprocessRunner:
    """A :class:`Runner` that runs programs for real (found on PATH)."""

    async def run(self, argv: Sequence[str], *, timeout_s: float) -> CommandResult:
        return await run(argv, timeout_s=timeout_s)
