"""A small library for lab tests: hosts in network namespaces, joined by veth pairs only.

    with Lab() as lab:
        inet = lab.host("inet")
        node = lab.host("node")
        lab.link(node, "eth0", "10.0.0.2/24", inet, "eth1", "10.0.0.1/24")
        lab.run(node, "ip", "route", "add", "default", "via", "10.0.0.1")
        proc = lab.spawn(inet, ["stund", ...], name="stund")
        lab.wait_udp(inet, 3478)

Everything a Lab creates it records, and ``close()`` (the context manager's exit, also on
failure) kills every process it started by PID, then anything still in its namespaces,
then deletes the namespaces (veth pairs go with them). Namespace names carry the test
process's PID, so a crashed run's leftovers are recognised and removed by the next run
(``sweep_stale()``). Nothing is bridged or routed to the host's real interfaces.

The network rule: addresses used here are 10.x (private sides), 198.51.100.0/24 and
203.0.113.0/24 ("public" test hosts); never 192.0.2.0/24, which the host uses.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PREFIX = "wgt"
_counter = itertools.count()


class LabError(RuntimeError):
    pass


def sh(*argv: str, input: str | None = None, check: bool = True, timeout: float = 30) -> str:
    """Run a command in the root namespace; its stdout. A failure raises LabError with stderr."""
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise LabError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


@dataclass
class Host:
    """A network namespace standing for one machine."""

    name: str
    """Short name given by the test ("node1")."""
    netns: str
    """The namespace's real name ("wgt1234-node1")."""
    dir: str
    """A private scratch directory for this host (configs, state, sockets)."""

    def argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *cmd]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes] | subprocess.Popen[str]
    """Its output goes to ``log``; text or bytes mode does not matter here."""
    log: str
    host: Host | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


@dataclass
class Lab:
    keep_dir: bool = False
    hosts: list[Host] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    _cleanups: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.id = f"{PREFIX}{os.getpid()}x{next(_counter)}"
        self.dir = tempfile.mkdtemp(prefix=f"{self.id}-")

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- hosts and links ---------------------------------------------------------------------

    def host(self, name: str, *, forwarding: bool = False) -> Host:
        """A new namespace with loopback up."""
        netns = f"{self.id}-{name}"
        sh("ip", "netns", "add", netns)
        host = Host(name, netns, os.path.join(self.dir, name))
        os.makedirs(host.dir, exist_ok=True)
        self.hosts.append(host)
        self.run(host, "ip", "link", "set", "lo", "up")
        if forwarding:
            self.sysctl(host, "net.ipv4.ip_forward", "1")
            self.sysctl(host, "net.ipv6.conf.all.forwarding", "1")
        return host

    def link(self, a: Host, a_if: str, a_addr: str | None, b: Host, b_if: str, b_addr: str | None) -> None:
        """A veth pair between two namespaces, with optional addresses ("10.0.0.1/24")."""
        tmp_a, tmp_b = (
            f"{PREFIX}a{os.getpid() % 100000}{next(_counter)}",
            f"{PREFIX}b{os.getpid() % 100000}{next(_counter)}",
        )
        sh("ip", "link", "add", tmp_a[:15], "type", "veth", "peer", "name", tmp_b[:15])
        for tmp, host, ifname, addr in ((tmp_a[:15], a, a_if, a_addr), (tmp_b[:15], b, b_if, b_addr)):
            sh("ip", "link", "set", tmp, "netns", host.netns)
            self.run(host, "ip", "link", "set", tmp, "name", ifname)
            if addr:
                self.run(host, "ip", "addr", "add", addr, "dev", ifname)
            self.run(host, "ip", "link", "set", ifname, "up")

    def route(self, host: Host, dst: str, via: str) -> None:
        self.run(host, "ip", "route", "replace", dst, "via", via)

    def sysctl(self, host: Host, key: str, value: str) -> None:
        self.run(host, "sysctl", "-q", "-w", f"{key}={value}")

    def masquerade(self, router: Host, out_if: str) -> None:
        """Make ``router`` a NAT: traffic leaving ``out_if`` gets its address (nftables)."""
        self.sysctl(router, "net.ipv4.ip_forward", "1")
        ruleset = (
            "table ip wgtnat {\n"
            " chain post { type nat hook postrouting priority 100; policy accept;\n"
            f'  oifname "{out_if}" masquerade\n'
            " }\n"
            "}\n"
        )
        self.run(router, "nft", "-f", "-", input=ruleset)

    # --- processes -------------------------------------------------------------------------

    def run(
        self, host: Host | None, *cmd: str, input: str | None = None, check: bool = True, timeout: float = 30
    ) -> str:
        """Run a command to completion inside ``host`` (or the root namespace for None)."""
        argv = host.argv(*cmd) if host else list(cmd)
        return sh(*argv, input=input, check=check, timeout=timeout)

    def spawn(
        self,
        host: Host | None,
        argv: Sequence[str],
        *,
        name: str,
        env: Mapping[str, str] | None = None,
        private_mounts: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> Proc:
        """Start a long-running process inside ``host``; killed by PID at close().

        ``private_mounts`` maps a directory of the host's to a path it is bind-mounted on
        in a private mount namespace, e.g. ``{host.dir + "/run-wg": "/run/wireguard"}`` so
        that each node's wireguard-go has its own ``/run/wireguard``.
        """
        cmd = list(argv)
        if private_mounts:
            script = []
            for src, dst in private_mounts.items():
                os.makedirs(src, exist_ok=True)
                os.makedirs(dst, exist_ok=True)
                script.append(f"mount --bind {shlex.quote(src)} {shlex.quote(dst)}")
            script.append("exec " + shlex.join(cmd))
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", " && ".join(script)]
        if host:
            cmd = host.argv(*cmd)
        log = os.path.join(self.dir, f"{name}.log")
        full_env = dict(os.environ)
        full_env.update(env or {})
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        proc = Proc(name, popen, log, host)
        self.procs.append(proc)
        return proc

    def wireguard_go(self, host: Host, ifname: str) -> tuple[Proc, str]:
        """wireguard-go for ``ifname`` in ``host``, with the host's own /run/wireguard.

        Returns the process and the directory holding its UAPI socket (``<dir>/<ifname>.sock``),
        which is what wgagent's ``wireguard.uapi_dir`` must point at.
        """
        uapi_dir = os.path.join(host.dir, "run-wireguard")
        proc = self.spawn(
            host,
            ["wireguard-go", "-f", ifname],
            name=f"{host.name}-wireguard-go-{ifname}",
            private_mounts={uapi_dir: "/run/wireguard"},
        )
        # The socket file appears at bind(), before listen() (Go's net.ListenUnix in wireguard-go's
        # ipc/uapi_linux.go UAPIListen): wait until it accepts a connection, not until it exists.
        wait_for(
            lambda: _accepts(os.path.join(uapi_dir, f"{ifname}.sock")),
            10,
            f"{ifname}.sock in {host.name} accepting connections",
            proc=proc,
        )
        return proc, uapi_dir

    def stop(self, proc: Proc, sig: int = signal.SIGTERM, timeout: float = 5) -> int | None:
        """Stop one process (the whole session it leads); its exit code."""
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                return proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                return proc.popen.wait(5)
        return proc.popen.returncode

    # --- waiting ---------------------------------------------------------------------------

    def wait_udp(self, host: Host | None, port: int, addr: str = "", timeout: float = 10) -> None:
        self._wait_listen(host, "-uln", addr, port, timeout)

    def _wait_listen(self, host: Host | None, flags: str, addr: str, port: int, timeout: float) -> None:
        def listening() -> bool:
            out = self.run(host, "ss", "-H", flags, check=False)
            for line in out.splitlines():
                cols = line.split()
                if len(cols) >= 4 and cols[3].rsplit(":", 1)[-1] == str(port):
                    local = cols[3].rsplit(":", 1)[0].strip("[]")
                    if not addr or local in (addr, "*", "0.0.0.0", "::"):
                        return True
            return False

        wait_for(listening, timeout, f"port {port} ({flags}) in {host.name if host else 'root'}")

    # --- cleanup ---------------------------------------------------------------------------

    def close(self) -> None:
        errors: list[str] = []
        for cleanup in reversed(self._cleanups):
            try:
                cleanup()
            except Exception as exc:
                errors.append(repr(exc))
        for proc in reversed(self.procs):
            self.stop(proc, timeout=3)
        for host in reversed(self.hosts):
            kill_netns(host.netns)
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.hosts.clear()
        self.procs.clear()
        if errors:
            raise LabError("lab cleanup: " + "; ".join(errors))

    def on_close(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` first when the lab closes (before its processes stop and hosts go)."""
        self._cleanups.append(fn)

    def logs(self) -> str:
        """The tail of every process's output, for a failing test's report."""
        parts = []
        for proc in self.procs:
            text = proc.output()[-4000:]
            parts.append(f"--- {proc.name} (pid {proc.pid}, rc {proc.popen.poll()}) ---\n{text}")
        return "\n".join(parts)


def _accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def uapi(uapi_dir: str, request: str | bytes, *, ifname: str, timeout: float = 60) -> bytes:
    """One raw exchange with wireguard-go's ``<uapi_dir>/<ifname>.sock``: test set-up and inspection.

    The reply, up to the blank line that ends it (or what came before the socket closed).
    """
    data = request.encode() if isinstance(request, str) else request
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(os.path.join(uapi_dir, f"{ifname}.sock"))
        s.sendall(data)
        reply = b""
        while not reply.endswith(b"\n\n"):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            reply += chunk
    return reply


def uapi_set(uapi_dir: str, lines: Sequence[str], *, ifname: str, timeout: float = 60) -> None:
    """``set=1`` with ``lines`` in one transaction; LabError unless wireguard-go answers errno=0."""
    reply = uapi(uapi_dir, "set=1\n" + "".join(line + "\n" for line in lines) + "\n", ifname=ifname, timeout=timeout)
    if reply != b"errno=0\n\n":
        raise LabError(f"wireguard-go refused a set on {ifname}: {reply[:200]!r}")


def kill_netns(netns: str) -> None:
    """Kill whatever still runs in ``netns``, then delete it."""
    pids = sh("ip", "netns", "pids", netns, check=False).split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    for _ in range(50):
        if subprocess.run(["ip", "netns", "del", netns], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)


def sweep_stale() -> list[str]:
    """Delete namespaces left by lab runs whose process is gone; their names."""
    removed = []
    for line in sh("ip", "netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX):
            continue
        pid, sep, _ = name[len(PREFIX) :].partition("x")
        if sep and pid.isdigit() and not _pid_alive(int(pid)):
            kill_netns(name)
            removed.append(name)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for(cond: Callable[[], object], timeout: float, what: str, *, proc: Proc | None = None) -> None:
    """Poll ``cond`` until true; LabError naming ``what`` on timeout (or if ``proc`` died)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if cond():
            return
        if proc is not None and not proc.alive():
            raise LabError(
                f"{proc.name} exited ({proc.popen.returncode}) while waiting for {what}:\n{proc.output()[-2000:]}"
            )
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port free now on ``host`` (TCP, or UDP with ``socket.SOCK_DGRAM``)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def terminate(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10) -> int:
    """Signal a child we started (not a whole lab process group: :meth:`Lab.stop` is that),
    wait for it, SIGKILL it if it is still there after ``timeout``; its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
