"""Tests for portrait.identity: identifier normalization and the pure, deterministic identity resolver."""

from __future__ import annotations

import itertools
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portrait.config import Settings
from portrait.identity import (
    ANONYMOUS,
    WHITESPACE,
    IdentityGraph,
    IdentityRules,
    Resolution,
    identity_hints,
    lower_as_sql,
)
from portrait.model import Identifier
from portrait.sql.processor import STAGE_IDENTIFIERS

RULES = IdentityRules.from_settings(Settings())
UNLIMITED = IdentityRules.from_settings(Settings(identity_limits={"user_id": 1000}, identity_default_limit=1000))


def ident(key: str) -> Identifier:
    kind, value = key.split(":", 1)
    return Identifier(kind, value)


def ordered(keys: Iterable[str], rules: IdentityRules = RULES) -> list[Identifier]:
    """An event's identifiers as the processor passes them: highest priority first."""
    return sorted((ident(k) for k in keys), key=lambda i: (rules.rank(i.type), i.value))


def id_factory(prefix: str = "p") -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter)}"


def keys_of(graph: IdentityGraph, profile_id: str) -> set[str]:
    return {i.key for i in graph.members[profile_id]}


# -- normalize ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "raw", "expected"), [
    ("email", "  Ann.Smith@Example.COM ", "ann.smith@example.com"),
    ("email", "bob@example.org", "bob@example.org"),
    ("email", "TEST@test.com", None),
    ("email", " test@example.com ", None),
    ("email", "not-an-email", None),
    ("email", "", None),
    ("email", "   ", None),
    ("user_id", " u-42 ", "u-42"),
    ("user_id", "CaseKept", "CaseKept"),
    ("user_id", 42, "42"),
    ("user_id", "null", None),
    ("user_id", "NULL", None),
    ("user_id", " Undefined ", None),
    ("user_id", "None", None),
    ("user_id", "0", None),
    ("user_id", 0, None),
    ("user_id", -1, None),
    ("user_id", None, None),
    ("user_id", True, None),
    ("user_id", {"id": 1}, None),
    ("user_id", ["u1"], None),
    (ANONYMOUS, "Unknown", None),
    (ANONYMOUS, "3f2a-99", "3f2a-99"),
    ("loyalty_card", " LC-001 ", "LC-001"),
    ("phone", "(415) 555-2671", "+14155552671"),
    ("phone", "415.555.2671", "+14155552671"),
    ("phone", "+1 415 555 2671", "+14155552671"),
    ("phone", "+48 512 345 678", "+48512345678"),
    ("phone", "+44 20 7946 0958", "+442079460958"),
    ("phone", "abc", None),
    ("phone", "12", None),
    ("phone", "", None),
    ("phone", "undefined", None),
])
def test_normalize(kind: str, raw: Any, expected: str | None) -> None:
    result = RULES.normalize(kind, raw)
    assert result == (None if expected is None else Identifier(kind, expected))


@pytest.mark.parametrize(("region", "raw", "expected"), [
    ("US", "(415) 555-2671", "+14155552671"),
    ("PL", "512 345 678", "+48512345678"),
    ("GB", "020 7946 0958", "+442079460958"),
    ("PL", "+1 415 555 2671", "+14155552671"),
])
def test_normalize_phone_uses_default_region(region: str, raw: str, expected: str) -> None:
    rules = IdentityRules.from_settings(Settings(default_phone_region=region))
    assert rules.normalize("phone", raw) == Identifier("phone", expected)


@pytest.mark.parametrize(("region", "raw"), [
    ("US", "555-1234"), ("US", "2530000"),  # no area code: possible only as a local call
    ("US", "123"), ("PL", "12"), ("US", "+1 415 555 26711234"),  # too short, too long
])
def test_numbers_that_cannot_name_one_line_are_not_phone_identifiers(region: str, raw: str) -> None:
    rules = IdentityRules.from_settings(Settings(default_phone_region=region))
    assert rules.normalize("phone", raw) is None


def test_blocked_values_are_case_and_space_insensitive() -> None:
    rules = IdentityRules.from_settings(Settings(blocked_values=(" Guest@Shop.COM ", "N/A")))
    assert rules.normalize("email", "guest@shop.com") is None
    assert rules.normalize("user_id", "n/a") is None
    assert rules.normalize("user_id", "null") == Identifier("user_id", "null")  # defaults replaced


def test_whitespace_for_sql_is_every_character_python_strips() -> None:
    """The processor's SQL trims userId and anonymousId with identity.WHITESPACE: it must be what str.strip()
    takes, which normalize, the identity hints and previousIds use."""
    assert "".join(ch for ch in map(chr, range(sys.maxunicode + 1)) if ch.isspace()) == WHITESPACE


def test_emails_are_lowered_as_the_processors_sql_lowers_them() -> None:
    """The processor lower-cases emails in SQL, lookups and erasures with lower_as_sql: the two agree on every
    character (checked against DuckDB, so that an upgrade of either side that changes one is noticed)."""
    characters = [chr(i) for i in range(sys.maxunicode + 1) if not 0xD800 <= i <= 0xDFFF]
    connection = duckdb.connect()
    connection.register("characters", pa.table({"c": characters}))
    lowered = [row[0] for row in connection.execute("SELECT lower(c) FROM characters").fetchall()]
    assert [c for c, low in zip(characters, lowered, strict=True) if lower_as_sql(c) != low] == []
    assert lower_as_sql("İPEK@Example.COM") == "ipek@example.com"


def _emails_by_the_processors_sql(raws: Sequence[str]) -> list[str | None]:
    """The email identifier the processor's SQL (STAGE_IDENTIFIERS) takes from each value sent as traits.email,
    stored in the log as ingestion stores it (identity_hints)."""
    connection = duckdb.connect()
    connection.execute("CREATE TABLE events (seq BIGINT, user_id VARCHAR, anonymous_id VARCHAR, "
                       "identity_hints VARCHAR)")
    hints = [identity_hints("identify", {"traits": {"email": raw}}, ()) for raw in raws]
    connection.register("sent", pa.table({"seq": list(range(1, len(raws) + 1)), "hints": hints}))
    connection.execute("INSERT INTO events SELECT seq, NULL, NULL, hints FROM sent")
    connection.execute(STAGE_IDENTIFIERS.sql("duckdb"), [0, len(raws), sorted(RULES.blocked)])
    found = dict(connection.execute("SELECT seq, value FROM b_ids_raw WHERE id_type = 'email'").fetchall())
    return [found.get(seq) for seq in range(1, len(raws) + 1)]


def _emails_by_python(raws: Sequence[str]) -> list[str | None]:
    """The email identifier Python's rules (lookups, static segments, erasures) take from each value."""
    return [ident.value if (ident := RULES.normalize("email", raw)) else None for raw in raws]


TRICKY_EMAILS = ["x@", "@x", "@", "@@", " x@ ", "\t@x", "x@\n", "@@@", "a@b@c", "a b@c.d", " Ann@B.c ", "a@b.",
                 "É@X", "x@\u0301", "\u0301@x", "a\u00a0@b", "x@\u200b", "a" * 300 + "@" + "b" * 5000, "TEST@test.com"]


def test_python_and_sql_take_the_same_emails() -> None:
    """One event gives the same email identity whichever way it is read: the processor's SQL refused "x@" and
    "@x" (no text on one side of the @) while lookups, static segments and erasures took them, so a static
    segment listed an "email" no profile could ever hold, and a lookup answered "no profile" instead of "not an
    identity"."""
    assert _emails_by_python(TRICKY_EMAILS) == _emails_by_the_processors_sql(TRICKY_EMAILS)
    assert _emails_by_python(["x@", "@x", " Ann@B.c "]) == [None, None, "ann@b.c"]


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.builds(lambda a, b: a + "@" + b, st.text(max_size=3), st.text(max_size=3)), min_size=1,
                max_size=20))
def test_python_and_sql_take_the_same_emails_generated(raws: list[str]) -> None:
    assert _emails_by_python(raws) == _emails_by_the_processors_sql(raws)


# -- rank -----------------------------------------------------------------------------------------------------------

def test_rank_orders_user_id_email_phone_custom_anonymous() -> None:
    kinds = [ANONYMOUS, "loyalty_card", "phone", "email", "crm_id", "user_id"]
    assert sorted(kinds, key=RULES.rank) == ["user_id", "email", "phone", "crm_id", "loyalty_card", ANONYMOUS]


def test_rank_follows_configured_priority() -> None:
    rules = IdentityRules.from_settings(Settings(identity_priority=("crm_id", "email")))
    kinds = [ANONYMOUS, "user_id", "email", "crm_id", "phone"]
    assert sorted(kinds, key=rules.rank) == ["crm_id", "email", "phone", "user_id", ANONYMOUS]


def test_limits_from_settings() -> None:
    assert (RULES.limit("user_id"), RULES.limit("email"), RULES.limit(ANONYMOUS), RULES.limit("crm_id")) == (1, 5, 5, 5)
    rules = IdentityRules.from_settings(Settings(identity_limits={"user_id": 1, "email": 2}, identity_default_limit=3))
    assert (rules.limit("email"), rules.limit("phone")) == (2, 3)


# -- resolve --------------------------------------------------------------------------------------------------------

def test_no_identifiers_resolve_to_nothing() -> None:
    graph = IdentityGraph(RULES)
    assert graph.resolve([], 1, id_factory()) == Resolution(profile_id=None)
    assert graph.owner == {} and graph.members == {}


def test_no_match_creates_a_profile() -> None:
    graph = IdentityGraph(RULES)
    res = graph.resolve(ordered(["user_id:u1", f"{ANONYMOUS}:d1"]), 7, id_factory())
    assert (res.profile_id, res.created, res.merged, res.dropped) == ("p1", True, [], [])
    assert res.attached == ordered(["user_id:u1", f"{ANONYMOUS}:d1"])
    assert graph.owner == {"user_id:u1": "p1", f"{ANONYMOUS}:d1": "p1"}
    assert graph.created == {"p1": 7}


def test_one_match_attaches_new_identifiers() -> None:
    graph = IdentityGraph(RULES)
    graph.add_profile("A", 1, ordered([f"{ANONYMOUS}:d1"]))
    new_id = id_factory()
    res = graph.resolve(ordered(["email:ann@x.com", f"{ANONYMOUS}:d1"]), 2, new_id)
    assert (res.profile_id, res.created, res.attached, res.merged) == ("A", False, [ident("email:ann@x.com")], [])
    assert keys_of(graph, "A") == {f"{ANONYMOUS}:d1", "email:ann@x.com"}
    assert graph.resolve(ordered(["email:ann@x.com"]), 3, new_id) == Resolution("A")  # nothing new
    assert new_id() == "p1"  # no id was spent


@pytest.mark.parametrize(("seq_a", "seq_b", "winner"), [(1, 2, "A"), (9, 3, "B"), (4, 4, "A")])
def test_two_profiles_merge_into_the_older(seq_a: int, seq_b: int, winner: str) -> None:
    graph = IdentityGraph(RULES)
    graph.add_profile("A", seq_a, ordered([f"{ANONYMOUS}:d1"]))
    graph.add_profile("B", seq_b, ordered(["email:b@x.com"]))
    loser = "B" if winner == "A" else "A"
    res = graph.resolve(ordered(["user_id:u1", "email:b@x.com", f"{ANONYMOUS}:d1"]), 10, id_factory())
    assert (res.profile_id, res.created, res.merged, res.attached) == (winner, False, [loser], [ident("user_id:u1")])
    assert graph.final(loser) == winner and graph.final(winner) == winner
    assert loser not in graph.members
    assert keys_of(graph, winner) == {"user_id:u1", "email:b@x.com", f"{ANONYMOUS}:d1"}
    assert set(graph.owner.values()) == {winner}


def test_merges_chain_through_final() -> None:
    graph = IdentityGraph(RULES)
    for profile_id, seq, key in [("C", 1, "email:c@x.com"), ("B", 2, "email:b@x.com"), ("A", 3, "email:a@x.com")]:
        graph.add_profile(profile_id, seq, [ident(key)])
    assert graph.resolve(ordered(["email:a@x.com", "email:b@x.com"]), 4, id_factory()).merged == ["A"]
    assert graph.resolve(ordered(["email:b@x.com", "email:c@x.com"]), 5, id_factory()).merged == ["B"]
    assert (graph.final("A"), graph.final("B"), graph.final("C")) == ("C", "C", "C")
    assert list(graph.members) == ["C"]


def test_three_profiles_merge_at_once() -> None:
    graph = IdentityGraph(RULES)
    graph.add_profile("A", 3, [ident("email:a@x.com")])
    graph.add_profile("B", 1, [ident("phone:+14155552671")])
    graph.add_profile("C", 2, [ident(f"{ANONYMOUS}:d")])
    res = graph.resolve(ordered(["email:a@x.com", "phone:+14155552671", f"{ANONYMOUS}:d"]), 4, id_factory())
    assert res.profile_id == "B" and sorted(res.merged) == ["A", "C"]
    assert {graph.final(p) for p in "ABC"} == {"B"}


def test_shared_device_is_not_merged_through() -> None:
    graph = IdentityGraph(RULES)
    new_id = id_factory()
    first = graph.resolve(ordered(["user_id:u1", f"{ANONYMOUS}:d"]), 1, new_id)
    second = graph.resolve(ordered(["user_id:u2", f"{ANONYMOUS}:d"]), 2, new_id)
    assert second.created and second.profile_id != first.profile_id
    assert second.dropped == [ident(f"{ANONYMOUS}:d")]
    assert (second.merged, second.attached) == ([], [ident("user_id:u2")])
    assert graph.owner == {"user_id:u1": first.profile_id, f"{ANONYMOUS}:d": first.profile_id,
                           "user_id:u2": second.profile_id}
    # the device alone still resolves to its first owner
    assert graph.resolve(ordered([f"{ANONYMOUS}:d"]), 3, new_id).profile_id == first.profile_id


def test_two_known_user_ids_never_merge() -> None:
    graph = IdentityGraph(RULES)
    graph.add_profile("A", 1, ordered(["user_id:u1"]))
    graph.add_profile("B", 2, ordered(["user_id:u2", "email:b@x.com"]))
    res = graph.resolve(ordered(["user_id:u1", "email:b@x.com"]), 3, id_factory())
    assert (res.profile_id, res.merged, res.dropped) == ("A", [], [ident("email:b@x.com")])
    assert graph.owner["email:b@x.com"] == "B"


def test_sixth_email_is_dropped() -> None:
    graph = IdentityGraph(RULES)
    graph.add_profile("A", 1, ordered(["user_id:u1", *(f"email:e{i}@x.com" for i in range(5))]))
    res = graph.resolve(ordered(["user_id:u1", "email:e5@x.com"]), 2, id_factory())
    assert (res.profile_id, res.attached, res.dropped) == ("A", [], [ident("email:e5@x.com")])
    assert "email:e5@x.com" not in graph.owner
    assert sum(i.type == "email" for i in graph.members["A"]) == 5


def test_lowest_priority_identifiers_are_dropped_first() -> None:
    graph = IdentityGraph(RULES)
    graph.add_profile("A", 1, ordered(["user_id:u1"]))
    graph.add_profile("B", 2, ordered(["user_id:u2", f"{ANONYMOUS}:d"]))
    res = graph.resolve(ordered(["user_id:u1", "email:new@x.com", f"{ANONYMOUS}:d"]), 3, id_factory())
    assert (res.profile_id, res.merged, res.dropped) == ("A", [], [ident(f"{ANONYMOUS}:d")])
    assert keys_of(graph, "A") == {"user_id:u1", "email:new@x.com"}


def test_only_the_identifiers_that_break_a_limit_are_dropped() -> None:
    # docs/concepts.md: identifiers are taken in priority order and each kept if the profile still fits the limits
    # with it. A conflict on a high-priority one (a second user_id) drops that one, not the harmless ones below it.
    graph = IdentityGraph(RULES)
    graph.add_profile("A", 1, ordered(["user_id:u1"]))
    event = ordered(["user_id:u1", "user_id:u2", "email:new@x.com", "loyalty_card:L1", f"{ANONYMOUS}:d"])
    res = graph.resolve(event, 2, id_factory())
    assert res.profile_id == "A"
    assert res.dropped == [ident("user_id:u2")]
    assert keys_of(graph, "A") == {"user_id:u1", "email:new@x.com", "loyalty_card:L1", f"{ANONYMOUS}:d"}


def test_a_customer_keeps_his_own_device_when_a_shared_email_is_dropped() -> None:
    """Bob logs in on his phone (its anonymous history is his) with the family email, which is Alice's: only the
    email, which would merge him into Alice, is dropped; his phone's history joins him."""
    graph = IdentityGraph(RULES)
    graph.add_profile("alice", 1, ordered(["user_id:alice", "email:family@x.com"]))
    graph.add_profile("phone", 2, ordered([f"{ANONYMOUS}:bobphone"]))
    res = graph.resolve(ordered(["user_id:bob", "email:family@x.com", "phone:+12125550199",
                                 f"{ANONYMOUS}:bobphone"]), 3, id_factory())
    assert (res.profile_id, res.dropped) == ("phone", [ident("email:family@x.com")])
    assert keys_of(graph, "phone") == {"user_id:bob", "phone:+12125550199", f"{ANONYMOUS}:bobphone"}
    assert keys_of(graph, "alice") == {"user_id:alice", "email:family@x.com"}


def test_custom_limit_for_anonymous_ids() -> None:
    rules = IdentityRules.from_settings(Settings(identity_limits={"user_id": 1, ANONYMOUS: 2}))
    graph = IdentityGraph(rules)
    new_id = id_factory()
    for seq, device in enumerate(["d1", "d2", "d3"]):
        graph.resolve(ordered(["user_id:u1", f"{ANONYMOUS}:{device}"], rules), seq, new_id)
    assert keys_of(graph, "p1") == {"user_id:u1", f"{ANONYMOUS}:d1", f"{ANONYMOUS}:d2"}


# -- properties -----------------------------------------------------------------------------------------------------

def run(rules: IdentityRules, events: Sequence[Iterable[str]],
        check: Callable[[IdentityGraph, dict[str, str], list[Identifier], Resolution, int], None] | None = None,
        ) -> IdentityGraph:
    graph = IdentityGraph(rules)
    new_id = id_factory()
    for seq, keys in enumerate(events, start=1):
        identifiers = ordered(keys, rules)
        before = dict(graph.owner)
        resolution = graph.resolve(identifiers, seq, new_id)
        if check is not None:
            check(graph, before, identifiers, resolution, seq)
    return graph


def partition(graph: IdentityGraph) -> set[frozenset[str]]:
    return {frozenset(i.key for i in members) for members in graph.members.values()}


def components(events: Iterable[Iterable[str]]) -> set[frozenset[str]]:
    """Connected components of the graph where identifiers that appear in the same event are linked."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    for keys in events:
        linked = sorted(keys)
        if not linked:  # an event with no identifier links nothing
            continue
        first, *rest = linked
        for key in rest:
            parent[find(key)] = find(first)
        find(first)
    groups: dict[str, set[str]] = {}
    for key in parent:
        groups.setdefault(find(key), set()).add(key)
    return {frozenset(group) for group in groups.values()}


SMALL_POOL = ([f"user_id:u{i}" for i in range(4)] + [f"email:e{i}@x.com" for i in range(4)]
              + [f"{ANONYMOUS}:a{i}" for i in range(4)] + [f"loyalty_card:c{i}" for i in range(3)])
EVENTS = st.lists(st.frozensets(st.sampled_from(SMALL_POOL), min_size=1, max_size=4), max_size=14)


@settings(max_examples=200, deadline=None)
@given(events=EVENTS, data=st.data())
def test_grouping_is_order_independent_without_limits(events: list[frozenset[str]], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(events))
    in_order = partition(run(UNLIMITED, events))
    assert partition(run(UNLIMITED, shuffled)) == in_order
    assert in_order == components(events)


CONFLICT_POOL = ([f"user_id:u{i}" for i in range(3)] + [f"email:e{i}@x.com" for i in range(7)]
                 + [f"{ANONYMOUS}:a{i}" for i in range(3)] + ["phone:+14155552671", "phone:+48512345678"])


def check_invariants(graph: IdentityGraph, before: dict[str, str], identifiers: list[Identifier], res: Resolution,
                     seq: int) -> None:
    live = set(graph.members)
    # limits hold for every profile
    for members in graph.members.values():
        assert len(members) == len(set(members))
        for kind, count in Counter(i.type for i in members).items():
            assert count <= graph.rules.limit(kind)
    # owner and members agree; every identifier has exactly one live owner
    assert {i.key: p for p, members in graph.members.items() for i in members} == graph.owner
    assert sum(len(m) for m in graph.members.values()) == len(graph.owner)
    assert set(graph.owner.values()) <= live
    assert live.isdisjoint(graph.merged_into)
    assert all(graph.final(p) in live for p in graph.created)
    # this event: the highest-priority identifier is kept; the dropped ones are listed lowest priority first; the
    # rest now live in the event's profile
    assert res.profile_id in live
    assert identifiers[0] not in res.dropped
    assert res.dropped == [i for i in identifiers if i in res.dropped][::-1]
    kept = [i for i in identifiers if i not in res.dropped]
    assert kept and all(graph.owner[i.key] == res.profile_id for i in kept)
    # a dropped identifier stays where it was (possibly nowhere); it never moves
    assert all(graph.final(before[i.key]) == graph.owner[i.key] if i.key in before else i.key not in graph.owner
               for i in res.dropped)
    # identifiers owned before the event still are, by the final form of their old profile
    assert all(graph.owner[key] == graph.final(owner) for key, owner in before.items())
    assert all(graph.final(loser) == res.profile_id for loser in res.merged)
    assert all(graph.created[loser] >= graph.created[res.profile_id] for loser in res.merged)
    assert not res.created or graph.created[res.profile_id] == seq


@settings(max_examples=200, deadline=None)
@given(events=st.lists(st.frozensets(st.sampled_from(CONFLICT_POOL), min_size=1, max_size=4), max_size=25))
def test_default_limits_are_never_exceeded(events: list[frozenset[str]]) -> None:
    graph = run(RULES, events, check_invariants)
    seen = {key for keys in events for key in keys}
    assert set(graph.owner) <= seen


def test_the_processors_trim_is_pythons_strip_for_every_kind_of_edge() -> None:
    """sql.processor.trimmed takes a fast path for ids that begin and end with printable ASCII once spaces are
    gone; every other edge goes through the whole set: the result must be str.strip()'s either way."""
    import duckdb
    from sqlglot import select

    from portrait.sql.processor import trimmed

    samples = ["u1", " u1 ", "", " ", "é", " é ", "x\u00e9", "\u3000日本\u3000", "a b", "~", "!x!"]
    samples += [edge for w in WHITESPACE for edge in (f"{w}ab{w}", f" {w} ab {w} ", f"{w}", f"a{w}", f"{w}é")]
    connection = duckdb.connect()
    connection.register("samples", pa.table({"v": samples}))
    found = connection.execute(select("v", trimmed("v")).from_("samples").sql("duckdb")).fetchall()
    assert len(found) == len(samples) and all(got == value.strip() for value, got in found), [
        (value, got) for value, got in found if got != value.strip()]
