"""Public IP discovery: find the node's public IPv4/IPv6 address and follow its changes.

    sources.py     the Source protocol, the concurrent runner, the static source
    interface.py   addresses on the node's interfaces (pyroute2 adapter + pure filter)
    metadata.py    cloud metadata services; DMI detection (read once, then pure checks)
    stun.py        STUN Binding codec (pure) and the UDP client
    echo.py        HTTP echo body parser (pure) and source
    httpclient.py  the aiohttp client every HTTP source uses (no proxy, no redirect, capped)
    decide.py      decide() and adopt(): pure, tested with named cases
    part.py        PublicIPPart: rounds, adoption, state file, check, metrics
    report.py      ``wgagent discover``

Only ``httpclient.py`` imports aiohttp and only ``interface.netlink_dump()`` imports pyroute2.
"""
