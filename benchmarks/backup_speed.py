"""Figure: how long a backup takes, per MB of database, idle and while events keep arriving -- and that they do
keep arriving (events committed by another thread during the backup).

Builds N profiles through the real service (``lookup_latency.build``), then alternately, ``--rounds`` times:
a backup with nothing else running, and a backup while a thread ingests batches of 100 messages without pause.

    .venv/bin/python benchmarks/backup_speed.py [--profiles 100000] [--rounds 3] [--keep PATH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import write_result
from lookup_latency import build

from portrait.config import Settings
from portrait.service import Portrait

NAME = "backup_speed"


def _ingest_until(service: Portrait, stop: threading.Event, counted: list[int]) -> None:
    number = 0
    while not stop.is_set():
        batch = [{"type": "track", "userId": f"u{(number + i) % 1000}", "event": "Product Viewed",
                  "messageId": f"backup-bench-{number + i}", "properties": {"sku": f"s{i}"}} for i in range(100)]
        counted[0] += service.ingest_messages(batch, source="bench").accepted
        number += 100


def one_backup(service: Portrait, *, with_traffic: bool) -> dict[str, float]:
    stop, counted = threading.Event(), [0]
    sender = threading.Thread(target=_ingest_until, args=(service, stop, counted))
    if with_traffic:
        sender.start()
        time.sleep(0.5)  # traffic under way before the backup starts
    before = counted[0]
    made = service.backups.make()
    during = counted[0] - before
    if with_traffic:
        stop.set()
        sender.join()
    Path(made["path"]).unlink()
    return {"seconds": made["seconds"], "mb": made["bytes"] / 1e6, "s_per_mb": made["seconds"] / (made["bytes"] / 1e6),
            "events_committed_during": during}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=100_000, help="profiles to build (default 100,000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--keep", metavar="PATH", help="keep the built database at PATH (reuse it if it exists)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="portrait-backup-") as tmp:
        db = Path(args.keep) if args.keep else Path(tmp) / "bench.duckdb"
        settings = Settings(db_path=str(db), backup_dir=str(Path(tmp) / "backups"), backup_keep=0)
        service = Portrait(settings, background=False)
        try:
            if service.status()["profiles"] < args.profiles:
                print(f"building {args.profiles:,} profiles ...", flush=True)
                build(service, args.profiles)
            runs: dict[str, list[dict[str, float]]] = {"idle": [], "traffic": []}
            for round_no in range(args.rounds):
                for mode in runs:
                    result = one_backup(service, with_traffic=mode == "traffic")
                    runs[mode].append(result)
                    print(f"  round {round_no + 1} {mode:<7}: {result['mb']:,.0f} MB in {result['seconds']:.2f} s "
                          f"({result['s_per_mb'] * 1000:.1f} ms/MB), {result['events_committed_during']:,} events "
                          "committed meanwhile", flush=True)
        finally:
            service.close()
    summary: dict[str, Any] = {
        mode: {"median_seconds": statistics.median(r["seconds"] for r in found),
               "median_ms_per_mb": 1000 * statistics.median(r["s_per_mb"] for r in found),
               "events_committed_during": [r["events_committed_during"] for r in found]}
        for mode, found in runs.items()}
    path = write_result(NAME, {"figure": "Backup time per MB, idle and under ingestion, in process",
                               "options": vars(args), "summary": summary, "runs": runs})
    print(f"\nBackup of a {runs['idle'][0]['mb']:,.0f} MB database ({args.profiles:,} profiles):")
    for mode, figures in summary.items():
        print(f"  {mode:<7} {figures['median_seconds']:.2f} s ({figures['median_ms_per_mb']:.1f} ms/MB)")
    print(f"  result  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
