"""Soak: a real ``portrait serve`` under mixed traffic for ``--minutes``, sampled every ``--every`` seconds, looking
for anything that grows with time or with the number of connections instead of levelling off.

Traffic (each in its own thread, all at once):

- **SDK**: the real segment-analytics-python client sending identify/track to ``/v1/batch``;
- **many senders**: httpx ``/v1/batch`` posts from 127.0.0.2 - 127.0.0.250 (a bucket each in the write-key rate
  limiter), some of them over the limit;
- **console**: signing in (a new session every round, never signed out: a browser closed for good), the pages, and
  the live view's ``/console/api/recent`` poll, with connections dropped in the middle of answers;
- **admin**: segments created and deleted, attributes read and created, exports (some downloads dropped
  half-way), backups, keys created and revoked, privacy requests (access and erase);
- **bursts**: 60 API reads at once every 30 s (the server's worker threads grow, then idle out after 10 s);
- **bad requests**: oversize bodies, malformed JSON, unknown keys, and slow bodies abandoned mid-way.

Every request of the console, admin, burst and bad-request traffic is timed (``timed_client``): one slower than
``SLOW_SECONDS`` or failing (a timeout, a dropped connection) is written as it ends to ``slow_requests.jsonl`` in the
run's folder (method, path, kind of traffic, start, seconds, status or error) and kept in the result
(``slow_requests``), so a request that times out can be found again in the server log by its time.

The server runs through a small launcher (``--serve``, this file) that is ``portrait serve`` plus one thread writing
the sizes of the server's in-memory structures every sample to a JSON-lines file: the rate-limit buckets, console
sessions, per-thread database sessions, dedup ids, recent rejections, the admission counter. From outside: open file
descriptors, threads, RSS, database + WAL size, DuckDB's memory (``/api/status``), entries in the server's
temporary folder (its TMPDIR: exports and downloads).

    .venv/bin/python benchmarks/soak.py [--minutes 12] [--every 10] [--checkpoint-wal-mb 32] [--keep]

Writes ``benchmarks/results/soak.json`` (first, last and every sample) and prints a table; then stops the server
with SIGTERM, timing how long it takes, and opens the database again to check every event accepted is in it; the
run's folder (database, backups, server log) is removed unless ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from _common import free_port, stop_server, write_result
from _common import start_server as start_process

NAME = "soak"
WRITE_KEY = "soak-write-key"
ADMIN_KEY = "soak-admin-key"
SENDERS = [f"127.0.0.{n}" for n in range(2, 251)]


# -- the launcher: portrait serve, plus a thread reporting the sizes of in-memory structures ----------------------
def serve_with_probe(db: str, port: int, probe_path: str, every: float) -> None:
    """``portrait serve`` in this process, with the service and console caught as they are built (for the probe)."""
    import portrait.api as api
    from portrait.cli import app as cli_app
    from portrait.web import common

    caught: dict[str, Any] = {}
    build = api.create_app
    console_init = common.Console.__init__

    def create_app(*args: Any, **kwargs: Any) -> Any:
        made = build(*args, **kwargs)
        caught["fast_path"] = made
        caught["portrait"] = made._portrait
        return made

    def record_console(self: Any, portrait: Any) -> None:
        console_init(self, portrait)
        caught["console"] = self

    api.create_app = create_app  # type: ignore[assignment]
    common.Console.__init__ = record_console  # type: ignore[method-assign]
    threading.Thread(target=_probe_loop, args=(caught, Path(probe_path), every), daemon=True,
                     name="soak-probe").start()
    sys.argv = ["portrait", "serve", "--db", db, "--host", "127.0.0.1", "--port", str(port)]
    cli_app()


def _probe_loop(caught: dict[str, Any], path: Path, every: float) -> None:
    while True:
        time.sleep(every)
        if "portrait" not in caught or "console" not in caught:
            continue
        with contextlib.suppress(Exception), path.open("a") as out:
            out.write(json.dumps({"t": time.time(), **inner_sizes(caught)}) + "\n")


def inner_sizes(caught: dict[str, Any]) -> dict[str, int]:
    """The sizes of the server's structures that live as long as it does (private attributes: this is a probe)."""
    portrait = caught["portrait"]
    writer = portrait.writer
    return {
        "rate_buckets": len(portrait.rate_limiter._buckets),
        "console_sessions": len(caught["console"].sessions._sessions),
        "db_sessions": len(portrait._sessions),
        "dedup_ids": len(writer._recent),
        "recent_rejections": len(writer._recent_rejections._seen),
        "admission_bytes": caught["fast_path"].admission.in_progress,
        "keys_in_memory": len(portrait.keys.all()),
        "python_threads": threading.active_count(),
    }


# -- timing every request of the mixed traffic -----------------------------------------------------------------
SLOW_SECONDS = 5.0


class SlowRequests:
    """The requests slower than ``SLOW_SECONDS`` or failing, in memory and (when ``path`` is set) one JSON line each
    in a file as they end: a run stopped early keeps what it saw."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.found: list[dict[str, Any]] = []
        self.path: Path | None = None

    def record(self, kind: str, method: str, target: str, started: float, seconds: float, status: int | str
               ) -> None:
        if seconds < SLOW_SECONDS and isinstance(status, int):
            return
        row = {"kind": kind, "method": method, "path": target,
               "start": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)) + f".{int(started % 1 * 1000):03d}Z",
               "seconds": round(seconds, 2), "status": status}
        with self._lock:
            self.found.append(row)
            if self.path is not None:
                with self.path.open("a") as out:
                    out.write(json.dumps(row) + "\n")
        print(f"slow request: {json.dumps(row)}", file=sys.stderr, flush=True)


SLOW = SlowRequests()


class TimedTransport(httpx.BaseTransport):
    """httpx's transport, timing each request for ``SLOW`` (the kind of traffic it belongs to is the label)."""

    def __init__(self, kind: str, **options: Any) -> None:
        self.kind = kind
        self._inner = httpx.HTTPTransport(**options)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started, clock = time.time(), time.monotonic()
        target = request.url.raw_path.decode()
        try:
            response = self._inner.handle_request(request)
            response.read()  # the whole answer: a download slow to finish is slow too
        except Exception as exc:
            SLOW.record(self.kind, request.method, target, started, time.monotonic() - clock, type(exc).__name__)
            raise
        SLOW.record(self.kind, request.method, target, started, time.monotonic() - clock, response.status_code)
        return response

    def close(self) -> None:
        self._inner.close()


def timed_client(kind: str, transport_options: dict[str, Any] | None = None, **options: Any) -> httpx.Client:
    """An ``httpx.Client`` whose requests are timed for ``SLOW`` under ``kind``."""
    limits = options.get("limits")
    inner = dict(transport_options or {})
    if limits is not None:
        inner["limits"] = limits
    return httpx.Client(transport=TimedTransport(kind, **inner), **options)


@contextlib.contextmanager
def timed(kind: str, method: str, target: str) -> Any:
    """Times a request made without httpx (a raw socket) for ``SLOW``."""
    started, clock = time.time(), time.monotonic()
    try:
        yield
    except Exception as exc:
        SLOW.record(kind, method, target, started, time.monotonic() - clock, type(exc).__name__)
        raise
    SLOW.record(kind, method, target, started, time.monotonic() - clock, 0)


# -- traffic --------------------------------------------------------------------------------------------------
class Counts:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_name: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.by_name[name] = self.by_name.get(name, 0) + n


def message(kind: str = "track") -> dict[str, Any]:
    user = f"user-{random.randint(1, 3000)}"
    if kind == "identify":
        return {"type": "identify", "userId": user, "messageId": str(uuid.uuid4()),
                "traits": {"email": f"{user}@example.com", "plan": random.choice(["free", "pro"])}}
    return {"type": "track", "userId": user, "event": random.choice(["Viewed", "Added", "Bought"]),
            "messageId": str(uuid.uuid4()), "properties": {"price": random.randint(1, 500)}}


def sdk_traffic(url: str, stop: threading.Event, counts: Counts) -> None:
    from segment.analytics import Client

    client = Client(WRITE_KEY, host=url, max_retries=1, upload_interval=0.2,
                    on_error=lambda error, items: counts.add("sdk_errors"))
    while not stop.is_set():
        user = f"user-{random.randint(1, 3000)}"
        client.identify(user, {"email": f"{user}@example.com", "plan": random.choice(["free", "pro"])})
        for _ in range(4):
            client.track(user, random.choice(["Viewed", "Added", "Bought"]), {"price": random.randint(1, 500)})
        counts.add("sdk_messages", 5)
        time.sleep(0.02)
    client.flush()
    client.shutdown()


def many_senders(url: str, stop: threading.Event, counts: Counts) -> None:
    """Batches from many client addresses; every tenth address bursts past the rate limit."""
    clients = {ip: httpx.Client(transport=httpx.HTTPTransport(local_address=ip), timeout=30) for ip in SENDERS}
    try:
        while not stop.is_set():
            ip = random.choice(SENDERS)
            burst = 150 if SENDERS.index(ip) % 10 == 0 else 1
            for _ in range(burst):
                batch = {"writeKey": WRITE_KEY, "batch": [message() for _ in range(5)]}
                status = clients[ip].post(f"{url}/v1/batch", json=batch).status_code
                counts.add(f"senders_{status}")
            time.sleep(0.01)
    finally:
        for client in clients.values():
            client.close()


def console_traffic(url: str, stop: threading.Event, counts: Counts) -> None:
    pages = ["/", "/attributes", "/customers", "/segments", "/events", "/admin", "/funnels?steps=Viewed,Bought"]
    while not stop.is_set():
        with timed_client("console", base_url=url, timeout=30) as browser:  # a new browser: signs in, never signs out
            browser.post("/login", data={"key": ADMIN_KEY}, headers={"Origin": url})
            for page in pages:
                counts.add(f"console_{browser.get(page).status_code}")
            after = 0
            for _ in range(5):  # the live view's poll
                found = browser.get("/console/api/recent", params={"after": after})
                counts.add(f"recent_{found.status_code}")
                events = found.json().get("events", []) if found.status_code == 200 else []
                after = events[-1]["seq"] if events else after
            cookie = browser.cookies.get("portrait_session") or ""
        _dropped_request(url, "GET /console/api/recent?after=0", cookie=cookie, kind="console")
        counts.add("console_rounds")
        time.sleep(0.2)


def _dropped_request(url: str, target: str, cookie: str = "", admin: bool = False, kind: str = "admin") -> None:
    """A request whose connection is closed after the first bytes of the answer (a tab closed, a network gone).
    Timed until those first bytes (status 0: the answer is not read)."""
    host, port = url.removeprefix("http://").split(":")
    method, path = target.split(" ", 1)
    with timed(kind, method, path), socket.create_connection((host, int(port)), timeout=30) as sock:
        headers = [f"{target} HTTP/1.1", f"Host: {host}"]
        if cookie:
            headers.append(f"Cookie: portrait_session={cookie}")
        if admin:
            headers.append(f"Authorization: Bearer {ADMIN_KEY}")
        sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode())
        with contextlib.suppress(OSError):
            sock.recv(512)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST


def admin_traffic(url: str, stop: threading.Event, counts: Counts) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    round_ = 0
    with timed_client("admin", base_url=url, headers=headers, timeout=120) as api:
        _wait_for_attribute(api, "plan", stop)
        while not stop.is_set():
            round_ += 1
            name = f"soak {round_}"
            made = api.post("/api/segments", json={"name": name, "condition": 'plan = "pro"'})
            counts.add(f"segment_create_{made.status_code}")
            if made.status_code == 201:
                segment_id = made.json()["id"]
                counts.add(f"segment_delete_{api.delete(f'/api/segments/{segment_id}').status_code}")
            counts.add(f"attributes_{api.get('/api/attributes').status_code}")
            if round_ % 20 == 1:
                attribute = {"code": f"soak_{round_}", "type": "string", "name": f"Soak {round_}"}
                counts.add(f"attribute_create_{api.post('/api/attributes', json=attribute).status_code}")
            key = api.post("/api/keys", json={"kind": "read", "name": f"soak {round_}"})
            counts.add(f"key_create_{key.status_code}")
            if key.status_code == 201:
                key_id = key.json()["id"]
                counts.add(f"key_revoke_{api.post(f'/api/keys/{key_id}/revoke').status_code}")
            counts.add(f"export_{api.get('/api/exports/profiles').status_code}")
            _dropped_request(url, "GET /api/exports/profiles?format=ndjson", admin=True)
            counts.add("export_dropped")
            user = f"user-{random.randint(1, 3000)}"
            kind = "erase" if round_ % 5 == 0 else "access"
            asked = api.post("/api/privacy/requests", json={"type": kind, "identity": f"user_id:{user}"})
            counts.add(f"privacy_{kind}_{asked.status_code}")
            if round_ % 15 == 0:
                counts.add(f"backup_{api.post('/api/backups', headers={'Prefer': 'respond-async'}).status_code}")
            counts.add(f"status_{api.get('/api/status').status_code}")
            time.sleep(0.5)


def _wait_for_attribute(api: httpx.Client, code: str, stop: threading.Event) -> None:
    """Until the SDK traffic's first trait of ``code`` is processed, a segment on it is rightly refused (400: no
    attribute is named 'plan'): every run counted one segment_create_400 from its first round before this wait."""
    while not stop.is_set():
        if any(attribute["code"] == code for attribute in api.get("/api/attributes").json()["attributes"]):
            return
        stop.wait(0.5)


def bursts(url: str, stop: threading.Event, counts: Counts) -> None:
    """Every 30 s, 60 API reads at once (a spike: the server's worker threads grow to serve it, then idle out),
    with a read key of their own (the rate limit is per key)."""
    headers = {"Authorization": f"Bearer {new_key(url, 'read', 'soak bursts')}"}
    with timed_client("bursts", base_url=url, headers=headers, timeout=120,
                      limits=httpx.Limits(max_connections=60)) as api:
        while not stop.wait(30):
            spike = [threading.Thread(target=lambda: counts.add(f"burst_{api.get('/api/attributes').status_code}"))
                     for _ in range(60)]
            for thread in spike:
                thread.start()
            for thread in spike:
                thread.join()


def bad_traffic(url: str, stop: threading.Event, counts: Counts) -> None:
    with timed_client("bad", base_url=url, timeout=60) as client:
        while not stop.is_set():
            oversize = b'{"writeKey":"%s","batch":[' % WRITE_KEY.encode() + b" " * (600 * 1024) + b"]}"
            counts.add(f"oversize_{client.post('/v1/batch', content=oversize).status_code}")
            broken = b'{"writeKey":"%s","batch":[{"type":' % WRITE_KEY.encode()
            counts.add(f"malformed_{client.post('/v1/batch', content=broken).status_code}")
            unknown = {"writeKey": "nobody", "batch": [message()]}
            counts.add(f"unknown_key_{client.post('/v1/batch', json=unknown).status_code}")
            rejected = {"writeKey": WRITE_KEY, "batch": [{"type": "track", "messageId": str(uuid.uuid4())}]}
            counts.add(f"invalid_message_{client.post('/v1/batch', json=rejected).status_code}")
            _slow_body(url)
            counts.add("slow_bodies")
            time.sleep(0.1)


def new_key(url: str, kind: str, name: str) -> str:
    made = httpx.post(f"{url}/api/keys", json={"kind": kind, "name": name},
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60)
    made.raise_for_status()
    secret: str = made.json()["key"]
    return secret


def _slow_body(url: str) -> None:
    """A body promised at 10 KB of which a few bytes come, then the client goes away."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /v1/batch HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: 10240\r\n\r\n{{\"batch\": [".encode())
        time.sleep(0.3)


# -- sampling -------------------------------------------------------------------------------------------------
def read_status(url: str, key: str) -> dict[str, Any]:
    """/api/status, waiting out a refusal (the sampler has a key of its own, but the server may be busy)."""
    while True:
        answer = httpx.get(f"{url}/api/status", headers={"Authorization": f"Bearer {key}"}, timeout=60)
        if answer.status_code == 200:
            found: dict[str, Any] = answer.json()
            return found
        time.sleep(float(answer.headers.get("retry-after", "1")))


def outer_sample(pid: int, db: Path, url: str, key: str) -> dict[str, Any]:
    status = read_status(url, key)
    rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if line.startswith("VmRSS:"))
    wal = db.with_name(db.name + ".wal")
    return {
        "t": time.time(), "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": len(os.listdir(f"/proc/{pid}/task")),
        "rss_mb": round(rss_kb / 1024, 1), "db_mb": round(db.stat().st_size / 2**20, 1),
        "wal_mb": round(wal.stat().st_size / 2**20, 1) if wal.exists() else 0.0,
        "duckdb_mb": status["memory"]["database_mb"],
        "events": status["events_received"], "lag": status["lag"],
        "temp_entries": len(os.listdir(db.parent / "tmp")),  # the server's TMPDIR: exports, console downloads
    }


def latest_inner(probe: Path) -> dict[str, Any]:
    lines = probe.read_text().splitlines() if probe.exists() else []
    return json.loads(lines[-1]) if lines else {}


def run(minutes: float, every: float, checkpoint_wal_mb: int | None = None, *, keep: bool = False
        ) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="portrait-soak-"))
    db, probe, port = folder / "soak.duckdb", folder / "probe.jsonl", free_port()
    url = f"http://127.0.0.1:{port}"
    (folder / "tmp").mkdir()
    env = {"TMPDIR": str(folder / "tmp"), "PORTRAIT_WRITE_KEY": WRITE_KEY, "PORTRAIT_ADMIN_KEY": ADMIN_KEY,
           "PORTRAIT_NO_PROGRESS": "1",
           "PORTRAIT_BODY_TIMEOUT_SECONDS": "2", "PORTRAIT_RATE_LIMIT": "20",
           "PORTRAIT_BACKUP_DIR": str(folder / "backups"), "PORTRAIT_BACKUP_KEEP": "2",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}  # this checkout's Portrait
    if checkpoint_wal_mb is not None:  # a smaller threshold: checkpoints within the run, the WAL seen to level off
        env["PORTRAIT_CHECKPOINT_WAL_MB"] = str(checkpoint_wal_mb)
    args = [sys.executable, __file__, "--serve", str(db), str(port), str(probe), str(every)]
    server = start_process(NAME, args, url, folder / "server.log", env=env, ready_path="/healthz")
    SLOW.path = folder / "slow_requests.jsonl"
    stop, counts = threading.Event(), Counts()
    drivers: list[Callable[[str, threading.Event, Counts], None]] = [
        sdk_traffic, many_senders, console_traffic, admin_traffic, bursts, bad_traffic]
    threads = [threading.Thread(target=_guarded, args=(d, url, stop, counts), name=d.__name__) for d in drivers]
    samples = []
    try:
        sampler_key = new_key(url, "admin", "soak sampler")
        for thread in threads:
            thread.start()
        end = time.monotonic() + minutes * 60
        while time.monotonic() < end:
            time.sleep(every)
            sample = {**outer_sample(server.process.pid, db, url, sampler_key),
                      **{f"in_{k}": v for k, v in latest_inner(probe).items() if k != "t"}}
            samples.append(sample)
            print(json.dumps(sample), flush=True)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        accepted = read_status(url, sampler_key)["events_received"]
        started = time.monotonic()
    finally:
        stop.set()
        code = stop_server(server, grace=60)
    stopped_in = time.monotonic() - started
    reopened = _events_in(db)
    problems = server.log_problems()
    if keep:
        print(f"kept {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return {"minutes": minutes, "checkpoint_wal_mb": checkpoint_wal_mb, "counts": counts.by_name,
            "first": samples[0] if samples else None, "last": samples[-1] if samples else None, "samples": samples,
            "shutdown": {"exit_code": code, "seconds": round(stopped_in, 2), "events_before": accepted,
                         "events_after_reopen": reopened},
            "slow_requests": SLOW.found, "log_problems": problems}


def _guarded(driver: Callable[[str, threading.Event, Counts], None], url: str, stop: threading.Event,
             counts: Counts) -> None:
    while not stop.is_set():  # a driver that hits an error (a timeout) starts again: the soak goes on
        try:
            driver(url, stop, counts)
        except Exception as exc:  # counted and shown, not fatal
            counts.add(f"{driver.__name__}_error_{type(exc).__name__}")
            time.sleep(1)


def _events_in(db: Path) -> int:
    """The events the database counts as received, opened again after the stop (an erasure deletes events from
    the log, so its rows are not the measure)."""
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        found = con.execute("SELECT value FROM counters WHERE name = 'events_received'").fetchone()
    return int(found[0]) if found else 0


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        signal.signal(signal.SIGINT, signal.default_int_handler)
        serve_with_probe(sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--checkpoint-wal-mb", type=int, default=None,
                        help="PORTRAIT_CHECKPOINT_WAL_MB for the server (default: the server's own, 256)")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (database, server log)")
    options = parser.parse_args()
    result = run(options.minutes, options.every, options.checkpoint_wal_mb, keep=options.keep)
    path = write_result(NAME, result)
    keys = ("fds", "threads", "rss_mb", "db_mb", "wal_mb", "duckdb_mb", "events", "temp_entries",
            *(k for k in (result["last"] or {}) if k.startswith("in_")))
    for key in keys:
        print(f"{key:>24}: {result['first'].get(key)!s:>12} -> {result['last'].get(key)!s:>12}")
    print(json.dumps({"shutdown": result["shutdown"], "counts": result["counts"],
                      "slow_requests": result["slow_requests"], "log_problems": result["log_problems"]}, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
