"""The ``annotation`` check: flannel publishes the decided address, and wgagent never fights k3s.

flannel copies ``flannel.alpha.coreos.com/public-ip-overwrite`` into ``public-ip`` only when
it starts (flannel ``pkg/subnet/kube/kube.go`` ``AcquireLease``); the other nodes follow
``public-ip``. And k3s itself manages the overwrite at every start, by version
(``k3s/versions.py``): with ``flannel-external-ip`` on it sets it from ``node-external-ip``;
with it off, releases since k3s PR #13431 remove it, older ones leave it alone. So wgagent's
drop-in (``node-external-ip``) is the way, and the annotation part patches the overwrite only
where k3s will leave it be. Per managed family (``families.py``: only the families the
cluster uses), :func:`decide_family` picks the first rule that applies:

    ok          flannel publishes the decided address
    shared      another Node already publishes it: two nodes behind one public IP break
                each other's tunnels; not advertised here (the k3s part leaves it out too)
    override    k3s will take another node-external-ip (a later config file, ExecStart, a
                K3S_CONFIG_FILE elsewhere): say where and how to fix it; no patch, no restart
    drop-in     wgagent's drop-in is about to say it: the k3s part writes it and restarts k3s
    restart     k3s has not restarted since: the k3s part's restart is pending
    wiped       k3s runs with it but did not set the overwrite, and this k3s removes it at
                every start: flannel-external-ip is off on the servers; the fix says so
    patch       k3s runs with it, did not set the overwrite, and leaves it alone: set it,
                and ask for one restart (Restarter kind ``overwrite``)
    flannel     the overwrite is right, flannel published an older address: one restart
    stuck       a restart for this already happened and did not change it: report, never again

The own Node is read from the node watch when it shows all is well (no request); otherwise
with one GET (its annotations, ``spec.podCIDRs``, ``status.nodeInfo.kubeletVersion``,
``spec.providerID``). Failures are logged once when they start; the next pass comes sooner
(backoff) while something is failing.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wgagent.errors import Forbidden, KubeConfigError, KubeError, NotFound, Unauthorized
from wgagent.events import Record, ignore, overwrite_set
from wgagent.families import Families, ipv4_only
from wgagent.k3s.versions import K3sVersion, wipes_overwrite_when_off
from wgagent.k3s.view import ExternalIP, K3sView
from wgagent.kube.backoff import OUTAGE_CAP_S, Backoff
from wgagent.kube.protocol import JSONObject, NodeAPI
from wgagent.model import (
    ANN_BACKEND_DATA,
    ANN_BACKEND_V6_DATA,
    ANN_K3S_EXTERNAL_IP,
    ANN_K3S_NODE_ARGS,
    ANN_PUBLIC_IP,
    ANN_PUBLIC_IP_OVERWRITE,
    ANN_PUBLIC_IPV6,
    ANN_PUBLIC_IPV6_OVERWRITE,
    FLANNEL,
    ClusterView,
    PublicAddresses,
    RestartRequests,
    port_from_backend_data,
)
from wgagent.part import Part, Signal
from wgagent.state import State

log = logging.getLogger(__name__)

OVERWRITE = {4: ANN_PUBLIC_IP_OVERWRITE, 6: ANN_PUBLIC_IPV6_OVERWRITE}
PUBLISHED = {4: ANN_PUBLIC_IP, 6: ANN_PUBLIC_IPV6}
BACKEND_DATA = {4: ANN_BACKEND_DATA, 6: ANN_BACKEND_V6_DATA}

STEADY_INTERVAL_S = 300.0
"""Between passes when all is well. A pass then reads only the watch's memory; the watch
wakes this part as soon as the own Node's annotations change."""
PENDING_INTERVAL_S = 60.0
"""While waiting for k3s or flannel (a restart pending or under way)."""
CREDENTIAL_FILE_RETRY_S = 15.0
"""A missing or unreadable kubeconfig (k3s writes the kubelet's at first start) is read again
this often; it costs the API server nothing."""

SHARED_FIX = (
    "give each node its own public IP (an elastic or 1:1-NAT address per node); or, with flannel v0.26.6 or later "
    "on every node (k3s v1.30.12, v1.31.8, v1.32.4, v1.33.0 and later), a WireGuard port of its own per node "
    "(a flannel-conf whose Backend sets ListenPort) with a UDP port forward on the NAT to each node"
)


def short(key: str) -> str:
    return key[len(FLANNEL) :] if key.startswith(FLANNEL) else key


def same_ip(have: str | None, want: str) -> bool:
    """Equal as addresses ("2001:db8::1" is "2001:0db8:0:0:0:0:0:1")."""
    if have is None:
        return False
    try:
        return ipaddress.ip_address(have.strip()) == ipaddress.ip_address(want)
    except ValueError:
        return False


def in_list(items: str | None, want: str) -> bool:
    """Whether a comma-joined address list (``k3s.io/external-ip``) holds ``want``."""
    return any(same_ip(item, want) for item in (items or "").split(","))


@dataclass(frozen=True)
class OwnNode:
    """What one GET of the own Node tells."""

    annotations: Mapping[str, str]
    pod_cidrs: tuple[str, ...] = ()
    version: K3sVersion | None = None
    k3s_ccm: bool = True
    """k3s's own cloud controller runs (``spec.providerID`` ``k3s://...``); older k3s set the
    overwrite only then."""


def own_node_of(obj: JSONObject) -> OwnNode:
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    anns = {k: v for k, v in (meta.get("annotations") or {}).items() if isinstance(k, str) and isinstance(v, str)}
    cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    info = (obj.get("status") or {}).get("nodeInfo") or {}
    provider = spec.get("providerID")
    return OwnNode(
        anns,
        tuple(c for c in cidrs if isinstance(c, str)),
        K3sVersion.find(info.get("kubeletVersion") if isinstance(info.get("kubeletVersion"), str) else None),
        not isinstance(provider, str) or not provider or provider.startswith("k3s://"),
    )


# --- the decision (pure) ---------------------------------------------------------------------


@dataclass(frozen=True)
class FamilyFacts:
    """Everything :func:`decide_family` needs of one address family."""

    family: int
    want: str
    annotations: Mapping[str, str]
    k3s: ExternalIP
    version: K3sVersion | None = None
    k3s_restart_pending: bool = False
    """The k3s part still needs a restart for its drop-in (k3s runs an older config)."""
    shared_with: str | None = None
    stuck: bool = False
    dropin_written: bool = True
    """wgagent's drop-in on disk already holds it (``K3sView.dropin_written``)."""

    @property
    def overwrite(self) -> str | None:
        return self.annotations.get(OVERWRITE[self.family])

    @property
    def published(self) -> str | None:
        return self.annotations.get(PUBLISHED[self.family])

    @property
    def running(self) -> str | None:
        """The running k3s's ``node-external-ip`` list, comma-joined, or None when unknown: from
        ``k3s.io/node-args`` (its effective flags, written at every start), else
        ``k3s.io/external-ip`` (only with k3s's cloud controller, and never removed when the
        flag goes away: docs/UPSTREAM.md §2, §3)."""
        from_args = node_args_external_ips(self.annotations.get(ANN_K3S_NODE_ARGS))
        if from_args is not None:
            return ",".join(from_args)
        return self.annotations.get(ANN_K3S_EXTERNAL_IP)


@dataclass(frozen=True)
class Ruling:
    rule: str
    ok: bool
    detail: str
    fix: str = ""
    patch: str | None = None
    """Set this family's overwrite to this address."""
    restart: bool = False
    """k3s must restart so flannel re-reads the overwrite."""


def decide_family(f: FamilyFacts) -> Ruling:
    """The first rule of the module doc that applies to this family."""
    ow, pub = short(OVERWRITE[f.family]), short(PUBLISHED[f.family])
    if f.shared_with is not None:
        return Ruling(
            "shared", False,
            f"{f.want} is already published by Node {f.shared_with}: two nodes behind one public IP break each "
            f"other's WireGuard tunnels; wgagent does not advertise it here", SHARED_FIX,
        )  # fmt: skip
    if same_ip(f.published, f.want):
        return _restore(f, ow, pub) or Ruling("ok", True, f"{pub} is {f.want}")
    return _k3s_rules(f, ow, pub) or _overwrite_rules(f, ow, pub)


def _restore(f: FamilyFacts, ow: str, pub: str) -> Ruling | None:
    """Published right, but the overwrite is gone or changed (someone removed it): put it back
    where this k3s leaves it alone, so flannel's next start publishes the same; no restart. Not
    where k3s sets or removes it itself at every start: that would be fighting it."""
    if same_ip(f.overwrite, f.want) or f.version is None or wipes_overwrite_when_off(f.version):
        return None
    if _k3s_rules(f, ow, pub) is not None:
        return None
    how = "removed" if f.overwrite is None else f"changed to {f.overwrite}"
    return Ruling("restore", True, f"{pub} is {f.want}; {ow} was {how}, put back (k3s {f.version} leaves it alone)",
                   patch=f.want)  # fmt: skip


def _k3s_rules(f: FamilyFacts, ow: str, pub: str) -> Ruling | None:
    """Rules on what k3s will use and whether it runs with it; None when it does."""
    if not same_ip(f.k3s.value, f.want):
        if f.k3s.ours:
            return Ruling("drop-in", False, f"wgagent's drop-in is about to set node-external-ip {f.want}")
        k3s_says = f.k3s.value or "nothing"
        return Ruling(
            "override", False,
            f"k3s will use node-external-ip {k3s_says} from {f.k3s.source}, not {f.want}, so flannel publishes "
            f"{f.published or 'no ' + pub}; not restarting k3s, which would not change it",
            f"remove node-external-ip from {f.k3s.source} (wgagent's drop-in sets it), or pin the address with "
            "public_ip.static",
        )  # fmt: skip
    # What the running k3s took: its flags when it published them (k3s.io/node-args); else k3s
    # has it unless its drop-in is yet to be written or its restart is still pending.
    stale = not in_list(f.running, f.want) if f.running is not None else not f.dropin_written
    if f.k3s_restart_pending or stale:
        return Ruling(
            "restart", False, f"k3s has not restarted since node-external-ip became {f.want}", patch=_ahead(f)
        )
    return None


def _ahead(f: FamilyFacts) -> str | None:
    """The overwrite to set now, before the restart k3s needs anyway, so that one restart serves
    both: only where this k3s leaves the overwrite alone (with flannel-external-ip on it would
    set the same; where it removes it at start, setting it is pointless)."""
    leaves_it = f.version is not None and not wipes_overwrite_when_off(f.version)
    return f.want if leaves_it and not same_ip(f.overwrite, f.want) else None


def _overwrite_rules(f: FamilyFacts, ow: str, pub: str) -> Ruling:
    """k3s runs with the decided node-external-ip: only the overwrite or flannel can be behind."""
    if f.stuck:
        return Ruling(
            "stuck", False,
            f"{ow} is {f.overwrite or 'not set'} and flannel's {pub} is {f.published or 'not set'} even after a k3s "
            f"restart for {f.want}; not restarting again",
            "check that flannel runs on this node with the kube subnet manager (k3s's own flannel), and k3s's log",
        )  # fmt: skip
    if not same_ip(f.overwrite, f.want):
        if f.version is None or wipes_overwrite_when_off(f.version):
            return _wiped(f, ow)
        return Ruling(
            "patch", False,
            f"k3s {f.version} runs with node-external-ip {f.want} but did not set {ow} (flannel-external-ip is off, or "
            f"k3s's cloud controller is); setting it, which this k3s leaves alone", patch=f.want, restart=True,
        )  # fmt: skip
    return Ruling(
        "flannel", False,
        f"{ow} is {f.want} but flannel's {pub} is still {f.published or 'not set'} (flannel reads it only when it "
        "starts)", restart=True,
    )  # fmt: skip


def _wiped(f: FamilyFacts, ow: str) -> Ruling:
    version = f"k3s {f.version}" if f.version is not None else "this k3s (version unknown)"
    return Ruling(
        "wiped", False,
        f"{version} runs with node-external-ip {f.want} but {ow} is {f.overwrite or 'not set'}: with "
        "flannel-external-ip off, k3s removes the overwrite at every start (k3s PR #13431), so setting it is pointless",
        "set flannel-external-ip: true on every server (wgagent does with k3s.flannel_external_ip: true, the default), "
        "restart k3s on the servers, then on this node",
    )  # fmt: skip


def node_args_external_ips(text: str | None) -> list[str] | None:
    """The ``--node-external-ip`` values in ``k3s.io/node-args`` (a JSON list: the subcommand, then
    each flag and its value; k3s ``pkg/nodeconfig``), or None when it cannot be read.

    >>> node_args_external_ips('["agent","--node-external-ip","203.0.113.7,2001:db8::7","--node-label","a=b"]')
    ['203.0.113.7', '2001:db8::7']
    >>> node_args_external_ips('["agent","--node-label","a=b"]')
    []
    """
    try:
        items = json.loads(text) if text else None
    except ValueError:
        return None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        return None
    out: list[str] = []
    for flag, value in itertools.pairwise(items):
        if flag == "--node-external-ip":
            out += [v.strip() for v in value.split(",") if v.strip()]
    return out


def shared_with(own: str, address: str, family: int, cluster: ClusterView | None) -> str | None:
    """Another Node that publishes ``address`` and keeps it: the one already publishing it while
    this one does not, or, when both do, the one whose name sorts first (stable on both sides).
    Not a Node reached on another port: see :func:`apart_by_port`."""
    if cluster is None:
        return None
    key = PUBLISHED[family]
    mine = cluster.nodes.get(own)
    i_publish = mine is not None and same_ip(mine.annotations.get(key), address)
    for name in sorted(cluster.nodes):
        theirs = name != own and same_ip(cluster.nodes[name].annotations.get(key), address)
        if theirs and (not i_publish or name < own) and not apart_by_port(own, name, family, cluster):
            return name
    return None


def apart_by_port(own: str, other: str, family: int, cluster: ClusterView) -> bool:
    """Two Nodes behind one public IP that every peer reaches apart: each publishes its own
    WireGuard port in its backend-data, and every Node's flannel dials the published port (it
    writes ``Port`` itself, so it is v0.26.6 or later: ``model.port_from_backend_data``). The
    per-node port of issue 11 §4: a ``flannel-conf`` with its own ``ListenPort`` on each such
    node and a UDP port forward on the NAT to each."""
    key = BACKEND_DATA[family]
    mine = cluster.nodes.get(own)
    theirs = cluster.nodes.get(other)
    if mine is None or theirs is None:
        return False
    a = port_from_backend_data(mine.annotations.get(key))
    b = port_from_backend_data(theirs.annotations.get(key))
    if a is None or b is None or a == b:
        return False
    publishing = [n for n in cluster.nodes.values() if n.annotations.get(key)]
    return all(port_from_backend_data(n.annotations.get(key)) is not None for n in publishing)


# --- the part --------------------------------------------------------------------------------


@dataclass
class _Seen:
    """The last GET of the own Node, kept while nothing says it changed."""

    node: OwnNode | None = None
    confirmed: dict[str, str] = field(default_factory=dict)
    """Each overwrite as it was when a GET last found all well ("" for none)."""


class AnnotationPart(Part):
    name = "annotation"
    checks = ("annotation",)
    interval_s = STEADY_INTERVAL_S

    def __init__(
        self,
        state: State,
        node: str,
        api: NodeAPI,
        *,
        public_ip: Callable[[], PublicAddresses | None],
        k3s_view: Callable[[PublicAddresses], K3sView],
        restarter: RestartRequests | None = None,
        cluster: Callable[[], ClusterView | None] = lambda: None,
        families: Callable[[], Families] = ipv4_only,
        rand: Callable[[], float] = random.random,
        events: Callable[[Record], None] = ignore,
    ) -> None:
        super().__init__(state)
        self.node = node
        self.api = api
        self._events = events
        self.done: Signal[None] = Signal("annotation.done")
        """Emitted after every pass: the k3s part follows, so k3s restarts once for every need."""
        self._public_ip = public_ip
        self._k3s_view = k3s_view
        self._restarter = restarter
        self._cluster = cluster
        self._families = families
        self._retry = Backoff(rand, base_s=5.0, cap_s=OUTAGE_CAP_S)
        self._slow = Backoff(rand, base_s=10.0, cap_s=600.0)
        self._problem: str | None = None
        self._seen = _Seen()
        self._status: dict[str, Any] = {"node": node}
        m = state.metrics
        self._m_patches = m.counter(
            "wgagent_annotation_patches_total", "Patches of the own Node's overwrite annotations.", ("reason",)
        )
        self._m_restarts = m.counter(
            "wgagent_annotation_restart_requests_total", "k3s restarts requested so that flannel re-reads them."
        )

    def own_node(self) -> OwnNode | None:
        """The own Node as last read (``spec.podCIDRs``, version): the families' best evidence."""
        return self._seen.node

    async def reconcile(self) -> float | None:
        try:
            return await self._pass()
        finally:
            self.done.emit(None)

    async def close(self) -> None:
        await self.api.close()

    async def _pass(self) -> float:
        families = self._families()
        addrs = families.keep(self._public_ip())
        if addrs is None:
            msg = f"no public IP decided yet; nothing to annotate on Node {self.node}"
            return self._fail("waiting", msg, PENDING_INTERVAL_S, quiet=True)
        want = {v: str(ip) for v, ip in ((4, addrs.ipv4), (6, addrs.ipv6)) if ip is not None}
        if self._all_published(want):
            return self._succeed(want, "watch", families)
        try:
            node = own_node_of(await self.api.get_node(self.node))
            self._seen.node = node
            verdicts = self._decide(node, want, addrs)
            node = await self._patch(node, verdicts)
        except KubeError as exc:
            return self._api_failed(exc)
        self._retry.reset()
        self._slow.reset()
        self._ask_restart(want, verdicts)
        if all(v.ok for v in verdicts.values()):
            self._seen.confirmed = {OVERWRITE[v]: node.annotations.get(OVERWRITE[v], "") for v in want}
            return self._succeed(want, "api", families, verdicts)
        self._record(want, node.annotations, "api", families, verdicts)
        kind = next(v.rule for v in verdicts.values() if not v.ok)
        detail = f"Node {self.node}: " + "; ".join(_line(v) for v in verdicts.values() if not v.ok)
        return self._fail(kind, detail, PENDING_INTERVAL_S)

    # --- steps -------------------------------------------------------------------------

    def _all_published(self, want: Mapping[int, str]) -> bool:
        """All is well by the watch alone: published as decided, shared with nobody, and each
        overwrite as it was when a GET last found all well (a change there is worth a look)."""
        view = self._cluster()
        info = view.nodes.get(self.node) if view is not None else None
        if info is None:
            return False
        anns = info.annotations
        confirmed = self._seen.confirmed
        well = all(
            same_ip(anns.get(PUBLISHED[v]), ip)
            and shared_with(self.node, ip, v, view) is None
            and anns.get(OVERWRITE[v], "") == confirmed.get(OVERWRITE[v], anns.get(OVERWRITE[v], ""))
            for v, ip in want.items()
        )
        if well:
            confirmed.update({OVERWRITE[v]: anns.get(OVERWRITE[v], "") for v in want})
        return well

    def _decide(self, node: OwnNode, want: Mapping[int, str], addrs: PublicAddresses) -> dict[int, Ruling]:
        view = self._k3s_view(addrs)
        cluster = self._cluster()
        pending = self._restart_pending()
        stuck = self._restarter.stuck.get("overwrite") if self._restarter is not None else None
        out = {}
        for v, ip in want.items():
            facts = FamilyFacts(
                v, ip, node.annotations, view.family(v), node.version, pending,
                shared_with(self.node, ip, v, cluster), stuck == want_key(want), view.dropin_written,
            )  # fmt: skip
            out[v] = decide_family(facts)
        return out

    def _restart_pending(self) -> bool:
        return self._restarter is not None and "config" in self._restarter.open_needs

    async def _patch(self, node: OwnNode, verdicts: Mapping[int, Ruling]) -> OwnNode:
        changes = {OVERWRITE[v]: verdict.patch for v, verdict in verdicts.items() if verdict.patch is not None}
        if not changes:
            return node
        for key, value in changes.items():
            log.info("Node %s: setting %s to %s (was %s)", self.node, short(key), value, node.annotations.get(key))
            self._m_patches.inc(reason="set")
        patched = await self.api.patch_node(self.node, {"metadata": {"annotations": changes}})
        for key, value in changes.items():
            self._events(overwrite_set(node.annotations.get(key), value, key))
        return own_node_of(patched)

    def _ask_restart(self, want: Mapping[int, str], verdicts: Mapping[int, Ruling]) -> None:
        if self._restarter is None:
            return
        needing = [v for v in verdicts.values() if v.restart]
        if not needing:
            self._restarter.drop("overwrite")
            return
        self._m_restarts.inc()
        keys = ", ".join(short(OVERWRITE[f]) for f, v in verdicts.items() if v.restart)
        self._restarter.need("overwrite", want_key(want), f"flannel re-reads {keys}")

    def _api_failed(self, exc: KubeError) -> float:
        if isinstance(exc, NotFound):
            why = f"Node {self.node} does not exist yet (k3s not started or the node not registered); waiting for it"
            return self._fail("missing", why, self._retry.next(), quiet=True)
        if isinstance(exc, KubeConfigError):  # no request was made: look at the file again soon
            return self._fail("credential", self._credential_problem(exc), CREDENTIAL_FILE_RETRY_S)
        if isinstance(exc, Forbidden | Unauthorized):
            return self._fail("credential", self._credential_problem(exc), self._slow.next())
        why = f"cannot reach the API server to check Node {self.node}: {exc}"
        return self._fail("api", why, self._retry.next())

    def _credential_problem(self, exc: KubeError) -> str:
        source = self.api.source
        if isinstance(exc, Forbidden):
            return (
                f"the credential in {source} may not read or patch Node {self.node} ({exc}); "
                "it must be this node's own (kube.kubeconfig), or node_name is wrong"
            )
        if isinstance(exc, Unauthorized):
            return f"the API server does not accept the credential in {source} ({exc})"
        return f"no usable credential for Node {self.node}: {exc}"

    # --- reporting ---------------------------------------------------------------------

    def _succeed(
        self, want: Mapping[int, str], source: str, families: Families, verdicts: Mapping[int, Ruling] | None = None
    ) -> float:
        if self._restarter is not None:
            self._restarter.drop("overwrite")
        self._retry.reset()
        self._slow.reset()
        if verdicts:
            detail = "; ".join(v.detail for v in verdicts.values())
        else:
            detail = "; ".join(f"{short(PUBLISHED[v])} is {ip}" for v, ip in want.items())
        if self._problem is not None:
            log.info("Node %s: %s", self.node, detail)
        self._problem = None
        view = self._cluster()
        info = view.nodes.get(self.node) if view is not None else None
        if info is not None and source == "watch":
            anns: Mapping[str, str] = info.annotations
        else:
            anns = self._seen.node.annotations if self._seen.node is not None else {}
        self._record(want, anns, source, families, {})
        self.state.set_check("annotation", True, f"Node {self.node}: {detail}")
        return STEADY_INTERVAL_S

    def _fail(self, kind: str, detail: str, retry_s: float, *, quiet: bool = False) -> float:
        if kind != self._problem:  # once per kind of problem, not every retry
            (log.info if quiet else log.warning)("%s", detail)
        self._problem = kind
        self._status["retry_in_s"] = round(retry_s, 1)
        self.state.set_part(self.name, self._status)
        self.state.set_check("annotation", False, detail)
        return retry_s

    def _record(
        self,
        want: Mapping[int, str],
        current: Mapping[str, str],
        source: str,
        families: Families,
        verdicts: Mapping[int, Ruling],
    ) -> None:
        self._status = {
            "node": self.node,
            "kubeconfig": self.api.source,
            "families": families.to_json(),
            "want": {OVERWRITE[v]: ip for v, ip in want.items()},
            "have": {k: current.get(k) for v in want for k in (OVERWRITE[v], PUBLISHED[v])}
            | {ANN_K3S_EXTERNAL_IP: current.get(ANN_K3S_EXTERNAL_IP)},
            "k3s_version": str(self._seen.node.version) if self._seen.node and self._seen.node.version else None,
            "rules": {f"ipv{v}": {"rule": r.rule, "fix": r.fix or None} for v, r in verdicts.items()},
            "read_from": source,
        }
        self.state.set_part(self.name, self._status)


def want_key(want: Mapping[int, str]) -> str:
    """The ``overwrite`` restart need's want: the decided addresses, IPv4 first (doctor reads it
    back from the restart book)."""
    return ",".join(ip for _, ip in sorted(want.items()))


def _line(verdict: Ruling) -> str:
    return f"{verdict.detail}; fix: {verdict.fix}" if verdict.fix else verdict.detail


__all__: Sequence[str] = ("AnnotationPart", "FamilyFacts", "OwnNode", "Ruling", "decide_family", "shared_with")
