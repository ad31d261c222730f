"""WireGuard: the device model, its two backends, the module keeper, the interface check, peer GC.

    model.py      Device and Peer: one frozen model shared by both backends (like ipc.h)
    backend.py    the Backend protocol, and which backend serves an interface (like ipc.c)
    uapi.py       userspace UAPI socket (wireguard-go, boringtun): pure codec + asyncio adapter
    netlink.py    kernel generic netlink through pyroute2 (imported inside its functions;
                  publicip/interface.py is the only other module importing pyroute2)
    fake.py       FakeBackend: an in-memory device for tests and doctor's own tests
    module.py     ``wireguard_module`` check: load the module, or say why it cannot load
    interface.py  ``wireguard_interface`` check: exists, up, port bound, handshakes, unreachable nodes
    gc/           ``peer_gc`` check: policy.py (the pure ``select_stale_peers()``), firstseen.py,
                  sweep.py (one pass over a device, one removal transaction), part.py (the daemon's)

The decisions (``diagnose()``, ``interface_facts()``, ``select_stale_peers()``) are pure
functions over plain data, so ``wgagent doctor`` can reuse them for its one-shot report.
"""
