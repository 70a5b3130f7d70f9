"""Figure: segment write latency through a real server right after a large load -- creating a segment that every
one of 100,000 profiles enters, changing its condition so that most leave, deleting it -- and how long its
Audience events then take to reach the log (the server answers first and writes them after: docs/segments.md).
Last, the complaint's case: a segment created the moment 100,000 events (one per profile) have been sent.

The baseline, in the same run on the same server: a preview (count only) of the same condition, which is the least
a creation must do. Measured on a copy of a database built by segment_data.py (left as it was).

    .venv/bin/python benchmarks/segment_data.py --profiles 100000 --events 1000000 --db /tmp/segw/db.duckdb
    .venv/bin/python benchmarks/segment_write.py --db /tmp/segw/db.duckdb
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, get_status, portrait_env, portrait_server_args, start_server, stop_server, write_result

WRITE_KEY, ADMIN_KEY = "bench-write-key", "bench-admin-key"
EVERYONE = "age >= 0"  # every generated profile has an age
FEW = 'country in ("PL", "TR")'  # about a fifth: a change to it makes about 80,000 leave


def timed(call: Callable[[], httpx.Response]) -> float:
    started = time.perf_counter()
    answer = call()
    seconds = time.perf_counter() - started
    answer.raise_for_status()
    return seconds


def written_after(url: str, received: int, expected: int, timeout: float = 600.0) -> float:
    """Seconds until ``expected`` more events are in the log than ``received`` and the processor has caught up."""
    started = time.perf_counter()
    while True:
        status = get_status(url, ADMIN_KEY)
        if status["events_received"] >= received + expected and status["lag"] == 0:
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"the Audience events were not written within {timeout:.0f} s: {status}")
        time.sleep(0.05)


def one_round(admin: httpx.Client, url: str, run: int) -> dict[str, Any]:
    name = f"everyone-{run}"
    preview = timed(lambda: admin.post("/api/segments/preview", json={"condition": EVERYONE}))
    received = get_status(url, ADMIN_KEY)["events_received"]
    create = timed(lambda: admin.post("/api/segments", json={"name": name, "condition": EVERYONE}))
    size = admin.get(f"/api/segments/{name}").json()["size"]
    create_events = written_after(url, received, size)
    received = get_status(url, ADMIN_KEY)["events_received"]
    update = timed(lambda: admin.patch(f"/api/segments/{name}", json={"condition": FEW}))
    left = size - admin.get(f"/api/segments/{name}").json()["size"]
    update_events = written_after(url, received, left)
    delete = timed(lambda: admin.delete(f"/api/segments/{name}"))
    return {"members": size, "left": left, "preview_s": preview, "create_s": create,
            "create_events_s": create_events, "update_s": update, "update_events_s": update_events,
            "delete_s": delete}


def right_after_events(admin: httpx.Client, sdk: httpx.Client, url: str, events: int) -> dict[str, Any]:
    """Send ``events`` orders (one per profile, 500 a request), then create a segment at once: it waits for
    nothing but its own count, however much the processor and the real-time refresh have left to do."""
    for start in range(0, events, 500):
        batch = [{"type": "track", "userId": f"u{n % 100_000:08d}", "event": "Order Completed",
                  "properties": {"revenue": 10}} for n in range(start, min(start + 500, events))]
        sdk.post("/v1/batch", json={"batch": batch}).raise_for_status()
    lag = get_status(url, ADMIN_KEY)["lag"]
    create = timed(lambda: admin.post("/api/segments", json={"name": "after events", "condition": "age >= 50"}))
    return {"events": events, "lag_at_create": lag, "create_s": create,
            "members": admin.get("/api/segments/after events").json()["size"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, required=True, help="a database built by segment_data.py")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--events", type=int, default=100_000, help="sent just before the last creation")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="segment-write-") as folder:
        db = Path(folder) / "copy.duckdb"
        shutil.copy(args.db, db)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server("portrait", portrait_server_args(db, port), url, Path(folder) / "server.log",
                              env=portrait_env(WRITE_KEY, ADMIN_KEY), ready_path="/api/status", timeout=120)
        try:
            with httpx.Client(base_url=url, timeout=600, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin:
                rounds = [one_round(admin, url, run) for run in range(args.runs)]
                with httpx.Client(base_url=url, timeout=600, auth=(WRITE_KEY, "")) as sdk:
                    after_events = right_after_events(admin, sdk, url, args.events)
        finally:
            stop_server(server)
            problems = server.log_problems()
    for r in rounds:
        print(f"{r['members']:,} enter: answered in {r['create_s']:.2f} s (preview {r['preview_s']:.2f} s), events "
              f"written {r['create_events_s']:.1f} s later; {r['left']:,} leave: answered in {r['update_s']:.2f} s, "
              f"events {r['update_events_s']:.1f} s later; delete {r['delete_s']:.2f} s")
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0] if key.endswith("_s")}
    ratio = median["create_s"] / median["preview_s"]
    print(f"median: create {median['create_s']:.2f} s = {ratio:.0f}x its preview; update {median['update_s']:.2f} s; "
          f"delete {median['delete_s']:.2f} s")
    print(f"created {after_events['create_s']:.2f} s after {after_events['events']:,} events were sent (lag then "
          f"{after_events['lag_at_create']:,}): {after_events['members']:,} members")
    if problems:
        print("server log problems:", *problems, sep="\n  ")
    write_result("segment_write", {"rounds": rounds, "median": median, "create_to_preview": ratio,
                                   "right_after_events": after_events,
                                   "server_log_problems": problems})
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
