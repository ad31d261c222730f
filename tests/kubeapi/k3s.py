"""What a k3s start does to its Node object, step by step, as upstream k3s and flannel do it.

:func:`start` is pure: a Node object, the start's inputs (role, version, config files, the
unit's command line and environment) and the cluster's server-side settings in; the writes
k3s makes to the Node (in order, each a whole Node object) and whether k3s stays up out. The
API stand-in (:meth:`tests.kubeapi.store.NodeStore.k3s_start`) commits the writes one by one,
so a watcher sees what it would see on a real cluster. Each step names its upstream source:

1. the config: ``config.yaml`` and ``config.yaml.d/*.yaml`` merged (:func:`config_args`,
   k3s ``pkg/configfilearg/parser.go`` ``readConfigFile``), inserted after the subcommand
   and before the unit's own flags (``Parser.Parse``); an agent refuses a flag it does not
   define (:func:`tests.kubeapi.upstream.agent_accepts`);
2. the kubelet's status (``nodeInfo.kubeletVersion``: the k3s version);
3. ``configureNode`` (k3s ``pkg/agent/run.go``): ``k3s.io/*`` address and node-config
   annotations, and before December 2025 the flannel overwrites;
4. the k3s cloud controller's addresses (``pkg/cloudprovider/instances.go``);
5. ``setAnnotations`` / ``syncAnnotations`` (k3s ``pkg/agent/flannel/setup.go``);
6. flannel's ``AcquireLease`` (flannel ``pkg/subnet/kube/kube.go``), with the WireGuard
   backend's lease attributes (``pkg/backend/wireguard/wireguard.go``, ``device.go``).

    >>> node = {"metadata": {"name": "n1", "annotations": {}}, "spec": {"podCIDR": "10.42.1.0/24",
    ...         "podCIDRs": ["10.42.1.0/24"]}, "status": {"addresses": [{"type": "InternalIP",
    ...         "address": "10.0.0.2"}], "nodeInfo": {"kubeletVersion": "v1.32.4+k3s1"}}}
    >>> out = start(node, StartRequest(role="agent", files=(("/etc/rancher/k3s/config.yaml",
    ...     "node-external-ip: 203.0.113.7\\n"),)), Cluster(flannel_external_ip=True), public_key="K")
    >>> out.started, [w.step for w in out.writes]
    (True, ['configureNode', 'cloud-controller', 'AcquireLease'])
    >>> out.node["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip"]
    '203.0.113.7'
"""

from __future__ import annotations

import base64
import copy
import hashlib
import ipaddress
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from tests.kubeapi.upstream import (
    FlannelVersion,
    K3sVersion,
    agent_accepts,
    annotation_writer,
    flannel_of_k3s,
    flannel_publishes_port,
)

Obj = dict[str, Any]

FLANNEL = "flannel.alpha.coreos.com/"
OVERWRITE_V4 = FLANNEL + "public-ip-overwrite"
OVERWRITE_V6 = FLANNEL + "public-ipv6-overwrite"
K3S_INTERNAL_IP = "k3s.io/internal-ip"
K3S_EXTERNAL_IP = "k3s.io/external-ip"
K3S_HOSTNAME = "k3s.io/hostname"
K3S_INTERNAL_DNS = "k3s.io/internal-dns"
K3S_EXTERNAL_DNS = "k3s.io/external-dns"
NODE_ARGS = "k3s.io/node-args"
NODE_ENV = "k3s.io/node-env"
NODE_CONFIG_HASH = "k3s.io/node-config-hash"
DEFAULT_KEY_FILE = "/run/flannel/wgkey"
TMPFS_PREFIXES = ("/run/", "/dev/shm/")
WIREGUARD_PORT = 51820
WIREGUARD_V6_PORT = 51821

_SLICE_FLAGS = frozenset({"node-ip", "node-external-ip", "cluster-cidr", "service-cidr", "tls-san", "disable",
                          "node-label", "node-taint", "kubelet-arg", "kube-proxy-arg", "node-internal-dns",
                          "node-external-dns"})  # fmt: skip
"""urfave/cli ``StringSliceFlag``s: every occurrence appends (k3s ``pkg/cli/cmds``)."""
_BOOL_FLAGS = frozenset({"flannel-external-ip", "flannel-ipv6-masq", "disable-cloud-controller", "cluster-init",
                         "debug", "selinux", "rootless", "docker", "with-node-id", "protect-kernel-defaults",
                         "disable-network-policy", "disable-kube-proxy", "disable-helm-controller",
                         "embedded-registry", "prefer-bundled-bin", "enable-pprof", "disable-apiserver-lb",
                         "disable-default-registry-endpoint", "secrets-encryption", "alsologtostderr"})  # fmt: skip
_ALIASES = {"i": "node-ip", "s": "server", "t": "token", "d": "data-dir", "c": "config", "l": "log"}
_SECRETS = frozenset({"K3S_TOKEN", "K3S_DATASTORE_ENDPOINT", "K3S_AGENT_TOKEN", "K3S_CLUSTER_SECRET",
                      "K3S_VPN_AUTH", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "--token", "-t", "--agent-token",
                      "--datastore-endpoint", "--etcd-s3-access-key", "--etcd-s3-secret-key",
                      "--vpn-auth"})  # fmt: skip
"""k3s ``pkg/nodeconfig/nodeconfig.go`` ``isSecret``: redacted as ``********`` in node-args/env."""


class StartError(Exception):
    """k3s exits at start: the message is what it logs last."""


# --- 1. the config, as k3s reads it -------------------------------------------------------------


def config_files(config_file: str) -> list[str]:
    """The files k3s reads for ``config_file``, in order (k3s ``readConfigFile``/``dotDFiles``):
    the file itself when it exists, then each ``<file>.d/`` entry that is not a directory and
    ends in ``.yaml``/``.yml`` (any case), by name as Go's ``os.ReadDir`` sorts them."""
    try:
        names = sorted(os.listdir(config_file + ".d"), key=lambda n: n.encode("utf-8", "surrogateescape"))
    except (FileNotFoundError, NotADirectoryError):
        names = []
    dropins = [
        os.path.join(config_file + ".d", n)
        for n in names
        if n.lower().endswith((".yaml", ".yml")) and not os.path.isdir(os.path.join(config_file + ".d", n))
    ]
    return ([config_file] if os.path.exists(config_file) else []) + dropins


def go_string(value: Any) -> str:
    """k3s ``pkg/configfilearg/convert.go`` ``ToString`` (after wrangler's): the first item of a
    list, ``fmt.Sprint`` of the rest, trimmed."""
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _to_slice(value: Any) -> list[Any]:
    # k3s parser.go toSlice: a string is one item, a list stays, anything else its string
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return value
    text = go_string(value)
    return [text] if text else []


def config_args(files: Sequence[tuple[str, str]]) -> list[str]:
    """The flags k3s makes of its config files (``readConfigFile``): keys in order of first
    appearance, the last value of a key wins, ``key+:`` appends (both sides made lists), a
    list becomes one ``--key=item`` per item, a one-letter key gets one dash. A file that does
    not parse raises :class:`StartError` (k3s: ``logrus.Fatal`` in ``MustParse``).

    >>> config_args([("a", "node-ip: 10.0.0.1\\nflannel-external-ip: true"), ("b", "node-ip+: [10.0.0.2]")])
    ['--node-ip=10.0.0.1', '--node-ip=10.0.0.2', '--flannel-external-ip=true']
    """
    order: list[str] = []
    values: dict[str, Any] = {}
    for path, text in files:
        for key, value in _load_mapping(path, text):
            k = go_string(key)
            append, k = k.endswith("+"), k.removesuffix("+")
            if k not in values:
                order.append(k)
            values[k] = _to_slice(values[k]) + _to_slice(value) if append and k in values else value
    out = []
    for k in order:
        prefix = "-" if len(k) == 1 else "--"
        items = values[k] if isinstance(values[k], list) else [values[k]]
        out += [f"{prefix}{k}={go_string(v)}" for v in items]
    return out


def _load_mapping(path: str, text: str) -> list[tuple[Any, Any]]:
    # gopkg.in/yaml.v2 into a MapSlice: the first document, a mapping (or nothing)
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_node() if loader.check_node() else None
            if node is None:
                return []
            if not isinstance(node, yaml.MappingNode):
                raise StartError(f"yaml: unmarshal errors: cannot unmarshal {path} into yaml.MapSlice")
            loader.flatten_mapping(node)
            return [
                (loader.construct_object(k, deep=True), loader.construct_object(v, deep=True)) for k, v in node.value
            ]
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise StartError(f"yaml: {line}{getattr(exc, 'problem', None) or exc} ({path})") from exc


def normalize_cli(args: Iterable[str]) -> list[str]:
    """A unit's ``ExecStart`` flags as ``--key=value`` (``--key value`` joined unless the flag
    is a boolean; urfave/cli accepts both spellings)."""
    out: list[str] = []
    pending: str | None = None
    for arg in args:
        if pending is not None:
            out.append(f"{pending}={arg}")
            pending = None
        elif arg.startswith("-") and "=" not in arg and _flag_name(arg) not in _BOOL_FLAGS:
            pending = arg
        else:
            out.append(arg)
    if pending is not None:
        out.append(pending)
    return out


def _flag_name(arg: str) -> str:
    name = arg.lstrip("-").split("=", 1)[0]
    return _ALIASES.get(name, name)


@dataclass(frozen=True)
class Flags:
    """Parsed flags, urfave/cli style: a slice flag keeps every value (comma-split), others the
    last one; a bare boolean flag is ``true``."""

    values: Mapping[str, tuple[str, ...]]

    @classmethod
    def parse(cls, args: Iterable[str]) -> Flags:
        values: dict[str, list[str]] = {}
        for arg in args:
            if not arg.startswith("-"):
                continue
            name = _flag_name(arg)
            value = arg.split("=", 1)[1] if "=" in arg else "true"
            values.setdefault(name, []).append(value)
        return cls({k: tuple(v) for k, v in values.items()})

    def last(self, name: str, default: str = "") -> str:
        found = self.values.get(name)
        return found[-1] if found else default

    def all(self, name: str) -> list[str]:
        return [item for value in self.values.get(name, ()) for item in value.split(",") if item]

    def bool(self, name: str) -> bool:
        return self.last(name, "false").lower() in ("true", "1", "t")


def check_agent_flags(args: Iterable[str]) -> None:
    """Raise :class:`StartError` as ``k3s agent`` exits at the first flag it does not define."""
    for arg in args:
        if arg.startswith("-") and not agent_accepts(arg.lstrip("-").split("=", 1)[0]):
            raise StartError(f"flag provided but not defined: -{arg.lstrip('-').split('=', 1)[0]}")


def parse_ips(values: Iterable[str], flag: str) -> list[str]:
    """k3s ``pkg/util/net.go`` ``ParseStringSliceToIPs`` (canonical text, as Go's ``net.IP``)."""
    out = []
    for value in values:
        try:
            out.append(str(ipaddress.ip_address(value)))
        except ValueError as exc:
            raise StartError(f"invalid {flag}: invalid ip format '{value}'") from exc
    return out


# --- the cluster: what servers hand every node -------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """The servers' settings an agent receives at start (k3s ``pkg/daemons/config``
    ``CriticalControlArgs``, served at ``/v1-k3s/config``), and the servers' k3s version."""

    flannel_backend: str = "vxlan"
    flannel_external_ip: bool = False
    cluster_cidrs: tuple[str, ...] = ("10.42.0.0/16",)
    disable_ccm: bool = False
    server_version: str = "v1.32.4+k3s1"

    @classmethod
    def of_server(cls, flags: Flags, version: K3sVersion) -> Cluster:
        """A server's own values (k3s defaults: vxlan, flannel-external-ip off, 10.42.0.0/16)."""
        return cls(
            flannel_backend=flags.last("flannel-backend", "vxlan"),
            flannel_external_ip=flags.bool("flannel-external-ip"),
            cluster_cidrs=tuple(flags.all("cluster-cidr")) or ("10.42.0.0/16",),
            disable_ccm=flags.bool("disable-cloud-controller"),
            server_version=str(version),
        )

    def critical(self) -> tuple[object, ...]:
        return (self.flannel_backend, self.flannel_external_ip, self.cluster_cidrs, self.disable_ccm)

    @property
    def ipv4(self) -> bool:
        """k3s ``pkg/agent/flannel/setup.go`` ``findNetMode`` over the cluster CIDRs."""
        return any(ipaddress.ip_network(c, strict=False).version == 4 for c in self.cluster_cidrs)

    @property
    def ipv6(self) -> bool:
        return any(ipaddress.ip_network(c, strict=False).version == 6 for c in self.cluster_cidrs)


def compares_config(flags: Flags, node: Obj) -> bool:
    """Whether this server start runs ``compareConfig`` (k3s ``pkg/cluster/bootstrap.go``,
    ``Bootstrap`` -> ``shouldBootstrapLoad`` -> ``bootstrap``): only with ``--server`` and the
    embedded etcd, and then only on the first join (an initialized member restarts without the
    comparison) or, with ``--disable-etcd`` (control-plane only, never initialized), on every
    start; with an external datastore (``datastore-endpoint``, no managed DB) never. A server that
    ran before here is one whose Node carries ``k3s.io/node-args`` of a server."""
    if not flags.last("server") or flags.last("datastore-endpoint"):
        return False
    if flags.bool("disable-etcd"):
        return True
    ran = node.get("metadata", {}).get("annotations", {}).get(NODE_ARGS, "")
    return not ran.startswith('["server"')


def critical_mismatch(own: Cluster, cluster: Cluster) -> str | None:
    """k3s ``pkg/cluster/bootstrap.go`` ``compareConfig`` (see :func:`compares_config` for when):
    the names of the critical args that differ, or None."""
    names = ("flannel-backend", "flannel-external-ip", "cluster-cidr", "disable-cloud-controller")
    differ = [n for n, a, b in zip(names, own.critical(), cluster.critical(), strict=True) if a != b]
    return ", ".join(differ) or None


# --- the start ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartRequest:
    """One k3s start on one node.

    ``files``: the config files k3s reads, in order, as (path, text) (see :func:`config_files`);
    ``args``: the unit's flags after the subcommand; ``env``: the k3s process's environment
    (the unit's ``Environment=`` and env files); ``version``: the k3s version that starts (None:
    the Node's kubeletVersion); ``reboot``: the node booted since the last start (tmpfs empty).
    ``iface_ipv4``/``iface_ipv6``: the address flannel finds on its interface (None: the Node's
    InternalIP of that family); ``listen_port``: flannel's WireGuard port (net-conf's
    ``ListenPort``, 51820 by default); ``flannel_version``: None for the one k3s ships.
    """

    role: str = "agent"
    files: tuple[tuple[str, str], ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    version: str | None = None
    reboot: bool = False
    iface_ipv4: str | None = None
    iface_ipv6: str | None = None
    listen_port: int = WIREGUARD_PORT
    flannel_version: str | None = None

    def all_args(self) -> list[str]:
        return config_args(self.files) + normalize_cli(self.args)


@dataclass(frozen=True)
class Write:
    """One write k3s (or flannel) makes to the Node, and the Node after it."""

    step: str
    source: str
    credential: str
    node: Obj


@dataclass(frozen=True)
class Outcome:
    started: bool
    error: str | None = None
    writes: tuple[Write, ...] = ()
    node: Obj = field(default_factory=dict)
    cluster: Cluster | None = None
    """A server's own settings (the cluster's after it started); None for an agent."""
    public_key: str | None = None
    args: tuple[str, ...] = ()


def key_kept(req: StartRequest) -> bool:
    """Whether flannel finds its WireGuard key file again (``device.go`` ``setupKeys``: read
    ``WIREGUARD_KEY_FILE``, default ``/run/flannel/wgkey``; a new key when it is missing). A
    key on tmpfs is lost at every reboot."""
    path = dict(req.env).get("WIREGUARD_KEY_FILE", DEFAULT_KEY_FILE)
    return not (req.reboot and path.startswith(TMPFS_PREFIXES))


def random_key() -> str:
    """A new WireGuard public key as flannel publishes it (base64 of 32 bytes)."""
    return base64.b64encode(os.urandom(32)).decode()


def start(
    node: Obj, req: StartRequest, cluster: Cluster, *, public_key: str, new_key: Callable[[], str] = random_key
) -> Outcome:
    """What a k3s start does to ``node`` (see the module docstring for the steps).

    ``cluster``: the servers' settings (for an agent; a server uses its own flags);
    ``public_key``: flannel's key so far; ``new_key``: makes a new one when the key file is
    gone (:func:`key_kept`).
    """
    try:
        args = req.all_args()
        if req.role == "agent":
            check_agent_flags(args)
        flags = Flags.parse(args)
        version = K3sVersion.parse(req.version or node["status"]["nodeInfo"]["kubeletVersion"])
        own = Cluster.of_server(flags, version) if req.role == "server" else None
        differ = critical_mismatch(own, cluster) if own is not None and compares_config(flags, node) else None
        if differ:
            raise StartError(
                "failed to validate server configuration: critical configuration value mismatch between servers "
                f"({differ})"
            )
        effective = own or cluster
        settings = NodeSettings.of(node, req, flags, effective, version)
    except StartError as exc:
        return Outcome(False, str(exc), node=copy.deepcopy(node))
    key = public_key if key_kept(req) else new_key()
    writes: list[Write] = []
    try:
        _run_steps(node, settings, req, args, key, writes)
    except StartError as exc:
        last = writes[-1].node if writes else node
        return Outcome(False, str(exc), tuple(writes), copy.deepcopy(last), own, key, tuple(args))
    last = writes[-1].node if writes else node
    return Outcome(True, None, tuple(writes), copy.deepcopy(last), own, key, tuple(args))


@dataclass(frozen=True)
class NodeSettings:
    """The effective values the start's steps use."""

    name: str
    role: str
    version: K3sVersion
    node_ips: tuple[str, ...]
    external_ips: tuple[str, ...]
    cluster: Cluster
    flannel: FlannelVersion

    @classmethod
    def of(cls, node: Obj, req: StartRequest, flags: Flags, cluster: Cluster, version: K3sVersion) -> NodeSettings:
        node_ips = parse_ips(flags.all("node-ip"), "node-ip") or _addresses(node, "InternalIP")
        flannel = FlannelVersion.parse(req.flannel_version) if req.flannel_version else flannel_of_k3s(version)
        return cls(
            name=node["metadata"]["name"],
            role=req.role,
            version=version,
            node_ips=tuple(node_ips),
            external_ips=tuple(parse_ips(flags.all("node-external-ip"), "node-external-ip")),
            cluster=cluster,
            flannel=flannel,
        )


def _addresses(node: Obj, kind: str) -> list[str]:
    return [a["address"] for a in (node.get("status") or {}).get("addresses") or [] if a.get("type") == kind]


def _run_steps(node: Obj, s: NodeSettings, req: StartRequest, args: list[str], key: str, writes: list[Write]) -> None:
    def write(step: str, source: str, credential: str, mutate: Callable[[Obj], None]) -> None:
        before = writes[-1].node if writes else node
        after = copy.deepcopy(before)
        mutate(after)
        if after != before:
            writes.append(Write(step, source, credential, after))

    kubelet = f"system:node:{s.name}"
    write("kubelet", "kubelet: status.nodeInfo (k3s scripts/build: gitVersion = the k3s tag)", kubelet,
          lambda n: _set_version(n, s.version))  # fmt: skip
    writer = annotation_writer(s.version)
    write("configureNode", f"k3s pkg/agent/run.go configureNode ({writer})", kubelet,
          lambda n: _annotations(n).update(configure_node(_annotations(n), s, writer, req, args)))  # fmt: skip
    if not s.cluster.disable_ccm:
        write("cloud-controller", "k3s pkg/cloudprovider/instances.go InstanceMetadata", "k3s-cloud-controller",
              lambda n: _set_addresses(n))  # fmt: skip
    if s.cluster.flannel_backend == "none":
        return
    if writer != "updateAddressAnnotations":
        write(writer, f"k3s pkg/agent/flannel/setup.go {writer}", kubelet,
              lambda n: _replace_annotations(n, flannel_overwrites(_annotations(n), s, writer)))  # fmt: skip
    attrs = lease_attrs(node, s, req, key)
    write("AcquireLease", "flannel pkg/subnet/kube/kube.go AcquireLease (PATCH nodes/status)", "flannel",
          lambda n: _replace_annotations(n, acquire_lease(_annotations(n), attrs)))  # fmt: skip
    if s.cluster.ipv6 and not any(":" in c for c in node.get("spec", {}).get("podCIDRs") or []):
        raise StartError("flannel exited: failed to configure wg interface: IPv6 is enabled but the lease has no IPv6")


def _annotations(node: Obj) -> dict[str, str]:
    anns: dict[str, str] = node["metadata"].setdefault("annotations", {})
    return anns


def _replace_annotations(node: Obj, anns: Mapping[str, str]) -> None:
    node["metadata"]["annotations"] = dict(anns)


def _set_version(node: Obj, version: K3sVersion) -> None:
    info = node.setdefault("status", {}).setdefault("nodeInfo", {})
    info["kubeletVersion"] = str(version)
    if "kubeProxyVersion" in info:  # deprecated; kept in step where a kubelet still reports it
        info["kubeProxyVersion"] = str(version)


def _set_addresses(node: Obj) -> None:
    """k3s's cloud provider reports the addresses from the ``k3s.io/*`` annotations
    (``InstanceMetadata``); the cloud node controller writes them into ``status.addresses``."""
    anns = _annotations(node)
    addresses = [{"type": "InternalIP", "address": a} for a in anns.get(K3S_INTERNAL_IP, "").split(",") if a]
    addresses += [{"type": "ExternalIP", "address": a} for a in anns.get(K3S_EXTERNAL_IP, "").split(",") if a]
    hostname = anns.get(K3S_HOSTNAME)
    if hostname:
        addresses.append({"type": "Hostname", "address": hostname})
    if addresses:
        node.setdefault("status", {})["addresses"] = addresses


# --- 3. configureNode ---------------------------------------------------------------------------


def configure_node(
    anns: Mapping[str, str], s: NodeSettings, writer: str, req: StartRequest, args: Sequence[str]
) -> dict[str, str]:
    """The annotations ``configureNode`` (k3s ``pkg/agent/run.go``) leaves, before the CNI starts.

    With the cloud controller on: ``updateAddressAnnotations`` sets ``k3s.io/internal-ip``,
    ``k3s.io/hostname`` and, with ``node-external-ip``, ``k3s.io/external-ip`` (never removed
    when the flag goes away). Before December 2025 it also adds the flannel overwrites (last
    address of a family wins) when ``node-external-ip`` is set and ``flannel-external-ip`` on.
    With the cloud controller disabled: nothing (older), or those ``k3s.io/*`` address
    annotations removed (since December 2025, ``removeAddressAnnotations``). Always:
    ``SetNodeConfigAnnotations`` (``pkg/nodeconfig``): node-args, node-env, node-config-hash.
    """
    out = dict(anns)
    if s.cluster.disable_ccm:
        if writer != "updateAddressAnnotations":
            for key in (K3S_HOSTNAME, K3S_INTERNAL_IP, K3S_EXTERNAL_IP, K3S_INTERNAL_DNS, K3S_EXTERNAL_DNS):
                out.pop(key, None)
    else:
        out[K3S_INTERNAL_IP] = ",".join(s.node_ips)
        out[K3S_HOSTNAME] = s.name
        if s.external_ips:
            out[K3S_EXTERNAL_IP] = ",".join(s.external_ips)
            if writer == "updateAddressAnnotations" and s.cluster.flannel_external_ip:
                for ip in s.external_ips:
                    out[OVERWRITE_V4 if ":" not in ip else OVERWRITE_V6] = ip
    out.update(node_config_annotations(out, req.role, args, dict(req.env)))
    return out


def go_json(value: Any, *, go_map: bool = False) -> str:
    """Go's ``json.Marshal`` text: compact, ``<``, ``>``, ``&`` escaped; a struct's fields in
    declaration order (a dict's order here), a map's keys sorted (``go_map``)."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=go_map, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def node_config_annotations(
    anns: Mapping[str, str], role: str, args: Sequence[str], env: Mapping[str, str]
) -> dict[str, str]:
    """k3s ``pkg/nodeconfig/nodeconfig.go`` ``SetNodeConfigAnnotations``: the subcommand and its
    flags (``--key=value`` split in two; secrets as ``********``), the ``K3S_*`` environment,
    and the base32 SHA-256 of both; written only when the hash changed."""
    items: list[str] = [role]
    for arg in args:
        items += arg.split("=", 1) if arg.startswith("--") and "=" in arg else [arg]
    items = [("********" if i > 0 and items[i - 1] in _SECRETS else item) for i, item in enumerate(items)]
    k3s_env = {k: ("********" if k in _SECRETS else v) for k, v in env.items() if k.startswith("K3S_")}
    node_args, node_env = go_json(items), go_json(k3s_env, go_map=True)
    digest = base64.b32encode(hashlib.sha256((node_args + node_env).encode()).digest()).decode()
    if anns.get(NODE_CONFIG_HASH) == digest:
        return {}
    return {NODE_CONFIG_HASH: digest, NODE_ENV: node_env, NODE_ARGS: node_args}


# --- 5. the flannel overwrites ------------------------------------------------------------------


def flannel_overwrites(anns: Mapping[str, str], s: NodeSettings, writer: str) -> dict[str, str]:
    """``setAnnotations`` / ``syncAnnotations`` (k3s ``pkg/agent/flannel/setup.go``), run at the
    top of ``flannel.Run`` at every start, kubelet credential, a JSON patch.

    ``setAnnotations`` (December 2025 releases): with ``node-external-ip`` set and
    ``flannel-external-ip`` on, ``add`` each address to the overwrite of its family (the last
    one of a family wins); otherwise nothing. ``syncAnnotations`` (PR #13431): with
    ``flannel-external-ip`` on, the same adds (only where the value differs); with it off,
    ``remove`` both overwrites when present, whoever set them.
    """
    out = dict(anns)
    if s.cluster.flannel_external_ip:
        for ip in s.external_ips:
            out[OVERWRITE_V4 if ":" not in ip else OVERWRITE_V6] = ip
    elif writer == "syncAnnotations":
        out.pop(OVERWRITE_V4, None)
        out.pop(OVERWRITE_V6, None)
    return out


# --- 6. flannel: the lease ----------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseAttrs:
    """flannel ``lease.LeaseAttrs`` as the backend hands them to ``AcquireLease``."""

    backend_type: str
    public_ip: str | None
    public_ipv6: str | None
    backend_data: str
    backend_v6_data: str


def lease_attrs(node: Obj, s: NodeSettings, req: StartRequest, key: str) -> LeaseAttrs:
    """The attributes flannel's backend computes at start.

    The public addresses are the interface's (k3s ``pkg/agent/flannel/flannel.go``
    ``LookupExtInterface``: the first IPv4 of ``flannel-iface`` or of the default route's
    interface, and an IPv6 only when the cluster has IPv6; missing one it must have is fatal).
    WireGuard (``wireguard.go`` ``newSubnetAttrs``): backend-data ``{"PublicKey":k}``, plus
    ``"Port"`` since flannel v0.26.6, per family enabled; ``null`` for a disabled family.
    """
    v4 = req.iface_ipv4 or next((a for a in _addresses(node, "InternalIP") if ":" not in a), None)
    v6 = req.iface_ipv6 or next((a for a in _addresses(node, "InternalIP") if ":" in a), None)
    if s.cluster.ipv4 and v4 is None:
        raise StartError("flannel exited: failed to find the interface: failed to find IPv4 address for interface")
    if s.cluster.ipv6 and v6 is None:
        raise StartError("flannel exited: failed to find the interface: failed to find IPv6 address for interface")
    public_ip = v4 if s.cluster.ipv4 else None
    public_ipv6 = v6 if s.cluster.ipv6 else None
    backend = s.cluster.flannel_backend
    if backend == "vxlan":
        vxlan = go_json({"VNI": 1, "VtepMAC": _fake_mac(s.name)})
        return LeaseAttrs("vxlan", public_ip, public_ipv6, vxlan if s.cluster.ipv4 else "null",
                          vxlan if s.cluster.ipv6 else "null")  # fmt: skip
    if backend != "wireguard-native":
        return LeaseAttrs(backend, public_ip, public_ipv6, "null", "null")
    with_port = flannel_publishes_port(s.flannel)

    def data(port: int) -> str:
        return go_json({"PublicKey": key, "Port": port}) if with_port else go_json({"PublicKey": key})

    v4_data = data(req.listen_port) if s.cluster.ipv4 else "null"
    v6_data = data(WIREGUARD_V6_PORT) if s.cluster.ipv6 else "null"
    return LeaseAttrs("wireguard", public_ip, public_ipv6, v4_data, v6_data)


def _fake_mac(name: str) -> str:
    digest = hashlib.sha256(name.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def acquire_lease(anns: Mapping[str, str], attrs: LeaseAttrs) -> dict[str, str]:
    """flannel ``pkg/subnet/kube/kube.go`` ``AcquireLease``: once per start, the only place
    flannel reads ``public-ip(v6)-overwrite``.

    It writes (a strategic merge patch of ``nodes/status``) only when backend-data,
    backend-type, public-ip or kube-subnet-manager differ from what it has, or an overwrite
    differs from the interface address; then: backend-type; backend-data and public-ip (the
    overwrite when set, else the interface address); for IPv6 only when the backend found an
    IPv6 address (an IPv6 cluster): backend-v6-data and public-ipv6 likewise; and
    ``kube-subnet-manager: "true"``.
    """
    a = dict(anns)
    pub = attrs.public_ip or "0.0.0.0"  # an unset ip.IP4 prints as 0.0.0.0
    over, over6 = a.get(OVERWRITE_V4, ""), a.get(OVERWRITE_V6, "")
    v4_stale = (a.get(FLANNEL + "backend-data") != attrs.backend_data or a.get(FLANNEL + "backend-type") !=
                attrs.backend_type or a.get(FLANNEL + "public-ip") != pub or a.get(FLANNEL + "kube-subnet-manager")
                != "true" or (over != "" and over != pub))  # fmt: skip
    v6_stale = attrs.public_ipv6 is not None and (
        a.get(FLANNEL + "backend-v6-data") != attrs.backend_v6_data or a.get(FLANNEL + "backend-type") !=
        attrs.backend_type or a.get(FLANNEL + "public-ipv6") != attrs.public_ipv6 or
        a.get(FLANNEL + "kube-subnet-manager") != "true" or (over6 != "" and over6 != attrs.public_ipv6)
    )  # fmt: skip
    if not (v4_stale or v6_stale):
        return a
    a[FLANNEL + "backend-type"] = attrs.backend_type
    if attrs.backend_type != "vxlan" or attrs.backend_data != "null":
        a[FLANNEL + "backend-data"] = attrs.backend_data
        a[FLANNEL + "public-ip"] = over or pub
    has_v6 = attrs.public_ipv6 is not None
    v6_written = {"vxlan": attrs.backend_v6_data != "null", "wireguard": attrs.backend_v6_data != "null" and has_v6,
                  "host-gw": has_v6, "extension": has_v6}  # fmt: skip
    if v6_written.get(attrs.backend_type, False):
        a[FLANNEL + "backend-v6-data"] = attrs.backend_v6_data
        a[FLANNEL + "public-ipv6"] = over6 or attrs.public_ipv6 or ""
    a[FLANNEL + "kube-subnet-manager"] = "true"
    return a


def request_from_json(body: Mapping[str, Any], *, default_role: str) -> StartRequest:
    """A :class:`StartRequest` from the control endpoint's JSON (``files`` as [[path, text], ...]
    or {path: text}; ``args`` a list; ``env`` an object)."""
    files = body.get("files") or ()
    pairs = list(files.items()) if isinstance(files, dict) else [tuple(p) for p in files]
    return StartRequest(
        role=str(body.get("role") or default_role),
        files=tuple((str(p), str(t)) for p, t in pairs),
        args=tuple(str(a) for a in body.get("args") or ()),
        env=tuple(sorted((str(k), str(v)) for k, v in (body.get("env") or {}).items())),
        version=body.get("version"),
        reboot=bool(body.get("reboot", False)),
        iface_ipv4=body.get("iface_ipv4"),
        iface_ipv6=body.get("iface_ipv6"),
        listen_port=int(body.get("listen_port") or WIREGUARD_PORT),
        flannel_version=body.get("flannel_version"),
    )
