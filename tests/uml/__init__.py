"""Boot a user-mode Linux kernel on this machine's filesystem and run a command inside it.

A user-mode Linux (UML) kernel is an ordinary process: ``linux mem=1G root=/dev/root
rootfstype=hostfs rootflags=/ rw init=<script>`` boots with the host's whole filesystem as
its root (hostfs, read-write), so every interpreter, package and the repository are there,
at the same paths. Inside, the network stack is the UML kernel's own (no link to the host's
interfaces), and so are the kernel's modules, netlink families and namespaces::

    result = boot("wireguard", ["wg", "--version"])
    result.status, result.output        # (0, "wireguard-tools v1.0.20210914 ...")

Two kernels (:func:`kernel_path`):

- ``wireguard``: built by ``scripts/uml-kernel`` from Debian's linux-source-6.1 with
  WireGuard built in (``CONFIG_WIREGUARD=y``), network namespaces, veth, nftables, IPv6;
- ``stock``: Debian's ``user-mode-linux`` package (``/usr/bin/linux.uml``, 6.1.176), which has
  no WireGuard at all: the seed's ``modprobe: FATAL: Module wireguard not found``.

The init script (:func:`init_script`) is PID 1: it mounts proc, sysfs, devtmpfs and tmpfs on
/run and /tmp (so nothing a test writes there reaches the host), brings loopback up, runs
the command with a clean environment, writes its exit status and output into a directory
on the host (``/var/tmp``, outside the tmpfs mounts), syncs and powers the kernel off.

The pytest side is :mod:`tests.uml.plugin`: a test marked ``kernel`` runs inside such a
kernel, and its result is reported on the host as if it had run there.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STOCK_KERNEL = "/usr/bin/linux.uml"
"""Debian's user-mode-linux package (bookworm: 6.1um4, kernel 6.1.176, no CONFIG_WIREGUARD)."""
EXCHANGE_DIR = "/var/tmp"
"""Where a boot's script, status and output live: on the host's disk, seen by the kernel
through hostfs at the same path, and not under the /tmp and /run it mounts tmpfs on."""
INSIDE_ENV = "WGAGENT_UML_INSIDE"
"""Set (to the kernel's name) for commands run inside a kernel booted here."""
VENV_ENV = "WGAGENT_UML_VENV"
"""The venv's interpreter, as the host found it (inside, /usr/bin/python3 cannot tell)."""
KERNEL_ENV = (
    "PATH",
    "LANG",
    "CI",
    "WGAGENT_DEBUG",
)
"""The host environment variables a command inside sees; everything else is set here."""


class UmlError(RuntimeError):
    pass


@dataclass(frozen=True)
class BootResult:
    kernel: str
    status: int | None
    """The command's exit status; None when the kernel never reported one (crash, timeout)."""
    output: str
    """The command's stdout and stderr."""
    console: str
    """The kernel's console: its boot messages, and anything PID 1 printed."""
    seconds: float

    def tail(self, lines: int = 40) -> str:
        """The end of the output and of the console, for a failure report."""
        out = "\n".join(self.output.splitlines()[-lines:])
        con = "\n".join(self.console.splitlines()[-lines:])
        return f"--- output (last {lines} lines)\n{out}\n--- kernel console (last {lines} lines)\n{con}"


def kernel_path(kind: str) -> str | None:
    """The kernel binary for ``kind`` (``wireguard`` or ``stock``), or None when it is absent."""
    if kind == "stock":
        return STOCK_KERNEL if os.access(STOCK_KERNEL, os.X_OK) else None
    if kind != "wireguard":
        raise ValueError(f"unknown kernel {kind!r} (wireguard or stock)")
    found = subprocess.run([str(ROOT / "scripts" / "uml-kernel"), "--path"], capture_output=True, text=True)
    path = found.stdout.strip()
    return path if found.returncode == 0 and os.access(path, os.X_OK) else None


def why_not(kind: str) -> str | None:
    """Why a kernel of ``kind`` cannot be booted here (None: it can)."""
    if os.geteuid() != 0:
        return "booting a user-mode Linux kernel for the kernel tests needs root (hostfs writes as root)"
    if kernel_path(kind) is None:
        if kind == "stock":
            return f"no {STOCK_KERNEL}: apt install user-mode-linux (scripts/setup does)"
        return "no user-mode Linux kernel with WireGuard yet: run scripts/uml-kernel (about 6 minutes)"
    return None


def init_script(argv: Sequence[str], *, cwd: str, env: Mapping[str, str], exchange: str) -> str:
    """The shell script that is PID 1 of the kernel: mount, run ``argv``, report, power off."""
    env_args = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(env.items()))
    q = shlex.quote
    return f"""#!/bin/sh
# PID 1 of a user-mode Linux kernel booted by tests/uml: mount, run one command, power off.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
grep -q ' /dev devtmpfs ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm && mount -t tmpfs -o mode=1777 tmpfs /dev/shm
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
[ -e /dev/stdin ] || ln -s /proc/self/fd/0 /dev/stdin
[ -e /dev/stdout ] || ln -s /proc/self/fd/1 /dev/stdout
[ -e /dev/stderr ] || ln -s /proc/self/fd/2 /dev/stderr
ip link set lo up
hostname uml
cd {q(cwd)} && env -i {env_args} {shlex.join(argv)} </dev/null >{q(exchange)}/output 2>&1
echo $? >{q(exchange)}/status.tmp && mv {q(exchange)}/status.tmp {q(exchange)}/status
sync
# LINUX_REBOOT_CMD_POWER_OFF: the kernel halts and the UML process exits
exec /usr/bin/python3 -I -S -c 'import ctypes; ctypes.CDLL(None).reboot(0x4321FEDC)'
"""


def boot(
    kind: str,
    argv: Sequence[str],
    *,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    mem: str = "1G",
    timeout_s: float = 600.0,
    keep: bool = False,
) -> BootResult:
    """Boot a kernel of ``kind``, run ``argv`` as root inside it, return what happened.

    The command's environment is ``PATH``/``LANG``/``CI`` from here, ``HOME=/root``,
    ``TMPDIR=/tmp``, ``PYTHONPATH`` = the repository, ``WGAGENT_UML_INSIDE=<kind>`` and
    ``env``. UmlError when the kernel is absent; a kernel that hangs is killed after
    ``timeout_s`` (``status`` is then None).
    """
    kernel = kernel_path(kind)
    if kernel is None:
        raise UmlError(why_not(kind) or f"no {kind} kernel")
    exchange = tempfile.mkdtemp(prefix="wgagent-uml-", dir=EXCHANGE_DIR)
    try:
        full_env = {k: os.environ[k] for k in KERNEL_ENV if k in os.environ}
        full_env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        full_env.update(
            {
                "HOME": "/root",
                "TMPDIR": "/tmp",
                "PYTHONPATH": str(ROOT),
                "PYTHONDONTWRITEBYTECODE": "1",  # the host's own runs write the .pyc files
                INSIDE_ENV: kind,
                **(env or {}),
            }
        )
        script = os.path.join(exchange, "init")
        with open(script, "w") as f:
            f.write(init_script(argv, cwd=cwd or str(ROOT), env=full_env, exchange=exchange))
        os.chmod(script, 0o700)
        cmdline = [
            kernel,
            f"mem={mem}",
            "root=/dev/root",
            "rootfstype=hostfs",
            "rootflags=/",
            "rw",
            f"init={script}",
            f"uml_dir={exchange}",  # its mconsole socket: not in the host's ~/.uml
            "con=null",
            "con0=fd:0,fd:1",
        ]
        started = time.monotonic()
        console = os.path.join(exchange, "console")
        with open(console, "wb") as out:
            # Its own session: a kernel that hangs is killed with all its helper processes.
            proc = subprocess.Popen(
                cmdline, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        took = time.monotonic() - started
        status = _read(os.path.join(exchange, "status")).strip()
        return BootResult(
            kind,
            int(status) if status.lstrip("-").isdigit() else None,
            _read(os.path.join(exchange, "output")),
            _read(console),
            took,
        )
    finally:
        if not keep:
            shutil.rmtree(exchange, ignore_errors=True)


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def inside() -> str | None:
    """The kernel's name when running inside a kernel booted here, else None."""
    return os.environ.get(INSIDE_ENV) or None


# --- interpreters ------------------------------------------------------------------------------------

PYTHONS = ("venv", "debian")
"""The two dependency sets every netlink test runs on: the venv (current PyPI releases,
pyroute2 0.9.x) and Debian's /usr/bin/python3 (python3-pyroute2 0.7.2, as the .deb runs)."""


def python_path(name: str) -> str | None:
    """The interpreter for ``venv`` or ``debian``; None when there is none here."""
    if name == "debian":
        return "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else None
    if name != "venv":
        raise ValueError(f"unknown interpreter {name!r} (venv or debian)")
    if os.environ.get(VENV_ENV):
        return os.environ[VENV_ENV]
    if sys.prefix != sys.base_prefix:
        return sys.executable
    candidate = ROOT / ".venv" / "bin" / "python"
    return str(candidate) if os.access(candidate, os.X_OK) else None
