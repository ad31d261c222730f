"""Which rule of the host firewall drops an inbound probe (pure, over ``nft -j list ruleset``).

The late input counter (:mod:`wgagent.mesh.nft`) already *knows* that probes are dropped on
the host; this names the rule, so the fix can say what to change. :func:`find_drop` walks the
input hook's base chains of the probe's family (``ip`` or ``ip6``, and ``inet``) in priority
order, before wgagent's own counting chain, as netfilter runs them for one UDP datagram:
new flow (``ct state new``), from the sender's address, to the WireGuard port, arriving on a
known interface. Each match is true, false or unknown (what the walker cannot evaluate: an
``xt`` match of iptables-nft, ``fib``, ``limit``, a mark...):

- ``accept`` ends the chain (the next base chain still runs), ``drop``/``reject`` (and
  iptables-nft's ``xt target REJECT``) ends the walk; ``jump``/``goto`` enter the chain named,
  ``return`` leaves it; at the end of a base chain its policy applies;
- a rule whose matches are all true decides; one with an unknown match is only a candidate:
  the walk goes on as if it had not matched, and the first such dropping rule is named, when
  no definite one is found.

The name is ``<family> <table> <chain>: <rule as nft prints it> (handle N)``, with the text
from ``nft -a list ruleset`` (:func:`rule_texts`); or the chain's policy. iptables-nft rules
appear here too (``ip filter INPUT``); rules of iptables-legacy do not (then: not found).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from typing import Any

OUR_TABLE = "wgagent_probe"
NEUTRAL_XT = frozenset({"comment"})
"""xt matches that never filter (iptables-nft's ``-m comment``)."""
DROP_XT = frozenset({"REJECT", "DROP"})
MAX_DEPTH = 16


@dataclass(frozen=True)
class Packet:
    """The probe as the input hook sees it."""

    family: str
    """``ip`` or ``ip6``."""
    saddr: str
    dport: int
    iifname: str = ""
    daddr: str | None = None


@dataclass(frozen=True)
class Found:
    family: str
    table: str
    chain: str
    handle: int | None
    """None: the chain's policy."""
    certain: bool

    def describe(self, texts: Mapping[tuple[str, str, str, int], str]) -> str:
        where = f"{self.family} {self.table} {self.chain}"
        if self.handle is None:
            return f"{where}: policy drop"
        text = texts.get((self.family, self.table, self.chain, self.handle), "a rule")
        return f"{where}: {text} (handle {self.handle})" + ("" if self.certain else " (probably)")


def find_drop(ruleset: Mapping[str, Any], packet: Packet, *, before: int | None = None) -> Found | None:
    """The rule (or policy) of the input path that drops ``packet``; None when none is found.

    ``before``: only base chains with a lower priority (wgagent's own counting chain's).
    """
    items = [i for i in ruleset.get("nftables", []) if isinstance(i, dict)]
    chains = {(str(c.get("family")), str(c.get("table")), str(c.get("name"))): c for c in _objects(items, "chain")}
    rules: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in _objects(items, "rule"):
        rules.setdefault((str(r.get("family")), str(r.get("table")), str(r.get("chain"))), []).append(r)
    sets = {(str(s.get("family")), str(s.get("table")), str(s.get("name"))): s for s in _objects(items, "set")}
    walker = _Walker(packet, chains, rules, sets)
    families = ("ip", "inet") if packet.family == "ip" else ("ip6", "inet")
    bases = [
        c
        for c in chains.values()
        if c.get("hook") == "input"
        and c.get("family") in families
        and c.get("table") != OUR_TABLE
        and (before is None or _prio(c) < before)
    ]
    bases.sort(key=_prio)
    candidate: Found | None = None
    for base in bases:
        verdict, found = walker.chain(base, 0)
        candidate = candidate or walker.candidate
        if verdict == "drop":
            return found
    return candidate


def _objects(items: list[dict[str, Any]], kind: str) -> Iterator[dict[str, Any]]:
    for item in items:
        obj = item.get(kind)
        if isinstance(obj, dict):
            yield obj


def _prio(chain: Mapping[str, Any]) -> int:
    prio = chain.get("prio", 0)
    return prio if isinstance(prio, int) else 0


class _Walker:
    def __init__(
        self,
        packet: Packet,
        chains: Mapping[tuple[str, str, str], dict[str, Any]],
        rules: Mapping[tuple[str, str, str], list[dict[str, Any]]],
        sets: Mapping[tuple[str, str, str], dict[str, Any]],
    ) -> None:
        self.packet = packet
        self.chains = chains
        self.rules = rules
        self.sets = sets
        self.candidate: Found | None = None

    def chain(self, chain: Mapping[str, Any], depth: int) -> tuple[str, Found | None]:
        """``accept``, ``drop`` (with the rule) or ``return`` (end of a non-base chain)."""
        key = (str(chain.get("family")), str(chain.get("table")), str(chain.get("name")))
        for rule in self.rules.get(key, []):
            outcome = self.rule(rule, depth)
            if outcome is not None and outcome[0] == "return":
                break
            if outcome is not None:
                return outcome
        if chain.get("hook") and chain.get("policy") == "drop":
            return "drop", Found(*key, None, True)
        return ("accept" if chain.get("hook") else "return"), None

    def rule(self, rule: Mapping[str, Any], depth: int) -> tuple[str, Found | None] | None:
        """The rule's verdict when it certainly applies; None when it does not (or may not)."""
        certain = True
        for expr in rule.get("expr", []):
            if not isinstance(expr, dict):
                continue
            result = self.statement(expr, rule, depth, certain)
            if result is False:
                return None
            if result is None:
                certain = False
            elif isinstance(result, tuple):
                if not certain:  # it may not have applied: go on as if it did not
                    verdict, found = result
                    if verdict == "drop" and found is not None and self.candidate is None:
                        self.candidate = dataclasses.replace(found, certain=False)
                    return None
                return result
        return None

    def statement(
        self, expr: Mapping[str, Any], rule: Mapping[str, Any], depth: int, certain: bool
    ) -> bool | tuple[str, Found | None] | None:
        """True/False/None for a match; a verdict tuple for a verdict; True for anything else."""
        if "match" in expr:
            return self.match(expr["match"], (rule["family"], rule["table"]))
        found = Found(rule["family"], rule["table"], rule["chain"], rule.get("handle"), certain)
        if "accept" in expr:
            return "accept", None
        if "drop" in expr or "reject" in expr:
            return "drop", found
        if "return" in expr:
            return "return", None
        if "xt" in expr:
            return _xt(expr["xt"] or {}, found)
        for jump in ("jump", "goto"):
            if jump in expr and isinstance(expr[jump], dict):
                return self.jump(rule, expr[jump].get("target"), depth, goto=jump == "goto")
        if "limit" in expr or "quota" in expr:
            return None
        return True  # counter, log, meta set, ...: no effect on the verdict

    def jump(
        self, rule: Mapping[str, Any], target: Any, depth: int, *, goto: bool
    ) -> bool | tuple[str, Found | None] | None:
        """Walk the chain jumped to: its verdict, or on its end, go on (jump) or return (goto)."""
        chain = self.chains.get((rule["family"], rule["table"], target))
        if chain is None or depth >= MAX_DEPTH:
            return None
        verdict, inner = self.chain(chain, depth + 1)
        if verdict == "return":
            return ("return", None) if goto else True
        return verdict, inner

    def match(self, m: Mapping[str, Any], where: tuple[str, str]) -> bool | None:
        value = self.value(m.get("left"))
        if value is _UNKNOWN:
            return None
        op = m.get("op", "==")
        right = m.get("right")
        if isinstance(right, list) and op in ("in", "=="):  # flags: ct state established,related
            return any(self.equal(value, r, where) for r in right)
        result = self.equal(value, right, where)
        if result is None:
            return None
        if op in ("==", "in"):
            return result
        if op == "!=":
            return not result
        return None

    def value(self, left: Any) -> Any:
        p = self.packet
        if not isinstance(left, dict):
            return _UNKNOWN
        if "payload" in left:
            return self.payload(left["payload"])
        if "meta" in left:
            key = left["meta"].get("key")
            known = {"l4proto": "udp", "nfproto": "ipv4" if p.family == "ip" else "ipv6", "iifname": p.iifname}
            return known.get(key, _UNKNOWN) if key != "iifname" or p.iifname else _UNKNOWN
        if "ct" in left and left["ct"].get("key") == "state":
            return "new"
        return _UNKNOWN

    def payload(self, pl: Mapping[str, Any]) -> Any:
        p = self.packet
        proto, fld = pl.get("protocol"), pl.get("field")
        if proto in ("udp", "th") and fld == "dport":
            return p.dport
        if proto == "tcp":
            return _NEVER
        if proto in ("ip", "ip6"):
            if proto != p.family:
                return _NEVER
            if fld == "saddr":
                return p.saddr
            if fld == "daddr":
                return p.daddr if p.daddr else _UNKNOWN
            if fld in ("protocol", "nexthdr"):
                return "udp"
        return _UNKNOWN

    def equal(self, value: Any, right: Any, where: tuple[str, str]) -> bool | None:
        """Whether ``value`` is (in) ``right``; None when that cannot be told."""
        if value is _NEVER:
            return False
        if isinstance(right, dict):
            if "set" in right:
                return _any3(self.equal(value, r, where) for r in right["set"])
            if "prefix" in right:
                return _in_prefix(value, right["prefix"])
            if "range" in right and isinstance(right["range"], list) and len(right["range"]) == 2:
                return _in_range(value, *right["range"])
            return None
        if isinstance(right, str) and right.startswith("@"):
            named = self.sets.get((*where, right[1:]))
            if named is None:
                return None
            elements = (
                e.get("elem", {}).get("val") if isinstance(e, dict) and "elem" in e else e
                for e in named.get("elem", [])
            )
            return _any3(self.equal(value, e, where) for e in elements)
        if isinstance(value, int) and isinstance(right, int):
            return value == right
        if isinstance(value, str) and isinstance(right, str):
            return _same_address(value, right)
        return None


_UNKNOWN = object()
_NEVER = object()


def _xt(xt: Mapping[str, Any], found: Found) -> bool | tuple[str, Found | None] | None:
    """iptables-nft's compat expressions: REJECT/DROP targets drop; a comment never filters;
    other targets (LOG...) go on; other matches are unknown."""
    if xt.get("type") == "target" and xt.get("name") in DROP_XT:
        return "drop", found
    return True if xt.get("name") in NEUTRAL_XT or xt.get("type") == "target" else None


def _any3(results: Iterator[bool | None]) -> bool | None:
    seen_unknown = False
    for r in results:
        if r is True:
            return True
        if r is None:
            seen_unknown = True
    return None if seen_unknown else False


def _same_address(value: str, right: str) -> bool:
    try:
        return ip_address(value) == ip_address(right)
    except ValueError:
        return value == right


def _in_prefix(value: Any, prefix: Mapping[str, Any]) -> bool | None:
    try:
        return ip_address(value) in ip_network(f"{prefix['addr']}/{prefix['len']}", strict=False)
    except (ValueError, KeyError, TypeError):
        return None


def _in_range(value: Any, lo: Any, hi: Any) -> bool | None:
    if isinstance(value, int) and isinstance(lo, int) and isinstance(hi, int):
        return lo <= value <= hi
    try:
        return ip_address(lo) <= ip_address(value) <= ip_address(hi)  # type: ignore[operator]
    except (ValueError, TypeError):
        return None


# --- rule texts from ``nft -a list ruleset`` --------------------------------------------------

_TABLE_RE = re.compile(r"^table (\S+) (\S+) \{(?:\s*# handle \d+)?$")
_CHAIN_RE = re.compile(r"^\s*chain (\S+) \{(?:\s*# handle \d+)?$")
_HANDLE_RE = re.compile(r"^\s*(.*?)\s*# handle (\d+)$")
_BLOCK_RE = re.compile(r"^\s*(?:set|map|flowtable|counter|quota|limit|ct \S+|synproxy|secmark) \S+ \{")
_COUNTER_RE = re.compile(r"\s*counter packets \d+ bytes \d+")


def rule_texts(listing: str) -> dict[tuple[str, str, str, int], str]:
    """(family, table, chain, handle) -> the rule as nft prints it (counters left out)."""
    out: dict[tuple[str, str, str, int], str] = {}
    family = table = chain = ""
    for line in listing.splitlines():
        if m := _TABLE_RE.match(line.rstrip()):
            family, table, chain = m.group(1), m.group(2), ""
            continue
        if m := _CHAIN_RE.match(line.rstrip()):
            chain = m.group(1)
            continue
        if _BLOCK_RE.match(line):
            chain = ""  # a set, map, flowtable... of the table: no rules in it
            continue
        if chain and (m := _HANDLE_RE.match(line.rstrip())) and not m.group(1).endswith("{"):
            text = _COUNTER_RE.sub("", m.group(1)).strip()
            out[(family, table, chain, int(m.group(2)))] = " ".join(text.split())
    return out
