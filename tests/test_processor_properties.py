"""Property tests of the processor on the real store: whatever the micro-batches, the paths events take, a rebuild
or a crash between batches, the derived state is the one the log determines (docs/concepts.md).

Each example ingests one generated log into a fresh database, then copies that file once per way of processing it
(copying a closed DuckDB file costs a few ms, creating and migrating one half a second), so every way starts from
the same log, sequence numbers included. The generators draw from few values, so that identifiers collide, profiles
merge (and merge again), limits are reached, and trait updates tie on time.

The example counts keep the file at some 30 s; each property also passed 40 to 150 examples when it was written.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlglot import select
from tests.test_identity import components

from portrait.config import Settings
from portrait.identity import IdentityGraph, IdentityRules
from portrait.model import Identifier
from portrait.pipeline import profile_id_for
from portrait.service import Portrait
from portrait.sql import parse

# Every table the processor derives, with the columns that do not hold the time of processing itself. A part of an
# object trait removed ({"address": null}) is left out when it is NULL: a removal knows the parts named anywhere in
# its batch, so one batch keeps a NULL row for a part that, batch by batch, is simply never set (the older value
# is left out either way); every read takes a NULL value for a missing trait.
DERIVED = {
    "profiles": "SELECT profile_id, created_seq FROM profiles",
    "identities": "SELECT * FROM identities",
    "profile_traits": "SELECT * FROM profile_traits "
                      "WHERE value IS NOT NULL OR key NOT IN (SELECT code FROM trait_parents)",
    "event_profiles": "SELECT * FROM event_profiles",
    "profile_aliases": "SELECT * FROM profile_aliases",
    "merges": "SELECT profile_id, merged_id, seq, message_id, identifiers, merged_at FROM merges",
    "identity_conflicts": "SELECT seq, message_id, profile_id, dropped FROM identity_conflicts",
    "data_quality": "SELECT profile_id, attribute, raw_value, reason, seq, message_id, source FROM data_quality",
    "consent_records": "SELECT * FROM consent_records",
    "profile_activity": "SELECT * FROM profile_activity",
    "rejected_events": "SELECT code, reason, source, message_id, payload FROM rejected_events",
    "processor_state": "SELECT * FROM processor_state",
    "attributes": "SELECT code, type, is_personal_info, auto_created FROM attributes",
    "trait_parents": "SELECT * FROM trait_parents",
}

TIMES = st.sampled_from(["2026-03-01T10:00:00Z", "2026-03-01T11:00:00Z", "2026-03-02T09:30:00Z",
                         "2026-02-27T08:00:00Z"])
USER_IDS = st.sampled_from([None, "u1", "u2", "u3", " u1 ", "u2\t", "null"])  # whitespace is trimmed; null blocked
ANONYMOUS_IDS = st.sampled_from([None, "a1", "a2", "a3", "a4", "a1\n", "undefined"])
EMAILS = st.sampled_from(["ann@example.com", " ANN@Example.com", "bob@example.com", "İPEK@example.com",
                          "test@test.com", "not-an-email"])
PHONES = st.sampled_from(["+14155552671", "(415) 555-2671", "+1 415 555 2672", "555-1234"])
CARDS = st.sampled_from(["L1", "L2", "L3"])
CARD_NAMES = st.sampled_from(["loyalty_card", "loyaltyCard", "LoyaltyCard"])
EXTERNAL_IDS = st.lists(st.fixed_dictionaries({"type": st.sampled_from(["crm_id", "CRM_ID", "shop_id"]),
                                               "id": st.sampled_from(["c1", "c2", "c3"])}), max_size=2)


# Attributes with each merge strategy but latest (defined in the template), and values to send them.
STRATEGIES = {"first_source": ("string", "earliest"), "best_order": ("number", "max"),
              "lowest_price": ("number", "min"), "points": ("integer", "sum"), "tags": ("list", "union")}
STRATEGY_VALUES: dict[str, list[Any]] = {"first_source": ["web", "app", None], "best_order": [10, 25.5, None],
                                         "lowest_price": [3, 1.5, None], "points": [1, 5, None],
                                         "tags": [["a"], ["b", "a"], None]}


@st.composite
def identifying_traits(draw: st.DrawFn) -> dict[str, Any]:
    """Traits that identify (email, phone, a configured identity trait) as an identify or a context sends them."""
    traits: dict[str, Any] = {}
    if draw(st.booleans()):
        traits["email"] = draw(EMAILS)
    if draw(st.integers(0, 3)) == 0:
        traits["phone"] = draw(PHONES)
    if draw(st.integers(0, 3)) == 0:
        traits[draw(CARD_NAMES)] = draw(CARDS)
    return traits


@st.composite
def plain_traits(draw: st.DrawFn) -> dict[str, Any]:
    """Traits that do not identify: a value, a removal (null), an object and its removal, a number."""
    traits: dict[str, Any] = {}
    if draw(st.booleans()):
        traits["plan"] = draw(st.sampled_from(["free", "pro", "team", None]))
    if draw(st.integers(0, 2)) == 0:
        traits["address"] = draw(st.sampled_from([None, {"city": "Oslo"}, {"city": "Rome", "zip": "00100"}]))
    if draw(st.integers(0, 3)) == 0:
        traits["visits"] = draw(st.sampled_from([1, 2, "3", None]))
    for code, values in STRATEGY_VALUES.items():
        if draw(st.integers(0, 3)) == 0:
            traits[code] = draw(st.sampled_from(values))
    return traits


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    """One Segment message with an id (so every way of processing reads the same log)."""
    kind = draw(st.sampled_from(["identify", "identify", "track", "page", "alias"]))
    at = draw(TIMES)
    if kind == "alias":
        return {"type": "alias", "userId": draw(st.sampled_from(["u1", "u2", "u3"])), "timestamp": at,
                "previousId": draw(st.sampled_from(["a1", "a2", "a3", "u1", "u2", " a1", "a2\r\n"]))}
    message: dict[str, Any] = {"type": kind, "timestamp": at}
    user, anonymous = draw(USER_IDS), draw(ANONYMOUS_IDS)
    if user is None and anonymous is None:
        anonymous = "a1"
    if user is not None:
        message["userId"] = user
    if anonymous is not None:
        message["anonymousId"] = anonymous
    context: dict[str, Any] = {}
    if kind == "identify":
        message["traits"] = {**draw(identifying_traits()), **draw(plain_traits())}
    elif draw(st.integers(0, 2)) == 0:
        context["traits"] = draw(identifying_traits())
    if draw(st.integers(0, 3)) == 0:
        context["externalIds"] = draw(EXTERNAL_IDS)
    if draw(st.integers(0, 4)) == 0:
        context["consent"] = {"email": draw(st.sampled_from(["granted", "denied"]))}
    if kind == "track":
        message["event"] = draw(st.sampled_from(["Viewed", "Bought"]))
    if context:
        message["context"] = context
    return message


LOGS = st.lists(messages(), min_size=1, max_size=25).map(
    lambda log: [{**m, "messageId": f"m-{n}"} for n, m in enumerate(log)])


def make_template(path: Path) -> Path:
    """An empty, migrated database to copy (creating one costs half a second), with an attribute of each merge
    strategy."""
    with opened(path) as service:
        for code, (kind, strategy) in STRATEGIES.items():
            service.create_attribute({"code": code, "name": code, "type": kind, "merge_strategy": strategy})
    return path


@contextlib.contextmanager
def opened(path: Path, **options: Any) -> Iterator[Portrait]:
    service = Portrait(Settings(db_path=str(path), **options), background=False)
    try:
        yield service
    finally:
        service.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_template(tmp_path_factory.mktemp("template") / "empty.duckdb")


class Logs:
    """Databases holding one ingested log, copied from the template."""

    def __init__(self, template: Path, folder: Path) -> None:
        self._template = template
        self._folder = folder
        self._count = 0

    def ingested(self, log: list[dict[str, Any]]) -> Path:
        path = self._copy(self._template)
        with opened(path) as service:
            result = service.ingest_messages(log)
            assert result.rejected == 0, service.rejected()
        return path

    def processed(self, source: Path, **options: Any) -> dict[str, list[str]]:
        """The derived state after processing a copy of ``source`` with these settings."""
        with opened(self._copy(source), **options) as service:
            service.processor.drain()
            return derived_state(service)

    def _copy(self, source: Path) -> Path:
        self._count += 1
        target = self._folder / f"db-{self._count}.duckdb"
        shutil.copy(source, target)
        return target


@pytest.fixture
def logs(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logs]:
    yield Logs(template, tmp_path_factory.mktemp("logs"))


def derived_state(portrait: Portrait) -> dict[str, list[str]]:
    session = portrait.store.session()
    try:
        return {table: sorted(repr(row) for row in session.execute(parse(query))) for table, query in DERIVED.items()}
    finally:
        session.close()


def differences(one: dict[str, list[str]], other: dict[str, list[str]]) -> dict[str, tuple[list[str], list[str]]]:
    """Per table, the rows only one side has (readable in a failure, unlike two whole states)."""
    out = {}
    for table in one:
        left, right = set(one[table]), set(other[table])
        if left != right:
            out[table] = (sorted(left - right), sorted(right - left))
    return out


# Found in CI with a random seed: m-5, older than m-2's removal of address, holds address.zip. Processed one by one
# its part was left out (older than the removal on the profile) and no address_zip attribute was made; in one
# batch it was. Attributes are now made from every usable value (sql.processor.AUTO_CREATE_ATTRIBUTES).
LATE_PART_AFTER_ITS_REMOVAL: list[dict[str, Any]] = [{'type': 'identify',
      'timestamp': '2026-03-01T10:00:00Z',
      'anonymousId': 'a1',
      'traits': {'email': 'ann@example.com', 'loyalty_card': 'L1', 'best_order': 10},
      'messageId': 'm-0'},
     {'type': 'identify',
      'timestamp': '2026-03-01T10:00:00Z',
      'anonymousId': 'a1',
      'traits': {'email': 'ann@example.com', 'phone': '+14155552671', 'plan': 'free', 'visits': 1},
      'messageId': 'm-1'},
     {'type': 'identify',
      'timestamp': '2026-03-01T10:00:00Z',
      'userId': 'u2\t',
      'traits': {'loyalty_card': 'L2',
                 'plan': 'free',
                 'address': None,
                 'visits': 1,
                 'lowest_price': 3,
                 'points': 1},
      'messageId': 'm-2'},
     {'type': 'identify',
      'timestamp': '2026-03-01T10:00:00Z',
      'anonymousId': 'a1',
      'traits': {'email': 'ann@example.com',
                 'phone': '+14155552671',
                 'plan': 'free',
                 'lowest_price': None,
                 'points': None},
      'messageId': 'm-3'},
     {'type': 'alias',
      'userId': 'u3',
      'timestamp': '2026-03-02T09:30:00Z',
      'previousId': 'u2',
      'messageId': 'm-4'},
     {'type': 'identify',
      'timestamp': '2026-02-27T08:00:00Z',
      'userId': 'u2',
      'anonymousId': 'undefined',
      'traits': {'email': 'ann@example.com',
                 'loyaltyCard': 'L3',
                 'address': {'city': 'Rome', 'zip': '00100'},
                 'first_source': 'web',
                 'lowest_price': 1.5},
      'messageId': 'm-5'},
     {'type': 'identify',
      'timestamp': '2026-03-02T09:30:00Z',
      'userId': 'null',
      'anonymousId': 'a2',
      'traits': {'email': 'bob@example.com', 'phone': '555-1234', 'plan': None, 'visits': 1, 'lowest_price': 3},
      'messageId': 'm-6'}]

BATCHINGS = [(1, 1), (7, 7), (2, 64)]  # (batch size, most while behind): one by one, fixed, growing


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(log=LOGS, limit=st.sampled_from([1, 2, 5]))
@example(log=LATE_PART_AFTER_ITS_REMOVAL, limit=2)
def test_micro_batches_do_not_change_the_derived_state(logs: Logs, log: list[dict[str, Any]], limit: int) -> None:
    """One event at a time, a few, batches growing while behind, or all at once: the same profiles, identities,
    traits (every merge strategy), merges, conflicts, consent, activity, data-quality issues and rejections."""
    source = logs.ingested(log)
    whole = logs.processed(source, identity_default_limit=limit)
    for size, most in BATCHINGS:
        split = logs.processed(source, identity_default_limit=limit, processor_batch_size=size,
                               processor_max_batch_size=most)
        assert differences(whole, split) == {}, (size, most)


# -- the grouping against an oracle ------------------------------------------------------------------------------
# What each generated raw value is as an identifier, written out by hand (None: not an identifier), so that the
# store's normalization is checked too, not only compared with itself.
NORMALIZED: dict[tuple[str, str], str | None] = {
    **{("user_id", v): f"user_id:{v.strip()}" for v in ("u1", "u2", "u3", " u1 ", "u2\t")}, ("user_id", "null"): None,
    **{("anonymous_id", v): f"anonymous_id:{v.strip()}" for v in ("a1", "a2", "a3", "a4", "a1\n")},
    ("anonymous_id", "undefined"): None,
    ("email", "ann@example.com"): "email:ann@example.com", ("email", " ANN@Example.com"): "email:ann@example.com",
    ("email", "bob@example.com"): "email:bob@example.com", ("email", "İPEK@example.com"): "email:ipek@example.com",
    ("email", "test@test.com"): None, ("email", "not-an-email"): None,
    ("phone", "+14155552671"): "phone:+14155552671", ("phone", "(415) 555-2671"): "phone:+14155552671",
    ("phone", "+1 415 555 2672"): "phone:+14155552672", ("phone", "555-1234"): None,
}


def identifiers_of(message: dict[str, Any]) -> set[str]:
    """The identifier keys a message carries (an alias's previousId aside)."""
    found = {NORMALIZED[(kind, message[field])] for kind, field in (("user_id", "userId"),
                                                                     ("anonymous_id", "anonymousId"))
             if field in message}
    context = message.get("context", {})
    for name, value in {**context.get("traits", {}), **message.get("traits", {})}.items():
        if name in ("email", "phone"):
            found.add(NORMALIZED[(name, value)])
        elif name in ("loyalty_card", "loyaltyCard", "LoyaltyCard"):
            found.add(f"loyalty_card:{value}")
    found.update(f"{item['type'].lower()}:{item['id']}" for item in context.get("externalIds", []))
    found.discard(None)  # type: ignore[arg-type]
    return found


def owners(path: Path) -> dict[str, str]:
    """identity key -> profile id, as the store holds them."""
    with opened(path) as service:
        session = service.store.session()
        try:
            return dict(session.execute(select("identity_key", "profile_id").from_("identities")))
        finally:
            session.close()


def partition(owner: dict[str, str]) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for key, profile_id in owner.items():
        groups.setdefault(profile_id, set()).add(key)
    return {frozenset(group) for group in groups.values()}


UNLIMITED = {"identity_limits": {"user_id": 1000}, "identity_default_limit": 1000}
# Aliases whose previousId is never a user id: read as an anonymous id whatever came before (an alias naming a
# user id reads it as one only once that user id is known, which depends on the order by design).
ANONYMOUS_ALIAS_LOGS = LOGS.map(lambda log: [
    {**m, "previousId": m["previousId"].replace("u", "a")} if m["type"] == "alias" else m for m in log])


def alias_identifiers(message: dict[str, Any]) -> set[str]:
    found = identifiers_of(message)
    if message["type"] == "alias":
        found.add(f"anonymous_id:{message['previousId'].strip()}")
    return found


@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(log=ANONYMOUS_ALIAS_LOGS, data=st.data(), batch_size=st.sampled_from([1, 3, 1000]))
def test_without_limits_the_grouping_is_the_components_in_any_order(
        logs: Logs, log: list[dict[str, Any]], data: st.DataObject, batch_size: int) -> None:
    """Where no limit is hit, profiles are the connected components of "appeared in the same event", whatever
    the order events arrive in: emails and phones normalized, blocked values and non-numbers left out, identity
    traits in any case style, externalIds, aliases, and profiles merged again and again."""
    expected = components([alias_identifiers(m) for m in log])
    for order in (log, data.draw(st.permutations(log))):
        path = logs.ingested(order)
        with opened(path, processor_batch_size=batch_size, processor_max_batch_size=batch_size,
                         **UNLIMITED) as service:
            service.processor.drain()
        assert partition(owners(path)) == expected


def resolved(log: list[dict[str, Any]], rules: IdentityRules) -> tuple[dict[str, str], list[tuple[int, list[str]]]]:
    """What the sequential resolver alone decides for the log (identity key -> profile id; dropped identifiers
    per event), from the hand-normalized identifiers."""
    graph = IdentityGraph(rules)
    dropped: list[tuple[int, list[str]]] = []
    for seq, message in enumerate(log, start=1):
        keys = identifiers_of(message)
        if message["type"] == "alias":
            previous = message["previousId"].strip()
            keys.add(f"user_id:{previous}" if f"user_id:{previous}" in graph.owner else f"anonymous_id:{previous}")
        found = sorted((Identifier(*key.split(":", 1)) for key in keys), key=lambda i: (rules.rank(i.type), i.value))
        if found:
            resolution = graph.resolve(found, seq, functools.partial(profile_id_for, seq))
            if resolution.dropped:
                dropped.append((seq, sorted(i.key for i in resolution.dropped)))
    return {key: graph.final(owner) for key, owner in graph.owner.items()}, dropped


def conflicts(path: Path) -> list[tuple[int, list[str]]]:
    with opened(path) as service:
        session = service.store.session()
        try:
            rows = session.execute(select("seq", "dropped").from_("identity_conflicts").order_by("seq"))
        finally:
            session.close()
    return [(seq, sorted(f"{i['type']}:{i['value']}" for i in json.loads(text))) for seq, text in rows]


LIMITS = st.sampled_from([{}, {"identity_default_limit": 1}, {"identity_default_limit": 2},
                          {"identity_limits": {"user_id": 1, "email": 1, "anonymous_id": 2}},
                          {"identity_limits": {"user_id": 2}, "identity_default_limit": 3}])


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(log=LOGS, limits=LIMITS, batch=st.sampled_from([(1, 1), (4, 4), (2, 64), (1000, 1000)]))
def test_the_store_groups_as_the_resolver_and_keeps_every_limit(
        logs: Logs, log: list[dict[str, Any]], limits: dict[str, Any], batch: tuple[int, int]) -> None:
    """Whatever the identifiers (normalized emails and phones, blocked values, identity traits, externalIds,
    aliases), the limits and the batches: identities and dropped identifiers are what the resolver decides
    event by event, and no profile holds more identifiers of a type than its limit."""
    path = logs.ingested(log)
    with opened(path, processor_batch_size=batch[0], processor_max_batch_size=batch[1], **limits) as service:
        service.processor.drain()
        rules = service.rules
    expected, dropped = resolved(log, rules)
    assert owners(path) == expected
    assert conflicts(path) == dropped
    counts: dict[tuple[str, str], int] = {}
    for key, profile_id in expected.items():
        counts[profile_id, key.split(":")[0]] = counts.get((profile_id, key.split(":")[0]), 0) + 1
    assert all(count <= rules.limit(kind) for (_, kind), count in counts.items())


# -- traits ------------------------------------------------------------------------------------------------------
def latest_traits(log: list[dict[str, Any]], owner_of_event: dict[int, str]) -> dict[tuple[str, str], Any]:
    """(profile, code) -> value: per profile, each trait's value from the identify with the latest timestamp that
    names it, the later in the log on a tie (None: removed)."""
    latest: dict[tuple[str, str], tuple[str, int, Any]] = {}
    for seq, message in enumerate(log, start=1):
        if message["type"] != "identify" or seq not in owner_of_event:
            continue
        for name, value in message["traits"].items():
            code = {"loyaltyCard": "loyalty_card", "LoyaltyCard": "loyalty_card"}.get(name, name)
            if code in ("plan", "loyalty_card"):
                at = (message["timestamp"], seq)
                key = (owner_of_event[seq], code)
                if key not in latest or at > latest[key][:2]:
                    latest[key] = (*at, value)
    return {key: value for key, (_, _, value) in latest.items()}


def stored_traits(path: Path) -> tuple[dict[tuple[str, str], Any], dict[int, str]]:
    with opened(path) as service:
        session = service.store.session()
        try:
            traits = session.execute(select("profile_id", "key", "value").from_("profile_traits")
                                     .where("key IN ('plan', 'loyalty_card')"))
            assigned = session.execute(select("seq", "profile_id").from_("event_profiles"))
        finally:
            session.close()
    return {(p, k): None if v is None else json.loads(v) for p, k, v in traits}, dict(assigned)


@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(log=LOGS, data=st.data(), batch_size=st.sampled_from([1, 3, 1000]))
def test_the_latest_trait_value_by_event_time_wins_in_any_order(
        logs: Logs, log: list[dict[str, Any]], data: st.DataObject, batch_size: int) -> None:
    """Each profile's trait is the value of its latest identify naming it by event time (null removes; on equal
    times the later in the log), whatever order the events arrive in and however they are batched."""
    for order in (log, data.draw(st.permutations(log))):
        path = logs.ingested(order)
        with opened(path, processor_batch_size=batch_size, processor_max_batch_size=batch_size) as service:
            service.processor.drain()
        traits, assigned = stored_traits(path)
        expected = latest_traits(order, assigned)
        assert {k: v for k, v in traits.items() if v is not None} == {k: v for k, v in expected.items()
                                                                       if v is not None}


# -- rebuild and crashes -----------------------------------------------------------------------------------------
@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(log=LOGS, batch_size=st.sampled_from([1, 4, 1000]))
def test_a_rebuild_gives_the_state_processing_gave(logs: Logs, log: list[dict[str, Any]], batch_size: int) -> None:
    path = logs.ingested(log)
    with opened(path, processor_batch_size=batch_size, processor_max_batch_size=batch_size) as service:
        service.processor.drain()
        before = derived_state(service)
        service.rebuild_profiles()
        assert differences(before, derived_state(service)) == {}


# The child process: process the log with the store's statements counted, killing itself (SIGKILL: nothing is
# rolled back, closed or checkpointed) when it is about to run the one numbered argv[2].
CRASHING = """
import os, signal, sys
from portrait.config import Settings
from portrait.service import Portrait
from portrait.sql import parse
from portrait.store.duckdb import DuckDBSession

count, crash_at, execute = 0, int(sys.argv[2]), DuckDBSession.execute

def counted(self, statement, params=()):
    global count
    count += 1
    if count == crash_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return execute(self, statement, params)

service = Portrait(Settings(db_path=sys.argv[1], processor_batch_size=3, processor_max_batch_size=3),
                   background=False)
DuckDBSession.execute = counted
service.processor.drain()
"""


@settings(max_examples=5, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(log=LOGS, crash_at=st.integers(1, 400))
def test_a_process_killed_while_processing_ends_with_the_state_of_no_crash(
        logs: Logs, log: list[dict[str, Any]], crash_at: int) -> None:
    """Killed (SIGKILL) before any statement of processing, the processor started again on the same file ends
    with what processing without the crash gives: a batch is applied whole or not at all."""
    path = logs.ingested(log)
    expected = logs.processed(path, processor_batch_size=3, processor_max_batch_size=3)
    child = subprocess.run([sys.executable, "-c", CRASHING, str(path), str(crash_at)], check=False,
                           capture_output=True)
    assert child.returncode in (0, -signal.SIGKILL), child.stderr.decode()
    with opened(path, processor_batch_size=3, processor_max_batch_size=3) as service:
        service.processor.drain()
        assert differences(expected, derived_state(service)) == {}
