"""``wg show <if> dump`` as the reference: parse its text, and list where a decoded dump differs.

The format is wireguard-tools' ``src/show.c`` (``dump_print``): a first line for the device
(``private-key public-key listen-port fwmark``), then a line per peer (``public-key
preshared-key endpoint allowed-ips latest-handshake transfer-rx transfer-tx
persistent-keepalive``), tab-separated; ``(none)`` for an unset key, endpoint or empty
allowed-ips list, ``off`` for a zero fwmark or keepalive, the handshake in whole seconds
(``0``: never). Pure: the unit tests use it on recorded dumps, the kernel tests on live ones::

    >>> shown = parse("(none)\\t(none)\\t0\\toff\\n")
    >>> shown.listen_port, shown.fwmark, shown.peers
    (0, None, ())
"""

from __future__ import annotations

import base64
import functools
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from wgagent.wireguard.genl import Dump


@dataclass(frozen=True)
class ShownPeer:
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    handshake_s: int
    rx_bytes: int
    tx_bytes: int
    keepalive: int | None


@dataclass(frozen=True)
class Shown:
    public_key: str | None
    listen_port: int
    fwmark: int | None
    peers: tuple[ShownPeer, ...]


def _none(text: str) -> str | None:
    return None if text == "(none)" else text


def parse(text: str) -> Shown:
    lines = text.rstrip("\n").split("\n")
    _, pub, port, fwmark = lines[0].split("\t")
    peers = []
    for line in lines[1:]:
        key, _, endpoint, ips, hs, rx, tx, keepalive = line.split("\t")
        peers.append(
            ShownPeer(
                key,
                _none(endpoint),
                () if ips == "(none)" else tuple(ips.split(",")),
                int(hs),
                int(rx),
                int(tx),
                None if keepalive == "off" else int(keepalive),
            )
        )
    return Shown(_none(pub), int(port), None if fwmark == "off" else int(fwmark, 16), tuple(peers))


def differences(dump: Dump, shown: Shown, *, limit: int = 20) -> list[str]:
    """Every field where ``dump`` (wgagent's decoding) and ``shown`` (``wg show``) disagree."""
    dev = dump.device
    out = []
    for name, ours, theirs in (
        ("public key", dev.public_key, shown.public_key),
        ("listen port", dev.listen_port or 0, shown.listen_port),
        ("fwmark", dump.fwmark, shown.fwmark),
        ("peer count", len(dev.peers), len(shown.peers)),
    ):
        if ours != theirs:
            out.append(f"{name}: {ours!r} != wg's {theirs!r}")
    for peer, other in zip(dev.peers, shown.peers, strict=False):
        if peer.public_key != other.public_key:
            out.append(f"peer order: {peer.public_key} where wg shows {other.public_key}")
            break
        hs = peer.last_handshake
        # wg prints whole seconds; ours is sec + nsec / 1e9 (None: never)
        same_hs = other.handshake_s == 0 if hs is None else 0 <= hs - other.handshake_s < 1 + 1e-6
        fields = (
            ("endpoint", peer.endpoint, other.endpoint),
            ("allowed IPs", peer.allowed_ips, other.allowed_ips),
            ("handshake", hs, other.handshake_s) if not same_hs else None,
            ("rx bytes", peer.rx_bytes, other.rx_bytes),
            ("tx bytes", peer.tx_bytes, other.tx_bytes),
            ("keepalive", peer.keepalive, other.keepalive),
        )
        for field in fields:
            if field is not None and field[1] != field[2]:
                out.append(f"{peer.public_key} {field[0]}: {field[1]!r} != wg's {field[2]!r}")
        if len(out) >= limit:
            break
    return out


# --- recorded dumps (tests/data/wg-dumps.json.gz, made by tests.uml.record_dumps) --------------------

RECORDED = Path(__file__).resolve().parents[1] / "data" / "wg-dumps.json.gz"


@dataclass(frozen=True)
class Recorded:
    name: str
    ifname: str
    seq: int
    datagrams: tuple[bytes, ...]
    wg_show_dump: str | None
    """``wg show <if> dump`` right after the recording (None for ``interrupted``)."""


@functools.cache
def recorded() -> dict[str, Recorded]:
    """The recorded dumps by name: ``mixed``, ``mixed-wg-sized``, ``bare``, ``interrupted``."""
    with gzip.open(RECORDED, "rt") as f:
        data = json.load(f)
    return {
        name: Recorded(
            name, d["ifname"], d["seq"], tuple(base64.b64decode(x) for x in d["datagrams"]), d.get("wg_show_dump")
        )
        for name, d in data["dumps"].items()
    }
