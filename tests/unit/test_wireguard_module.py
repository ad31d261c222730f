"""The module keeper: named diagnosis cases (pure), the gatherer on a fake sysfs/lib-modules tree,
the boot file, and ModulePart with a fake host (no modprobe, no namespaces)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wgagent.config import WireGuardConfig
from wgagent.state import State
from wgagent.wireguard.module import (
    ModprobeResult,
    ModuleFacts,
    ModuleHost,
    ModulePart,
    ProbeResult,
    boot_file_lists_module,
    check_module,
    diagnose,
    ensure_boot_file,
    kernel_version,
    with_module,
)

REJECTED = "could not insert 'wireguard': Key was rejected by service"
NOT_FOUND = ModprobeResult(1, "modprobe: FATAL: Module wireguard not found in directory /lib/modules/{rel}")
UNSUPPORTED = ProbeResult("unsupported", "Operation not supported")


def facts(release: str = "6.1.0-18-amd64", **kw: object) -> ModuleFacts:
    base: dict[str, object] = {
        "release": release,
        "loaded": False,
        "builtin": False,
        "modules_dir": True,
        "module_file": True,
    }
    base.update(kw)
    return ModuleFacts(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("case", "f", "ok", "state", "codes"),
    [
        ("already loaded", facts(loaded=True), True, "loaded", []),
        ("built in", facts(builtin=True, module_file=False), True, "builtin", []),
        ("loaded by our modprobe", facts(loaded=True, modprobe=ModprobeResult(0)), True, "loaded_now", []),
        (
            "seed: 4.15.0-20-generic, no module",
            facts("4.15.0-20-generic", module_file=False, modprobe=NOT_FOUND, probe=UNSUPPORTED),
            False,
            "missing",
            ["old_kernel", "no_kernel_support", "modprobe_failed"],
        ),
        (
            "upgraded, not rebooted (or a container)",
            facts("6.1.0-18-amd64", modules_dir=False, module_file=None, modprobe=NOT_FOUND),
            False,
            "missing",
            ["no_modules_dir", "modprobe_failed"],
        ),
        (
            "this machine: no /lib/modules, no WireGuard in the kernel",
            facts("6.18.44-fc-v782", modules_dir=False, module_file=None, modprobe=NOT_FOUND, probe=UNSUPPORTED),
            False,
            "missing",
            ["no_modules_dir", "no_kernel_support", "modprobe_failed"],
        ),
        (
            "old kernel without modules dir",
            facts("4.15.0-20-generic", modules_dir=False, module_file=None, modprobe=NOT_FOUND),
            False,
            "missing",
            ["old_kernel", "no_modules_dir", "modprobe_failed"],
        ),
        (
            "new kernel built without it",
            facts(module_file=False, modprobe=NOT_FOUND),
            False,
            "missing",
            ["not_built", "modprobe_failed"],
        ),
        (
            "dkms module present but secure boot rejects it",
            facts("4.15.0-20-generic", modprobe=ModprobeResult(1, "could not insert 'wireguard': Key was rejected")),
            False,
            "missing",
            ["modprobe_failed"],
        ),
        ("probe error", facts(probe=ProbeResult("error", "File exists")), False, "missing", ["probe_failed"]),
        (
            "no modprobe at all",
            facts(modprobe=ModprobeResult(None, "modprobe: No such file or directory")),
            False,
            "missing",
            ["no_modprobe"],
        ),
        ("nothing tried, nothing known", facts(), False, "missing", ["not_loaded"]),
    ],
)
def test_diagnosis(case: str, f: ModuleFacts, ok: bool, state: str, codes: list[str]) -> None:
    d = diagnose(f)
    assert (d.ok, d.state, [x.code for x in d.findings]) == (ok, state, codes), case


def test_old_kernel_names_the_packages_and_the_upgrade() -> None:
    d = diagnose(facts("4.15.0-20-generic", module_file=False))
    text = d.detail()
    assert "kernel 4.15.0-20-generic is older than 5.6" in text
    assert "apt install wireguard-dkms linux-headers-4.15.0-20-generic" in text
    assert "apt dist-upgrade" in text and "reboot" in text


def test_secure_boot_rejection_is_passed_through_with_a_fix() -> None:
    text = diagnose(
        facts(modprobe=ModprobeResult(1, "could not insert 'wireguard': Key was rejected by service"))
    ).detail()
    assert "modprobe wireguard: could not insert 'wireguard': Key was rejected by service" in text
    assert "Secure Boot" in text and "mokutil --import" in text


def test_no_support_and_no_modules_dir_explain_in_words() -> None:
    rel = "6.18.44-fc-v782"
    text = diagnose(facts(rel, modules_dir=False, module_file=None, probe=UNSUPPORTED)).detail()
    assert text.startswith("wireguard module cannot be loaded: ")
    assert f"/lib/modules/{rel} does not exist: the kernel was upgraded but the machine not rebooted" in text
    assert "or this is a container" in text
    assert "'Operation not supported': this kernel has no WireGuard support" in text


@pytest.mark.parametrize(
    ("release", "version"),
    [("4.15.0-20-generic", (4, 15)), ("5.6.0", (5, 6)), ("6.18.44-fc-v782", (6, 18)), ("weird", None), ("", None)],
)
def test_kernel_version(release: str, version: tuple[int, int] | None) -> None:
    assert kernel_version(release) == version


# --- gathering, on a fake tree ----------------------------------------------------------------


class FakeHost(ModuleHost):
    """A ModuleHost whose modprobe and probe are scripted (and counted)."""

    def __init__(self, root: Path, release: str, *, modprobe_loads: bool, probe: ProbeResult = UNSUPPORTED) -> None:
        super().__init__(
            sys_module_dir=str(root / "sys-module"), modules_root=str(root / "lib-modules"), release=release
        )
        os.makedirs(self.sys_module_dir, exist_ok=True)
        self.modprobe_loads = modprobe_loads
        self.probe_result = probe
        self.modprobe_calls = 0
        self.probe_calls = 0

        async def prober() -> ProbeResult:
            self.probe_calls += 1
            return self.probe_result

        self.prober = prober

    async def modprobe(self) -> ModprobeResult:
        self.modprobe_calls += 1
        if self.modprobe_loads:
            os.makedirs(os.path.join(self.sys_module_dir, "wireguard"), exist_ok=True)
            return ModprobeResult(0)
        return ModprobeResult(
            1, f"modprobe: FATAL: Module wireguard not found in directory /lib/modules/{self.release}"
        )


def lib_modules(root: Path, release: str, dep: str = "", builtin: str = "") -> None:
    d = root / "lib-modules" / release
    d.mkdir(parents=True)
    (d / "modules.dep").write_text(dep)
    (d / "modules.builtin").write_text(builtin)


async def test_gather_reads_modules_dep_and_builtin(tmp_path: Path) -> None:
    lib_modules(tmp_path, "6.1.0", dep="kernel/drivers/net/wireguard/wireguard.ko.xz: kernel/lib/crypto/libchacha.ko\n")
    host = FakeHost(tmp_path, "6.1.0", modprobe_loads=False)
    f = await host.gather(modprobe=None, probe=None)
    assert (f.loaded, f.builtin, f.modules_dir, f.module_file) == (False, False, True, True)
    lib_modules(
        tmp_path,
        "6.2.0",
        dep="kernel/drivers/net/vxlan/vxlan.ko: \n",
        builtin="kernel/drivers/net/wireguard/wireguard.ko\n",
    )
    f = await FakeHost(tmp_path, "6.2.0", modprobe_loads=False).gather(modprobe=None, probe=None)
    assert (f.builtin, f.module_file) == (True, False)
    f = await FakeHost(tmp_path, "6.3.0", modprobe_loads=False).gather(modprobe=None, probe=None)
    assert (f.modules_dir, f.module_file, f.builtin) == (False, None, False)


async def test_check_runs_modprobe_and_probe_only_when_needed(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, "6.3.0", modprobe_loads=True)
    f = await check_module(host, load=True)
    assert diagnose(f).state == "loaded_now" and (host.modprobe_calls, host.probe_calls) == (1, 0)
    f = await check_module(host, load=True)
    assert diagnose(f).state == "loaded" and (host.modprobe_calls, host.probe_calls) == (1, 0)


async def test_real_modprobe_missing_is_reported_not_raised(tmp_path: Path) -> None:
    host = ModuleHost(
        sys_module_dir=str(tmp_path),
        modules_root=str(tmp_path),
        release="6.1.0",
        modprobe_argv=(str(tmp_path / "no-modprobe"), "wireguard"),
    )
    result = await host.modprobe()
    assert result.returncode is None and "No such file or directory" in result.output


# --- the boot file -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "listed"),
    [
        ("wireguard\n", True),
        ("# keep\nvxlan\nwireguard # for flannel\n", True),
        ("  wireguard  \n", True),
        ("; wireguard\n", False),
        ("#wireguard\n", False),
        ("wireguard-foo\n", False),
        ("", False),
    ],
)
def test_boot_file_lists_module(content: str, listed: bool) -> None:
    assert boot_file_lists_module(content) is listed


def test_with_module_keeps_what_else_the_file_lists() -> None:
    assert with_module("vxlan") == "vxlan\nwireguard\n"
    assert with_module("vxlan\nwireguard\n") == "vxlan\nwireguard\n"
    assert with_module(None).endswith("\nwireguard\n")


def test_ensure_boot_file_writes_only_on_change(tmp_path: Path) -> None:
    path = tmp_path / "modules-load.d" / "wgagent.conf"
    assert ensure_boot_file(str(path)) is True
    assert path.read_text().endswith("wireguard\n")
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    inode = path.stat().st_ino
    assert ensure_boot_file(str(path)) is False
    assert path.stat().st_ino == inode  # not replaced


# --- the part ------------------------------------------------------------------------------------


def part(tmp_path: Path, host: ModuleHost, **cfg: object) -> tuple[ModulePart, State, Path]:
    boot = tmp_path / "etc" / "modules-load.d" / "wgagent.conf"
    wg = WireGuardConfig(modules_load_file=str(boot), **cfg)  # type: ignore[arg-type]
    state = State(node="n1", version="t")
    return ModulePart(state, wg, host), state, boot


async def test_part_loads_the_module_and_makes_it_load_at_boot(tmp_path: Path) -> None:
    p, state, boot = part(tmp_path, FakeHost(tmp_path, "6.1.0", modprobe_loads=True))
    await p.reconcile()
    check = state.checks["wireguard_module"]
    assert check.ok and check.detail == "wireguard module loaded now (modprobe wireguard)"
    assert boot_file_lists_module(boot.read_text())
    assert state.status()["parts"]["wireguard_module"]["boot"] == {"file": str(boot), "lists_wireguard": True}


async def test_part_fails_with_the_reason_and_writes_nothing(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, "4.15.0-20-generic", modprobe_loads=False)
    lib_modules(tmp_path, "4.15.0-20-generic", dep="kernel/net/ipv4/udp_tunnel.ko:\n")
    p, state, boot = part(tmp_path, host)
    await p.reconcile()
    await p.reconcile()
    check = state.checks["wireguard_module"]
    assert not check.ok
    assert "older than 5.6" in check.detail and "wireguard-dkms" in check.detail
    assert "modprobe wireguard: modprobe: FATAL: Module wireguard not found" in check.detail
    assert not boot.exists()
    assert host.probe_calls == 1  # "not supported" does not change until a reboot: asked once
    findings = state.status()["parts"]["wireguard_module"]["findings"]
    assert [f["code"] for f in findings] == ["old_kernel", "no_kernel_support", "modprobe_failed"]


async def test_part_with_manage_module_off_only_reports(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, "6.1.0", modprobe_loads=True)
    p, state, boot = part(tmp_path, host, manage_module=False)
    await p.reconcile()
    assert host.modprobe_calls == 0 and not boot.exists()
    assert "manage_module is false" in state.checks["wireguard_module"].detail


async def test_part_fails_when_the_boot_file_cannot_be_written(tmp_path: Path) -> None:
    (tmp_path / "etc").write_text("a file where a directory should be")
    host = FakeHost(tmp_path, "6.1.0", modprobe_loads=True)
    p, state, boot = part(tmp_path, host)
    await p.reconcile()
    check = state.checks["wireguard_module"]
    assert not check.ok
    assert check.detail.startswith("wireguard module loaded now (modprobe wireguard), but it will not load at boot: ")
    assert str(boot) in check.detail
