"""Mesh health: which node pairs cannot talk, why, and which node to fix (issue 14).

    model.py     policy, cause ids, the endpoint each Node advertises              (pure)
    observe.py   device + node list + last look -> Look, per other Node             (pure)
    probe.py     the inbound probe: datagram, schedule, arrivals vs host verdicts   (pure)
    report.py    -> the ``wgagent.io/mesh`` annotation; strict decode; write policy  (pure)
    diagnose.py  every report + the Node list -> pairs, causes, fixes               (pure)
    render.py    Diagnosis -> ``wgagent mesh`` text and ``--json``                 (pure)
    heal.py      which drifted endpoints to set back; the EndpointSetter protocol   (pure)
    changes.py   this node's row and inbound problems -> Event records              (pure)
    firewall.py  which nftables rule drops a probe                                 (pure)
    agent.py     one pass of the part: Inputs -> Outputs                           (pure)
    tap.py       AF_PACKET socket with a BPF filter: probes seen before netfilter   (adapter)
    nft.py       counters before and after the host's filter chains; the ruleset    (adapter)
    sender.py    the UDP sockets that send probes                                   (adapter)

The setters of endpoints live with the WireGuard backends (``wgagent/wireguard/endpoints.py``),
the Events policy and recorder in ``wgagent/events.py``. The cores import neither aiohttp nor
pyroute2, and nothing of the daemon's wiring: the part and the command (phase 2) feed them
plain data and carry their results out.
"""
