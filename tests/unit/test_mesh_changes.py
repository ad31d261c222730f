"""Mesh state changes -> Event records: this node's row and its own inbound problems."""

from __future__ import annotations

from wgagent.mesh import changes as ch
from wgagent.mesh import model as m
from wgagent.mesh.diagnose import Diagnosis, Pair, Problem

NOW = 1_800_000_000.0


def diag(*pairs: Pair, problems: tuple[Problem, ...] = ()) -> Diagnosis:
    return Diagnosis(NOW, ("a", "b", "c", "d", "e", "f"), {(p.src, p.dst): p for p in pairs}, problems)


def down(dst: str, cause: str = m.INBOUND_BLOCKED_UPSTREAM, node: str = "b", src: str = "a") -> Pair:
    return Pair(src, dst, "down", cause, node, f"fix {node}", NOW)


def records(before: Diagnosis | None, after: Diagnosis) -> list[tuple[str, str]]:
    prev = ch.row(before, "a") if before is not None else None
    return [(r.reason, r.message) for r in ch.changes("a", prev, ch.row(after, "a"))]


def test_nothing_changes_nothing_recorded() -> None:
    d = diag(down("b"))
    assert records(d, d) == []


def test_a_path_going_down_and_coming_back() -> None:
    assert records(diag(), diag(down("b"))) == [
        ("MeshPathDown", "a -> b: ok -> down (inbound-blocked-upstream); fix on b: fix b")
    ]
    assert records(diag(down("b")), diag()) == [("MeshPathRestored", "a -> b: down -> ok")]


def test_the_first_look_reports_what_is_already_wrong() -> None:
    assert [r for r, _ in records(None, diag(down("b")))] == ["MeshPathDown"]


def test_a_new_cause_is_a_new_record() -> None:
    assert [r for r, _ in records(diag(down("b")), diag(down("b", m.STALE_KEY, "a")))] == ["MeshPathDown"]


def test_cells_of_other_rows_are_not_ours_to_report() -> None:
    assert records(diag(), diag(down("c", src="b"))) == []


def test_many_alike_are_one_record() -> None:
    after = diag(*(down(x, node="a") for x in "bcdef"))
    assert records(diag(), after) == [
        ("MeshPathDown", "a -> b, c, d and 2 more: ok -> down (inbound-blocked-upstream); fix on a: fix a")
    ]


def test_inbound_problems_of_this_node() -> None:
    blocked = Problem("a", m.INBOUND_BLOCKED_HOST, "accept UDP 51820 before rule X", NOW)
    other = Problem("b", m.INBOUND_BLOCKED_HOST, "not ours", NOW)
    assert records(diag(problems=(other,)), diag(problems=(blocked, other))) == [
        ("InboundBlocked", "new flows to a do not get in (inbound-blocked-host): accept UDP 51820 before rule X")
    ]
    assert records(diag(problems=(blocked,)), diag()) == [
        ("InboundRestored", "new flows to a get in again (was inbound-blocked-host)")
    ]
