"""Role detection from fake unit directories and data dirs; the node name as k3s derives it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wgagent.config import Config, K3sConfig
from wgagent.k3s import Role, detect_role, node_name, role_missing_detail

UNIT = "[Service]\nExecStart=/usr/local/bin/k3s server\n"


class Host:
    """A fake root: unit dirs (highest priority first) and a k3s data dir."""

    def __init__(self, root: Path) -> None:
        self.etc = root / "etc-systemd"
        self.lib = root / "lib-systemd"
        for d in (self.etc, self.lib):
            d.mkdir()
        self.data = root / "var-lib-rancher-k3s"
        self.cfg = K3sConfig(data_dir=str(self.data))

    @property
    def dirs(self) -> tuple[str, ...]:
        return (str(self.etc), str(root_missing(self.etc)), str(self.lib))

    def unit(self, where: Path, name: str, text: str = UNIT) -> str:
        path = where / name
        path.write_text(text)
        return str(path)

    def mask(self, where: Path, name: str) -> None:
        os.symlink(os.devnull, where / name)

    def data_dir(self, *subdirs: str) -> None:
        for sub in subdirs:
            (self.data / sub).mkdir(parents=True)

    def detect(self) -> Role | None:
        return detect_role(self.cfg, unit_dirs=self.dirs)


def root_missing(path: Path) -> Path:
    return path.parent / "run-systemd-does-not-exist"


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def test_server_unit(host: Host) -> None:
    path = host.unit(host.etc, "k3s.service")
    assert host.detect() == Role("server", "k3s.service", f"unit {path}")


def test_agent_unit_in_a_lower_priority_dir(host: Host) -> None:
    path = host.unit(host.lib, "k3s-agent.service")
    assert host.detect() == Role("agent", "k3s-agent.service", f"unit {path}")


def test_unit_wins_over_data_dir(host: Host) -> None:
    host.unit(host.etc, "k3s-agent.service")
    host.data_dir("server", "agent")
    role = host.detect()
    assert role is not None and role.name == "agent"


@pytest.mark.parametrize("how", ["symlink", "empty"])
def test_masked_unit_does_not_count_even_with_a_copy_below(host: Host, how: str) -> None:
    host.unit(host.lib, "k3s.service")
    if how == "symlink":
        host.mask(host.etc, "k3s.service")
    else:
        host.unit(host.etc, "k3s.service", "")
    host.unit(host.lib, "k3s-agent.service")
    role = host.detect()
    assert role is not None and (role.name, role.unit) == ("agent", "k3s-agent.service")


def test_data_dir_of_a_server_has_an_agent_dir_too(host: Host) -> None:
    host.data_dir("server", "agent")
    assert host.detect() == Role("server", "k3s.service", f"data dir {host.data}/server")


def test_data_dir_of_an_agent(host: Host) -> None:
    host.data_dir("agent")
    assert host.detect() == Role("agent", "k3s-agent.service", f"data dir {host.data}/agent")


def test_both_units_decided_by_the_data_dir(host: Host) -> None:
    host.unit(host.etc, "k3s.service")
    host.unit(host.etc, "k3s-agent.service")
    assert host.detect() is None
    assert "both k3s.service and k3s-agent.service exist" in role_missing_detail(host.cfg, host.dirs)
    host.data_dir("agent")
    role = host.detect()
    assert role is not None and role.name == "agent" and "both units exist" in role.how


def test_nothing_installed(host: Host) -> None:
    assert host.detect() is None
    detail = role_missing_detail(host.cfg, host.dirs)
    assert detail.startswith("no k3s found: neither k3s.service nor k3s-agent.service in ")
    assert str(host.etc) in detail and "set k3s.role" in detail


@pytest.mark.parametrize(("role", "unit"), [("server", "k3s.service"), ("agent", "k3s-agent.service")])
def test_configured_role_needs_no_detection(host: Host, role: str, unit: str) -> None:
    host.unit(host.etc, "k3s.service" if role == "agent" else "k3s-agent.service")
    cfg = K3sConfig(role=role, data_dir=str(host.data))
    assert detect_role(cfg, unit_dirs=host.dirs) == Role(role, unit, f"k3s.role: {role}")


# --- node name ----------------------------------------------------------------------------------


def name_of(cfg: Config, files: dict[str, bytes], node_id: str | None = None) -> tuple[str, str]:
    result = node_name(cfg, files, hostname=lambda: "Web-Host.Example", node_id=lambda: node_id)
    return result.name, result.source


def test_wgagents_node_name_is_taken_as_is() -> None:
    files = {"config.yaml": b"node-name: other\nwith-node-id: true\n"}
    assert name_of(Config(node_name="web-1"), files) == ("web-1", "wgagent node_name")


def test_hostname_lower_cased_like_k3s() -> None:
    assert name_of(Config(), {}) == ("web-host.example", "hostname")


def test_node_name_from_k3s_config_last_file_wins_and_is_lower_cased() -> None:
    files = {
        "config.yaml": b"node-name: first\n",
        "config.yaml.d/20-name.yaml": b"\nnode-name: Second\n",
        "config.yaml.d/notes.txt": b"node-name: ignored\n",
    }
    assert name_of(Config(), files) == ("second", "node-name in /etc/rancher/k3s/config.yaml.d/20-name.yaml:2")


@pytest.mark.parametrize("flag", [b"true", b"'true'", b"yes", b"1"])
def test_with_node_id_appends_the_id(flag: bytes) -> None:
    files = {"config.yaml": b"with-node-id: " + flag + b"\n"}
    name, source = name_of(Config(), files, node_id="1a2b3c4d")
    assert name == "web-host.example-1a2b3c4d"
    assert "with-node-id" in source


def test_with_node_id_false_or_id_not_created_yet() -> None:
    assert name_of(Config(), {"config.yaml": b"with-node-id: false\n"}, node_id="1a2b3c4d")[0] == "web-host.example"
    name, source = name_of(Config(), {"config.yaml": b"with-node-id: true\n"}, node_id=None)
    assert name == "web-host.example" and "does not exist yet" in source


def test_node_name_reads_k3s_config_dir_when_no_files_given(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("node-name: from-disk\n")
    cfg = Config(k3s=K3sConfig(config_dir=str(tmp_path)))
    assert node_name(cfg, hostname=lambda: "h").name == "from-disk"
