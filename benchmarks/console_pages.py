"""Figure (issue #6): every console page renders in under 1 s of server time at 1M profiles.

Signs in to the console in process (the same ASGI app `portrait serve` runs) on a database built by
``segment_data.py`` (1M profiles, 20M events), creates a segment, and times each page: overview, attribute
dashboard and one attribute's analytics, customer search (by identifier prefix and by exact identity), the customer
card, the segment list, a segment's page, the builder's live count, funnels, events.

    .venv/bin/python benchmarks/console_pages.py --db /tmp/seg/db.duckdb
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result

from portrait.api import create_app
from portrait.config import Settings
from portrait.service import Portrait

KEY = "ak_console_benchmark"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True, help="a database built by segment_data.py")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    service = Portrait(Settings(db_path=args.db, admin_key=KEY, rate_limit=0), background=False)
    timings: dict[str, float] = {}
    try:
        if not any(s["name"] == "Bench buyers" for s in service.segments.all()):
            # Straight through the registry: the generated log has no message-id key, so no audience events here.
            service.segments.create({"name": "Bench buyers", "condition": 'performed("Order Completed", within = 30d)'})
        segment_id = next(s["id"] for s in service.segments.all() if s["name"] == "Bench buyers")
        service.attributes.update("country", {"calculate_analytics": True})
        with TestClient(create_app(portrait=service)) as client:
            client.post("/login", content=f"key={KEY}", headers={"Content-Type": "application/x-www-form-urlencoded"})
            card = re.search(r'href="/customers/([^"]+)"', client.get("/customers?q=user_id:u00000042").text)
            assert card, "the customer search found nobody"
            csrf = re.search(r'data-csrf="([^"]+)"', client.get("/").text)
            assert csrf
            pages = {
                "overview": lambda: client.get("/"),
                "attributes": lambda: client.get("/attributes"),
                "attribute analytics": lambda: client.get("/attributes/country"),
                "search by identity": lambda: client.get("/customers?q=user_id:u00000042"),
                "search by prefix": lambda: client.get("/customers?q=user0000004"),
                "customer card": lambda: client.get(f"/customers/{card.group(1)}"),
                "segments": lambda: client.get("/segments"),
                "segment page": lambda: client.get(f"/segments/{segment_id}"),
                "builder live count": lambda: client.post(
                    "/console/api/preview", json={"condition": 'country = "PL" and performed("Order Completed")'},
                    headers={"X-CSRF-Token": csrf.group(1)}),
                "funnels": lambda: client.get("/funnels?steps=Product%20Viewed,Product%20Added,Order%20Completed"),
                "events": lambda: client.get("/events"),
            }
            for name, fetch in pages.items():
                seconds = []
                for _ in range(args.runs):
                    started = time.perf_counter()
                    response = fetch()
                    seconds.append(time.perf_counter() - started)
                    assert response.status_code == 200, (name, response.status_code, response.text[:300])
                timings[name] = round(statistics.median(seconds) * 1000)
                print(f"{timings[name]:>6} ms  {name}")
    finally:
        service.close()
    worst = max(timings.values())
    print(f"slowest page: {worst} ms (target < 1000 ms)")
    write_result("console_pages", {"pages_ms": timings, "slowest_ms": worst})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
