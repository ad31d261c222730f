"""The config file: one YAML mapping, parsed once into frozen dataclasses.

Every key is optional; ``Config()`` is the complete default configuration. The file is
``/etc/wgagent/config.yaml`` unless ``--config PATH`` or ``WGAGENT_CONFIG`` names another.

A bad file never half-applies: :func:`load` either returns a whole ``Config`` or raises
:class:`~wgagent.errors.ConfigError` with one line naming the file, the line, the key,
the value and what is allowed::

    /etc/wgagent/config.yaml:7: public_ip.quorum: 'two' is invalid; expected an integer from 1 to 16

Keys are declared once, below, with their converter and a one-line doc; the example
config and the man page's key reference are checked against this schema by the tests.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import yaml

from wgagent import fsutil, yamlerr
from wgagent.errors import ConfigError
from wgagent.wireguard import REJECT_AFTER_S

TYPE_CHECKING = False  # not typing's: ``wgagent status`` needs this module and not typing (cli.py)
if TYPE_CHECKING:
    from typing import Any, ClassVar, TypeVar

    T = TypeVar("T")
    Converter = Callable[[Any], Any]
    _Loader = yaml.SafeLoader | yaml.CSafeLoader

DEFAULT_PATH = "/etc/wgagent/config.yaml"
ENV_VAR = "WGAGENT_CONFIG"
DEFAULT_HEALTH_PORT = 8795
"""Chosen to collide with nothing a k3s node runs: k3s 6443/6444 and 10248-10259, etcd
2379-2381, flannel 8472 and 51820/51821, spegel 5001, node_exporter 9100 and the 9xxx
exporter range (WireGuard exporters 9586), NodePorts 30000-32767, ephemeral ports 32768+."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class _Record:
    """The ``__eq__``, ``__hash__`` and ``__repr__`` that ``@dataclass(frozen=True)`` would make,
    written once for every class of the schema (``@dataclass(frozen=True, eq=False, repr=False)``).

    ``dataclass`` compiles each method it makes for each class, a fifth of a millisecond
    apiece, and every command builds this schema when it starts (``wgagent status`` in about
    100 ms all told): half of those methods are these three, the same for every class.

    >>> HealthConfig() == HealthConfig(), hash(HealthConfig()) == hash(HealthConfig())
    (True, True)
    >>> HealthConfig()
    HealthConfig(listen=ListenAddress(host='127.0.0.1', port=8795))
    """

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def _compared(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.compare)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, _Record)
        return self._compared() == other._compared()

    def __hash__(self) -> int:
        return hash(self._compared())

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self) if f.repr)
        return f"{type(self).__qualname__}({shown})"


class _Invalid(Exception):
    """Raised by a converter: ``str()`` says what is allowed."""


# --- converters: raw YAML value -> typed value, or _Invalid("expected ...") ---------------


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _Invalid("expected true or false")


def _int(lo: int, hi: int) -> Converter:
    def conv(value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi:
            return value
        raise _Invalid(f"expected an integer from {lo} to {hi}")

    return conv


def _seconds(lo: float, hi: float) -> Converter:
    def conv(value: Any) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool) and lo <= value <= hi:
            return float(value)
        raise _Invalid(f"expected a number of seconds from {lo:g} to {hi:g}")

    return conv


def _choice(*allowed: str) -> Converter:
    def conv(value: Any) -> str:
        if isinstance(value, str) and value in allowed:
            return value
        raise _Invalid("expected one of " + ", ".join(allowed))

    return conv


def _text(value: Any) -> str:
    if isinstance(value, str) and value.strip() and "\n" not in value:
        return value
    raise _Invalid("expected a non-empty string on one line")


def _optional(conv: Converter) -> Converter:
    def wrapped(value: Any) -> Any:
        return None if value is None else conv(value)

    return wrapped


def _abspath(value: Any) -> str:
    if isinstance(value, str) and value.startswith("/") and "\0" not in value:
        return os.path.normpath(value)
    raise _Invalid("expected an absolute path")


_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")
_UNIT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:@\\")


def _service_unit(value: Any) -> str:
    # systemd unit names: [A-Za-z0-9:_.\\-@], at most 255 bytes (systemd.unit(5))
    if isinstance(value, str) and value.endswith(".service") and len(value) <= 255 and set(value) <= _UNIT_CHARS:
        return value
    raise _Invalid("expected a systemd service unit name, e.g. k3s.service or k3s-agent.service")


def _node_name(value: Any) -> str:
    # RFC 1123 subdomain, as Kubernetes requires of a Node name.
    if (
        isinstance(value, str)
        and 0 < len(value) <= 253
        and all(label and len(label) <= 63 and label[0].isalnum() and label[-1].isalnum() for label in value.split("."))
        and all(c in _NAME_CHARS for c in value)
    ):
        return value
    raise _Invalid("expected a Kubernetes node name: lower-case letters, digits, '-' and '.'")


def _list_of(conv: Converter, *, unique: bool = True, min_len: int = 0) -> Converter:
    def wrapped(value: Any) -> tuple[Any, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or len(value) < min_len:
            raise _Invalid(f"expected a list of at least {min_len} item(s)" if min_len else "expected a list")
        items = tuple(conv(item) for item in value)
        if unique and len(set(items)) != len(items):
            raise _Invalid("expected a list without duplicates")
        return items

    return wrapped


def _ip(value: Any) -> IPAddress:
    if isinstance(value, str):
        try:
            return ipaddress.ip_address(value.strip())
        except ValueError:
            pass
    raise _Invalid("expected an IPv4 or IPv6 address")


def _static_ips(value: Any) -> tuple[IPAddress, ...]:
    ips: tuple[IPAddress, ...] = _list_of(_ip)(value)
    if len({ip.version for ip in ips}) != len(ips):
        raise _Invalid("expected at most one IPv4 and one IPv6 address")
    return ips


def _host_port(value: Any) -> str:
    if isinstance(value, str):
        try:
            split_host_port(value)
            return value
        except ValueError:
            pass
    raise _Invalid("expected host:port (IPv6 as [addr]:port)")


def _url(*schemes: str) -> Converter:
    def conv(value: Any) -> str:
        if isinstance(value, str):
            parts = urlsplit(value)
            if parts.scheme in schemes and parts.hostname and not parts.username:
                try:
                    _ = parts.port
                    return value.rstrip("/") if not parts.path.strip("/") else value
                except ValueError:
                    pass
        raise _Invalid("expected a URL starting with " + " or ".join(f"{s}://" for s in schemes))

    return conv


METADATA_PROVIDERS = ("aliyun", "aws", "gcp", "azure", "digitalocean", "hetzner", "vultr", "tencent")
SOURCE_KINDS = ("static", "interface", "metadata", "stun", "http")


def _endpoints(value: Any) -> Mapping[str, str]:
    if not isinstance(value, dict):
        raise _Invalid("expected a mapping of provider to base URL")
    unknown = sorted(set(value) - set(METADATA_PROVIDERS))
    if unknown:
        raise _Invalid(f"unknown provider {unknown[0]!r}; expected " + ", ".join(METADATA_PROVIDERS))
    merged = dict(DEFAULT_METADATA_ENDPOINTS)
    merged.update({k: _url("http", "https")(v) for k, v in value.items()})
    return types.MappingProxyType(merged)


def split_host_port(text: str) -> tuple[str, int]:
    """``"127.0.0.1:8795"`` -> ``("127.0.0.1", 8795)``; ``"[::1]:8795"`` -> ``("::1", 8795)``."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(text)
        ipaddress.IPv6Address(host)
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError(text)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(text)
    return host, int(port)


@dataclass(frozen=True, eq=False, repr=False)  # eq, hash and repr: _Record's
class ListenAddress(_Record):
    """A ``host:port`` to listen on; ``host`` is an IP literal or ``localhost``."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else "::1" if self.host == "::" else self.host  # noqa: S104
        return "http://" + str(ListenAddress(host, self.port))


def _listen(value: Any) -> ListenAddress:
    if isinstance(value, str):
        try:
            host, port = split_host_port(value)
            if host != "localhost":
                ipaddress.ip_address(host)
            return ListenAddress(host, port)
        except ValueError:
            pass
    raise _Invalid("expected IP:port, e.g. 127.0.0.1:8795 or [::1]:8795")


def key(conv: Converter, default: Any, doc: str) -> Any:
    """A leaf key: its converter, its default and the line of documentation it gets."""
    meta = {"conv": conv, "doc": doc}
    if isinstance(default, Mapping):  # unhashable: dataclasses want a factory
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type[T], doc: str) -> T:
    """A nested mapping of keys, itself a frozen dataclass."""
    return field(default_factory=cls, metadata={"section": cls, "doc": doc})


# --- the schema ---------------------------------------------------------------------------

DEFAULT_STUN_SERVERS = ("stun.cloudflare.com:3478", "stun.l.google.com:19302", "stun.nextcloud.com:3478")
DEFAULT_HTTP_ECHO_URLS = (
    "https://api.ipify.org",
    "https://checkip.amazonaws.com",
    "https://icanhazip.com",
    "https://www.cloudflare.com/cdn-cgi/trace",
)
DEFAULT_METADATA_ENDPOINTS: Mapping[str, str] = types.MappingProxyType(
    {
        "aliyun": "http://100.100.100.200",
        "aws": "http://169.254.169.254",
        "gcp": "http://metadata.google.internal",
        "azure": "http://169.254.169.254",
        "digitalocean": "http://169.254.169.254",
        "hetzner": "http://169.254.169.254",
        "vultr": "http://169.254.169.254",
        "tencent": "http://metadata.tencentyun.com",
    }
)


@dataclass(frozen=True, eq=False, repr=False)  # eq, hash and repr: _Record's
class HealthConfig(_Record):
    """``health.*``: the local health endpoint."""

    listen: ListenAddress = key(
        _listen,
        ListenAddress("127.0.0.1", DEFAULT_HEALTH_PORT),
        "address of the health endpoint; anything but loopback must be set on purpose",
    )


@dataclass(frozen=True, eq=False, repr=False)  # eq, hash and repr: _Record's
class PublicIPConfig(_Record):
    """``public_ip.*``: which sources discovery asks and how it decides."""

    enabled: bool = key(_bool, True, "discover the node's public IP")
    static: tuple[IPAddress, ...] = key(
        _static_ips, (), "pin the public address(es), one IPv4 and/or one IPv6; nothing else is asked"
    )
    sources: tuple[str, ...] = key(
        _list_of(_choice(*SOURCE_KINDS)), SOURCE_KINDS, "source kinds to ask: " + ", ".join(SOURCE_KINDS)
    )
    metadata_provider: str = key(
        _choice("auto", "none", *METADATA_PROVIDERS), "auto", "cloud metadata service; auto = detect from DMI"
    )
    metadata_endpoints: Mapping[str, str] = key(
        _endpoints, DEFAULT_METADATA_ENDPOINTS, "base URL per metadata provider (given ones replace the default)"
    )
    dmi_dir: str = key(_abspath, "/sys/class/dmi/id", "where the DMI identity files are read")
    stun_servers: tuple[str, ...] = key(
        _list_of(_host_port), DEFAULT_STUN_SERVERS, "STUN servers (host:port) asked for the mapped address"
    )
    http_echo_urls: tuple[str, ...] = key(
        _list_of(_url("http", "https")), DEFAULT_HTTP_ECHO_URLS, "HTTPS services that echo the caller's IP"
    )
    quorum: int = key(_int(1, 16), 2, "independent STUN/HTTP answers that must agree")
    confirmations: int = key(_int(1, 100), 2, "consecutive rounds a new address must win before it is adopted")
    timeout_s: float = key(_seconds(0.1, 120), 5.0, "timeout of each source")
    interval_s: float = key(_seconds(1, 86400), 300.0, "seconds between discovery rounds")


@dataclass(frozen=True, eq=False, repr=False)  # eq, hash and repr: _Record's
class K3sConfig(_Record):
    """``k3s.*``: where k3s keeps its config, and the drop-in and restarts wgagent manages."""

    enabled: bool = key(_bool, True, "write the k3s config drop-in and restart k3s when it must re-read it")
    role: str = key(
        _choice("auto", "server", "agent"), "auto", "auto = from the k3s unit's ExecStart (k3s server|agent)"
    )
    unit: str | None = key(
        _optional(_service_unit),
        None,
        "the k3s unit (default: the one found: k3s.service, k3s-agent.service, k3s-*.service)",
    )
    config_dir: str = key(_abspath, "/etc/rancher/k3s", "k3s config directory (config.yaml, config.yaml.d/)")
    data_dir: str = key(_abspath, "/var/lib/rancher/k3s", "k3s data directory")
    flannel_backend: str = key(
        _choice("wireguard-native", "vxlan", "host-gw", "none"), "wireguard-native", "flannel-backend, servers only"
    )
    flannel_external_ip: bool = key(_bool, True, "flannel-external-ip, servers only")
    restart: bool = key(_bool, True, "restart k3s when the drop-in or annotation needs it")
    advertise_private_address: bool = key(
        _bool,
        False,
        "servers: advertise-address = this node's private IPv4 (else kube-apiserver advertises node-external-ip)",
    )
    persistent_wireguard_key: bool = key(
        _bool, True, "keep flannel's WireGuard key across reboots (k3s unit drop-in setting WIREGUARD_KEY_FILE)"
    )
    min_restart_interval_s: float = key(_seconds(0, 604800), 600.0, "at most one k3s restart per this many seconds")


@dataclass(frozen=True, eq=False, repr=False)  # eq, hash and repr: _Record's
class KubeConfig(_Record):
    """``kube.*``: the Kubernetes API credentials and timeouts."""

    enabled: bool = key(_bool, True, "keep the public-ip-overwrite annotation and watch the cluster's nodes")
    kubeconfig: str | None = key(
        _optional(_abspath), None, "credential for the own Node (default: k3s.yaml on servers, kubelet's on agents)"
    )
    list_kubeconfig: str | None = key(
        _optional(_abspath), None, "credential to list/watch all Nodes (default on agents: k3scontroller's)"
    )
    request_timeout_s: float = key(_seconds(0.5, 300), 10.0, "timeout of one API request")


@dataclass(frozen=True, eq=False, repr=False)  # eq, hash and repr: _Record's
class GCConfig(_Record):
    """``wireguard.gc.*``: the dead-peer garbage collection."""

    enabled: bool = key(_bool, True, "garbage-collect dead WireGuard peers")
    interval_s: float = key(_seconds(1, 86400), 300.0, "seconds between GC passes")
    stale_after_s: float = key(
        _seconds(REJECT_AFTER_S, 30 * 86400),
        300.0,
        f"a peer is stale after this long without a handshake (>= {REJECT_AFTER_S:g})",
    )
    max_removals_per_pass: int = key(_int(1, 1_000_000), 1000, "removals per pass at most")
    dry_run: bool = key(_bool, False, "decide and report, remove nothing")


@dataclass(frozen=True, eq=False, repr=False)  # eq, hash and repr: _Record's
class WireGuardConfig(_Record):
    """``wireguard.*``: flannel's WireGuard interface, its module and its peers."""

    enabled: bool = key(_bool, True, "watch the WireGuard interface")
    interface: str = key(_text, "auto", "auto = flannel's device (flannel-wg, flannel-wg-v6, flannel.1), or a name")
    listen_port: int = key(_int(1, 65535), 51820, "UDP port the interface should listen on")
    uapi_dir: str = key(_abspath, "/run/wireguard", "UAPI sockets of userspace WireGuard (wireguard-go, boringtun)")
    manage_module: bool = key(_bool, True, "keep the wireguard kernel module loaded")
    module_check_interval_s: float = key(_seconds(1, 86400), 60.0, "seconds between module checks")
    modules_load_file: str = key(
        _abspath, "/etc/modules-load.d/wgagent.conf", "file that makes the module load at boot"
    )
    interface_check_interval_s: float = key(_seconds(1, 86400), 30.0, "seconds between interface checks")
    gc: GCConfig = section(GCConfig, "dead peer garbage collection")


@dataclass(frozen=True, eq=False, repr=False)  # eq, hash and repr: _Record's
class MeshConfig(_Record):
    enabled: bool = key(
        _bool, True, "publish this node's view of flannel's WireGuard mesh and read the others' (needs kube, wireguard)"
    )
    publish_interval_s: float = key(
        _seconds(1, 3600), 60.0, "at most one write of the mesh report per this many seconds (unchanged: every 30 min)"
    )
    probe: bool = key(_bool, True, "send inbound probes to the other Nodes' advertised public-ip:port, see theirs")
    probe_interval_s: float = key(_seconds(1, 86400), 300.0, "at most one probe per peer pair per this many seconds")
    heal_endpoints: bool = key(
        _bool, True, "set a dead peer's drifted endpoint back to the one its Node advertises (no k3s restart)"
    )


@dataclass(frozen=True, eq=False, repr=False)  # eq, hash and repr: _Record's
class EventsConfig(_Record):
    enabled: bool = key(_bool, True, "record Kubernetes Events on the own Node: what wgagent does, mesh changes")


@dataclass(frozen=True, eq=False, repr=False)  # eq, hash and repr: _Record's
class Config(_Record):
    """The whole file; ``Config()`` is every default.

    (Every dataclass here has a docstring: without one, ``dataclass`` computes a signature to
    make one, a measurable part of ``wgagent status``'s start.)
    """

    node_name: str | None = key(_optional(_node_name), None, "this node's Kubernetes name (default: the hostname)")
    state_dir: str = key(_abspath, "/var/lib/wgagent", "where wgagent keeps its state")
    log_level: str = key(_choice("debug", "info", "warning", "error"), "info", "least severe level logged")
    startup_deadline_s: float = key(
        _seconds(1, 600), 20.0, "READY=1 is sent after the first pass, or after this long at the latest"
    )
    health: HealthConfig = section(HealthConfig, "local health endpoint")
    public_ip: PublicIPConfig = section(PublicIPConfig, "public IP discovery")
    k3s: K3sConfig = section(K3sConfig, "k3s config drop-in and restarts")
    kube: KubeConfig = section(KubeConfig, "Kubernetes API: annotation and node watch")
    wireguard: WireGuardConfig = section(WireGuardConfig, "WireGuard module, interface and peer GC")
    mesh: MeshConfig = section(MeshConfig, "mesh health: which node pairs cannot talk, why, and the fix")
    events: EventsConfig = section(EventsConfig, "Kubernetes Events on the own Node")


# --- loading ---------------------------------------------------------------------------------


def resolve_path(cli_path: str | None, environ: Mapping[str, str] | None = None) -> tuple[str, bool]:
    """Where the config comes from, and whether it was named explicitly (then it must exist)."""
    environ = os.environ if environ is None else environ
    if cli_path:
        return cli_path, True
    if environ.get(ENV_VAR):
        return environ[ENV_VAR], True
    return DEFAULT_PATH, False


def load(path: str, *, required: bool = True) -> Config:
    """Read and validate ``path``. A missing file that was not ``required`` means all defaults."""
    try:
        data = fsutil.read_capped(path, 1 << 20)
    except fsutil.FileTooLarge as exc:
        raise ConfigError(f"{path}: config file is larger than 1 MiB") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from exc
    if data is None:
        if not required:
            return Config()
        raise ConfigError(f"{path}: cannot read config file: No such file or directory")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: config file is not UTF-8 text (byte {exc.start})") from exc
    return parse(text, path)


def parse(text: str, path: str = "<config>") -> Config:
    """Parse YAML text into a Config; errors name ``path`` and the line."""
    if not text.strip():
        # A truncated file must not silently turn into "all defaults" (which would ask the
        # public STUN servers and could restart k3s); a file of comments only is fine.
        raise ConfigError(f"{path}: config file is empty; write '{{}}' or comments only for all defaults")
    lines: dict[str, int] = {}
    try:
        raw = _read_yaml(_FAST_LOADER, text, lines, path)
    except yaml.YAMLError:
        # libyaml (a fifth of PyYAML's time: ``wgagent status`` reads the config on every
        # start) refused it: PyYAML reads it again, and its words name the problem.
        lines = {}
        try:
            raw = _read_yaml(yaml.SafeLoader, text, lines, path)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{yamlerr.where(path, exc)}: not valid YAML: {yamlerr.problem(exc)}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}:1: the config must be a mapping of keys, not {_kind(raw)}")
    return _build(Config, raw, "", lines, path)


_FAST_LOADER: type[_Loader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's parser with PyYAML's safe constructor, where PyYAML was built with libyaml (Debian's
and PyPI's are): the same nodes, lines and values as PyYAML's own parser."""


def _read_yaml(loader_class: type[_Loader], text: str, lines: dict[str, int], path: str) -> Any:
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        return {} if node is None else _to_python(loader, node, "", lines, path)
    finally:
        loader.dispose()


def _to_python(loader: _Loader, node: yaml.Node, prefix: str, lines: dict[str, int], path: str) -> Any:
    """Like the SafeLoader's constructor, but remembering the line of every mapping key."""
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            k = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(k, str):
                raise ConfigError(f"{path}:{line}: key {k!r} is not a string")
            dotted = prefix + k
            if k in out:
                raise ConfigError(f"{path}:{line}: key '{dotted}' is given twice")
            lines[dotted] = line
            out[k] = _to_python(loader, value_node, dotted + ".", lines, path)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(loader, item, prefix, lines, path) for item in node.value]
    return loader.construct_object(node, deep=True)


def _build(cls: type[T], raw: dict[str, Any], prefix: str, lines: dict[str, int], path: str) -> T:
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for name in raw:
        if name not in known:
            dotted = prefix + name
            import difflib  # only for a misspelt key

            hint = difflib.get_close_matches(name, known, n=1)
            suggestion = f" (did you mean '{prefix}{hint[0]}'?)" if hint else ""
            raise ConfigError(f"{path}:{lines.get(dotted, 1)}: unknown key '{dotted}'{suggestion}")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        f = known[name]
        dotted = prefix + name
        where = f"{path}:{lines.get(dotted, 1)}"
        sub = f.metadata.get("section")
        if sub is not None:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {dotted}: {_show(value)} is invalid; expected a mapping of keys")
            values[name] = _build(sub, value, dotted + ".", lines, path)
            continue
        try:
            values[name] = f.metadata["conv"](value)
        except _Invalid as exc:
            raise ConfigError(f"{where}: {dotted}: {_show(value)} is invalid; {exc}") from None
    return cls(**values)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    names: dict[type, str] = {list: "a list", str: "a string"}
    return names.get(type(value), f"a {type(value).__name__}")


def reference() -> list[tuple[str, Any, str]]:
    """Every leaf key as (dotted name, default, doc), in schema order: feeds docs and tests."""
    out: list[tuple[str, Any, str]] = []

    def walk(cls: type[Any], prefix: str) -> None:
        for f in dataclasses.fields(cls):
            sub = f.metadata.get("section")
            if sub is not None:
                walk(sub, prefix + f.name + ".")
            else:
                default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
                out.append((prefix + f.name, default, f.metadata["doc"]))

    walk(Config, "")
    return out


def redacted_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain JSON-able data (for /status and doctor). It holds no secrets."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, ListenAddress):
            out[f.name] = redacted_dict(value)
        elif isinstance(value, ListenAddress):
            out[f.name] = str(value)
        elif isinstance(value, Mapping):
            out[f.name] = dict(value)
        elif isinstance(value, Sequence) and not isinstance(value, str):
            out[f.name] = [str(v) for v in value]
        else:
            out[f.name] = value
    return out


def example_yaml() -> str:
    """The example config (``examples/config.yaml``, the package's conffile): every key,
    commented out, with its doc line and its default. A test keeps the file in sync."""
    out = [
        "# wgagent configuration (default path /etc/wgagent/config.yaml; see wgagent(8)).",
        "# Every key is optional: the value shown is the default. To change one, uncomment it",
        "# (and its section line), then run: systemctl reload wgagent",
        "# An empty file is refused (a truncated file must not silently mean defaults);",
        "# a file of comments only, like this one, means all defaults.",
        "",
    ]

    def walk(cls: type[Any], indent: str) -> None:
        for f in dataclasses.fields(cls):
            sub = f.metadata.get("section")
            out.append(f"#{indent}# {f.metadata['doc']}" if indent else f"# {f.metadata['doc']}")
            if sub is not None:
                out.append(f"#{indent}{f.name}:")
                walk(sub, indent + "  ")
            else:
                default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
                value = _yaml_value(default)
                if "\n" in value:
                    out.append(f"#{indent}{f.name}:")
                    out.extend(f"#{indent}{line}" for line in value.splitlines())
                else:
                    out.append(f"#{indent}{f.name}: {value}")
            if not indent:
                out.append("")

    walk(Config, "")
    return "\n".join(out).rstrip("\n") + "\n"


def _yaml_value(value: Any) -> str:
    if isinstance(value, ListenAddress | ipaddress.IPv4Address | ipaddress.IPv6Address):
        value = str(value)
    elif isinstance(value, Mapping):
        value = dict(value)
    elif isinstance(value, tuple):
        value = [str(v) if not isinstance(v, str) else v for v in value]
    text = yaml.safe_dump(value, default_flow_style=False, sort_keys=False).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    if isinstance(value, list | dict) and value:
        return "\n".join("  " + line for line in text.splitlines())
    return text


def load_resolved(cli_path: str | None) -> tuple[Config, str, bool]:
    """The config to start with (``--config``, ``$WGAGENT_CONFIG`` or the default), its path,
    and whether that file must exist."""
    path, required = resolve_path(cli_path)
    return load(path, required=required), path, required


def load_from(cli_path: str | None) -> Config:
    """:func:`load_resolved`'s config alone, for the commands."""
    return load_resolved(cli_path)[0]
