"""Figure: reading a profile with many events costs what reading a small one does (supports the 1M lookup figure).

A customer with thousands of events (a loyal buyer, a kiosk, a bot) must not make its profile slow to read. Builds,
through the real service, ``--background`` ordinary profiles (one identify each) and three heavy ones with
``--heavy`` events each (default 10,000, 100,000 and 400,000 page views), then times ``Portrait.profile`` for a
heavy profile and for random ordinary ones, in process.

    .venv/bin/python benchmarks/heavy_profile_read.py [--background 200000] [--heavy 10000,100000,400000]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import percentiles, write_result

from portrait.config import Settings
from portrait.service import Portrait

NAME = "heavy_profile_read"
CHUNK = 50_000
READS = 200
BASE_TIME = datetime(2026, 3, 1, tzinfo=UTC)


def _stamp(seconds: int) -> str:
    return (BASE_TIME + timedelta(seconds=seconds)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ingest(p: Portrait, messages: list[dict[str, Any]]) -> None:
    for start in range(0, len(messages), CHUNK):
        p.ingest_messages(messages[start:start + CHUNK], source="bench")
        p.process_pending()


def build(p: Portrait, background: int, heavy: list[int]) -> None:
    _ingest(p, [{"type": "identify", "userId": f"u{i}", "messageId": f"bg-{i}", "timestamp": _stamp(i),
                 "traits": {"email": f"user{i}@example.com", "plan": "pro"}} for i in range(background)])
    for h, events in enumerate(heavy):
        _ingest(p, [{"type": "page", "name": "Home", "userId": f"heavy{h}", "messageId": f"heavy{h}-{i}",
                     "timestamp": _stamp(i), "properties": {"path": f"/p/{i % 100}"}} for i in range(events)])
        print(f"  heavy{h}: {events:,} events", flush=True)


def timed_reads(p: Portrait, references: list[str]) -> dict[str, float]:
    timings = []
    for ref in references:
        started = time.perf_counter_ns()
        p.profile(ref)
        timings.append((time.perf_counter_ns() - started) / 1e6)
    return percentiles(timings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--background", type=int, default=200_000, help="ordinary profiles (default 200,000)")
    parser.add_argument("--heavy", default="10000,100000,400000", help="events of each heavy profile")
    args = parser.parse_args(argv)
    heavy = [int(n) for n in args.heavy.split(",")]
    rng = random.Random(1)
    with tempfile.TemporaryDirectory(prefix="portrait-heavy-") as tmp:
        p = Portrait(Settings(db_path=str(Path(tmp) / "heavy.duckdb")), background=False)
        try:
            print(f"building {args.background:,} ordinary profiles and {len(heavy)} heavy ones ...", flush=True)
            build(p, args.background, heavy)
            ordinary = timed_reads(p, [f"user_id:u{rng.randrange(args.background)}" for _ in range(READS)])
            results = {f"heavy{h}": {"events": n, "events_count": p.profile(f"user_id:heavy{h}")["events_count"],
                                     "ms": timed_reads(p, [f"user_id:heavy{h}"] * READS)}
                       for h, n in enumerate(heavy)}
        finally:
            p.close()
    path = write_result(NAME, {"figure": "Profile read with many events", "options": vars(args),
                               "ordinary_ms": ordinary, "heavy": results})
    print(f"\nprofile() in process, {READS} reads each")
    print(f"  ordinary profile (1 event)   p50 {ordinary['p50']:.2f} ms  p99 {ordinary['p99']:.2f} ms")
    for name, result in results.items():
        ms = result["ms"]
        print(f"  {name} ({result['events_count']:>9,} events)  p50 {ms['p50']:.2f} ms  p99 {ms['p99']:.2f} ms")
    print(f"  result {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
