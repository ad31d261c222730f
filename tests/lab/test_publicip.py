"""Public IP discovery in network namespaces: a NATed node, real STUN servers, stand-ins.

    node 10.9.0.2 ── router 10.9.0.1 | wan0 203.0.113.1 (nft masquerade) ── inet
    pubnode 198.51.100.7, 2001:db8:5::7 ─────────────────────────────────── inet

    inet  203.0.113.254/.253  stund            203.0.113.252  coturn (STUN only)
          203.0.113.11/.12    echo (reflect)   203.0.113.13   Cloudflare-style trace
          203.0.113.20        a lying echo     203.0.113.21   bad echoes, one port each
          203.0.113.22        bad STUN         203.0.113.40   metadata, one port per provider
          2001:db8:5::1       STUN stand-in over IPv6 (for pubnode)

Every wgagent run here gets a config naming only these hosts (``config()``), including all
eight metadata base URLs, so nothing can reach a real service. One topology serves the
whole module; tests that change it (link down, NAT address) restore it in ``finally``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import ROOT, call_failed, require
from tests.labkit import Host, Lab, sweep_stale, wait_for
from tests.support import configs
from wgagent.config import METADATA_PROVIDERS

ROUTER_IP = "203.0.113.1"
FLIP_IP = "203.0.113.2"
PUBNODE_V4, PUBNODE_V6 = "198.51.100.7", "2001:db8:5::7"
STUND = "203.0.113.254:3478"
COTURN = "203.0.113.252:3478"
STUN_V6 = "[2001:db8:5::1]:3490"
ECHO_A, ECHO_B = "http://203.0.113.11", "http://203.0.113.12"
TRACE = "http://203.0.113.13/cdn-cgi/trace"
LIAR = "http://203.0.113.20"
LIAR_ANSWER = "198.51.100.66"
TIMEOUT_S = 1.0
COTURN_FLAGS = [
    *("-n", "--stun-only", "--no-cli", "--no-tls", "--no-dtls", "--no-tcp"),
    *("--listening-ip=203.0.113.252", "--listening-port=3478", "--log-file=stdout", "--simple-log"),
]
"""STUN only, one address, no TURN relay, no TLS; its pid file and database in the host's own directory."""

BAD_ECHOES = {  # mode -> (port, expected outcome, text in the reason or error)
    "private": (8001, "rejected", "private address"),
    "cgnat": (8002, "rejected", "CGNAT"),
    "html": (8003, "error", "not an IP address"),
    "big": (8004, "error", "larger than 512 bytes"),
    "slowloris": (8005, "error", "no answer within"),
    "hang": (8006, "error", "no answer within"),
    "self": (8007, "rejected", "server's own address"),
}
BAD_STUN = {
    "private": (3478, "rejected", "private address"),
    "garbage": (3479, "error", "magic cookie"),
    "silent": (3480, "error", "no answer"),
}
METADATA_PORTS = {
    "aws": 8101,
    "aliyun": 8102,
    "gcp": 8103,
    "azure": 8104,
    "digitalocean": 8105,
    "hetzner": 8106,
    "vultr": 8107,
    "tencent": 8108,
    "aws-off": 8109,
    "aliyun-hardened": 8110,
    "azure-standard": 8111,
}
METADATA_HOST = "203.0.113.40"


def metadata_url(name: str) -> str:
    return f"http://{METADATA_HOST}:{METADATA_PORTS[name]}"


def stand_in_specs() -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = [
        {"kind": "echo", "name": "echo-a", "listen": "203.0.113.11:80", "mode": "reflect"},
        {"kind": "echo", "name": "echo-b", "listen": "203.0.113.12:80", "mode": "reflect"},
        {"kind": "echo", "name": "trace", "listen": "203.0.113.13:80", "mode": "trace"},
        {"kind": "echo", "name": "liar", "listen": "203.0.113.20:80", "mode": "fixed", "ip": LIAR_ANSWER},
        {"kind": "stun", "name": "stun-v6", "listen": STUN_V6, "mode": "reflect"},
    ]
    fixed = {"private": "10.1.2.3", "cgnat": "100.64.1.2"}
    for mode, (port, _, _) in BAD_ECHOES.items():
        spec: dict[str, Any] = {"kind": "echo", "name": f"echo-{mode}", "listen": f"203.0.113.21:{port}"}
        spec.update({"mode": "fixed", "ip": fixed[mode]} if mode in fixed else {"mode": mode})
        specs.append(spec)
    for mode, (port, _, _) in BAD_STUN.items():
        spec = {"kind": "stun", "name": f"stun-{mode}", "listen": f"203.0.113.22:{port}"}
        spec.update({"mode": "fixed", "ip": "10.1.2.3"} if mode == "private" else {"mode": mode})
        specs.append(spec)
    for name, port in METADATA_PORTS.items():
        provider, _, variant = name.partition("-")
        spec = {"kind": "metadata", "name": name, "provider": provider, "listen": f"{METADATA_HOST}:{port}"}
        spec["ipv4"] = "" if variant == "standard" else ROUTER_IP
        if variant == "off":
            spec["imds"] = "off"
        if variant == "hardened":
            spec["hardened"] = True
        specs.append(spec)
    return specs


@dataclass
class Net:
    lab: Lab
    inet: Host
    router: Host
    node: Host
    pubnode: Host
    services: Any


INET_V4 = [
    "203.0.113.254",
    "203.0.113.253",
    "203.0.113.252",
    "203.0.113.11",
    "203.0.113.12",
    "203.0.113.13",
    "203.0.113.20",
    "203.0.113.21",
    "203.0.113.22",
    METADATA_HOST,
]


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    require("ip", "nft", "stund", "turnserver", root=True)
    sweep_stale()
    lab = Lab()
    try:
        inet, router, node, pubnode = (lab.host(n) for n in ("inet", "router", "node", "pubnode"))
        lab.link(node, "eth0", "10.9.0.2/24", router, "lan0", "10.9.0.1/24")
        lab.link(router, "wan0", f"{ROUTER_IP}/24", inet, "eth0", None)
        lab.link(pubnode, "eth0", f"{PUBNODE_V4}/24", inet, "eth1", "198.51.100.254/24")
        for addr in INET_V4:
            lab.run(inet, "ip", "addr", "add", f"{addr}/24", "dev", "eth0")
        lab.run(router, "ip", "addr", "add", f"{FLIP_IP}/24", "dev", "wan0")
        lab.run(pubnode, "ip", "-6", "addr", "add", f"{PUBNODE_V6}/64", "dev", "eth0", "nodad")
        lab.run(inet, "ip", "-6", "addr", "add", "2001:db8:5::1/64", "dev", "eth1", "nodad")
        lab.route(node, "default", "10.9.0.1")
        lab.route(pubnode, "default", "198.51.100.254")
        lab.masquerade(router, "wan0")

        lab.spawn(inet, ["stund", "-v", "-h", "203.0.113.254", "-a", "203.0.113.253"], name="stund")
        lab.spawn(
            inet,
            ["turnserver", *COTURN_FLAGS, f"--pidfile={inet.dir}/turnserver.pid", f"--userdb={inet.dir}/turndb"],
            name="coturn",
        )
        spec_path = os.path.join(inet.dir, "ipservices.json")
        with open(spec_path, "w") as f:
            json.dump({"services": stand_in_specs()}, f)
        services = lab.spawn(
            inet,
            [sys.executable, "-m", "tests.support.ipservices", spec_path],
            name="ipservices",
            cwd=str(ROOT),
            env={"PYTHONPATH": str(ROOT)},
        )
        wait_for(lambda: "ready" in services.output(), 20, "the stand-ins", proc=services)
        lab.wait_udp(inet, 3478, "203.0.113.254")
        lab.wait_udp(inet, 3478, "203.0.113.252", timeout=20)
        yield Net(lab, inet, router, node, pubnode, services)
    finally:
        lab.close()


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest, net: Net) -> Iterator[None]:
    yield
    if call_failed(request):
        print(net.lab.logs())


# --- running wgagent in a namespace -------------------------------------------------------------

_configs = itertools.count()


def config(host: Host, **public_ip: Any) -> str:
    """A config file for ``host``: only the stand-ins above, every metadata URL included."""
    tmp = os.path.join(host.dir, f"run{next(_configs)}")
    os.makedirs(tmp)
    endpoints = {p: metadata_url(p) for p in METADATA_PROVIDERS}
    section = {"enabled": True, "timeout_s": TIMEOUT_S, "metadata_endpoints": endpoints, **public_ip}
    return configs.write(os.path.join(tmp, "config.yaml"), configs.sandbox(tmp, 18795, public_ip=section))


def run_wgagent(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        host.argv(sys.executable, "-m", "wgagent", *args),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def discover(host: Host, **public_ip: Any) -> tuple[int, dict[str, Any]]:
    proc = run_wgagent(host, "--config", config(host, **public_ip), "discover", "--json")
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def by_source(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Source -> its observation, with its verdict's outcome/reason merged in (IPv4 first)."""
    out: dict[str, dict[str, Any]] = {}
    verdicts = {(v["source"], v["ip"]): v for v in data["agreed"] + data["disagreed"]}
    for o in data["observations"]:
        if o["source"] in out:
            continue
        merged = dict(o)
        verdict = verdicts.get((o["source"], o["ip"]))
        merged["outcome"] = verdict["outcome"] if verdict else ("error" if o["error"] else "n/a")
        merged["reason"] = verdict["reason"] if verdict else (o["error"] or o["note"])
        out[o["source"]] = merged
    return out


# --- each source kind alone ---------------------------------------------------------------------


@pytest.mark.parametrize("server", [STUND, COTURN], ids=["stund", "coturn"])
def test_a_stun_server_alone_finds_the_router_address(net: Net, server: str) -> None:
    rc, data = discover(net.node, sources=["stun"], stun_servers=[server], quorum=1)
    assert rc == 0 and data["ipv4"] == ROUTER_IP, data
    (obs,) = data["observations"]
    assert obs["server"] == server.split(":")[0] and isinstance(obs["port"], int)


def test_two_stun_servers_agree_and_see_the_same_mapped_port(net: Net) -> None:
    rc, data = discover(net.node, sources=["stun"], stun_servers=[STUND, COTURN])
    assert rc == 0 and data["ipv4"] == ROUTER_IP and data["method"]["ipv4"] == "quorum", data
    assert data["stun_mapped_ports_differ"] is False  # masquerade keeps one mapping per socket


@pytest.mark.parametrize(
    ("urls", "quorum"), [([ECHO_A, ECHO_B], 2), ([TRACE], 1)], ids=["two plain echoes", "cloudflare trace"]
)
def test_http_echo_alone_finds_the_router_address(net: Net, urls: list[str], quorum: int) -> None:
    rc, data = discover(net.node, sources=["http"], http_echo_urls=urls, quorum=quorum)
    assert rc == 0 and data["ipv4"] == ROUTER_IP, data


@pytest.mark.parametrize("provider", ["aws", "aliyun", "gcp", "azure", "digitalocean", "hetzner", "vultr", "tencent"])
def test_metadata_alone_finds_the_router_address(net: Net, provider: str) -> None:
    rc, data = discover(net.node, sources=["metadata"], metadata_provider=provider)
    assert rc == 0 and data["ipv4"] == ROUTER_IP and data["method"]["ipv4"] == "metadata", data
    assert data["observations"][0]["source"] == f"metadata:{provider}"


def test_aws_metadata_used_the_imdsv2_token(net: Net) -> None:
    discover(net.node, sources=["metadata"], metadata_provider="aws")
    lines = [line for line in net.services.output().splitlines() if line.startswith("REQ aws ")]
    put = next(i for i, line in enumerate(lines) if " PUT /latest/api/token " in line)
    get = next(i for i, line in enumerate(lines) if " GET /latest/meta-data/public-ipv4 " in line)
    assert put < get and "x-aws-ec2-metadata-token" in lines[get].split()[-1].split(",")


METADATA_VARIANTS = {
    "aliyun in hardened mode (token required)": ("aliyun", "aliyun-hardened", 0, ROUTER_IP, ""),
    "aws with IMDS off (403 on the token)": ("aws", "aws-off", 1, None, "service is off"),
    "azure with a Standard-SKU address (empty)": ("azure", "azure-standard", 1, None, "Standard-SKU"),
}


@pytest.mark.parametrize(
    ("provider", "stand_in", "rc", "ipv4", "why"), METADATA_VARIANTS.values(), ids=METADATA_VARIANTS.keys()
)
def test_metadata_variants(net: Net, provider: str, stand_in: str, rc: int, ipv4: str | None, why: str) -> None:
    endpoints = {**{p: metadata_url(p) for p in METADATA_PROVIDERS}, provider: metadata_url(stand_in)}
    got_rc, data = discover(net.node, sources=["metadata"], metadata_provider=provider, metadata_endpoints=endpoints)
    assert (got_rc, data["ipv4"]) == (rc, ipv4), data
    assert why in data["observations"][0]["note"]


def test_the_provider_is_detected_from_dmi(net: Net) -> None:
    dmi = os.path.join(net.node.dir, "dmi-hetzner")
    os.makedirs(dmi, exist_ok=True)
    with open(os.path.join(dmi, "sys_vendor"), "w") as f:
        f.write("Hetzner\n")
    rc, data = discover(net.node, sources=["metadata"], metadata_provider="auto", dmi_dir=dmi)
    assert rc == 0 and data["ipv4"] == ROUTER_IP, data
    assert data["observations"][0]["source"] == "metadata:hetzner"


def test_a_public_interface_address_is_found_by_interface(net: Net) -> None:
    rc, data = discover(net.pubnode, sources=["interface"])
    assert rc == 0, data
    assert (data["ipv4"], data["ipv6"]) == (PUBNODE_V4, PUBNODE_V6)
    assert data["method"] == {"ipv4": "interface", "ipv6": "interface"}


def test_a_nated_node_has_no_public_interface_address(net: Net) -> None:
    rc, data = discover(net.node, sources=["interface"])
    assert rc == 1 and data["observations"][0]["applicable"] is False
    assert "no public address on any interface" in data["observations"][0]["note"]


def test_ipv4_and_ipv6_are_found_separately_over_stun(net: Net) -> None:
    rc, data = discover(net.pubnode, sources=["stun"], stun_servers=[COTURN, STUN_V6], quorum=1)
    assert rc == 0 and (data["ipv4"], data["ipv6"]) == (PUBNODE_V4, PUBNODE_V6), data


# --- all together, liars and broken sources ------------------------------------------------------


def test_all_sources_together_agree_on_the_router_address(net: Net) -> None:
    rc, data = discover(
        net.node,
        sources=["interface", "metadata", "stun", "http"],
        metadata_provider="aws",
        stun_servers=[STUND, COTURN],
        http_echo_urls=[ECHO_A, ECHO_B, TRACE],
    )
    assert rc == 0 and data["ipv4"] == ROUTER_IP and data["method"]["ipv4"] == "metadata", data
    seen = by_source(data)
    assert seen["interface"]["outcome"] == "n/a"
    assert {s: o["outcome"] for s, o in seen.items() if s != "interface"} == {
        "metadata:aws": "agrees",
        f"stun:{STUND}": "agrees",
        f"stun:{COTURN}": "agrees",
        ECHO_A: "agrees",
        ECHO_B: "agrees",
        TRACE: "agrees",
    }
    assert data["disagreed"] == []


def test_a_lying_echo_is_outvoted(net: Net) -> None:
    rc, data = discover(net.node, sources=["stun", "http"], stun_servers=[STUND, COTURN], http_echo_urls=[ECHO_A, LIAR])
    assert rc == 0 and data["ipv4"] == ROUTER_IP and data["method"]["ipv4"] == "quorum", data
    liar = by_source(data)[LIAR]
    assert (liar["ip"], liar["outcome"]) == (LIAR_ANSWER, "differs")
    assert "3 of 4" in data["reason"]


def test_bad_sources_are_rejected_within_the_timeout(net: Net) -> None:
    bad_echoes = {f"http://203.0.113.21:{port}": (o, why) for port, o, why in BAD_ECHOES.values()}
    bad_stun = {f"stun:203.0.113.22:{port}": (o, why) for port, o, why in BAD_STUN.values()}
    started = time.monotonic()
    rc, data = discover(
        net.node,
        sources=["stun", "http"],
        stun_servers=[STUND, COTURN, *(s.removeprefix("stun:") for s in bad_stun)],
        http_echo_urls=list(bad_echoes),
    )
    took = time.monotonic() - started
    assert rc == 0 and data["ipv4"] == ROUTER_IP, data
    seen = by_source(data)
    for source, (outcome, why) in {**bad_echoes, **bad_stun}.items():
        got = seen[source]
        assert got["outcome"] == outcome and why in got["reason"], (source, got)
        assert got["elapsed_s"] <= TIMEOUT_S * 1.1, (source, got)
    assert seen[f"stun:{STUND}"]["outcome"] == seen[f"stun:{COTURN}"]["outcome"] == "agrees"
    assert took < TIMEOUT_S + 5  # one round, every source concurrent (the rest is interpreter start-up)


# --- the CLI's exit codes -----------------------------------------------------------------------


def test_discover_without_an_answer_exits_1_and_says_why(net: Net) -> None:
    path = config(net.node, sources=["http"], http_echo_urls=["http://203.0.113.99"])  # nobody there
    proc = run_wgagent(net.node, "--config", path, "discover")
    assert proc.returncode == 1, proc.stderr
    assert "error:" in proc.stdout and "IPv4: undecided" in proc.stdout


def test_discover_with_a_bad_config_exits_2(net: Net) -> None:
    path = os.path.join(net.node.dir, "bad.yaml")
    with open(path, "w") as f:
        f.write("public_ip:\n  stun_servers: [no-port-here]\n")
    proc = run_wgagent(net.node, "--config", path, "discover", "--json")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "public_ip.stun_servers" in proc.stderr and "Traceback" not in proc.stderr


# --- several rounds: the part itself ------------------------------------------------------------


class Driver:
    """tests/support/ipservices_driver.py in a namespace, one JSON line per command."""

    def __init__(self, net: Net, host: Host, config_path: str) -> None:
        self._log = open(os.path.join(net.lab.dir, f"driver-{host.name}.log"), "a")  # noqa: SIM115
        self.proc = subprocess.Popen(
            host.argv(sys.executable, "-m", "tests.support.ipservices_driver", config_path),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=str(ROOT),
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

    def ask(self, command: str, timeout: float = 30) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"the driver did not answer {command!r} within {timeout} s"
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(AssertionError, BrokenPipeError, ValueError):
                self.ask("quit", timeout=0.1)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def part_config(net: Net, **extra: Any) -> str:
    return config(
        net.node, sources=["stun", "http"], stun_servers=[STUND, COTURN], http_echo_urls=[ECHO_A, ECHO_B], **extra
    )


def test_everything_down_keeps_the_last_address_and_fails_the_check(net: Net) -> None:
    path = part_config(net)
    first = Driver(net, net.node, path)
    try:
        up = first.ask("round")
        assert up["adopted"] == ROUTER_IP and up["check"]["ok"], up
        net.lab.run(net.router, "ip", "link", "set", "wan0", "down")
        down = first.ask("round")
        assert down["adopted"] == ROUTER_IP and down["changes"] == 1
        assert not down["check"]["ok"]
        detail = down["check"]["detail"]
        assert detail.startswith("no public address decided this round")
        assert f"keeping {ROUTER_IP}" in detail and "wgagent discover" in detail
        assert "4 of 4 sources failed" in detail
        first.close()
        # A restart while the network is still down: the saved address is used at once.
        second = Driver(net, net.node, path)
        try:
            assert second.ask("state")["adopted"] == ROUTER_IP
            again = second.ask("round")
            assert again["adopted"] == ROUTER_IP and not again["check"]["ok"] and again["changes"] == 0
        finally:
            second.close()
    finally:
        first.close()
        net.lab.run(net.router, "ip", "link", "set", "wan0", "up")


def nat_to(net: Net, address: str | None) -> None:
    """Make the router's NAT use ``address`` (None: masquerade, its primary 203.0.113.1)."""
    rule = "masquerade" if address is None else f"snat to {address}"
    ruleset = f'flush chain ip wgtnat post\nadd rule ip wgtnat post oifname "wan0" {rule}\n'
    net.lab.run(net.router, "nft", "-f", "-", input=ruleset)
    # Existing flows keep their old mapping: forget them, as a real address change would.
    flush = "from pyroute2 import Conntrack; c = Conntrack(); c.flush(); c.close()"
    net.lab.run(net.router, sys.executable, "-c", flush)


def test_hysteresis_holds_against_one_flipped_round(net: Net) -> None:
    path = part_config(net)
    driver = Driver(net, net.node, path)
    try:
        first = driver.ask("round")
        assert first["adopted"] == ROUTER_IP and first["changes"] == 1
        nat_to(net, FLIP_IP)
        flipped = driver.ask("round")
        assert flipped["status"]["decision"]["ipv4"] == FLIP_IP  # every source saw the new address...
        assert flipped["adopted"] == ROUTER_IP and flipped["changes"] == 1  # ...once: not adopted
        assert flipped["check"]["ok"] and f"{FLIP_IP} decided 1 of 2 rounds" in flipped["check"]["detail"]
        assert flipped["interval_s"] == 30
        nat_to(net, None)
        back = driver.ask("round")
        assert back["adopted"] == ROUTER_IP and back["status"]["pending"] is None
        nat_to(net, FLIP_IP)
        driver.ask("round")
        moved = driver.ask("round")
        assert moved["adopted"] == FLIP_IP and moved["changes"] == 2  # two rounds in a row: a real change
        with open(os.path.join(os.path.dirname(path), "state", "public_ip.json")) as f:
            assert json.load(f)["ipv4"] == FLIP_IP
    finally:
        driver.close()
        nat_to(net, None)
