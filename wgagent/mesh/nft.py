"""The host firewall's verdict: counters before it and after every filter chain of input.

netfilter runs the base chains registered on a hook in priority order, whoever registered them
(iptables-legacy's and iptables-nft's filter tables at 0, firewalld at +10, nftables tables at
what they say): a packet reaches a later chain only if every earlier one let it through. So
wgagent's own table has an input chain at priority :data:`PRIORITY`, later than any filter
chain, and a prerouting chain at :data:`EARLY_PRIORITY`, before raw (-300), conntrack (-200)
and every filter. Both have ``policy accept`` and no verdict at all; they count, per source
address, in sets with a counter per element:

- ``pass4``/``pass6`` (input, late): probes that got through (``wgag`` at the start of the
  payload); the tap (:mod:`wgagent.mesh.tap`) says which arrived;
- ``hs_pre4``/``hs_pre6`` (prerouting, early) and ``hs_post4``/``hs_post6`` (input,
  late): WireGuard *handshake messages*, initiations (type 1, 148 bytes: UDP length 156) and
  responses (type 2, 92 bytes: UDP length 100; linux drivers/net/wireguard/messages.h,
  ``struct message_handshake_initiation``/``_response``) arriving and getting through. A peer
  whose handshakes fail keeps initiating every 5 s (REKEY_TIMEOUT), or answering this node's
  initiations, so a host firewall dropping WireGuard itself shows within seconds, without
  waiting for a probe. Only handshake messages are counted: rare on a working pair (one
  exchange per two minutes), so the data path pays nothing but a failed match per packet.

::

    table inet wgagent_probe {
      set pass4 { type ipv4_addr; size 65536; flags dynamic,timeout; timeout 1d; counter; }
      ...
      chain early {
        type filter hook prerouting priority -2000000000; policy accept;
        udp dport 51820 udp length 156 @th,64,32 0x1000000 update @hs_pre4 { ip saddr }
        udp dport 51820 udp length 100 @th,64,32 0x2000000 update @hs_pre4 { ip saddr }
        ...
      }
      chain input {
        type filter hook input priority 2000000000; policy accept;
        udp dport 51820 @th,64,32 0x77676167 update @pass4 { ip saddr }
        udp dport 51820 udp length 156 @th,64,32 0x1000000 update @hs_post4 { ip saddr }
        udp dport 51820 udp length 100 @th,64,32 0x2000000 update @hs_post4 { ip saddr }
        ...
      }
    }

It opens nothing and drops nothing. :func:`ruleset` replaces the table in one transaction
(``add``, ``delete``, define: idempotent); a ruleset flush (``nftables.service`` reload, ``nft
flush ruleset``) removes it: :meth:`NftCounter.counts` then answers None and the part installs
it again (the counters restart; :func:`wgagent.mesh.probe.account` copes).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Mapping
from typing import Any

from wgagent.errors import NftUnavailable
from wgagent.mesh.firewall import OUR_TABLE
from wgagent.mesh.probe import MAGIC32

TABLE = OUR_TABLE
PRIORITY = 2_000_000_000
EARLY_PRIORITY = -2_000_000_000
TIMEOUT_S = 5.0


HANDSHAKE = ((0x01000000, 8 + 148), (0x02000000, 8 + 92))
"""(first four bytes as the big-endian word nftables compares, UDP length) of a handshake
initiation (type 1, little-endian) and a handshake response (type 2)."""
SETS = ("pass", "hs_pre", "hs_post")


def ruleset(port: int) -> str:
    """The nft script that (re)creates the counting table for ``port``."""
    probe = f"udp dport {int(port)} @th,64,32 {MAGIC32:#x}"
    handshakes = [f"udp dport {int(port)} udp length {length} @th,64,32 {word:#x}" for word, length in HANDSHAKE]
    sets = "".join(
        f"  set {name}{v} {{ type {t}; size 65536; flags dynamic,timeout; timeout 1d; counter; }}\n"
        for name in SETS
        for v, t in (("4", "ipv4_addr"), ("6", "ipv6_addr"))
    )

    def count(matches: list[str], name: str) -> str:
        return "".join(
            f"    {m} update @{name}4 {{ ip saddr }}\n    {m} update @{name}6 {{ ip6 saddr }}\n" for m in matches
        )

    return (
        f"add table inet {TABLE}\n"
        f"delete table inet {TABLE}\n"
        f"table inet {TABLE} {{\n{sets}"
        f"  chain early {{\n"
        f"    type filter hook prerouting priority {EARLY_PRIORITY}; policy accept;\n"
        f"{count(handshakes, 'hs_pre')}"
        f"  }}\n"
        f"  chain input {{\n"
        f"    type filter hook input priority {PRIORITY}; policy accept;\n"
        f"{count([probe], 'pass')}{count(handshakes, 'hs_post')}"
        f"  }}\n"
        f"}}\n"
    )


def parse_counts(doc: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Set kind (``pass``, ``hs_pre``, ``hs_post``) -> source address -> packets counted,
    from ``nft -j list table inet wgagent_probe``."""
    out: dict[str, dict[str, int]] = {name: {} for name in SETS}
    for item in doc.get("nftables", []):
        s = item.get("set") if isinstance(item, dict) else None
        if not isinstance(s, dict) or s.get("table") != TABLE or not isinstance(s.get("name"), str):
            continue
        kind = s["name"][:-1]
        if kind not in out:
            continue
        for e in s.get("elem", []):
            elem = e.get("elem") if isinstance(e, dict) else None
            if isinstance(elem, dict) and isinstance(elem.get("val"), str):
                packets = (elem.get("counter") or {}).get("packets")
                if isinstance(packets, int):
                    out[kind][elem["val"]] = packets
    return out


class NftCounter:
    """Runs ``nft`` for the counting table and for reading the ruleset."""

    def __init__(self, nft: str = "nft", *, timeout_s: float = TIMEOUT_S) -> None:
        self.nft = nft
        self.timeout_s = timeout_s

    async def install(self, port: int) -> None:
        rc, _, err = await self._run("-f", "-", stdin=ruleset(port))
        if rc != 0:
            raise NftUnavailable(f"nft could not add the counting table: {_line(err)}")

    async def counts(self) -> dict[str, dict[str, int]] | None:
        """The counters (:func:`parse_counts`); None when the table is not there (flushed: install again)."""
        rc, out, err = await self._run("-j", "list", "table", "inet", TABLE)
        if rc != 0:
            if "No such file or directory" in err or "does not exist" in err:
                return None
            raise NftUnavailable(f"nft could not list the counting table: {_line(err)}")
        return parse_counts(_json(out))

    async def remove(self) -> None:
        await self._run("delete", "table", "inet", TABLE)

    async def ruleset(self) -> tuple[dict[str, Any], str]:
        """``nft -j list ruleset`` (decoded) and ``nft -a list ruleset`` (text), for naming a rule."""
        rc, out, err = await self._run("-j", "list", "ruleset")
        if rc != 0:
            raise NftUnavailable(f"nft could not list the ruleset: {_line(err)}")
        rc, text, err = await self._run("-a", "list", "ruleset")
        if rc != 0:
            raise NftUnavailable(f"nft could not list the ruleset: {_line(err)}")
        return _json(out), text

    async def _run(self, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
        path = shutil.which(self.nft)
        if path is None:
            raise NftUnavailable(f"{self.nft} not found: install nftables to see the host firewall's verdict")
        try:
            proc = await asyncio.create_subprocess_exec(
                path,
                *args,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise NftUnavailable(f"cannot run {path}: {exc.strerror or exc}") from exc
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(stdin.encode() if stdin is not None else None), self.timeout_s
            )
        except TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise NftUnavailable(f"{path} did not finish within {self.timeout_s:g} s") from exc
        return proc.returncode or 0, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _json(text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise NftUnavailable("nft -j printed no JSON") from exc
    return doc if isinstance(doc, dict) else {}


def _line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0][:200] if lines else "no message"
