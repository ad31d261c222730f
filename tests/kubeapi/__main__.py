"""Run the API stand-in as a process (for lab tests that run wgagent elsewhere).

    python -m tests.kubeapi --port 6443 --nodes n1,n2 --servers s1 --dir /tmp/kubeapi
    python -m tests.kubeapi ... --nodes n1=10.1.0.2,n2=198.51.100.20   # with their InternalIP
    python -m tests.kubeapi ... --k3s-version v1.32.11+k3s3 --flannel-external-ip

Writes the test PKI and kubeconfigs into ``--dir`` (``kubeconfigs/node-<name>.yaml``,
``k3scontroller.yaml``, ``admin-inline.yaml``), prints one JSON line saying where, and
serves until SIGTERM/SIGINT. Counts and faults: ``GET /_standin/counts`` and
``POST /_standin/control`` with the admin credential (see ``KubeAPI._control``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from tests.kubeapi.k3s import Cluster
from tests.kubeapi.pki import PKI
from tests.kubeapi.server import KubeAPI
from tests.kubeapi.store import KUBELET_VERSION


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _nodes(text: str) -> list[tuple[str, str | None]]:
    """``n1,n2=10.1.0.2`` -> ``[("n1", None), ("n2", "10.1.0.2")]`` (name, InternalIP)."""
    return [(name, ip or None) for name, _, ip in (item.partition("=") for item in _names(text))]


async def _serve(args: argparse.Namespace) -> None:
    pki = PKI.create(args.dir + "/pki", server_ips=tuple(_names(args.san)))
    cluster = Cluster(
        flannel_backend=args.flannel_backend,
        flannel_external_ip=args.flannel_external_ip,
        cluster_cidrs=tuple(_names(args.cluster_cidr)),
        server_version=args.k3s_version,
    )
    api = KubeAPI(
        pki=pki, workdir=args.dir, host=args.host, port=args.port, time_scale=args.time_scale, cluster=cluster
    )
    for role, given in (("server", args.servers), ("agent", args.nodes)):  # servers first, as KubeAPI does
        for name, internal_ip in _nodes(given):
            api.store.add(name, role=role, internal_ip=internal_ip, version=args.k3s_version)
    await api.start()
    info = {
        "url": api.url,
        "ca": pki.ca_cert,
        "admin": api.admin_kubeconfig(),
        "k3scontroller": api.controller_kubeconfig(),
        "nodes": {n: api.node_kubeconfig(n) for n in sorted(api.store.nodes)},
    }
    print(json.dumps(info), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await api.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.kubeapi", description="Kubernetes API stand-in for Nodes")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6443)
    p.add_argument("--nodes", default="", help="agent node names, comma-separated; NAME=IP sets its InternalIP")
    p.add_argument("--servers", default="", help="server node names, comma-separated; NAME=IP as for --nodes")
    p.add_argument("--dir", required=True, help="where the PKI and kubeconfigs are written")
    p.add_argument("--san", default="", help="extra server certificate IP addresses, comma-separated")
    p.add_argument("--time-scale", type=float, default=1.0, help="real seconds per simulated second")
    p.add_argument("--k3s-version", default=KUBELET_VERSION, help="every node's and the servers' k3s version")
    p.add_argument("--flannel-backend", default="wireguard-native", help="the servers' flannel-backend")
    p.add_argument("--flannel-external-ip", action="store_true", help="the servers run with flannel-external-ip")
    p.add_argument("--cluster-cidr", default="10.42.0.0/16", help="comma-separated; an IPv6 one makes it dual-stack")
    args = p.parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except (OSError, RuntimeError) as exc:
        print(f"kubeapi: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
