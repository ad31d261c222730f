"""The lab harness itself: hosts, links, NAT, processes, and cleanup that leaves nothing."""

from __future__ import annotations

import subprocess

from tests.conftest import require
from tests.labkit import Lab, sh


def _netns_names() -> set[str]:
    return {line.split()[0] for line in sh("ip", "netns", "list").splitlines() if line.strip()}


def test_nat_router_masquerades_and_close_removes_everything(lab: Lab) -> None:
    require("nft", root=True)
    inet = lab.host("inet")
    router = lab.host("router")
    node = lab.host("node")
    lab.link(node, "eth0", "10.9.0.2/24", router, "lan0", "10.9.0.1/24")
    lab.link(router, "wan0", "203.0.113.1/24", inet, "eth0", "203.0.113.254/24")
    lab.route(node, "default", "10.9.0.1")
    lab.masquerade(router, "wan0")
    # The "internet" sees the router's address, not the node's: a UDP echo through the NAT.
    server = lab.spawn(
        inet,
        [
            "python3",
            "-c",
            "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 4000));"
            "d,a=s.recvfrom(100); s.sendto(a[0].encode(), a)",
        ],
        name="udp-echo",
    )
    lab.wait_udp(inet, 4000)
    seen = lab.run(
        node,
        "python3",
        "-c",
        "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5);"
        "s.sendto(b'x', ('203.0.113.254', 4000)); print(s.recvfrom(100)[0].decode())",
    ).strip()
    assert seen == "203.0.113.1"
    server.popen.wait(5)
    names = {h.netns for h in lab.hosts}
    assert names <= _netns_names()
    lab.close()
    assert not names & _netns_names()


def test_close_kills_processes_even_when_they_ignore_sigterm() -> None:
    require("ip", root=True)
    lab = Lab()
    host = lab.host("h")
    proc = lab.spawn(host, ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"], name="stubborn")
    lab.close()
    assert proc.popen.poll() is not None
    assert subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True).returncode != 0
