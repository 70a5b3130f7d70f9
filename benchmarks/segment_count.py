"""Figure (issue #4): a behavioral segment count on 1M profiles / 20M events, against a hand-written DuckDB query.

The condition is the issue's example (without the reference to another segment):

    country in ("PL", "TR") and age between 25 and 40
    and performed("Order Completed", count >= 2, within = 30d, where revenue > 50)

Portrait compiles it through SQLGlot (``Segments`` + ``portrait.sql.conditions``); the baseline is the query a
person would write by hand for the same question. Both run on the same connection in the same process, warm,
alternating, and the medians are compared: target ratio <= 2 and under 300 ms.

    .venv/bin/python benchmarks/segment_data.py --db /tmp/seg/db.duckdb      # 1M profiles, 20M events (once)
    .venv/bin/python benchmarks/segment_count.py --db /tmp/seg/db.duckdb
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result
from segment_data import NOW

from portrait.conditions import check, parse
from portrait.config import Settings
from portrait.service import Portrait
from portrait.sql.conditions import compile_condition

CONDITION = ('country in ("PL", "TR") and age between 25 and 40 and '
             'performed("Order Completed", count >= 2, within = 30d, where revenue > 50)')
# What a person fluent in SQL would write for the same question on the same tables: each part a set of profile
# ids, intersected; the events scan narrowed by name and time on both tables (the log is in time order).
BASELINE = """
SELECT count(*) FROM (
    SELECT profile_id FROM profile_traits WHERE key = 'country' AND json_extract_string(value, '$') IN ('PL', 'TR')
    INTERSECT
    SELECT profile_id FROM profile_traits WHERE key = 'age'
      AND TRY_CAST(json_extract_string(value, '$') AS DOUBLE) BETWEEN 25 AND 40
    INTERSECT
    SELECT ep.profile_id FROM event_profiles AS ep JOIN events AS e ON e.seq = ep.seq
    WHERE ep.event = 'Order Completed' AND ep.timestamp >= $since
      AND e.event = 'Order Completed' AND e.timestamp >= $since
      AND TRY_CAST(json_extract_string(e.properties, '$.revenue') AS DOUBLE) > 50
    GROUP BY ep.profile_id HAVING count(*) >= 2
)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True, help="a database built by segment_data.py")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    service = Portrait(Settings(db_path=args.db), background=False)
    try:
        condition = parse(CONDITION)
        schema = service.segments.schema()
        check(condition, schema)
        compiled = compile_condition(condition, schema, NOW)
        statement = compiled.count()
        connection = service.store.session()._con  # type: ignore[attr-defined]  # the same DuckDB connection
        since = {"since": NOW - timedelta(days=30)}
        ours, baseline = [], []
        ours_count = base_count = -1
        for run in range(args.runs + 1):  # the first round warms caches and is not counted
            started = time.perf_counter()
            ours_count = int(service._reads.execute(statement, compiled.params)[0][0])
            ours_time = time.perf_counter() - started
            started = time.perf_counter()
            base_count = int(connection.execute(BASELINE, since).fetchone()[0])
            base_time = time.perf_counter() - started
            if run:
                ours.append(ours_time)
                baseline.append(base_time)
        assert ours_count == base_count, (ours_count, base_count)
        result = {"condition": CONDITION, "members": ours_count,
                  "portrait_ms": round(statistics.median(ours) * 1000, 1),
                  "baseline_ms": round(statistics.median(baseline) * 1000, 1),
                  "ratio": round(statistics.median(ours) / statistics.median(baseline), 2), "runs": args.runs}
    finally:
        service.close()
    print(f"{result['members']:,} members: Portrait {result['portrait_ms']} ms, hand-written DuckDB "
          f"{result['baseline_ms']} ms, ratio {result['ratio']} (target <= 2 and < 300 ms)")
    write_result("segment_count", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
