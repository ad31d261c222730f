"""systemd's notification protocol (sd_notify), through the ``sdnotify`` package.

Without ``NOTIFY_SOCKET`` every call does nothing, so a plain foreground run works.
The watchdog interval is half of ``WATCHDOG_USEC``, and only when ``WATCHDOG_PID`` (if
set) is our own PID, as sd_watchdog_enabled(3) says.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


class Notifier:
    """Reads ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from the process
    environment, as sdnotify itself does (so the two can never disagree)."""

    def __init__(self) -> None:
        environ = os.environ
        self._notifier = None
        if environ.get("NOTIFY_SOCKET"):
            import sdnotify

            self._notifier = sdnotify.SystemdNotifier()
        self.watchdog_interval_s: float | None = None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval_s = int(usec) / 2 / 1e6
        self.last_status: str | None = None

    def _send(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(message)

    def ready(self) -> None:
        self._send("READY=1")

    def reloading(self) -> None:
        self._send("RELOADING=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def status(self, line: str) -> None:
        """Send ``STATUS=line`` if it differs from the last one sent."""
        line = " ".join(line.split())
        if line != self.last_status:
            self.last_status = line
            self._send("STATUS=" + line)
