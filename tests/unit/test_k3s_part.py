"""K3sPart end to end over a temp config dir, a fake systemd and a fake clock."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest
import yaml

from tests.unit.test_k3s_restart import Clock, FakeSystemd
from wgagent import fsutil
from wgagent.config import K3sConfig
from wgagent.families import Families
from wgagent.k3s.dropin import render_dropin
from wgagent.k3s.part import K3sPart
from wgagent.k3s.restart import Gate, Restarter
from wgagent.k3s.role import Identity, Role
from wgagent.k3s.scan import ConfigLocation
from wgagent.k3s.servers import Annotate
from wgagent.model import ClusterView, PublicAddresses
from wgagent.state import State

V4 = IPv4Address("203.0.113.7")
V4_NEW = IPv4Address("198.51.100.20")
V6 = IPv6Address("2001:db8::7")
SERVER = Role("server", "k3s.service", "k3s.role: server")
AGENT = Role("agent", "k3s-agent.service", "k3s.role: agent")


class Node:
    """One node: its k3s config dir, wgagent's state, a fake systemd, the adopted address."""

    def __init__(self, tmp: Path, role: Role | None = SERVER, active: str = "inactive", **cfg: object) -> None:
        self.clock = Clock()
        self.systemd = FakeSystemd(self.clock, active=active)
        self.cfg = K3sConfig(config_dir=str(tmp / "etc-rancher-k3s"), data_dir=str(tmp / "data"), **cfg)  # type: ignore[arg-type]
        self.state = State(node="node1", version="test", clock=self.clock.wall)
        self.address: PublicAddresses | None = PublicAddresses(V4)
        self.state_dir = str(tmp / "state")
        self.role = role
        self.families = Families(True, True, "test: a dual-stack cluster")
        self.unit_dir = tmp / "systemd"
        self.unit_dir.mkdir()
        self.cluster: Callable[[], ClusterView | None] = lambda: None
        self.annotate: Annotate | None = None
        self.gate: Gate | None = None
        self.part = self.new_part()

    def new_part(self) -> K3sPart:
        restarter = Restarter(
            self.cfg,
            state_dir=self.state_dir,
            unit=self.role.unit if self.role is not None else None,
            metrics=self.state.metrics,
            runner=self.systemd,
            clock=self.clock.wall,
            monotonic=self.clock.monotonic,
            gate=self.gate,
        )
        identity = Identity("node1", "test", self.role, ConfigLocation.in_dir(self.cfg.config_dir), self.cfg.data_dir)
        return K3sPart(
            self.state,
            self.cfg,
            identity,
            public_ip=lambda: self.address,
            restarter=restarter,
            families=lambda: self.families,
            unit_dirs=[str(self.unit_dir)],
            cluster=self.cluster,
            annotate=self.annotate,
        )

    @property
    def path(self) -> Path:
        return Path(self.cfg.config_dir) / "config.yaml.d" / "50-wgagent.yaml"

    def dropin(self) -> dict[str, object]:
        loaded = yaml.safe_load(self.path.read_text())
        assert isinstance(loaded, dict)
        return loaded

    def user_file(self, name: str, text: str) -> None:
        path = Path(self.cfg.config_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def check(self) -> tuple[bool, str]:
        c = self.state.checks["k3s_config"]
        return c.ok, c.detail

    def status(self) -> dict[str, object]:
        part = self.state.status()["parts"]["k3s"]
        assert isinstance(part, dict)
        return part


async def test_first_write_at_boot_needs_no_restart(tmp_path: Path) -> None:
    node = Node(tmp_path, active="inactive")
    await node.part.reconcile()
    assert node.dropin() == {
        "node-external-ip": ["203.0.113.7"],
        "flannel-backend": "wireguard-native",
        "flannel-external-ip": True,
    }
    assert os.stat(node.path).st_mode & 0o777 == 0o600
    assert node.systemd.restart_calls == []
    ok, detail = node.check()
    assert ok, detail
    assert detail.startswith(f"{node.path} written (server): node-external-ip 203.0.113.7, flannel-backend")
    assert "k3s.service is inactive" in detail
    status = node.status()
    assert status["dropin_state"] == "written" and status["role"] == "server" and status["unit"] == "k3s.service"
    await node.part.reconcile()
    assert node.status()["dropin_state"] == "unchanged"


async def test_changed_address_restarts_a_running_k3s_once(tmp_path: Path) -> None:
    node = Node(tmp_path, active="active")
    node.address = PublicAddresses(V4)
    await node.part.reconcile()  # wgagent installed on a running node: the new file needs a restart
    assert len(node.systemd.restart_calls) == 1
    node.clock.advance(700)
    node.address = PublicAddresses(V4_NEW, V6)
    await node.part.reconcile()
    assert node.dropin()["node-external-ip"] == ["198.51.100.20", "2001:db8::7"]
    assert len(node.systemd.restart_calls) == 2
    ok, detail = node.check()
    assert ok and "restarted k3s.service: config: 50-wgagent.yaml changed: node-external-ip 203.0.113.7 -> " in detail
    node.clock.advance(700)
    await node.part.reconcile()  # nothing changed: no restart
    assert len(node.systemd.restart_calls) == 2


async def test_rate_limited_restart_fails_the_check_and_is_retried_on_later_passes(tmp_path: Path) -> None:
    node = Node(tmp_path, active="active")
    await node.part.reconcile()
    node.clock.advance(60)
    node.address = PublicAddresses(V4_NEW)
    await node.part.reconcile()
    ok, detail = node.check()
    assert not ok and detail.startswith("restart pending: rate limit: restarted 60 s ago")
    assert node.status()["restart"]["needs"]["config"]["why"] == (  # type: ignore[index]
        "50-wgagent.yaml changed: node-external-ip 203.0.113.7 -> 198.51.100.20"
    )
    node.clock.advance(60)
    await node.part.reconcile()
    assert not node.check()[0] and len(node.systemd.restart_calls) == 1
    # wgagent restarts (a reload rebuilds parts): the pending restart is not forgotten
    node.part = node.new_part()
    node.clock.advance(500)
    await node.part.reconcile()
    assert len(node.systemd.restart_calls) == 2
    ok, detail = node.check()
    assert ok and "restarted k3s.service: config: 50-wgagent.yaml changed" in detail


async def test_restart_off_says_pending(tmp_path: Path) -> None:
    node = Node(tmp_path, active="active", restart=False)
    await node.part.reconcile()
    ok, detail = node.check()
    assert not ok and "restarts are off (k3s.restart: false); to apply it: systemctl restart k3s.service" in detail
    assert node.systemd.restart_calls == []
    assert node.path.exists()  # the file is written all the same


async def test_comment_only_change_needs_no_restart(tmp_path: Path) -> None:
    node = Node(tmp_path, active="active")
    old = render_dropin("server", PublicAddresses(V4), node.cfg).replace("# Generated by wgagent.", "# Old header.")
    fsutil.atomic_write(str(node.path), old.encode())
    await node.part.reconcile()
    assert node.path.read_text().startswith("# Generated by wgagent.")
    assert node.systemd.restart_calls == []
    assert node.check()[0]


async def test_no_public_ip_yet_writes_no_address(tmp_path: Path) -> None:
    node = Node(tmp_path, role=AGENT)
    node.address = None
    await node.part.reconcile()
    assert yaml.safe_load(node.path.read_text()) is None  # comments only
    assert "node-external-ip: not written yet" in node.path.read_text()
    ok, detail = node.check()
    assert ok and "no node-external-ip yet (no public IP)" in detail


async def test_no_public_ip_keeps_the_address_already_written(tmp_path: Path) -> None:
    node = Node(tmp_path, active="active")
    node.address = PublicAddresses(V4, V6)
    await node.part.reconcile()
    node.part = node.new_part()  # wgagent restarted; discovery has no answer yet
    node.address = None
    node.clock.advance(700)
    await node.part.reconcile()
    assert node.dropin()["node-external-ip"] == ["203.0.113.7", "2001:db8::7"]
    assert node.status()["address_from"] == "existing drop-in"
    assert len(node.systemd.restart_calls) == 1


async def test_later_user_dropin_and_broken_yaml_fail_the_check_without_touching_them(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.user_file("config.yaml", "token: secret\nnode-name: [\n")
    node.user_file("config.yaml.d/90-mine.yaml", "node-external-ip: 198.51.100.9\n")
    before = {p: p.read_bytes() for p in Path(node.cfg.config_dir).rglob("*") if p.is_file()}
    await node.part.reconcile()
    ok, detail = node.check()
    assert not ok
    assert detail.startswith(f"{node.cfg.config_dir}/config.yaml:3: not valid YAML")
    assert detail.endswith("(and 1 more, see 'wgagent status')")
    findings = node.status()["findings"]
    assert isinstance(findings, list) and len(findings) == 2
    assert findings[1].startswith(f"{node.cfg.config_dir}/config.yaml.d/90-mine.yaml:1: node-external-ip:")
    after = {p: p.read_bytes() for p in before}
    assert after == before  # the user's files are never edited
    assert "secret" not in str(node.state.status())


async def test_failed_write_keeps_the_old_file_and_fails_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = Node(tmp_path, active="active")
    await node.part.reconcile()
    old = node.path.read_bytes()
    node.address = PublicAddresses(V4_NEW)

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    node.clock.advance(700)
    await node.part.reconcile()
    monkeypatch.undo()
    assert node.path.read_bytes() == old
    assert [n for n in os.listdir(node.path.parent) if n != "50-wgagent.yaml"] == []  # no temp file left
    ok, detail = node.check()
    assert not ok
    assert detail.startswith(f"cannot write {node.path}: No space left on device; k3s keeps the previous")
    assert node.status()["dropin_state"] == "error"
    assert len(node.systemd.restart_calls) == 1  # the first write only: nothing new to restart for
    node.clock.advance(60)
    await node.part.reconcile()  # space again: written, and now k3s restarts
    assert node.dropin()["node-external-ip"] == ["198.51.100.20"]
    assert node.check()[0] and len(node.systemd.restart_calls) == 2


async def test_role_found_later_and_none_until_then(tmp_path: Path) -> None:
    node = Node(tmp_path, role=None)
    found: list[Role] = []
    node.part.role_found.connect(found.append)
    await node.part.reconcile()
    ok, detail = node.check()
    assert not ok and detail.startswith("no k3s found: neither k3s.service nor k3s-agent.service")
    assert not node.path.exists() and found == []
    (node.unit_dir / "k3s-agent.service").write_text("[Service]\nExecStart=/usr/local/bin/k3s agent\n")
    await node.part.reconcile()  # found: the daemon is told to decide the identity again
    assert [r.name for r in found] == ["agent"] and not node.path.exists()
    node.role = found[0]  # what the rebuild hands the new part
    node.part = node.new_part()
    await node.part.reconcile()
    assert node.check()[0]
    assert node.dropin() == {"node-external-ip": ["203.0.113.7"]}
    assert node.part.restarter.unit == "k3s-agent.service"


async def test_flags_on_k3s_command_line_are_reported(tmp_path: Path) -> None:
    node = Node(tmp_path)
    (node.unit_dir / "k3s.service").write_text(
        "[Service]\nExecStart=/usr/local/bin/k3s \\\n    server \\\n    '--flannel-backend=vxlan' \\\n"
    )
    await node.part.reconcile()
    ok, detail = node.check()
    assert not ok
    assert detail.startswith(f"{node.unit_dir}/k3s.service: ExecStart sets --flannel-backend=vxlan: it overrides")
    assert node.status()["unit_files"] == [
        f"{node.unit_dir}/k3s.service",
        f"{node.unit_dir}/k3s.service.d/50-wgagent-wireguard-key.conf",
    ]


async def test_the_wireguard_key_drop_in_rides_along_with_the_next_restart_only(tmp_path: Path) -> None:
    node = Node(tmp_path, active="active")
    (node.unit_dir / "k3s.service").write_text("[Service]\nExecStart=/usr/local/bin/k3s server\n")
    key_dropin = node.unit_dir / "k3s.service.d" / "50-wgagent-wireguard-key.conf"
    node.user_file("config.yaml.d/50-wgagent.yaml", render_dropin("server", node.address, node.cfg))  # as before
    await node.part.reconcile()
    assert key_dropin.read_text().endswith(f"Environment=WIREGUARD_KEY_FILE={node.cfg.data_dir}/agent/wgkey\n")
    node.clock.advance(3600)
    await node.part.reconcile()
    assert node.systemd.restart_calls == [] and node.systemd.reloads == 0  # never a restart of its own
    assert node.status()["wireguard_key"] == f"{key_dropin}: WIREGUARD_KEY_FILE={node.cfg.data_dir}/agent/wgkey"
    node.address = PublicAddresses(V4_NEW)  # a real change: one restart for both, after a daemon-reload
    await node.part.reconcile()
    assert len(node.systemd.restart_calls) == 1 and node.systemd.reloads == 1


async def test_a_new_key_drop_in_on_a_stopped_k3s_gets_a_daemon_reload_for_its_next_start(tmp_path: Path) -> None:
    node = Node(tmp_path, active="inactive")
    (node.unit_dir / "k3s.service").write_text("[Service]\nExecStart=/usr/local/bin/k3s server\n")
    await node.part.reconcile()
    assert node.systemd.restart_calls == [] and node.systemd.reloads == 1


async def test_no_key_drop_in_without_a_k3s_unit_file_to_go_with(tmp_path: Path) -> None:
    node = Node(tmp_path)  # k3s.role set, but no unit file in the unit dirs
    await node.part.reconcile()
    assert not (node.unit_dir / "k3s.service.d").exists() and node.status()["wireguard_key"] is None


async def test_persistent_key_off_writes_no_unit_drop_in(tmp_path: Path) -> None:
    node = Node(tmp_path, persistent_wireguard_key=False)
    await node.part.reconcile()
    assert not (node.unit_dir / "k3s.service.d").exists() and node.status()["wireguard_key"] is None


async def test_ipv4_only_cluster_gets_no_ipv6_node_external_ip(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.families = Families(True, False, "nothing says the cluster has IPv6")
    node.address = PublicAddresses(V4, V6)
    await node.part.reconcile()
    assert node.dropin()["node-external-ip"] == ["203.0.113.7"]
    assert node.status()["families"] == {"ipv4": True, "ipv6": False, "why": "nothing says the cluster has IPv6"}


async def test_disputed_role_writes_the_agent_safe_drop_in_and_says_why(tmp_path: Path) -> None:
    node = Node(tmp_path, role=None)
    node.part = K3sPart(
        node.state,
        node.cfg,
        Identity("node1", "test", None, ConfigLocation.in_dir(node.cfg.config_dir), node.cfg.data_dir,
                 conflict="several k3s units could run here: k3s.service, k3s-agent.service"),
        public_ip=lambda: node.address,
        restarter=node.part.restarter,
        unit_dirs=[str(node.unit_dir)],
    )  # fmt: skip
    await node.part.reconcile()
    assert node.dropin() == {"node-external-ip": ["203.0.113.7"]}  # no server-only key: an agent would not start
    ok, detail = node.check()
    assert not ok and detail.startswith("several k3s units could run here")
    assert "agent-safe drop-in" in detail and node.systemd.restart_calls == []


async def test_a_server_known_only_from_its_data_dir_gets_no_server_keys(tmp_path: Path) -> None:
    node = Node(tmp_path, role=Role("server", "k3s.service", "data dir server/", certain=False))
    await node.part.reconcile()
    assert node.dropin() == {"node-external-ip": ["203.0.113.7"]}


async def test_a_server_can_advertise_its_private_address_to_the_cluster(tmp_path: Path) -> None:
    node = Node(tmp_path, advertise_private_address=True)
    node.part._private_ipv4 = lambda: "10.0.0.5"
    await node.part.reconcile()
    assert node.dropin()["advertise-address"] == "10.0.0.5"
    (tmp_path / "agent").mkdir()
    agent = Node(tmp_path / "agent", role=AGENT, advertise_private_address=True)
    agent.part._private_ipv4 = lambda: "10.0.0.6"
    await agent.part.reconcile()
    assert "advertise-address" not in agent.dropin()  # a server flag: fatal on an agent
