"""The ``mesh`` part: one pass of :func:`wgagent.mesh.agent.step` at a time, its inputs gathered
and its outputs carried out through adapters (issue 14).

    in (adapters)                                 agent.step()       out (adapters)
    flannel's device     backends(ifname).get()   ───────────>       report    -> patch of the own Node
    Nodes + reports      the node watch's view                       probes    -> MeshHost.send
    probes seen          the tap (loop.add_reader)                   resets    -> setters(ifname)
    the host's verdict   nft counters; the ruleset                   events    -> the EventRecorder
    the node itself      adopted IP, nat, provider                   the check, /status, /metrics

A pass every :data:`PASS_S` seconds (at most half the publish interval, so a change is
published within one), sooner when a rate-limited write or a probe falls due. The tap is
read as datagrams arrive (``loop.add_reader``), into a bounded buffer the next pass takes.

The ``mesh`` check fails when something is to be fixed *on this node* (a pair or a node-level
problem naming it), or when the report cannot be published; a fault another node must fix is
in the detail and in ``wgagent mesh``, but does not turn this node red.

A clean stop (``close``) writes the last report marked ``stopped`` (so ``wgagent mesh`` says
so at once instead of after 35 minutes), removes the nftables table and closes the tap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from wgagent import events as ev
from wgagent.config import Config
from wgagent.errors import KubeError, NftUnavailable, TapUnavailable, WireGuardError
from wgagent.kube.protocol import NodeAPI
from wgagent.mesh import agent
from wgagent.mesh import diagnose as dg
from wgagent.mesh import firewall as fw
from wgagent.mesh import probe as pb
from wgagent.mesh import report as rp
from wgagent.mesh.heal import EndpointSetter, Reset
from wgagent.model import ClusterView, PublicAddresses
from wgagent.part import Part
from wgagent.state import State
from wgagent.timefmt import iso8601
from wgagent.wireguard.backend import BackendFactory, HostNet, resolve_interfaces
from wgagent.wireguard.model import Device

log = logging.getLogger(__name__)

PASS_S = 30.0
"""Between passes: a peer that goes quiet is seen within this (it is down after 65 s of quiet)."""
MIN_DELAY_S = 1.0
RETRY_S = 15.0
"""After a failed write, or while the node list is unknown."""
MAX_ARRIVALS = 10_000
"""Probes buffered between two passes at most (a flood is counted, not kept)."""
LARGE = 200
"""From this many Nodes a pass's pure step runs in a worker thread (the event loop keeps serving)."""
FINAL_WRITE_S = 0.8
"""A clean stop writes the last report within this (the daemon closes all parts within 1 s)."""


class Tap(Protocol):
    """What the part uses of :class:`wgagent.mesh.tap.ProbeTap`."""

    def open(self) -> None: ...

    def fileno(self) -> int: ...

    def drain(self) -> list[pb.Arrival]: ...

    def close(self) -> None: ...


class Counters(Protocol):
    """What the part uses of :class:`wgagent.mesh.nft.NftCounter`."""

    async def install(self, port: int) -> None: ...

    async def counts(self) -> dict[str, dict[str, int]] | None: ...

    async def remove(self) -> None: ...

    async def ruleset(self) -> tuple[dict[str, Any], str]: ...


Sender = Callable[[str, Iterable[pb.Target]], Mapping[str, str | None]]
"""``(this node, targets) -> target node -> None or why it was not sent`` (:func:`wgagent.mesh.sender.send`)."""
SetterFactory = Callable[[str, str], EndpointSetter]
"""``(ifname, uapi_dir) -> EndpointSetter`` (:func:`wgagent.wireguard.endpoints.open_endpoint_setter`)."""


def _tap(port: int) -> Tap:
    from wgagent.mesh.tap import ProbeTap

    return ProbeTap(port)


def _counters() -> Counters:
    from wgagent.mesh.nft import NftCounter

    return NftCounter()


def _send(node: str, targets: Iterable[pb.Target]) -> Mapping[str, str | None]:
    from wgagent.mesh.sender import send

    return send(node, targets)


def _is_local(ip: str) -> bool:
    from wgagent.mesh.sender import is_local_address

    return is_local_address(ip)


@dataclass(frozen=True)
class MeshHost:
    """The mesh part's reach into the host (``wiring.Seams.mesh``); tests replace any of it."""

    tap: Callable[[int], Tap] = _tap
    """``port -> Tap``: AF_PACKET with a BPF filter (needs CAP_NET_RAW)."""
    counters: Callable[[], Counters] = _counters
    """The nftables counting table and ruleset reader (runs ``nft``)."""
    send: Sender = _send
    is_local: Callable[[str], bool] = _is_local
    """Whether an address is one of this host's own (the advertised public-ip, for ``nat``)."""


@dataclass
class _Probing:
    """The tap and the counters, opened lazily, for one port."""

    port: int | None = None
    tap: Tap | None = None
    tap_state: str = "ok"
    counters: Counters | None = None
    counter_state: str = "ok"
    installed: int | None = None
    """The port the counting table was made for (None: not made)."""
    arrivals: list[pb.Arrival] = field(default_factory=list)
    overflow: int = 0
    rule: str | None = None


class MeshPart(Part):
    name = "mesh"
    checks = ("mesh",)

    def __init__(
        self,
        state: State,
        node: str,
        cfg: Config,
        api: NodeAPI,
        *,
        cluster: Callable[[], ClusterView | None],
        adopted: Callable[[], PublicAddresses | None],
        backends: BackendFactory,
        host_net: HostNet,
        setters: SetterFactory,
        host: MeshHost,
        events: Callable[[ev.Record], None] = ev.ignore,
        provider: str | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(state)
        self.node, self.cfg, self.api = node, cfg, api
        self.policy = cfg.mesh
        self.interval_s = min(PASS_S, cfg.mesh.publish_interval_s / 2)
        self._cluster, self._adopted, self._backends, self._net = cluster, adopted, backends, host_net
        self._setters, self._host, self._events, self._provider = setters, host, events, provider
        self._clock, self._rand = clock, rand
        self._st: agent.MeshState | None = None
        self._last: agent.Outputs | None = None
        self._ifname: str | None = None
        self._probing = _Probing()
        self._write_error: str | None = None
        self._peers: frozenset[tuple[str, str, bool]] = frozenset()
        m = state.metrics
        self._m_age = m.gauge(
            "wgagent_mesh_peer_handshake_age_seconds", "Seconds since the last handshake with each Node's peer.",
            ("peer_node",),
        )  # fmt: skip
        self._m_state = m.gauge(
            "wgagent_mesh_peer_state", "1 for the state of the pair from this node to each Node (ok, degraded, "
            "down, unknown).", ("peer_node", "state"),
        )  # fmt: skip
        self._m_pairs = m.gauge("wgagent_mesh_pairs", "Ordered node pairs of the whole mesh, by state.", ("state",))
        self._m_writes = m.counter("wgagent_mesh_report_writes_total", "Writes of the mesh report, by reason.",
                                   ("reason",))  # fmt: skip
        self._m_probes = m.counter("wgagent_mesh_probes_sent_total", "Inbound probes sent to other Nodes.")
        self._m_resets = m.counter("wgagent_mesh_endpoint_resets_total", "Drifted peer endpoints set back.")

    # --- the pass --------------------------------------------------------------------------

    async def reconcile(self) -> float:
        now = self._clock()
        view = self._cluster()
        if view is None:
            detail = "waiting for the node list (the node watch has not listed the Nodes yet)"
            self.state.set_check("mesh", False, detail)
            self.state.set_part(self.name, {"state": "waiting", "detail": detail})
            return RETRY_S
        device, detail = await self._device()
        inputs = await self._inputs(now, view, device, detail)
        out = await self._step(inputs, view)
        self._last = out
        await self._publish(out, now)
        self._send(out)
        await self._heal(out.resets, device, now)
        for record in out.events:
            self._events(record)
        if out.needs_rule:
            await self._name_rule(out)
        elif not out.report.inbound.host:
            self._probing.rule = None  # the drop is over: a later one is named afresh
        self._report(out)
        return self._next_delay(out, now)

    async def _inputs(self, now: float, view: ClusterView, device: Device | None, detail: str) -> agent.Inputs:
        probing = self._probing
        counts: dict[str, dict[str, int]] | None = None
        arrivals: list[pb.Arrival] = []
        if self.policy.probe:
            port = device.listen_port if device is not None and device.listen_port else self.cfg.wireguard.listen_port
            self._open_tap(port)
            # The arrivals first, then the counters (probe.account's order): a probe arriving
            # while nft runs is then counted ahead of being seen, never seen and not counted,
            # which would read as a drop by the host firewall.
            self._on_readable()
            arrivals, probing.arrivals = probing.arrivals, []
            counts = await self._counts(port)
        else:
            probing.tap_state, probing.arrivals = "off", []
        if self._st is None:
            self._st = agent.start(now, counts.get("pass") if counts else None)
        reports = rp.published(view)
        return agent.Inputs(
            now, device, view, reports, detail, self._host_facts(view), arrivals, counts,
            probing.tap_state, probing.counter_state, probing.rule,
        )  # fmt: skip

    async def _step(self, inputs: agent.Inputs, view: ClusterView) -> agent.Outputs:
        assert self._st is not None
        st = self._st
        if len(view.nodes) >= LARGE:
            out, st = await asyncio.to_thread(agent.step, self.node, inputs, st, self.policy, rand=self._rand)
        else:
            out, st = agent.step(self.node, inputs, st, self.policy, rand=self._rand)
        self._st = st
        return out

    async def _device(self) -> tuple[Device | None, str]:
        """flannel's IPv4 device (the first of ``wireguard.interface``), or None and why not."""
        wg = self.cfg.wireguard
        names, note = resolve_interfaces(wg.interface, self._net, wg.uapi_dir)
        if not names:
            self._ifname = None
            return None, note
        self._ifname = names[0]
        try:
            return await self._backends(names[0], wg.uapi_dir).get(names[0]), ""
        except WireGuardError as exc:
            return None, str(exc)

    def _host_facts(self, view: ClusterView) -> rp.HostFacts:
        addrs = self._adopted()
        public = str(addrs.ipv4) if addrs is not None and addrs.ipv4 is not None else None
        own = view.nodes.get(self.node)
        advertised = own.public_ip if own is not None else None
        nat = None if not advertised else not self._host.is_local(advertised)
        return rp.HostFacts(public, nat, self._provider)

    # --- the tap and the counters ------------------------------------------------------------

    def _open_tap(self, port: int) -> None:
        p = self._probing
        if p.tap is not None and p.port == port:
            return
        self._close_tap()
        p.port = port
        tap = self._host.tap(port)
        try:
            tap.open()
            asyncio.get_running_loop().add_reader(tap.fileno(), self._on_readable)
        except (TapUnavailable, OSError) as exc:
            with contextlib.suppress(Exception):
                tap.close()
            if p.tap_state != str(exc):
                log.warning("mesh: the probe tap cannot run: %s", exc)
            p.tap_state = str(exc)
            return
        p.tap, p.tap_state = tap, "ok"

    def _on_readable(self) -> None:
        p = self._probing
        if p.tap is None:
            return
        try:
            arrived = p.tap.drain()
        except TapUnavailable as exc:
            log.warning("mesh: the probe tap stopped: %s", exc)
            self._close_tap()
            p.tap_state = str(exc)
            return
        room = MAX_ARRIVALS - len(p.arrivals)
        p.arrivals.extend(arrived[: max(room, 0)])
        p.overflow += max(len(arrived) - max(room, 0), 0)

    def _close_tap(self) -> None:
        p = self._probing
        if p.tap is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(p.tap.fileno())
        with contextlib.suppress(Exception):
            p.tap.close()
        p.tap = None

    async def _counts(self, port: int) -> dict[str, dict[str, int]] | None:
        """The counters, (re)installing the table when it is not there; None when nft cannot."""
        p = self._probing
        if p.counters is None:
            p.counters = self._host.counters()
        try:
            if p.installed != port:
                await p.counters.install(port)
                p.installed = port
            counts = await p.counters.counts()
            if counts is None:  # a ruleset flush removed the table: make it again
                await p.counters.install(port)
                counts = await p.counters.counts()
        except NftUnavailable as exc:
            if p.counter_state != str(exc):
                log.warning("mesh: the host firewall's verdict is unknown: %s", exc)
            p.counter_state, p.installed = str(exc), None
            return None
        p.counter_state = "ok"
        return counts

    async def _name_rule(self, out: agent.Outputs) -> None:
        """Which rule of the host firewall drops the probes (or WireGuard), for the next report."""
        p = self._probing
        src = next((n.src for n in out.report.notes if n.inbound == pb.HOST and n.src), None)
        if p.counters is None or src is None or p.port is None:
            return
        from wgagent.mesh.nft import PRIORITY

        try:
            doc, text = await p.counters.ruleset()
        except NftUnavailable as exc:
            log.info("mesh: cannot read the ruleset to name the dropping rule: %s", exc)
            return
        packet = fw.Packet("ip6" if ":" in src else "ip", src, p.port)
        found = fw.find_drop(doc, packet, before=PRIORITY)
        p.rule = (
            found.describe(fw.rule_texts(text)) if found is not None else "not found in nftables (iptables-legacy?)"
        )

    # --- carrying the outputs out ------------------------------------------------------------

    async def _publish(self, out: agent.Outputs, now: float) -> None:
        if not out.publish.write:
            return
        try:
            await self.api.patch_node(self.node, rp.patch(out.report))
        except KubeError as exc:
            if self._write_error is None:
                log.warning("mesh: cannot publish the report on Node %s: %s", self.node, exc)
            self._write_error = str(exc)
            return
        if self._write_error is not None:
            log.info("mesh: the report is published again")
        self._write_error = None
        assert self._st is not None
        self._st = agent.written(self._st, out.report, now)
        self._m_writes.inc(reason=out.publish.reason)

    def _send(self, out: agent.Outputs) -> None:
        if not out.probes:
            return
        results = self._host.send(self.node, out.probes)
        sent = sum(1 for why in results.values() if why is None)
        self._m_probes.inc(sent)
        for target, why in results.items():
            if why is not None:
                log.debug("mesh: probe to %s not sent: %s", target, why)

    async def _heal(self, resets: list[Reset], device: Device | None, now: float) -> None:
        if not resets or self._ifname is None:
            return
        setter = self._setters(self._ifname, self.cfg.wireguard.uapi_dir)
        try:
            await setter.set_endpoints(self._ifname, {r.key: r.new for r in resets})
        except (WireGuardError, ValueError) as exc:
            log.warning("mesh: cannot set endpoints back on %s: %s", self._ifname, exc)
            return
        assert self._st is not None
        self._st = agent.healed(self._st, resets, device, now)
        for r in resets:
            log.info("mesh: peer %s: endpoint %s -> %s (no handshake for 180 s)", r.node, r.old, r.new)
            self._events(ev.endpoint_reset(r.node, r.old, r.new))
        self._m_resets.inc(len(resets))

    def _next_delay(self, out: agent.Outputs, now: float) -> float:
        delay = self.interval_s
        due = [out.publish.next_at] if out.publish.next_at is not None else []
        assert self._st is not None
        probe_due = pb.next_due(self._st.schedule)
        if probe_due is not None:
            due.append(probe_due)
        if self._write_error is not None:
            due.append(now + RETRY_S)
        for at in due:
            delay = min(delay, at - now)
        return max(MIN_DELAY_S, delay)

    # --- what it says: the check, /status, metrics -------------------------------------------

    def _report(self, out: agent.Outputs) -> None:
        d, me = out.diagnosis, self.node
        here: list[dg.Pair | dg.Problem] = [p for p in d.row(me).values() if p.node == me]
        here += [p for p in d.column(me).values() if p.node == me]
        here += [p for p in d.problems if p.node == me]
        ok = not here and self._write_error is None
        self.state.set_check("mesh", ok, self._detail(d, here))
        self.state.set_part(self.name, self._status(out))
        self._metrics(out)

    def _detail(self, d: dg.Diagnosis, here: list[dg.Pair | dg.Problem]) -> str:
        me, n = self.node, len(d.nodes)
        if self._write_error is not None:
            return f"cannot publish the mesh report on Node {me}: {self._write_error}"
        if here:
            first = here[0]
            more = f" (and {len(here) - 1} more: wgagent mesh)" if len(here) > 1 else ""
            return f"to fix on {me}: {first.cause}: {first.fix}{more}"
        row = len(d.row(me))
        others = sum(d.states().values()) - row
        mine = f"from {me}: {max(n - 1, 0) - row} of {max(n - 1, 0)} pairs ok"
        rest = f"; {others} other pair(s) not ok, fixed elsewhere (wgagent mesh)" if others else ""
        return f"{n} nodes; {mine}{rest}; nothing to fix here"

    def _status(self, out: agent.Outputs) -> dict[str, Any]:
        d, me, p = out.diagnosis, self.node, self._probing
        st = self._st
        return {
            "interface": out.observation.interface,
            "report": {
                "written_at": iso8601(st.written.at) if st is not None and st.written is not None else None,
                "last_decision": out.publish.reason,
                "bytes": len(rp.encode(out.report)),
                "error": self._write_error,
            },
            "row": {b: {"state": c.state, "cause": c.cause, "node": c.node} for b, c in d.row(me).items()},
            "problems": [{"node": x.node, "cause": x.cause} for x in d.problems],
            "pairs": agent.pairs_by_state(d),
            "probe": {"tap": p.tap_state, "counter": p.counter_state, "rule": p.rule, "overflow": p.overflow},
        }

    def _metrics(self, out: agent.Outputs) -> None:
        me, d = self.node, out.diagnosis
        peers = agent.peer_metrics(out.observation)
        cells = frozenset((peer, d.cell(me, peer).state, age is None) for peer, (age, _) in peers.items())
        if cells != self._peers:  # a peer came, went or changed state: its old series go
            self._m_state.clear()
            self._m_age.clear()
            for peer, cell, _ in cells:
                self._m_state.set(1, peer_node=peer, state=cell)
            self._peers = cells
        for peer, (age, _) in peers.items():
            if age is not None:
                self._m_age.set(age, peer_node=peer)
        for s, count in agent.pairs_by_state(d).items():
            self._m_pairs.set(count, state=s)

    # --- stop --------------------------------------------------------------------------------

    async def close(self) -> None:
        self._close_tap()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(self._final_report(), self._remove_table()), FINAL_WRITE_S)
        with contextlib.suppress(Exception):
            await self.api.close()

    async def _final_report(self) -> None:
        if self._last is None or self._st is None or self._st.written is None:
            return
        try:
            await self.api.patch_node(self.node, rp.patch(agent.final_report(self._last)))
        except KubeError as exc:
            log.warning("mesh: the stopped report could not be written: %s", exc)

    async def _remove_table(self) -> None:
        p = self._probing
        if p.counters is not None and p.installed is not None:
            with contextlib.suppress(NftUnavailable):
                await p.counters.remove()
            p.installed = None
