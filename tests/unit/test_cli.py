"""``cli.main``: parsing, exit codes (0, 1, 2, 3, 70, 130), one line on stderr and never a traceback,
WGAGENT_DEBUG, ``version``; and the same through a real ``python -m wgagent`` process.

``status`` talks to a stand-in daemon: a real HTTP server on loopback answering ``/status``.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.labkit import free_port
from tests.support import configs
from wgagent import __version__, cli

ROOT = Path(__file__).resolve().parents[2]

OK_STATUS = {
    "status": "ok",
    "version": __version__,
    "node": "node1",
    "role": "server",
    "uptime_s": 3725,
    "checks": {"config": {"ok": True, "since": "2026-12-03T10:00:00Z", "detail": "loaded /etc/wgagent/config.yaml"}},
}
FAILING_STATUS = {
    **OK_STATUS,
    "status": "failing",
    "checks": {"peer_gc": {"ok": False, "since": "2026-12-03T10:01:00Z", "detail": "flannel-wg: no interface"}},
}


def one_line(err: str) -> str:
    """stderr must be exactly one line starting with the program's name, and no traceback."""
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    return err.rstrip("\n")


@pytest.fixture
def config_path(tmp_path: Path) -> Iterator[str]:
    """A sandbox config (every outward part off) whose health endpoint nobody serves yet."""
    yield configs.write(str(tmp_path / "c.yaml"), configs.sandbox(str(tmp_path), free_port()))


class StandInDaemon:
    """Answers GET /status with ``body`` (bytes) on 127.0.0.1, like the daemon's health server."""

    def __init__(self, port: int, body: bytes) -> None:
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stand_in.paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(stand_in.body)))
                self.end_headers()
                self.wfile.write(stand_in.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.body = body
        self.paths: list[str] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_status(config_path: str, body: bytes) -> StandInDaemon:
    with open(config_path) as f:
        port = int(yaml.safe_load(f)["health"]["listen"].rsplit(":", 1)[1])
    return StandInDaemon(port, body)


# --- parsing ------------------------------------------------------------------------------------------

PARSED = {
    "run": (["run"], {"command": "run", "once": False, "config": None}),
    "run --once": (["--config", "/c.yaml", "run", "--once"], {"command": "run", "once": True, "config": "/c.yaml"}),
    "status --json": (["status", "--json"], {"command": "status", "json": True}),
    "doctor": (["doctor"], {"command": "doctor", "json": False}),
    "discover --json": (["discover", "--json"], {"command": "discover", "json": True}),
    "gc --dry-run --json": (["gc", "--dry-run", "--json"], {"command": "gc", "dry_run": True, "json": True}),
    "gc": (["gc"], {"command": "gc", "dry_run": False, "json": False}),
    "mesh --json": (["mesh", "--json"], {"command": "mesh", "json": True}),
    "version": (["version"], {"command": "version"}),
}


@pytest.mark.parametrize(("argv", "expected"), PARSED.values(), ids=PARSED.keys())
def test_parsing(argv: list[str], expected: dict[str, object]) -> None:
    args = cli._parser().parse_args(argv)
    assert {k: getattr(args, k) for k in expected} == expected


USAGE_ERRORS = {
    "unknown command": (["frobnicate"], "invalid choice: 'frobnicate'"),
    "unknown flag": (["status", "--bogus"], "unrecognized arguments: --bogus"),
    "flag of another command": (["status", "--dry-run"], "unrecognized arguments: --dry-run"),
    "--config without a path": (["--config"], "argument --config: expected one argument"),
}


@pytest.mark.parametrize(("argv", "message"), USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_bad_usage_is_one_line_and_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    line = one_line(err)
    assert out == "" and line.startswith("wgagent: ") and message in line
    assert line.endswith("(see 'wgagent --help')")


def test_no_command_prints_the_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and one_line(err).startswith("usage: wgagent ")


def test_help_lists_every_command_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "status", "doctor", "discover", "gc", "mesh", "version"):
        assert f"    {command} " in out


# --- version --------------------------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["version"]) == 0
    assert capsys.readouterr() == (f"wgagent {__version__}\n", "")
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr() == (f"wgagent {__version__}\n", "")
    with pytest.raises(SystemExit) as exc:  # among other arguments, argparse's --version answers
        cli.main(["--config", "/nonexistent.yaml", "--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"wgagent {__version__}\n"


def test_version_reads_no_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("public_ip: [")
    assert cli.main(["--config", str(bad), "version"]) == 0
    assert capsys.readouterr().err == ""


# --- status: exit codes 0, 1, 2, 3 ------------------------------------------------------------------------


def test_status_of_a_healthy_daemon_is_a_table_and_exit_0(config_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    daemon = serve_status(config_path, json.dumps(OK_STATUS).encode())
    try:
        assert cli.main(["--config", config_path, "status"]) == 0
    finally:
        daemon.close()
    out, err = capsys.readouterr()
    assert err == "" and daemon.paths == ["/status"]
    lines = out.splitlines()
    assert lines[0] == f"wgagent {__version__} on node1 (server), up 1h2m: ok"
    assert lines[2].split() == ["CHECK", "STATE", "SINCE", "DETAIL"]
    assert lines[3].split()[:3] == ["config", "ok", "2026-12-03T10:00:00Z"]


def test_status_json_of_a_failing_daemon_is_the_json_and_exit_1(
    config_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = serve_status(config_path, json.dumps(FAILING_STATUS).encode())
    try:
        assert cli.main(["--config", config_path, "status", "--json"]) == 1
    finally:
        daemon.close()
    out, err = capsys.readouterr()
    assert err == "" and json.loads(out) == FAILING_STATUS


def test_status_without_a_daemon_is_one_line_and_exit_3(config_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--config", config_path, "status"]) == 3
    out, err = capsys.readouterr()
    line = one_line(err)
    assert out == "" and line.startswith("wgagent: no daemon answers at http://127.0.0.1:")
    assert line.endswith("is it running? try 'systemctl status wgagent'")


@pytest.mark.parametrize("body", [b"<html>oops</html>", b"[1, 2]"], ids=["not JSON", "not an object"])
def test_status_with_a_garbled_answer_is_one_line_and_exit_1(
    config_path: str, capsys: pytest.CaptureFixture[str], body: bytes
) -> None:
    daemon = serve_status(config_path, body)
    try:
        assert cli.main(["--config", config_path, "status"]) == 1
    finally:
        daemon.close()
    out, err = capsys.readouterr()
    assert out == "" and one_line(err).startswith("wgagent: http://127.0.0.1:")


def test_status_when_something_else_answers_is_exit_3(config_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    with open(config_path) as f:
        port = int(yaml.safe_load(f)["health"]["listen"].rsplit(":", 1)[1])

    class NoGet(http.server.BaseHTTPRequestHandler):  # answers 501 to a GET
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), NoGet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert cli.main(["--config", config_path, "status"]) == 3
    finally:
        server.shutdown()
        server.server_close()
    out, err = capsys.readouterr()
    assert out == "" and one_line(err).startswith("wgagent: no daemon answers at http://127.0.0.1:")
    assert "(HTTP 501 " in err


@pytest.mark.parametrize("command", ["run", "status", "doctor", "discover", "gc", "mesh"])
def test_a_bad_config_is_one_line_and_exit_2_for_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("public_ip:\n  quorum: many\n")
    assert cli.main(["--config", str(path), command]) == 2
    out, err = capsys.readouterr()
    assert (
        out == ""
        and one_line(err) == f"wgagent: {path}:2: public_ip.quorum: 'many' is invalid; expected an integer from 1 to 16"
    )


# --- bugs: exit 70, WGAGENT_DEBUG, Ctrl-C -----------------------------------------------------------------


def broken_command(exc: BaseException) -> types.ModuleType:
    """A stand-in for a command module whose ``main`` raises ``exc``."""
    module = types.ModuleType("wgagent.commands.status")

    def main(args: argparse.Namespace) -> int:
        raise exc

    module.main = main  # type: ignore[attr-defined]
    return module


def test_a_bug_is_one_line_and_exit_70(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("WGAGENT_DEBUG", raising=False)
    monkeypatch.setitem(sys.modules, "wgagent.commands.status", broken_command(KeyError("checks")))
    assert cli.main(["status"]) == 70
    out, err = capsys.readouterr()
    assert out == ""
    assert one_line(err) == "wgagent: internal error: KeyError: 'checks' (WGAGENT_DEBUG=1 shows the trace)"


def test_wgagent_debug_lets_the_trace_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WGAGENT_DEBUG", "1")
    monkeypatch.setitem(sys.modules, "wgagent.commands.status", broken_command(KeyError("checks")))
    with pytest.raises(KeyError, match="checks"):
        cli.main(["status"])


def test_ctrl_c_exits_130_quietly(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "wgagent.commands.status", broken_command(KeyboardInterrupt()))
    assert cli.main(["status"]) == 130
    assert capsys.readouterr() == ("", "")


# --- the process ----------------------------------------------------------------------------------------


def wgagent(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wgagent", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def test_the_process_exit_codes_and_stderr(tmp_path: Path, config_path: str) -> None:
    version = wgagent("version")
    assert (version.returncode, version.stdout, version.stderr) == (0, f"wgagent {__version__}\n", "")
    usage = wgagent("frobnicate")
    assert usage.returncode == 2 and usage.stdout == "" and "invalid choice" in one_line(usage.stderr)
    bad = tmp_path / "bad.yaml"
    bad.write_text("health: {listen: 'nowhere'}\n")
    config = wgagent("--config", str(bad), "status", env={"WGAGENT_DEBUG": "1"})  # a bad file is no bug
    assert config.returncode == 2 and one_line(config.stderr).startswith(f"wgagent: {bad}:1: health.listen")
    absent = wgagent("--config", config_path, "status")
    assert absent.returncode == 3 and "no daemon answers" in one_line(absent.stderr)


def test_mesh_without_the_kubernetes_api_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("kube:\n  enabled: false\n")
    assert cli.main(["--config", str(path), "mesh", "--json"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and one_line(err) == "wgagent: cannot read the mesh reports: kube.enabled is false"
