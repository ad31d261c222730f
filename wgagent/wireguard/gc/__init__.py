"""Dead WireGuard peer garbage collection (the ``peer_gc`` check).

    policy.py     the rule, pure: select_stale_peers(device, cluster_keys, first_seen, now, policy)
    firstseen.py  FirstSeenStore: when wgagent first saw each peer, kept in state_dir
    sweep.py      run_gc_pass(), gc_all(): read a device, decide, remove in one transaction
    part.py       GCPart: a pass over every watched interface each wireguard.gc.interval_s

``wgagent gc`` (``commands/gc.py``) runs one pass on demand through ``sweep.gc_all``.
"""

from wgagent.wireguard.gc.firstseen import FIRST_SEEN_FILE, FirstSeenStore
from wgagent.wireguard.gc.policy import GCPolicy, Selection, peer_states, select_stale_peers, update_first_seen
from wgagent.wireguard.gc.sweep import GCResult, gc_all, run_gc_pass

__all__ = [
    "FIRST_SEEN_FILE",
    "FirstSeenStore",
    "GCPolicy",
    "GCResult",
    "Selection",
    "gc_all",
    "peer_states",
    "run_gc_pass",
    "select_stale_peers",
    "update_first_seen",
]
