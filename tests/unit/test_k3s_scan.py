"""The scan of k3s's config files: k3s's order and merge rules, and what it reports."""

from __future__ import annotations

import os
from collections.abc import Mapping
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from wgagent import fsutil
from wgagent.config import K3sConfig
from wgagent.k3s.dropin import render_dropin
from wgagent.k3s.scan import Unreadable, k3s_order, read_config_files, scan_config
from wgagent.model import PublicAddresses

D = "/etc/rancher/k3s"
OURS = "config.yaml.d/50-wgagent.yaml"
SERVER_DROPIN = render_dropin("server", PublicAddresses(IPv4Address("203.0.113.7")), K3sConfig()).encode()
AGENT_DROPIN = render_dropin("agent", PublicAddresses(IPv4Address("203.0.113.7")), K3sConfig()).encode()


def errors(files: Mapping[str, bytes | Unreadable], role: str | None = "server") -> list[str]:
    return [str(f) for f in scan_config(D, files, role=role).errors]


def test_k3s_order_is_main_then_dropins_by_name_bytes_and_only_yaml_or_yml() -> None:
    names = [
        "config.yaml.d/9-last-digit.yaml",
        "config.yaml.d/10-first.yml",
        "config.yaml.d/Z-upper.YAML",
        "config.yaml.d/a-lower.Yml",
        "config.yaml.d/notes.txt",
        "config.yaml.d/old.yaml.bak",
        "config.yaml.d/.50-wgagent.yaml.wgagent-tmp-123",
        "config.yaml.d/sub/deep.yaml",
        "config.yaml",
    ]
    assert k3s_order(names) == [
        "config.yaml",
        "config.yaml.d/10-first.yml",
        "config.yaml.d/9-last-digit.yaml",
        "config.yaml.d/Z-upper.YAML",
        "config.yaml.d/a-lower.Yml",
    ]


def test_clean_config_has_no_findings_and_the_effective_values() -> None:
    files = {"config.yaml": b"token: x\nnode-name: web-1\n", OURS: SERVER_DROPIN}
    scan = scan_config(D, files, role="server")
    assert scan.findings == ()
    assert scan.files == (f"{D}/config.yaml", f"{D}/{OURS}")
    assert scan.settings["node-external-ip"].items() == ("203.0.113.7",)
    assert scan.settings["flannel-backend"].value == "wireguard-native"
    assert scan.settings["flannel-external-ip"].value == "true"  # as k3s turns it into a flag value
    assert scan.own_values["node-external-ip"].value == ("203.0.113.7",)


def test_later_dropin_overriding_node_external_ip_is_named_with_its_line() -> None:
    files = {OURS: AGENT_DROPIN, "config.yaml.d/90-mine.yaml": b"# mine\nnode-external-ip: 198.51.100.9\n"}
    scan = scan_config(D, files, role="agent")
    assert [str(f) for f in scan.errors] == [
        f"{D}/config.yaml.d/90-mine.yaml:2: node-external-ip: '198.51.100.9' here overrides wgagent's "
        "[203.0.113.7] (50-wgagent.yaml): k3s uses this value; remove it here (wgagent sets node-external-ip "
        "from the public IP it discovers (public_ip.static pins one))"
    ]
    assert scan.settings["node-external-ip"].items() == ("198.51.100.9",)


def test_key_plus_appends_and_is_reported() -> None:
    files = {
        OURS: AGENT_DROPIN,
        "config.yaml.d/60-more.yml": b"node-external-ip+: [198.51.100.9, '198.51.100.10,198.51.100.11']\n",
    }
    scan = scan_config(D, files, role="agent")
    assert scan.settings["node-external-ip"].items() == (
        "203.0.113.7",
        "198.51.100.9",
        "198.51.100.10",
        "198.51.100.11",
    )
    (finding,) = scan.errors
    assert finding.line == 1 and "node-external-ip+:" in finding.message and "k3s uses both" in finding.message


def test_key_plus_without_an_earlier_value_just_sets_it() -> None:
    scan = scan_config(D, {"config.yaml": b"node-label+: a=b\n"}, role="agent")
    assert scan.settings["node-label"].value == "a=b"


def test_earlier_values_replaced_by_wgagent_are_notes_not_errors() -> None:
    files = {"config.yaml": b"node-external-ip: 10.0.0.1\nflannel-backend: vxlan\n", OURS: SERVER_DROPIN}
    scan = scan_config(D, files, role="server")
    assert scan.errors == ()
    assert [(n.line, n.message.split(":")[0]) for n in scan.notes] == [
        (1, "node-external-ip"),
        (2, "flannel-backend"),
    ]
    assert scan.settings["flannel-backend"].value == "wireguard-native"


@pytest.mark.parametrize(
    ("backend", "expect"),
    [
        ("vxlan", "'vxlan' is not WireGuard"),
        ("host-gw", "'host-gw' is not WireGuard"),
        ("wireguard", "'wireguard' was removed in k3s 1.26"),
        ("wireguard-native=Mode=auto", None),  # k3s takes backend options after '='
    ],
)
def test_later_flannel_backend_override(backend: str, expect: str | None) -> None:
    files = {OURS: SERVER_DROPIN, "config.yaml.d/99-x.yaml": f"flannel-backend: {backend}\n".encode()}
    (finding,) = scan_config(D, files, role="server").errors
    assert "overrides wgagent's 'wireguard-native'" in finding.message
    if expect is None:
        assert "not WireGuard" not in finding.message
    else:
        assert expect in finding.message


@pytest.mark.parametrize(
    ("main", "expect"),
    [
        (b"flannel-backend: vxlan\n", f"{D}/config.yaml:1: flannel-backend: 'vxlan' is not WireGuard"),
        (b"a: 1\nflannel-backend: wireguard\n", f"{D}/config.yaml:2: flannel-backend: 'wireguard' was removed"),
        (b"token: x\n", f"{D}/config.yaml: no file sets flannel-backend, so k3s uses vxlan"),
    ],
)
def test_backend_without_wgagents_dropin(main: bytes, expect: str) -> None:
    (text,) = errors({"config.yaml": main}, role="server")
    assert text.startswith(expect)


def test_server_only_keys_stop_an_agent_and_each_is_named_with_file_and_line() -> None:
    # k3s agent defines none of them: "flag provided but not defined" (k3s #3142, #5999)
    files = {
        "config.yaml": b"token: x\ncluster-cidr: 10.42.0.0/16\n",
        OURS: AGENT_DROPIN,
        "config.yaml.d/99-x.yaml": b"flannel-backend: vxlan\nflannel-external-ip: false\ndisable+: [traefik]\n",
    }
    found = errors(files, role="agent")
    assert [e.split(": ")[0] for e in found] == [
        "/etc/rancher/k3s/config.yaml:2",
        "/etc/rancher/k3s/config.yaml.d/99-x.yaml:1",
        "/etc/rancher/k3s/config.yaml.d/99-x.yaml:2",
        "/etc/rancher/k3s/config.yaml.d/99-x.yaml:3",
    ]
    assert found[1] == (
        "/etc/rancher/k3s/config.yaml.d/99-x.yaml:1: flannel-backend: is not a k3s agent flag: k3s agent will not "
        'start ("flag provided but not defined: -flannel-backend"); remove it from this file (it belongs in the '
        "servers' config)"
    )
    assert "disable+: is not a k3s agent flag" in found[3]
    assert errors(files, role=None) == []  # role unknown: nothing to say about it


@pytest.mark.parametrize(
    "key",
    ["flannel-backend", "flannel-external-ip", "cluster-cidr", "service-cidr", "disable", "tls-san",
     "advertise-address", "cluster-init", "write-kubeconfig", "write-kubeconfig-mode"],
)  # fmt: skip
def test_each_server_key_the_issue_names_is_fatal_on_an_agent(key: str) -> None:
    (error,) = errors({"config.yaml": f"{key}: x\n".encode()}, role="agent")
    assert error.startswith(f"/etc/rancher/k3s/config.yaml:1: {key}: is not a k3s agent flag")


def test_agent_flags_and_their_aliases_are_fine_on_an_agent() -> None:
    text = b"server: https://10.0.0.1:6443\ntoken-file: /t\nnode-ip: 10.0.0.2\ni: 10.0.0.2\nkubelet-arg+: [a=b]\n"
    assert errors({"config.yaml": text, OURS: AGENT_DROPIN}, role="agent") == []


def test_wgagents_own_non_wireguard_backend_is_a_note() -> None:
    own = render_dropin("server", None, K3sConfig(flannel_backend="vxlan")).encode()
    scan = scan_config(D, {OURS: own}, role="server")
    assert scan.errors == ()
    (note,) = scan.notes
    assert "'vxlan' is not WireGuard" in note.message and "k3s.flannel_backend" in note.message


@pytest.mark.parametrize(
    ("name", "content", "line", "what"),
    [
        ("config.yaml.d/70-broken.yaml", b"a: 1\nb: [1, 2\nc: 3\n", 3, "not valid YAML"),
        ("config.yaml.d/70-broken.yml", b"a: 1\n  b: 2\n", 2, "not valid YAML"),
        ("config.yaml", b"a: 1\n\tb: 2\n", 2, "not valid YAML"),
        ("config.yaml.d/70-list.yaml", b"\n- a\n- b\n", 2, "not a mapping"),
        ("config.yaml.d/70-scalar.yaml", b"just text\n", 1, "not a mapping"),
    ],
)
def test_broken_user_yaml_is_reported_with_file_and_line(name: str, content: bytes, line: int, what: str) -> None:
    scan = scan_config(D, {name: content, OURS: AGENT_DROPIN}, role="agent")
    (finding,) = scan.errors
    assert finding.path == f"{D}/{name}"
    assert finding.line == line
    assert what in finding.message and "k3s will not start" in finding.message
    assert str(finding).startswith(f"{D}/{name}:{line}: ")
    # the rest is still scanned
    assert scan.settings["node-external-ip"].items() == ("203.0.113.7",)


def test_files_k3s_does_not_read_are_not_reported() -> None:
    files = {
        OURS: AGENT_DROPIN,
        "config.yaml.d/90-x.txt": b"node-external-ip: 1.1.1.1\n",
        "config.yaml.d/90-x.yaml.disabled": b"[broken",
    }
    assert errors(files, role="agent") == []


def test_empty_and_comment_only_files_are_fine() -> None:
    assert errors({"config.yaml": b"", "config.yaml.d/10-c.yaml": b"# nothing\n", OURS: AGENT_DROPIN}, "agent") == []


def test_unreadable_and_undecodable_files_are_reported() -> None:
    files: dict[str, bytes | Unreadable] = {
        "config.yaml": Unreadable("Permission denied"),
        "config.yaml.d/20-latin1.yaml": b"node-name: m\xfcller\n",
        OURS: AGENT_DROPIN,
    }
    assert errors(files, role="agent") == [
        f"{D}/config.yaml: cannot read it (Permission denied); k3s will not start while it cannot",
        f"{D}/config.yaml.d/20-latin1.yaml: not UTF-8 text (byte 12); k3s will not start with this file",
    ]


def test_only_the_first_yaml_document_counts_like_in_k3s() -> None:
    scan = scan_config(D, {"config.yaml": b"node-name: a\n---\nnode-name: b\n"}, role="agent")
    assert scan.settings["node-name"].value == "a"


def test_duplicate_keys_in_one_file_last_wins() -> None:
    scan = scan_config(D, {"config.yaml": b"node-name: a\nnode-name: b\n"}, role="agent")
    assert scan.settings["node-name"].value == "b"
    assert scan.settings["node-name"].line == 2


def test_read_config_files_reads_what_k3s_reads(tmp_path: Path) -> None:
    d = tmp_path / "k3s"
    (d / "config.yaml.d" / "dir.yaml").mkdir(parents=True)
    (d / "config.yaml").write_text("node-name: x\n")
    (d / "config.yaml.d" / "10-a.yml").write_text("node-label: [a=1]\n")
    (d / "config.yaml.d" / "README.txt").write_text("hi\n")
    (d / "config.yaml.d" / "big.yaml").write_bytes(b"# " + b"x" * 2000 + b"\n")
    fsutil.atomic_write(str(d / "config.yaml.d" / "50-wgagent.yaml"), AGENT_DROPIN)
    # a temp file left by a killed writer is not a config file
    (d / "config.yaml.d" / ".50-wgagent.yaml.wgagent-tmp-99999999").write_text("node-external-ip: [")
    files = read_config_files(str(d), max_bytes=1000)
    assert sorted(files) == ["config.yaml", "config.yaml.d/10-a.yml", OURS, "config.yaml.d/big.yaml"]
    assert files["config.yaml.d/big.yaml"] == Unreadable("larger than 1000 bytes", fatal=False)
    scan = scan_config(str(d), files, role="agent")
    assert scan.errors == ()
    assert [n.message for n in scan.notes] == ["not checked: larger than 1000 bytes"]


def test_read_config_files_without_any_file(tmp_path: Path) -> None:
    assert read_config_files(str(tmp_path / "absent")) == {}


def test_read_config_files_dropin_dir_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "config.yaml.d").write_text("oops")
    files = read_config_files(str(tmp_path))
    assert isinstance(files["config.yaml.d"], Unreadable)
    (finding,) = scan_config(str(tmp_path), files, role="agent").errors
    assert str(finding).startswith(os.path.join(str(tmp_path), "config.yaml.d") + ": cannot list the directory")


def test_a_users_advertise_address_is_theirs_unless_wgagent_writes_one() -> None:
    files = {
        OURS: render_dropin("server", None, K3sConfig()).encode(),
        "config.yaml.d/90-x.yaml": b"advertise-address: 10.0.0.9\n",
    }
    assert [e for e in errors(files) if "advertise-address" in e] == []
    ours = render_dropin("server", None, K3sConfig(), advertise="10.0.0.5").encode()
    (error,) = [e for e in errors({**files, OURS: ours}) if "advertise-address" in e]
    assert "overrides wgagent's '10.0.0.5'" in error and "k3s.advertise_private_address" in error
