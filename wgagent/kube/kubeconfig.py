"""Reading a kubeconfig: where the API server is, how to trust it, and who we are.

Only what wgagent needs: the current context's cluster (``server``,
``certificate-authority(-data)``, ``insecure-skip-tls-verify``) and user
(``client-certificate(-data)`` with ``client-key(-data)``, ``token``, ``tokenFile``).
Relative paths are relative to the kubeconfig's own directory, as kubectl resolves them.

    >>> cred = parse(K3S_AGENT_EXAMPLE, "/var/lib/rancher/k3s/agent/kubelet.kubeconfig")
    >>> cred.server, cred.ca.path
    ('https://127.0.0.1:6444', '/var/lib/rancher/k3s/agent/server-ca.crt')

Every problem is a :class:`~wgagent.errors.KubeConfigError` naming the file and what is
missing or wrong. Tokens and client keys are registered with :func:`wgagent.logs.add_secret`
as they are read, and are kept out of ``repr()``.

Which file to use (:func:`credential_paths`): on servers ``<k3s.config_dir>/k3s.yaml``
(the admin credential) for everything; on agents the kubelet's own credential
``<k3s.data_dir>/agent/kubelet.kubeconfig`` for the own Node and k3s's controller
credential ``<k3s.data_dir>/agent/k3scontroller.kubeconfig`` to list and watch all Nodes
(Kubernetes >= 1.32 lets a node credential see only its own Node).
``kube.kubeconfig`` and ``kube.list_kubeconfig`` override.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import yaml

from wgagent import fsutil, logs, yamlerr
from wgagent.config import K3sConfig, KubeConfig
from wgagent.errors import KubeConfigError

MAX_SIZE = 1 << 20

K3S_AGENT_EXAMPLE = """\
apiVersion: v1
kind: Config
clusters:
- cluster:
    server: https://127.0.0.1:6444
    certificate-authority: /var/lib/rancher/k3s/agent/server-ca.crt
  name: local
contexts:
- context: {cluster: local, namespace: default, user: user}
  name: Default
current-context: Default
users:
- name: user
  user:
    client-certificate: /var/lib/rancher/k3s/agent/client-kubelet.crt
    client-key: /var/lib/rancher/k3s/agent/client-kubelet.key
"""


@dataclass(frozen=True)
class Material:
    """PEM text given either as a file (``path``) or inline (``data``, already decoded)."""

    path: str | None = None
    data: bytes | None = field(default=None, repr=False)

    def describe(self) -> str:
        return self.path if self.path else "inline data"


@dataclass(frozen=True)
class Credential:
    """How to reach and authenticate to one API server, from one kubeconfig file."""

    source: str
    """The kubeconfig file this came from (named in every error)."""
    context: str
    server: str
    """Base URL without a trailing slash, e.g. ``https://127.0.0.1:6443``."""
    ca: Material | None = None
    insecure: bool = False
    client_cert: Material | None = None
    client_key: Material | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None

    @property
    def kind(self) -> str:
        """What authenticates us, for messages: "client certificate", "token" or "token file"."""
        if self.client_cert is not None:
            return "client certificate"
        return "token file" if self.token_file else "token"


def load(path: str) -> Credential:
    """Read and parse ``path``; a ``tokenFile`` is read now (and again on every load)."""
    try:
        data = fsutil.read_capped(path, MAX_SIZE)
    except fsutil.FileTooLarge as exc:
        raise KubeConfigError(f"{path}: kubeconfig is larger than 1 MiB") from exc
    except OSError as exc:
        raise KubeConfigError(f"{path}: cannot read kubeconfig: {exc.strerror or exc}") from exc
    if data is None:
        raise KubeConfigError(f"{path}: kubeconfig not found")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KubeConfigError(f"{path}: kubeconfig is not UTF-8 text (byte {exc.start})") from exc
    cred = parse(text, path)
    if cred.token_file and not cred.token:
        cred = replace(cred, token=_read_token(cred.token_file, path))
    return cred


def _read_token(token_file: str, source: str) -> str:
    try:
        raw = fsutil.read_capped(token_file, MAX_SIZE)
    except OSError as exc:
        raise KubeConfigError(f"{source}: cannot read tokenFile {token_file}: {exc.strerror or exc}") from exc
    if raw is None:
        raise KubeConfigError(f"{source}: cannot read tokenFile {token_file}: No such file or directory")
    token = raw.decode("utf-8", "replace").strip()
    if not token:
        raise KubeConfigError(f"{source}: tokenFile {token_file} is empty")
    logs.add_secret(token)
    return token


def parse(text: str, path: str) -> Credential:
    """Parse kubeconfig text; ``path`` names the file in errors and anchors relative paths."""
    doc = _document(text, path)
    base = os.path.dirname(os.path.abspath(path))
    context_name, context = _current_context(doc, path)
    cluster_name = _str(context.get("cluster"), path, f"context '{context_name}': cluster")
    cluster = _named(doc, "clusters", "cluster", cluster_name, path)
    user_name = _str(context.get("user"), path, f"context '{context_name}': user")
    user = _named(doc, "users", "user", user_name, path)
    server, ca, insecure = _cluster(cluster, cluster_name, base, path)
    cert, key, token, token_file = _user(user, f"user '{user_name}'", base, path)
    return Credential(
        source=path,
        context=context_name,
        server=server,
        ca=ca,
        insecure=insecure,
        client_cert=cert,
        client_key=key,
        token=token,
        token_file=token_file,
    )


def _document(text: str, path: str) -> Mapping[str, Any]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KubeConfigError(
            f"{yamlerr.where(path, exc)}: kubeconfig is not valid YAML: {yamlerr.problem(exc)}"
        ) from exc
    if not isinstance(doc, dict):
        raise KubeConfigError(f"{path}: kubeconfig must be a YAML mapping (apiVersion, clusters, contexts, users)")
    return doc


def _cluster(cluster: Mapping[str, Any], name: str, base: str, path: str) -> tuple[str, Material | None, bool]:
    """The cluster's server URL, CA and ``insecure-skip-tls-verify``."""
    server = _server(cluster.get("server"), path, name)
    insecure = cluster.get("insecure-skip-tls-verify", False)
    if not isinstance(insecure, bool):
        raise KubeConfigError(f"{path}: cluster '{name}': insecure-skip-tls-verify must be true or false")
    if cluster.get("tls-server-name"):
        raise KubeConfigError(f"{path}: cluster '{name}': tls-server-name is not supported by wgagent")
    ca = _material(cluster, "certificate-authority", base, path, f"cluster '{name}'")
    if ca is not None and insecure:
        raise KubeConfigError(
            f"{path}: cluster '{name}': certificate-authority and insecure-skip-tls-verify exclude each other"
        )
    return server, ca, insecure


def _user(
    user: Mapping[str, Any], where: str, base: str, path: str
) -> tuple[Material | None, Material | None, str | None, str | None]:
    """The user's client certificate and key, token and token file; at least one of them."""
    for unsupported in ("exec", "auth-provider", "username", "password"):
        if user.get(unsupported):
            raise KubeConfigError(
                f"{path}: {where}: '{unsupported}' is not supported by wgagent; "
                "use a client certificate, a token or a tokenFile"
            )
    cert = _material(user, "client-certificate", base, path, where)
    key = _material(user, "client-key", base, path, where, secret=True)
    if (cert is None) != (key is None):
        have, lack = ("client-certificate", "client-key") if cert else ("client-key", "client-certificate")
        raise KubeConfigError(f"{path}: {where}: has {have} but no {lack}")
    token = _token(user.get("token"), where, path)
    token_file = user.get("tokenFile")
    if token_file is not None:
        token_file = _path(token_file, base, path, f"{where}: tokenFile")
    if cert is None and token is None and token_file is None:
        raise KubeConfigError(
            f"{path}: {where}: no credential: expected client-certificate and client-key, token, or tokenFile"
        )
    return cert, key, token, token_file


def _token(value: Any, where: str, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise KubeConfigError(f"{path}: {where}: token must be a non-empty string")
    token = value.strip()
    logs.add_secret(token)
    return token


def _current_context(doc: Mapping[str, Any], path: str) -> tuple[str, Mapping[str, Any]]:
    contexts = doc.get("contexts") or []
    if not isinstance(contexts, list):
        raise KubeConfigError(f"{path}: 'contexts' must be a list")
    name = doc.get("current-context")
    if not name:
        names = [c.get("name") for c in contexts if isinstance(c, dict)]
        if len(names) != 1 or not isinstance(names[0], str):
            raise KubeConfigError(f"{path}: no current-context set (and not exactly one context to fall back on)")
        name = names[0]
    if not isinstance(name, str):
        raise KubeConfigError(f"{path}: current-context must be a string")
    return name, _named(doc, "contexts", "context", name, path)


def _named(doc: Mapping[str, Any], section: str, inner: str, name: str, path: str) -> Mapping[str, Any]:
    entries = doc.get(section) or []
    if not isinstance(entries, list):
        raise KubeConfigError(f"{path}: '{section}' must be a list")
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(inner)
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise KubeConfigError(f"{path}: {section} entry '{name}': '{inner}' must be a mapping")
            return value
    raise KubeConfigError(f"{path}: no entry named '{name}' in {section}")


def _str(value: Any, path: str, what: str) -> str:
    if isinstance(value, str) and value:
        return value
    raise KubeConfigError(f"{path}: {what} is missing")


def _server(value: Any, path: str, cluster: str) -> str:
    if not isinstance(value, str) or not value:
        raise KubeConfigError(f"{path}: cluster '{cluster}' has no server")
    parts = urlsplit(value)
    try:
        valid = parts.scheme in ("https", "http") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number or out of range
        valid = False
    if not valid:
        raise KubeConfigError(f"{path}: cluster '{cluster}': server {value!r} is not an http(s) URL")
    return value.rstrip("/")


def _path(value: Any, base: str, path: str, what: str) -> str:
    if not isinstance(value, str) or not value or "\0" in value:
        raise KubeConfigError(f"{path}: {what} must be a file path")
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def _material(
    section: Mapping[str, Any], key: str, base: str, path: str, where: str, *, secret: bool = False
) -> Material | None:
    """``key`` (a file, relative to ``base``) or ``key-data`` (base64 PEM); the data wins."""
    data = section.get(key + "-data")
    if data:
        if not isinstance(data, str):
            raise KubeConfigError(f"{path}: {where}: {key}-data must be base64 text")
        if secret:
            logs.add_secret(data)
        try:
            decoded = base64.b64decode("".join(data.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise KubeConfigError(f"{path}: {where}: {key}-data is not valid base64") from exc
        if b"-----BEGIN" not in decoded:
            raise KubeConfigError(f"{path}: {where}: {key}-data does not hold PEM text")
        if secret:
            logs.add_secret(decoded)
        return Material(data=decoded)
    file = section.get(key)
    if file:
        return Material(path=_path(file, base, path, f"{where}: {key}"))
    return None


# --- which kubeconfig ---------------------------------------------------------------------


@dataclass(frozen=True)
class CredentialPaths:
    own: str
    """Reads and patches this node's own Node."""
    list: str
    """Lists and watches every Node."""


def server_kubeconfig(k3s: K3sConfig) -> str:
    return os.path.join(k3s.config_dir, "k3s.yaml")


def agent_kubeconfigs(k3s: K3sConfig, data_dir: str | None = None) -> tuple[str, str]:
    agent = os.path.join(data_dir or k3s.data_dir, "agent")
    return os.path.join(agent, "kubelet.kubeconfig"), os.path.join(agent, "k3scontroller.kubeconfig")


def credential_paths(
    kube: KubeConfig,
    k3s: K3sConfig,
    role: str | None,
    exists: Callable[[str], bool] = os.path.exists,
    *,
    data_dir: str | None = None,
    admin_kubeconfig: str | None = None,
) -> CredentialPaths:
    """The kubeconfig for the own Node and the one for listing, by role.

    ``role`` is "server", "agent", or None/"auto": then a node with the server's admin
    kubeconfig is a server (k3s writes it only there), any other an agent.

    >>> from wgagent.config import K3sConfig, KubeConfig
    >>> paths = credential_paths(KubeConfig(), K3sConfig(), "agent")
    >>> paths.own, paths.list
    ('/var/lib/rancher/k3s/agent/kubelet.kubeconfig', '/var/lib/rancher/k3s/agent/k3scontroller.kubeconfig')
    """
    admin = admin_kubeconfig or server_kubeconfig(k3s)
    if role not in ("server", "agent"):
        role = "server" if exists(admin) else "agent"
    if role == "server":
        own = lister = admin
    else:
        own, lister = agent_kubeconfigs(k3s, data_dir)
    own = kube.kubeconfig or own
    lister = kube.list_kubeconfig or (kube.kubeconfig if role == "server" and kube.kubeconfig else lister)
    return CredentialPaths(own=own, list=lister)
