"""decide(), rejection(), stun_ports_differ(), adopt() and load_adoption(): named cases."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import ip_address

import pytest

from wgagent.model import PublicAddresses
from wgagent.publicip.decide import adopt, decide, load_adoption, rejection, stun_ports_differ
from wgagent.publicip.model import Adoption, Decision, Observation


def ob(
    source: str,
    ip: str | None = None,
    *,
    server: str | None = None,
    port: int | None = None,
    local_port: int | None = None,
    note: str = "",
    error: str | None = None,
) -> Observation:
    """An observation; the kind is the source name's prefix ("stun:a" -> stun, "http:b" -> http)."""
    kind = source.split(":")[0]
    return Observation(
        source,
        kind,
        0.01,
        ip=ip_address(ip) if ip else None,
        error=error,
        server=ip_address(server) if server else None,
        port=port,
        local_port=local_port,
        note=note,
    )


@dataclass(frozen=True)
class Case:
    observations: list[Observation]
    ipv4: str | None
    ipv6: str | None = None
    method4: str | None = None
    method6: str | None = None
    quorum: int = 2
    outcomes: dict[str, str] = field(default_factory=dict)
    """source -> expected verdict outcome."""
    reason_has: tuple[str, ...] = ()
    reason_lacks: tuple[str, ...] = ()
    verdict_reasons: dict[str, str] = field(default_factory=dict)
    """source -> text its (IPv4) verdict's reason contains."""


X, Y, Z = "203.0.113.1", "203.0.113.2", "198.51.100.66"
V6 = "2001:db8:5::7"

CASES = {
    "static wins over every other source": Case(
        [ob("static", "198.51.100.5"), ob("metadata:aws", X), ob("stun:a", Y), ob("stun:b", Y)],
        "198.51.100.5",
        method4="static",
        outcomes={"static": "agrees", "metadata:aws": "differs", "stun:a": "differs"},
        reason_has=("pinned by public_ip.static",),
    ),
    "static is the operator's word even when private": Case([ob("static", "10.0.0.5")], "10.0.0.5", method4="static"),
    "metadata alone is authoritative": Case([ob("metadata:aws", X)], X, method4="metadata"),
    "metadata beats a STUN/HTTP quorum": Case(
        [ob("metadata:gcp", X), ob("stun:a", Y), ob("stun:b", Y), ob("http:c", Y)],
        X,
        method4="metadata",
        outcomes={"metadata:gcp": "agrees", "stun:a": "differs"},
    ),
    "a private metadata answer is rejected and the quorum decides": Case(
        [ob("metadata:aws", "10.1.2.3"), ob("stun:a", Y), ob("http:b", Y)],
        Y,
        method4="quorum",
        outcomes={"metadata:aws": "rejected", "stun:a": "agrees", "http:b": "agrees"},
    ),
    "two agreeing sources make the default quorum": Case(
        [ob("stun:a", X), ob("http:b", X)], X, method4="quorum", reason_has=("2 of 2",)
    ),
    "one source is not a quorum of two": Case(
        [ob("stun:a", X)], None, outcomes={"stun:a": "undecided"}, reason_has=("only 1 STUN/HTTP source",)
    ),
    "quorum 1 takes a single answer": Case([ob("stun:a", X)], X, method4="quorum", quorum=1),
    "a lying echo is outvoted": Case(
        [ob("stun:a", X), ob("stun:b", X), ob("http:liar", Z)],
        X,
        method4="quorum",
        outcomes={"http:liar": "differs", "stun:a": "agrees"},
        reason_has=("2 of 3",),
    ),
    "a tie at the quorum decides nothing": Case(
        [ob("stun:a", X), ob("stun:b", X), ob("http:c", Y), ob("http:d", Y)],
        None,
        outcomes={"stun:a": "undecided", "http:c": "undecided"},
        reason_has=("disagree",),
    ),
    "two URLs on one server address are one witness": Case(
        [ob("http:a", X, server="198.51.100.9"), ob("http:b", X, server="198.51.100.9")],
        None,
        reason_has=("only 1",),
    ),
    "the same answer from two server addresses is two witnesses": Case(
        [ob("http:a", X, server="198.51.100.9"), ob("http:b", X, server="198.51.100.10")], X, method4="quorum"
    ),
    "an answer equal to the server's own address is rejected": Case(
        [ob("http:a", X, server=X), ob("stun:b", X)],
        None,
        outcomes={"http:a": "rejected"},
    ),
    "an interface address is used when STUN/HTTP reach no quorum": Case(
        [ob("interface", "198.51.100.7", note="eth0"), ob("stun:a", Y)],
        "198.51.100.7",
        method4="interface",
        outcomes={"stun:a": "differs"},
        reason_has=("on interface eth0",),
    ),
    "a STUN/HTTP quorum beats an interface address": Case(
        [ob("interface", "198.51.100.7", note="eth0"), ob("stun:a", Y), ob("http:b", Y)],
        Y,
        method4="quorum",
        outcomes={"interface": "differs"},
    ),
    "IPv4 and IPv6 are decided separately": Case(
        [ob("stun:a", X), ob("http:b", X), ob("stun:a", V6), ob("interface", V6, note="eth0")],
        X,
        V6,
        method4="quorum",
        method6="interface",
    ),
    "an IPv6 quorum while IPv4 stays undecided": Case(
        [ob("stun:a", V6), ob("http:b", V6), ob("stun:a", X)], None, V6, method6="quorum"
    ),
    "CGNAT and private answers leave nothing to decide": Case(
        [ob("http:a", "100.64.1.2"), ob("http:b", "10.0.0.1")],
        None,
        outcomes={"http:a": "rejected", "http:b": "rejected"},
        reason_has=("every answer was rejected",),
    ),
    "errors and not-applicable sources are ignored": Case(
        [
            ob("stun:a", X),
            ob("http:b", X),
            ob("http:c", error="no answer within 5 s"),
            Observation("metadata", "metadata", 0.0, applicable=False),
        ],
        X,
        method4="quorum",
    ),
    "nothing answered": Case([], None, reason_has=("no source answered an IPv4 address",)),
    "an interface address alone decides, with no word on a quorum": Case(
        [ob("interface", "198.51.100.7", note="eth0")],
        "198.51.100.7",
        method4="interface",
        outcomes={"interface": "agrees"},
        reason_has=("ipv4 198.51.100.7 (on interface eth0)",),
        reason_lacks=("quorum",),
        verdict_reasons={"interface": "agrees with the interface address"},
    ),
    "an interface address without a name is reported as '?'": Case(
        [ob("interface", "198.51.100.7")], "198.51.100.7", method4="interface", reason_has=("on interface ?",)
    ),
    "a rejected answer beside an unconfirmed one reports the missing quorum": Case(
        [ob("http:a", "10.0.0.1"), ob("stun:b", X)],
        None,
        outcomes={"http:a": "rejected", "stun:b": "undecided"},
        reason_has=("only 1 STUN/HTTP source answered 203.0.113.1",),
        reason_lacks=("every answer was rejected",),
    ),
    "a tie below the top does not stop the quorum": Case(
        [ob("stun:a", X), ob("stun:b", X), ob("stun:c", X), ob("http:d", Y), ob("http:e", Z)],
        X,
        method4="quorum",
        outcomes={"http:d": "differs", "http:e": "differs"},
        reason_has=("3 of 5",),
    ),
    "each method's agreeing verdict says which rule chose": Case(
        [ob("metadata:aws", X), ob("stun:a", X)],
        X,
        method4="metadata",
        reason_has=("the cloud's metadata, metadata:aws",),
        verdict_reasons={"metadata:aws": "agrees with the cloud's metadata", "stun:a": "agrees with the cloud's"},
    ),
    "a differing verdict names the chosen address and method": Case(
        [ob("static", X), ob("stun:a", Y)],
        X,
        method4="static",
        verdict_reasons={"static": "agrees with public_ip.static", "stun:a": f"the chosen address is {X} (static)"},
    ),
    "a quorum member's verdict says so": Case(
        [ob("stun:a", X), ob("stun:b", X)], X, method4="quorum", verdict_reasons={"stun:a": "part of the quorum"}
    ),
    "an undecided verdict carries the family's reason": Case(
        [ob("stun:a", X)], None, verdict_reasons={"stun:a": "only 1 STUN/HTTP source answered 203.0.113.1"}
    ),
    "a rejected verdict names the class": Case([ob("http:a", "100.64.1.2")], None, verdict_reasons={"http:a": "CGNAT"}),
    "IPv6 with no answer says so while IPv4 decides": Case(
        [ob("stun:a", X), ob("stun:b", X)],
        X,
        method4="quorum",
        reason_has=("ipv6 undecided (no source answered an IPv6 address)",),
    ),
    "every IPv6 answer rejected names the first": Case(
        [ob("stun:a", "fd00::1"), ob("stun:b", "fe80::1")],
        None,
        reason_has=("ipv6 undecided (every answer was rejected: fd00::1 from stun:a, private address (ULA))",),
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_decide(case: Case) -> None:
    d = decide(case.observations, quorum=case.quorum)
    assert (str(d.ipv4) if d.ipv4 else None, str(d.ipv6) if d.ipv6 else None) == (case.ipv4, case.ipv6)
    assert (d.method4, d.method6) == (case.method4, case.method6)
    # A source answering both families has two verdicts: the IPv4 one is checked.
    outcomes = {v.source: v.outcome for v in sorted(d.verdicts, key=lambda v: -v.ip.version)}
    for source, outcome in case.outcomes.items():
        assert outcomes[source] == outcome, (source, d.verdicts)
    for text in case.reason_has:
        assert text in d.reason
    for text in case.reason_lacks:
        assert text not in d.reason
    reasons = {v.source: v.reason for v in sorted(d.verdicts, key=lambda v: -v.ip.version)}
    for source, text in case.verdict_reasons.items():
        assert text in reasons[source], (source, d.verdicts)
    assert "\n" not in d.reason
    assert d.decided == (case.ipv4 is not None or case.ipv6 is not None)


def test_every_observed_address_gets_a_verdict_with_a_reason() -> None:
    observations = [ob("stun:a", X), ob("stun:b", X), ob("http:c", Z), ob("http:d", "10.0.0.1"), ob("stun:a", V6)]
    d = decide(observations, quorum=2)
    assert [(v.source, str(v.ip)) for v in d.verdicts] == [
        ("stun:a", X),
        ("stun:b", X),
        ("http:c", Z),
        ("http:d", "10.0.0.1"),
        ("stun:a", V6),
    ]
    assert all(v.reason for v in d.verdicts)
    data = d.to_json()
    assert [a["source"] for a in data["agreed"]] == ["stun:a", "stun:b"]
    assert {a["source"]: a["outcome"] for a in data["disagreed"]} == {
        "http:c": "differs",
        "http:d": "rejected",
        "stun:a": "undecided",
    }


REJECTED = {
    "RFC 1918 10/8": ("10.20.30.40", "private"),
    "RFC 1918 172.16/12": ("172.31.255.1", "private"),
    "RFC 1918 192.168/16": ("192.168.1.1", "private"),
    "CGNAT 100.64/10": ("100.64.0.1", "CGNAT"),
    "CGNAT upper end": ("100.127.255.254", "CGNAT"),
    "loopback": ("127.0.0.2", "loopback"),
    "link-local": ("169.254.169.254", "link-local"),
    "multicast": ("224.0.0.251", "multicast"),
    "unspecified": ("0.0.0.0", "unspecified"),
    "this network": ("0.1.2.3", "reserved"),
    "class E": ("240.0.0.1", "reserved"),
    "broadcast": ("255.255.255.255", "reserved"),
    "benchmarking": ("198.18.0.1", "reserved"),
    "IPv6 ULA": ("fd00::1", "ULA"),
    "IPv6 link-local": ("fe80::1", "link-local"),
    "IPv6 loopback": ("::1", "loopback"),
    "IPv6 unspecified": ("::", "unspecified"),
    "IPv6 multicast": ("ff02::1", "multicast"),
    "IPv4-mapped IPv6": ("::ffff:203.0.113.1", "IPv4-mapped"),
    "IPv6 outside 2000::/3": ("4000::1", "reserved"),
}


@pytest.mark.parametrize(("ip", "why"), REJECTED.values(), ids=REJECTED.keys())
def test_rejection_names_the_class(ip: str, why: str) -> None:
    reason = rejection(ip_address(ip))
    assert reason is not None and why in reason


ACCEPTED = {
    "public IPv4": "8.8.8.8",
    "just below CGNAT": "100.63.255.255",
    "just above CGNAT": "100.128.0.0",
    "just above 172.16/12": "172.32.0.1",
    "test net 2 (lab public)": "198.51.100.7",
    "test net 3 (lab public)": "203.0.113.1",
    "global IPv6": "2606:4700::1",
    "documentation IPv6 (lab public)": "2001:db8::1",
}


@pytest.mark.parametrize("ip", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_rejection_accepts_public_addresses(ip: str) -> None:
    assert rejection(ip_address(ip)) is None


PORTS = {
    "same mapped port from one socket: a friendly NAT": (
        [ob("stun:a", X, port=40000, local_port=5000), ob("stun:b", X, port=40000, local_port=5000)],
        False,
    ),
    "different mapped ports from one socket: a symmetric NAT": (
        [ob("stun:a", X, port=40000, local_port=5000), ob("stun:b", X, port=40001, local_port=5000)],
        True,
    ),
    "one server cannot tell": ([ob("stun:a", X, port=40000, local_port=5000)], None),
    "different local sockets are not compared": (
        [ob("stun:a", X, port=40000, local_port=5000), ob("stun:b", X, port=40001, local_port=5001)],
        None,
    ),
    "HTTP answers carry no port": ([ob("http:a", X), ob("http:b", X)], None),
}


@pytest.mark.parametrize(("observations", "expected"), PORTS.values(), ids=PORTS.keys())
def test_stun_ports_differ(observations: list[Observation], expected: bool | None) -> None:
    assert stun_ports_differ(observations) is expected
    assert decide(observations, quorum=2).stun_ports_differ is expected


# --- adoption ----------------------------------------------------------------------------------


def dec(ipv4: str | None, ipv6: str | None = None, method: str = "quorum") -> Decision:
    v4 = ip_address(ipv4) if ipv4 else None
    v6 = ip_address(ipv6) if ipv6 else None
    return Decision(v4, v6, method if v4 else None, method if v6 else None, "test")  # type: ignore[arg-type]


def addrs(ipv4: str | None, ipv6: str | None = None) -> PublicAddresses:
    return PublicAddresses(ip_address(ipv4) if ipv4 else None, ip_address(ipv6) if ipv6 else None)  # type: ignore[arg-type]


def run(start: Adoption, decisions: list[Decision], confirmations: int = 2) -> list[Adoption]:
    out, a = [], start
    for now, d in enumerate(decisions, start=100):
        a = adopt(a, d, float(now), confirmations=confirmations)
        out.append(a)
    return out


ADOPTED_X = Adoption(adopted=addrs(X), since=1.0)

ADOPT = {
    "the first decision ever is adopted at once": (Adoption(), [dec(X)], 2, [X]),
    "the same address again changes nothing": (ADOPTED_X, [dec(X), dec(X)], 2, [X, X]),
    "a new address needs two rounds in a row": (ADOPTED_X, [dec(Y), dec(Y)], 2, [X, Y]),
    "one flipped round does not flip the node": (ADOPTED_X, [dec(Y), dec(X), dec(Y), dec(X)], 2, [X, X, X, X]),
    "alternating candidates never win": (ADOPTED_X, [dec(Y), dec(Z), dec(Y), dec(Z)], 2, [X, X, X, X]),
    "an undecided round breaks the streak and keeps the address": (
        ADOPTED_X,
        [dec(Y), dec(None), dec(Y), dec(Y)],
        2,
        [X, X, X, Y],
    ),
    "three confirmations need three rounds": (ADOPTED_X, [dec(Y), dec(Y), dec(Y)], 3, [X, X, Y]),
    "confirmations 1 adopts at once": (ADOPTED_X, [dec(Y)], 1, [Y]),
    "a static pin is adopted at once": (ADOPTED_X, [dec(Y, method="static")], 2, [Y]),
}


@pytest.mark.parametrize(("start", "decisions", "confirmations", "adopted"), ADOPT.values(), ids=ADOPT.keys())
def test_adopt(start: Adoption, decisions: list[Decision], confirmations: int, adopted: list[str]) -> None:
    steps = run(start, decisions, confirmations=confirmations)
    assert [str(s.adopted.ipv4) if s.adopted else None for s in steps] == adopted


def test_adoption_records_when_and_what_waits() -> None:
    first, second = run(ADOPTED_X, [dec(Y), dec(Y)])
    assert first.adopted == addrs(X) and first.since == 1.0
    assert first.candidate == addrs(Y) and first.rounds == 1
    assert second.adopted == addrs(Y) and second.since == 101.0
    assert second.candidate is None and second.rounds == 0


def test_an_undecided_family_keeps_its_adopted_address() -> None:
    start = Adoption(adopted=addrs(X, V6), since=1.0)
    (after,) = run(start, [dec(X, None)])
    assert after == start  # v6 unanswered this round: still the adopted v6, nothing pending


def test_a_new_family_needs_confirmation_like_any_change() -> None:
    first, second = run(ADOPTED_X, [dec(X, V6), dec(X, V6)])
    assert first.adopted == addrs(X) and first.candidate == addrs(X, V6)
    assert second.adopted == addrs(X, V6)


def test_a_static_pin_is_exact_and_drops_an_unpinned_family() -> None:
    start = Adoption(adopted=addrs(X, V6), since=1.0)
    (after,) = run(start, [dec(Y, method="static")])
    assert after.adopted == addrs(Y)


def test_persisted_form_round_trips() -> None:
    a = Adoption(adopted=addrs(X, V6), since=12.5)
    data = a.to_json()
    assert data == {"ipv4": X, "ipv6": V6, "since": 12.5}
    assert load_adoption(data) == a
    assert Adoption().to_json() is None


BAD_STATE = {
    "not an object": ["203.0.113.1"],
    "no address": {"ipv4": None, "ipv6": None, "since": 1},
    "not an address": {"ipv4": "two-oh-three", "since": 1},
    "IPv6 under ipv4": {"ipv4": V6},
    "IPv4 under ipv6": {"ipv6": X},
    "a number for an address": {"ipv4": 3405803777},
}


@pytest.mark.parametrize("data", BAD_STATE.values(), ids=BAD_STATE.keys())
def test_invalid_persisted_state_is_refused(data: object) -> None:
    assert load_adoption(data) is None


def test_a_bad_since_is_dropped_not_fatal() -> None:
    loaded = load_adoption({"ipv4": X, "since": "yesterday"})
    assert loaded is not None and loaded.adopted == addrs(X) and loaded.since is None
