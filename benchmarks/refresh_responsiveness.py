"""Figure: what a user feels while the segment thread refreshes a large batch (``segment_refresh.py`` times the
refresh itself): how long /api/status, a profile lookup, the segment list, an ingest ack, an event reaching its
profile (sent, then read back through the API) and a segment change from the API take meanwhile.

Copies a database built by ``segment_data.py``, creates ``--segments`` of segment_refresh.py's conditions in it, sets
the segment watermark back so that about ``--touched`` profiles are due (as after a large batch), starts ``portrait
serve`` on it (from this checkout, or ``--src``: compare two versions in one session) -- its segment thread starts
that refresh at once -- and asks each probe, each in a thread of its own, for ``--duration`` seconds.

    .venv/bin/python benchmarks/refresh_responsiveness.py --db /tmp/seg/db.duckdb [--segments 20]
                                                          [--touched 100000] [--duration 45] [--src PATH]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from _common import free_port, percentiles, portrait_env, start_server, stop_server, write_result
from segment_data import NOW
from segment_refresh import CONDITIONS, touch

from portrait.config import Settings
from portrait.service import Portrait
from portrait.sql import parse

WRITE_KEY, ADMIN_KEY = "wk_refresh_responsiveness", "ak_refresh_responsiveness"


def prepare(db: Path, segments: int, touched: int) -> str:
    """Segments counted at the data's end, the watermark set back; returns a user id to look up and send as."""
    service = Portrait(Settings(db_path=str(db)), background=False)
    try:
        for number, text in enumerate(CONDITIONS[:segments]):
            created, _ = service.segments.create({"name": f"bench-{number}", "condition": text})
            service.segments.recount(created["id"], now=NOW)
        profiles = int(service.status()["profiles"])
        print(f"{touch(service, profiles, touched):,} profiles due for the refresh", flush=True)
        first = parse("SELECT value FROM identities WHERE type = 'user_id' ORDER BY value LIMIT 1")
        return str(service.segments._session().execute(first)[0][0])
    finally:
        service.close()


def probes(client: httpx.Client, user: str) -> dict[str, Callable[[int], None]]:
    """Each probe does one request (or, for "applied", sends an event and waits until its profile shows it)."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}

    def send(n: int, traits: dict[str, Any]) -> None:
        body = {"writeKey": WRITE_KEY, "batch": [{"type": "identify", "userId": user, "traits": traits,
                                                  "messageId": f"probe-{n}-{time.time_ns()}"}]}
        client.post("/v1/batch", json=body).raise_for_status()

    def applied(n: int) -> None:
        send(n, {"probe": n})
        while client.get(f"/api/profiles/user_id:{user}/traits", headers=admin).json().get("probe") != n:
            time.sleep(0.05)

    return {
        "status": lambda n: client.get("/api/status", headers=admin).raise_for_status() and None,
        "profile": lambda n: client.get(f"/api/profiles/user_id:{user}", headers=admin).raise_for_status() and None,
        "segment_list": lambda n: client.get("/api/segments", headers=admin).raise_for_status() and None,
        "ingest_ack": lambda n: send(n, {"ack_probe": n}),
        "applied": applied,
        "segment_change": lambda n: client.patch("/api/segments/bench-0", headers=admin,
                                                  json={"description": f"probe {n}"}).raise_for_status() and None,
    }


PROBES = ("status", "profile", "segment_list", "ingest_ack", "applied", "segment_change")


def ask(url: str, user: str, name: str, deadline: float, seconds: list[float], at: list[float]) -> None:
    """Ask one probe every 0.2 s (each in its own thread: one waiting does not hold the others back); ``at``: when
    each was asked, in seconds from the server's start."""
    with httpx.Client(base_url=url, timeout=120.0) as client:
        probe = probes(client, user)[name]
        n = 0
        while time.monotonic() < deadline:
            n += 1
            started = time.perf_counter()
            probe(n)
            seconds.append(time.perf_counter() - started)
            at.append(started - STARTED[0])
            time.sleep(0.2)


STARTED = [0.0]  # perf_counter when the server answered


def run(db: Path, user: str, duration: float, src: str | None) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = portrait_env(WRITE_KEY, ADMIN_KEY)
    if src:
        env["PYTHONPATH"] = str(Path(src).resolve())
    args = [sys.executable, "-m", "portrait", "serve", "--db", str(db), "--host", "127.0.0.1", "--port", str(port)]
    server = start_server("portrait", args, url, db.parent / "server.log", env=env, ready_path="/healthz",
                          timeout=120)
    seconds: dict[str, list[float]] = {}
    at: dict[str, list[float]] = {}
    STARTED[0] = time.perf_counter()
    try:
        deadline = time.monotonic() + duration
        threads = [threading.Thread(target=ask, args=(url, user, name, deadline, seconds.setdefault(name, []),
                                                      at.setdefault(name, [])))
                   for name in PROBES]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        stop_server(server)
    result = {name: {**percentiles(values, (50,)), "count": len(values),
                     "max_asked_at_s": at[name][values.index(max(values))],
                     "series": list(zip(at[name], values, strict=True))}
              for name, values in seconds.items()}
    for name, figures in result.items():
        print(f"{name:15} p50 {figures['p50'] * 1000:8.0f} ms  max {figures['max'] * 1000:8.0f} ms (asked "
              f"{figures['max_asked_at_s']:.1f} s after the start; {figures['count']} asked)", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, required=True, help="a database built by segment_data.py")
    parser.add_argument("--segments", type=int, default=20)
    parser.add_argument("--touched", type=int, default=100_000)
    parser.add_argument("--duration", type=float, default=45.0)
    parser.add_argument("--src", help="run the server from this source folder (PYTHONPATH) instead of this checkout")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="refresh-responsiveness-") as folder:
        db = Path(folder) / "copy.duckdb"
        shutil.copy(args.db, db)
        user = prepare(db, args.segments, args.touched)
        result = run(db, user, args.duration, args.src)
    write_result("refresh_responsiveness", {"src": args.src, "segments": args.segments, "touched": args.touched,
                                            "probes": result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
