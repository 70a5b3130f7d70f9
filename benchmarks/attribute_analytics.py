"""Figure (issue #3): attribute analytics at 1M profiles, under 1 s per attribute.

Uses a database built by ``lookup_latency.py --keep PATH`` (1M profiles with email, name and plan traits), turns
analytics on for a few attributes and times ``/api/attributes/{code}/analytics``'s service call for each.

    .venv/bin/python benchmarks/lookup_latency.py --profiles 1000000 --keep /tmp/lk1m/db.duckdb
    .venv/bin/python benchmarks/attribute_analytics.py --db /tmp/lk1m/db.duckdb
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result

from portrait.config import Settings
from portrait.errors import NotFound
from portrait.service import Portrait


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True, help="a database built by lookup_latency.py --keep")
    args = parser.parse_args()
    service = Portrait(Settings(db_path=args.db), background=False)
    service.process_pending()
    timings = {}
    for code in ("plan", "email", "name"):
        try:
            service.attributes.get(code)
        except NotFound:
            service.attributes.create({"code": code, "name": code})
        service.attributes.update(code, {"calculate_analytics": True})
        started = time.perf_counter()
        stats = service.attributes.analytics(code)
        timings[code] = {"seconds": round(time.perf_counter() - started, 3), "filled": stats["filled"],
                         "distinct": stats["distinct"]}
    profiles = service.status()["profiles"]
    service.close()
    path = write_result("attribute_analytics", {"profiles": profiles, "attributes": timings})
    print(f"Attribute analytics over {profiles:,} profiles")
    for code, row in timings.items():
        print(f"  {code:<6} {row['seconds']:.3f} s  ({row['filled']:,} values, {row['distinct']:,} distinct; "
              f"under 1 s: {'yes' if row['seconds'] < 1 else 'NO'})")
    print(f"  result {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
