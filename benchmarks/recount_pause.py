"""Figure: how long the full recount (``Segments.recount_all``, what the segment thread runs every
``recount_seconds``, and what a segment created, changed or recounted from the API runs for that segment) pauses
processing -- while it is paused, no event reaches its profile.

Copies a database built by ``segment_data.py``, creates ``--segments`` of segment_refresh.py's conditions in it, then
runs ``recount_all`` twice (see one_pass) while a stand-in processor (a thread) ingests a batch of trait changes for
existing customers every 0.25 s and processes it holding the same pause a server's processor thread holds. Reports
each pass, the longest single hold of the pause, the pause held in all, and the processor's longest wait for it.

With ``--create`` it measures instead the writes that move most memberships at once: creating a segment that
nearly every profile enters (``performed("Page Viewed")``), then changing its condition to its negation (nearly
every member leaves), the same stand-in processor running throughout.

With ``--src`` (twice or more) each round runs once per source folder in a child process, alternating, so that old
and new code are measured on the same data under the same load:

    .venv/bin/python benchmarks/segment_data.py --profiles 200000 --events 2000000 --db /tmp/seg/db.duckdb
    .venv/bin/python benchmarks/recount_pause.py --db /tmp/seg/db.duckdb [--segments 20] [--rounds 2]
                                                 [--src OLD/src --src NEW/src] [--create]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result
from segment_data import NOW
from segment_refresh import CONDITIONS

from portrait.config import Settings
from portrait.service import Portrait
from portrait.sql import parse

BROAD = 'performed("Page Viewed")'  # ~99% of segment_data.py's profiles
BATCH = 100  # trait changes per processed batch
EVERY = 0.25  # seconds between batches


@contextmanager
def timed_pause(service: Portrait, pause: threading.Lock, holds: list[float]) -> Iterator[None]:
    """The segments take ``pause`` (what ProcessorThread.paused holds in a server); each hold's length is kept."""

    @contextmanager
    def timed() -> Iterator[None]:
        with pause:
            started = time.perf_counter()
            try:
                yield
            finally:
                holds.append(time.perf_counter() - started)

    service.segments._exclusive = timed
    yield


def processing(service: Portrait, pause: threading.Lock, users: list[str], stop: threading.Event,
               waits: list[float]) -> None:
    """Ingest and process a batch of trait changes every EVERY seconds; ``waits``: how long each waited to run."""
    rng = random.Random(7)
    while not stop.is_set():
        n = time.time_ns()  # messageIds unique across passes (a repeated one is dropped as a duplicate)
        service.ingest_messages([{"type": "identify", "userId": rng.choice(users), "messageId": f"p{n}-{k}",
                                  "traits": {"plan": rng.choice(["free", "pro", "team"])}} for k in range(BATCH)])
        asked = time.perf_counter()
        with pause:
            waits.append(time.perf_counter() - asked)
            service.processor.drain()
        stop.wait(EVERY)


def measure(db: Path, segment_count: int, create: bool) -> dict[str, Any]:
    service = Portrait(Settings(db_path=str(db)), background=False)
    try:
        if create:
            return {"segments": 1, "passes": [broad_writes(service, some_users(service))]}
        for number, text in enumerate(CONDITIONS[:segment_count]):
            created, _ = service.segments.create({"name": f"bench-{number}", "condition": text})
            service.segments.recount(created["id"], now=NOW)
        users = some_users(service)
        return {"segments": segment_count, "passes": [one_pass(service, users) for _ in range(2)]}
    finally:
        service.close()


def some_users(service: Portrait) -> list[str]:
    rows = service.segments._session().execute(parse(
        "SELECT value FROM identities WHERE type = 'user_id' ORDER BY hash(value) LIMIT 5000"))
    return [str(row[0]) for row in rows]


def broad_writes(service: Portrait, users: list[str]) -> dict[str, Any]:
    """Create a segment nearly everyone enters, then negate its condition (nearly everyone leaves): each answer
    returns once the membership is stored, as the API's does."""

    def create_and_negate() -> list[Any]:
        _, entered = service.segments.create({"name": "broad", "condition": BROAD})
        _, moved = service.segments.update("broad", {"condition": f"not {BROAD}"})
        return [*entered, *moved]

    return with_processing(service, users, create_and_negate)


def one_pass(service: Portrait, users: list[str]) -> dict[str, Any]:
    """recount_all with the stand-in processor running. The first pass after the segments were counted at the data's
    end (NOW) moves many profiles (windows such as "within 30d" now end today); the second is the steady state,
    where a pass moves few."""
    return with_processing(service, users, service.segments.recount_all)


def with_processing(service: Portrait, users: list[str], work: Callable[[], list[Any]]) -> dict[str, Any]:
    """``work`` (returning the membership changes) timed while the stand-in processor runs."""
    pause = threading.Lock()
    holds: list[float] = []
    waits: list[float] = []
    stop = threading.Event()
    with timed_pause(service, pause, holds):
        worker = threading.Thread(target=processing, args=(service, pause, users, stop, waits))
        worker.start()
        time.sleep(1.0)  # the processor runs before the pass starts
        started = time.perf_counter()
        changes = work()
        total = time.perf_counter() - started
        stop.set()
        worker.join()
    return {"total_s": total, "changes": len(changes), "longest_hold_s": max(holds, default=0.0),
            "held_s": sum(holds), "holds": len(holds), "longest_processor_wait_s": max(waits, default=0.0),
            "batches": len(waits)}


def child(db: Path, segments: int, create: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="recount-pause-") as folder:
        copy = Path(folder) / "copy.duckdb"
        shutil.copy(db, copy)
        return measure(copy, segments, create)


def show(label: str, result: dict[str, Any]) -> None:
    for number, one in enumerate(result["passes"], 1):
        print(f"{label}: {result['segments']} segments, pass {number}: {one['total_s']:.2f} s ({one['changes']:,} "
              f"changes); processing paused {one['held_s']:.2f} s in all ({one['holds']} holds), at most "
              f"{one['longest_hold_s']:.2f} s at a time; the processor waited up to "
              f"{one['longest_processor_wait_s']:.2f} s ({one['batches']} batches)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, required=True, help="a database built by segment_data.py")
    parser.add_argument("--segments", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--src", action="append", help="run in a child with this source folder (PYTHONPATH); "
                        "give it twice or more to alternate versions round by round")
    parser.add_argument("--create", action="store_true", help="measure creating a segment nearly everyone enters "
                        "and negating its condition, instead of recount_all")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.db, args.segments, args.create)))
        return 0
    results: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        for src in args.src or [None]:
            if src is None:
                result = child(args.db, args.segments, args.create)
            else:
                env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
                flags = ["--segments", str(args.segments), "--child", *(["--create"] if args.create else [])]
                done = subprocess.run([sys.executable, __file__, "--db", str(args.db), *flags], env=env, check=True,
                                      capture_output=True, text=True)
                result = json.loads(done.stdout.strip().splitlines()[-1])
            show(src or "this checkout", result)
            results.append({"src": src, **result})
    write_result("recount_pause_create" if args.create else "recount_pause", {"db": str(args.db), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
