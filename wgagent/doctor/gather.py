"""The adapters: gather every fact, each probe bounded by a timeout; a failing probe becomes data, never a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from wgagent import fsutil, wiring
from wgagent.config import Config
from wgagent.doctor.facts import (
    DaemonFacts,
    DiscoveryFacts,
    Facts,
    Failed,
    InterfaceRead,
    K3sFacts,
    KubeFacts,
    RestartBook,
    Skipped,
    WireGuardFacts,
)
from wgagent.errors import KubeError
from wgagent.families import SUBNET_ENV, read_subnet_env
from wgagent.k3s.install import DEFAULT_UNITS, exec_start, read_unit
from wgagent.k3s.restart import HISTORY_FILE, Book
from wgagent.k3s.role import Identity, decide_identity_from, role_missing_detail
from wgagent.k3s.scan import read_config_files
from wgagent.kube.annotation import OwnNode, own_node_of
from wgagent.kube.kubeconfig import CredentialPaths, credential_paths
from wgagent.kube.watch import list_once
from wgagent.metrics import Registry
from wgagent.model import ClusterView
from wgagent.wireguard.backend import HostNet, is_wireguard, resolve_interfaces
from wgagent.wireguard.gc import FirstSeenStore
from wgagent.wireguard.interface import bound_udp_ports, read_device
from wgagent.wireguard.module import MODULE, ModuleHost, check_module
from wgagent.wiring import Seams

if TYPE_CHECKING:
    from wgagent.kube.client import KubeClient

T = TypeVar("T")

# --- gather: the adapters ---------------------------------------------------------------------------


def doctor_seams() -> Seams:
    """The real host, changing nothing: ``modprobe --dry-run``, no API retries (a doctor
    answers now; the daemon retries)."""
    # sbin is often not on a user's PATH; modprobe lives there
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    modprobe = shutil.which("modprobe", path=search) or "modprobe"
    module = ModuleHost(modprobe_argv=(modprobe, "--dry-run", MODULE), modprobe_timeout_s=10.0)
    return Seams(module_host=module, kube_client=_kube_client)


def _kube_client(path: str, timeout_s: float, metrics: Registry | None) -> KubeClient:
    from wgagent.kube.client import KubeClient

    return KubeClient(path, timeout_s=timeout_s, retries=0, metrics=metrics)


def fetch_health(url: str, timeout_s: float) -> DaemonFacts:
    """GET ``<url>/healthz`` (blocking; never through a proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url + "/healthz", timeout=timeout_s) as resp:
            status, body = resp.status, resp.read(1 << 20)
    except urllib.error.HTTPError as exc:  # 503: it answers, with failing checks
        status, body = exc.code, exc.read(1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return DaemonFacts(url, None, error=str(getattr(exc, "reason", exc)))
    try:
        checks = json.loads(body).get("checks") or {}
        failing = tuple(n for n, c in checks.items() if isinstance(c, dict) and not c.get("ok"))
    except (ValueError, AttributeError):
        failing = ()
    return DaemonFacts(url, status, failing)


@dataclass
class Environment:
    """Where doctor's probes look: the real host by default (``seams``, as the daemon's, but
    changing nothing); tests replace any of it."""

    seams: Seams = field(default_factory=doctor_seams)
    which: Callable[[str], str | None] = shutil.which
    k3s_bin_dirs: Sequence[str] = ("/usr/local/bin",)
    health: Callable[[str, float], DaemonFacts] = fetch_health
    timeouts: Mapping[str, float] = field(default_factory=dict)
    """Per probe (k3s, module, public_ip, kube, wireguard, daemon), replacing the defaults."""
    subnet_env: str = SUBNET_ENV
    """flannel's subnet file (one of the families' evidence)."""


def timeouts(cfg: Config, env: Environment) -> dict[str, float]:
    out = {
        "k3s": 10.0,
        "module": 30.0,
        "public_ip": cfg.public_ip.timeout_s + 5.0,
        "kube": cfg.kube.request_timeout_s + 5.0,
        "wireguard": 20.0,
        "daemon": 5.0,
    }
    out.update(env.timeouts)
    return out


def _in_thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """Run blocking ``fn`` in a daemon thread: a read that hangs cannot hold doctor's exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            (future.set_result if ok else future.set_exception)(value)

    def run() -> None:
        try:
            result: Any = fn()
            ok = True
        except Exception as exc:
            result, ok = exc, False
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, ok, result)

    threading.Thread(target=run, name="doctor-probe", daemon=True).start()
    return future


async def _bounded(what: str, timeout_s: float, work: Awaitable[T]) -> T | Failed:
    try:
        return await asyncio.wait_for(work, timeout_s)
    except TimeoutError:
        return Failed(f"{what} did not finish within {timeout_s:g} s")
    except Exception as exc:  # a probe's failure is a finding, never a traceback
        if os.environ.get("WGAGENT_DEBUG"):  # as the CLI does for a bug: the trace on request
            raise
        return Failed(f"{what} failed: {type(exc).__name__}: {exc}")


def find_k3s_binary(
    unit_files: Sequence[tuple[str, str]], which: Callable[[str], str | None], bin_dirs: Sequence[str]
) -> tuple[str | None, str]:
    """The k3s executable (the unit's ExecStart, PATH, the install script's directory), and where
    it was looked for (for the report when there is none)."""
    candidates: list[str] = []
    runs = ""
    found = exec_start(unit_files)
    if found is not None and found[1]:
        argv0 = found[1][0]
        runs = f"; {os.path.basename(found[0])} runs {argv0}"
        if os.path.basename(argv0).startswith("k3s"):
            candidates.append(argv0)
    on_path = which("k3s")
    if on_path:
        candidates.append(on_path)
    candidates += [os.path.join(d, "k3s") for d in bin_dirs]
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path, ""
    return None, f"there is no k3s binary (not on PATH, nor in {', '.join(bin_dirs)}){runs}"


def read_k3s(cfg: Config, env: Environment) -> K3sFacts:
    """k3s as the daemon sees it: the identity decided once (``decide_identity_from``), the
    config files where k3s reads them (``identity.config``: K3S_CONFIG_FILE, ``--config``, else
    ``k3s.config_dir``), the unit, the binary, flannel's subnet file and the restarter's book."""
    unit_dirs = env.seams.unit_dirs
    identity = decide_identity_from(cfg, unit_dirs=unit_dirs, hostname=env.seams.hostname)
    files = read_config_files(identity.config)
    role = identity.role
    # Without a unit of its own, the role's (or, without a role, a server's) still tells what runs.
    unit = identity.unit or read_unit(role.unit if role is not None else DEFAULT_UNITS["server"], unit_dirs)
    unit_files = tuple(unit.files) if unit is not None else ()
    binary, looked = find_k3s_binary(unit_files, env.which, env.k3s_bin_dirs)
    missing = role_missing_detail(cfg.k3s, unit_dirs, identity) if role is None else ""
    return K3sFacts(
        identity, missing, binary, looked, files, unit_files if role is not None else (),
        read_subnet_env(env.subnet_env), read_restart_book(cfg.state_dir),
    )  # fmt: skip


def read_restart_book(state_dir: str) -> RestartBook:
    """The restarter's book, read only (``k3s/restart.py``); empty when absent or unreadable."""
    book = Book.from_json(fsutil.load_json(os.path.join(state_dir, HISTORY_FILE)))
    return RestartBook(frozenset(book.needs), dict(book.served))


def credentials(cfg: Config, identity: Identity | None) -> CredentialPaths:
    """The kubeconfigs the daemon uses (``wiring.kube_clients``): by role, data dir and the
    server's admin kubeconfig as the identity says (k3s's defaults when it is unknown)."""
    if identity is None:
        return credential_paths(cfg.kube, cfg.k3s, None)
    return credential_paths(
        cfg.kube, cfg.k3s, identity.role_name, data_dir=identity.data_dir, admin_kubeconfig=identity.kubeconfig
    )


async def read_kube(cfg: Config, identity: Identity | None, node: str, env: Environment) -> KubeFacts:
    paths = credentials(cfg, identity)
    timeout = cfg.kube.request_timeout_s
    own = env.seams.kube_client(paths.own, timeout, None)
    lister = own if paths.list == paths.own else env.seams.kube_client(paths.list, timeout, None)

    async def get() -> tuple[OwnNode | None, KubeError | None]:
        try:
            return own_node_of(await own.get_node(node)), None
        except KubeError as exc:
            return None, exc

    async def listing() -> tuple[ClusterView | None, str, KubeError | None]:
        # the list credential, then the own one, as the node watch falls back (servers before
        # k3s v1.32 do not let k3scontroller list Nodes: k3s/versions.py)
        first: KubeError | None = None
        for api, source in ((lister, paths.list), (own, paths.own))[: 1 if lister is own else 2]:
            try:
                return await list_once(api), source, None
            except KubeError as exc:
                first = first or exc
        return None, paths.list, first

    try:
        (own_node, node_error), (cluster, list_source, list_error) = await asyncio.gather(get(), listing())
    finally:
        for client in {id(own): own, id(lister): lister}.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 2.0)
    return KubeFacts(paths.own, list_source, own_node, node_error, cluster, list_error)


def other_wireguard_devices(net: HostNet, uapi_dir: str, exclude: Sequence[str]) -> tuple[str, ...]:
    """WireGuard devices (kernel links and UAPI sockets) other than ``exclude``."""
    names: set[str] = set()
    with contextlib.suppress(OSError):
        names.update(os.listdir(net.sys_class_net))
    with contextlib.suppress(OSError):
        names.update(n.removesuffix(".sock") for n in os.listdir(uapi_dir) if n.endswith(".sock"))
    return tuple(sorted(n for n in names if n not in exclude and is_wireguard(net.link(n), uapi_dir)))


async def read_wireguard(cfg: Config, env: Environment) -> WireGuardFacts:
    wg = cfg.wireguard
    net, backends = env.seams.host_net, env.seams.backends

    def local() -> tuple[list[str], str, frozenset[int], tuple[str, ...], dict[str, dict[str, float]]]:
        names, note = resolve_interfaces(wg.interface, net, wg.uapi_dir)
        bound = bound_udp_ports(net.udp_tables())
        others = other_wireguard_devices(net, wg.uapi_dir, names)
        store = FirstSeenStore(cfg.state_dir)  # read only: doctor saves nothing
        return names, note, bound, others, {n: dict(store.get(n)) for n in names}

    names, note, bound, others, seen = await _in_thread(local)
    reads = await asyncio.gather(*(read_device(n, wg.uapi_dir, net, backends) for n in names))
    interfaces = tuple(InterfaceRead(n, r, seen[n]) for n, r in zip(names, reads, strict=True))
    return WireGuardFacts(interfaces, note, bound, others)


async def _discover(cfg: Config, env: Environment) -> DiscoveryFacts:
    observations, decision = await wiring.discover_once(cfg.public_ip, env.seams)
    return DiscoveryFacts(tuple(observations), decision)


async def gather(cfg: Config, config_path: str, env: Environment | None = None) -> Facts:
    """Every probe's facts; k3s's first (they name the node and role), the rest at once."""
    env = env or Environment()
    t = timeouts(cfg, env)
    k3s = await _bounded("reading k3s's config and unit", t["k3s"], _in_thread(lambda: read_k3s(cfg, env)))
    identity: Identity | None = None
    if isinstance(k3s, K3sFacts):
        identity, installed = k3s.identity, k3s.installed
        node, source = identity.node, identity.node_source
    else:
        node, source, installed = cfg.node_name or env.seams.hostname().lower(), "hostname", None
    without_k3s = "k3s is not installed" if installed is False else ""

    async def skipped(why: str) -> Skipped:
        return Skipped(why)

    module = _bounded("the wireguard module check", t["module"], check_module(env.seams.module_host, load=True))
    if not cfg.public_ip.enabled:
        public_ip: Awaitable[DiscoveryFacts | Failed | Skipped] = skipped("public_ip.enabled is false")
    else:
        public_ip = _bounded("public IP discovery", t["public_ip"], _discover(cfg, env))
    if not cfg.kube.enabled or without_k3s:
        kube: Awaitable[KubeFacts | Failed | Skipped] = skipped(without_k3s or "kube.enabled is false")
    else:
        kube = _bounded("asking the Kubernetes API", t["kube"], read_kube(cfg, identity, node, env))
    if not cfg.wireguard.enabled or without_k3s:
        wireguard: Awaitable[WireGuardFacts | Failed | Skipped] = skipped(without_k3s or "wireguard.enabled is false")
    else:
        wireguard = _bounded("reading the WireGuard interface", t["wireguard"], read_wireguard(cfg, env))
    url = cfg.health.listen.url
    daemon = _bounded("asking the daemon", t["daemon"], _in_thread(lambda: env.health(url, t["daemon"] - 1.0)))
    m, p, k, w, d = await asyncio.gather(module, public_ip, kube, wireguard, daemon)
    return Facts(cfg, config_path, env.seams.clock(), node, source, k3s, m, p, k, w, d)
