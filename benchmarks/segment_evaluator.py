"""Figure (issue #4): the Python engine evaluates the example condition for >= 20,000 profiles per second.

Loads a sample of profiles with their traits and events from a database built by ``segment_data.py`` (not timed),
then times the compiled predicate over them -- what runs on the profiles each processed batch touches. The same
profiles are also counted by the SQL engine, and the two must agree.

    .venv/bin/python benchmarks/segment_evaluator.py --db /tmp/seg/db.duckdb --profiles 20000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import duckdb
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result
from segment_count import CONDITION
from segment_data import NOW

from portrait.conditions import check, parse
from portrait.conditions.evaluate import Event, ProfileData, compile_predicate
from portrait.config import Settings
from portrait.service import Portrait
from portrait.sql.conditions import compile_condition


def load(con: duckdb.DuckDBPyConnection, sample: int) -> list[ProfileData]:
    """A random sample of profiles with their traits and events (as the real-time path loads touched profiles)."""
    con.execute("CREATE OR REPLACE TEMP TABLE sample AS SELECT profile_id FROM profiles ORDER BY hash(profile_id) "
                "LIMIT $n", {"n": sample})  # a fixed pseudo-random sample (USING SAMPLE takes no parameter)
    profiles = {row[0]: ProfileData(row[0]) for row in con.execute("SELECT profile_id FROM sample").fetchall()}
    traits = con.execute("SELECT profile_id, key, CAST(value AS VARCHAR) FROM profile_traits "
                         "WHERE profile_id IN (SELECT profile_id FROM sample)").fetchall()
    for pid, key, value in traits:
        profiles[pid].traits[key] = orjson.loads(value)
    events = con.execute("SELECT ep.profile_id, ep.seq, ep.event, ep.timestamp, e.properties FROM event_profiles AS ep "
                         "JOIN events AS e ON e.seq = ep.seq WHERE ep.profile_id IN (SELECT profile_id FROM sample)"
                         ).fetchall()
    for pid, seq, name, ts, props in events:
        profiles[pid].events.append(Event(seq, name, ts, orjson.loads(props) if props else {}))
    return list(profiles.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True, help="a database built by segment_data.py")
    parser.add_argument("--profiles", type=int, default=20_000)
    args = parser.parse_args()
    service = Portrait(Settings(db_path=args.db), background=False)
    try:
        connection: duckdb.DuckDBPyConnection = service.store.session()._con  # type: ignore[attr-defined]
        profiles = load(connection, args.profiles)
        events = sum(len(p.events) for p in profiles)
        condition = parse(CONDITION)
        schema = service.segments.schema()
        check(condition, schema)
        predicate = compile_predicate(condition, schema, NOW)
        started = time.perf_counter()
        members = {p.profile_id for p in profiles if predicate(p)}
        seconds = time.perf_counter() - started
        compiled = compile_condition(condition, schema, NOW)
        query = compiled.members().where("p.profile_id IN (SELECT profile_id FROM sample)")
        in_sql = {row[0] for row in connection.execute(query.sql("duckdb"), compiled.params).fetchall()}
        assert members == in_sql, (len(members), len(in_sql))
    finally:
        service.close()
    rate = len(profiles) / seconds
    print(f"{len(profiles):,} profiles ({events:,} events) evaluated in {seconds * 1000:.0f} ms: {rate:,.0f} "
          f"profiles/s, {len(members)} members, same as SQL (target >= 20,000/s)")
    write_result("segment_evaluator", {"profiles": len(profiles), "events": events, "seconds": round(seconds, 4),
                                       "profiles_per_second": round(rate), "members": len(members)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
