"""Naming the host firewall rule that drops a probe, over rulesets captured from nft and
iptables-nft (tests/unit/data/nft/README.md says how), plus hand-written edge cases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from wgagent.mesh import firewall as fw

DATA = Path(__file__).parent / "data" / "nft"
PROBE = fw.Packet("ip", "198.51.100.7", 51820, "eth0")


def load(name: str) -> tuple[dict[str, Any], dict[tuple[str, str, str, int], str]]:
    return json.loads((DATA / f"{name}.json").read_text()), fw.rule_texts((DATA / f"{name}.txt").read_text())


def name_of(ruleset: str, packet: fw.Packet = PROBE) -> str | None:
    doc, texts = load(ruleset)
    found = fw.find_drop(doc, packet, before=2_000_000_000)
    return None if found is None else found.describe(texts)


@pytest.mark.parametrize(
    ("ruleset", "packet", "expected"),
    [
        ("oracle-iptables-nft", PROBE, "ip filter INPUT: reject with icmp type host-prohibited (handle 10)"),
        ("nft-reject", PROBE, "inet filter input: udp dport 51820 reject with icmpx admin-prohibited (handle 7)"),
        ("nft-reject", fw.Packet("ip", "198.51.100.50", 51820, "eth0"), None),  # an admin source: accepted
        ("nft-reject", fw.Packet("ip", "198.51.100.7", 51821, "eth0"), None),  # another port
        ("nft-reject", fw.Packet("ip", "198.51.100.7", 51820, "lo"), None),
        ("firewalld-like", PROBE, "inet firewalld filter_INPUT: reject with icmpx admin-prohibited (handle 9)"),
        ("firewalld-like", fw.Packet("ip", "198.51.100.7", 51821, "eth0"), None),  # an allowed service port
        ("iptables-nft-source", PROBE, "ip filter INPUT: udp dport 51820 drop (handle 4)"),
        ("iptables-nft-source", fw.Packet("ip", "203.0.113.1", 51820, "eth0"), None),
        ("iptables-nft-source", fw.Packet("ip6", "2001:db8::7", 51820, "eth0"), None),  # an ip table: not IPv6
    ],
)
def test_the_rule_that_drops(ruleset: str, packet: fw.Packet, expected: str | None) -> None:
    assert name_of(ruleset, packet) == expected


def test_rule_texts_leave_counters_and_block_openers_out() -> None:
    texts = fw.rule_texts((DATA / "oracle-iptables-nft.txt").read_text())
    assert texts[("ip", "filter", "INPUT", 9)] == "meta l4proto tcp ct state new tcp dport 22 accept"
    assert not any(t.endswith("{") for t in texts.values())
    texts = fw.rule_texts((DATA / "nft-reject.txt").read_text())
    assert ("inet", "filter", "input", 2) not in texts  # the set admins' handle


def rs(*items: dict[str, Any]) -> dict[str, Any]:
    return {"nftables": list(items)}


def chain(
    name: str, *, hook: str | None = "input", prio: int = 0, policy: str = "accept", table: str = "t"
) -> dict[str, Any]:
    c: dict[str, Any] = {"family": "inet", "table": table, "name": name}
    if hook:
        c.update(hook=hook, type="filter", prio=prio, policy=policy)
    return {"chain": c}


def rule(chain_name: str, handle: int, *expr: dict[str, Any], table: str = "t") -> dict[str, Any]:
    return {"rule": {"family": "inet", "table": table, "chain": chain_name, "handle": handle, "expr": list(expr)}}


def match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


UDP_DPORT = {"payload": {"protocol": "udp", "field": "dport"}}
SADDR = {"payload": {"protocol": "ip", "field": "saddr"}}


def test_a_policy_drop_is_named() -> None:
    found = fw.find_drop(rs(chain("in", policy="drop"), rule("in", 2, match(UDP_DPORT, 22), {"accept": None})), PROBE)
    assert found == fw.Found("inet", "t", "in", None, True) and found.describe({}) == "inet t in: policy drop"


def test_a_drop_behind_an_unknown_match_is_only_probable() -> None:
    doc = rs(chain("in"), rule("in", 2, {"xt": {"type": "match", "name": "recent"}}, {"drop": None}))
    found = fw.find_drop(doc, PROBE)
    assert found is not None and not found.certain
    assert (
        found.describe({("inet", "t", "in", 2): "xt match recent drop"})
        == "inet t in: xt match recent drop (handle 2) (probably)"
    )


def test_a_certain_drop_wins_over_an_earlier_probable_one() -> None:
    doc = rs(chain("in"), rule("in", 2, {"limit": {"rate": 1}}, {"drop": None}), rule("in", 3, {"drop": None}))
    assert fw.find_drop(doc, PROBE) == fw.Found("inet", "t", "in", 3, True)


def test_an_accept_ends_one_base_chain_but_the_next_still_runs() -> None:
    ports = match(UDP_DPORT, {"range": [51000, 52000]})
    doc = rs(
        chain("a", prio=0), rule("a", 2, {"accept": None}),
        chain("b", prio=10, table="u"), rule("b", 3, ports, {"drop": None}, table="u"),
    )  # fmt: skip
    assert fw.find_drop(doc, PROBE) == fw.Found("inet", "u", "b", 3, True)


def test_chains_at_or_after_the_counting_chain_are_not_looked_at() -> None:
    doc = rs(chain("late", prio=2_000_000_000, table="x"), rule("late", 2, {"drop": None}, table="x"))
    assert fw.find_drop(doc, PROBE, before=2_000_000_000) is None


def test_wgagents_own_table_is_not_a_suspect() -> None:
    doc = rs(chain("input", table=fw.OUR_TABLE, prio=-5), rule("input", 2, {"drop": None}, table=fw.OUR_TABLE))
    assert fw.find_drop(doc, PROBE) is None


@pytest.mark.parametrize(
    ("right", "dropped"),
    [
        ({"prefix": {"addr": "198.51.100.0", "len": 24}}, True),
        ({"prefix": {"addr": "203.0.113.0", "len": 24}}, False),
        ({"set": ["203.0.113.9", {"prefix": {"addr": "198.51.0.0", "len": 16}}]}, True),
        ({"range": ["198.51.100.1", "198.51.100.9"]}, True),
        ("@blocked", True),
        ("@missing", None),
    ],
)
def test_source_matches(right: Any, dropped: bool | None) -> None:
    doc = rs(
        {"set": {"family": "inet", "table": "t", "name": "blocked", "type": "ipv4_addr", "elem": ["198.51.100.7"]}},
        chain("in"),
        rule("in", 2, match(SADDR, right), {"drop": None}),
    )
    found = fw.find_drop(doc, PROBE)
    # True: certainly this rule; False: no drop at all; None: the rule, probably (unknown set)
    expected = None if dropped is False else fw.Found("inet", "t", "in", 2, dropped is True)
    assert found == expected


def test_jump_and_return() -> None:
    doc = rs(
        chain("in"),
        rule("in", 2, {"jump": {"target": "sub"}}),
        rule("in", 3, match(UDP_DPORT, 51820, "!="), {"drop": None}),
        rule("in", 4, {"reject": None}),
        chain("sub", hook=None),
        rule("sub", 5, {"return": None}),
        rule("sub", 6, {"drop": None}),
    )
    assert fw.find_drop(doc, PROBE) == fw.Found("inet", "t", "in", 4, True)


def test_malformed_input_finds_nothing_and_does_not_raise() -> None:
    assert fw.find_drop({"nftables": [1, {"chain": "x"}, {"rule": {"expr": [None, {"match": {}}]}}]}, PROBE) is None
    assert fw.find_drop({}, PROBE) is None
