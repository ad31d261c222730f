"""Role detection from fake unit directories and data dirs; the node name as k3s derives it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wgagent.config import Config, K3sConfig
from wgagent.k3s.install import RoleDecision, decide_role, find_units
from wgagent.k3s.role import Role, decide_identity_from, detect_role, node_name, role_missing_detail

UNIT = "[Service]\nExecStart=/usr/local/bin/k3s server\n"


class Host:
    """A fake root: unit dirs (highest priority first) and a k3s data dir."""

    def __init__(self, root: Path) -> None:
        self.etc = root / "etc-systemd"
        self.lib = root / "lib-systemd"
        for d in (self.etc, self.lib):
            d.mkdir(parents=True)
        self.data = root / "var-lib-rancher-k3s"
        root.mkdir(exist_ok=True)
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

    def enable(self, name: str) -> None:
        wants = self.etc / "multi-user.target.wants"
        wants.mkdir(exist_ok=True)
        os.symlink(self.etc / name, wants / name)

    def detect(self) -> Role | None:
        return detect_role(self.cfg, unit_dirs=self.dirs)

    def decide(self) -> RoleDecision:
        data_dirs = {r: (self.data / r).is_dir() for r in ("server", "agent")}
        return decide_role(self.cfg.role, self.cfg.unit, find_units(self.dirs), data_dirs)


def root_missing(path: Path) -> Path:
    return path.parent / "run-systemd-does-not-exist"


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


AGENT_UNIT = "[Service]\nExecStart=/usr/local/bin/k3s agent --node-label a=b\n"


def test_server_unit(host: Host) -> None:
    path = host.unit(host.etc, "k3s.service")
    assert host.detect() == Role("server", "k3s.service", f"ExecStart of {path}")


def test_agent_unit_in_a_lower_priority_dir(host: Host) -> None:
    path = host.unit(host.lib, "k3s-agent.service", AGENT_UNIT)
    assert host.detect() == Role("agent", "k3s-agent.service", f"ExecStart of {path}")


def test_unit_wins_over_a_stale_server_data_dir_and_says_so(host: Host) -> None:
    host.unit(host.etc, "k3s-agent.service", AGENT_UNIT)
    host.data_dir("server", "agent")
    decision = host.decide()
    assert decision.role is not None and decision.role.name == "agent"
    assert decision.notes == ("a server data dir is left from an earlier install (k3s agent does not use it)",)


def test_install_k3s_name_units_are_found_and_their_execstart_tells_the_role(host: Host) -> None:
    # install.sh: INSTALL_K3S_NAME=edge makes k3s-edge.service for either role
    path = host.unit(host.etc, "k3s-edge.service", AGENT_UNIT)
    assert host.detect() == Role("agent", "k3s-edge.service", f"ExecStart of {path}")


def test_a_unit_named_for_a_server_that_runs_an_agent_is_an_agent_with_a_note(host: Host) -> None:
    host.unit(host.etc, "k3s.service", AGENT_UNIT)
    decision = host.decide()
    assert decision.role is not None and decision.role.name == "agent"
    assert decision.notes == ("k3s.service is named for a server but its ExecStart runs k3s agent",)


@pytest.mark.parametrize("how", ["symlink", "empty"])
def test_masked_unit_does_not_count_even_with_a_copy_below(host: Host, how: str) -> None:
    host.unit(host.lib, "k3s.service")
    if how == "symlink":
        host.mask(host.etc, "k3s.service")
    else:
        host.unit(host.etc, "k3s.service", "")
    host.unit(host.lib, "k3s-agent.service", AGENT_UNIT)
    role = host.detect()
    assert role is not None and (role.name, role.unit) == ("agent", "k3s-agent.service")


def test_data_dir_alone_is_weak_evidence(host: Host) -> None:
    host.data_dir("server", "agent")  # a server has an agent dir too
    role = host.detect()
    assert role == Role("server", "k3s.service", "data dir server/ (no k3s unit found)", certain=False)
    host2 = Host(host.data.parent / "other")
    host2.data_dir("agent")
    role2 = host2.detect()
    assert role2 is not None and (role2.name, role2.certain) == ("agent", False)


def test_two_units_the_enabled_one_runs_k3s(host: Host) -> None:
    host.unit(host.etc, "k3s.service")
    host.unit(host.etc, "k3s-agent.service", AGENT_UNIT)
    decision = host.decide()
    assert decision.role is None
    assert decision.conflict.startswith("several k3s units could run here: k3s-agent.service (k3s agent), k3s.service")
    assert "set k3s.unit" in decision.conflict
    host.enable("k3s-agent.service")
    decision = host.decide()
    assert decision.role is not None and decision.role.name == "agent"
    assert decision.notes == ("k3s.service is not enabled: ignored",)
    host.enable("k3s.service")  # both enabled: the evidence disagrees again
    assert host.decide().role is None


def test_nothing_installed(host: Host) -> None:
    assert host.detect() is None
    detail = role_missing_detail(host.cfg, host.dirs)
    assert detail.startswith("no k3s found: neither k3s.service nor k3s-agent.service (nor another k3s-*.service) in ")
    assert str(host.etc) in detail and "set k3s.role" in detail


@pytest.mark.parametrize(("role", "unit"), [("server", "k3s.service"), ("agent", "k3s-agent.service")])
def test_configured_role_needs_no_detection(host: Host, role: str, unit: str) -> None:
    if role == "agent":
        host.unit(host.etc, "k3s.service")  # a server unit: not the one of the configured role
    else:
        host.unit(host.etc, "k3s-agent.service", AGENT_UNIT)
    cfg = K3sConfig(role=role, data_dir=str(host.data))
    assert detect_role(cfg, unit_dirs=host.dirs) == Role(role, unit, f"k3s.role: {role}")


def test_configured_unit_and_its_execstart(host: Host) -> None:
    host.unit(host.etc, "k3s-x.service", AGENT_UNIT)
    cfg = K3sConfig(unit="k3s-x.service", data_dir=str(host.data))
    assert detect_role(cfg, unit_dirs=host.dirs) == Role(
        "agent", "k3s-x.service", "k3s.unit: k3s-x.service, its ExecStart"
    )
    missing = K3sConfig(unit="k3s-y.service", data_dir=str(host.data))
    decision = decide_role("auto", "k3s-y.service", find_units(host.dirs, named="k3s-y.service"), {})
    assert (
        decision.role is None
        and decision.conflict == "k3s.unit k3s-y.service does not exist; set k3s.role to server or agent"
    )
    assert detect_role(missing, unit_dirs=host.dirs) is None


# --- the unit's environment and command line -------------------------------------------------------


def test_identity_follows_the_units_environment_and_command_line(host: Host, tmp_path: Path) -> None:
    elsewhere = tmp_path / "k3s-conf"
    (elsewhere / "main.yaml.d").mkdir(parents=True)
    (elsewhere / "main.yaml").write_text("node-name: From-File\n")
    env_file = host.etc / "k3s-agent.service.env"
    env_file.write_text(f"K3S_CONFIG_FILE='{elsewhere}/main.yaml'\nK3S_TOKEN=secret\nK3S_DATA_DIR=/srv/k3s\n")
    host.unit(
        host.etc,
        "k3s-agent.service",
        f"[Service]\nEnvironmentFile=-/etc/default/%N\nEnvironmentFile=-{env_file}\n"
        "ExecStart=/usr/local/bin/k3s agent --node-label a=b\n",
    )
    ident = decide_identity_from(Config(k3s=host.cfg), unit_dirs=host.dirs, hostname=lambda: "h")
    assert ident.role is not None and ident.role.name == "agent"
    assert ident.config.main == f"{elsewhere}/main.yaml"
    assert ident.config.source == f"K3S_CONFIG_FILE in {env_file}:1"
    assert (ident.node, ident.node_source) == ("from-file", f"node-name in {elsewhere}/main.yaml:1")
    assert ident.data_dir == "/srv/k3s"
    # the command line beats the config file, which beats the environment
    (host.etc / "k3s-agent.service.d").mkdir()
    (host.etc / "k3s-agent.service.d" / "10-name.conf").write_text(
        "[Service]\nEnvironment=K3S_NODE_NAME=env-name\nExecStart=\n"
        f"ExecStart=/usr/local/bin/k3s agent --config {elsewhere}/main.yaml --node-name Flag-Name --data-dir /d\n"
    )
    ident = decide_identity_from(Config(k3s=host.cfg), unit_dirs=host.dirs, hostname=lambda: "h")
    assert (ident.node, ident.data_dir) == ("flag-name", "/d")
    assert ident.config.source.startswith("K3S_CONFIG_FILE in ")  # the variable wins over --config (pkg/configfilearg)
    (elsewhere / "main.yaml").write_text("token: x\n")
    (host.etc / "k3s-agent.service.d" / "10-name.conf").write_text("[Service]\nEnvironment=K3S_NODE_NAME=env-name\n")
    ident = decide_identity_from(Config(k3s=host.cfg), unit_dirs=host.dirs, hostname=lambda: "h")
    assert (ident.node, ident.node_source) == ("env-name", "K3S_NODE_NAME in k3s's environment")


def test_a_server_writes_its_kubeconfig_where_it_is_told(host: Host) -> None:
    host.unit(host.etc, "k3s.service", "[Service]\nExecStart=/usr/local/bin/k3s server --write-kubeconfig /root/kc\n")
    ident = decide_identity_from(Config(k3s=host.cfg), unit_dirs=host.dirs, hostname=lambda: "h")
    assert ident.kubeconfig == "/root/kc" and ident.server_keys_safe


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


def test_a_default_named_unit_whose_execstart_does_not_say_is_weak_evidence(host: Host) -> None:
    path = host.unit(host.etc, "k3s.service", "[Service]\nExecStart=/usr/local/bin/start-k3s.sh\n")
    role = host.detect()
    assert role == Role("server", "k3s.service", f"unit name {path} (its ExecStart does not say k3s server or agent)",
                        certain=False)  # fmt: skip
