"""Statements for the attribute registry."""

from __future__ import annotations

import functools

from sqlglot import exp

from portrait.sql import param, parse
from portrait.sql.conditions import _reader

COLUMNS = ("code", "name", "type", "description", "unit", "is_personal_info", "calculate_analytics", "calculated",
           "standard", "merge_strategy", "validation", "status", "auto_created", "definition", "created_at",
           "updated_at")
# Standard attributes are (re)seeded at start; an existing row (perhaps edited by the user) is left alone.
SEED = exp.insert(exp.select(*COLUMNS).from_("seed_attributes"), "attributes", columns=list(COLUMNS))
SEED.set("conflict", exp.OnConflict(action=exp.var("DO NOTHING")))
INSERT = exp.insert(exp.select(*COLUMNS).from_("new_attribute"), "attributes", columns=list(COLUMNS))
GET = exp.select(*COLUMNS).from_("attributes").where(exp.column("code").eq(param()))
TYPES = parse("SELECT code, type FROM attributes")
USAGE = parse("SELECT count(*), count(DISTINCT profile_id) FROM profile_traits WHERE key = ? AND value IS NOT NULL")


def listing(standard: bool | None, status: str | None) -> tuple[exp.Expr, list[object]]:
    return _listing(standard is not None, status is not None), [v for v in (standard, status) if v is not None]


@functools.cache
def _listing(by_standard: bool, by_status: bool) -> exp.Expr:
    """The listing's statement, built once per shape: every request a read key makes lists the attributes (the
    Viewer's masking), and building it anew cost ~1.4 ms, then took a place in the renderer's cache of recent trees,
    which a soak found filling with these (Python's blocks rising with the requests)."""
    query = exp.select(*COLUMNS).from_("attributes")
    if by_standard:
        query = query.where(exp.column("standard").eq(param()))
    if by_status:
        query = query.where(exp.column("status").eq(param()))
    return query.order_by("standard DESC", "code")


def update(columns: list[str]) -> exp.Expr:
    """``UPDATE attributes SET c1 = ?, ... WHERE code = ?``; column names come from the registry's own list."""
    assert set(columns) <= set(COLUMNS), columns
    return exp.update("attributes", {c: param() for c in columns}, where=exp.column("code").eq(param()))

# -- analytics, computed on the stored values of one attribute (param: the code, unless said otherwise) ---------
COUNT_PROFILES = parse("SELECT count(*) FROM profiles")
FILL = parse(
    "SELECT count(*), count(DISTINCT value) FROM profile_traits WHERE key = ? AND value IS NOT NULL"
)
# Params: code, how many.
TOP_VALUES = parse(
    "SELECT CAST(value AS VARCHAR), count(*) AS n FROM profile_traits WHERE key = ? AND value IS NOT NULL "
    "GROUP BY 1 ORDER BY n DESC, 1 LIMIT ?"
)
# The same for numbers: 10 and 10.0 are one value (JSON keeps them as sent). Each value is read as a double ``x``
# and, when it is whole and fits a BIGINT, also exactly as ``whole``: a double holds integers exactly only up to 2^53,
# so 9007199254740993 (an order or card number) would show as ...992 and share a count with it. Params: code (and
# how many).
def numbers(source: str) -> str:
    """``x, whole`` for each number of ``source``: Portrait's own query (never a value) giving JSON texts as ``v``."""
    return f"""
SELECT x, CASE WHEN regexp_full_match(v, '-?[0-9]+') THEN TRY_CAST(v AS BIGINT)
               WHEN x = floor(x) AND abs(x) < 9.0e15 THEN CAST(x AS BIGINT) END AS whole
FROM (SELECT v, TRY_CAST(v AS DOUBLE) AS x FROM ({source})) WHERE x IS NOT NULL
"""


_NUMBERS = numbers("SELECT CAST(value AS VARCHAR) AS v FROM profile_traits WHERE key = ? AND value IS NOT NULL")
FILL_NUMBERS = parse(f"SELECT count(*), count(DISTINCT (x, whole)) FROM ({_NUMBERS})")
TOP_NUMBERS = parse(f"SELECT x, whole, count(*) AS n FROM ({_NUMBERS}) GROUP BY x, whole ORDER BY n DESC, x, whole "
                    "LIMIT ?")
# The smallest and largest value also exactly when whole, the mean and quantiles as doubles.
NUMERIC = parse(f"""
WITH n AS ({_NUMBERS}), ends AS (SELECT min(x) AS low, max(x) AS high FROM n)
SELECT low, high, avg(x), quantile_cont(x, [0.25, 0.5, 0.75, 0.9, 0.99]),
       min(whole) FILTER (WHERE x = low), max(whole) FILTER (WHERE x = high)
FROM n, ends GROUP BY low, high
""")
# Ten equal-width bins between min and max. Params: min, max, min, code.
HISTOGRAM = parse("""
SELECT least(floor((x - ?) / nullif(? - ?, 0) * 10), 9) AS bin, count(*) FROM (
    SELECT TRY_CAST(CAST(value AS VARCHAR) AS DOUBLE) AS x FROM profile_traits WHERE key = ? AND value IS NOT NULL
) WHERE x IS NOT NULL GROUP BY bin ORDER BY bin
""")


def date_range(kind: str) -> exp.Expr:
    """The earliest and latest value of a date or datetime attribute (param: the code), read as segment conditions
    read them: a datetime's offset counts (2026-06-02T01:00:00+02:00 is 2026-06-01 23:00 UTC, as naive UTC)."""
    value = _reader(kind, "value")
    inner = exp.select(exp.alias_(value, "d")).from_("profile_traits").where(
        exp.and_(exp.column("key").eq(param()), exp.column("value").is_(exp.null()).not_()))
    return exp.select("min(d)", "max(d)").from_(exp.alias_(exp.Subquery(this=inner), "r")).where(
        exp.column("d").is_(exp.null()).not_())


# An integer attribute holds whole numbers up to 2^64 - 1 (JSON's unsigned 64-bit integers), past BIGINT: read as a
# HUGEINT, which the export narrows to int64 when every value fits (portrait.exports).
_CASTS = {"integer": "HUGEINT", "number": "DOUBLE", "boolean": "BOOLEAN"}
JSON_TYPES = ("list", "object")  # exported as the stored JSON text, not as the text of a value
_USER_IDS = parse("SELECT profile_id, min(value) AS user_id FROM identities WHERE type = 'user_id' GROUP BY 1")


def export_profiles(attributes: list[tuple[str, str]], segment_id: int | None = None,
                    consent_purpose: str | None = None) -> tuple[exp.Expr, list[object]]:
    """One row per profile (of a segment, when given): profile_id, user_id, then one typed column per attribute
    (lists and objects as their JSON text).

    Codes are registry codes (checked snake_case) used as column names through SQLGlot identifiers; the codes
    compared against stored keys are bound parameters.
    """
    params: list[object] = []
    columns: list[exp.Expr] = [exp.column("profile_id", table="p"), exp.column("user_id", table="u")]
    for code, kind in attributes:
        text = exp.func("json_extract_string", exp.column("value", table="t"), exp.Literal.string("$"))
        value = exp.TryCast(this=text, to=exp.DataType.build(_CASTS[kind])) if kind in _CASTS else text
        if kind in JSON_TYPES:  # the JSON itself, which the export writes as a JSON value (portrait.exports)
            value = exp.cast(exp.column("value", table="t"), "VARCHAR")
        picked = exp.Max(this=exp.If(this=exp.column("key", table="t").eq(param()), true=value))
        columns.append(exp.alias_(picked, exp.to_identifier(code, quoted=True)))
        params.append(code)
    query = (
        exp.select(*columns).from_(exp.alias_(exp.to_table("profiles"), "p"))
        .join(exp.alias_(exp.Subquery(this=_USER_IDS), "u"), on="u.profile_id = p.profile_id", join_type="left")
        .join(exp.alias_(exp.to_table("profile_traits"), "t"),
              on="t.profile_id = p.profile_id AND t.value IS NOT NULL", join_type="left")
        .group_by("p.profile_id", "u.user_id").order_by("p.profile_id")
    )
    if segment_id is not None:
        members = exp.select("profile_id").from_("segment_members").where(exp.column("segment_id").eq(param()))
        query = query.where(exp.In(this=exp.column("profile_id", table="p"), query=exp.Subquery(this=members)))
        params.append(segment_id)
    if consent_purpose is not None:
        query = query.where(exp.In(this=exp.column("profile_id", table="p"), query=exp.Subquery(this=_GRANTED)))
        params.append(consent_purpose)
    return query, params


# Params: purpose. Profiles whose latest statement for the purpose is a grant.
_GRANTED = parse("""
SELECT ep.profile_id FROM consent_records AS c JOIN event_profiles AS ep ON ep.seq = c.seq WHERE c.purpose = ?
GROUP BY ep.profile_id HAVING first(c.status ORDER BY c.at DESC, c.seq DESC) = 'granted'
""")
