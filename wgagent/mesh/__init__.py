"""Mesh health: which node pairs cannot talk, why, and which node to fix (issue 14).

    model.py     policy, cause ids, the endpoint each Node advertises            (pure)
    observe.py   device + node list + last look -> Observation, per other Node    (pure)
    report.py    Observation -> the ``wgagent.io/mesh`` annotation; publish policy (pure)
    diagnose.py  every report + the Node list -> pairs, causes, fixes             (pure)
    render.py    Diagnosis -> ``wgagent mesh`` text and ``--json``               (pure)
    heal.py      which drifted endpoints to set back                             (pure)
    probe.py     the inbound probe: datagram, schedule, arrivals vs host verdicts (pure)
    firewall.py  which nftables rule drops a probe                               (pure)
    tap.py       AF_PACKET socket with a BPF filter: probes seen before netfilter (adapter)
    nft.py       the counting table after the input filter, the ruleset reader   (adapter)
    sender.py    the UDP socket that sends probes                                (adapter)

The cores import neither aiohttp nor pyroute2, and nothing from the daemon's wiring: the
part and the command (phase 2) feed them plain data and carry their results out.
"""
