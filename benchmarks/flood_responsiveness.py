"""Figure: does the server still answer /healthz and /api/status while a flood of large batches (1,000 events,
~480 KB each) arrives -- and how many events per second it accepts meanwhile.

Starts ``portrait serve`` on a fresh database (from this checkout, or from ``--src``, to compare two versions of the
code in one session), runs wrk with ``flood_load.lua`` (senders that wait 2 s after a 503, as an SDK honouring
Retry-After does) and meanwhile asks /healthz and /api/status every 0.5 s on new connections, timing each answer
and keeping the memory figures /api/status gives (the server's, and the database's part, during and after).

    .venv/bin/python benchmarks/flood_responsiveness.py [--duration 20] [--connections 128] [--src PATH]
                                                        [--memory-limit-mb N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from _common import (
    BENCH_DIR,
    free_port,
    get_status,
    portrait_env,
    portrait_server_args,
    start_server,
    stop_server,
    wait_for_drain,
    write_result,
)
from ingest_throughput import parse_wrk

NAME = "flood_responsiveness"
EVENTS_PER_REQUEST = 1000
LUA = BENCH_DIR / "flood_load.lua"


class Prober:
    """Asks ``path`` every ``interval`` s on a new connection until stopped; keeps each answer's time."""

    def __init__(self, url: str, headers: dict[str, str], interval: float = 0.5) -> None:
        self.seconds: list[float] = []
        self.failures = 0
        self.memory: list[dict[str, Any]] = []  # /api/status's memory figures, as answered
        self._url, self._headers, self._interval = url, headers, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                answer = httpx.get(self._url, headers=self._headers, timeout=60).raise_for_status()
                self.seconds.append(time.monotonic() - started)
                if "memory" in (found := answer.json()):
                    self.memory.append(found["memory"])
            except httpx.HTTPError:
                self.failures += 1
            self._stop.wait(max(0.0, self._interval - (time.monotonic() - started)))

    def summary(self) -> dict[str, Any]:
        found = sorted(self.seconds)
        return {"answered": len(found), "failed": self.failures,
                "p50_ms": round(1000 * statistics.median(found)) if found else None,
                "max_ms": round(1000 * found[-1]) if found else None}


def _memory(during: list[dict[str, Any]], after: dict[str, Any] | None) -> dict[str, Any] | None:
    """The most the server and its database held while answering /api/status, and what they hold once drained
    (None from code older than the memory figures, with --src)."""
    if after is None:
        return None
    return {"process_max": max((m["process_mb"] or 0 for m in during), default=None),
            "database_max": max((m["database_mb"] for m in during), default=None),
            "process_after": after["process_mb"], "database_after": after["database_mb"],
            "database_limit": after["database_limit"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=20, help="seconds of load (default 20)")
    parser.add_argument("--connections", type=int, default=128, help="wrk connections (default 128)")
    parser.add_argument("--memory-limit-mb", type=int, default=0,
                        help="PORTRAIT_MEMORY_LIMIT_MB for the server (default 0: the database's own default)")
    parser.add_argument("--src", help="run the server from this source folder (PYTHONPATH) instead of this checkout")
    args = parser.parse_args(argv)
    write_key, admin_key = f"wk_bench_{uuid.uuid4().hex}", f"ak_bench_{uuid.uuid4().hex}"
    env = {**portrait_env(write_key, admin_key), "PORTRAIT_RATE_LIMIT": "0",
           "PORTRAIT_MEMORY_LIMIT_MB": str(args.memory_limit_mb)}
    if args.src:
        env["PYTHONPATH"] = str(Path(args.src).resolve())
    with tempfile.TemporaryDirectory(prefix="portrait-flood-") as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server("portrait", portrait_server_args(Path(tmp) / "flood.duckdb", port), url,
                              Path(tmp) / "server.log", env=env)
        try:
            health = Prober(f"{url}/healthz", {})
            status = Prober(f"{url}/api/status", {"Authorization": f"Bearer {admin_key}"})
            health.start()
            status.start()
            command = ["wrk", "-t2", f"-c{args.connections}", f"-d{args.duration}s", "--timeout=30s", "--latency",
                       "-s", str(LUA), f"{url}/v1/batch"]
            wrk_env = {"WRITE_KEY": write_key, "RUN_ID": uuid.uuid4().hex[:12], "PATH": "/usr/bin:/bin"}
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.duration + 120, check=True,
                                  env=wrk_env)
            health.stop()
            status.stop()
            load = parse_wrk(done.stdout)
            final, drained_s = wait_for_drain(url, admin_key, timeout=300)
            after = get_status(url, admin_key)
            stored = after["events_received"]
        finally:
            stop_server(server)
    accepted = (load["requests"] - load["non_2xx"]) * EVENTS_PER_REQUEST
    summary = {"healthz": health.summary(), "api_status": status.summary(), "requests": load["requests"],
               "refused_503_or_other": load["non_2xx"], "socket_errors": load["socket_errors"],
               "accepted_events_per_s": round(accepted / load["elapsed_s"]), "events_in_log": stored,
               "drained_s": round(drained_s, 2), "final_lag": final["lag"],
               "memory_mb": _memory(status.memory, after.get("memory"))}
    path = write_result(NAME, {"figure": "Responsiveness of /healthz and /api/status under a flood of 480 KB batches",
                               "options": vars(args), "summary": summary, "wrk": load})
    print(f"Flood of 480 KB batches, {args.connections} connections, {args.duration} s:")
    print(f"  /healthz     {summary['healthz']}")
    print(f"  /api/status  {summary['api_status']}")
    print(f"  accepted {summary['accepted_events_per_s']:,} events/s; {load['non_2xx']} refused (503, resent after "
          f"2 s); {stored:,} events in the log")
    print(f"  memory (MB) {summary['memory_mb']}")
    print(f"  result {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
