"""Figure: processor throughput with many profiles -- growing batches (PORTRAIT_PROCESSOR_MAX_BATCH_SIZE) against
fixed 20,000-event batches, in process, measured alternately in the same run.

Part of every batch's cost grows with the number of identities, not events: DuckDB joins the batch's identifiers
against the whole identities table by scanning it. This script builds N profiles through the real service (the
same build as ``lookup_latency.py``: identify with userId and email, a few track events), then, for each round and
each mode, copies that database, ingests the same backlog of traffic (90% "Product Viewed" track / 10% identify
with email, as ``ingest_load.lua`` sends, from random existing customers with a new anonymousId each) and times
``process_pending`` on it.

    .venv/bin/python benchmarks/processor_scale.py [--profiles 1000000] [--events 200000] [--rounds 2] [--keep PATH]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import write_result
from lookup_latency import build

from portrait.config import Settings
from portrait.service import Portrait

NAME = "processor_scale"
BASE = 20_000
MODES = {"fixed": BASE, "growing": Settings.processor_max_batch_size}  # max batch size per mode


def traffic(profiles: int, events: int, seed: int) -> list[dict[str, Any]]:
    """Messages from existing customers: mostly product views, every 10th an identify with the email."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for n in range(events):
        k = rng.randrange(profiles)
        common = {"userId": f"u{k}", "anonymousId": f"a{k}", "messageId": f"scale-{seed}-{n}",
                  "timestamp": "2026-11-20T10:00:00.000Z"}
        if n % 10 == 9:
            out.append({"type": "identify", **common, "traits": {"email": f"user{k}@example.com", "plan": "pro"}})
        else:
            out.append({"type": "track", "event": "Product Viewed", **common,
                        "properties": {"product_id": f"p-{rng.randrange(500)}", "price": 49.99}})
    return out


def run_mode(template: Path, work: Path, max_batch: int, messages: list[dict[str, Any]]) -> dict[str, float]:
    db = work / "copy.duckdb"
    shutil.copyfile(template, db)
    p = Portrait(Settings(db_path=str(db), processor_batch_size=BASE, processor_max_batch_size=max_batch),
                 background=False)
    try:
        p.ingest_messages(messages, source="bench")
        started = time.perf_counter()
        done = p.process_pending()
        seconds = time.perf_counter() - started
    finally:
        p.close()
        db.unlink()
    return {"events": done, "seconds": seconds, "events_per_s": done / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=1_000_000, help="profiles to build (default 1,000,000)")
    parser.add_argument("--events", type=int, default=200_000, help="backlog processed per run (default 200,000)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both modes (default 2)")
    parser.add_argument("--keep", metavar="PATH", help="keep the built database at PATH (reuse it if it exists)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="portrait-scale-") as tmp:
        work = Path(tmp)
        template = Path(args.keep) if args.keep else work / "template.duckdb"
        if not template.exists():
            print(f"building {args.profiles:,} profiles ...", flush=True)
            builder = Portrait(Settings(db_path=str(template)), background=False)
            build(builder, args.profiles)
            builder.close()
        runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
        for round_no in range(args.rounds):
            messages = traffic(args.profiles, args.events, seed=round_no)
            for mode, max_batch in MODES.items():
                result = run_mode(template, work, max_batch, messages)
                runs[mode].append(result)
                print(f"  round {round_no + 1} {mode:<8} (batches up to {max_batch:>7,}): "
                      f"{result['events']:,} events in {result['seconds']:.1f} s = "
                      f"{result['events_per_s']:,.0f} events/s", flush=True)
    ratios = [g["events_per_s"] / f["events_per_s"] for f, g in zip(runs["fixed"], runs["growing"], strict=True)]
    summary = {
        "profiles": args.profiles,
        "fixed_events_per_s": statistics.median(r["events_per_s"] for r in runs["fixed"]),
        "growing_events_per_s": statistics.median(r["events_per_s"] for r in runs["growing"]),
        "ratio_growing_to_fixed": statistics.median(ratios),
    }
    path = write_result(NAME, {
        "figure": "Processor throughput with many profiles: growing vs fixed 20,000-event batches, in process",
        "options": vars(args), "summary": summary, "runs": runs, "wall_s": time.monotonic() - started,
    })
    print()
    print(f"Processor over {args.profiles:,} profiles, backlog of {args.events:,} events, in process:")
    print(f"  fixed 20,000-event batches    {summary['fixed_events_per_s']:>9,.0f} events/s")
    print(f"  growing batches (to {MODES['growing']:,})  {summary['growing_events_per_s']:>9,.0f} events/s  "
          f"(x{summary['ratio_growing_to_fixed']:.2f}, per-round ratios "
          f"{', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"  result                        {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
