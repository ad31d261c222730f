"""The Debian package, the man page and the systemd unit agree with the code they ship.

Plain file checks (no dpkg, no systemd): the version has one value everywhere, the man
page documents every config key, command, endpoint and exit code, the package depends on
a Debian package for every Python dependency, and the unit's sandbox still lets the agent
write where its defaults point.
"""

from __future__ import annotations

import importlib.util
import os
import re
import tomllib
from types import ModuleType

import pytest

from wgagent import __version__, cli, commands, config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read(*parts: str) -> str:
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def manpage_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wgagent_manpage", os.path.join(ROOT, "packaging", "manpage.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def unit_settings(text: str, section: str) -> dict[str, list[str]]:
    """``Key=value`` lines of one section of a unit file, every value of a repeated key."""
    out: dict[str, list[str]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            continue
        if current == section:
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def control_field(paragraph: str, name: str) -> list[str]:
    """A comma-separated relation field of debian/control, one package name per entry."""
    lines = [ln for ln in paragraph.splitlines() if not ln.startswith("#")]
    text = "\n".join(lines)
    match = re.search(rf"^{name}:(.*?)(?=^\S|\Z)", text, re.M | re.S)
    assert match, f"no {name}: field"
    names = []
    for entry in match.group(1).split(","):
        entry = entry.strip()
        if entry.startswith("${"):
            names.append(entry)
        elif entry:
            names.append(re.split(r"[\s(:]", entry, maxsplit=1)[0])
    return names


# --- the version ---------------------------------------------------------------------------


def test_version_is_the_same_in_the_code_pyproject_and_the_debian_changelog() -> None:
    pyproject = tomllib.loads(read("pyproject.toml"))["project"]
    first = read("packaging", "debian", "changelog").splitlines()[0]
    match = re.match(r"^wgagent \(([^)]+)\) \S+; urgency=\w+$", first)
    assert match, first
    # Native package: no Debian revision, so the .deb is wgagent_<__version__>_all.deb.
    assert match.group(1) == __version__
    assert pyproject.get("version", __version__) == __version__


# --- the man page --------------------------------------------------------------------------


def test_man_page_config_section_is_rendered_from_the_current_schema() -> None:
    mp = manpage_module()
    _, generated, _ = mp.split(read("packaging", "wgagent.8"))
    assert generated == mp.render_config_keys(), "run: python3 packaging/manpage.py"


def test_man_page_names_every_config_key_with_its_default() -> None:
    mp = manpage_module()
    _, generated, _ = mp.split(read("packaging", "wgagent.8"))
    keys = "\n".join(generated) + "\n"
    for name, default, _doc in config.reference():
        entry = f".B {mp.escape(name)}\n"
        assert entry in keys, f"{name} is missing from wgagent(8)"
        after = keys.split(entry, 1)[1].split(".TP", 1)[0]
        assert f"Default: \\fB{mp.escape(mp.show_default(default))}\\fR." in after, name


def test_man_page_troff_escaping() -> None:
    mp = manpage_module()
    assert mp.escape("k3s-agent") == "k3s\\-agent"
    assert mp.escape(".hidden") == "\\&.hidden"
    assert mp.escape("a\\b") == "a\\eb"
    assert mp.show_default(None) == "unset"
    assert mp.show_default(()) == "[] (none)"
    assert mp.show_default(20.0) == "20"
    assert mp.show_default(0.5) == "0.5"


def test_man_page_lists_every_command_endpoint_and_exit_code() -> None:
    page = read("packaging", "wgagent.8")
    section = page.split(".SH COMMANDS", 1)[1].split(".SH ", 1)[0]
    parser = cli._parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in sub.choices:  # type: ignore[union-attr]
        assert re.search(rf"^\.BR? {name}\b", section, re.M), f"command {name} is not in COMMANDS"
    for path in ("/livez", "/healthz", "/status", "/metrics"):
        assert f"GET {path}" in page
    exits = page.split(".SH EXIT STATUS", 1)[1].split(".SH ", 1)[0]
    for code in (commands.EXIT_OK, commands.EXIT_FAIL, commands.EXIT_USAGE, commands.EXIT_NOT_RUNNING, 70, 130):
        assert f".B {code}\n" in exits, f"exit code {code}"
    files = page.split(".SH FILES", 1)[1]
    for path in (config.DEFAULT_PATH, config.Config().state_dir, config.Config().wireguard.modules_load_file):
        assert f".I {path.replace('-', chr(92) + '-')}" in files, path


# --- debian/ -------------------------------------------------------------------------------

# What each Python distribution the code needs is called in Debian.
DEBIAN_NAME = {
    "aiohttp": "python3-aiohttp",
    "pyroute2": "python3-pyroute2",
    "sdnotify": "python3-sdnotify",
    "pyyaml": "python3-yaml",
}


def test_every_python_dependency_is_a_debian_dependency_and_nothing_comes_from_pypi() -> None:
    binary = read("packaging", "debian", "control").split("\nPackage: wgagent\n", 1)[1]
    depends = control_field(binary, "Depends")
    requires = tomllib.loads(read("pyproject.toml"))["project"]["dependencies"]
    for req in requires:
        dist = re.split(r"[<>=!~ \[;]", req, maxsplit=1)[0].lower()
        assert dist in DEBIAN_NAME, f"{dist}: which Debian package ships it? add it to DEBIAN_NAME and Depends"
        assert DEBIAN_NAME[dist] in depends, f"{DEBIAN_NAME[dist]} is missing from Depends"
    allowed = {"python3", "procps", "${misc:Depends}", "${python3:Depends}", *DEBIAN_NAME.values()}
    assert set(depends) <= allowed, set(depends) - allowed
    assert control_field(binary, "Recommends") == ["nftables", "wireguard-tools"]  # nft: the mesh counters
    assert re.search(r"^Architecture: all$", binary, re.M)
    assert "debhelper-compat (= 13)" in read("packaging", "debian", "control")


def test_procps_is_a_dependency_because_the_unit_reloads_with_bin_kill() -> None:
    service = unit_settings(read("systemd", "wgagent.service"), "Service")
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    binary = read("packaging", "debian", "control").split("\nPackage: wgagent\n", 1)[1]
    assert "procps" in control_field(binary, "Depends")


def test_installed_files_exist_in_the_tree() -> None:
    for line in read("packaging", "debian", "wgagent.install").splitlines():
        src, _dest = line.split()
        assert os.path.isfile(os.path.join(ROOT, src)), src
    assert "examples/config.yaml etc/wgagent/" in read("packaging", "debian", "wgagent.install")
    assert "systemd/wgagent.service lib/systemd/system/" in read("packaging", "debian", "wgagent.install")
    for line in read("packaging", "debian", "wgagent.manpages").splitlines():
        assert os.path.isfile(os.path.join(ROOT, line)), line
    assert read("packaging", "debian", "wgagent.dirs").split() == [config.Config().state_dir.lstrip("/")]


def test_service_is_not_enabled_or_started_by_the_package_and_upgrades_try_restart() -> None:
    rules = read("packaging", "debian", "rules")
    assert "dh_installsystemd --no-enable --no-start --restart-after-upgrade" in rules
    # --no-start drops debhelper's stop-on-remove snippet; the prerm must do it.
    prerm = read("packaging", "debian", "wgagent.prerm")
    assert 'if [ "$1" = remove ]' in prerm and "deb-systemd-invoke stop wgagent.service" in prerm
    assert prerm.index("deb-systemd-invoke stop") < prerm.index("#DEBHELPER#")


def test_purge_removes_the_state_and_what_the_daemon_wrote_but_remove_keeps_them() -> None:
    postrm = read("packaging", "debian", "wgagent.postrm")
    purge = postrm.split('if [ "$1" = purge ]; then', 1)[1].split("fi", 1)[0]
    defaults = config.Config()
    assert f"rm -rf {defaults.state_dir}" in purge
    assert f"rm -f {defaults.wireguard.modules_load_file}" in purge
    assert '"$1" = remove' not in postrm


def test_source_format_and_copyright_are_machine_readable() -> None:
    assert read("packaging", "debian", "source", "format").strip() == "3.0 (native)"
    copyright_text = read("packaging", "debian", "copyright")
    assert copyright_text.startswith("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/")
    assert "License: Apache-2.0" in copyright_text


# --- the systemd unit ----------------------------------------------------------------------

UNIT = read("systemd", "wgagent.service")


def test_unit_runs_the_daemon_as_a_notify_service_with_watchdog_and_reload() -> None:
    unit = unit_settings(UNIT, "Unit")
    service = unit_settings(UNIT, "Service")
    assert service["Type"] == ["notify"]
    assert service["ExecStart"] == ["/usr/bin/wgagent run"]
    assert service["Restart"] == ["on-failure"]
    assert service["WatchdogSec"] and service["WatchdogSec"][0] != "0"
    assert set(unit["Before"][0].split()) >= {"k3s.service", "k3s-agent.service"}
    assert "network-online.target" in unit["After"][0].split()
    assert "man:wgagent(8)" in unit["Documentation"][0].split()
    assert unit_settings(UNIT, "Install")["WantedBy"] == ["multi-user.target"]


def test_unit_sandbox_keeps_what_the_agent_needs() -> None:
    service = unit_settings(UNIT, "Service")
    caps = set(" ".join(service["CapabilityBoundingSet"]).split())
    assert caps == {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_MODULE"}
    families = set(" ".join(service["RestrictAddressFamilies"]).split())
    assert families == {"AF_UNIX", "AF_NETLINK", "AF_INET", "AF_INET6", "AF_PACKET"}
    syscalls = " ".join(service["SystemCallFilter"]).split()
    assert "@system-service" in syscalls and "@module" in syscalls
    assert not any(s.startswith("~") for s in syscalls), "a deny list would need to spare @module"
    # modprobe, real root (systemctl try-restart k3s), the host's network.
    for key in ("ProtectKernelModules", "PrivateUsers", "PrivateNetwork", "DynamicUser", "User", "ProcSubset"):
        assert service.get(key, ["no"])[-1] in ("no", "false", "all", "root"), key
    assert service["ProtectSystem"] == ["strict"]


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(config.Config().state_dir, id="state_dir"),
        pytest.param(os.path.join(config.Config().k3s.config_dir, "config.yaml.d", "x.yaml"), id="k3s.config_dir"),
        pytest.param(config.Config().wireguard.modules_load_file, id="wireguard.modules_load_file"),
    ],
)
def test_unit_lets_the_agent_write_where_its_defaults_point(path: str) -> None:
    service = unit_settings(UNIT, "Service")
    writable = [p.lstrip("-") for p in " ".join(service.get("ReadWritePaths", [])).split()]
    writable += ["/var/lib/" + d for d in " ".join(service.get("StateDirectory", [])).split()]
    writable += ["/etc/" + d for d in " ".join(service.get("ConfigurationDirectory", [])).split()]
    assert any(path == w or path.startswith(w.rstrip("/") + "/") for w in writable), (path, writable)


def test_every_kept_exposure_is_explained_in_a_comment() -> None:
    comments = "\n".join(line for line in UNIT.splitlines() if line.startswith("#"))
    for needle in (
        "CAP_NET_ADMIN",
        "CAP_SYS_MODULE",
        "CAP_NET_RAW",
        "AF_PACKET",
        "nft",
        "ProtectKernelModules",
        "ProcSubset",
        "AF_UNIX",
        "AF_NETLINK",
        "AF_INET",
        "PrivateNetwork",
        "PrivateUsers",
        "root",
    ):
        assert needle in comments, f"the unit keeps {needle} without saying why"
