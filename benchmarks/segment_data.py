"""The benchmark generator for segments (issue #4): N profiles and M events written straight into a store's tables.

Ingesting 20M events through HTTP would take most of an hour here, and the segment figures measure reads, so the
tables the condition engines read (profiles, profile_traits, identities, event_profiles, events) are filled with
set-based DuckDB SQL in the shape the processor leaves them: events in log order with times rising over a year,
e-commerce event names, JSON properties, typed traits registered in the attribute registry. The ``events`` table
is rebuilt without its message-id primary key (a write-path index no read uses; building it for 20M rows would
dominate the run).

    .venv/bin/python benchmarks/segment_data.py --profiles 1000000 --events 20000000 --db /tmp/seg/db.duckdb
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))

from portrait.config import Settings
from portrait.service import Portrait

NOW = datetime(2026, 11, 1)  # the generated year ends here; benchmarks evaluate "now" at this time
EVENT_MIX = [("Page Viewed", 45), ("Product Viewed", 25), ("Product Added", 10), ("Checkout Started", 5),
             ("Order Completed", 8), ("Login", 7)]
COUNTRIES = ["PL", "TR", "DE", "FR", "GB", "US", "ES", "IT", "NL", "SE"]


def build(path: Path, profiles: int, events: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    service = Portrait(Settings(db_path=str(path)), background=False)  # migrations, standard attributes
    for code, kind in (("country", "string"), ("plan", "enum")):
        service.attributes.create({"code": code, "name": code, "type": kind})
    service.close()
    con = duckdb.connect(str(path))
    con.execute("SET TimeZone = 'UTC'")
    started = time.perf_counter()
    con.execute(f"""
        INSERT INTO profiles SELECT 'p' || lpad(i::VARCHAR, 8, '0'), i, TIMESTAMP '{NOW}' - INTERVAL 400 DAY
        FROM range({profiles}) t(i)""")
    con.execute("""
        INSERT INTO identities SELECT 'user_id:u' || substr(profile_id, 2), 'user_id', 'u' || substr(profile_id, 2),
               profile_id, created_at, created_seq FROM profiles""")
    countries = "[" + ", ".join(f"'{c}'" for c in COUNTRIES) + "]"
    con.execute(f"""
        INSERT INTO profile_traits
        SELECT profile_id, key, value, created_at, created_seq FROM (
            SELECT profile_id, created_at, created_seq,
                   to_json({countries}[1 + CAST(hash(profile_id) % 10 AS BIGINT)]) AS country,
                   to_json(18 + CAST(hash(profile_id || 'a') % 60 AS BIGINT)) AS age,
                   to_json(['free', 'pro', 'team'][1 + CAST(hash(profile_id || 'p') % 3 AS BIGINT)]) AS plan,
                   to_json('user' || substr(profile_id, 2) || '@example.com') AS email
            FROM profiles)
        UNPIVOT (value FOR key IN (country, age, plan, email))""")
    names = " ".join(f"WHEN r < {sum(w for _, w in EVENT_MIX[:k + 1])} THEN '{n}'" for k, (n, _) in
                     enumerate(EVENT_MIX))
    con.execute("DROP TABLE events")
    con.execute(f"""
        CREATE TABLE events AS
        SELECT seq, 'bench-' || seq AS message_id, 'track' AS type, name AS event, user_id,
               NULL::VARCHAR AS anonymous_id, NULL::VARCHAR AS previous_id, NULL::VARCHAR AS group_id,
               ts AS timestamp, ts AS original_timestamp, ts AS sent_at, ts AS received_at,
               CASE WHEN name = 'Order Completed'
                    THEN json_object('revenue', round(5 + CAST(hash(seq) % 20000 AS BIGINT) / 100.0, 2),
                                     'currency', 'EUR')::VARCHAR
                    WHEN name LIKE 'Product%'
                    THEN json_object('sku', 'SKU-' || CAST(hash(seq) % 5000 AS BIGINT))::VARCHAR
                    ELSE '{{}}' END AS properties,
               NULL::VARCHAR AS traits, '{{}}' AS context, 'benchmark' AS source, NULL::VARCHAR AS ip,
               NULL::VARCHAR AS identity_hints, NULL::VARCHAR AS extra, profile_id
        FROM (
            SELECT i + 1 AS seq, TIMESTAMP '{NOW}' - INTERVAL 365 DAY + to_microseconds(
                       CAST(i * (365 * 86400 * 1e6 / {events}) AS BIGINT)) AS ts,
                   'p' || lpad((CAST(hash(i) % {profiles} AS BIGINT))::VARCHAR, 8, '0') AS profile_id,
                   'u' || lpad((CAST(hash(i) % {profiles} AS BIGINT))::VARCHAR, 8, '0') AS user_id,
                   CASE {names} END AS name
            FROM (SELECT i, CAST(hash(i * 7919) % 100 AS BIGINT) AS r FROM range({events}) t(i)))
        ORDER BY seq""")
    con.execute("INSERT INTO event_profiles SELECT seq, profile_id, timestamp, type, event FROM events")
    con.execute("ALTER TABLE events DROP COLUMN profile_id")
    con.execute("UPDATE counters SET value = ? WHERE name = 'events_received'", [events])
    con.execute("UPDATE processor_state SET value = ? WHERE name IN ('watermark', 'events_processed')", [events])
    con.execute("UPDATE segment_state SET value = ? WHERE name = 'watermark'", [events])
    con.execute("CHECKPOINT")
    con.close()
    print(f"built {profiles:,} profiles and {events:,} events in {time.perf_counter() - started:.0f} s: {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--db", type=Path, required=True)
    args = parser.parse_args()
    build(args.db, args.profiles, args.events)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
