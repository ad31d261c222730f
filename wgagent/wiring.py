"""The composition root: the one place that builds wgagent's adapters and parts and connects them.

    seams = Seams()                                       # the real host; tests replace pieces
    identity = decide_identity(cfg, seams)                # node name and k3s role, decided once
    stages = build_parts(cfg, identity, state, seams)     # the daemon's parts, wired
    view, note = await list_nodes_once(cfg, identity, seams)            # wgagent gc
    observations, decision = await discover_once(cfg.public_ip, seams)  # wgagent discover, doctor

Parts never import each other and never build their own adapters: they receive them here
(a WireGuard backend factory, the host's network facts, a Kubernetes client, public IP
sources, a systemctl runner, clocks). The daemon (``daemon.py``) and the commands
(``commands/``) both come here for what they need, so a command and the daemon can never
disagree on which credential, backend or source to use.

Who hears whom (the :class:`~wgagent.part.Signal` connections made by :func:`build_parts`)::

    public IP adopted      -> annotation part, k3s part   (drop-in and overwrite follow the address)
                           -> Events                      (PublicIPAdopted; the parts that act record
                                                           theirs through ``events``: K3sConfigWritten,
                                                           K3sRestarted, OverwriteSet, PeersRemoved, the mesh's)
    Nodes changed          -> annotation part             (only when the own Node changed)
    annotation pass done   -> k3s part                    (its pass follows, so one restart serves both)
    k3s restart needed     -> k3s part                    (it restarts k3s once, for every need)
    k3s found after start  -> the daemon rebuilds         (identity is decided once per build)

Kubernetes Events: one :class:`~wgagent.events.EventRecorder` per build (with the own Node's
credential, as kubelet records its node events), handed to each part that acts as a plain
``events(record)`` callable (``events.ignore`` when ``events.enabled`` or ``kube.enabled`` is
false); its :class:`~wgagent.events.EventsPart` writes folded counts and closes it.

Heavy imports (aiohttp, pyroute2) happen inside the functions that need them, so a command
pays only for what it uses.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from wgagent.config import Config, PublicIPConfig
from wgagent.k3s.private import route_source_ipv4
from wgagent.k3s.role import UNIT_DIRS, Identity, decide_identity_from
from wgagent.model import PublicAddresses
from wgagent.proc import Runner, SubprocessRunner
from wgagent.wireguard.backend import BackendFactory, HostNet, open_backend
from wgagent.wireguard.module import ModuleHost

if TYPE_CHECKING:
    from wgagent.events import EventSink, Record
    from wgagent.families import Families
    from wgagent.k3s.part import K3sPart
    from wgagent.kube.annotation import AnnotationPart, OwnNode
    from wgagent.kube.protocol import NodeAPI, NodeLister
    from wgagent.mesh.heal import EndpointSetter
    from wgagent.mesh.part import MeshHost
    from wgagent.metrics import Registry
    from wgagent.model import ClusterView, PublicAddresses
    from wgagent.part import Part
    from wgagent.publicip.model import Decision, Observation
    from wgagent.publicip.part import PublicIPPart
    from wgagent.publicip.sources import Source, SourceSet
    from wgagent.state import State

    class ClusterAPI(NodeAPI, EventSink, Protocol):
        """What the parts need of a Kubernetes client: Nodes (watch, annotation, mesh report) and
        Events (``kube.client.KubeClient`` is both)."""


Stages = list[list["Part"]]
KubeClientFactory = Callable[[str, float, "Registry | None"], "ClusterAPI"]
"""``(kubeconfig path, request timeout, metrics) -> ClusterAPI``."""
KubeListerFactory = Callable[[str, float], "NodeLister"]
"""``(kubeconfig path, request timeout) -> NodeLister``."""


def _kube_client(path: str, timeout_s: float, metrics: Registry | None) -> ClusterAPI:
    from wgagent.kube.client import KubeClient

    return KubeClient(path, timeout_s=timeout_s, metrics=metrics)


def _endpoint_setter(ifname: str, uapi_dir: str) -> EndpointSetter:
    from wgagent.wireguard.endpoints import open_endpoint_setter

    return open_endpoint_setter(ifname, uapi_dir)


def _mesh_host() -> MeshHost:
    from wgagent.mesh.part import MeshHost

    return MeshHost()


def _kube_lister(path: str, timeout_s: float) -> NodeLister:
    from wgagent.kube.oneshot import OneShotClient

    return OneShotClient(path, timeout_s=timeout_s)


@dataclass(frozen=True)
class Seams:
    """Everything wgagent reaches outside its own memory. Production uses the defaults;
    tests replace pieces, and the wiring itself stays real."""

    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    rand: Callable[[], float] = random.random
    hostname: Callable[[], str] = socket.gethostname
    runner: Runner = field(default_factory=SubprocessRunner)
    """Runs ``systemctl`` (the k3s restarter)."""
    unit_dirs: Sequence[str] = UNIT_DIRS
    backends: BackendFactory = open_backend
    """``(ifname, uapi_dir) -> Backend``: UAPI when a socket exists, else kernel netlink."""
    host_net: HostNet = field(default_factory=HostNet)
    module_host: ModuleHost = field(default_factory=ModuleHost)
    endpoint_setters: Callable[[str, str], EndpointSetter] = _endpoint_setter
    """``(ifname, uapi_dir) -> EndpointSetter``: the mesh part's heal, over UAPI or netlink as ``backends``."""
    mesh: MeshHost = field(default_factory=_mesh_host)
    """The mesh part's probe tap (AF_PACKET), nftables counters, probe sender, local-address test."""
    kube_client: KubeClientFactory = _kube_client
    """The daemon's clients (aiohttp; the node watch streams)."""
    kube_lister: KubeListerFactory = _kube_lister
    """The one-shot node list of a command (``list_nodes_once``): the standard library, so the
    command does not import aiohttp; the same requests, credentials and errors."""
    private_ipv4: Callable[[], str | None] = route_source_ipv4
    """This node's private IPv4 (``k3s.advertise_private_address``)."""
    public_ip_sources: Sequence[Source] | None = None
    """None: the sources the config enables."""


def decide_identity(cfg: Config, seams: Seams = Seams()) -> Identity:
    """This node's Kubernetes name and k3s role, decided once, for every consumer."""
    return decide_identity_from(cfg, unit_dirs=seams.unit_dirs, hostname=seams.hostname)


# --- adapters, for the daemon's parts and the commands -------------------------------------------


def kube_clients(
    cfg: Config, identity: Identity, seams: Seams, metrics: Registry | None = None
) -> tuple[NodeAPI, NodeAPI]:
    """(own Node client, list/watch client): the credentials k3s gives this node's role."""
    own, lister = _credential_paths(cfg, identity)
    timeout = cfg.kube.request_timeout_s
    return seams.kube_client(own, timeout, metrics), seams.kube_client(lister, timeout, metrics)


def _credential_paths(cfg: Config, identity: Identity) -> tuple[str, str]:
    from wgagent.kube.kubeconfig import credential_paths

    paths = credential_paths(
        cfg.kube, cfg.k3s, identity.role_name, data_dir=identity.data_dir, admin_kubeconfig=identity.kubeconfig
    )
    return paths.own, paths.list


def own_client(cfg: Config, identity: Identity, seams: Seams, metrics: Registry | None = None) -> ClusterAPI:
    """A client of its own (each part closes its own) with the own Node's credential."""
    from wgagent.kube.kubeconfig import credential_paths

    paths = credential_paths(
        cfg.kube, cfg.k3s, identity.role_name, data_dir=identity.data_dir, admin_kubeconfig=identity.kubeconfig
    )
    return seams.kube_client(paths.own, cfg.kube.request_timeout_s, metrics)


async def list_nodes_once(cfg: Config, identity: Identity, seams: Seams) -> tuple[ClusterView | None, str]:
    """Every Node's flannel annotations from one LIST with the list credential, or None and
    why not (``wgagent gc`` without the node list removes only peers without allowed IPs)."""
    if not cfg.kube.enabled:
        return None, "kube.enabled is false"
    from wgagent.errors import KubeError
    from wgagent.kube.watch import list_once

    own, lister = _credential_paths(cfg, identity)
    paths = [lister] if own == lister else [lister, own]  # as the node watch falls back
    errors = []
    for path in paths:
        api = seams.kube_lister(path, cfg.kube.request_timeout_s)
        try:
            return await list_once(api), ""
        except KubeError as exc:
            errors.append(str(exc))
        finally:
            await api.close()
    return None, "node list unavailable: " + "; ".join(errors)


def public_ip_sources(cfg: PublicIPConfig, seams: Seams) -> SourceSet:
    """The sources ``cfg`` enables (or the seams' own), with the clients they share."""
    from wgagent.publicip.sources import SourceSet

    if seams.public_ip_sources is not None:
        return SourceSet(list(seams.public_ip_sources))
    from wgagent.publicip.build import build_source_set

    return build_source_set(cfg)


async def discover_once(cfg: PublicIPConfig, seams: Seams) -> tuple[list[Observation], Decision]:
    """One discovery round over the configured sources, and its decision; nothing adopted."""
    from wgagent.publicip.decide import decide
    from wgagent.publicip.sources import observe_all

    sources = public_ip_sources(cfg, seams)
    try:
        observations = await observe_all(sources.sources, monotonic=seams.monotonic)
    finally:
        await sources.close()
    return observations, decide(observations, quorum=cfg.quorum)


# --- the daemon's parts ------------------------------------------------------------------------


def build_parts(
    cfg: Config,
    identity: Identity,
    state: State,
    seams: Seams = Seams(),
    *,
    rebuild: Callable[[], None] | None = None,
) -> Stages:
    """The enabled parts, in start-up stages, wired to each other.

    A stage's first passes run concurrently; the next stage starts when they are done:
    observe (public IP, node list, WireGuard module and interface), annotate (the overwrite
    annotation), configure (the k3s drop-in, and the k3s restart any part needs), clean (GC).
    ``rebuild`` is called when k3s appears after wgagent started (a new identity).
    """
    return _Builder(cfg, identity, state, seams, rebuild).build()


class _Builder:
    """Builds the parts one concern at a time; every connection between them is made here."""

    def __init__(
        self, cfg: Config, identity: Identity, state: State, seams: Seams, rebuild: Callable[[], None] | None
    ) -> None:
        self.cfg, self.identity, self.state, self.seams, self.rebuild = cfg, identity, state, seams, rebuild
        self.stages: dict[str, list[Part]] = {"observe": [], "annotate": [], "configure": [], "clean": []}
        self.adopted: Callable[[], PublicAddresses | None] = _unknown
        self.cluster: Callable[[], ClusterView | None] = _unknown
        self.own_node: Callable[[], OwnNode | None] = _unknown
        self.events: Callable[[Record], None] = _ignore
        self.own_api: NodeAPI | None = None

    def build(self) -> Stages:
        cfg = self.cfg
        if cfg.kube.enabled and cfg.events.enabled:
            self._events()
        ip_part = self._public_ip() if self.cfg.public_ip.enabled else None
        k3s_part = self._k3s() if self.cfg.k3s.enabled else None
        annotation = self._kube(k3s_part) if self.cfg.kube.enabled else None
        wake_on_new_ip = annotation or k3s_part  # the annotation wakes the k3s part in turn
        if ip_part is not None and wake_on_new_ip is not None:
            part = wake_on_new_ip
            ip_part.changed.connect(lambda _: part.wake.set())
        if self.cfg.wireguard.enabled:
            self._wireguard()
        # The mesh looks at flannel's WireGuard device (wireguard.*) and speaks through the Nodes.
        if cfg.mesh.enabled and cfg.kube.enabled and cfg.wireguard.enabled:
            self._mesh()
        return [stage for stage in self.stages.values() if stage]

    # --- what flows between the parts ------------------------------------------------------

    def published_here(self) -> PublicAddresses | None:
        """The adopted address in the families the cluster uses, less any address another
        Node already publishes (two nodes behind one IP: see kube/annotation.py)."""
        from wgagent.kube.annotation import shared_with

        addrs = self.families().keep(self.adopted())
        if addrs is None:
            return None
        view = self.cluster()
        v4 = addrs.ipv4 if addrs.ipv4 and not shared_with(self.identity.node, str(addrs.ipv4), 4, view) else None
        v6 = addrs.ipv6 if addrs.ipv6 and not shared_with(self.identity.node, str(addrs.ipv6), 6, view) else None
        kept = PublicAddresses(v4, v6)
        return kept if kept else None

    def families(self) -> Families:
        """The families the cluster uses: the own Node's pod CIDRs, flannel's subnet file, a
        server's cluster-cidr (families.py)."""
        from wgagent.families import decide_families, read_subnet_env
        from wgagent.k3s.scan import read_config_files, scan_config

        own = self.own_node()
        cidrs: tuple[str, ...] = ()
        if self.identity.role_name == "server":
            setting = scan_config(self.identity.config, read_config_files(self.identity.config), role=None).settings
            cluster_cidr = setting.get("cluster-cidr")
            cidrs = cluster_cidr.items() if cluster_cidr is not None else ()
        return decide_families(
            pod_cidrs=own.pod_cidrs if own is not None else (), subnet_env=read_subnet_env(), cluster_cidrs=cidrs
        )

    async def annotate_own_node(self, annotations: Mapping[str, str]) -> None:
        """Merge ``annotations`` into this node's Node (the k3s part's HA servers: k3s/servers.py)."""
        from wgagent.errors import KubeError

        api = self.own_api
        if api is None:
            raise KubeError("no Kubernetes API client: kube.enabled is off")
        await api.patch_node(self.identity.node, {"metadata": {"annotations": dict(annotations)}})

    # --- one concern each -----------------------------------------------------------------

    def _public_ip(self) -> PublicIPPart:
        from wgagent.publicip.part import PublicIPPart

        cfg, seams = self.cfg, self.seams
        sources = public_ip_sources(cfg.public_ip, seams)
        part = PublicIPPart(self.state, cfg.public_ip, cfg.state_dir, sources, clock=seams.clock,
                            monotonic=seams.monotonic)  # fmt: skip
        self.adopted = part.adopted
        self.stages["observe"].append(part)
        self._announce_adoptions(part)
        return part

    def _announce_adoptions(self, part: PublicIPPart) -> None:
        from wgagent.events import public_ip_adopted

        last = [part.adopted()]
        how = f"agreed by the sources and confirmed in {self.cfg.public_ip.confirmations} round(s)"

        def adopted(addrs: PublicAddresses) -> None:
            self.events(public_ip_adopted(str(last[0]) if last[0] else None, str(addrs), how))
            last[0] = addrs

        part.changed.connect(adopted)

    def _k3s(self) -> K3sPart:
        from wgagent.k3s.part import K3sPart
        from wgagent.k3s.restart import Restarter
        from wgagent.k3s.servers import Stagger

        cfg, seams, identity = self.cfg, self.seams, self.identity
        # a server known for sure restarts one at a time with the other servers (k3s/servers.py)
        servers_take_turns = identity.server_keys_safe and cfg.kube.enabled
        restarter = Restarter(
            cfg.k3s,
            state_dir=cfg.state_dir,
            unit=identity.role.unit if identity.role else None,
            metrics=self.state.metrics,
            runner=seams.runner,
            clock=seams.clock,
            monotonic=seams.monotonic,
            gate=Stagger(identity.node, lambda: self.cluster(), self.annotate_own_node) if servers_take_turns else None,
            events=self.events,
        )
        part = K3sPart(self.state, cfg.k3s, identity, public_ip=self.published_here, restarter=restarter,
                       families=self.families, cluster=lambda: self.cluster(), private_ipv4=seams.private_ipv4,
                       unit_dirs=seams.unit_dirs,
                       annotate=self.annotate_own_node if cfg.kube.enabled else None, events=self.events)  # fmt: skip
        rebuild = self.rebuild
        if rebuild is not None:
            part.role_found.connect(lambda _: rebuild())
        restarter.needed.connect(lambda _: part.wake.set())
        self.stages["configure"].append(part)
        return part

    def _kube(self, k3s_part: K3sPart | None) -> AnnotationPart:
        from wgagent.k3s.view import read_view
        from wgagent.kube.annotation import AnnotationPart
        from wgagent.kube.watch import NodeWatch

        cfg, identity, state = self.cfg, self.identity, self.state
        own_api, list_api = kube_clients(cfg, identity, self.seams, state.metrics)
        self.own_api = own_api
        watch = NodeWatch(state, list_api, fallback=self._list_fallback(own_api, list_api), rand=self.seams.rand)
        self.cluster = watch.view
        annotation = AnnotationPart(
            state,
            identity.node,
            own_api,
            public_ip=lambda: self.families().keep(self.adopted()),
            k3s_view=lambda addrs: read_view(identity, cfg.k3s, self.published_here()),
            restarter=k3s_part.restarter if k3s_part is not None else None,
            cluster=watch.view,
            families=self.families,
            rand=self.seams.rand,
            events=self.events,
        )
        self.own_node = annotation.own_node
        watch.changed.connect(lambda names: annotation.wake.set() if identity.node in names else None)
        if k3s_part is not None:
            # k3s restarts once per change, after both writes: the annotation's pass first
            # (it may need the restart too), then the k3s part's, which writes the drop-in and
            # restarts for every need at once.
            annotation.done.connect(lambda _: k3s_part.wake.set())
        self.stages["observe"].append(watch)
        self.stages["annotate"].append(annotation)
        return annotation

    def _list_fallback(self, own_api: NodeAPI, list_api: NodeAPI) -> NodeAPI | None:
        """The kubelet's credential, for servers older than v1.32 where k3s's controller may
        not list Nodes (a separate client: each part closes its own)."""
        if own_api.source == list_api.source:
            return None
        return self.seams.kube_client(own_api.source, self.cfg.kube.request_timeout_s, self.state.metrics)

    def _events(self) -> None:
        from wgagent.events import EventRecorder, EventsPart, EventsPolicy

        api = own_client(self.cfg, self.identity, self.seams, self.state.metrics)
        recorder = EventRecorder(api, self.identity.node, EventsPolicy(enabled=True), clock=self.seams.clock)
        self.events = recorder.post
        self.stages["observe"].append(EventsPart(self.state, recorder, close=api.close))

    def _mesh(self) -> None:
        from wgagent.mesh.part import MeshPart

        cfg, seams = self.cfg, self.seams
        part = MeshPart(
            self.state,
            self.identity.node,
            cfg,
            own_client(cfg, self.identity, seams, self.state.metrics),
            cluster=self.cluster,
            adopted=lambda: self.adopted(),
            backends=seams.backends,
            host_net=seams.host_net,
            setters=seams.endpoint_setters,
            host=seams.mesh,
            events=self.events,
            provider=self._provider(),
            clock=seams.clock,
            rand=seams.rand,
        )
        self.stages["clean"].append(part)  # after the node watch has listed and the address is known

    def _provider(self) -> str | None:
        """The cloud the metadata source would ask (configured, or from DMI), for the fix texts."""
        chosen = self.cfg.public_ip.metadata_provider
        if chosen != "auto":
            return None if chosen == "none" else chosen
        from wgagent.publicip.metadata import identify, read_dmi

        return identify(read_dmi(self.cfg.public_ip.dmi_dir))

    def _wireguard(self) -> None:
        from wgagent.wireguard.gc.part import GCPart
        from wgagent.wireguard.interface import InterfacePart
        from wgagent.wireguard.module import ModulePart

        # Without the node watch (kube.enabled: false) the cluster is unknown: peer GC then
        # removes only peers without allowed IPs, and no live node is reported unreachable.
        cfg, seams, state = self.cfg, self.seams, self.state
        self.stages["observe"].append(ModulePart(state, cfg.wireguard, seams.module_host))
        self.stages["observe"].append(
            InterfacePart(state, cfg.wireguard, self.cluster, seams.host_net, seams.backends, clock=seams.clock)
        )
        if cfg.wireguard.gc.enabled:
            gc = GCPart(state, cfg, self.cluster, seams.host_net, seams.backends, clock=seams.clock, events=self.events)
            self.stages["clean"].append(gc)


def _unknown() -> None:
    return None


def _ignore(record: Record) -> None:
    """No Events (``events.enabled`` or ``kube.enabled`` is false)."""
