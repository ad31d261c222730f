"""``wgagent doctor``: one report for a person, every failure of the seed and around it, each with its fix.

    gather.py    gather(cfg, config_path, env) -> Facts   adapters; every probe bounded, a failing one is data
    facts.py     Facts and its parts                      plain data
    diagnose.py  diagnose(facts) -> [Finding, ...]        pure; built on the parts' own decision functions,
                 k3s_findings.py (k3s, flannel backend, public IP), flannel_findings.py (the families, the
                 annotation verdicts, HA backends) and network_findings.py (API, interface, peers) hold one
                 function per area
    findings.py  Finding, is_clear(), render_json()         the report's data; ``commands/doctor.py`` prints it

One source of truth: doctor decides nothing the daemon decides otherwise. It takes the node's
identity as the daemon does (``decide_identity_from``: role, disputes, where k3s reads its
config, data dir, unit), reads k3s's files where k3s reads them, and asks the daemon's own
functions: ``scan_config``/``scan_unit`` (for a role known for sure), ``decide_families``,
``k3s.view.view_from``, ``decide_family`` per managed family, ``server_backend`` and
``agent_backend_mismatch``.

The probes (k3s's files first, as they name the node and the role; the rest at once):

    k3s         identity, binary, config files, unit, flannel's subnet file, the restarter's book (read only)
    kernel      the module facts (ModuleHost): loaded, built in, /lib/modules, modprobe, link probe
    public-ip   one discovery round over the configured sources, exactly as ``wgagent discover``
    kubernetes  GET the own Node (own credential, as ``own_node_of`` reads it), LIST the Nodes (list credential)
    wireguard   flannel's interfaces (read_device), bound UDP ports, first-seen times of peers
    wgagent     the daemon's /healthz (informational: doctor works without it)

A finding is ``Finding(severity, area, title, detail, fix)``; severity is ``ok``, ``info``,
``warn`` or ``problem``. Only a problem makes the exit code 1; what the running daemon fixes by
itself (a drop-in to write, a restart pending) is a warning that says so. A probe that times out
or fails is a problem finding ("could not check ..."), never a traceback. Without k3s the report
says so and which checks it skipped.

Doctor changes nothing: modprobe runs with ``--dry-run``, and no annotation, drop-in, peer or
state file is written. (The link probe makes a throwaway wireguard link in a private network
namespace; that may make the kernel load the module, as the daemon would.)
"""

from __future__ import annotations

from wgagent.doctor.diagnose import diagnose
from wgagent.doctor.facts import (
    DaemonFacts,
    DiscoveryFacts,
    Facts,
    Failed,
    InterfaceRead,
    K3sFacts,
    KubeFacts,
    Skipped,
    WireGuardFacts,
)
from wgagent.doctor.findings import Finding, is_clear, render_json
from wgagent.doctor.gather import Environment, fetch_health, find_k3s_binary, gather
from wgagent.doctor.network_findings import DEAD_PEERS_PROBLEM

__all__ = [
    "DEAD_PEERS_PROBLEM",
    "DaemonFacts",
    "DiscoveryFacts",
    "Environment",
    "Facts",
    "Failed",
    "Finding",
    "InterfaceRead",
    "K3sFacts",
    "KubeFacts",
    "Skipped",
    "WireGuardFacts",
    "diagnose",
    "fetch_health",
    "find_k3s_binary",
    "gather",
    "is_clear",
    "render_json",
]
