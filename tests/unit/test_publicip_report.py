"""``wgagent discover`` (commands/discover.py): the JSON schema, the table, the exit codes, config errors."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Sequence
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import configs, ipservices
from wgagent.cli import main
from wgagent.commands.discover import format_report, to_json
from wgagent.config import PublicIPConfig
from wgagent.errors import SourceError
from wgagent.publicip.model import Answer
from wgagent.wiring import Seams, discover_once


class Fake:
    def __init__(self, name: str, kind: str, ip: str | None = None, error: str | None = None, port: int | None = None):
        self.name, self.kind, self.timeout_s, self.why_not = name, kind, 1.0, "nothing here"
        self.ip, self.error, self.port = ip, error, port

    async def observe(self) -> Sequence[Answer] | None:
        if self.error:
            raise SourceError(self.error)
        if self.ip is None:
            return None
        return [Answer(ip_address(self.ip), port=self.port, local_port=5000 if self.port else None)]


SOURCES = [
    Fake("metadata", "metadata"),
    Fake("stun:a:3478", "stun", "203.0.113.1", port=40000),
    Fake("stun:b:3478", "stun", "203.0.113.1", port=40001),
    Fake("http://liar", "http", "198.51.100.66"),
    Fake("http://down", "http", error="cannot connect to down port 80: Connection refused"),
]


async def test_the_json_has_the_documented_schema() -> None:
    observations, decision = await discover_once(PublicIPConfig(), Seams(public_ip_sources=SOURCES))
    data = json.loads(json.dumps(to_json(observations, decision)))
    assert data["ipv4"] == "203.0.113.1" and data["ipv6"] is None
    assert "2 of 3" in data["reason"]
    assert data["stun_mapped_ports_differ"] is True
    assert [o["source"] for o in data["observations"]] == [
        "metadata",
        "stun:a:3478",
        "stun:b:3478",
        "http://liar",
        "http://down",
    ]
    for o in data["observations"]:
        assert {"source", "kind", "ip", "error", "elapsed_s"} <= set(o)
        assert o["kind"] in ("stun", "http", "metadata", "interface", "static")
        assert isinstance(o["elapsed_s"], float)
    assert data["observations"][4]["error"].startswith("cannot connect")
    assert [d["source"] for d in data["disagreed"]] == ["http://liar"]


async def test_the_table_shows_every_source_and_the_decision() -> None:
    observations, decision = await discover_once(PublicIPConfig(), Seams(public_ip_sources=SOURCES))
    text = format_report(observations, decision)
    lines = text.splitlines()
    assert lines[0].split() == ["SOURCE", "KIND", "ADDRESS", "TIME", "RESULT"]
    assert any(line.startswith("metadata") and "not applicable: nothing here" in line for line in lines)
    assert any(line.startswith("http://liar") and "differs" in line for line in lines)
    assert any(line.startswith("http://down") and "error: cannot connect" in line for line in lines)
    assert "IPv4: 203.0.113.1 (by quorum)" in lines
    assert "IPv6: undecided" in lines
    assert any("differ between servers" in line for line in lines)


# --- through the CLI ---------------------------------------------------------------------------


def write_config(tmp_path: Path, **public_ip: Any) -> str:
    cfg = configs.sandbox(str(tmp_path), 1, public_ip={"enabled": True, **public_ip})
    return configs.write(str(tmp_path / "config.yaml"), cfg)


@pytest.fixture
def echoes() -> Iterator[list[str]]:
    """Two echo stand-ins on two loopback addresses (two witnesses), run on their own thread."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def start() -> None:
        box["services"] = await ipservices.start(
            [
                {"kind": "echo", "name": "a", "listen": "127.0.0.1:0", "mode": "fixed", "ip": "203.0.113.9"},
                {"kind": "echo", "name": "b", "listen": "127.0.0.2:0", "mode": "fixed", "ip": "203.0.113.9"},
            ]
        )
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop)
    assert ready.wait(5)
    services = box["services"]
    yield [f"http://127.0.0.1:{services.port('a')}", f"http://127.0.0.2:{services.port('b')}"]
    asyncio.run_coroutine_threadsafe(services.close(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_discover_json_exits_0_with_an_address(
    tmp_path: Path, echoes: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, sources=["http"], http_echo_urls=echoes, timeout_s=2)
    assert main(["--config", path, "discover", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ipv4"] == "203.0.113.9"
    assert sorted(o["server"] for o in data["observations"]) == ["127.0.0.1", "127.0.0.2"]
    assert not (tmp_path / "state").exists()  # a look, not a change: nothing adopted or saved


def test_discover_exits_1_without_an_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, sources=["metadata"], metadata_provider="auto")  # empty DMI dir: no cloud
    assert main(["--config", path, "discover"]) == 1
    out = capsys.readouterr().out
    assert "not applicable: no cloud recognised from DMI" in out
    assert "IPv4: undecided" in out


def test_discover_with_a_static_pin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, static=["203.0.113.5", "2001:db8::5"])
    assert main(["--config", path, "discover", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["ipv4"], data["ipv6"]) == ("203.0.113.5", "2001:db8::5")
    assert data["method"] == {"ipv4": "static", "ipv6": "static"}


def test_a_bad_config_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"public_ip": {"quorum": "two"}}))
    assert main(["--config", str(path), "discover"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "public_ip.quorum" in err and "Traceback" not in err
