"""WireGuard: the device model, its two backends, the module keeper, the interface check, peer GC.

    model.py      Device and Peer: one frozen model shared by both backends (like ipc.h)
    backend.py    the Backend protocol, and which backend serves an interface (like ipc.c)
    uapi.py       userspace UAPI socket (wireguard-go, boringtun): pure codec + asyncio adapter
    genl.py       WireGuard's generic netlink messages: requests encoded, the device dump decoded (struct)
    netlink.py    kernel backend: genl.py over a standard-library AF_NETLINK socket
    module.py     ``wireguard_module`` check: load the module, or say why it cannot load
    interface.py  ``wireguard_interface`` check: exists, up, port bound, handshakes, unreachable nodes
    gc.py         ``peer_gc`` check: the pure ``select_stale_peers()`` and one removal per pass

The decisions (``diagnose()``, ``interface_facts()``, ``select_stale_peers()``) are pure
functions over plain data, so ``wgagent doctor`` can reuse them for its one-shot report.
"""
