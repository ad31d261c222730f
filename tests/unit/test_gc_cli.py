"""``wgagent gc``: what it prints and returns (gc_command on the fake backend), and the CLI's
errors (no traceback, exit codes) through ``cli.main``."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socketserver
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from wgagent import cli
from wgagent.commands import gc
from wgagent.commands.gc import gc_command
from wgagent.config import Config, GCConfig, WireGuardConfig
from wgagent.model import ANN_BACKEND_DATA, ClusterView, NodeInfo
from wgagent.wireguard.backend import HostNet
from wgagent.wireguard.fake import FakeBackend
from wgagent.wireguard.gc import FIRST_SEEN_FILE
from wgagent.wireguard.model import Device, Peer, key_from_bytes
from wgagent.wireguard.uapi import encode_remove
from wgagent.wiring import Seams

NOW = 1_800_000_000.0


def k(n: int) -> str:
    return key_from_bytes(bytes([n]) * 32)


def prepare(tmp_path: Path, **gc: object) -> tuple[Config, FakeBackend, HostNet]:
    dev = Device(
        "flannel-wg",
        51820,
        k(100),
        (
            Peer(k(1), "198.51.100.1:51820", ("10.42.1.0/24",), NOW - 10),
            Peer(k(2), "198.51.100.2:51820", ("10.42.2.0/24",), NOW - 4000),
            Peer(k(3), "203.0.113.3:51820", ("10.42.3.0/24",), NOW - 4000),
            Peer(k(4), None, (), None),
        ),
    )
    (tmp_path / "state").mkdir(parents=True)
    seen = {"version": 1, "interfaces": {"flannel-wg": {k(4): NOW - 3600}}}
    (tmp_path / "state" / FIRST_SEEN_FILE).write_text(json.dumps(seen))
    cfg = Config(
        state_dir=str(tmp_path / "state"),
        wireguard=WireGuardConfig(interface="flannel-wg", uapi_dir=str(tmp_path / "run"), gc=GCConfig(**gc)),  # type: ignore[arg-type]
    )
    return cfg, FakeBackend({"flannel-wg": dev}), HostNet(str(tmp_path / "sys"), str(tmp_path / "proc"))


CLUSTER = ClusterView(
    {n: NodeInfo(n, {ANN_BACKEND_DATA: json.dumps({"PublicKey": k(i)})}) for n, i in (("a", 1), ("b", 2))}
)


async def run(
    tmp_path: Path,
    *,
    dry_run: bool = False,
    as_json: bool = True,
    cluster: ClusterView | None = CLUSTER,
    note: str = "",
    gc: dict[str, object] | None = None,
) -> tuple[int, str, FakeBackend]:
    cfg, fake, net = prepare(tmp_path, **(gc or {}))
    seams = Seams(clock=lambda: NOW, host_net=net, backends=lambda ifname, uapi_dir: fake)
    code, text = await gc_command(cfg, seams, dry_run=dry_run, as_json=as_json, cluster=cluster, cluster_note=note)
    return code, text, fake


async def test_json_has_the_promised_keys(tmp_path: Path) -> None:
    code, text, fake = await run(tmp_path)
    assert code == 0
    data = json.loads(text)
    assert data["interface"] == "flannel-wg"
    assert data["removed"] == [k(3), k(4)]
    assert data["kept_unreachable"] == [k(2)] and data["unreachable_nodes"] == {k(2): "b"}
    assert data["dry_run"] is False and data["node_list"] == "known"
    assert fake.transactions == [("flannel-wg", (k(3), k(4)))]


async def test_dry_run_flag_or_config_changes_nothing(tmp_path: Path) -> None:
    _code, text, fake = await run(tmp_path / "flag", dry_run=True)
    assert json.loads(text)["removed"] == [k(3), k(4)] and json.loads(text)["dry_run"] is True
    assert fake.transactions == []
    _code, text, fake = await run(tmp_path / "config", dry_run=False, gc={"dry_run": True})
    assert json.loads(text)["dry_run"] is True and fake.transactions == []


async def test_without_the_node_list_only_peers_without_allowed_ips_go_and_it_says_why(tmp_path: Path) -> None:
    code, text, fake = await run(tmp_path, as_json=False, cluster=None, note="kube.enabled is false")
    assert code == 0
    assert fake.transactions == [("flannel-wg", (k(4),))]
    assert text.splitlines()[0] == (
        "flannel-wg: removed 1 dead peer(s) of 4; kept 2 stale peer(s) with allowed IPs"
        " (node list unknown: only peers without allowed IPs are removed)"
    )
    assert f"  removed {k(4)}  endpoint (none)  allowed IPs (none)  last handshake never" in text
    assert text.splitlines()[-1] == (
        "  node list unknown (kube.enabled is false): only peers without allowed IPs were considered"
    )


async def test_text_names_the_kept_live_node(tmp_path: Path) -> None:
    _code, text, _ = await run(tmp_path, as_json=False)
    assert f"  kept {k(2)}  of live node b: unreachable" in text


async def test_an_unreadable_device_exits_1(tmp_path: Path) -> None:
    cfg, _, net = prepare(tmp_path)
    seams = Seams(clock=lambda: NOW, host_net=net, backends=lambda ifname, uapi_dir: FakeBackend({}))
    code, text = await gc_command(cfg, seams, dry_run=False, as_json=False, cluster=None)
    assert (code, text) == (1, "flannel-wg: no interface flannel-wg")


def test_cli_gc_with_a_bad_config_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"wireguard": {"gc": {"max_removals_per_pass": 0}}}))
    assert cli.main(["--config", str(path), "gc"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "wireguard.gc.max_removals_per_pass" in err


def test_cli_gc_with_a_missing_socket_dir_and_no_kernel_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    cfg = {
        "state_dir": str(tmp_path / "state"),
        "public_ip": {"enabled": False},
        "kube": {"enabled": False},
        "wireguard": {"interface": "wgt-none0", "uapi_dir": str(tmp_path / "run")},
    }
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["--config", str(path), "gc", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["interface"] == "wgt-none0" and out["ok"] is False and out["node_list_note"] == "kube.enabled is false"
    assert out["error"].startswith("wgt-none0: ") or out["error"].startswith("no interface wgt-none0")


class UapiStandIn(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A userspace device's UAPI socket in a thread (``cli.main`` runs its own event loop):
    answers ``get=1`` with ``device`` and ``set=1`` with ``errno=0``, and keeps what it was sent."""

    def __init__(self, path: str, device: Device) -> None:
        self.device, self.requests, self.asked = device, list[bytes](), threading.Event()

        class Handler(socketserver.StreamRequestHandler):
            def handle(handler) -> None:
                request = b""
                while not request.endswith(b"\n\n") and (line := handler.rfile.readline()):
                    request += line
                self.requests.append(request)
                self.asked.set()
                handler.wfile.write(uapi_reply(self.device) if request == b"get=1\n\n" else b"errno=0\n\n")

        super().__init__(path, Handler)


def uapi_reply(dev: Device) -> bytes:
    """What wireguard-go answers a get with (its layout: device/uapi.go IpcGetOperation)."""
    lines = [f"listen_port={dev.listen_port}"]
    for p in dev.peers:
        key = base64.b64decode(p.public_key).hex()
        lines += [f"public_key={key}", f"preshared_key={'0' * 64}", "protocol_version=1"]
        lines += [f"endpoint={p.endpoint}"] if p.endpoint else []
        sec = int(p.last_handshake or 0)
        lines += [f"last_handshake_time_sec={sec}", "last_handshake_time_nsec=0", "tx_bytes=0", "rx_bytes=0",
                  "persistent_keepalive_interval=0", *(f"allowed_ip={ip}" for ip in p.allowed_ips)]  # fmt: skip
    return ("\n".join(lines) + "\nerrno=0\n\n").encode()


def test_cli_gc_on_a_userspace_device_sends_its_get_before_loading_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``wgagent gc`` on the real host: the UAPI get goes out as soon as the config is read
    (before the command's pass starts), the reply is that pass's device, one set removes."""
    cfg, fake, _ = prepare(tmp_path)
    seen = {"version": 1, "interfaces": {"flannel-wg": {k(4): time.time() - 3600}}}  # the real clock, here
    (Path(cfg.state_dir) / FIRST_SEEN_FILE).write_text(json.dumps(seen))
    uapi_dir = tempfile.mkdtemp(prefix="wgc", dir="/tmp")  # a unix socket path fits in 108 bytes
    path = tmp_path / "c.yaml"
    state_dir = cfg.state_dir
    path.write_text(yaml.safe_dump({
        "state_dir": state_dir, "public_ip": {"enabled": False}, "kube": {"enabled": False},
        "wireguard": {"interface": "flannel-wg", "uapi_dir": uapi_dir},
    }))  # fmt: skip
    server = UapiStandIn(os.path.join(uapi_dir, "flannel-wg.sock"), fake.devices["flannel-wg"])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    real = gc.one_pass

    async def one_pass(*args: Any, **kw: Any) -> tuple[int, str]:
        # Without the early get, nothing is sent before the pass starts: this would wait in vain.
        assert server.asked.wait(10), "no UAPI get before the pass started"
        return await real(*args, **kw)

    monkeypatch.setattr(gc, "one_pass", one_pass)
    try:
        assert cli.main(["--config", str(path), "gc", "--json"]) == 0
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(uapi_dir)
    out = json.loads(capsys.readouterr().out)
    assert out["removed"] == [k(4)] and out["node_list_note"] == "kube.enabled is false"
    assert server.requests == [b"get=1\n\n", encode_remove([k(4)])]
