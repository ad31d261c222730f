"""The host firewall's verdict on probes: a counting chain after every filter chain of input.

netfilter runs the base chains registered on a hook in priority order, whoever registered them
(iptables-legacy's and iptables-nft's filter tables at 0, firewalld at +10, nftables tables at
what they say): a packet reaches a later chain only if every earlier one let it through. So
wgagent's own table has one input chain at priority :data:`PRIORITY`, later than any filter
chain, with ``policy accept`` and no verdict at all, counting per source address the probes
that got there (a set with a counter per element)::

    table inet wgagent_probe {
      set pass4 { type ipv4_addr; size 65536; flags dynamic,timeout; timeout 1d; counter; }
      set pass6 { type ipv6_addr; ... }
      chain input {
        type filter hook input priority 2000000000; policy accept;
        udp dport 51820 @th,64,32 0x77676167 update @pass4 { ip saddr }
        udp dport 51820 @th,64,32 0x77676167 update @pass6 { ip6 saddr }
      }
    }

It opens nothing and drops nothing: only probes (``wgag`` at the start of the payload) to the
WireGuard port are counted. :func:`ruleset` replaces the table in one transaction (``add``,
``delete``, define: idempotent); a ruleset flush (``nftables.service`` reload, ``nft flush
ruleset``) removes it: :meth:`NftCounter.counts` then answers None and the part installs it
again (the counters restart; :func:`wgagent.mesh.probe.account` copes).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Mapping
from typing import Any

from wgagent.errors import WgAgentError
from wgagent.mesh.firewall import OUR_TABLE
from wgagent.mesh.probe import MAGIC32

TABLE = OUR_TABLE
PRIORITY = 2_000_000_000
TIMEOUT_S = 5.0


class NftUnavailable(WgAgentError):
    """nft cannot be used here; the message says why (for the report's ``in.ctr``)."""


def ruleset(port: int) -> str:
    """The nft script that (re)creates the counting table for ``port``."""
    match = f"udp dport {int(port)} @th,64,32 {MAGIC32:#x}"
    sets = "".join(
        f"  set pass{v} {{ type {t}; size 65536; flags dynamic,timeout; timeout 1d; counter; }}\n"
        for v, t in (("4", "ipv4_addr"), ("6", "ipv6_addr"))
    )
    return (
        f"add table inet {TABLE}\n"
        f"delete table inet {TABLE}\n"
        f"table inet {TABLE} {{\n{sets}"
        f"  chain input {{\n"
        f"    type filter hook input priority {PRIORITY}; policy accept;\n"
        f"    {match} update @pass4 {{ ip saddr }}\n"
        f"    {match} update @pass6 {{ ip6 saddr }}\n"
        f"  }}\n"
        f"}}\n"
    )


def parse_counts(doc: Mapping[str, Any]) -> dict[str, int]:
    """Source address -> probes counted, from ``nft -j list table inet wgagent_probe``."""
    out: dict[str, int] = {}
    for item in doc.get("nftables", []):
        s = item.get("set") if isinstance(item, dict) else None
        if not isinstance(s, dict) or s.get("table") != TABLE:
            continue
        for e in s.get("elem", []):
            elem = e.get("elem") if isinstance(e, dict) else None
            if isinstance(elem, dict) and isinstance(elem.get("val"), str):
                packets = (elem.get("counter") or {}).get("packets")
                if isinstance(packets, int):
                    out[elem["val"]] = packets
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

    async def counts(self) -> dict[str, int] | None:
        """Probes counted per source; None when the table is not there (flushed: install again)."""
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
