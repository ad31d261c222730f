"""Built in or loaded, told from /sys/module alone, as on a kernel without /lib/modules.

The shapes are what Linux 6.1 makes (seen in the UML kernels of tests/lab/test_kernel_module.py):
a built-in WireGuard has ``/sys/module/wireguard`` with ``uevent`` and ``version`` only
(kernel/params.c ``version_sysfs_builtin``); a loaded module has ``initstate``, ``refcnt``,
``holders``... too (kernel/module/main.c ``modinfo_attrs``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from wgagent.wireguard.module import ModuleHost, check_module, diagnose

BUILT_IN = ("uevent", "version")
LOADED = ("uevent", "version", "initstate", "refcnt", "coresize")


@pytest.mark.parametrize(
    ("files", "builtin", "loaded"),
    [
        pytest.param(BUILT_IN, True, True, id="built-in"),
        pytest.param(LOADED, False, True, id="loaded-module"),
        pytest.param((), False, True, id="bare-directory"),  # what other tests' fakes make: loaded
        pytest.param(None, False, False, id="absent"),
    ],
)
def test_sysfs_tells_built_in_from_loaded(
    tmp_path: Path, files: tuple[str, ...] | None, builtin: bool, loaded: bool
) -> None:
    if files is not None:
        (tmp_path / "wireguard").mkdir()
        for name in files:
            (tmp_path / "wireguard" / name).write_text("1.0.0\n")
    host = ModuleHost(sys_module_dir=str(tmp_path), modules_root=str(tmp_path / "no-lib-modules"), release="6.1.192")
    assert (host.builtin(), host.loaded()) == (builtin, loaded)


async def test_a_built_in_wireguard_needs_no_modprobe_and_no_boot_file(tmp_path: Path) -> None:
    (tmp_path / "wireguard").mkdir()
    for name in BUILT_IN:
        (tmp_path / "wireguard" / name).write_text("1.0.0\n")

    async def never() -> None:
        raise AssertionError("neither modprobe nor the probe may run")

    host = ModuleHost(sys_module_dir=str(tmp_path), modules_root=str(tmp_path / "none"), release="6.1.192")
    host.modprobe = never  # type: ignore[method-assign,assignment]
    host.prober = never  # type: ignore[assignment]
    facts = await check_module(host, load=True)
    assert diagnose(facts).state == "builtin"
