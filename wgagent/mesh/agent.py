"""One pass of the mesh part, as a pure function: what the part reads in, what it must do.

The part (phase 2) gathers :class:`Inputs` through its adapters (the device through the
WireGuard backend, the node watch's view and the others' reports, the tap's arrivals and the
late counter, what the public IP part knows), calls :func:`step`, and carries :class:`Outputs`
out: write the report when ``publish.write`` (then :func:`written`), send ``probes``
(:mod:`wgagent.mesh.sender`), set ``resets`` (:class:`wgagent.mesh.heal.EndpointSetter`, then
:func:`healed`), record ``events`` (:class:`wgagent.events.EventRecorder`), and show
``diagnosis`` in ``/status``, metrics and ``wgagent doctor``. ``needs_rule``: the host drops
probes and no rule is named yet: read the ruleset (:class:`wgagent.mesh.nft.NftCounter`) and
pass the name in ``Inputs.rule`` next time.

    state = agent.start(now)
    out, state = agent.step("n1", inputs, state, policy, rand=random.random)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from wgagent import events as ev
from wgagent.mesh import changes as ch
from wgagent.mesh import diagnose as dg
from wgagent.mesh import heal as hl
from wgagent.mesh import observe as ob
from wgagent.mesh import probe as pb
from wgagent.mesh import report as rp
from wgagent.mesh.model import MeshPolicy
from wgagent.model import ANN_PUBLIC_IP, ClusterView
from wgagent.wireguard.model import Device


@dataclass(frozen=True)
class Inputs:
    now: float
    device: Device | None
    view: ClusterView
    reports: Mapping[str, str]
    """Every Node's ``wgagent.io/mesh`` value (this node's own included, if any)."""
    interface_detail: str = ""
    host: rp.HostFacts = field(default_factory=rp.HostFacts)
    arrivals: Sequence[pb.Arrival] = ()
    counts: Mapping[str, Mapping[str, int]] | None = None
    """The counters (:func:`wgagent.mesh.nft.parse_counts`); None when they cannot be read."""
    tap_state: str = "ok"
    """``ok``, or why the tap does not run."""
    counter_state: str = "ok"
    rule: str | None = None


@dataclass(frozen=True)
class MeshState:
    started_at: float
    memory: ob.Memory | None = None
    inbound: pb.InboundMemory | None = None
    schedule: pb.Schedule = field(default_factory=pb.Schedule)
    heal: hl.HealMemory = field(default_factory=hl.HealMemory)
    written: rp.LastReport | None = None
    row: ch.Row | None = None


@dataclass(frozen=True)
class Outputs:
    observation: ob.Look
    report: rp.Report
    publish: rp.PublishDecision
    probes: list[pb.Target]
    resets: list[hl.Reset]
    events: list[ev.Record]
    diagnosis: dg.Diagnosis
    needs_rule: bool


def start(now: float, baseline: Mapping[str, int] | None = None) -> MeshState:
    return MeshState(now, inbound=pb.start(now, baseline))


def step(
    me: str, inputs: Inputs, state: MeshState, policy: MeshPolicy, *, rand: Callable[[], float]
) -> tuple[Outputs, MeshState]:
    """One pass (see the module doc)."""
    now = inputs.now
    obs = ob.observe(
        me, inputs.device, inputs.view, previous=state.memory, now=now, interface_detail=inputs.interface_detail
    )
    probing = policy.probe and inputs.tap_state != "off"
    inbound_mem = state.inbound or pb.start(now, None)
    passed = inputs.counts.get("pass", {}) if inputs.counts is not None else None
    inbound_mem = pb.account(inbound_mem, inputs.arrivals, passed, inputs.view.nodes, now)
    if inputs.counts is not None:
        pre, post = inputs.counts.get("hs_pre", {}), inputs.counts.get("hs_post", {})
        inbound_mem = pb.account_initiations(inbound_mem, pre, post, now)
    inbound = _inbound(me, inputs, inbound_mem, probing, now)
    report = rp.build(
        obs,
        inbound,
        inputs.host,
        probe_interval_s=policy.probe_interval_s if probing else None,
        probing_since=state.started_at if probing else None,
    )
    publish = rp.decide_publish(state.written, report, now, policy.publish_interval_s)
    probes: list[pb.Target] = []
    schedule = state.schedule
    if probing:
        local_port = inputs.device.listen_port if inputs.device else None
        probes, schedule = pb.plan(
            schedule, pb.targets(inputs.view, me, local_port=local_port), now, policy.probe_interval_s, rand
        )
    resets = hl.decide_heal(obs, state.heal, now, enabled=policy.heal_endpoints)
    annotations = {**inputs.reports, me: rp.encode(report)}
    diagnosis = dg.diagnose(inputs.view, annotations, now)
    row = ch.row(diagnosis, me)
    events = ch.changes(me, state.row, row)
    needs_rule = inbound is not None and any(f.status == pb.HOST for f in inbound.findings) and not inputs.rule
    out = Outputs(obs, report, publish, probes, resets, events, diagnosis, needs_rule)
    return out, replace(state, memory=obs.memory, inbound=inbound_mem, schedule=schedule, row=row)


def _inbound(me: str, inputs: Inputs, memory: pb.InboundMemory, probing: bool, now: float) -> pb.InboundView | None:
    if not probing:
        return pb.InboundView("off")
    expected = dg.expected_senders(inputs.reports, me, now)
    advertised = {
        n: i.annotations[ANN_PUBLIC_IP] for n, i in inputs.view.nodes.items() if ANN_PUBLIC_IP in i.annotations
    }
    return pb.inbound_view(
        memory, expected, advertised, now, state=inputs.tap_state, counter=inputs.counter_state, rule=inputs.rule
    )


def written(state: MeshState, report: rp.Report, now: float) -> MeshState:
    """After the report was written (the patch succeeded)."""
    return replace(state, written=rp.LastReport(now, rp.content(report)))


def healed(state: MeshState, done: Sequence[hl.Reset], device: Device | None, now: float) -> MeshState:
    """After endpoints were set back."""
    present = {p.public_key for p in device.peers} if device is not None else set()
    return replace(state, heal=hl.remember(state.heal, done, now, present))


def final_report(out: Outputs) -> rp.Report:
    """What a clean shutdown writes (at once): the last report, marked stopped."""
    return replace(out.report, state=rp.STOPPED)


def peer_metrics(obs: ob.Look) -> dict[str, tuple[float | None, str]]:
    """Per other Node: (handshake age in seconds or None, status), for ``wgagent_mesh_peer_*``
    metrics with a ``peer_node`` label (cardinality: the cluster size)."""
    return {v.node: (v.handshake_age_s, v.status) for v in obs.peers}


def pairs_by_state(d: dg.Diagnosis) -> dict[str, int]:
    """``wgagent_mesh_pairs{state}``: ordered pairs per state (ok included)."""
    n = len(d.nodes)
    counts = {"ok": n * (n - 1), "degraded": 0, "down": 0, "unknown": 0}
    for state, count in d.states().items():
        counts[state] += count
        counts["ok"] -= count
    return counts
