"""Reliability: no secret ever reaches a log, an output, an endpoint or a file wgagent writes.

In a network namespace: wireguard-go ``flannel-wg`` with a known private key and a peer
with a known preshared key (plus dead peers for GC to remove); the API stand-in (its own
process, inside the namespace) with the node's credential as an inline kubeconfig
(``client-key-data``) and the list credential as an inline bearer ``token``; k3s's own
``config.yaml`` holding a join ``token``; a fake ``systemctl`` so that restarts happen.
With ``log_level: debug``, every command runs (``run --once``, ``status``, ``status
--json``, ``discover`` and ``--json``, ``gc --dry-run``, ``gc`` and ``--json``, ``doctor``
and ``--json``, ``version``, ``--version``, ``--help``, and a bad config), the daemon runs
(first pass, reload on SIGHUP, stop) and every endpoint is fetched (``/livez``,
``/healthz``, ``/status``, ``/metrics``, a 404). Every byte of output, every log line,
every answer and every file in the state dir and the k3s drop-in dir is scanned for each
secret in every encoding it could leak in: as written, base64 (standard, URL-safe,
unpadded), hex (lower, upper), the raw bytes, and for the PEM key its body and its
``client-key-data`` form; besides whole values, any 16-character piece of them.

The scanner is shown to find what it looks for: the same scan over the kubeconfigs, the
k3s config and a UAPI ``get`` of the device must find every secret.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests import labkit
from tests.conftest import ROOT, require
from tests.kubeapi import ADMIN_TOKEN
from tests.labkit import Host, Lab, wait_for
from tests.support import configs
from tests.support import systemctl as fake_systemctl
from tests.support.notify import NotifySocket
from wgagent.wireguard.model import key_from_bytes
from wgagent.wireguard.uapi import x25519_public

IF = "flannel-wg"
PORT = 8795
WINDOW = 16


@dataclass
class Secret:
    name: str
    variants: list[str | bytes] = field(default_factory=list)

    def pieces(self) -> set[bytes]:
        out: set[bytes] = set()
        for v in self.variants:
            b = v.encode() if isinstance(v, str) else v
            out.add(b)
            if len(b) > WINDOW:
                out.update(b[i : i + WINDOW] for i in range(0, len(b) - WINDOW + 1))
        return out


def key_secret(name: str, raw: bytes) -> Secret:
    b64 = base64.b64encode(raw).decode()
    return Secret(
        name, [raw, b64, b64.rstrip("="), base64.urlsafe_b64encode(raw).decode(), raw.hex(), raw.hex().upper()]
    )


def text_secret(name: str, value: str) -> Secret:
    return Secret(name, [value, base64.b64encode(value.encode()).decode(), value.encode().hex()])


def pem_secret(name: str, pem: bytes) -> Secret:
    lines = [ln for ln in pem.decode().splitlines() if ln and not ln.startswith("-----")]
    der = base64.b64decode("".join(lines))
    return Secret(
        name,
        [*lines, "".join(lines), "\\n".join(lines), base64.b64encode(pem).decode(), der.hex(), der],
    )


def find(secrets: list[Secret], sources: dict[str, bytes]) -> list[str]:
    hits = []
    for secret in secrets:
        pieces = secret.pieces()
        for where, data in sources.items():
            for piece in pieces:
                if piece in data:
                    at = data.index(piece)
                    hits.append(f"{secret.name} in {where}: ...{data[max(0, at - 60) : at + 60]!r}...")
                    break
    return hits


@dataclass
class World:
    lab: Lab
    host: Host
    config: str
    state_dir: Path
    k3s_dir: Path
    uapi_dir: str
    secrets: list[Secret]
    controls: dict[str, bytes]
    env: dict[str, str]


uapi_set = functools.partial(labkit.uapi_set, ifname=IF)


@pytest.fixture
def world(lab: Lab, tmp_path: Path) -> Iterator[World]:
    require("wireguard-go", "ip", "openssl", root=True)
    host = lab.host("node1")
    router = lab.host("router")
    lab.link(host, "eth0", "198.51.100.10/24", router, "eth1", "198.51.100.1/24")  # the public interface

    # WireGuard: known private key, a live-looking peer with a known preshared key, dead peers
    _, uapi_dir = lab.wireguard_go(host, IF)
    priv, psk = os.urandom(32), os.urandom(32)
    peer_pub = key_from_bytes(x25519_public(os.urandom(32)))
    lines = [f"private_key={priv.hex()}", "listen_port=51820", f"public_key={base64.b64decode(peer_pub).hex()}",
             f"preshared_key={psk.hex()}", "endpoint=198.51.100.20:51820", "persistent_keepalive_interval=25",
             "allowed_ip=10.42.2.0/24"]  # fmt: skip
    for _ in range(20):
        lines.append(f"public_key={os.urandom(32).hex()}")  # dead: no allowed IPs, no handshake
    uapi_set(uapi_dir, lines)
    lab.run(host, "ip", "addr", "add", "10.42.1.1/16", "dev", IF)
    lab.run(host, "ip", "link", "set", IF, "up")

    # The API stand-in, inside the namespace
    kube_dir = tmp_path / "kube"
    proc = lab.spawn(
        host,
        [sys.executable, "-m", "tests.kubeapi", "--port", "6443", "--nodes", "node1,node2", "--dir", str(kube_dir)],
        name="kubeapi",
        env={"PYTHONPATH": str(ROOT)},
        cwd=str(ROOT),
    )
    wait_for(lambda: proc.output().strip().startswith("{"), 30, "the API stand-in", proc=proc)
    info = json.loads(proc.output().strip().splitlines()[0])
    file_kc = yaml.safe_load(Path(info["nodes"]["node1"]).read_text())
    user = file_kc["users"][0]["user"]
    key_pem = Path(user["client-key"]).read_bytes()
    inline = dict(file_kc)
    inline["clusters"] = [
        {
            "name": "test",
            "cluster": {
                "server": info["url"],
                "certificate-authority-data": base64.b64encode(Path(info["ca"]).read_bytes()).decode(),
            },
        }
    ]
    inline["users"] = [{"name": "test", "user": {
        "client-certificate-data": base64.b64encode(Path(user["client-certificate"]).read_bytes()).decode(),
        "client-key-data": base64.b64encode(key_pem).decode()}}]  # fmt: skip
    node_kc = tmp_path / "node1-inline.yaml"
    node_kc.write_text(yaml.safe_dump(inline))
    node_kc.chmod(0o600)
    list_kc = info["admin"]  # inline bearer token

    # k3s: its own config with a join token; wgagent's drop-in dir next to it
    k3s_dir = tmp_path / "etc-rancher-k3s"
    k3s_dir.mkdir()
    join_token = "K10" + os.urandom(24).hex() + "::server:" + os.urandom(16).hex()
    (k3s_dir / "config.yaml").write_text(f'token: "{join_token}"\nnode-external-ip: 198.51.100.99\n')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_systemctl.install(bin_dir)

    state_dir = tmp_path / "state"
    cfg = configs.sandbox(
        str(tmp_path),
        PORT,
        node_name="node1",
        log_level="debug",
        state_dir=str(state_dir),
        public_ip={"enabled": True, "sources": ["interface"]},
        k3s={"enabled": True, "role": "agent", "config_dir": str(k3s_dir), "restart": True},
        kube={"enabled": True, "kubeconfig": str(node_kc), "list_kubeconfig": list_kc},
        wireguard={"enabled": True, "interface": IF, "uapi_dir": uapi_dir, "gc": {"enabled": True}},
    )
    config = configs.write(str(tmp_path / "config.yaml"), cfg)
    secrets = [
        key_secret("WireGuard private key", priv),
        key_secret("WireGuard preshared key", psk),
        text_secret("API bearer token", ADMIN_TOKEN),
        pem_secret("client key", key_pem),
        text_secret("k3s join token", join_token),
    ]
    controls = {
        "node kubeconfig": node_kc.read_bytes(),
        "list kubeconfig": Path(list_kc).read_bytes(),
        "k3s config.yaml": (k3s_dir / "config.yaml").read_bytes(),
        "UAPI get": labkit.uapi(uapi_dir, "get=1\n\n", ifname=IF),
        "client key file": key_pem,
    }
    env = {"PYTHONPATH": str(ROOT), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    yield World(lab, host, config, state_dir, k3s_dir, uapi_dir, secrets, controls, env)


def run(w: World, *args: str, config: str | None = None) -> tuple[str, bytes]:
    argv = [sys.executable, "-m", "wgagent", *(["--config", config or w.config] if config != "" else []), *args]
    full_env = {**os.environ, **w.env}
    full_env.pop("JOURNAL_STREAM", None)
    proc = subprocess.run(w.host.argv(*argv), capture_output=True, timeout=120, env=full_env, cwd=str(ROOT))
    assert b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
    return f"wgagent {' '.join(args)} (exit {proc.returncode})", proc.stdout + b"\n--stderr--\n" + proc.stderr


def fetch(w: World, path: str) -> bytes:
    code = (
        "import sys, urllib.request, urllib.error\n"
        "o = urllib.request.build_opener(urllib.request.ProxyHandler({}))\n"
        f"try:\n    r = o.open('http://127.0.0.1:{PORT}{path}', timeout=10)\n"
        "    sys.stdout.buffer.write(str(r.status).encode() + b'\\n' + bytes(r.headers) + r.read())\n"
        "except urllib.error.HTTPError as e:\n"
        "    sys.stdout.buffer.write(str(e.code).encode() + b'\\n' + bytes(e.headers) + e.read())\n"
    )
    return subprocess.run(w.host.argv(sys.executable, "-c", code), capture_output=True, timeout=30).stdout


def test_no_secret_in_any_output_log_endpoint_or_file(world: World, tmp_path: Path) -> None:
    w = world
    # the scanner finds each secret where it is
    found = {hit.split(" in ")[0] for hit in find(w.secrets, w.controls)}
    assert found == {s.name for s in w.secrets}, found

    outputs: dict[str, bytes] = {}
    for args in (["run", "--once"], ["discover"], ["discover", "--json"], ["gc", "--dry-run"], ["gc", "--json"],
                 ["gc"], ["doctor"], ["doctor", "--json"], ["version"], ["--version"], ["--help"],
                 ["status"]):  # fmt: skip
        name, out = run(w, *args)
        outputs[name] = out
    bad = tmp_path / "bad.yaml"  # a config error quotes the offending value: not a secret's
    bad.write_text(Path(w.config).read_text().replace("log_level: debug", "log_level: verbose"))
    name, out = run(w, "run", "--once", config=str(bad))
    outputs["bad config: " + name] = out

    # the daemon: first pass, every endpoint, status, a reload, a stop
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    daemon = w.lab.spawn(w.host, [sys.executable, "-m", "wgagent", "--config", w.config, "run"], name="wgagent",
                         env={**w.env, **notify.env()}, cwd=str(ROOT))  # fmt: skip
    try:
        notify.wait_for("READY=1", timeout=60)
        for path in ("/livez", "/healthz", "/status", "/metrics", "/nope"):
            answer = fetch(w, path)
            assert answer[:3] in (b"200", b"503", b"404"), answer[:200]
            outputs[f"GET {path}"] = answer
        for args in (["status"], ["status", "--json"]):
            name, out = run(w, *args)
            outputs[name + " (daemon running)"] = out
        os.kill(daemon.pid, signal.SIGHUP)
        notify.wait_for("READY=1", count=2, timeout=60)
        assert w.lab.stop(daemon, signal.SIGTERM, timeout=10) == 0
    finally:
        notify.close()
    outputs["daemon log"] = Path(daemon.log).read_bytes()
    outputs["notify messages"] = "\n".join(notify.lines()).encode()
    assert b"ready" in outputs["daemon log"] and b"reloading" in outputs["daemon log"].lower()
    for written in [*w.state_dir.rglob("*"), *w.k3s_dir.rglob("*")]:
        if written.is_file() and written.name != "config.yaml":
            outputs[f"file {written}"] = written.read_bytes()
    assert any(name.startswith("file ") and "50-wgagent.yaml" in name for name in outputs), sorted(outputs)

    hits = find(w.secrets, outputs)
    assert not hits, "\n".join(hits)
    # and the agent did the work that touches the secrets
    log = outputs["daemon log"].decode(errors="replace")
    assert "node watch: listed" in log, log[-3000:]
    assert outputs["wgagent gc --json (exit 0)"].count(b'"interface"') == 1
