"""Figure: end-to-end freshness -- event accepted -> visible on the profile, p95 < 1 s at 20,000 events/s.

Starts ``portrait serve`` on a temporary database. A separate load process (asyncio + httpx, so it does not share a
GIL with the probe) posts /v1/batch requests of 100 track events at a paced rate (``--rate`` events/s, default
20,000 = 200 requests/s) for ``--duration`` seconds, at most ``--concurrency`` requests in flight; the achieved rate
is measured, not assumed. Meanwhile the probe, every 100 ms, sends one identify with a fresh ``{"probe": "<uuid>"}``
trait for one probe user, notes when the POST returned 200, then polls ``GET /api/profiles/user_id:<probe>/traits``
every 10 ms until the trait shows that value: freshness = visible time - accepted time. Probes are sequential (a
newer value would overwrite an unseen older one), so a slow probe delays the next.

    .venv/bin/python benchmarks/freshness.py [--duration 20] [--rate 20000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
from _common import (
    free_port,
    get_status,
    percentiles,
    portrait_env,
    portrait_server_args,
    start_server,
    stop_server,
    wait_for_drain,
    write_result,
)

NAME = "freshness"
USERS = 200_000


# -- load (runs in its own process) -----------------------------------------------------------------------------
def track_batch(run_id: str, request_no: int, size: int, write_key: str, rng: random.Random) -> bytes:
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    messages = []
    for i in range(size):
        user = rng.randrange(USERS)
        messages.append({
            "type": "track", "event": "Product Viewed", "userId": f"user-{user}", "anonymousId": f"anon-{user}",
            "messageId": f"{run_id}-{request_no}-{i}", "timestamp": now,
            "properties": {"product_id": f"p-{rng.randrange(500)}", "category": "Shoes", "price": 49.99,
                           "currency": "USD", "name": "Running shoe"},
            "context": {"library": {"name": "analytics-python", "version": "2.4.0"},
                        "page": {"path": "/products/p", "url": "https://shop.example.com/p"}},
        })
    return orjson.dumps({"batch": messages, "sentAt": now, "writeKey": write_key})


class RawHttpPool:
    """A minimal keep-alive HTTP/1.1 client over asyncio streams, for the load only.

    Measured on a 2-CPU machine: httpx.AsyncClient spends ~5 ms of CPU per 40 KB POST and could not send more than
    ~14,000 events/s even to the bare ASGI endpoint, taking a whole CPU from the server under test. Writing the
    request by hand costs a small fraction of that.
    """

    def __init__(self, host: str, port: int, size: int) -> None:
        self._host, self._port = host, port
        self._idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = asyncio.Queue()
        for _ in range(size):
            self._idle.put_nowait(None)  # a slot; the connection is opened when first used
        self._open: set[asyncio.StreamWriter] = set()

    async def acquire(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Wait for a free slot (this is what bounds the requests in flight)."""
        return await self._idle.get()

    async def post(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None, path: str,
                   body: bytes) -> int:
        """POST on the slot's connection and release the slot; returns the HTTP status."""
        keep: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            if conn is None:
                conn = await asyncio.open_connection(self._host, self._port)
                self._open.add(conn[1])
            reader, writer = conn
            writer.write(b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % (path.encode(), self._host.encode(), self._port, len(body)))
            writer.write(body)
            await writer.drain()
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionError("server closed the connection")
            status = int(status_line.split()[1])
            length, close, chunked = 0, False, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if chunked:
                while (size := int((await reader.readline()).split(b";")[0], 16)) > 0:
                    await reader.readexactly(size + 2)
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass  # trailers
            else:
                await reader.readexactly(length)
            keep = None if close else conn
            return status
        finally:
            if keep is None and conn is not None:
                conn[1].close()
                self._open.discard(conn[1])
            self._idle.put_nowait(keep)

    def close(self) -> None:
        for writer in self._open:
            writer.close()


async def paced_load(url: str, write_key: str, rate: float, batch: int, duration: float, concurrency: int,
                     started: Any) -> dict[str, Any]:
    request_rate = rate / batch
    total = int(request_rate * duration)
    run_id = uuid.uuid4().hex[:10]
    rng = random.Random(7)
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    errors: list[str] = []
    behind_max = 0.0
    parsed = httpx.URL(url)
    pool = RawHttpPool(parsed.host, parsed.port or 80, concurrency)
    loop = asyncio.get_running_loop()
    last_done = 0.0

    async def send(conn: Any, number: int) -> None:
        nonlocal last_done
        try:
            body = track_batch(run_id, number, batch, write_key, rng)
            t0 = loop.time()
            status = await asyncio.wait_for(pool.post(conn, "/v1/batch", body), timeout=30)
            latencies.append((loop.time() - t0) * 1000)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        except (TimeoutError, OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            if len(errors) < 20:
                errors.append(repr(exc))
            statuses["error"] = statuses.get("error", 0) + 1
        finally:
            last_done = loop.time()

    tasks: list[asyncio.Task[None]] = []
    t_start = loop.time()
    started.set()
    hard_stop = t_start + duration * 1.5 + 5  # never run on much past the planned end when falling behind
    try:
        for number in range(total):
            target = t_start + number / request_rate
            delay = target - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            conn = await pool.acquire()  # waits while `concurrency` requests are in flight: we fall behind
            now = loop.time()
            if now > hard_stop:
                pool._idle.put_nowait(conn)
                break
            behind_max = max(behind_max, now - target)
            tasks.append(asyncio.create_task(send(conn, number)))
        sent_end = loop.time()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
    finally:
        pool.close()
    ok = statuses.get("200", 0)
    elapsed = (last_done or loop.time()) - t_start
    return {
        "target_events_per_s": rate, "target_requests_per_s": request_rate, "planned_requests": total,
        "sent_requests": len(tasks), "ok_requests": ok, "statuses": statuses, "errors": errors,
        "elapsed_s": elapsed, "sending_s": sent_end - t_start,
        "achieved_requests_per_s": ok / elapsed if elapsed else 0.0,
        "achieved_events_per_s": ok * batch / elapsed if elapsed else 0.0,
        "max_behind_schedule_s": behind_max,
        "request_latency_ms": percentiles(latencies),
        "load_client_cpu_s": time.process_time(),
    }


def load_worker(url: str, write_key: str, rate: float, batch: int, duration: float, concurrency: int,
                started: Any, finished: Any, results: Any) -> None:
    try:
        results.put(asyncio.run(paced_load(url, write_key, rate, batch, duration, concurrency, started)))
    except BaseException as exc:
        results.put({"failed": repr(exc)})
        raise
    finally:
        started.set()
        finished.set()


# -- probe (main process) ---------------------------------------------------------------------------------------
def probe(url: str, write_key: str, admin_key: str, args: argparse.Namespace, load_finished: Any
          ) -> dict[str, Any]:
    """Probe while the load runs (at least ``--duration`` s, at most as long as the load may take)."""
    user = f"probe-{uuid.uuid4().hex[:8]}"
    traits_url = f"{url}/api/profiles/user_id:{user}/traits"
    freshness_ms: list[float] = []
    accept_ms: list[float] = []
    timed_out = failed_posts = polls = 0
    longest = args.duration * 1.5 + 5  # the load process's own hard stop
    max_probes = int(longest / args.probe_interval) + 1
    with httpx.Client(timeout=30.0) as client:
        start = time.perf_counter()
        next_probe = start
        for number in range(max_probes):
            now = time.perf_counter()
            if now - start >= longest or (now - start >= args.duration and load_finished.is_set()):
                break
            if next_probe > now:
                time.sleep(next_probe - now)
            next_probe = max(next_probe + args.probe_interval, time.perf_counter())
            value = uuid.uuid4().hex
            body = orjson.dumps({"batch": [{"type": "identify", "userId": user, "messageId": f"{user}-{number}",
                                            "traits": {"probe": value}}], "writeKey": write_key})
            sent = time.perf_counter()
            response = client.post(f"{url}/v1/batch", content=body, headers={"Content-Type": "application/json"})
            accepted = time.perf_counter()
            accept_ms.append((accepted - sent) * 1000)
            if response.status_code != 200:
                failed_posts += 1
                continue
            seen = False
            while time.perf_counter() - accepted < args.probe_timeout:
                poll_started = time.perf_counter()
                polls += 1
                got = client.get(traits_url, headers={"Authorization": f"Bearer {admin_key}"})
                if got.status_code == 200 and got.json().get("probe") == value:
                    freshness_ms.append((time.perf_counter() - accepted) * 1000)
                    seen = True
                    break
                pause = args.poll_interval - (time.perf_counter() - poll_started)
                if pause > 0:
                    time.sleep(pause)
            if not seen:
                timed_out += 1
    return {"probe_user": user, "probes": len(freshness_ms) + timed_out + failed_posts, "seen": len(freshness_ms),
            "timed_out": timed_out, "failed_posts": failed_posts, "polls": polls,
            "freshness_ms": percentiles(freshness_ms), "probe_post_ms": percentiles(accept_ms),
            "samples_ms": [round(x, 2) for x in freshness_ms]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load and probing (default 20)")
    parser.add_argument("--rate", type=float, default=20_000, help="target events/s (default 20,000)")
    parser.add_argument("--batch", type=int, default=100, help="events per request (default 100)")
    parser.add_argument("--concurrency", type=int, default=64, help="most load requests in flight (default 64)")
    parser.add_argument("--probe-interval", type=float, default=0.1, help="seconds between probes (default 0.1)")
    parser.add_argument("--poll-interval", type=float, default=0.01, help="seconds between polls (default 0.01)")
    parser.add_argument("--probe-timeout", type=float, default=30.0, help="give up on a probe after (default 30)")
    parser.add_argument("--drain-timeout", type=float, default=300.0, help="longest wait for lag 0 (default 300)")
    args = parser.parse_args(argv)
    write_key, admin_key = f"wk_bench_{uuid.uuid4().hex}", f"ak_bench_{uuid.uuid4().hex}"
    started_at = time.monotonic()
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="portrait-fresh-") as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server("portrait", portrait_server_args(Path(tmp) / "fresh.duckdb", port), url,
                              Path(tmp) / "server.log", env=portrait_env(write_key, admin_key), ready_path="/healthz")
        loader: Any = None
        try:
            started, finished, results = ctx.Event(), ctx.Event(), ctx.Queue()
            loader = ctx.Process(target=load_worker, name="freshness-load", daemon=True,
                                 args=(url, write_key, args.rate, args.batch, args.duration, args.concurrency,
                                       started, finished, results))
            loader.start()
            if not started.wait(timeout=30):
                raise RuntimeError("the load process did not start")
            print(f"load: {args.rate:,.0f} events/s target ({args.rate / args.batch:,.0f} requests of {args.batch}) "
                  f"for {args.duration:g} s; probing every {args.probe_interval * 1000:.0f} ms ...", flush=True)
            probes = probe(url, write_key, admin_key, args, finished)
            load = results.get(timeout=args.duration + 180)
            loader.join(timeout=30)
            at_end = get_status(url, admin_key)
            final, drain_s = wait_for_drain(url, admin_key, timeout=args.drain_timeout)
        finally:
            if loader is not None and loader.is_alive():
                loader.terminate()
                loader.join(timeout=10)
            exit_code = stop_server(server)
            problems = server.log_problems()
    if "failed" in load:
        print(f"the load process failed: {load['failed']}", file=sys.stderr)
        return 1
    fresh = probes["freshness_ms"]
    sustained = load["achieved_events_per_s"] >= 0.95 * args.rate
    summary = {
        "freshness_ms": fresh,
        "p95_under_1s": bool(fresh) and fresh["p95"] < 1000,
        "probes": probes["probes"], "probes_seen": probes["seen"], "probes_timed_out": probes["timed_out"],
        "target_events_per_s": args.rate,
        "achieved_events_per_s": load["achieved_events_per_s"],
        "rate_sustained": sustained,
        "load_statuses": load["statuses"],
        "lag_at_end": int(at_end["lag"]),
        "drain_s": drain_s,
        "events_received": int(final["events_received"]),
        "server_exit_code": exit_code,
        "server_log_problems": problems,
    }
    path = write_result(NAME, {
        "figure": "End-to-end freshness: event accepted -> visible on the profile, p95 < 1 s at 20,000 events/s",
        "options": vars(args), "summary": summary, "load": load, "probes": probes,
        "wall_s": time.monotonic() - started_at,
    })
    print()
    print(f"Freshness (accepted -> visible in /api/profiles/.../traits), {probes['seen']} of {probes['probes']} "
          f"probes seen (the probe's POST itself took p50 {probes['probe_post_ms'].get('p50', float('nan')):.0f} ms)")
    if fresh:
        print(f"  p50 {fresh['p50']:.0f} ms  p95 {fresh['p95']:.0f} ms  p99 {fresh['p99']:.0f} ms  "
              f"max {fresh['max']:.0f} ms  (p95 < 1 s: {'yes' if summary['p95_under_1s'] else 'NO'})")
    print(f"  load: achieved {load['achieved_events_per_s']:,.0f} events/s of {args.rate:,.0f} target "
          f"({load['ok_requests']:,} of {load['planned_requests']:,} requests OK, statuses {load['statuses']}, "
          f"request p50 {load['request_latency_ms'].get('p50', float('nan')):.0f} ms, "
          f"p99 {load['request_latency_ms'].get('p99', float('nan')):.0f} ms)")
    if not sustained:
        print(f"  NOTE: the target rate was NOT sustained (achieved < 95% of target; at most "
              f"{load['max_behind_schedule_s']:.1f} s behind schedule): the figure does not hold at this rate here")
    print(f"  lag at end {summary['lag_at_end']:,} events, drained in {drain_s:.2f} s; "
          f"server log problems: {len(problems)}")
    print(f"  result {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
