"""Figure: profile lookup by identifier with 1M profiles -- p99 < 5 ms in-process.

Builds a database of N profiles through the real service (``Portrait.ingest_messages`` in chunks of 10,000
identify messages, plus a few track events with consent statements for every 10th profile, then
``process_pending``), then times, in process, ``Portrait.profile("email:user{k}@example.com")`` (the full profile
read: traits, identities, merges, conflicts, consents) and ``Portrait.resolve_profile_id(...)`` for random k.

    .venv/bin/python benchmarks/lookup_latency.py [--profiles 1000000] [--lookups 5000] [--keep PATH]

With ``--keep PATH`` the database is written to PATH and kept; if PATH exists it is reused and the build skipped.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import percentiles, write_result

from portrait.config import Settings
from portrait.service import Portrait

NAME = "lookup_latency"
CHUNK = 10_000
TRACKS_EVERY = 10  # every 10th profile also gets TRACKS_PER_PROFILE track events
TRACKS_PER_PROFILE = 3
PLANS = ("free", "pro", "team", "enterprise")
FIRST_NAMES = ("Ann", "Bob", "Chloe", "Dmitri", "Eda", "Femi", "Giulia", "Hiro", "Ines", "Jonas")
BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)


def messages_for(start: int, stop: int) -> list[dict[str, Any]]:
    """Identify messages for profiles ``start..stop-1`` plus track events for some of them."""
    out: list[dict[str, Any]] = []
    for i in range(start, stop):
        stamp = (BASE_TIME + timedelta(seconds=i)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        out.append({
            "type": "identify", "userId": f"u{i}", "messageId": f"bench-{i}", "timestamp": stamp,
            "traits": {"email": f"user{i}@example.com", "name": f"{FIRST_NAMES[i % len(FIRST_NAMES)]} {i}",
                       "plan": PLANS[i % len(PLANS)]},
        })
        if i % TRACKS_EVERY == 0:
            out.extend({
                "type": "track", "event": "Product Viewed", "userId": f"u{i}", "messageId": f"bench-{i}-t{n}",
                "timestamp": stamp, "properties": {"product_id": f"p-{(i + n) % 500}", "price": 49.99},
                # a cookie banner's answer: the profile read includes the consent history
                "context": {"consent": {"categoryPreferences": {"analytics": True, "email": n % 2 == 0}}},
            } for n in range(TRACKS_PER_PROFILE))
    return out


def build(p: Portrait, profiles: int) -> dict[str, float]:
    """Ingest and process in chunks; prints progress. Returns timings."""
    started = time.perf_counter()
    ingest_s = process_s = 0.0
    events = 0
    for start in range(0, profiles, CHUNK):
        stop = min(profiles, start + CHUNK)
        batch = messages_for(start, stop)
        t0 = time.perf_counter()
        result = p.ingest_messages(batch, source="bench")
        t1 = time.perf_counter()
        p.process_pending()
        t2 = time.perf_counter()
        ingest_s += t1 - t0
        process_s += t2 - t1
        events += len(batch)
        if result.rejected or result.duplicates:
            print(f"  warning: chunk at {start}: {result}", flush=True)
        elapsed = t2 - started
        print(f"  {stop:>10,} / {profiles:,} profiles  {events:>10,} events  "
              f"chunk: ingest {len(batch) / (t1 - t0):>9,.0f} ev/s, process {len(batch) / (t2 - t1):>8,.0f} ev/s  "
              f"overall {stop / elapsed:>7,.0f} profiles/s  {elapsed:6.1f} s", flush=True)
    return {"build_s": time.perf_counter() - started, "ingest_s": ingest_s, "process_s": process_s,
            "events": events}


def measure(call: Callable[[str], Any], keys: list[int]) -> dict[str, float]:
    """Time ``call`` for each key (ms); returns p50/p95/p99/max/mean."""
    timings: list[float] = []
    for k in keys:
        ref = f"email:user{k}@example.com"
        t0 = time.perf_counter_ns()
        call(ref)
        timings.append((time.perf_counter_ns() - t0) / 1e6)
    return percentiles(timings)


@contextmanager
def database(keep: str | None) -> Iterator[Path]:
    if keep:
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        yield Path(keep)
        return
    with tempfile.TemporaryDirectory(prefix="portrait-lookup-") as tmp:
        yield Path(tmp) / "lookup.duckdb"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=1_000_000, help="profiles to build (default 1,000,000)")
    parser.add_argument("--lookups", type=int, default=5_000, help="timed lookups per call (default 5,000)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed lookups first (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="random seed for the looked-up keys")
    parser.add_argument("--keep", metavar="PATH", help="keep the database at PATH (reuse it if it exists)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with database(args.keep) as db_path:
        reused = db_path.exists()
        p = Portrait(Settings(db_path=str(db_path)), background=False)
        try:
            if reused:
                print(f"reusing {db_path}; processing anything pending...", flush=True)
                p.process_pending()
                timings: dict[str, float] = {}
            else:
                print(f"building {args.profiles:,} profiles in {db_path} ...", flush=True)
                timings = build(p, args.profiles)
            status = p.status()
            profiles = int(status["profiles"])
            if reused and profiles != args.profiles:
                print(f"  note: the database holds {profiles:,} profiles (--profiles {args.profiles:,})")
            population = min(profiles, args.profiles)
            if population == 0:
                print("no profiles to look up", file=sys.stderr)
                return 1
            rng = random.Random(args.seed)
            for k in rng.sample(range(population), min(args.warmup, population)):
                p.profile(f"email:user{k}@example.com")
            keys = [rng.randrange(population) for _ in range(args.lookups)]
            print(f"timing {len(keys):,} lookups of each kind over {population:,} profiles ...", flush=True)
            profile_ms = measure(p.profile, keys)
            resolve_ms = measure(p.resolve_profile_id, keys)
            sample = p.profile(f"email:user{keys[0]}@example.com")
        finally:
            p.close()
        db_bytes = db_path.stat().st_size if db_path.exists() else 0
    summary = {
        "profiles": profiles,
        "events_in_log": int(status["events_received"]),
        "profile_ms": profile_ms,
        "resolve_ms": resolve_ms,
        "profile_p99_under_5ms": profile_ms["p99"] < 5.0,
        "resolve_p99_under_5ms": resolve_ms["p99"] < 5.0,
        "build_s": timings.get("build_s"),
        "build_profiles_per_s": profiles / timings["build_s"] if timings else None,
        "database_bytes": db_bytes,
        "reused_database": reused,
    }
    path = write_result(NAME, {
        "figure": "Profile lookup by identifier with 1M profiles: p99 < 5 ms in-process",
        "options": vars(args), "summary": summary, "build": timings, "sample_profile": sample,
        "wall_s": time.monotonic() - started,
    })

    def row(label: str, ms: dict[str, float]) -> str:
        return (f"  {label:<22} p50 {ms['p50']:.2f} ms  p95 {ms['p95']:.2f} ms  p99 {ms['p99']:.2f} ms  "
                f"max {ms['max']:.2f} ms  {'(p99 < 5 ms: yes)' if ms['p99'] < 5 else '(p99 < 5 ms: NO)'}")

    print()
    print(f"Lookup by email over {profiles:,} profiles ({status['events_received']:,} events), "
          f"{len(keys):,} random lookups, in process")
    print(row("profile() full read", profile_ms))
    print(row("resolve_profile_id()", resolve_ms))
    if timings:
        print(f"  build                  {timings['build_s']:.1f} s ({summary['build_profiles_per_s']:,.0f} "
              f"profiles/s; ingest {timings['ingest_s']:.1f} s, process {timings['process_s']:.1f} s), "
              f"database {db_bytes / 1e6:,.0f} MB")
    print(f"  result                 {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
