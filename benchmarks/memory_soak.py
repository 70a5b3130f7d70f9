"""Memory soak: does a server's resident memory level off under a steady ingest load?

A real ``portrait serve`` (through soak.py's launcher, with a probe thread in the server) receives a steady,
moderate stream of SDK-like ``/v1/batch`` posts (``--rate`` events/s in batches of 10-100: identify, track and page
messages with a full SDK context, from returning customers and new anonymous visitors, some signing up) for
``--minutes``. Every ``--every`` seconds it records, from outside, the process's RSS (``/proc/PID/status``
``VmRSS``) and anonymous memory (``/proc/PID/smaps_rollup``), DuckDB's memory and the events received
(``/api/status``), and from the probe: the duplicate check's messageIds, Arrow's allocated bytes, glibc malloc's
in-use and free bytes (``mallinfo2``), Python's allocated blocks and the GC counts.

    .venv/bin/python benchmarks/memory_soak.py --summarize CSV [MINUTES]   # the windows of an earlier run
    .venv/bin/python benchmarks/memory_soak.py [--minutes 40] [--every 30] [--rate 4000] [--csv PATH]
        [--mixed] [--memory-limit-mb N] [--db PATH] [--log PATH] [--slow-log PATH]

``--mixed`` adds soak.py's console, admin (segments, keys, exports, backups, privacy requests), burst and
bad-request traffic, each in a thread of its own. Each of their requests slower than 5 s or failing (a timeout) is
printed as it ends, written to ``--slow-log`` (JSON lines: kind, method, path, start, seconds, status) and kept in
the result (``slow_requests``).

Writes the samples as CSV (``--csv``) and ``benchmarks/results/memory_soak.json`` with the growth per event of
the part of RSS that is neither DuckDB's reported memory nor the messageIds, per 10-minute window.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import gc
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from _common import free_port, stop_server, write_result
from _common import start_server as start_process

NAME = "memory_soak"
WRITE_KEY = "soak-write-key"  # soak.py's keys: its traffic drivers run here too with --mixed
ADMIN_KEY = "soak-admin-key"
DEDUP_BYTES_PER_ID = 150  # the duplicate check per remembered messageId: 133-159 bytes measured (set table steps)


# -- in the server: the launcher and its probe ------------------------------------------------------------------
class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def jemalloc_stats() -> dict[str, float]:
    """DuckDB's own allocator (the jemalloc linked into its extension module, symbols prefixed ``duckdb_je_``):
    bytes DuckDB has allocated (its buffer pool and everything else), the pages jemalloc keeps active, resident
    and mapped, in MB."""
    import _duckdb

    mallctl = ctypes.CDLL(_duckdb.__file__).duckdb_je_mallctl
    mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p,
                        ctypes.c_size_t]
    epoch, size = ctypes.c_uint64(1), ctypes.c_size_t(8)
    mallctl(b"epoch", ctypes.byref(epoch), ctypes.byref(size), ctypes.byref(epoch), 8)  # refresh the stats
    found = {}
    for name in ("allocated", "active", "resident", "mapped", "retained"):
        value, size = ctypes.c_size_t(0), ctypes.c_size_t(8)
        if mallctl(f"stats.{name}".encode(), ctypes.byref(value), ctypes.byref(size), None, 0) == 0:
            found[f"je_{name}_mb"] = round(value.value / 2**20, 1)
    return found


def native_sizes() -> dict[str, Any]:
    """What the probe adds to soak.py's: DuckDB's jemalloc, Arrow's pool, glibc malloc's totals, Python's blocks
    and GC."""
    import pyarrow as pa

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    return {
        **jemalloc_stats(),
        "arrow_mb": round(pa.total_allocated_bytes() / 2**20, 1),
        "arrow_pool": pa.default_memory_pool().backend_name,
        "malloc_heap_mb": round(info.arena / 2**20, 1),  # sbrk + arena heaps (not mmap'd chunks)
        "malloc_mmap_mb": round(info.hblkhd / 2**20, 1),
        "malloc_used_mb": round(info.uordblks / 2**20, 1),  # in use, from the heaps
        "malloc_free_mb": round(info.fordblks / 2**20, 1),  # free but kept in the heaps
        "py_blocks": sys.getallocatedblocks(),
        "gc_gen2": gc.get_count()[2],
        "gc_collections_2": gc.get_stats()[2]["collections"],
    }


def serve(db: str, port: int, probe_path: str, every: float) -> None:
    import soak

    inner = soak.inner_sizes

    def sizes(caught: dict[str, Any]) -> dict[str, Any]:
        found: dict[str, Any] = {**inner(caught)}
        with contextlib.suppress(Exception):
            found.update(native_sizes())
        with contextlib.suppress(Exception):  # SQLGlot trees the renderer keeps (at most 1,024): Python blocks
            found["sql_cache_trees"] = len(caught["portrait"].store._render._cache)
        return found

    soak.inner_sizes = sizes  # type: ignore[assignment]
    soak.serve_with_probe(db, port, probe_path, every)


# -- load ---------------------------------------------------------------------------------------------------------
PAGES = ["/", "/pricing", "/blog/welcome", "/docs/start", "/checkout", "/account"]
EVENTS = ["Product Viewed", "Product Added", "Checkout Started", "Order Completed", "Signed Up", "Searched"]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64) Firefox/131.0", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5) Safari/604.1",
          "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/130.0 Safari/537.36"]


class Visitors:
    """Returning customers (a growing pool) and new anonymous visitors, some of whom sign up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.known: list[tuple[str, str]] = [(f"user-{n}", str(uuid.uuid4())) for n in range(2000)]

    def pick(self) -> tuple[str | None, str]:
        if random.random() < 0.1:  # a new visitor
            anonymous = str(uuid.uuid4())
            if random.random() < 0.3:  # who signs up: from now on a returning customer
                user = f"user-{uuid.uuid4().hex[:12]}"
                with self._lock:
                    self.known.append((user, anonymous))
                return user, anonymous
            return None, anonymous
        with self._lock:
            return random.choice(self.known)


def sdk_message(visitors: Visitors) -> dict[str, Any]:
    user, anonymous = visitors.pick()
    kind = random.choices(["track", "page", "identify"], [6, 3, 1])[0]
    found: dict[str, Any] = {
        "type": kind, "messageId": str(uuid.uuid4()), "anonymousId": anonymous,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "context": {"library": {"name": "analytics-python", "version": "2.3.3"},
                    "ip": f"10.{random.randint(0, 255)}.{random.randint(0, 255)}.{random.randint(1, 254)}",
                    "userAgent": random.choice(AGENTS), "locale": "en-US"},
    }
    if user:
        found["userId"] = user
    if kind == "identify":
        found["traits"] = {"email": f"{user or anonymous[:8]}@example.com", "plan": random.choice(["free", "pro"]),
                           "visits": random.randint(1, 50)}
    elif kind == "page":
        found["name"] = random.choice(PAGES)
        found["properties"] = {"path": found["name"], "referrer": "https://www.google.com/"}
    else:
        found["event"] = random.choice(EVENTS)
        found["properties"] = {"sku": f"SKU-{random.randint(1, 5000)}", "price": round(random.uniform(1, 500), 2),
                               "currency": "EUR", "quantity": random.randint(1, 4)}
    return found


def sender(url: str, rate_per_thread: float, stop: threading.Event, visitors: Visitors,
           counts: dict[str, int]) -> None:
    """Batches of 10-100 messages, paced to ``rate_per_thread`` events/s on average."""
    sent = 0
    started = time.monotonic()
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            size = random.randint(10, 100)
            body = {"writeKey": WRITE_KEY, "batch": [sdk_message(visitors) for _ in range(size)],
                    "sentAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}
            try:
                status = client.post("/v1/batch", json=body).status_code
            except httpx.HTTPError:
                status = 0
            counts[str(status)] = counts.get(str(status), 0) + size
            sent += size
            ahead = started + sent / rate_per_thread - time.monotonic()
            if ahead > 0:
                stop.wait(ahead)


# -- sampling ------------------------------------------------------------------------------------------------------
def _proc_kb(path: str, field: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rest_mb(rss_mb: float, duckdb_mb: float, dedup_ids: int) -> float:
    """RSS less DuckDB's reported memory and the duplicate check's messageIds."""
    return round(rss_mb - duckdb_mb - dedup_ids * DEDUP_BYTES_PER_ID / 2**20, 1)


def sample(pid: int, url: str, probe: Path, started: float) -> dict[str, Any]:
    status = httpx.get(f"{url}/api/status", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=120).json()
    lines = probe.read_text().splitlines() if probe.exists() else []
    inner = json.loads(lines[-1]) if lines else {}
    rss = _proc_kb(f"/proc/{pid}/status", "VmRSS") / 1024
    anonymous = _proc_kb(f"/proc/{pid}/smaps_rollup", "Anonymous") / 1024
    duckdb_mb = float(status["memory"]["database_mb"])
    je_allocated, je_resident = inner.get("je_allocated_mb", 0.0), inner.get("je_resident_mb", 0.0)
    return {
        "seconds": round(time.monotonic() - started), "events": status["events_received"], "lag": status["lag"],
        "rss_mb": round(rss, 1), "anon_mb": round(anonymous, 1), "duckdb_mb": duckdb_mb,
        "dedup_ids": inner.get("dedup_ids"), "rest_mb": rest_mb(rss, duckdb_mb, inner.get("dedup_ids", 0)),
        "threads": len(os.listdir(f"/proc/{pid}/task")),
        "duckdb_unreported_mb": round(je_allocated - duckdb_mb, 1),  # DuckDB's allocations outside duckdb_memory()
        "je_kept_mb": round(je_resident - je_allocated, 1),  # resident pages jemalloc holds beyond the allocations
        "anon_outside_je_mb": round(anonymous - je_resident, 1),  # Python, glibc malloc, mimalloc, stacks
        **{k: v for k, v in inner.items() if k not in ("t", "dedup_ids", "rate_buckets", "console_sessions",
                                                       "admission_bytes", "keys_in_memory")},
    }


def append_csv(path: Path, row: dict[str, Any]) -> None:
    """One sample more in the CSV (the columns are the first sample's)."""
    fields = path.read_text().splitlines()[0].split(",") if path.exists() else list(row)
    with path.open("a", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
        if out.tell() == 0:
            writer.writeheader()
        writer.writerow(row)


WINDOW_COLUMNS = ("rss_mb", "anon_mb", "duckdb_mb", "dedup_ids", "rest_mb", "je_allocated_mb", "je_kept_mb",
                  "anon_outside_je_mb", "malloc_used_mb", "malloc_free_mb", "py_blocks")


def windows(samples: list[dict[str, Any]], minutes: float = 10) -> list[dict[str, Any]]:
    """Each ``minutes`` window: the columns at its start and end, and the growth of RSS and of the rest
    (RSS - DuckDB - messageIds) per event received in it."""
    out = []
    start = samples[0]
    for row in samples[1:]:
        if float(row["seconds"]) - float(start["seconds"]) >= minutes * 60 or row is samples[-1]:
            events = int(row["events"]) - int(start["events"])
            found: dict[str, Any] = {"from_s": int(start["seconds"]), "to_s": int(row["seconds"]), "events": events}
            for column in WINDOW_COLUMNS:
                if column in row and column in start:
                    found[column] = [float(start[column]), float(row[column])]
            for column in ("rss_mb", "rest_mb"):
                found[column.replace("_mb", "_bytes_per_event")] = round(
                    (float(row[column]) - float(start[column])) * 2**20 / max(events, 1))
            out.append(found)
            start = row
    return out


def stored_events(db: Path) -> dict[str, Any]:
    """The events the database counts as received and the log's rows by source, read after the stop. With
    ``--mixed`` the received count is more than the senders' accepted events: segments entered write an "Audience
    Entered" event each (source ``portrait:segments``), and erasures delete rows (not the count)."""
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        received = con.execute("SELECT value FROM counters WHERE name = 'events_received'").fetchone()
        by_source = con.execute("SELECT source, count(*) FROM events GROUP BY source ORDER BY source").fetchall()
    return {"received": int(received[0]) if received else 0, "rows_by_source": dict(by_source)}


def run(options: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="portrait-memsoak-"))
    db = Path(options.db) if options.db else folder / "soak.duckdb"
    probe, port = folder / "probe.jsonl", free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"TMPDIR": str(folder), "PORTRAIT_BACKUP_DIR": str(folder / "backups"), "PORTRAIT_BACKUP_KEEP": "2",
           "PORTRAIT_WRITE_KEY": WRITE_KEY, "PORTRAIT_ADMIN_KEY": ADMIN_KEY, "PORTRAIT_NO_PROGRESS": "1",
           "PORTRAIT_RATE_LIMIT": "1000000",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    if options.memory_limit_mb:
        env["PORTRAIT_MEMORY_LIMIT_MB"] = str(options.memory_limit_mb)
    args = [sys.executable, __file__, "--serve", str(db), str(port), str(probe), str(min(options.every, 10))]
    server = start_process(NAME, args, url, folder / "server.log", env=env, ready_path="/healthz")
    stop, visitors = threading.Event(), Visitors()
    counts: list[dict[str, int]] = [{} for _ in range(options.threads)]
    threads = [threading.Thread(target=sender, args=(url, options.rate / options.threads, stop, visitors, c),
                                daemon=True) for c in counts]
    mixed_by_name: dict[str, int] = {}  # the mixed traffic's answers by kind and status
    slow_requests: list[dict[str, Any]] = []
    if options.mixed:  # soak.py's console, admin, burst and bad-request traffic beside the steady ingest
        import soak

        if options.slow_log:
            soak.SLOW.path = Path(options.slow_log)
            soak.SLOW.path.unlink(missing_ok=True)
        slow_requests = soak.SLOW.found
        mixed = soak.Counts()
        mixed_by_name = mixed.by_name
        threads += [threading.Thread(target=soak._guarded, args=(driver, url, stop, mixed), daemon=True)
                    for driver in (soak.console_traffic, soak.admin_traffic, soak.bursts, soak.bad_traffic)]
    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    accepted: int | None = None
    reopened: dict[str, Any] | None = None
    if options.csv:
        Path(options.csv).unlink(missing_ok=True)
    try:
        for thread in threads:
            thread.start()
        end = started + options.minutes * 60
        while time.monotonic() < end:
            stop.wait(options.every - (time.monotonic() - started) % options.every)
            row = sample(server.process.pid, url, probe, started)
            samples.append(row)
            print(json.dumps(row), flush=True)
            if options.csv:
                append_csv(Path(options.csv), row)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        accepted = httpx.get(f"{url}/api/status", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                             timeout=120).json()["events_received"]
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        code = stop_server(server, grace=60)
        problems = server.log_problems()
        with contextlib.suppress(Exception):  # what the database kept, opened again after the stop
            reopened = stored_events(db)
        if options.log:  # the whole server log, kept (the run's folder is removed)
            shutil.copyfile(folder / "server.log", options.log)
        shutil.rmtree(folder, ignore_errors=True)
        if options.db:
            for path in (db, *db.parent.glob(db.name + ".*")):  # the database, its WAL and the server's files
                path.unlink(missing_ok=True)
    sent: dict[str, int] = {}
    for c in counts:
        for status, n in c.items():
            sent[status] = sent.get(status, 0) + n
    return {"minutes": options.minutes, "rate": options.rate, "memory_limit_mb": options.memory_limit_mb,
            "mixed": options.mixed,
            "sent_by_status": sent, "mixed_by_name": mixed_by_name, "slow_requests": slow_requests,
            "events_received_at_stop": accepted, "stored_after_stop": reopened,
            "exit_code": code, "log_problems": problems,
            "windows": windows(samples) if len(samples) > 1 else [], "samples": samples}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        signal.signal(signal.SIGINT, signal.default_int_handler)
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--summarize":  # the windows of a CSV written by an earlier run
        with Path(sys.argv[2]).open(newline="") as written:
            rows = [{**row, "rest_mb": rest_mb(float(row["rss_mb"]), float(row["duckdb_mb"]), int(row["dedup_ids"]))}
                    for row in csv.DictReader(written)]
            for window in windows(rows, float(sys.argv[3]) if len(sys.argv) > 3 else 10):
                print(json.dumps(window))
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)  # stoppable by SIGINT even when started in background
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=40.0)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--rate", type=float, default=4000.0, help="events per second sent")
    parser.add_argument("--threads", type=int, default=4, help="sending threads")
    parser.add_argument("--mixed", action="store_true",
                        help="soak.py's console, admin, burst and bad-request traffic too")
    parser.add_argument("--memory-limit-mb", type=int, default=None, help="PORTRAIT_MEMORY_LIMIT_MB for the server")
    parser.add_argument("--db", default=None, help="the database file (removed at the end); default: a temp folder")
    parser.add_argument("--csv", default=None, help="write the samples here as CSV too")
    parser.add_argument("--log", default=None, help="keep the server's log here (the run's folder is removed)")
    parser.add_argument("--slow-log", default=None,
                        help="with --mixed: write the slow or failed requests here as JSON lines too")
    parser.add_argument("--name", default=NAME, help="results/NAME.json")
    options = parser.parse_args()
    result = run(options)
    path = write_result(options.name, result)
    for window in result["windows"]:
        print(json.dumps(window))
    print(json.dumps({k: result[k] for k in ("sent_by_status", "mixed_by_name", "slow_requests",
                                             "events_received_at_stop",
                                             "stored_after_stop", "exit_code", "log_problems")}))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
