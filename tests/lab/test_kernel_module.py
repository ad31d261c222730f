"""The module keeper and ``wgagent doctor`` on two real kernels, in user-mode Linux (tests/uml).

- ``wireguard``: Linux 6.1.192 from Debian's linux-source-6.1 with ``CONFIG_WIREGUARD=y``
  (``scripts/uml-kernel``). WireGuard is built in: ``/sys/module/wireguard`` has ``version``
  and no ``initstate``, and there is no ``/lib/modules/6.1.192`` at all.
- ``stock``: Debian's ``user-mode-linux`` package, Linux 6.1.176 without WireGuard
  (``# CONFIG_WIREGUARD is not set`` in its config.gz), its modules in
  ``/usr/lib/uml/modules/6.1.176``. ``modprobe wireguard`` fails there with exactly the
  seed's message, and a ``wireguard`` link cannot be made.

Both run under Debian's /usr/bin/python3, as the .deb does. Nothing is written outside the
kernel's tmpfs: the boot file is configured under the test's tmp_path.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, require
from tests.support import configs
from wgagent.config import WireGuardConfig
from wgagent.state import State
from wgagent.wireguard.module import ModuleHost, ModulePart

pytest_plugins = ("tests.uml.plugin",)

DEBIAN = pytest.mark.parametrize("python", ["debian"])
SEED = "modprobe: FATAL: Module wireguard not found in directory /lib/modules/{release}"


def keep_module(tmp_path: Path, host: ModuleHost) -> tuple[State, Path]:
    """One pass of the module keeper; its state and where its boot file would be."""
    boot = tmp_path / "modules-load.d" / "wgagent.conf"
    state = State(node="uml", version="test")
    asyncio.run(ModulePart(state, WireGuardConfig(modules_load_file=str(boot)), host).reconcile())
    return state, boot


def doctor(tmp_path: Path) -> tuple[int, list[dict[str, Any]], str]:
    """``wgagent doctor --json`` as a person runs it (the real module facts), and its text."""
    cfg = configs.sandbox(str(tmp_path), 18795, wireguard={"enabled": True, "manage_module": True})
    path = configs.write(str(tmp_path / "config.yaml"), cfg)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "wgagent", "--config", path, "doctor"]
    data = subprocess.run([*argv, "--json"], capture_output=True, text=True, timeout=120, env=env)
    text = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert "Traceback" not in data.stderr + text.stderr
    assert data.returncode == text.returncode
    kernel = [f for f in json.loads(data.stdout)["findings"] if f["area"] == "kernel"]
    return data.returncode, kernel, text.stdout


def modprobe_spy(tmp_path: Path) -> tuple[tuple[str, ...], Path]:
    """A modprobe that only records that it ran."""
    calls = tmp_path / "modprobe-calls"
    return ("sh", "-c", f'echo "$0 $*" >> {calls}; exit 1', "modprobe", "wireguard"), calls


@pytest.mark.kernel("wireguard")
@DEBIAN
def test_the_keeper_on_built_in_wireguard_runs_no_modprobe_and_writes_no_boot_file(python: str, tmp_path: Path) -> None:
    sysfs = Path("/sys/module/wireguard")
    assert (sysfs / "version").exists() and not (sysfs / "initstate").exists()  # built in, as the config says
    assert not os.path.exists(f"/lib/modules/{os.uname().release}")
    argv, calls = modprobe_spy(tmp_path)
    state, boot = keep_module(tmp_path, ModuleHost(modprobe_argv=argv))
    check = state.checks["wireguard_module"]
    assert (check.ok, check.detail) == (True, "WireGuard is built into the kernel")
    section = state.status()["parts"]["wireguard_module"]
    assert (section["state"], section["modprobe"], section["probe"], section["findings"]) == ("builtin", None, None, [])
    assert not calls.exists(), "modprobe ran"
    # A boot file listing wireguard would make systemd-modules-load fail at every boot here:
    # there is no module to load (no /lib/modules/<release>, nothing in modules.builtin).
    assert not boot.exists() and section["boot"] == {"file": str(boot)}


@pytest.mark.kernel("wireguard")
@DEBIAN
def test_doctor_on_built_in_wireguard_finds_the_kernel_fine(python: str, tmp_path: Path) -> None:
    code, kernel, text = doctor(tmp_path)
    release = os.uname().release
    assert kernel == [
        {
            "severity": "ok",
            "area": "kernel",
            "title": f"WireGuard is available in kernel {release}",
            "detail": "WireGuard is built into the kernel",
            "fix": "",
        }
    ]
    assert f"ok       WireGuard is available in kernel {release}" in text
    assert code == 1  # for the rest of this bare machine: no k3s


@pytest.mark.kernel("stock")
@DEBIAN
def test_the_keeper_on_the_stock_kernel_names_the_seeds_error_and_the_fixes(python: str, tmp_path: Path) -> None:
    require("ip", "modprobe")
    release = os.uname().release
    # Ground truth, without wgagent: no such module, and no such link kind.
    assert not os.path.exists("/sys/module/wireguard")
    made = subprocess.run(["ip", "link", "add", "wgt0", "type", "wireguard"], capture_output=True, text=True)
    assert made.returncode != 0 and "Unknown device type" in made.stderr
    state, boot = keep_module(tmp_path, ModuleHost())
    check = state.checks["wireguard_module"]
    section = state.status()["parts"]["wireguard_module"]
    assert not check.ok and not boot.exists()
    assert [f["code"] for f in section["findings"]] == ["no_modules_dir", "no_kernel_support", "modprobe_failed"]
    assert section["modprobe"] == {"rc": 1, "output": SEED.format(release=release)}
    assert section["probe"]["result"] == "unsupported"
    assert check.detail.startswith("wireguard module cannot be loaded: ")
    assert f"/lib/modules/{release} does not exist" in check.detail
    assert "creating a wireguard link answers 'Operation not supported'" in check.detail
    assert "fix: boot a kernel with WireGuard (5.6 or later)" in check.detail
    assert check.detail.endswith(f"modprobe wireguard: {SEED.format(release=release)}")


@pytest.mark.kernel("stock")
@DEBIAN
def test_the_keeper_with_the_stock_kernels_own_modules_tree(python: str, tmp_path: Path) -> None:
    """The same kernel with its real modules tree (Debian's, bind-mounted inside the kernel's
    tmpfs; ``modprobe -d`` looks there): every module but WireGuard is in its modules.dep."""
    release = os.uname().release
    root = tmp_path / "root"
    tree = root / "lib" / "modules" / release
    tree.mkdir(parents=True)
    subprocess.run(["mount", "--bind", f"/usr/lib/uml/modules/{release}", str(tree)], check=True)
    try:
        assert "veth.ko" in tree.joinpath("modules.dep").read_text()
        host = ModuleHost(
            modules_root=str(root / "lib" / "modules"), modprobe_argv=("modprobe", "-d", str(root), "wireguard")
        )
        state, _ = keep_module(tmp_path, host)
    finally:
        subprocess.run(["umount", str(tree)], check=True)
    section = state.status()["parts"]["wireguard_module"]
    assert section["module_file"] is False
    assert [f["code"] for f in section["findings"]] == ["not_built", "no_kernel_support", "modprobe_failed"]
    assert section["modprobe"]["output"] == f"modprobe: FATAL: Module wireguard not found in directory {tree}"
    detail = state.checks["wireguard_module"].detail
    assert f"kernel {release} has no wireguard module in /lib/modules/{release} and does not have it built in" in detail


@pytest.mark.kernel("stock")
@DEBIAN
def test_doctor_on_the_stock_kernel_names_the_seeds_error_and_the_fixes(python: str, tmp_path: Path) -> None:
    code, kernel, text = doctor(tmp_path)
    release = os.uname().release
    titles = {f["title"]: f for f in kernel}
    assert list(titles) == [
        f"/lib/modules/{release} is missing (kernel {release})",
        f"no WireGuard support in kernel {release} ('Operation not supported')",
        f"modprobe wireguard fails (kernel {release})",
    ]
    assert all(f["severity"] == "problem" and f["fix"] for f in kernel)
    seed = titles[f"modprobe wireguard fails (kernel {release})"]
    assert seed["detail"] == f"modprobe wireguard: {SEED.format(release=release)}"
    assert "or boot a kernel with WireGuard: apt update && apt dist-upgrade && reboot" in seed["fix"]
    assert SEED.format(release=release) in text and code == 1
