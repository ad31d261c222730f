"""WireGuard: the device model, its two backends, the module keeper, the interface check, peer GC.

    model.py      Device and Peer: one frozen model shared by both backends (like ipc.h)
    backend.py    the Backend protocol, and which backend serves an interface (like ipc.c)
    uapi.py       userspace UAPI socket (wireguard-go, boringtun): pure codec + asyncio adapter
    genl.py       WireGuard's generic netlink messages: requests encoded, the device dump decoded (struct)
    netlink.py    kernel backend: genl.py over a standard-library AF_NETLINK socket
    endpoints.py  EndpointSetter: the mesh heal's one-peer endpoint change, per backend
    fake.py       FakeBackend: an in-memory device for tests and doctor's own tests
    module.py     ``wireguard_module`` check: load the module, or say why it cannot load
    interface.py  ``wireguard_interface`` check: exists, up, port bound, handshakes, unreachable nodes
    gc/           ``peer_gc`` check: policy.py (the pure ``select_stale_peers()``), firstseen.py,
                  sweep.py (one pass over a device, one removal transaction), part.py (the daemon's)

The decisions (``diagnose()``, ``interface_facts()``, ``select_stale_peers()``) are pure
functions over plain data, so ``wgagent doctor`` can reuse them for its one-shot report.
"""

REJECT_AFTER_S = 180.0
"""REJECT_AFTER_TIME (wireguard-go device/constants.go, 180 s; the kernel's REJECT_AFTER_TIME in
drivers/net/wireguard/messages.h is the same): a session older than this is dead, so a peer
with no handshake for this long is not talking to us. The one statement of this floor:
``wireguard.gc.stale_after_s`` may not go below it (config.py), a peer is "active" within it.
Here rather than in model.py so that the config schema can name it without importing the model."""
