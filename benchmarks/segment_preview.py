"""Figure (issue #4): a segment preview (count and sample of an unsaved condition) on 1M profiles / 20M events,
under 1 s -- fast enough to update while someone edits the condition.

Times ``Segments.preview`` (what ``POST /api/segments/preview`` runs) for a few conditions of different kinds.

    .venv/bin/python benchmarks/segment_preview.py --db /tmp/seg/db.duckdb   # built by segment_data.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result
from segment_data import NOW

from portrait.config import Settings
from portrait.service import Portrait

CONDITIONS = [
    'country in ("PL", "TR") and age between 25 and 40',
    'country in ("PL", "TR") and age between 25 and 40 and '
    'performed("Order Completed", count >= 2, within = 30d, where revenue > 50)',
    'sum("Order Completed", revenue, within = 90d) > 500 or plan = "team"',
    'stopped("Login", recent = 30d, earlier = 60d) and not performed("Order Completed", within = 90d)',
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True, help="a database built by segment_data.py")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    service = Portrait(Settings(db_path=args.db), background=False)
    timings = []
    try:
        for text in CONDITIONS:
            seconds = []
            count = 0
            for run in range(args.runs + 1):  # the first run warms caches
                started = time.perf_counter()
                count = service.segments.preview(text, now=NOW)["count"]
                if run:
                    seconds.append(time.perf_counter() - started)
            timings.append({"condition": text, "count": count, "median_ms": round(statistics.median(seconds) * 1000),
                            "max_ms": round(max(seconds) * 1000)})
            print(f"{timings[-1]['median_ms']:>5} ms (max {timings[-1]['max_ms']}) {count:>8,}  {text}")
    finally:
        service.close()
    worst = max(t["median_ms"] for t in timings)
    print(f"slowest preview: {worst} ms (target < 1000 ms)")
    write_result("segment_preview", {"previews": timings, "slowest_median_ms": worst})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
