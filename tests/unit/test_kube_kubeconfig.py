"""kubeconfig parsing (pure), loading (files), and which kubeconfig by role."""

from __future__ import annotations

import base64
import os
import textwrap
from pathlib import Path

import pytest

from wgagent import logs
from wgagent.config import K3sConfig, KubeConfig
from wgagent.errors import KubeConfigError
from wgagent.kube.kubeconfig import K3S_AGENT_EXAMPLE, credential_paths, load, parse

PEM_CERT = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
PEM_KEY = b"-----BEGIN EC PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END EC PRIVATE KEY-----\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig(cluster: str, user: str, *, current: str | None = "ctx", extra: str = "") -> str:
    head = f"current-context: {current}\n" if current else ""
    return (
        head
        + "clusters:\n- name: c\n  cluster:\n"
        + textwrap.indent(textwrap.dedent(cluster), "    ")
        + "contexts:\n- name: ctx\n  context: {cluster: c, user: u}\n"
        + "users:\n- name: u\n  user:\n"
        + textwrap.indent(textwrap.dedent(user), "    ")
        + extra
    )


SERVER = "server: https://127.0.0.1:6443\n"


def test_k3s_agent_kubeconfig() -> None:
    cred = parse(K3S_AGENT_EXAMPLE, "/var/lib/rancher/k3s/agent/kubelet.kubeconfig")
    assert cred.server == "https://127.0.0.1:6444"
    assert cred.context == "Default"
    assert cred.ca is not None and cred.ca.path == "/var/lib/rancher/k3s/agent/server-ca.crt"
    assert cred.client_cert is not None and cred.client_cert.path == "/var/lib/rancher/k3s/agent/client-kubelet.crt"
    assert cred.client_key is not None and cred.client_key.path == "/var/lib/rancher/k3s/agent/client-kubelet.key"
    assert cred.token is None and cred.kind == "client certificate"


def test_relative_paths_are_relative_to_the_kubeconfig() -> None:
    text = kubeconfig(
        SERVER + "certificate-authority: ca.crt\n",
        "client-certificate: ../certs/c.crt\nclient-key: c.key\ntokenFile: tok\n",
    )
    cred = parse(text, "/etc/k/sub/config.yaml")
    assert cred.ca is not None and cred.ca.path == "/etc/k/sub/ca.crt"
    assert cred.client_cert is not None and cred.client_cert.path == "/etc/k/certs/c.crt"
    assert cred.client_key is not None and cred.client_key.path == "/etc/k/sub/c.key"
    assert cred.token_file == "/etc/k/sub/tok"


def test_inline_data_is_decoded_and_keys_are_secrets() -> None:
    text = kubeconfig(
        SERVER + f"certificate-authority-data: {b64(PEM_CERT)}\n",
        f"client-certificate-data: {b64(PEM_CERT)}\nclient-key-data: {b64(PEM_KEY)}\n",
    )
    cred = parse(text, "/x/k.yaml")
    assert cred.ca is not None and cred.ca.data == PEM_CERT and cred.ca.path is None
    assert cred.client_key is not None and cred.client_key.data == PEM_KEY
    assert b64(PEM_KEY) not in repr(cred) and "PRIVATE" not in repr(cred)
    assert logs.redact(f"key {b64(PEM_KEY)} and {PEM_KEY.decode()}").count("<redacted>") == 2


def test_token_is_a_secret_and_not_in_repr() -> None:
    token = "s3cr3t-t0ken-abcdef123456"
    cred = parse(kubeconfig(SERVER + "insecure-skip-tls-verify: true\n", f"token: {token}\n"), "/x/k.yaml")
    assert cred.token == token and cred.insecure and cred.kind == "token"
    assert token not in repr(cred)
    assert token not in logs.redact(f"sent {token}")


def test_single_context_without_current_context() -> None:
    cred = parse(kubeconfig(SERVER, "token: abcdefgh12345\n", current=None), "/x/k.yaml")
    assert cred.context == "ctx"


def test_server_trailing_slash_is_dropped() -> None:
    cred = parse(kubeconfig("server: https://api.example:6443/\n", "token: abcdefgh12345\n"), "/x/k.yaml")
    assert cred.server == "https://api.example:6443"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("clusters: [\n", "/x/k.yaml:2: kubeconfig is not valid YAML", id="not-yaml"),
        pytest.param("- a\n- b\n", "must be a YAML mapping", id="a-list"),
        pytest.param(kubeconfig(SERVER, "token: abcdefgh1\n", current="other"), "no entry named 'other' in contexts",
                     id="unknown-context"),
        pytest.param("contexts: []\n", "no current-context set", id="no-context"),
        pytest.param(kubeconfig("insecure-skip-tls-verify: true\n", "token: abcdefgh1\n"), "cluster 'c' has no server",
                     id="no-server"),
        pytest.param(kubeconfig("server: ftp://x\n", "token: abcdefgh1\n"), "is not an http(s) URL", id="bad-scheme"),
        pytest.param(kubeconfig("server: https://x:99999\n", "token: abcdefgh1\n"), "is not an http(s) URL",
                     id="bad-port"),
        pytest.param(kubeconfig(SERVER, "{}\n"), "no credential: expected client-certificate and client-key",
                     id="no-credential"),
        pytest.param(kubeconfig(SERVER, "client-certificate: c.crt\n"), "has client-certificate but no client-key",
                     id="cert-without-key"),
        pytest.param(kubeconfig(SERVER, "client-key: c.key\n"), "has client-key but no client-certificate",
                     id="key-without-cert"),
        pytest.param(kubeconfig(SERVER, "exec: {command: aws}\n"), "'exec' is not supported by wgagent",
                     id="exec-plugin"),
        pytest.param(kubeconfig(SERVER, "client-certificate-data: '%%%'\nclient-key: k\n"),
                     "client-certificate-data is not valid base64", id="bad-base64"),
        pytest.param(kubeconfig(SERVER, f"client-certificate-data: {b64(b'hello')}\nclient-key: k\n"),
                     "client-certificate-data does not hold PEM text", id="not-pem"),
        pytest.param(kubeconfig(SERVER + "insecure-skip-tls-verify: true\ncertificate-authority: ca.crt\n",
                                "token: abcdefgh1\n"), "exclude each other", id="ca-and-insecure"),
        pytest.param(kubeconfig(SERVER + "insecure-skip-tls-verify: 'yes'\n", "token: abcdefgh1\n"),
                     "insecure-skip-tls-verify must be true or false", id="insecure-not-bool"),
        pytest.param(kubeconfig(SERVER, "token: ''\ntokenFile: t\n"), "token must be a non-empty string",
                     id="empty-token"),
        pytest.param(kubeconfig(SERVER + "tls-server-name: api\n", "token: abcdefgh1\n"), "tls-server-name",
                     id="tls-server-name"),
        pytest.param(
            "current-context: ctx\ncontexts:\n- name: ctx\n  context: {cluster: c, user: u}\nclusters: []\nusers: []\n",
            "no entry named 'c' in clusters",
            id="cluster-missing",
        ),
        pytest.param(
            "current-context: ctx\ncontexts:\n- name: ctx\n  context: {cluster: c, user: u}\n"
            "clusters:\n- name: c\n  cluster: {server: 'https://x'}\nusers: []\n",
            "no entry named 'u' in users",
            id="user-missing",
        ),
        pytest.param("current-context: ctx\ncontexts:\n- name: ctx\n  context: {user: u}\n",
                     "context 'ctx': cluster is missing", id="context-without-cluster"),
        pytest.param("current-context: ctx\ncontexts:\n- name: ctx\n  context: {cluster: c}\n"
                     "clusters:\n- name: c\n  cluster: {server: 'https://x'}\n",
                     "context 'ctx': user is missing", id="context-without-user"),
        pytest.param("contexts: {a: b}\n", "'contexts' must be a list", id="contexts-not-a-list"),
        pytest.param("current-context: 7\ncontexts: []\n", "current-context must be a string",
                     id="current-context-not-a-string"),
        pytest.param("current-context: ctx\ncontexts:\n- name: ctx\n  context: {cluster: c, user: u}\nclusters: x\n",
                     "'clusters' must be a list", id="clusters-not-a-list"),
        pytest.param("current-context: ctx\ncontexts:\n- name: ctx\n  context: [c]\n",
                     "contexts entry 'ctx': 'context' must be a mapping", id="context-not-a-mapping"),
        pytest.param(kubeconfig(SERVER, "auth-provider: {name: gcp}\n"), "'auth-provider' is not supported by wgagent",
                     id="auth-provider"),
        pytest.param(kubeconfig(SERVER, "username: admin\npassword: pw\n"), "'username' is not supported by wgagent",
                     id="basic-auth"),
        pytest.param(kubeconfig(SERVER, "token: 12345\n"), "user 'u': token must be a non-empty string",
                     id="token-not-a-string"),
        pytest.param(kubeconfig(SERVER, "tokenFile: 7\n"), "user 'u': tokenFile must be a file path",
                     id="token-file-not-a-path"),
        pytest.param(kubeconfig(SERVER + "certificate-authority-data: 7\n", "token: abcdefgh1\n"),
                     "cluster 'c': certificate-authority-data must be base64 text", id="ca-data-not-text"),
    ],
)  # fmt: skip
def test_errors_name_the_file_and_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(KubeConfigError) as exc:
        parse(text, "/x/k.yaml")
    assert str(exc.value).startswith("/x/k.yaml")
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_load_reads_the_token_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("file-token-1234567890\n")
    path = tmp_path / "k.yaml"
    path.write_text(kubeconfig(SERVER, "tokenFile: token\n"))
    cred = load(str(path))
    assert cred.token == "file-token-1234567890" and cred.kind == "token file"
    assert "file-token-1234567890" not in logs.redact("file-token-1234567890")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        pytest.param("missing", "kubeconfig not found", id="missing-file"),
        pytest.param("empty-token", "tokenFile", id="empty-token-file"),
        pytest.param("no-token-file", "cannot read tokenFile", id="token-file-missing"),
        pytest.param("binary", "not UTF-8", id="binary"),
        pytest.param("huge", "larger than 1 MiB", id="huge"),
    ],
)
def test_load_errors(tmp_path: Path, setup: str, message: str) -> None:
    path = tmp_path / "k.yaml"
    if setup in ("empty-token", "no-token-file"):
        path.write_text(kubeconfig(SERVER, "tokenFile: token\n"))
        if setup == "empty-token":
            (tmp_path / "token").write_text("\n")
    elif setup == "binary":
        path.write_bytes(b"\xff\xfe")
    elif setup == "huge":
        path.write_bytes(b"#" * ((1 << 20) + 10))
    with pytest.raises(KubeConfigError) as exc:
        load(str(path))
    assert message in str(exc.value) and str(path) in str(exc.value)


def _k3s(tmp_path: Path) -> K3sConfig:
    return K3sConfig(config_dir=str(tmp_path / "etc"), data_dir=str(tmp_path / "data"))


@pytest.mark.parametrize(
    ("role", "server_file", "kube", "own", "lister"),
    [
        pytest.param("server", False, {}, "etc/k3s.yaml", "etc/k3s.yaml", id="server"),
        pytest.param("agent", True, {}, "data/agent/kubelet.kubeconfig", "data/agent/k3scontroller.kubeconfig",
                     id="agent"),
        pytest.param(None, True, {}, "etc/k3s.yaml", "etc/k3s.yaml", id="auto-finds-server-kubeconfig"),
        pytest.param("auto", False, {}, "data/agent/kubelet.kubeconfig", "data/agent/k3scontroller.kubeconfig",
                     id="auto-without-is-agent"),
        pytest.param("server", False, {"kubeconfig": "/k/own"}, "/k/own", "/k/own", id="server-override-both"),
        pytest.param("agent", False, {"kubeconfig": "/k/own"}, "/k/own", "data/agent/k3scontroller.kubeconfig",
                     id="agent-override-own"),
        pytest.param("agent", False, {"list_kubeconfig": "/k/list"}, "data/agent/kubelet.kubeconfig", "/k/list",
                     id="agent-override-list"),
        pytest.param("server", False, {"list_kubeconfig": "/k/list"}, "etc/k3s.yaml", "/k/list",
                     id="server-override-list"),
    ],
)  # fmt: skip
def test_credential_paths(
    tmp_path: Path, role: str | None, server_file: bool, kube: dict[str, str], own: str, lister: str
) -> None:
    k3s = _k3s(tmp_path)
    if server_file:
        os.makedirs(k3s.config_dir)
        (tmp_path / "etc" / "k3s.yaml").write_text("{}")
    paths = credential_paths(KubeConfig(**kube), k3s, role)  # type: ignore[arg-type]
    assert paths.own == (own if own.startswith("/") else str(tmp_path / own))
    assert paths.list == (lister if lister.startswith("/") else str(tmp_path / lister))
