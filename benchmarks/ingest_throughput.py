"""Figure: ingest via /v1/batch (100 events per request, as the SDKs send) -- requests/s of the real server as a
ratio of a bare ASGI endpoint that only parses the same JSON, measured in the same run on the same machine, with
durability (HTTP 200 only after commit) and dedup (messageId primary key) on, and the processor keeping up.

Runs wrk with ``ingest_load.lua`` against ``bare_asgi.py`` under uvicorn, then against ``portrait serve`` on a fresh
temporary database, alternating (bare, portrait, bare, portrait, ... ``--rounds`` times) because the machine is shared
and noisy; the reported ratio is the median of the per-round ratios. After each Portrait run it records the lag at the
end of the load, polls /api/status until the lag is 0 and checks that every request wrk counted landed in the log.

    .venv/bin/python benchmarks/ingest_throughput.py [--duration 20] [--connections 32] [--rounds 2]

Note that wrk (and its Lua request builder) runs on the same machine, so on a small box it takes CPU from both
servers alike; that is part of why the figure is a ratio.
"""

from __future__ import annotations

import argparse
import re
import shutil
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
    VENV_BIN,
    free_port,
    get_status,
    portrait_env,
    portrait_server_args,
    start_server,
    stop_server,
    wait_for_drain,
    write_result,
)

NAME = "ingest_throughput"
EVENTS_PER_REQUEST = 100
LUA = BENCH_DIR / "ingest_load.lua"
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/sec, completed requests, latency percentiles (ms), non-2xx and socket errors from wrk's report."""

    def number(pattern: str) -> float | None:
        match = re.search(pattern, output)
        return float(match.group(1)) if match else None

    latency: dict[str, float] = {}
    for pct, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE):
        latency[f"p{pct}_ms"] = float(value) * _UNITS_MS[unit]
    requests = number(r"(\d+) requests in")
    seconds = re.search(r"requests in ([\d.]+)(us|ms|s|m),", output)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return {
        "requests_per_s": number(r"Requests/sec:\s+([\d.]+)"),
        "requests": int(requests) if requests is not None else None,
        "elapsed_s": float(seconds.group(1)) * _UNITS_MS[seconds.group(2)] / 1000 if seconds else None,
        "non_2xx": int(number(r"Non-2xx or 3xx responses: (\d+)") or 0),
        "socket_errors": dict(zip(("connect", "read", "write", "timeout"), map(int, socket.groups()), strict=True))
        if socket else {"connect": 0, "read": 0, "write": 0, "timeout": 0},
        **latency,
    }


def run_wrk(url: str, args: argparse.Namespace, write_key: str) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:12]
    command = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "--latency",
               f"--timeout={args.timeout}s", "-s", str(LUA), url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.duration + 120, check=False,
                          env={"WRITE_KEY": write_key, "RUN_ID": run_id, "PATH": "/usr/bin:/bin"})
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result = parse_wrk(done.stdout)
    if result["requests_per_s"] is None or result["requests"] is None:
        raise RuntimeError(f"could not read wrk's report:\n{done.stdout}")
    result["run_id"] = run_id
    result["raw"] = done.stdout
    return result


class LagSampler:
    """Reads /api/status every ``interval`` s during the load (a cheap query; 0 disables), to show the lag's trend."""

    def __init__(self, url: str, admin_key: str, interval: float, limit: int) -> None:
        self.samples: list[tuple[float, int, int]] = []
        self._url, self._key, self._interval, self._limit = url, admin_key, interval, limit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-sampler", daemon=True)

    def start(self) -> None:
        if self._interval > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=35)

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(self._interval) and len(self.samples) < self._limit:
            try:
                status = get_status(self._url, self._key)
            except httpx.HTTPError:
                continue
            self.samples.append((round(time.monotonic() - start, 2), int(status["events_received"]),
                                 int(status["lag"])))


def run_bare(args: argparse.Namespace, workdir: Path, index: int) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(VENV_BIN / "uvicorn"), "--app-dir", str(BENCH_DIR), "bare_asgi:app", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", "--no-access-log"]
    server = start_server("bare ASGI", command, url, workdir / f"bare-{index}.log")
    try:
        result = run_wrk(f"{url}/v1/batch", args, "wk_bare")
    finally:
        code = stop_server(server)
    result["server_exit_code"] = code
    result["server_log_problems"] = server.log_problems()
    return result


def run_portrait(args: argparse.Namespace, workdir: Path, index: int) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    write_key, admin_key = f"wk_bench_{uuid.uuid4().hex}", f"ak_bench_{uuid.uuid4().hex}"
    db_dir = workdir / f"portrait-{index}"
    db_dir.mkdir()
    server = start_server("portrait", portrait_server_args(db_dir / "bench.duckdb", port), url,
                          workdir / f"portrait-{index}.log", env=portrait_env(write_key, admin_key),
                          ready_path="/healthz")
    sampler = LagSampler(url, admin_key, args.sample_interval, limit=int(args.duration / max(args.sample_interval,
                                                                                          0.1)) + 100)
    try:
        sampler.start()
        try:
            result = run_wrk(f"{url}/v1/batch", args, write_key)
        finally:
            sampler.stop()
        at_end = get_status(url, admin_key)
        final, drain_s = wait_for_drain(url, admin_key, timeout=args.drain_timeout)
    finally:
        code = stop_server(server)
    ok_requests = result["requests"] - result["non_2xx"]
    events_per_s = result["requests_per_s"] * EVENTS_PER_REQUEST
    expected = ok_requests * EVENTS_PER_REQUEST
    received = int(final["events_received"])
    result.update({
        "events_per_s": events_per_s,
        "lag_at_end": int(at_end["lag"]),
        "lag_at_end_s_of_ingest": at_end["lag"] / events_per_s if events_per_s else None,
        "drain_s": drain_s,
        "drained": final["lag"] == 0,
        "processor_kept_up": at_end["lag"] < events_per_s,
        "events_received": received,
        "events_processed": int(final["events_processed"]),
        "events_rejected": int(final["events_rejected"]),
        "profiles": int(final["profiles"]),
        "expected_events": expected,
        # wrk stops counting at the deadline; requests still in flight then may have been committed too.
        "extra_events": received - expected,
        "lost_events": max(0, expected - received),
        "in_flight_allowance": args.connections * EVENTS_PER_REQUEST,
        "lag_samples": sampler.samples,  # [seconds since start, events_received, lag] during the load
        "server_exit_code": code,
        "server_log_problems": server.log_problems(),
    })
    return result


def summary_line(kind: str, r: dict[str, Any]) -> str:
    text = (f"  {kind:<8} {r['requests_per_s']:>9,.0f} req/s  ({r['requests']:,} requests, p50 "
            f"{r.get('p50_ms', float('nan')):.1f} ms, p99 {r.get('p99_ms', float('nan')):.1f} ms")
    if r["non_2xx"]:
        text += f", NON-2xx {r['non_2xx']:,}"
    if any(r["socket_errors"].values()):
        text += f", socket errors {r['socket_errors']}"
    return text + ")"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=20, help="seconds of load per run (default 20)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="bare+portrait pairs, alternated (default 2)")
    parser.add_argument("--timeout", type=int, default=10, help="wrk per-request timeout in seconds (default 10)")
    parser.add_argument("--sample-interval", type=float, default=1.0,
                        help="read the lag every N s during the Portrait load, 0 = never (default 1)")
    parser.add_argument("--drain-timeout", type=float, default=300.0,
                        help="longest wait for lag == 0 after the load, seconds (default 300)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian package 'wrk')", file=sys.stderr)
        return 2
    rounds: list[dict[str, Any]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="portrait-bench-") as tmp:
        workdir = Path(tmp)
        for index in range(args.rounds):
            print(f"round {index + 1}/{args.rounds}: bare ASGI ({args.duration} s)...", flush=True)
            bare = run_bare(args, workdir, index)
            print(summary_line("bare", bare), flush=True)
            print(f"round {index + 1}/{args.rounds}: portrait ({args.duration} s, then drain)...", flush=True)
            portrait = run_portrait(args, workdir, index)
            print(summary_line("portrait", portrait), flush=True)
            print(f"           lag at end {portrait['lag_at_end']:,} events "
                  f"({portrait['lag_at_end_s_of_ingest']:.2f} s of ingest), drained in {portrait['drain_s']:.2f} s; "
                  f"received {portrait['events_received']:,} of {portrait['expected_events']:,} expected "
                  f"(extra {portrait['extra_events']:+,}, lost {portrait['lost_events']:,})", flush=True)
            if portrait["lag_samples"]:
                print("           lag during load (every "
                      f"{args.sample_interval:g} s): {', '.join(f'{s[2]:,}' for s in portrait['lag_samples'])}",
                      flush=True)
            rounds.append({"bare": bare, "portrait": portrait,
                           "ratio": portrait["requests_per_s"] / bare["requests_per_s"]})
    ratios = [r["ratio"] for r in rounds]
    median_ratio = statistics.median(ratios)
    bare_rps = statistics.median(r["bare"]["requests_per_s"] for r in rounds)
    portrait_runs = [r["portrait"] for r in rounds]
    portrait_rps = statistics.median(p["requests_per_s"] for p in portrait_runs)
    summary = {
        "bare_requests_per_s": bare_rps,
        "portrait_requests_per_s": portrait_rps,
        "ratio_median": median_ratio,
        "ratios": ratios,
        "portrait_events_per_s": portrait_rps * EVENTS_PER_REQUEST,
        "portrait_p50_ms": statistics.median(p.get("p50_ms", float("nan")) for p in portrait_runs),
        "portrait_p99_ms": statistics.median(p.get("p99_ms", float("nan")) for p in portrait_runs),
        "lag_at_end_max": max(p["lag_at_end"] for p in portrait_runs),
        "drain_s_max": max(p["drain_s"] for p in portrait_runs),
        "processor_kept_up": all(p["processor_kept_up"] for p in portrait_runs),
        "lost_events": sum(p["lost_events"] for p in portrait_runs),
        "non_2xx": sum(p["non_2xx"] for p in portrait_runs),
        "server_log_problems": sum(len(p["server_log_problems"]) for p in portrait_runs),
    }
    for r in rounds:  # keep the JSON readable: wrk's raw report only once per run, without the ANSI noise
        for run in (r["bare"], r["portrait"]):
            run["raw"] = run["raw"].strip().splitlines()
    path = write_result(NAME, {
        "figure": "Ingest via /v1/batch (100 events/request): Portrait req/s as a ratio of a bare ASGI JSON endpoint",
        "options": vars(args), "summary": summary, "rounds": rounds,
        "wall_s": time.monotonic() - started,
    })
    print()
    print(f"Ingest /v1/batch, 100 events/request, {args.connections} connections, {args.duration} s x "
          f"{args.rounds} rounds")
    print(f"  bare ASGI      {bare_rps:,.0f} req/s (median)")
    print(f"  portrait       {portrait_rps:,.0f} req/s = {portrait_rps * EVENTS_PER_REQUEST:,.0f} events/s "
          f"(median), p50 {summary['portrait_p50_ms']:.1f} ms, p99 {summary['portrait_p99_ms']:.1f} ms")
    print(f"  ratio          {median_ratio:.2f} (median of {', '.join(f'{x:.2f}' for x in ratios)})")
    print(f"  lag at end     {summary['lag_at_end_max']:,} events max; drain {summary['drain_s_max']:.2f} s max; "
          f"processor kept up: {'yes' if summary['processor_kept_up'] else 'NO'}")
    print(f"  lost events    {summary['lost_events']:,}; non-2xx {summary['non_2xx']:,}; "
          f"server log problems {summary['server_log_problems']}")
    print(f"  result         {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
