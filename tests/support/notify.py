"""A real ``NOTIFY_SOCKET`` for tests: a unix datagram socket that records what arrives, when."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time


class NotifySocket:
    """Bind a datagram socket at ``path``; a thread records ``(monotonic time, message)``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(path)
        self._sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            with self._lock:
                # One datagram may carry several newline-separated assignments.
                self.messages.extend((now, line) for line in data.decode().split("\n") if line)

    def env(self, watchdog_usec: int | None = None) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": self.path}
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        return env

    def times(self, message: str) -> list[float]:
        with self._lock:
            return [t for t, m in self.messages if m == message]

    def lines(self) -> list[str]:
        with self._lock:
            return [m for _, m in self.messages]

    def wait_for(self, message: str, *, count: int = 1, timeout: float = 15.0, after: float = 0.0) -> float:
        """Block until ``message`` arrived ``count`` times after ``after``; the last arrival time."""
        deadline = time.monotonic() + timeout
        while True:
            seen = [t for t in self.times(message) if t >= after]
            if len(seen) >= count:
                return seen[count - 1]
            if time.monotonic() > deadline:
                raise AssertionError(f"{message!r} x{count} not received within {timeout} s; got {self.lines()[-20:]}")
            time.sleep(0.01)

    def close(self) -> None:
        self._closed = True
        self._thread.join(1)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
