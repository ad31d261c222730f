"""What makes the config cheap to load (``wgagent status`` reads it on every start) changes
nothing it means: libyaml's parser reads what PyYAML's reads, and the schema's classes
compare, hash and print as ``@dataclass(frozen=True)`` makes them."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from wgagent import config
from wgagent.config import Config, GCConfig, HealthConfig, ListenAddress, WireGuardConfig
from wgagent.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "config.yaml"

DOCUMENTS = {
    "example (comments only)": EXAMPLE.read_text(),
    "flow and block": "health: {listen: '[::1]:9000'}\npublic_ip:\n  static: [203.0.113.7, '2001:db8::7']\n",
    "anchors and merge keys": (
        "k3s: &k {config_dir: /etc/k, restart: false}\n"
        "kube:\n  enabled: false\n"
        "wireguard:\n  gc:\n    <<: {dry_run: true, interval_s: 60}\n    stale_after_s: 900\n"
    ),
    "scalars of every kind": (
        "node_name: n-1.example\nlog_level: 'debug'\nstartup_deadline_s: 1.5e1\n"
        'state_dir: "/var/lib/x"\npublic_ip:\n  enabled: yes\n  quorum: 0x2\n  sources: >-\n    static\n'
    ),
    "unicode and tags": "node_name: !!str n1\npublic_ip:\n  http_echo_urls: ['https://\u00e9.example']\n",
}


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML built without libyaml: the fast path is PyYAML's own")
@pytest.mark.parametrize("text", DOCUMENTS.values(), ids=DOCUMENTS.keys())
def test_libyaml_reads_the_same_values_and_lines_as_pyyaml(text: str) -> None:
    def read(loader: Any) -> tuple[Any, dict[str, int]]:
        lines: dict[str, int] = {}
        return config._read_yaml(loader, text, lines, "c.yaml"), lines

    assert config._FAST_LOADER is yaml.CSafeLoader
    assert read(yaml.CSafeLoader) == read(yaml.SafeLoader)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [1\nb: 2\n", "c.yaml:2: not valid YAML: expected ',' or ']', but got ':'"),
        ("a: 1\n b: 2\n", "c.yaml:2: not valid YAML: mapping values are not allowed here"),
        ("a: 'x\n", "c.yaml:2: not valid YAML: found unexpected end of stream"),
        ("\tk: 1\n", "c.yaml:1: not valid YAML: found character '\\t' that cannot start any token"),
    ],
    ids=["unclosed flow", "bad indent", "unclosed quote", "tab"],
)
def test_a_broken_document_is_named_in_pyyamls_words(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse(text, "c.yaml")
    assert str(info.value) == message


@dataclasses.dataclass(frozen=True)
class Twin:
    """What ``@dataclass(frozen=True)`` itself makes, to compare with."""

    host: str
    port: int


def test_the_schema_classes_compare_hash_and_print_as_frozen_dataclasses() -> None:
    a, b = ListenAddress("127.0.0.1", 8795), ListenAddress("127.0.0.1", 8795)
    assert a == b and hash(a) == hash(b) and a != ListenAddress("127.0.0.1", 8796)
    assert repr(a) == repr(Twin("127.0.0.1", 8795)).replace("Twin", "ListenAddress")
    assert (a == Twin("127.0.0.1", 8795)) is False  # another class: never equal, as dataclasses
    assert a.__eq__(Twin("127.0.0.1", 8795)) is NotImplemented
    assert Config() == Config()
    changed = dataclasses.replace(Config(), wireguard=WireGuardConfig(gc=GCConfig(dry_run=True)))
    assert changed != Config() and changed.wireguard.gc.dry_run is True
    assert {GCConfig(), GCConfig(), changed.wireguard.gc} == {GCConfig(), changed.wireguard.gc}
    with pytest.raises(TypeError, match="mappingproxy"):  # as a dataclass's hash: the endpoints mapping
        hash(Config())
    assert repr(HealthConfig()) == "HealthConfig(listen=ListenAddress(host='127.0.0.1', port=8795))"
    assert repr(Config()).startswith("Config(node_name=None, state_dir='/var/lib/wgagent', log_level='info', ")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del Config().health


def test_values_still_parse_to_the_typed_fields() -> None:
    cfg = config.parse(DOCUMENTS["flow and block"])
    assert cfg.health.listen == ListenAddress("::1", 9000)
    assert cfg.public_ip.static == (ipaddress.ip_address("203.0.113.7"), ipaddress.ip_address("2001:db8::7"))
    merged = config.parse(DOCUMENTS["anchors and merge keys"])
    assert (merged.wireguard.gc.dry_run, merged.wireguard.gc.interval_s, merged.k3s.restart) == (True, 60.0, False)
