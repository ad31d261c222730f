"""Kubernetes Events: the aggregation policy (named cases), the recorder against a fake sink, and
the client's two calls against a real HTTP server on loopback."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from wgagent import events as ev
from wgagent import logs
from wgagent.errors import Conflict, KubeUnreachable, NotFound
from wgagent.kube.client import KubeClient
from wgagent.timefmt import rfc3339

NODE = "node-a"
NOW = 1_800_000_000.0
POLICY = ev.EventsPolicy()
DOWN = ev.mesh_path_down("node-a", "node-b", "down", "inbound-blocked-upstream", "node-b", "open UDP 51820")


def step(
    ledger: ev.Ledger, record: ev.Record, now: float, policy: ev.EventsPolicy = POLICY
) -> tuple[ev.Action, ev.Ledger]:
    return ev.decide(ledger, record, NODE, now, policy)


# --- the policy --------------------------------------------------------------------------------


def test_a_first_record_creates_an_event_like_kubelets() -> None:
    action, ledger = step(ev.Ledger(), DOWN, NOW)
    assert isinstance(action, ev.Create)
    assert action.body == {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"node-a.{int(NOW * 1e9):x}", "namespace": "default"},
        "involvedObject": {"kind": "Node", "name": "node-a", "uid": "node-a"},
        "reason": "MeshPathDown",
        "message": "node-a -> node-b: ok -> down (inbound-blocked-upstream); fix on node-b: open UDP 51820",
        "type": "Warning",
        "source": {"component": "wgagent", "host": "node-a"},
        "reportingComponent": "wgagent",
        "reportingInstance": "node-a",
        "firstTimestamp": "2027-01-15T08:00:00Z",
        "lastTimestamp": "2027-01-15T08:00:00Z",
        "count": 1,
    }
    assert ledger.entries["MeshPathDown"].count == 1


def test_the_same_event_again_is_counted_on_the_existing_one() -> None:
    first, ledger = step(ev.Ledger(), DOWN, NOW)
    assert isinstance(first, ev.Create)
    for i, t in enumerate((NOW + 60, NOW + 7200), start=2):  # even after 10 minutes: same key
        action, ledger = step(ledger, DOWN, t)
        assert action == ev.Patch("MeshPathDown", first.body["metadata"]["name"], {
            "count": i, "lastTimestamp": rfc3339(t), "message": first.body["message"]})  # fmt: skip


def test_another_message_within_10_minutes_is_combined_into_the_existing_event() -> None:
    first, ledger = step(ev.Ledger(), DOWN, NOW)
    other = ev.mesh_path_down("node-a", "node-c", "down", "stale-key", "node-a", "restart k3s")
    action, ledger = step(ledger, other, NOW + 599)
    assert isinstance(action, ev.Patch) and isinstance(first, ev.Create)
    assert action.name == first.body["metadata"]["name"]
    assert action.patch["count"] == 2
    assert action.patch["message"] == "(combined from similar events): " + other.message


def test_another_message_after_10_minutes_is_a_new_event() -> None:
    _, ledger = step(ev.Ledger(), DOWN, NOW)
    other = ev.mesh_path_down("node-a", "node-c", "down", "stale-key", "node-a", "restart k3s")
    action, ledger = step(ledger, other, NOW + 600)
    assert isinstance(action, ev.Create) and action.body["count"] == 1


def test_other_reasons_do_not_wait_for_each_other() -> None:
    _, ledger = step(ev.Ledger(), DOWN, NOW)
    action, _ = step(ledger, ev.mesh_path_restored("node-a", "node-b", "down"), NOW + 1)
    assert isinstance(action, ev.Create) and action.body["type"] == "Normal"


def test_at_most_one_new_event_per_reason_per_10_minutes_over_a_flapping_hour() -> None:
    ledger, creates = ev.Ledger(), 0
    for i in range(60):  # a new message every minute
        rec = ev.mesh_path_down("node-a", f"node-{i}", "down", "unknown", None, "look")
        action, ledger = step(ledger, rec, NOW + 60 * i)
        creates += isinstance(action, ev.Create)
    assert creates == 6


def test_without_tokens_repeats_are_folded_and_flushed_later() -> None:
    policy = ev.EventsPolicy(burst=2, refill_s=300)
    a1, ledger = step(ev.Ledger(), DOWN, NOW, policy)
    a2, ledger = step(ledger, DOWN, NOW + 1, policy)
    a3, ledger = step(ledger, DOWN, NOW + 2, policy)
    a4, ledger = step(ledger, DOWN, NOW + 3, policy)
    assert [type(a).__name__ for a in (a1, a2, a3, a4)] == ["Create", "Patch", "Skip", "Skip"]
    assert ledger.entries["MeshPathDown"].count == 4 and ledger.entries["MeshPathDown"].unwritten == 2
    nothing, ledger = ev.flush(ledger, NOW + 100, policy)
    assert nothing == []
    patches, ledger = ev.flush(ledger, NOW + 310, policy)
    assert [p.patch["count"] for p in patches] == [4] and ledger.entries["MeshPathDown"].unwritten == 0


def test_a_new_event_without_a_token_is_dropped_and_counted() -> None:
    policy = ev.EventsPolicy(burst=1)
    _, ledger = step(ev.Ledger(), DOWN, NOW, policy)
    action, ledger = step(ledger, ev.inbound_blocked("node-a", "inbound-blocked-host", "accept UDP"), NOW + 1, policy)
    assert isinstance(action, ev.Skip) and ledger.dropped == 1


def test_disabled_writes_nothing() -> None:
    action, ledger = step(ev.Ledger(), DOWN, NOW, ev.EventsPolicy(enabled=False))
    assert isinstance(action, ev.Skip) and ledger == ev.Ledger()


def test_messages_are_one_line_capped_and_never_carry_a_secret() -> None:
    logs.add_secret("s3cr3t-token-value")
    rec = ev.Record("K3sConfigWritten", "wrote\nthe token s3cr3t-token-value " + "x" * 2000)
    action, _ = step(ev.Ledger(), rec, NOW)
    assert isinstance(action, ev.Create)
    msg = action.body["message"]
    assert "s3cr3t" not in msg and "\n" not in msg and len(msg) == ev.MAX_MESSAGE


@pytest.mark.parametrize(
    ("record", "reason", "type_", "words"),
    [
        (ev.public_ip_adopted("198.51.100.1", "203.0.113.7", "stun, http agree"), "PublicIPAdopted", "Normal",
         "198.51.100.1 -> 203.0.113.7"),
        (ev.k3s_config_written("/etc/rancher/k3s/config.yaml.d/50-wgagent.yaml", "ip: none -> 203.0.113.7"),
         "K3sConfigWritten", "Normal", "none -> 203.0.113.7"),
        (ev.k3s_restarted("k3s.service", "drop-in changed"), "K3sRestarted", "Normal", "restarted k3s.service"),
        (ev.overwrite_set(None, "203.0.113.7"), "OverwriteSet", "Normal", "public-ip-overwrite: unset -> 203.0.113.7"),
        (ev.peers_removed(2, "flannel-wg", ["q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA="]), "PeersRemoved", "Normal",
         "removed 2 dead peers from flannel-wg (e.g. q83vEjRW...)"),
        (ev.endpoint_reset("node-b", "203.0.113.2:9999", "203.0.113.2:51820"), "EndpointReset", "Normal",
         "endpoint 203.0.113.2:9999 -> 203.0.113.2:51820"),
        (DOWN, "MeshPathDown", "Warning", "fix on node-b"),
        (ev.mesh_path_restored("node-a", "node-b", "down"), "MeshPathRestored", "Normal", "down -> ok"),
        (ev.inbound_blocked("node-a", "inbound-blocked-host", "accept UDP 51820"), "InboundBlocked", "Warning",
         "accept UDP 51820"),
        (ev.inbound_restored("node-a", "inbound-blocked-host"), "InboundRestored", "Normal", "get in again"),
    ],
)  # fmt: skip
def test_builders(record: ev.Record, reason: str, type_: str, words: str) -> None:
    assert (record.reason, record.type) == (reason, type_) and words in record.message


# --- the recorder, against a fake sink ---------------------------------------------------------


class FakeSink:
    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail: Exception | None = None
        self.conflict = False

    async def create_event(self, namespace: str, event: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", event["metadata"]["name"]))
        if self.fail is not None:
            raise self.fail
        if self.conflict:
            raise Conflict("409 AlreadyExists", status=409)
        self.events[event["metadata"]["name"]] = dict(event)
        return dict(event)

    async def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append(("patch", name))
        if self.fail is not None:
            raise self.fail
        if name not in self.events:
            raise NotFound("404", status=404)
        self.events[name].update(patch)
        return self.events[name]


class Clock:
    def __init__(self) -> None:
        self.t = NOW

    def __call__(self) -> float:
        return self.t


async def test_recorder_creates_then_counts() -> None:
    sink, clock = FakeSink(), Clock()
    rec = ev.EventRecorder(sink, NODE, clock=clock)
    await rec.record(DOWN)
    clock.t += 30
    await rec.record(DOWN)
    (event,) = sink.events.values()
    assert event["count"] == 2 and event["lastTimestamp"] == rfc3339(NOW + 30) and rec.written == 2


async def test_an_expired_event_is_created_again_with_its_count() -> None:
    sink, clock = FakeSink(), Clock()
    rec = ev.EventRecorder(sink, NODE, clock=clock)
    await rec.record(DOWN)
    sink.events.clear()  # the API server's --event-ttl (1 h) passed
    clock.t += 4000
    await rec.record(DOWN)
    assert [c[0] for c in sink.calls] == ["create", "patch", "create"]
    (event,) = sink.events.values()
    assert event["count"] == 2 and event["firstTimestamp"] == rfc3339(NOW)


async def test_a_conflict_on_create_is_no_failure() -> None:
    sink = FakeSink()
    sink.conflict = True
    rec = ev.EventRecorder(sink, NODE, clock=Clock())
    await rec.record(DOWN)
    assert rec.failed == 0 and "MeshPathDown" in rec.ledger.entries


async def test_a_failed_write_is_logged_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    sink = FakeSink()
    sink.fail = KubeUnreachable("POST https://127.0.0.1:6443/api/v1/namespaces/default/events: timed out")
    rec = ev.EventRecorder(sink, NODE, clock=Clock())
    await rec.record(DOWN)
    assert rec.failed == 1 and rec.ledger == ev.Ledger()
    assert "could not be written" in caplog.text


# --- the client's calls, on a real HTTP server -------------------------------------------------


async def test_client_posts_and_merge_patches_events(tmp_path: Path, unused_tcp_port: int) -> None:
    seen: list[tuple[str, str, str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append((request.method, request.path, request.content_type, await request.json()))
        return web.json_response({"kind": "Event", "metadata": {"name": "x"}}, status=201)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", unused_tcp_port)
    await site.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{unused_tcp_port}"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
    }))  # fmt: skip
    client = KubeClient(str(kubeconfig))
    sink: ev.EventSink = client  # the client implements the recorder's sink
    try:
        await sink.create_event("default", {"metadata": {"name": "node-a.1"}})
        await sink.patch_event("default", "node-a.1", {"count": 2})
    finally:
        await client.close()
        await runner.cleanup()
    assert seen == [
        ("POST", "/api/v1/namespaces/default/events", "application/json", {"metadata": {"name": "node-a.1"}}),
        ("PATCH", "/api/v1/namespaces/default/events/node-a.1", "application/merge-patch+json", {"count": 2}),
    ]
