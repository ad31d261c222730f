"""A stand-in ``systemctl`` for tests that run the real daemon with k3s "installed".

It says k3s is active, has no start time, and accepts a ``--no-block try-restart`` and a
``daemon-reload`` (doing nothing, succeeding as systemd does): enough for the k3s part's
Restarter. ``install(bin_dir)`` writes it as
``<bin_dir>/systemctl``; put ``bin_dir`` first on the daemon's PATH. The 3-node lab has a
fuller one (tests/cluster/systemctl.py) that records restarts and acts as flannel.
"""

from __future__ import annotations

from pathlib import Path

SCRIPT = """#!/bin/sh
case "$1" in
  is-active) echo active ;;
  show) echo 0 ;;
  --no-block) exit 0 ;;
  daemon-reload) exit 0 ;;
  *) exit 2 ;;
esac
"""


def install(bin_dir: Path) -> Path:
    """Write the stand-in as ``bin_dir/systemctl``; its path."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "systemctl"
    path.write_text(SCRIPT)
    path.chmod(0o755)
    return path
