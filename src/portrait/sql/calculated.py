"""Calculated attributes in SQL: each definition becomes one query giving ``(profile_id, value)`` -- the value as
JSON text, NULL for "no value" -- for every profile or for the profiles in ``seg_live`` (those a batch touched).

Values are stored in ``profile_traits`` like any trait, so segments, the profile view and exports read them as they
read everything else.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlglot import exp

from portrait.conditions.calculations import Calculation, Concat, DaysSince, EventValue, Rfm, YearsSince
from portrait.conditions.check import Schema
from portrait.sql import parse
from portrait.sql.conditions import _Compiler, _json_path, _reader

_NUMBER = "TRY_CAST(CAST(json_extract(e.properties, '{path}') AS VARCHAR) AS DOUBLE)"
_TEXT = "json_extract_string(e.properties, '{path}')"
_AGGREGATES = {
    "count": "count(*)", "sum": "sum({n})", "avg": "avg({n})", "min": "min({n})", "max": "max({n})",
    "first_value": "first({t} ORDER BY ep.timestamp, ep.seq) FILTER (WHERE {t} IS NOT NULL)",
    "last_value": "last({t} ORDER BY ep.timestamp, ep.seq) FILTER (WHERE {t} IS NOT NULL)",
    "distinct_count": "count(DISTINCT {t})",
    "unique_list": "list_sort(list(DISTINCT {t}) FILTER (WHERE {t} IS NOT NULL))",
    "first_time": "min(ep.timestamp)", "last_time": "max(ep.timestamp)",
}
# How each result becomes JSON text (NULL stays NULL): counts and sums are 0 without events.
_AS_JSON = {
    "count": "CAST(to_json(coalesce(a.v, 0)) AS VARCHAR)", "sum": "CAST(to_json(coalesce(a.v, 0)) AS VARCHAR)",
    "distinct_count": "CAST(to_json(coalesce(a.v, 0)) AS VARCHAR)",
    "first_time": "CAST(to_json(strftime(a.v, '%Y-%m-%dT%H:%M:%S.%gZ')) AS VARCHAR)",
    "last_time": "CAST(to_json(strftime(a.v, '%Y-%m-%dT%H:%M:%S.%gZ')) AS VARCHAR)",
}
# RFM: quintiles over every profile that performed the event; named groups from the recency and frequency scores.
RFM_GROUP = """CASE
    WHEN rs >= 4 AND fs >= 4 THEN 'Champions'
    WHEN rs >= 3 AND fs >= 3 THEN 'Loyal'
    WHEN rs = 5 AND fs = 1 THEN 'New Customers'
    WHEN rs >= 4 THEN 'Potential Loyalists'
    WHEN rs = 3 THEN 'Promising'
    WHEN rs = 1 AND fs >= 4 THEN 'Can''t Lose Them'
    WHEN fs >= 3 THEN 'At Risk'
    WHEN rs = 2 THEN 'About to Sleep'
    ELSE 'Hibernating' END"""


def calculation_query(calculation: Calculation, schema: Schema, now: datetime, *, scoped: bool
                      ) -> tuple[exp.Expr, dict[str, Any]]:
    """``SELECT profile_id, value`` for the calculation, over ``seg_live`` (the profiles a batch touched, see
    sql.segments.LIVE_SCOPE) when ``scoped``, else every profile."""
    compiler = _Compiler(schema, now)
    # seg_live, not seg_scope: the scope also holds profiles merged away (so that they leave their segments), which
    # get no values (they would be filed under a profile that no longer exists).
    base = "(SELECT profile_id FROM seg_live)" if scoped else "(SELECT profile_id FROM profiles)"
    if isinstance(calculation, EventValue):
        return _event_value(compiler, calculation, base, scoped), compiler.params
    if isinstance(calculation, DaysSince) and isinstance(calculation.source, EventValue):
        moment = _event_value(compiler, calculation.source, base, scoped, raw=True)
        query = parse(f"SELECT m.profile_id, CAST(to_json(date_diff('day', m.v, $now)) AS VARCHAR) AS value "
                      f"FROM ({moment.sql('duckdb')}) AS m")
        compiler.params["now"] = now
        return query, compiler.params
    if isinstance(calculation, DaysSince | YearsSince):
        code = calculation.source if isinstance(calculation, DaysSince) else calculation.attribute
        assert isinstance(code, str)
        kind = schema.attribute_types.get(code, "datetime")
        value = _reader("date" if kind == "date" else "datetime", "t.value").sql("duckdb")
        measure = (f"date_diff('day', CAST({value} AS TIMESTAMP), $now)" if isinstance(calculation, DaysSince)
                   else f"date_part('year', age($now, CAST({value} AS TIMESTAMP)))")
        compiler.params.update(now=now, code=code)
        query = parse(f"SELECT s.profile_id, CAST(to_json({measure}) AS VARCHAR) AS value FROM {base} AS s "
                      "LEFT JOIN profile_traits AS t ON t.profile_id = s.profile_id AND t.key = $code")
        return query, compiler.params
    if isinstance(calculation, Concat):
        return _concat(compiler, calculation, base), compiler.params
    return _rfm(compiler, calculation, base, now), compiler.params


def _event_value(compiler: _Compiler, calculation: EventValue, base: str, scoped: bool, *,
                 raw: bool = False) -> exp.Expr:
    needs_properties = calculation.prop is not None or calculation.where is not None
    source = compiler.events(calculation.event, calculation.window, calculation.where, needs_properties)
    if scoped:
        source = source.where("ep.profile_id IN (SELECT profile_id FROM seg_scope)")
    path = _json_path(calculation.prop) if calculation.prop else ""
    if calculation.function == "most_frequent":
        text = _TEXT.format(path=path)
        counted = source.select(f"{text} AS x", "count(*) AS n", append=True).where(f"{text} IS NOT NULL").group_by(
            "ep.profile_id", "x")
        inner = f"SELECT profile_id, first(x ORDER BY n DESC, x) AS v FROM ({counted.sql('duckdb')}) GROUP BY 1"
    else:
        aggregate = _AGGREGATES[calculation.function].format(n=_NUMBER.format(path=path), t=_TEXT.format(path=path))
        grouped = source.select(f"{aggregate} AS v", append=True).group_by("ep.profile_id")
        inner = grouped.sql("duckdb")
    if raw:
        return parse(f"SELECT s.profile_id, a.v FROM {base} AS s JOIN ({inner}) AS a ON a.profile_id = s.profile_id")
    as_json = _AS_JSON.get(calculation.function, "CAST(to_json(a.v) AS VARCHAR)")
    return parse(f"SELECT s.profile_id, {as_json} AS value FROM {base} AS s "
                 f"LEFT JOIN ({inner}) AS a ON a.profile_id = s.profile_id")


def _concat(compiler: _Compiler, calculation: Concat, base: str) -> exp.Expr:
    pieces, joins = [], []
    for index, (kind, value) in enumerate(calculation.parts):
        if kind == "text":
            pieces.append(f"${compiler.param(value).name}")
            continue
        alias = f"t{index}"
        key = compiler.param(value).name
        joins.append(f"LEFT JOIN profile_traits AS {alias} ON {alias}.profile_id = s.profile_id "
                     f"AND {alias}.key = ${key}")
        pieces.append(f"coalesce({alias}.value ->> '$', '')")
    present = " OR ".join(f"t{i}.value IS NOT NULL" for i, (k, _) in enumerate(calculation.parts) if k == "attribute")
    text = " || ".join(pieces)
    return parse(f"SELECT s.profile_id, CASE WHEN {present} THEN CAST(to_json(trim({text})) AS VARCHAR) END AS value "
                 f"FROM {base} AS s {' '.join(joins)}")


def _quintile(order: str) -> str:
    """The quintile (1-5) a customer's value falls in by its rank, ties sharing the lowest: customers who did the
    same get the same score. (ntile(5) split ties by profile id: of 564 one-order buyers, some got F 3 and were
    called Loyal, others F 1, by their id alone.)"""
    return f"CAST(1 + (5 * (rank() OVER (ORDER BY {order}) - 1)) // count(*) OVER () AS INTEGER)"


def _rfm(compiler: _Compiler, calculation: Rfm, base: str, now: datetime) -> exp.Expr:
    compiler.params.update(event=calculation.event, now=now)
    number = _NUMBER.format(path=_json_path(calculation.prop))
    # Recency and frequency from event_profiles, which keeps every event (retention deletes raw events only); the
    # properties, so monetary, from the raw events still in the log: an expired order counts with no revenue.
    scores = f"""
        WITH per AS (
            SELECT ep.profile_id, date_diff('day', max(ep.timestamp), $now) AS recency, count(*) AS frequency,
                   coalesce(sum({number}), 0) AS monetary
            FROM event_profiles AS ep LEFT JOIN events AS e ON e.seq = ep.seq AND e.event = $event
            WHERE ep.event = $event GROUP BY 1
        ), scored AS (
            SELECT profile_id, {_quintile('recency DESC')} AS rs, {_quintile('frequency')} AS fs,
                   {_quintile('monetary')} AS ms
            FROM per
        )"""
    pick = {"recency": "rs", "frequency": "fs", "monetary": "ms", "group": RFM_GROUP}[calculation.part]
    return parse(f"{scores} SELECT s.profile_id, CAST(to_json({pick}) AS VARCHAR) AS value FROM {base} AS s "
                 "JOIN scored ON scored.profile_id = s.profile_id")


# -- applying values ----------------------------------------------------------------------------------------------
NEW_VALUES = "CREATE OR REPLACE TEMP TABLE calc_new AS "
# Params: code, now. Store the new values (an unchanged value is left alone), then drop values that went away.
UPSERT = parse("""
INSERT INTO profile_traits (profile_id, key, value, updated_at, seq)
SELECT profile_id, $code, value, $now, 0 FROM calc_new WHERE value IS NOT NULL
ON CONFLICT (profile_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at
""")
DROP_ALL = parse("DELETE FROM profile_traits WHERE key = $code AND profile_id NOT IN "
                 "(SELECT profile_id FROM calc_new WHERE value IS NOT NULL)")
DROP_SCOPED = parse("DELETE FROM profile_traits WHERE key = $code AND profile_id IN (SELECT profile_id FROM seg_scope) "
                    "AND profile_id NOT IN (SELECT profile_id FROM calc_new WHERE value IS NOT NULL)")
CALCULATED = parse("SELECT code, definition FROM attributes WHERE calculated AND definition IS NOT NULL "
                   "AND status = 'active' ORDER BY code")


def new_values(query: exp.Expr) -> exp.Expr:
    return parse(NEW_VALUES + query.sql("duckdb"))

