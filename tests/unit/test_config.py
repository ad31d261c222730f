"""Config loading: defaults, one clear line per error (file, line, key, value, allowed)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from wgagent import cli, config
from wgagent.config import Config, ListenAddress
from wgagent.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "config.yaml"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        config.parse(text, "/etc/wgagent/config.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_every_key_has_a_default_so_an_empty_mapping_is_the_default_config() -> None:
    assert config.parse("{}") == Config()
    assert config.parse("# only comments\n") == Config()


def test_values_are_converted_to_typed_frozen_fields() -> None:
    cfg = config.parse(
        "health:\n  listen: '[::1]:9000'\n"
        "public_ip:\n  static: [203.0.113.7, '2001:db8::7']\n  timeout_s: 2\n"
        "wireguard:\n  gc:\n    dry_run: true\n"
    )
    assert cfg.health.listen == ListenAddress("::1", 9000)
    assert cfg.public_ip.static == (ipaddress.ip_address("203.0.113.7"), ipaddress.ip_address("2001:db8::7"))
    assert cfg.public_ip.timeout_s == 2.0
    assert cfg.wireguard.gc.dry_run is True
    with pytest.raises(AttributeError):
        cfg.log_level = "debug"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "public_ip:\n  quorom: 2\n",
            "/etc/wgagent/config.yaml:2: unknown key 'public_ip.quorom' (did you mean 'public_ip.quorum'?)",
            id="typo-nested",
        ),
        pytest.param("frobnicate: 1\n", "/etc/wgagent/config.yaml:1: unknown key 'frobnicate'", id="unknown-top"),
        pytest.param(
            "log_level: info\npublic_ip:\n  quorum: two\n",
            "/etc/wgagent/config.yaml:3: public_ip.quorum: 'two' is invalid; expected an integer from 1 to 16",
            id="wrong-type",
        ),
        pytest.param(
            "k3s:\n  role: master\n",
            "/etc/wgagent/config.yaml:2: k3s.role: 'master' is invalid; expected one of auto, server, agent",
            id="bad-choice",
        ),
        pytest.param(
            "wireguard:\n  gc:\n    stale_after_s: 60\n",
            "/etc/wgagent/config.yaml:3: wireguard.gc.stale_after_s: 60 is invalid; "
            "expected a number of seconds from 180 to 2.592e+06",
            id="below-reject-after",
        ),
        pytest.param(
            "health:\n  listen: 8795\n",
            "/etc/wgagent/config.yaml:2: health.listen: 8795 is invalid; "
            "expected IP:port, e.g. 127.0.0.1:8795 or [::1]:8795",
            id="listen-without-host",
        ),
        pytest.param(
            "public_ip:\n  static: [203.0.113.1, 203.0.113.2]\n",
            "/etc/wgagent/config.yaml:2: public_ip.static: ['203.0.113.1', '203.0.113.2'] is invalid; "
            "expected at most one IPv4 and one IPv6 address",
            id="two-static-v4",
        ),
        pytest.param(
            "k3s: yes\n",
            "/etc/wgagent/config.yaml:1: k3s: True is invalid; expected a mapping of keys",
            id="section-not-mapping",
        ),
        pytest.param(
            "log_level: info\nlog_level: debug\n",
            "/etc/wgagent/config.yaml:2: key 'log_level' is given twice",
            id="duplicate",
        ),
        pytest.param(
            "- a\n- b\n",
            "/etc/wgagent/config.yaml:1: the config must be a mapping of keys, not a list",
            id="not-a-mapping",
        ),
        pytest.param(
            "health:\n  listen: [1\n",
            "/etc/wgagent/config.yaml:3: not valid YAML: expected ',' or ']', but got '<stream end>'",
            id="bad-yaml",
        ),
        pytest.param(
            "",
            "/etc/wgagent/config.yaml: config file is empty; write '{}' or comments only for all defaults",
            id="empty",
        ),
        pytest.param(
            "state_dir: var/lib/wgagent\n",
            "/etc/wgagent/config.yaml:1: state_dir: 'var/lib/wgagent' is invalid; expected an absolute path",
            id="relative-path",
        ),
    ],
)
def test_errors_name_file_line_key_value_and_what_is_allowed(text: str, expected: str) -> None:
    assert error_of(text) == expected


def test_node_name_must_be_a_kubernetes_name() -> None:
    assert config.parse("node_name: node-1.example\n").node_name == "node-1.example"
    assert "node_name: 'Node_1' is invalid" in error_of("node_name: Node_1\n")


def test_unreadable_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file: Is a directory$"):
        config.load(str(tmp_path))
    with pytest.raises(ConfigError, match=r"missing.yaml: cannot read config file: No such file or directory$"):
        config.load(str(tmp_path / "missing.yaml"))


def test_missing_default_file_means_defaults(tmp_path: Path) -> None:
    assert config.load(str(tmp_path / "missing.yaml"), required=False) == Config()


def test_binary_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"log_level: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load(str(path))


def test_path_from_flag_then_environment_then_default() -> None:
    assert config.resolve_path("/x.yaml", {"WGAGENT_CONFIG": "/y.yaml"}) == ("/x.yaml", True)
    assert config.resolve_path(None, {"WGAGENT_CONFIG": "/y.yaml"}) == ("/y.yaml", True)
    assert config.resolve_path(None, {}) == ("/etc/wgagent/config.yaml", False)


def test_example_config_lists_every_key_with_its_default_and_is_in_sync() -> None:
    text = EXAMPLE.read_text()
    assert text == config.example_yaml(), "regenerate: python -c 'from wgagent import config; ...example_yaml()'"
    assert config.parse(text) == Config()  # comments only: all defaults
    # Uncommenting every key line (and section line) gives exactly the defaults again.
    uncommented = "\n".join(
        line[1:] if line.startswith("#") and not line.startswith("# ") else line for line in text.splitlines()
    )
    assert config.parse(uncommented) == Config()
    for name, _, _ in config.reference():
        assert f"#{'  ' * name.count('.')}{name.rsplit('.', 1)[-1]}:" in text, name


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("bogus: 1\n", "unknown key 'bogus'"),
        ("public_ip:\n  quorum: x\n", "public_ip.quorum: 'x' is invalid"),
        ("", "config file is empty"),
        (None, "cannot read config file: Is a directory"),
    ],
    ids=["unknown-key", "wrong-type", "empty", "unreadable"],
)
def test_cli_prints_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, needle: str
) -> None:
    path = tmp_path / "c.yaml"
    if content is None:
        os.mkdir(path)
    else:
        path.write_text(content)
    for argv in (["run", "--once"], ["run"], ["status"]):
        assert cli.main(["--config", str(path), *argv]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err.count("\n") == 1 and needle in err and err.startswith("wgagent: ")
        assert "Traceback" not in err


def test_environment_variable_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "c.yaml"
    path.write_text("bogus: 1\n")
    monkeypatch.setenv("WGAGENT_CONFIG", str(path))
    assert cli.main(["run", "--once"]) == 2
    assert str(path) in capsys.readouterr().err


def test_listen_address_forms() -> None:
    assert str(ListenAddress("::1", 1)) == "[::1]:1"
    assert ListenAddress("127.0.0.5", 1).is_loopback
    assert ListenAddress("localhost", 1).is_loopback
    assert not ListenAddress("0.0.0.0", 1).is_loopback
    assert ListenAddress("0.0.0.0", 8795).url == "http://127.0.0.1:8795"
