"""Figure: the real-time segment refresh (``Segments.refresh_touched``, what the segment thread runs after each
processed batch) as the number of touched profiles and of segments grows, split into its phases -- reading the
touched profiles for the Python engine, evaluating the conditions, writing the membership changes -- and the whole
pass, during which the segments' lock is held (segment writes from the API wait, memberships lag).

The profiles "touched" are those holding the last events of the log: the segment watermark is set back so that
about ``--touched`` profiles are in the scope. Each refresh evaluates at a later "now" than the one before, so the
conditions with a time window move some profiles in and out (writes are measured too). Runs on a copy of a database
built by segment_data.py (left as it was).

    .venv/bin/python benchmarks/segment_data.py --profiles 100000 --events 1000000 --db /tmp/segw/db.duckdb
    .venv/bin/python benchmarks/segment_refresh.py --db /tmp/segw/db.duckdb --segments 5 20
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result
from segment_data import NOW

import portrait.segments as segments_module
from portrait.config import Settings
from portrait.service import Portrait
from portrait.sql import parse

# Twenty conditions of the kinds people write: attributes, counts and sums of events in windows, recency, stopping.
CONDITIONS = [
    'country in ("PL", "TR") and age between 25 and 40',
    'performed("Order Completed", count >= 2, within = 30d, where revenue > 50)',
    'sum("Order Completed", revenue, within = 90d) > 500 or plan = "team"',
    'stopped("Login", recent = 30d, earlier = 60d) and not performed("Order Completed", within = 90d)',
    'last_time("Page Viewed") within last 7d',
    'plan = "pro" and age >= 30',
    'performed("Product Added", within = 14d) and not performed("Order Completed", within = 14d)',
    'performed("Checkout Started", count >= 3)',
    'email ends with "0@example.com"',
    'performed("Login", count >= 5, within = 60d)',
    'country = "DE" and performed("Order Completed", within = 180d)',
    'first_time("Order Completed") after 200d ago',
    'performed("Product Viewed", where sku = "SKU-42")',
    'performed("Page Viewed", count >= 4, within = 30d) or plan = "free"',
    'age < 25 and performed("Page Viewed", within = 3d)',
    'not performed("Login", within = 45d)',
    'sum("Order Completed", revenue) > 1000',
    'country in ("US", "GB") and plan != "free"',
    'performed("Order Completed", count >= 1, within = 7d, where currency = "EUR")',
    'last_time("Login") not within last 30d and plan = "team"',
]
# The functions doing each phase (those missing in a version are skipped): Python evaluation includes what its SQL
# fallback evaluates (nested calls are counted once, in the outer phase).
PHASES = {"load": [("Segments", "_scope_profiles")],
          "evaluate": [("Segments", "_evaluate"), ("Segments", "_evaluate_in_sql")],
          "write": [("module", "_apply")]}


@contextmanager
def phase_timers() -> Iterator[dict[str, float]]:
    """Seconds spent in each phase of the refresh (by wrapping the functions that do them)."""
    spent: dict[str, float] = defaultdict(float)
    originals: list[tuple[Any, str, Any]] = []
    running: list[str] = []
    for phase, functions in PHASES.items():
        for owner, name in functions:
            target: Any = segments_module.Segments if owner == "Segments" else segments_module
            original = getattr(target, name, None)
            if original is None:
                continue
            originals.append((target, name, original))
            setattr(target, name, _timed(original, phase, spent, running))
    try:
        yield spent
    finally:
        for target, name, original in originals:
            setattr(target, name, original)


def _timed(function: Callable[..., Any], phase: str, spent: dict[str, float],
           running: list[str]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if running:  # inside another timed function: counted there
            return function(*args, **kwargs)
        running.append(phase)
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[phase] += time.perf_counter() - started
            running.pop()
    return wrapper


@contextmanager
def lock_holds(service: Portrait) -> Iterator[list[float]]:
    """Seconds of each hold of the processor's pause (what the processor, erasures and segment writes from the API
    wait for) during the refresh: the whole pass, or the longest of its parts where the refresh lets go in between."""
    holds: list[float] = []
    exclusive = service.segments._exclusive

    @contextmanager
    def timed() -> Iterator[None]:
        with exclusive():
            started = time.perf_counter()
            try:
                yield
            finally:
                holds.append(time.perf_counter() - started)

    service.segments._exclusive = timed
    try:
        yield holds
    finally:
        service.segments._exclusive = exclusive


def touch(service: Portrait, profiles: int, wanted: int) -> int:
    """Set the segment watermark back so that about ``wanted`` profiles hold events after it; returns how many."""
    session = service.store.session()
    try:
        events = int(session.execute(parse("SELECT max(seq) FROM event_profiles"))[0][0])
        # events are spread evenly at random over the profiles: the last n touch profiles * (1 - e^(-n/profiles))
        share = min(wanted / profiles, 0.99999)
        last = events if wanted >= profiles else round(-profiles * math.log(1 - share))
        seen = events - min(events, last)
        session.execute(parse("UPDATE segment_state SET value = ? WHERE name = 'watermark'"), [seen])
        return int(session.execute(parse("SELECT count(DISTINCT profile_id) FROM event_profiles WHERE seq > ?"),
                                   [seen])[0][0])
    finally:
        session.close()


def measure(db: Path, segment_count: int, touched_counts: list[int], runs: int,
            sql_from: int | None) -> list[dict[str, Any]]:
    service = Portrait(Settings(db_path=str(db)), background=False)
    if sql_from is not None:  # where the refresh changes engines (a version without the SQL path ignores it)
        service.segments.sql_from = sql_from
    try:
        profiles = int(service.segments._session().execute(parse("SELECT count(*) FROM profiles"))[0][0])
        for number, text in enumerate(CONDITIONS[:segment_count]):
            created, _ = service.segments.create({"name": f"bench-{number}", "condition": text})
            service.segments.recount(created["id"], now=NOW)  # counted when the data ends: the same every run
        results = []
        step = 0
        for wanted in touched_counts:
            rounds = []
            for _ in range(runs):
                touched = touch(service, profiles, wanted)
                step += 1
                with phase_timers() as spent, lock_holds(service) as holds:
                    started = time.perf_counter()
                    changes = service.segments.refresh_touched(now=NOW + timedelta(days=step))
                    total = time.perf_counter() - started
                rounds.append({"touched": touched, "total_s": total, "changes": len(changes),
                               "longest_hold_s": max(holds, default=0.0), "held_s": sum(holds),
                               **{f"{p}_s": spent.get(p, 0.0) for p in PHASES}})
            median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
            print(f"{segment_count} segments, {median['touched']:,.0f} touched: {median['total_s']:.2f} s "
                  f"(load {median['load_s']:.2f}, evaluate {median['evaluate_s']:.2f}, write {median['write_s']:.2f}; "
                  f"{median['changes']:,.0f} changes); processing paused {median['held_s']:.2f} s in all, at most "
                  f"{median['longest_hold_s']:.2f} s at a time", flush=True)
            results.append({"segments": segment_count, "wanted": wanted, "rounds": rounds, "median": median})
        return results
    finally:
        service.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, required=True, help="a database built by segment_data.py")
    parser.add_argument("--segments", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--touched", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sql-from", type=int, help="touched profiles from which the SQL engine evaluates "
                        "(0: always; a large number: never); the code's default if left out")
    args = parser.parse_args()
    results = []
    for segment_count in args.segments:
        with tempfile.TemporaryDirectory(prefix="segment-refresh-") as folder:
            db = Path(folder) / "copy.duckdb"
            shutil.copy(args.db, db)
            results += measure(db, segment_count, args.touched, args.runs, args.sql_from)
    write_result("segment_refresh", {"sql_from": args.sql_from, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
