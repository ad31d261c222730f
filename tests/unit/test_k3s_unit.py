"""k3s's command line in its unit (ExecStart): flags that beat the drop-in, and --config."""

from __future__ import annotations

from pathlib import Path

import pytest

from wgagent.k3s.install import exec_start, read_unit
from wgagent.k3s.scan import ConfigLocation
from wgagent.k3s.unit import scan_unit

UNIT = "/etc/systemd/system/k3s.service"
INSTALL_SCRIPT_UNIT = """\
[Unit]
Description=Lightweight Kubernetes

[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/local/bin/k3s \\
    server \\
\t'--node-external-ip=198.51.100.9' \\
\t'--flannel-backend' 'vxlan' \\
\t'--flannel-external-ip' \\
\t'--write-kubeconfig-mode=644' \\

"""


def messages(text: str, role: str = "server", config_dir: str = "/etc/rancher/k3s") -> list[str]:
    return [f.message.split(":")[0] for f in scan_unit([(UNIT, text)], role=role, config_dir=config_dir)]


def test_install_script_unit_with_flags_wgagent_owns() -> None:
    assert exec_start([(UNIT, INSTALL_SCRIPT_UNIT)]) == (
        UNIT,
        [
            "/usr/local/bin/k3s",
            "server",
            "--node-external-ip=198.51.100.9",
            "--flannel-backend",
            "vxlan",
            "--flannel-external-ip",
            "--write-kubeconfig-mode=644",
        ],
    )
    assert messages(INSTALL_SCRIPT_UNIT) == [
        "ExecStart sets --node-external-ip=198.51.100.9",
        "ExecStart sets --flannel-backend=vxlan",
        "ExecStart sets --flannel-external-ip",
    ]
    first, *server_flags = scan_unit([(UNIT, INSTALL_SCRIPT_UNIT)], role="agent", config_dir="/etc/rancher/k3s")
    assert first.path == UNIT and "k3s adds it to the drop-in's node-external-ip" in first.message
    # on an agent, k3s's server flags stop it from starting at all
    assert [f.code for f in server_flags] == ["agent_key"] * 3
    assert server_flags[0].message.startswith(
        "ExecStart gives k3s agent --flannel-backend=vxlan, which it does not define: k3s agent will not start "
        '("flag provided but not defined: -flannel-backend")'
    )


def test_a_plain_unit_has_no_findings() -> None:
    assert messages("[Service]\nExecStart=/usr/local/bin/k3s agent --node-label a=b\n", role="agent") == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("--config /srv/k3s.yaml", ["ExecStart makes k3s read /srv/k3s.yaml (--config), so it never reads "]),
        ("-c=/srv/k3s.yaml", ["ExecStart makes k3s read /srv/k3s.yaml (--config), so it never reads "]),
        ("--config /etc/rancher/k3s/config.yaml", []),
    ],
)
def test_config_elsewhere(args: str, expected: list[str]) -> None:
    found = scan_unit([(UNIT, f"[Service]\nExecStart=/usr/local/bin/k3s server {args}\n")], role="server",
                      config_dir="/etc/rancher/k3s")  # fmt: skip
    assert [f.message[: len(e)] for f, e in zip(found, expected, strict=True)] == expected


def test_a_config_flag_beaten_by_k3s_config_file_fails_nothing() -> None:
    """k3s reads K3S_CONFIG_FILE first (pkg/configfilearg): --config is then unused, not a problem."""
    env = ConfigLocation("/etc/k3s/main.yaml", "K3S_CONFIG_FILE in /etc/systemd/system/k3s.service.env:1")
    [f] = scan_unit([(UNIT, "[Service]\nExecStart=/usr/local/bin/k3s server --config /srv/k3s.yaml\n")],
                    role="server", config_dir=env)  # fmt: skip
    assert (f.error, f.code) == (False, "exec_config_unused")
    assert "--config /srv/k3s.yaml is not used: K3S_CONFIG_FILE in" in f.message


def test_dropin_clearing_exec_start_replaces_it() -> None:
    dropin = "[Service]\nExecStart=\nExecStart=/usr/local/bin/k3s server\n"
    assert exec_start([(UNIT, INSTALL_SCRIPT_UNIT), (UNIT + ".d/override.conf", dropin)]) == (
        UNIT + ".d/override.conf",
        ["/usr/local/bin/k3s", "server"],
    )
    assert scan_unit([(UNIT, INSTALL_SCRIPT_UNIT), ("o.conf", dropin)], role="server", config_dir="/x") == []


def test_exec_start_outside_service_section_and_comments_are_ignored() -> None:
    text = "[Unit]\nExecStart=/bin/false --node-external-ip=1.1.1.1\n[Service]\n# ExecStart=--flannel-backend=x\n"
    assert exec_start([(UNIT, text)]) is None


def test_read_unit_takes_the_highest_priority_file_and_all_dropins(tmp_path: Path) -> None:
    etc, lib = tmp_path / "etc", tmp_path / "lib"
    for d in (etc / "k3s.service.d", lib / "k3s.service.d"):
        d.mkdir(parents=True)
    (etc / "k3s.service").write_text("etc")
    (lib / "k3s.service").write_text("lib")
    (etc / "k3s.service.d" / "20-b.conf").write_text("etc-b")
    (lib / "k3s.service.d" / "20-b.conf").write_text("lib-b (hidden)")
    (lib / "k3s.service.d" / "10-a.conf").write_text("lib-a")
    (lib / "k3s.service.d" / "notes.txt").write_text("no")
    unit = read_unit("k3s.service", [str(etc), str(tmp_path / "none"), str(lib)])
    assert unit is not None and list(unit.files) == [
        (str(etc / "k3s.service"), "etc"),
        (str(lib / "k3s.service.d" / "10-a.conf"), "lib-a"),
        (str(etc / "k3s.service.d" / "20-b.conf"), "etc-b"),
    ]
