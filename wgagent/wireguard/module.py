"""The ``wireguard_module`` check: keep the kernel module loaded, or say why it cannot load.

Every ``wireguard.module_check_interval_s``: is WireGuard loaded or built in
(``/sys/module/wireguard``, ``modules.builtin``)? If not, ``modprobe wireguard``. Once it is
loaded, ``wireguard.modules_load_file`` must list ``wireguard`` so it loads at boot (written
atomically, only when it does not yet).

When it cannot load, :func:`diagnose` explains why from facts gathered once
(:class:`ModuleFacts`), as the seed's author had to find out by hand::

    >>> facts = ModuleFacts(release="4.15.0-20-generic", loaded=False, builtin=False,
    ...                     modules_dir=True, module_file=False,
    ...                     modprobe=ModprobeResult(1, "modprobe: FATAL: Module wireguard not found"))
    >>> [f.code for f in diagnose(facts).findings]
    ['old_kernel', 'modprobe_failed']

Gathering (:class:`ModuleHost`) is the adapter, with injectable paths and commands, so the
diagnosis is tested as a pure function and ``wgagent doctor`` reuses both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from wgagent import fsutil
from wgagent.config import WireGuardConfig
from wgagent.errors import WriteError
from wgagent.part import Part
from wgagent.state import State

log = logging.getLogger(__name__)

MODULE = "wireguard"
MIN_KERNEL = (5, 6)
"""WireGuard is in mainline Linux since 5.6; older kernels need wireguard-dkms (or a backport)."""


@dataclass(frozen=True)
class ModprobeResult:
    returncode: int | None
    """None: modprobe could not be run at all (not installed)."""
    output: str = ""


@dataclass(frozen=True)
class ProbeResult:
    result: str
    """``supported``, ``unsupported`` (EOPNOTSUPP), ``error`` or ``unavailable``."""
    detail: str = ""


@dataclass(frozen=True)
class ModuleFacts:
    release: str
    """``uname -r``."""
    loaded: bool
    """``/sys/module/wireguard`` exists (after modprobe, if it ran)."""
    builtin: bool
    """Listed in ``/lib/modules/<release>/modules.builtin``."""
    modules_dir: bool
    """``/lib/modules/<release>`` exists."""
    module_file: bool | None
    """A wireguard module is in ``modules.dep``; None when that cannot be told."""
    modprobe: ModprobeResult | None = None
    probe: ProbeResult | None = None


@dataclass(frozen=True)
class ModuleFinding:
    code: str
    """Stable name for programs: old_kernel, no_modules_dir, not_built, no_kernel_support,
    probe_failed, modprobe_failed, no_modprobe, not_loaded."""
    message: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.message}; fix: {self.fix}" if self.fix else self.message


@dataclass(frozen=True)
class ModuleDiagnosis:
    ok: bool
    state: str
    """``builtin``, ``loaded``, ``loaded_now`` (by this modprobe) or ``missing``."""
    findings: tuple[ModuleFinding, ...] = ()

    def detail(self) -> str:
        if self.ok:
            return {
                "builtin": "WireGuard is built into the kernel",
                "loaded": "wireguard module loaded",
                "loaded_now": "wireguard module loaded now (modprobe wireguard)",
            }[self.state]
        return "wireguard module cannot be loaded: " + "; ".join(str(f) for f in self.findings)


def kernel_version(release: str) -> tuple[int, int] | None:
    """``"4.15.0-20-generic"`` -> ``(4, 15)``; None if it does not start with a version."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _modprobe_fix(output: str) -> str:
    text = output.lower()
    if "key was rejected" in text or "required key not available" in text or "signature" in text:
        return (
            "the module is not signed with a key this kernel trusts (Secure Boot): enroll the DKMS signing key"
            " (mokutil --import /var/lib/dkms/mok.pub, then reboot) or disable Secure Boot"
        )
    if "operation not permitted" in text or "permission denied" in text:
        return "run wgagent as root with CAP_SYS_MODULE (in a container, load the module on the host)"
    return ""


def diagnose(facts: ModuleFacts) -> ModuleDiagnosis:
    """Whether WireGuard is available, and if not, every reason found, most specific first."""
    if facts.builtin:
        return ModuleDiagnosis(True, "builtin")
    if facts.loaded:
        state = "loaded_now" if facts.modprobe is not None and facts.modprobe.returncode == 0 else "loaded"
        return ModuleDiagnosis(True, state)
    found = [*_kernel_findings(facts), *_probe_findings(facts), *_modprobe_findings(facts)]
    if not found:
        found.append(
            ModuleFinding(
                "not_loaded",
                "the wireguard module is not loaded",
                "modprobe wireguard (wireguard.manage_module: true does it for you)",
            )
        )
    return ModuleDiagnosis(False, "missing", tuple(found))


def _kernel_findings(facts: ModuleFacts) -> list[ModuleFinding]:
    """What the kernel release and ``/lib/modules`` say: too old, not rebooted, built without it."""
    rel = facts.release
    found: list[ModuleFinding] = []
    version = kernel_version(rel)
    if version is not None and version < MIN_KERNEL and facts.module_file is not True:
        found.append(
            ModuleFinding(
                "old_kernel",
                f"kernel {rel} is older than 5.6 (WireGuard went into Linux in 5.6) and /lib/modules/{rel}"
                " has no wireguard module",
                f"apt install wireguard-dkms linux-headers-{rel}; or upgrade the kernel"
                " (apt update && apt dist-upgrade) and reboot",
            )
        )
    if not facts.modules_dir:
        found.append(
            ModuleFinding(
                "no_modules_dir",
                f"/lib/modules/{rel} does not exist: the kernel was upgraded but the machine not rebooted into it,"
                " or this is a container",
                "reboot into the installed kernel; in a container, load the module on the host (modprobe wireguard)",
            )
        )
    elif facts.module_file is False and (version is None or version >= MIN_KERNEL):
        found.append(
            ModuleFinding(
                "not_built",
                f"kernel {rel} has no wireguard module in /lib/modules/{rel} and does not have it built in",
                "boot a kernel built with CONFIG_WIREGUARD, e.g. the distribution's standard one:"
                " apt install linux-image-$(dpkg --print-architecture) && reboot",
            )
        )
    return found


def _probe_findings(facts: ModuleFacts) -> list[ModuleFinding]:
    """What creating a throwaway wireguard link answered."""
    probe = facts.probe
    if probe is not None and probe.result == "unsupported":
        return [
            ModuleFinding(
                "no_kernel_support",
                "creating a wireguard link answers 'Operation not supported': this kernel has no WireGuard support",
                "boot a kernel with WireGuard (5.6 or later): apt update && apt dist-upgrade && reboot;"
                f" on an older kernel: apt install wireguard-dkms linux-headers-{facts.release}",
            )
        ]
    if probe is not None and probe.result == "error":
        return [ModuleFinding("probe_failed", f"creating a test wireguard link failed: {probe.detail}")]
    return []


def _modprobe_findings(facts: ModuleFacts) -> list[ModuleFinding]:
    """What ``modprobe wireguard`` answered, with the fix its words point to."""
    mp = facts.modprobe
    if mp is not None and mp.returncode is None:
        return [ModuleFinding("no_modprobe", f"modprobe could not be run: {mp.output}", "apt install kmod")]
    if mp is not None and mp.returncode != 0:
        text = mp.output or f"exit status {mp.returncode}"
        return [ModuleFinding("modprobe_failed", f"modprobe wireguard: {text}", _modprobe_fix(text))]
    return []


# --- gathering -----------------------------------------------------------------------------------

Prober = Callable[[], Awaitable[ProbeResult]]


async def _netlink_probe() -> ProbeResult:
    from wgagent.wireguard.netlink import probe_link_support

    result, detail = await probe_link_support()
    return ProbeResult(result, detail)


@dataclass
class ModuleHost:
    """Where the facts come from; every path and command can be replaced (tests, doctor)."""

    sys_module_dir: str = "/sys/module"
    modules_root: str = "/lib/modules"
    release: str = field(default_factory=lambda: os.uname().release)
    modprobe_argv: Sequence[str] = ("modprobe", MODULE)
    modprobe_timeout_s: float = 60.0
    prober: Prober = _netlink_probe

    def loaded(self) -> bool:
        return os.path.isdir(os.path.join(self.sys_module_dir, MODULE))

    def _modules_file_lists(self, name: str, pattern: re.Pattern[str]) -> bool | None:
        try:
            with open(os.path.join(self.modules_root, self.release, name), errors="replace") as f:
                return any(pattern.search(line) for line in f)
        except OSError:
            return None

    def modules_dir(self) -> bool:
        return os.path.isdir(os.path.join(self.modules_root, self.release))

    def builtin(self) -> bool:
        """Listed in ``modules.builtin``, or in sysfs as only a built-in module is: its
        ``/sys/module/wireguard`` holds the ``version`` (``version_sysfs_builtin`` in
        kernel/params.c) but no ``initstate``, which every loaded module has
        (``modinfo_initstate`` in kernel/module/main.c, Linux 6.1). A kernel without
        /lib/modules (a custom or user-mode one, a container's host) shows only the second."""
        sysfs = os.path.join(self.sys_module_dir, MODULE)
        if os.path.exists(os.path.join(sysfs, "version")) and not os.path.exists(os.path.join(sysfs, "initstate")):
            return True
        return bool(self._modules_file_lists("modules.builtin", _BUILTIN_RE))

    async def modprobe(self) -> ModprobeResult:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.modprobe_argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as exc:
            return ModprobeResult(None, f"{self.modprobe_argv[0]}: {exc.strerror or exc}")
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.modprobe_timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return ModprobeResult(-1, f"did not finish within {self.modprobe_timeout_s:g} s")
        text = " ".join(out.decode(errors="replace").split())
        return ModprobeResult(proc.returncode, text[-400:])

    async def gather(self, *, modprobe: ModprobeResult | None, probe: ProbeResult | None) -> ModuleFacts:
        """The facts now; ``modprobe``/``probe`` are what the caller ran (None: not run)."""
        return ModuleFacts(
            release=self.release,
            loaded=self.loaded(),
            builtin=self.builtin(),
            modules_dir=self.modules_dir(),
            module_file=self._modules_file_lists("modules.dep", _DEP_RE),
            modprobe=modprobe,
            probe=probe,
        )


_BUILTIN_RE = re.compile(r"(^|/)wireguard\.ko\s*$")
_DEP_RE = re.compile(r"(^|/)wireguard\.ko(\.[a-z]+)?:")


async def check_module(
    host: ModuleHost, *, load: bool, probe_cache: dict[str, ProbeResult] | None = None
) -> ModuleFacts:
    """Gather the facts, running ``modprobe`` (when ``load``) and the link probe only when needed."""
    if host.loaded() or host.builtin():
        return await host.gather(modprobe=None, probe=None)
    modprobe = await host.modprobe() if load else None
    if host.loaded():
        return await host.gather(modprobe=modprobe, probe=None)
    cache = probe_cache if probe_cache is not None else {}
    probe = cache.get(host.release)
    if probe is None:
        probe = await host.prober()
        if probe.result == "unsupported":  # the running kernel does not change: ask once
            cache[host.release] = probe
    return await host.gather(modprobe=modprobe, probe=probe)


# --- the boot file -------------------------------------------------------------------------------


def boot_file_lists_module(content: str) -> bool:
    """Whether a modules-load.d file (one module per line, ``#``/``;`` comments) lists wireguard."""
    return any(line.split("#", 1)[0].strip() == MODULE for line in content.splitlines() if not line.startswith(";"))


def with_module(content: str | None) -> str:
    """The file content that lists wireguard, keeping whatever else it lists."""
    if content is None or not content.strip():
        return f"# Written by wgagent (wireguard.modules_load_file): load WireGuard at boot.\n{MODULE}\n"
    if boot_file_lists_module(content):
        return content
    return content + ("" if content.endswith("\n") else "\n") + MODULE + "\n"


def ensure_boot_file(path: str) -> bool:
    """Make ``path`` list wireguard; whether it changed. WriteError if it cannot be written."""
    try:
        raw = fsutil.read_bytes(path)
    except OSError as exc:
        raise WriteError(f"cannot read {path}: {exc.strerror or exc}") from exc
    current = None if raw is None else raw.decode("utf-8", "replace")
    wanted = with_module(current)
    if wanted == current:
        return False
    mode = 0o644
    with contextlib.suppress(OSError):
        mode = os.stat(path).st_mode & 0o7777
    return fsutil.atomic_write(path, wanted.encode(), mode=mode)


# --- the part ------------------------------------------------------------------------------------


class ModulePart(Part):
    name = "wireguard_module"
    checks = ("wireguard_module",)

    def __init__(self, state: State, cfg: WireGuardConfig, host: ModuleHost) -> None:
        super().__init__(state)
        self.cfg = cfg
        self.interval_s = cfg.module_check_interval_s
        self.host = host
        self._probe_cache: dict[str, ProbeResult] = {}
        self._logged = ""

    async def reconcile(self) -> None:
        facts = await check_module(self.host, load=self.cfg.manage_module, probe_cache=self._probe_cache)
        diag = diagnose(facts)
        detail = diag.detail()
        ok = diag.ok
        boot: dict[str, Any] = {"file": self.cfg.modules_load_file}
        if diag.state == "loaded_now":
            log.info("loaded the wireguard module (modprobe wireguard)")
        if ok and diag.state != "builtin" and self.cfg.manage_module:
            try:
                if ensure_boot_file(self.cfg.modules_load_file):
                    log.info("added '%s' to %s so that it loads at boot", MODULE, self.cfg.modules_load_file)
                boot["lists_wireguard"] = True
            except WriteError as exc:
                ok = False
                boot["lists_wireguard"] = False
                detail += f", but it will not load at boot: {exc}"
        elif not self.cfg.manage_module and not ok:
            detail += " (wireguard.manage_module is false: wgagent does not load it)"
        if not ok and detail != self._logged:  # once per change, not every minute
            log.warning("%s", detail)
        self._logged = "" if ok else detail
        self.state.set_check("wireguard_module", ok, detail)
        self.state.set_part(self.name, module_status(facts, diag) | {"boot": boot})


def module_status(facts: ModuleFacts, diag: ModuleDiagnosis) -> dict[str, Any]:
    """The module's ``/status`` section (and doctor's data)."""
    return {
        "state": diag.state,
        "kernel": facts.release,
        "modules_dir": facts.modules_dir,
        "module_file": facts.module_file,
        "modprobe": None
        if facts.modprobe is None
        else {"rc": facts.modprobe.returncode, "output": facts.modprobe.output},
        "probe": None if facts.probe is None else {"result": facts.probe.result, "detail": facts.probe.detail},
        "findings": [{"code": f.code, "message": f.message, "fix": f.fix} for f in diag.findings],
    }
