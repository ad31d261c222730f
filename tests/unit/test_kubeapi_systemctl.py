"""What the lab's stand-in systemctl hands the k3s model: the files, flags and environment a
k3s start on that node would read (tests/cluster/systemctl.py)."""

from __future__ import annotations

from pathlib import Path

from tests.cluster.systemctl import read_env_file, read_unit, start_inputs
from tests.kubeapi.k3s import StartRequest, config_args

UNIT = """[Unit]
Description=Lightweight Kubernetes

[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-{env}
Environment="WIREGUARD_KEY_FILE=/var/lib/rancher/k3s/agent/wgkey" A=b
ExecStart=/usr/local/bin/k3s \\
    agent \\
        '--node-external-ip=198.51.100.50' \\
        --node-ip 10.0.0.2 \\
"""


def test_a_unit_its_env_file_and_k3s_config_file(tmp_path: Path) -> None:
    elsewhere = tmp_path / "other"
    (elsewhere / "config.yaml.d").mkdir(parents=True)
    (elsewhere / "config.yaml").write_text("node-external-ip: 203.0.113.1\n")
    (elsewhere / "config.yaml.d" / "50-wgagent.yaml").write_text("node-external-ip: [203.0.113.7]\n")
    env_file = tmp_path / "k3s-agent.service.env"
    env_file.write_text(f"K3S_CONFIG_FILE='{elsewhere}/config.yaml'\nK3S_TOKEN=secret\n")
    unit = tmp_path / "k3s-agent.service"
    unit.write_text(UNIT.format(env=env_file))
    (tmp_path / "k3s-agent.service.d").mkdir()
    (tmp_path / "k3s-agent.service.d" / "10-x.conf").write_text("[Service]\nEnvironment=K3S_NODE_NAME=n9\n")

    argv, env, env_files = read_unit(str(unit))
    assert argv[:2] == ["/usr/local/bin/k3s", "agent"]
    assert env == {"WIREGUARD_KEY_FILE": "/var/lib/rancher/k3s/agent/wgkey", "A": "b", "K3S_NODE_NAME": "n9"}
    assert read_env_file(env_files[1])["K3S_CONFIG_FILE"] == f"{elsewhere}/config.yaml"

    body = start_inputs({"unit": "k3s-agent.service", "unit_file": str(unit), "config_dir": str(tmp_path / "etc")})
    assert body["role"] == "agent"
    assert body["args"] == ["--node-external-ip=198.51.100.50", "--node-ip", "10.0.0.2"]
    assert [Path(p).name for p, _ in body["files"]] == ["config.yaml", "50-wgagent.yaml"]
    assert body["env"]["K3S_TOKEN"] == "secret"
    req = StartRequest(files=tuple((p, t) for p, t in body["files"]), args=tuple(body["args"]))
    assert req.all_args() == [
        "--node-external-ip=203.0.113.7",
        "--node-external-ip=198.51.100.50",
        "--node-ip=10.0.0.2",
    ]


def test_an_empty_exec_start_in_a_drop_in_clears_the_units(tmp_path: Path) -> None:
    unit = tmp_path / "k3s.service"
    unit.write_text("[Service]\nExecStart=/usr/local/bin/k3s server --flannel-external-ip\n")
    (tmp_path / "k3s.service.d").mkdir()
    (tmp_path / "k3s.service.d" / "override.conf").write_text(
        "[Service]\nExecStart=\nExecStart=/usr/local/bin/k3s server\n"
    )
    assert read_unit(str(unit))[0] == ["/usr/local/bin/k3s", "server"]


def test_without_a_config_dir_k3s_reads_no_file_of_the_host(tmp_path: Path) -> None:
    body = start_inputs({"unit": "k3s.service"})
    assert (body["files"], body["role"]) == ([], "server")
    (tmp_path / "config.yaml").write_text("a: 1\n")
    body = start_inputs({"unit": "k3s.service", "config_dir": str(tmp_path), "start": {"version": "v1.32.4+k3s1"}})
    assert config_args([tuple(f) for f in body["files"]]) == ["-a=1"] and body["version"] == "v1.32.4+k3s1"
