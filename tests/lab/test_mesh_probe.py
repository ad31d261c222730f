"""The inbound probe between network namespaces: what arrives, what the host firewall drops
(and which rule), what a drop on the path looks like, and that WireGuard does not notice.

Three nodes (n1, n2, n3), each a namespace joined to a router namespace by a veth pair
(198.51.100.0/24, a /30 each). n2 receives: ``tests/support/mesh_probe_driver.py receive``
runs wgagent's tap (AF_PACKET + BPF) and counting table (nftables) inside n2 and answers
each query with the arrivals per sender and their verdicts. n1 and n3 send with wgagent's
sender. The last test runs wireguard-go on n1 and n2 (a real handshake, then silence) and
sends 2,000 probes to n2's WireGuard port.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import pytest

from tests import labkit
from tests.conftest import ROOT, require
from tests.labkit import Host, Lab, wait_for
from wgagent.mesh import diagnose as dg
from wgagent.mesh import model as m
from wgagent.mesh import observe as ob
from wgagent.mesh import probe as pb
from wgagent.mesh import report as rp
from wgagent.model import ANN_BACKEND_DATA, ANN_PUBLIC_IP, ClusterView, NodeInfo
from wgagent.wireguard.model import Device, key_from_bytes
from wgagent.wireguard.uapi import parse_get, x25519_public

PORT = 51820
IF = "wg0"


@dataclass
class Net:
    lab: Lab
    router: Host
    hosts: dict[str, Host]
    addr: dict[str, str]


@pytest.fixture
def net(lab: Lab) -> Net:
    router = lab.host("router", forwarding=True)
    hosts, addr = {}, {}
    for i in (1, 2, 3):
        name = f"n{i}"
        host = lab.host(name)
        addr[name] = f"198.51.100.{4 * i + 2}"
        lab.link(host, "eth0", f"{addr[name]}/30", router, f"r{i}", f"198.51.100.{4 * i + 1}/30")
        lab.route(host, "default", f"198.51.100.{4 * i + 1}")
        hosts[name] = host
    return Net(lab, router, hosts, addr)


class Receiver:
    """The driver's ``receive`` in a namespace: one JSON answer per query."""

    def __init__(self, net: Net, name: str, senders: list[str]) -> None:
        argv = net.hosts[name].argv(
            sys.executable, "-m", "tests.support.mesh_probe_driver", "receive", "--port", str(PORT),
            "--nodes", ",".join(senders),
        )  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        net.lab.on_close(self.close)
        assert self._stdout().readline().strip() == "ready", "the receiver did not start"

    def _stdout(self) -> IO[str]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def query(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        line = self._stdout().readline()
        assert line, f"the receiver exited ({self.proc.poll()})"
        return dict(json.loads(line))

    def wait(self, cond: Callable[[dict[str, Any]], bool], what: str, timeout: float = 10) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def check() -> bool:
            nonlocal last
            last = self.query()
            return cond(last)

        try:
            wait_for(check, timeout, what)
        except labkit.LabError as exc:
            raise labkit.LabError(f"{exc} (last answer: {last})") from None
        return last

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            labkit.terminate(self.proc, timeout=5)


def send(net: Net, src: str, dst: str, count: int = 1) -> dict[str, int]:
    out = net.lab.run(
        net.hosts[src],
        sys.executable, "-m", "tests.support.mesh_probe_driver", "send", "--node", src,
        "--to", f"{net.addr[dst]}:{PORT}", "--count", str(count),
    )  # fmt: skip
    return dict(json.loads(out))


@pytest.fixture(autouse=True)
def _python_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # for lab.run of the driver
    yield


# --- what the diagnosis makes of it --------------------------------------------------------


def view(net: Net) -> ClusterView:
    nodes = {}
    for i, name in enumerate(sorted(net.hosts), start=1):
        anns = {ANN_BACKEND_DATA: json.dumps({"PublicKey": key_from_bytes(bytes([i]) * 32), "Port": PORT})}
        anns[ANN_PUBLIC_IP] = net.addr[name]
        nodes[name] = NodeInfo(name, anns)
    return ClusterView(nodes)


def diagnosis(net: Net, answer: dict[str, Any], rule: str | None, now: float) -> dg.Diagnosis:
    """n2's report from the receiver's answer (arrivals long enough watched), n1 and n3 healthy."""
    last = {n: pb.LastArrival(now - 5, a["src"], a["verdict"], now - 5 if a["verdict"] == pb.HOST else None)
            for n, a in answer["last"].items()}  # fmt: skip
    memory = pb.InboundMemory(now - 3600, last=last)
    expected = {n: pb.Expected(now - 3600, 300) for n in ("n1", "n3")}
    inbound = pb.inbound_view(memory, expected, {n: net.addr[n] for n in expected}, now, rule=rule)
    obs = ob.Look("n2", now, "wg0", True, "", ())
    reps = {
        n: rp.encode(rp.Report(at=int(now), interface="wg0", inbound=rp.Inbound("ok", "ok", 2))) for n in ("n1", "n3")
    }
    reps["n2"] = rp.encode(rp.build(obs, inbound, rp.HostFacts(), probe_interval_s=300, probing_since=now - 3600))
    return dg.diagnose(view(net), reps, now)


# --- the tests -----------------------------------------------------------------------------


def test_probes_arrive_and_pass_the_host(net: Net) -> None:
    rx = Receiver(net, "n2", ["n1", "n3"])
    assert send(net, "n1", "n2") == {"sent": 1, "errors": 0}
    assert send(net, "n3", "n2") == {"sent": 1, "errors": 0}
    answer = rx.wait(lambda a: set(a["last"]) == {"n1", "n3"}, "probes from n1 and n3")
    assert answer["last"] == {
        "n1": {"src": net.addr["n1"], "verdict": "pass"},
        "n3": {"src": net.addr["n3"], "verdict": "pass"},
    }
    d = diagnosis(net, answer, None, 1_800_000_000)
    assert d.ok, d


@pytest.mark.parametrize("verdict", ["reject", "drop"])
def test_a_host_firewall_on_the_input_chain_is_blocked_by_host_naming_the_rule(net: Net, verdict: str) -> None:
    firewall = (
        "table inet filter {\n"
        "  chain input {\n"
        "    type filter hook input priority filter; policy accept;\n"
        f"    udp dport {PORT} {verdict}\n"
        "  }\n"
        "}\n"
    )
    net.lab.run(net.hosts["n2"], "nft", "-f", "-", input=firewall)
    rx = Receiver(net, "n2", ["n1", "n3"])
    send(net, "n1", "n2")
    send(net, "n3", "n2")
    answer = rx.wait(lambda a: set(a["last"]) == {"n1", "n3"}, "probes seen at n2's device")
    assert {n: a["verdict"] for n, a in answer["last"].items()} == {"n1": "host", "n3": "host"}
    assert answer["rule"].startswith(f"inet filter input: udp dport {PORT} {verdict} (handle ")
    d = diagnosis(net, answer, answer["rule"], 1_800_000_000)
    cell = d.cell("n1", "n2")
    assert (cell.state, cell.cause, cell.node) == ("degraded", m.INBOUND_BLOCKED_HOST, "n2")
    assert answer["rule"] in cell.fix


def test_a_drop_on_the_path_is_blocked_upstream(net: Net) -> None:
    sg = (
        "table inet sg {\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f"    ip daddr {net.addr['n2']} udp dport {PORT} counter drop\n"
        "  }\n"
        "}\n"
    )
    net.lab.run(net.router, "nft", "-f", "-", input=sg)
    rx = Receiver(net, "n2", ["n1", "n3"])
    assert send(net, "n1", "n2", 3)["errors"] == 0
    assert send(net, "n3", "n2", 3)["errors"] == 0

    def dropped() -> int:
        doc = json.loads(net.lab.run(net.router, "nft", "-j", "list", "table", "inet", "sg"))
        rules = [i["rule"] for i in doc["nftables"] if "rule" in i]
        return sum(e["counter"]["packets"] for r in rules for e in r["expr"] if "counter" in e)

    wait_for(lambda: dropped() == 6, 10, "the router dropping the six probes")
    answer = rx.query()
    assert answer["last"] == {} and answer["arrived"] == 0
    d = diagnosis(net, answer, None, 1_800_000_000)
    assert {(a, b): (p.cause, p.node) for (a, b), p in d.faulty.items()} == {
        ("n1", "n2"): (m.INBOUND_BLOCKED_UPSTREAM, "n2"),
        ("n3", "n2"): (m.INBOUND_BLOCKED_UPSTREAM, "n2"),
    }
    assert [(p.node, p.cause) for p in d.problems] == [("n2", m.INBOUND_BLOCKED_UPSTREAM)]


# --- WireGuard does not notice -------------------------------------------------------------


def uapi_get(uapi_dir: str) -> Device:
    return parse_get(labkit.uapi(uapi_dir, "get=1\n\n", ifname=IF), IF)


def wireguard(net: Net, *, keepalive: int = 0) -> tuple[dict[str, tuple[bytes, str]], dict[str, str]]:
    """wireguard-go ``wg0`` on n1 and n2, peers of each other: (keys, UAPI directories)."""
    require("wireguard-go", "ss")
    lab = net.lab
    keys: dict[str, tuple[bytes, str]] = {}
    dirs: dict[str, str] = {}
    for i, name in ((1, "n1"), (2, "n2")):
        priv = bytes([i + 10]) * 32
        keys[name] = (priv, key_from_bytes(x25519_public(priv)))
        _, dirs[name] = lab.wireguard_go(net.hosts[name], IF)
        labkit.uapi_set(dirs[name], [f"private_key={priv.hex()}", f"listen_port={PORT}"], ifname=IF)
        lab.run(net.hosts[name], "ip", "addr", "add", f"10.42.{i}.1/16", "dev", IF)
        lab.run(net.hosts[name], "ip", "link", "set", IF, "up")
    for me, other, ip in (("n1", "n2", "10.42.2.0/24"), ("n2", "n1", "10.42.1.0/24")):
        peer = [f"public_key={_hex(keys[other][1])}", f"endpoint={net.addr[other]}:{PORT}", f"allowed_ip={ip}"]
        labkit.uapi_set(dirs[me], [*peer, f"persistent_keepalive_interval={keepalive}"], ifname=IF)
    return keys, dirs


def test_a_host_firewall_dropping_wireguard_itself_shows_within_seconds(net: Net) -> None:
    firewall = (
        "table inet filter {\n"
        "  chain input {\n"
        "    type filter hook input priority filter; policy accept;\n"
        f"    udp dport {PORT} drop\n"
        "  }\n"
        "}\n"
    )
    net.lab.run(net.hosts["n2"], "nft", "-f", "-", input=firewall)
    rx = Receiver(net, "n2", ["n1"])
    wireguard(net, keepalive=1)  # n1 and n2 start handshaking; nothing of n1 gets through
    answer = rx.wait(lambda a: net.addr["n1"] in a["wg_dropped"], "n1's handshake messages seen dropped", timeout=20)
    assert answer["rule"].startswith(f"inet filter input: udp dport {PORT} drop (handle ")
    assert answer["last"] == {}  # no probe was needed


def test_a_thousand_probes_leave_wireguard_unchanged(net: Net) -> None:
    lab = net.lab
    keys, dirs = wireguard(net)
    # A handshake without data: a persistent keepalive on n1 starts it, and is turned off again
    # once its keepalive has arrived (keepalives do not make the other side answer).
    n1_peer = [f"public_key={_hex(keys['n2'][1])}"]
    labkit.uapi_set(dirs["n1"], [*n1_peer, "persistent_keepalive_interval=25"], ifname=IF)

    def peer_of(node: str) -> Any:
        dev = uapi_get(dirs[node])
        return dev.peers[0] if dev.peers else None

    wait_for(lambda: (p := peer_of("n2")) is not None and p.last_handshake and p.rx_bytes > 0, 10, "a handshake")
    labkit.uapi_set(dirs["n1"], [*n1_peer, "persistent_keepalive_interval=0"], ifname=IF)
    before = {n: uapi_get(dirs[n]) for n in ("n1", "n2")}

    rx = Receiver(net, "n2", ["n1", "n3"])
    assert send(net, "n1", "n2", 1000)["errors"] == 0
    assert send(net, "n3", "n2", 1000)["errors"] == 0
    rx.wait(lambda a: a["arrived"] == 2000, "2,000 probes at n2's device")

    def socket_drained() -> bool:  # wireguard-go has read every datagram queued for it
        out = lab.run(net.hosts["n2"], "ss", "-H", "-u", "-a", "-n", f"sport = :{PORT}")
        return all(line.split()[1] == "0" for line in out.splitlines() if line.strip())

    wait_for(socket_drained, 10, "wireguard-go reading its socket empty")
    after = {n: uapi_get(dirs[n]) for n in ("n1", "n2")}
    for n in ("n1", "n2"):
        (b,), (a,) = before[n].peers, after[n].peers
        assert (a.last_handshake, a.rx_bytes, a.tx_bytes, a.endpoint) == (
            b.last_handshake,
            b.rx_bytes,
            b.tx_bytes,
            b.endpoint,
        ), n


def _hex(b64: str) -> str:
    return base64.b64decode(b64).hex()
