"""k3s's systemd unit, in process, for daemon tests on virtual time: the ``systemctl`` calls
wgagent's k3s restarter makes, answered as systemd would for a k3s that starts as upstream k3s
starts (the API stand-in's :meth:`~tests.kubeapi.KubeAPI.k3s_start`, with the node's config
files read from disk at each start). The out-of-process twin for the lab is
tests/cluster/systemctl.py; this one is a ``wgagent.proc.Runner`` for ``Seams.runner``.

    unit = K3sUnit(api, "n1", config_dir, clock=wall(loop), monotonic=loop.time)
    daemon = Daemon(cfg, path, seams=Seams(clock=wall(loop), monotonic=loop.time, runner=unit))
    ...
    unit.restarts          # [(wall time, outcome)] of every try-restart

``--no-block try-restart`` answers 0 at once (a job was queued), whether k3s comes up or not;
``is-active`` says ``active`` while the last start succeeded, ``activating`` (exit 3) while
it fails and systemd retries (``Restart=always`` in install.sh's units);
``show --property=ExecMainStartTimestampMonotonic`` is the last start's monotonic µs;
``daemon-reload`` succeeds. With ``unit_dirs``, each start reads the unit and its
``<unit>.d/*.conf`` drop-ins there (first directory that has it): its ``ExecStart`` flags and
``Environment=`` (e.g. ``WIREGUARD_KEY_FILE``) go into the start, as systemd would after a
reload.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.cluster.systemctl import read_env_file, read_unit
from tests.kubeapi import KubeAPI
from tests.kubeapi.k3s import Outcome, config_files
from wgagent.proc import CommandResult


@dataclass
class K3sUnit:
    api: KubeAPI
    node: str
    config_dir: str
    clock: Callable[[], float]
    monotonic: Callable[[], float]
    unit: str = "k3s-agent.service"
    start: dict[str, Any] = field(default_factory=dict)
    """More ``k3s_start`` inputs: ``args`` (the unit's flags), ``env``, ``version``..."""
    unit_dirs: Sequence[str] = ()
    restarts: list[tuple[float, Outcome]] = field(default_factory=list)
    started_mono: float | None = None
    active: bool = True
    reloads: int = 0

    def inputs(self) -> dict[str, Any]:
        """``k3s_start``'s inputs now: ``start``, and the unit's flags and environment."""
        inputs = dict(self.start)
        for directory in self.unit_dirs:
            path = os.path.join(directory, self.unit)
            if os.path.exists(path) or os.path.isdir(path + ".d"):
                argv, env, env_files = read_unit(path)
                for env_file in env_files:
                    env.update(read_env_file(env_file))
                args = argv[2:] if len(argv) >= 2 and argv[1] in ("server", "agent") else argv[1:]
                inputs["args"] = tuple(args) + tuple(inputs.get("args", ()))
                inputs["env"] = tuple(sorted({**env, **dict(inputs.get("env", ()))}.items()))
                break
        return inputs

    def files(self, env: Sequence[tuple[str, str]] = ()) -> tuple[tuple[str, str], ...]:
        """The config files k3s reads now (``K3S_CONFIG_FILE`` in ``env`` wins)."""
        main = dict(env).get("K3S_CONFIG_FILE") or os.path.join(self.config_dir, "config.yaml")
        out = []
        for path in config_files(main):
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                out.append((path, f.read()))
        return tuple(out)

    async def run(self, argv: Sequence[str], *, timeout_s: float) -> CommandResult:
        args = list(argv[1:])
        if args == ["daemon-reload"]:  # systemd reads unit files again; nothing else changes here
            self.reloads += 1
            return CommandResult(0, "", "")
        if args == ["is-active", self.unit]:
            return CommandResult(0, "active\n", "") if self.active else CommandResult(3, "activating\n", "")
        if args == ["daemon-reload"]:
            return CommandResult(0, "", "")
        if args == ["--no-block", "try-restart", self.unit]:
            inputs = self.inputs()
            outcome = self.api.k3s_start(self.node, files=self.files(inputs.get("env", ())), **inputs)
            self.started_mono = self.monotonic()
            self.active = outcome.started
            self.restarts.append((self.clock(), outcome))
            return CommandResult(0, "", "")
        if args[:1] == ["show"] and "--property=ExecMainStartTimestampMonotonic" in args:
            usec = 0 if self.started_mono is None else int(self.started_mono * 1e6)
            return CommandResult(0, f"{usec}\n", "")
        return CommandResult(1, "", f"unexpected systemctl call: {args}")
