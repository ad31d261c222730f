"""The three-node lab behind ``make lab`` and ``make lab-check`` (``python -m tests.cluster``).

Network namespaces joined by veth pairs only, nothing routed to the host's interfaces::

                    inet  (forwarding; stund 203.0.113.254/.253, coturn .252, HTTP echo .251)
         ┌────────────┼──────────────────────┬────────────────────────────┐
    203.0.113.9/30    203.0.113.13/30         198.51.100.1/24
    cp 203.0.113.10   nat1gw wan0 203.0.113.14  (nft masquerade)  pub2 198.51.100.20
    API stand-in :6443      lan0 10.1.0.1, Alibaba metadata stand-in :8100
                            │
                            nat1 10.1.0.2   (DMI: "Alibaba Cloud ECS")

- cp (k3s server), nat1 and pub2 (agents) each run wireguard-go as ``flannel-wg`` (own
  ``/run/wireguard``), peered from the Node objects as flannel does: keys from backend-data,
  endpoints from ``public-ip``, keepalive 25. nat1's ``public-ip`` is its 10.x address (what
  flannel publishes on a NATed node), yet handshakes work: nat1 initiates through the NAT.
- pub2 also holds 300 dead peers: 200 keys of no Node, 100 without allowed IPs.
- k3s cannot run here: each node's ``systemctl`` is :mod:`tests.cluster.systemctl`, which says
  k3s is active and, on a restart, has the API stand-in do what k3s and flannel do at start
  with the node's k3s config (tests/kubeapi/k3s.py: the overwrite annotations by k3s version,
  then flannel copying ``public-ip-overwrite`` into ``public-ip``).
- wgagent runs as ``wgagent run`` in each node's namespace with its own config
  (:meth:`Cluster.config`), health endpoint 127.0.0.1:8795 there.

Honest shortcuts, each chosen so that the lab converges in seconds, not minutes:

- The dead peers never had a handshake, and wireguard-go cannot be told one; wgagent counts such
  a peer's age from when it first saw it (``wireguard-peers-first-seen.json`` in its state dir).
  The lab writes that file before wgagent starts, as if wgagent had seen those peers an hour
  ago (a node that ran wgagent before), so ``stale_after_s`` (180 s, its minimum) has passed.
- ``k3s.min_restart_interval_s`` keeps its default (600 s): a node needs one restart, for its
  new drop-in and its overwrite together (the annotation part defers its restart to the k3s
  part's pass right after it). The check bounds restarts at 1 per node.
- The fake ``systemctl`` tells the stand-in at once, where a real k3s takes seconds to start.
- Other nodes' flannel does not re-read nat1's new ``public-ip`` into its peer's endpoint here:
  WireGuard's roaming already points cp's and pub2's peer at nat1's NAT address.
"""
