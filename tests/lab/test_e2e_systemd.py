"""End to end in a real systemd: the .deb installed in a booted Debian 12 container.

How a user meets wgagent: ``apt install ./wgagent_<version>_all.deb``, ``systemctl enable
--now wgagent``, ``curl -s localhost:8795/healthz``. This module does exactly that:

1. ``scripts/deb`` builds the package from the git-tracked tree (lintian must be clean);
2. debootstrap makes a bookworm rootfs holding the package's Debian dependencies, systemd,
   curl and iproute2, cached in /var/cache/wgagent-test/ keyed by that package list (a
   missing cache is built, ~1 minute); each run boots a copy of it;
3. ``systemd-nspawn -b --register=no --keep-unit --private-network`` boots the copy (PID 1
   here is not systemd, hence the first two; the private network leaves the container only
   loopback, so nothing in it can reach an outside address), and every command runs in it
   through ``nsenter -t <leader> -a``;
4. the tests, in order: install, enable --now, the sandbox's real work, the watchdog,
   reload (good and broken), ordering before k3s, stop, upgrade, remove and purge.

The container is powered off and its cgroups, mounts and files removed even when a test
fails (``_Container.close``); a crashed run's leftovers are removed by the next
(``_sweep_stale``). The figures (deb size, lintian, exposure, start-up time) are printed at
the end and written to dist/e2e-systemd-figures.txt.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import glob
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import ROOT, call_failed, require
from tests.labkit import LabError, wait_for
from wgagent import __version__, config

SUITE = "bookworm"
CACHE_DIR = "/var/cache/wgagent-test"
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "curl", "iproute2", "kmod")
"""Beside the package's own Depends and Recommends (read from the built .deb)."""
PORT = config.DEFAULT_HEALTH_PORT
TAG = f"wgt{os.getpid()}e2e"
"""Names this run's container, cgroups and directories; the PID lets a later run tell
a crashed run's leftovers (``_sweep_stale``)."""
EXPOSURE_TARGET = 3.5

# The agent's config in the container. The container has only loopback (--private-network),
# so nothing it does could leave; still, every source that would ask a real public service
# is off or pinned, so no run depends on that wall alone. The Kubernetes part stays on: its
# credentials would point at the local k3s (127.0.0.1), and here there are none.
TEST_CONFIG = """\
# wgagent end-to-end test (tests/lab/test_e2e_systemd.py): nothing asks a public service.
node_name: e2e-node
public_ip:
  sources: [static]        # no metadata service, no STUN, no HTTPS echo
  static: [203.0.113.10]   # a documentation address
  metadata_provider: none
  stun_servers: []
  http_echo_urls: []
k3s:
  restart: false           # only the test restarts the stand-in k3s.service
"""

# Stands in for k3s: records what it saw of wgagent when it started.
K3S_UNIT = """\
[Unit]
Description=stand-in for k3s (wgagent end-to-end test)

[Service]
ExecStartPre=/bin/sh -c 'systemctl show -p ActiveState -p SubState wgagent.service > /run/k3s-saw-wgagent'
ExecStart=/bin/sleep infinity
"""

# What the agent really does, once without sandbox and once under the unit's sandbox.
PROBE = r"""
import ctypes, errno, json, os, platform, subprocess

res = {}

def attempt(name, fn):
    try:
        res[name] = {"ok": True, "detail": fn()}
    except OSError as e:
        res[name] = {"ok": False, "errno": errno.errorcode.get(e.errno, str(e.errno)), "detail": str(e)}

def write(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("probe: true\n")
    os.unlink(path)
    return path

def run(*argv):
    p = subprocess.run(argv, capture_output=True, text=True)
    return {"rc": p.returncode, "stderr": p.stderr.strip()}

def finit_module():
    # On a garbage file: ENOEXEC where modules load, ENOSYS on a kernel without modules,
    # EPERM only from a missing capability or a seccomp filter.
    nr = {"x86_64": 313, "aarch64": 273}[platform.machine()]
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open("/etc/hostname", os.O_RDONLY)
    try:
        rc = libc.syscall(nr, fd, b"", 0)
        return {"rc": rc, "errno": errno.errorcode.get(ctypes.get_errno(), "0") if rc else "0"}
    finally:
        os.close(fd)

def netlink():
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=lo, mtu=ipr.get_links(lo)[0].get_attr("IFLA_MTU"))  # needs CAP_NET_ADMIN
    return names

def caps():
    for line in open("/proc/self/status"):
        if line.startswith("CapEff:"):
            value = int(line.split()[1], 16)
            bits = (("net_admin", 12), ("net_raw", 13), ("sys_module", 16), ("sys_admin", 21))
            return {n: bool(value >> bit & 1) for n, bit in bits}

def tap():
    # the mesh part's probe tap, as the installed package opens it (AF_PACKET + its BPF filter)
    from wgagent.errors import TapUnavailable
    from wgagent.mesh.tap import ProbeTap
    t = ProbeTap(51820)
    try:
        t.open()
    except TapUnavailable as e:
        raise OSError(errno.EPERM, str(e)) from e
    t.close()
    return "open"

def nft():
    # the mesh part's counting table: made, listed, removed, as the installed package does it
    import asyncio
    from wgagent.mesh.nft import NftCounter
    async def cycle():
        counter = NftCounter()
        await counter.install(51820)
        counts = await counter.counts()
        await counter.remove()
        return sorted(counts or {})
    try:
        return asyncio.run(cycle())
    except Exception as e:
        raise OSError(errno.EPERM, str(e)) from e

attempt("write_k3s", lambda: write("/etc/rancher/k3s/config.yaml.d/99-wgagent-probe.yaml"))
attempt("write_modules_load", lambda: write("/etc/modules-load.d/wgagent-probe.conf"))
attempt("write_state", lambda: write("/var/lib/wgagent/probe"))
attempt("write_elsewhere_in_etc", lambda: write("/etc/wgagent-probe"))
attempt("modprobe", lambda: run("modprobe", "wireguard"))
attempt("finit_module", finit_module)
attempt("systemctl_try_restart", lambda: run("systemctl", "try-restart", "k3s.service"))
attempt("netlink", netlink)
attempt("caps", caps)
attempt("tap", tap)
attempt("nft", nft)
print(json.dumps(res))
"""

FIGURES: dict[str, str] = {}


# --- the rootfs cache ------------------------------------------------------------------------


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses for SUITE (not the security archive)."""
    stanzas: list[str] = []
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        with open(path) as f:
            stanzas += f.read().split("\n\n")
    for stanza in stanzas:
        fields = dict(
            (k.strip(), v.strip())
            for k, _, v in (ln.partition(":") for ln in stanza.splitlines())
            if not k.startswith("#")
        )
        if SUITE in fields.get("Suites", "").split() and "security" not in fields.get("URIs", ""):
            return fields["URIs"].split()[0]
    with contextlib.suppress(OSError), open("/etc/apt/sources.list") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                return parts[1] if not parts[1].startswith("[") else parts[2]
    return "http://deb.debian.org/debian"


def package_names(relations: str) -> list[str]:
    """``python3 (>= 3.11), python3:any, a | b`` -> ``["python3", "python3", "a"]``."""
    names = []
    for entry in relations.split(","):
        first = entry.split("|")[0].strip()
        if first:
            names.append(re.split(r"[\s(:]", first, maxsplit=1)[0])
    return names


def rootfs_packages(deb: str) -> list[str]:
    fields = subprocess.run(
        ["dpkg-deb", "-f", deb, "Depends", "Recommends"], capture_output=True, text=True, check=True
    )
    relations = ",".join(line.partition(":")[2] for line in fields.stdout.splitlines())
    return sorted(set(BASE_PACKAGES) | set(package_names(relations)))


def cached_rootfs(packages: list[str]) -> tuple[str, dict[str, Any]]:
    """A pristine rootfs with ``packages``: from the cache, or debootstrapped now (and cached).

    The directory appears under its final name only when complete (built under a temporary
    name, then renamed), so a killed build never leaves a half rootfs to be reused.
    """
    mirror = debian_mirror()
    key = hashlib.sha256(json.dumps([SUITE, "minbase", mirror, packages]).encode()).hexdigest()[:16]
    path = os.path.join(CACHE_DIR, f"rootfs-{SUITE}-{key}")
    os.makedirs(CACHE_DIR, exist_ok=True)
    with open(os.path.join(CACHE_DIR, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isdir(path):
            with open(path + ".json") as f:
                return path, {**json.load(f), "cached": True}
        tmp = f"{path}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        started = time.monotonic()
        try:
            subprocess.run(
                ["debootstrap", "--variant=minbase", "--include=" + ",".join(packages), SUITE, tmp, mirror],
                capture_output=True,
                text=True,
                check=True,
                timeout=1200,
            )
        except subprocess.CalledProcessError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise LabError(f"debootstrap failed: {exc.stderr[-2000:] or exc.stdout[-2000:]}") from exc
        meta = {
            "suite": SUITE,
            "mirror": mirror,
            "packages": packages,
            "build_s": round(time.monotonic() - started, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with open(path + ".json", "w") as f:
            json.dump(meta, f)
        os.rename(tmp, path)
        for old in glob.glob(os.path.join(CACHE_DIR, "rootfs-*")):  # other package lists: stale
            if not old.startswith(path):
                (os.unlink if old.endswith(".json") else shutil.rmtree)(old)
        return path, {**meta, "cached": False}


# --- cgroups, mounts and leftovers -------------------------------------------------------------


def cgroup_hierarchies() -> list[str]:
    """Our cgroup's directory in each hierarchy nspawn uses (the unified one, name=systemd)."""
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            own["unified" if controllers == "" else controllers] = path
    dirs = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, (fstype, _source, options) = left.split(), right.split()[:3]
            name = (
                "unified" if fstype == "cgroup2" else "name=systemd" if "name=systemd" in options.split(",") else None
            )
            if fstype in ("cgroup", "cgroup2") and name in own:
                mount_root, mount_point = fields[3], fields[4]
                rel = os.path.relpath(own[name], mount_root)
                dirs.append(os.path.normpath(os.path.join(mount_point, rel)))
    return dirs


def remove_cgroup_tree(top: str, timeout: float = 15) -> None:
    """SIGKILL (by PID) whatever is still in ``top`` and below, then remove it bottom-up."""

    def procs() -> list[int]:
        pids = []
        for dirpath, _, files in os.walk(top):
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError), open(os.path.join(dirpath, "cgroup.procs")) as f:
                    pids += [int(p) for p in f.read().split()]
        return pids

    if not os.path.isdir(top):
        return
    for pid in procs():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not procs(), timeout, f"processes in {top} to die")
    for dirpath, _, _ in sorted(os.walk(top), key=lambda entry: -entry[0].count("/")):
        wait_for(functools.partial(_rmdir, dirpath), timeout, f"cgroup {dirpath} to go")


def _rmdir(path: str) -> bool:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def unmount_below(path: str) -> None:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p == path or p.startswith(path + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def _sweep_stale() -> None:
    """Remove what crashed runs left: their container dirs, cgroups and nspawn state."""
    for hierarchy in cgroup_hierarchies():
        for top in glob.glob(os.path.join(hierarchy, "wgt*e2e")):
            pid = os.path.basename(top)[3:-3]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                remove_cgroup_tree(top)
    for inst in glob.glob("/var/tmp/wgt*e2e-*"):
        pid = os.path.basename(inst)[3:].split("e2e", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            unmount_below(inst)
            shutil.rmtree(inst, ignore_errors=True)
            machine = os.path.basename(inst).split("-", 1)[0]
            shutil.rmtree(f"/run/systemd/nspawn/propagate/{machine}", ignore_errors=True)


# --- the container -------------------------------------------------------------------------


@dataclass
class _Container:
    """A booted copy of the rootfs; ``run()`` executes inside it through nsenter."""

    root: str
    inst: str
    machine: str
    log: str
    cgroups: list[str]
    nspawn: subprocess.Popen[bytes] | None = None
    leader: int = 0
    deb: str = ""
    _closers: list[Callable[[], None]] = field(default_factory=list)

    ENV = ("PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8", "DEBIAN_FRONTEND=noninteractive")

    def boot(self) -> None:
        for d in self.cgroups:
            os.makedirs(d, exist_ok=True)

        def enter_cgroups() -> None:  # in the child, before exec: nspawn's cgroups go below ours
            for d in self.cgroups:
                with open(os.path.join(d, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))

        argv = [
            "systemd-nspawn", "--quiet", "-D", self.root, f"--machine={self.machine}", "-b",
            # PID 1 of this machine is not systemd: no machined to register with, no unit to
            # create; the container lives in the cgroup nspawn was started in (ours).
            "--register=no", "--keep-unit",
            # Only loopback inside: the agent cannot reach any outside address.
            "--private-network",
            # The container's root gets the capability a host's root has, so that nspawn's
            # own seccomp filter does not answer EPERM for module calls: the sandbox probe
            # must see the unit's filter, not nspawn's. The rootfs has no /lib/modules, so
            # nothing can actually be loaded.
            "--capability=CAP_SYS_MODULE",
            "--console=pipe",
        ]  # fmt: skip
        with open(self.log, "ab") as out:
            self.nspawn = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=enter_cgroups, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            )  # fmt: skip
        nspawn = self.nspawn

        def leader() -> int:
            with contextlib.suppress(OSError), open(f"/proc/{nspawn.pid}/task/{nspawn.pid}/children") as f:
                for pid in f.read().split():
                    with open(f"/proc/{pid}/comm") as c:
                        if c.read().strip() == "systemd":
                            return int(pid)
            return 0

        wait_for(lambda: leader() or nspawn.poll() is not None, 30, "the container's systemd")
        if nspawn.poll() is not None:
            raise LabError(f"systemd-nspawn exited ({nspawn.returncode}):\n{self.console()}")
        self.leader = leader()
        # systemctl needs PID 1's bus socket, which appears a moment after exec.
        wait_for(lambda: self.exists("/run/systemd/private"), 30, "systemd's socket in the container")
        state = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=120).stdout.strip()
        if state != "running":
            failed = self.run("systemctl", "--failed", "--no-pager", check=False).stdout
            raise LabError(f"the container booted {state!r}:\n{failed}")

    def console(self) -> str:
        with contextlib.suppress(OSError), open(self.log, errors="replace") as f:
            return f.read()[-3000:]
        return ""

    def run(
        self, *argv: str, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["nsenter", "-t", str(self.leader), "-a", "env", "-i", *self.ENV, *argv]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise LabError(
                f"in the container: {shlex.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def write(self, path: str, text: str) -> None:
        self.run("sh", "-c", f"mkdir -p {shlex.quote(os.path.dirname(path))} && cat > {shlex.quote(path)}", input=text)

    def exists(self, path: str) -> bool:
        return self.run("test", "-e", path, check=False).returncode == 0

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def curl(self, path: str) -> tuple[int, str]:
        out = self.run("curl", "-s", "-m", "5", "-w", "\n%{http_code}", f"localhost:{PORT}{path}", check=False).stdout
        body, _, code = out.rpartition("\n")
        return int(code or 0), body.strip()

    def healthz(self) -> tuple[int, dict[str, Any]]:
        code, body = self.curl("/healthz")
        return code, (json.loads(body) if code in (200, 503) else {})

    def journal_cursor(self) -> str:
        out = self.run("journalctl", "-u", "wgagent", "-n", "0", "--show-cursor", "--no-pager").stdout
        match = re.search(r"-- cursor: (\S+)", out)
        return match.group(1) if match else ""

    def journal(self, unit: str = "wgagent", after: str = "") -> str:
        args = ["journalctl", "-u", unit, "--no-pager", "-o", "short-monotonic"]
        if after:
            args.append(f"--after-cursor={after}")
        return self.run(*args, check=False).stdout

    def wait_journal(self, pattern: str, after: str, timeout: float = 20) -> None:
        wait_for(lambda: re.search(pattern, self.journal(after=after)), timeout, f"journal line /{pattern}/")

    def close(self) -> None:
        """Power off, then remove every cgroup, mount and file this container had."""
        errors = []
        nspawn = self.nspawn
        if nspawn is not None and nspawn.poll() is None:
            os.kill(nspawn.pid, signal.SIGTERM)  # nspawn: an orderly poweroff of the container
            try:
                nspawn.wait(60)
            except subprocess.TimeoutExpired:
                errors.append("the container did not power off within 60 s; killed")
                for pid in (self.leader, nspawn.pid):
                    with contextlib.suppress(ProcessLookupError):
                        if pid:
                            os.kill(pid, signal.SIGKILL)
                nspawn.wait(10)
        for d in self.cgroups:
            try:
                remove_cgroup_tree(d)
            except LabError as exc:
                errors.append(str(exc))
        unmount_below(self.inst)
        shutil.rmtree(self.inst, ignore_errors=True)
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.machine}", ignore_errors=True)
        if errors:
            raise LabError("container cleanup: " + "; ".join(errors))


def _deb_build() -> tuple[str, str]:
    """scripts/deb: the .deb's path and lintian's verdict line."""
    proc = subprocess.run(["scripts/deb"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    verdict = next((ln for ln in proc.stdout.splitlines() if ln.startswith("lintian: ")), "lintian: no verdict")
    assert proc.returncode == 0, f"scripts/deb failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert verdict.startswith("lintian: clean"), proc.stdout
    return os.path.join(ROOT, "dist", f"wgagent_{__version__}_all.deb"), verdict


def _exposure(text: str) -> float:
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", text)
    assert match, text[-500:]
    return float(match.group(1))


@pytest.fixture(scope="module")
def container(request: pytest.FixtureRequest) -> Iterator[_Container]:
    require("systemd-nspawn", "debootstrap", "nsenter", "dpkg-buildpackage", "lintian", "systemd-analyze", root=True)
    _sweep_stale()
    deb, verdict = _deb_build()
    FIGURES["deb"] = f"{os.path.basename(deb)}: {os.path.getsize(deb)} bytes ({os.path.getsize(deb) / 1024:.1f} KiB)"
    FIGURES["lintian"] = verdict.removeprefix("lintian: ")
    host = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", os.path.join(ROOT, "systemd", "wgagent.service")],
        capture_output=True, text=True,
    )  # fmt: skip
    FIGURES["exposure_host_offline"] = f"{_exposure(host.stdout + host.stderr)}"
    started = time.monotonic()
    rootfs, meta = cached_rootfs(rootfs_packages(deb))
    FIGURES["rootfs"] = (
        f"debootstrap {SUITE} minbase + {len(meta['packages'])} packages: {meta['build_s']} s when built"
        + (
            f" ({meta['built_at']}); this run used the cache: {time.monotonic() - started:.1f} s"
            if meta["cached"]
            else ""
        )
    )
    inst = tempfile.mkdtemp(prefix=f"{TAG}-", dir="/var/tmp")
    c = _Container(
        root=os.path.join(inst, "rootfs"), inst=inst, machine=TAG, log=os.path.join(inst, "console.log"),
        cgroups=[os.path.join(d, TAG) for d in cgroup_hierarchies()],
    )  # fmt: skip
    try:
        copy_started = time.monotonic()
        subprocess.run(["cp", "-a", "--reflink=auto", rootfs, c.root], check=True)
        shutil.copy(deb, os.path.join(c.root, "root"))
        c.deb = "/root/" + os.path.basename(deb)
        with open(os.path.join(c.root, "usr/local/lib/wgagent-probe.py"), "w") as f:
            f.write(PROBE)
        boot_started = time.monotonic()
        c.boot()
        booted = time.monotonic() - boot_started
        FIGURES["boot"] = f"copy rootfs {boot_started - copy_started:.1f} s, boot to 'running' {booted:.1f} s"
        FIGURES["systemd"] = c.run("systemctl", "--version").stdout.splitlines()[0]
        yield c
    finally:
        try:
            c.close()
        finally:
            _report_figures(request)


@pytest.fixture(autouse=True)
def _journal_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if call_failed(request) and "container" in request.fixturenames:
        c = request.getfixturevalue("container")
        print("--- journalctl -u wgagent (tail) ---\n" + c.journal()[-4000:])
        print("--- console ---\n" + c.console())


def _report_figures(request: pytest.FixtureRequest) -> None:
    machine = f"{platform.node()}: {os.cpu_count()} CPUs, kernel {platform.release()}"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        machine += f", {int(f.readline().split()[1]) // 1024 // 1024} GiB RAM"
    lines = [f"wgagent {__version__} end-to-end in systemd-nspawn ({time.strftime('%Y-%m-%d', time.gmtime())})",
             f"  machine: {machine}"] + [f"  {k}: {v}" for k, v in FIGURES.items()]  # fmt: skip
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.join(ROOT, "dist"), exist_ok=True)
    with open(os.path.join(ROOT, "dist", "e2e-systemd-figures.txt"), "w") as f:
        f.write(text)
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        print("\n" + text, end="")


# --- the tests, in the order a user meets them ------------------------------------------------


def test_install_with_only_debian_packages_neither_enables_nor_starts(container: _Container) -> None:
    c = container
    out = c.run("apt-get", "install", "-y", c.deb, timeout=180).stdout
    # Nothing to download (the container has no network): every dependency is already there.
    assert re.search(r"^0 upgraded, 1 newly installed, 0 to remove", out, re.M), out
    assert "Need to get" not in out or re.search(r"Need to get 0 B", out), out
    assert c.run("systemctl", "is-enabled", "wgagent", check=False).stdout.strip() == "disabled"
    assert c.run("systemctl", "is-active", "wgagent", check=False).stdout.strip() == "inactive"
    with open(os.path.join(ROOT, "examples", "config.yaml")) as f:
        assert c.run("cat", "/etc/wgagent/config.yaml").stdout == f.read()
    assert "/etc/wgagent/config.yaml" in c.run("cat", "/var/lib/dpkg/info/wgagent.conffiles").stdout
    assert c.run("test", "-d", "/var/lib/wgagent", check=False).returncode == 0
    assert c.exists("/usr/share/man/man8/wgagent.8.gz")
    assert c.run("wgagent", "version").stdout.strip() == f"wgagent {__version__}"
    # The stand-in k3s, and the test's config (what an admin does before enabling).
    c.write("/etc/systemd/system/k3s.service", K3S_UNIT)
    c.write("/etc/wgagent/config.yaml", TEST_CONFIG)
    c.run("systemctl", "daemon-reload")


def test_enable_now_reaches_active_through_ready_and_serves_health(container: _Container) -> None:
    c = container
    started = time.monotonic()
    c.run("systemctl", "enable", "--now", "wgagent")  # Type=notify: returns once READY=1 came
    wall = time.monotonic() - started
    p = c.show("wgagent", "ActiveState", "SubState", "StatusText", "InactiveExitTimestampMonotonic",
               "ActiveEnterTimestampMonotonic", "MainPID", "NotifyAccess", "Type")  # fmt: skip
    assert (p["ActiveState"], p["SubState"], p["Type"]) == ("active", "running", "notify"), p
    assert p["StatusText"], "no STATUS= line from the daemon"
    start_s = (int(p["ActiveEnterTimestampMonotonic"]) - int(p["InactiveExitTimestampMonotonic"])) / 1e6
    FIGURES["start_to_active"] = f"{start_s:.2f} s by systemd's timestamps ({wall:.2f} s for systemctl enable --now)"
    assert re.search(r"wgagent\[\d+\]: .*ready: ", c.journal()), c.journal()

    code, health = c.healthz()
    assert code == (200 if health["status"] == "ok" else 503), (code, health)
    assert health["checks"]["config"]["ok"] is True
    assert health["checks"]["config"]["detail"] == "loaded /etc/wgagent/config.yaml"
    # No WireGuard in here: those checks fail (503); the drop-in is the agent's own write,
    # under the sandbox, for the stand-in k3s.
    assert code == 503, health
    for name in ("wireguard_module", "wireguard_interface"):
        assert health["checks"][name]["ok"] is False, health
    assert health["checks"]["k3s_config"]["ok"] is True, health
    assert c.run("sh", "-c", "ls /etc/rancher/k3s/config.yaml.d/*.yaml").stdout.strip(), "no drop-in written"
    assert c.curl("/livez") == (200, "ok")
    assert c.curl("/metrics")[1].count("wgagent_build_info{") == 1

    status = c.run("wgagent", "status", check=False)
    assert status.returncode == (0 if health["status"] == "ok" else 1), status
    assert "e2e-node" in status.stdout and re.search(r"^config\s+ok\s", status.stdout, re.M), status.stdout
    for name, check in health["checks"].items():
        if not check["ok"]:
            assert re.search(rf"^{name}\s+FAIL\s", status.stdout, re.M), status.stdout

    # doctor in here: no WireGuard in the kernel, and no k3s (its unit is the stand-in running
    # sleep): it says both, the kernel by its version, skips what needs k3s, and exits 1.
    doctor = c.run("wgagent", "doctor", "--json", check=False)
    assert doctor.returncode == 1 and "Traceback" not in doctor.stderr, doctor
    findings = json.loads(doctor.stdout)["findings"]
    problems = [(f["area"], f["title"]) for f in findings if f["severity"] == "problem"]
    release = c.run("uname", "-r").stdout.strip()
    assert ("k3s", "k3s is not installed") in problems, problems
    assert any(area == "kernel" and release in title for area, title in problems), problems
    assert all(f["fix"] for f in findings if f["severity"] == "problem"), findings
    skipped = {f["area"]: f["detail"] for f in findings if f["title"].startswith("skipped")}
    assert skipped.get("kubernetes") == skipped.get("wireguard") == "k3s is not installed", skipped
    assert any(f["area"] == "wgagent" and "daemon reports failing checks" in f["title"] for f in findings)
    text = c.run("wgagent", "doctor", check=False)
    assert text.returncode == 1 and "k3s is not installed" in text.stdout and "fix: " in text.stdout, text

    discover = c.run("wgagent", "discover", "--json", check=False)
    assert discover.returncode == 0, discover
    assert json.loads(discover.stdout)["ipv4"] == "203.0.113.10"  # the pinned address, nothing asked outside

    gc = c.run("wgagent", "gc", "--dry-run", check=False)
    assert gc.returncode == 1, gc  # no WireGuard interface here: it says so, no crash
    assert "no WireGuard interface of flannel" in gc.stdout + gc.stderr, gc
    assert "traceback" not in (gc.stdout + gc.stderr).lower()


def test_sandbox_lets_the_agent_do_its_real_work_and_nothing_more(container: _Container) -> None:
    c = container
    installed = c.run("cat", "/lib/systemd/system/wgagent.service").stdout
    service = installed.split("[Service]", 1)[1].split("[Install]", 1)[0]
    daemon_only = {"Type", "NotifyAccess", "ExecStart", "ExecReload", "Restart", "RestartSec", "WatchdogSec",
                   "TimeoutStartSec", "TimeoutStopSec"}  # fmt: skip
    sandbox = [ln for ln in service.splitlines() if "=" in ln and not ln.startswith("#")
               and ln.split("=", 1)[0] not in daemon_only]  # fmt: skip
    assert any(ln.startswith("ProtectSystem=") for ln in sandbox), sandbox
    c.write(
        "/etc/systemd/system/wgagent-probe.service",
        "[Unit]\nDescription=wgagent's sandbox, running the probe (e2e test)\n\n[Service]\nType=oneshot\n"
        "ExecStart=/usr/bin/python3 /usr/local/lib/wgagent-probe.py\n"
        "StandardOutput=file:/run/wgagent-probe.json\n" + "\n".join(sandbox) + "\n",
    )
    c.run("systemctl", "daemon-reload")
    c.run("systemctl", "start", "k3s.service")
    c.run("rm", "-rf", "/etc/rancher")  # the sandbox must create /etc/rancher/k3s itself

    baseline = json.loads(
        c.run("systemd-run", "--wait", "--pipe", "--quiet", "python3", "/usr/local/lib/wgagent-probe.py").stdout
    )
    before = c.show("k3s", "InvocationID")["InvocationID"]
    c.run("systemctl", "start", "wgagent-probe.service")
    boxed = json.loads(c.run("cat", "/run/wgagent-probe.json").stdout)
    after = c.show("k3s", "InvocationID")["InvocationID"]
    detail = json.dumps({"baseline": baseline, "sandboxed": boxed}, indent=1)

    for name in ("write_k3s", "write_modules_load", "write_state", "netlink", "tap", "nft"):
        assert baseline[name]["ok"] and boxed[name]["ok"], (name, detail)
    assert boxed["nft"]["detail"] == ["hs_post", "hs_pre", "pass"], detail
    assert "lo" in boxed["netlink"]["detail"]
    # Without the sandbox /etc is writable; under it, only the paths above are.
    assert baseline["write_elsewhere_in_etc"]["ok"], detail
    assert boxed["write_elsewhere_in_etc"]["errno"] == "EROFS", detail
    # modprobe and the module syscall fail here (no modules in this rootfs / this kernel),
    # but exactly as they do without the sandbox: never EPERM from it.
    assert baseline["finit_module"]["detail"]["errno"] != "EPERM", "the container lacks CAP_SYS_MODULE: " + detail
    assert boxed["finit_module"]["detail"] == baseline["finit_module"]["detail"], detail
    assert boxed["modprobe"]["detail"] == baseline["modprobe"]["detail"], detail
    assert "not permitted" not in boxed["modprobe"]["detail"]["stderr"].lower()
    assert boxed["systemctl_try_restart"]["detail"] == {"rc": 0, "stderr": ""}, detail
    assert after != before, "systemctl try-restart k3s.service did not restart it"
    assert boxed["caps"]["detail"] == {"net_admin": True, "net_raw": True, "sys_module": True, "sys_admin": False}, (
        detail
    )
    c.run("systemctl", "stop", "k3s.service")

    exposure = _exposure(c.run("systemd-analyze", "security", "--no-pager", "wgagent.service").stdout)
    FIGURES["exposure_container"] = f"{exposure} (systemd-analyze security wgagent.service, booted container)"
    FIGURES["exposure_host_offline"] += " (systemd-analyze security --offline=true systemd/wgagent.service, host)"
    assert exposure <= EXPOSURE_TARGET


def test_watchdog_kills_and_restarts_a_stopped_daemon(container: _Container) -> None:
    c = container
    c.run("systemctl", "start", "wgagent")
    p = c.show("wgagent", "MainPID", "NRestarts", "WatchdogUSec", "RestartUSec")
    old, restarts = p["MainPID"], int(p["NRestarts"])
    cursor = c.journal_cursor()
    c.run("kill", "-STOP", old)
    # WatchdogSec, then RestartSec, then start-up: a generous deadline from the unit's own values.
    deadline = _seconds(p["WatchdogUSec"]) + _seconds(p["RestartUSec"]) + 30

    def restarted() -> bool:
        q = c.show("wgagent", "MainPID", "NRestarts", "ActiveState")
        return int(q["NRestarts"]) > restarts and q["ActiveState"] == "active" and q["MainPID"] not in (old, "0")

    wait_for(restarted, deadline, "systemd to kill the stopped daemon and start it again")
    log = c.journal(after=cursor)
    assert re.search(r"[Ww]atchdog timeout", log), log
    assert "Failed with result 'watchdog'" in log, log
    assert int(c.show("wgagent", "NRestarts")["NRestarts"]) >= 1
    wait_for(lambda: c.curl("/livez") == (200, "ok"), 10, "/livez after the restart")
    _, health = c.healthz()
    assert health["checks"]["config"]["ok"] is True, health


def _seconds(systemd_timespan: str) -> float:
    total = 0.0
    units = {"min": 60.0, "ms": 1e-3, "us": 1e-6, "h": 3600.0, "s": 1.0}
    for number, unit in re.findall(r"([\d.]+)\s*(min|ms|us|h|s)", systemd_timespan):
        total += float(number) * units[unit]
    return total


def test_reload_applies_a_good_config_and_refuses_a_broken_one(container: _Container) -> None:
    c = container
    c.run("systemctl", "start", "wgagent")
    pid = c.show("wgagent", "MainPID")["MainPID"]

    c.write("/etc/wgagent/config.yaml", TEST_CONFIG.replace("node_name: e2e-node", "node_name: e2e-node-reloaded"))
    c.run("systemctl", "reload", "wgagent")
    wait_for(
        lambda: json.loads(c.curl("/status")[1] or "{}").get("node") == "e2e-node-reloaded", 10, "the new node name"
    )
    assert c.show("wgagent", "MainPID")["MainPID"] == pid  # reloaded, not restarted

    cursor = c.journal_cursor()
    c.write("/etc/wgagent/config.yaml", TEST_CONFIG + "wireguard:\n  gc:\n    stale_after_s: soon\n")
    c.run("systemctl", "reload", "wgagent")
    c.wait_journal(r"reload refused.*stale_after_s", cursor)
    code, health = c.healthz()
    assert code == 503 and health["checks"]["config"]["ok"] is False, health
    assert "wireguard.gc.stale_after_s" in health["checks"]["config"]["detail"], health
    assert "/etc/wgagent/config.yaml:" in health["checks"]["config"]["detail"], health
    p = c.show("wgagent", "ActiveState", "MainPID")
    assert (p["ActiveState"], p["MainPID"]) == ("active", pid), p
    assert json.loads(c.curl("/status")[1])["node"] == "e2e-node-reloaded"  # still the previous config

    c.write("/etc/wgagent/config.yaml", TEST_CONFIG)
    c.run("systemctl", "reload", "wgagent")
    wait_for(lambda: c.healthz()[1].get("checks", {}).get("config", {}).get("ok") is True, 10, "config ok again")
    assert json.loads(c.curl("/status")[1])["node"] == "e2e-node"


def test_wgagent_is_ready_before_k3s_starts(container: _Container) -> None:
    c = container
    c.run("systemctl", "stop", "wgagent.service", "k3s.service")
    c.run("rm", "-f", "/run/k3s-saw-wgagent")
    # One transaction holding both, as multi-user.target at boot: only the unit's Before=
    # orders them. (`systemctl start k3s wgagent` would not do: two bus calls, and k3s's
    # job may run before wgagent's is queued.)
    c.write("/etc/systemd/system/e2e-node.target", "[Unit]\nWants=k3s.service wgagent.service\n")
    c.run("systemctl", "daemon-reload")
    c.run("systemctl", "start", "e2e-node.target")
    saw = c.run("cat", "/run/k3s-saw-wgagent").stdout.split()
    assert saw == ["ActiveState=active", "SubState=running"], saw
    ready = int(c.show("wgagent", "ActiveEnterTimestampMonotonic")["ActiveEnterTimestampMonotonic"])
    k3s_started = int(c.show("k3s", "InactiveExitTimestampMonotonic")["InactiveExitTimestampMonotonic"])
    assert 0 < ready <= k3s_started, (ready, k3s_started)
    c.run("systemctl", "stop", "k3s.service")


def test_stop_finishes_within_5_seconds(container: _Container) -> None:
    c = container
    c.run("systemctl", "start", "wgagent")
    cursor = c.journal_cursor()
    started = time.monotonic()
    c.run("systemctl", "stop", "wgagent")
    took = time.monotonic() - started
    FIGURES["stop"] = f"{took:.2f} s for systemctl stop"
    p = c.show("wgagent", "ActiveState", "Result", "ExecMainStatus")
    assert (p["ActiveState"], p["Result"], p["ExecMainStatus"]) == ("inactive", "success", "0"), p
    assert took < 5, took
    assert re.search(r"wgagent\[\d+\]: .*stopped$", c.journal(after=cursor), re.M)


def test_the_agent_met_no_sandbox_denial(container: _Container) -> None:
    # Every run so far (start, watchdog restart, reloads, ordering, stop) in one journal: a
    # part that needs something the unit forbids shows up here first.
    log = container.journal()
    assert "ready:" in log, log
    denials = [ln for ln in log.splitlines() if re.search(r"Permission denied|Operation not permitted|Read-only file "
                                                          r"system|EACCES|EPERM|EROFS", ln)]  # fmt: skip
    assert not denials, "\n".join(denials)


def _repack(c: _Container, version: str) -> str:
    """The same package under another version, for an upgrade (built on the host)."""
    work = tempfile.mkdtemp(dir=c.inst)
    subprocess.run(["dpkg-deb", "-R", os.path.join(c.root, c.deb.lstrip("/")), work + "/pkg"], check=True)
    control = work + "/pkg/DEBIAN/control"
    with open(control) as f:
        text = re.sub(r"^Version: .*$", f"Version: {version}", f.read(), flags=re.M)
    with open(control, "w") as f:
        f.write(text)
    name = f"wgagent_{version}_all.deb"
    subprocess.run(["dpkg-deb", "-b", work + "/pkg", os.path.join(c.root, "root", name)], check=True,
                   capture_output=True)  # fmt: skip
    shutil.rmtree(work)
    return "/root/" + name


def test_upgrade_keeps_the_config_and_restarts_only_a_running_service(container: _Container) -> None:
    c = container
    c.run("systemctl", "start", "wgagent")
    pid = c.show("wgagent", "MainPID")["MainPID"]
    newer = _repack(c, __version__ + "+e2e1")
    c.run("apt-get", "install", "-y", newer, timeout=180)
    p = c.show("wgagent", "ActiveState", "MainPID")
    assert p["ActiveState"] == "active" and p["MainPID"] not in (pid, "0"), ("running: restarted", p)
    assert c.run("cat", "/etc/wgagent/config.yaml").stdout == TEST_CONFIG  # the admin's config is kept
    assert c.run("systemctl", "is-enabled", "wgagent").stdout.strip() == "enabled"

    c.run("systemctl", "stop", "wgagent")
    c.run("apt-get", "install", "-y", "--allow-downgrades", c.deb, timeout=180)  # configure with an old version
    assert c.run("systemctl", "is-active", "wgagent", check=False).stdout.strip() == "inactive", "stopped: stays so"
    assert c.run("systemctl", "is-enabled", "wgagent").stdout.strip() == "enabled"
    assert c.run("dpkg-query", "-W", "-f=${Version}", "wgagent").stdout == __version__


def test_remove_keeps_config_and_state_and_purge_removes_them(container: _Container) -> None:
    c = container
    c.run("systemctl", "start", "wgagent")
    if not c.exists("/etc/modules-load.d/wgagent.conf"):
        # Stands in for the file the WireGuard part writes (until that part lands).
        c.write("/etc/modules-load.d/wgagent.conf", "wireguard\n")
    c.run("apt-get", "remove", "-y", "wgagent", timeout=180)
    p = c.show("wgagent", "ActiveState", "Result")
    assert p["ActiveState"] == "inactive" and p["Result"] == "success", ("remove stops the service", p)
    assert not c.exists("/usr/bin/wgagent")
    assert c.run("cat", "/etc/wgagent/config.yaml").stdout == TEST_CONFIG
    assert c.exists("/var/lib/wgagent") and c.exists("/etc/modules-load.d/wgagent.conf")
    status = c.run("dpkg-query", "-W", "-f=${Status}", "wgagent").stdout
    assert status == "deinstall ok config-files", status

    c.run("apt-get", "purge", "-y", "wgagent", timeout=180)
    for path in ("/etc/wgagent", "/var/lib/wgagent", "/etc/modules-load.d/wgagent.conf",
                 "/etc/systemd/system/multi-user.target.wants/wgagent.service"):  # fmt: skip
        assert not c.exists(path), f"{path} survived the purge"
    assert c.run("dpkg-query", "-W", "-f=${Status}", "wgagent", check=False).stdout in ("", "unknown ok not-installed")
