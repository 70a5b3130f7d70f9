"""Figure: ten erasure requests queued at once on a real server with 100,000 profiles / ~1M events -- the seconds
from the first request to the last one done (the figure). Everything else is printed as context.

Builds a database through the real service (identify messages with email, phone, name and consent for every
profile, track events with properties and context, one customer with ``--heavy`` events; segments and calculated
attributes defined before the events are applied), then starts ``portrait serve`` on it and measures, printing
each as context:

1. an access request for the heavy customer (created -> done, through the API);
2. an erasure of the heavy customer while a thread sends ``/v1/batch`` without pause and another polls
   ``/api/status`` and a profile lookup: the request's time, the slowest status and lookup answers meanwhile,
   and that every event sent was accepted and is in the log afterwards;
3. ten erasures queued at once (created -> last one done): the figure;
4. the file rewrite that leaves no byte of the erased on disk: the server's stop and the next start (the rewrite
   runs then), timed, and a scan of the data directory for the erased people's emails;
5. retention (``expire``) of the oldest ~half of the log, in process on a copy;
6. consent: 10,000 identify messages with ``context.consent`` through ``/v1/batch`` (sent -> applied), and an
   export of the profiles granting that purpose.

    .venv/bin/python benchmarks/privacy_speed.py [--profiles 100000] [--events 1000000] [--keep PATH]

With ``--keep PATH`` the built database is kept at PATH (and reused, copied, if it exists).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from _common import (
    free_port,
    percentiles,
    portrait_env,
    portrait_server_args,
    start_server,
    stop_server,
    write_result,
)

from portrait.config import Settings
from portrait.service import Portrait

NAME = "privacy_speed"
CHUNK = 20_000
WRITE_KEY, ADMIN_KEY = "wk_privacy_bench_write", "ak_privacy_bench_admin"
BASE_TIME = datetime(2025, 11, 1, tzinfo=UTC)  # the year of events ends before today
EVENTS = ("Product Viewed", "Product Added", "Order Completed", "Page Viewed", "Email Opened")
SEGMENTS = {"buyers": 'performed("Order Completed")', "pro": 'plan = "pro"',
            "engaged": 'performed("Product Viewed") and consent("email") = granted'}
CALCULATED = {"orders": 'count("Order Completed")', "revenue": 'sum("Order Completed", revenue)',
              "last_sku": 'last_value("Product Viewed", sku)'}


def _stamp(seconds: float) -> str:
    return (BASE_TIME + timedelta(seconds=seconds)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def email(i: int) -> str:
    return f"person{i}.privacy@example.com"


def identify(i: int, at: float, consent: dict[str, Any] | None = None, tag: str = "") -> dict[str, Any]:
    return {"type": "identify", "userId": f"user-{i}", "messageId": f"id{tag}-{i}", "timestamp": _stamp(at),
            "traits": {"email": email(i), "phone": f"+4860{i:07d}", "first_name": f"Name{i}",
                       "plan": ("free", "pro", "team")[i % 3]},
            "context": {"ip": "192.0.2.7", "consent": consent or {"email": "granted" if i % 2 else "denied"}}}


def track(i: int, n: int, at: float) -> dict[str, Any]:
    event = EVENTS[n % len(EVENTS)]
    properties: dict[str, Any] = {"sku": f"SKU-{(i + n) % 5000}", "path": f"/p/{n % 97}"}
    if event == "Order Completed":
        properties["revenue"] = round(5 + (i * 31 + n) % 200, 2)
    return {"type": "track", "event": event, "userId": f"user-{i}", "messageId": f"t-{i}-{n}",
            "timestamp": _stamp(at), "properties": properties, "context": {"ip": "198.51.100.9", "page": {
                "url": f"https://shop.example.com/p/{n % 97}"}}}


def messages(profiles: int, events: int, heavy: int) -> Any:
    """Chunks of messages: an identify per profile, then tracks spread over a year; profile 0 gets ``heavy``."""
    per_profile = max(0, round((events - profiles - heavy) / profiles))
    chunk: list[dict[str, Any]] = []
    span = 365 * 86400
    for i in range(profiles):
        chunk.append(identify(i, span * i / profiles / 4))
        chunk.extend(track(i, n, span * (i / profiles / 4 + (n + 1) / (per_profile + 2) * 0.75))
                     for n in range(per_profile))
        if i == 0:
            chunk.extend(track(0, per_profile + n, span * n / heavy) for n in range(heavy))
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def build(path: Path, profiles: int, events: int, heavy: int) -> dict[str, float]:
    started = time.perf_counter()
    service = Portrait(Settings(db_path=str(path)), background=False)
    try:
        service.create_attribute({"code": "plan", "name": "Plan", "type": "string"})
        for code, definition in CALCULATED.items():
            service.create_attribute({"code": code, "name": code, "definition": definition})
        for name, condition in SEGMENTS.items():
            service.create_segment({"name": name, "condition": condition})
        sent = 0
        for chunk in messages(profiles, events, heavy):
            service.ingest_messages(chunk, source="bench")
            sent += len(chunk)
            service.process_pending()
            print(f"  built {sent:,} events, {time.perf_counter() - started:.0f} s", flush=True)
        status = service.status()
    finally:
        service.close()
    return {"build_s": time.perf_counter() - started, "events": sent, "profiles": status["profiles"]}


class Traffic:
    """While running: one thread sends /v1/batch without pause (counting what was accepted), one polls
    /api/status and a profile lookup (their answer times, with when each was sent)."""

    def __init__(self, url: str, first_user: int) -> None:
        self.url, self.first_user = url, first_user
        self.stop = threading.Event()
        self.sent = self.accepted = 0
        self.failures: list[str] = []
        self.status_ms: list[tuple[float, float]] = []
        self.lookup_ms: list[tuple[float, float]] = []
        self.ingest_ms: list[tuple[float, float]] = []
        self._threads = [threading.Thread(target=self._ingest), threading.Thread(target=self._probe)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join()

    def _ingest(self) -> None:
        with httpx.Client(auth=(WRITE_KEY, ""), timeout=120) as client:
            while not self.stop.is_set():
                batch = [{"type": "track", "event": "Product Viewed", "userId": f"user-{self.first_user + n % 500}",
                          "messageId": f"during-{self.first_user}-{self.sent + n}", "properties": {"sku": "x"}}
                         for n in range(100)]
                began = time.perf_counter()
                response = client.post(f"{self.url}/v1/batch", json={"batch": batch})
                self.ingest_ms.append((began, (time.perf_counter() - began) * 1000))
                self.sent += len(batch)
                if response.status_code == 200:
                    self.accepted += len(batch)
                else:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")

    def _probe(self) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=120) as client:
            while not self.stop.is_set():
                for path, into in (("/api/status", self.status_ms),
                                   (f"/api/profiles/email:{email(12)}", self.lookup_ms)):
                    began = time.perf_counter()
                    client.get(f"{self.url}{path}").raise_for_status()
                    into.append((began, (time.perf_counter() - began) * 1000))
                time.sleep(0.02)


def _during(samples: list[tuple[float, float]], since: float, until: float) -> dict[str, float]:
    """Percentiles of the answers that were under way at some moment between ``since`` and ``until``."""
    overlapping = [ms for at, ms in samples if at <= until and at + ms / 1000 >= since]
    return {k: round(v, 1) for k, v in percentiles(overlapping).items()}


def request(client: httpx.Client, kind: str, identity: str) -> str:
    response = client.post("/api/privacy/requests", json={"type": kind, "identity": identity})
    response.raise_for_status()
    return str(response.json()["id"])


def wait_done(client: httpx.Client, request_id: str, timeout: float = 1800) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer: dict[str, Any] = client.get(f"/api/privacy/requests/{request_id}").json()
        if answer["status"] in ("done", "failed"):
            if answer["status"] == "failed":
                raise RuntimeError(f"request {request_id} failed: {answer.get('error')}")
            return answer
        time.sleep(0.05)
    raise RuntimeError(f"request {request_id} not done after {timeout} s")


def access(client: httpx.Client) -> dict[str, Any]:
    began = time.perf_counter()
    answer = wait_done(client, request(client, "access", f"email:{email(0)}"))
    seconds = time.perf_counter() - began
    print(f"access request, {len(answer['result']['events']):,} events: {seconds:.2f} s", flush=True)
    return {"seconds": round(seconds, 2), "events": len(answer["result"]["events"])}


def erase_under_traffic(client: httpx.Client, url: str) -> dict[str, Any]:
    received = client.get("/api/status").json()["events_received"]
    with Traffic(url, first_user=50_000) as traffic:
        time.sleep(2)
        began = time.perf_counter()
        answer = wait_done(client, request(client, "erase", f"email:{email(0)}"))
        ended = time.perf_counter()
        time.sleep(2)
    status = client.get("/api/status").json()
    stored = status["events_received"] - received
    figures = {"seconds": round(ended - began, 2), "events_erased": answer["result"]["events"],
               "status_ms": _during(traffic.status_ms, began, ended),
               "lookup_ms": _during(traffic.lookup_ms, began, ended),
               "ingest_request_ms": _during(traffic.ingest_ms, began, ended),
               "status_ms_before": _during(traffic.status_ms, 0, began),
               "sent": traffic.sent, "accepted": traffic.accepted, "stored": stored, "failures": traffic.failures[:5]}
    print(f"erasure of {figures['events_erased']:,} events under traffic: {figures['seconds']} s; /api/status "
          f"max {figures['status_ms'].get('max')} ms, lookup max {figures['lookup_ms'].get('max')} ms, ingest "
          f"request max {figures['ingest_request_ms'].get('max')} ms; sent {traffic.sent:,}, accepted "
          f"{traffic.accepted:,}, in the log {stored:,}", flush=True)
    if traffic.failures or stored != traffic.sent:
        raise RuntimeError(f"ingestion lost events during the erasure: {figures}")
    return figures


def ten_erasures(client: httpx.Client) -> dict[str, Any]:
    began = time.perf_counter()
    ids = [request(client, "erase", f"email:{email(i)}") for i in range(1, 11)]
    for request_id in ids:
        wait_done(client, request_id)
    seconds = time.perf_counter() - began
    print(f"ten erasures queued at once: {seconds:.2f} s", flush=True)
    return {"seconds": round(seconds, 2)}


def consent_and_export(client: httpx.Client, url: str) -> dict[str, Any]:
    began = time.perf_counter()
    with httpx.Client(auth=(WRITE_KEY, ""), timeout=120) as writer:
        for start in range(20_000, 30_000, 500):
            batch = [identify(i, 320 * 86400, {"marketing": "granted" if i % 4 else "denied"}, tag="-consent")
                     for i in range(start, start + 500)]
            writer.post(f"{url}/v1/batch", json={"batch": batch}).raise_for_status()
    sent = time.perf_counter() - began
    while client.get("/api/status").json()["lag"]:
        time.sleep(0.05)
    applied = time.perf_counter() - began
    export_began = time.perf_counter()
    response = client.get("/api/exports/profiles", params={"purpose": "marketing", "format": "csv"})
    response.raise_for_status()
    exported = time.perf_counter() - export_began
    rows = response.text.count("\n") - 1
    if rows != 7_500:  # three in four of the 10,000 granted marketing
        raise RuntimeError(f"the export for marketing has {rows} profiles, not 7,500")
    print(f"10,000 consent identifies: sent in {sent:.2f} s, applied by {applied:.2f} s; export for marketing "
          f"({rows:,} rows): {exported:.2f} s", flush=True)
    return {"sent_s": round(sent, 2), "applied_s": round(applied, 2), "export_s": round(exported, 2),
            "export_rows": rows}


def restart(server_db: Path, port: int, server: Any) -> tuple[Any, dict[str, float]]:
    """Stop the server (the erasures' rewrite runs), scan the data folder for the erased, start it again."""
    began = time.perf_counter()
    stop_server(server, grace=600)
    stopped = time.perf_counter() - began
    found = [i for i in range(11) if _on_disk(server_db.parent, email(i).encode())]
    if found:
        raise RuntimeError(f"erased people still on disk after the rewrite: {found}")
    began = time.perf_counter()
    server = _serve(server_db, port)
    started = time.perf_counter() - began
    print(f"stop with the rewrite: {stopped:.2f} s; start again: {started:.2f} s; no erased email on disk",
          flush=True)
    return server, {"stop_s": round(stopped, 2), "start_s": round(started, 2)}


def _on_disk(folder: Path, needle: bytes) -> bool:
    return any(needle in path.read_bytes() for path in folder.rglob("*") if path.is_file())


def _serve(db: Path, port: int) -> Any:
    return start_server("portrait", portrait_server_args(db, port), f"http://127.0.0.1:{port}",
                        db.parent / "server.log", env=portrait_env(WRITE_KEY, ADMIN_KEY), ready_path="/api/status",
                        timeout=600)


def retention(db: Path) -> dict[str, Any]:
    """``expire`` on the database (in process, as the privacy worker runs it): half the year's events go."""
    service = Portrait(Settings(db_path=str(db)), background=False)
    try:
        now = BASE_TIME + timedelta(days=365 + 180)
        began = time.perf_counter()
        count = service.privacy.expire(365, now=now)
        seconds = time.perf_counter() - began
    finally:
        service.close()
    print(f"retention: {count:,} raw events expired in {seconds:.2f} s", flush=True)
    return {"seconds": round(seconds, 2), "expired": count}


def measure(db: Path) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve(db, port)
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=600) as client:
            results: dict[str, Any] = {"access": access(client), "erasure": erase_under_traffic(client, url),
                                       "ten_erasures": ten_erasures(client)}
            server, results["rewrite"] = restart(db, port, server)
            results["consent"] = consent_and_export(client, url)
    finally:
        stop_server(server, grace=600)
    results["retention"] = retention(db)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--heavy", type=int, default=20_000, help="events of the customer erased and exported")
    parser.add_argument("--keep", metavar="PATH", help="keep the built database at PATH (reuse it if it exists)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="portrait-privacy-") as tmp:
        built = Path(args.keep) if args.keep else Path(tmp) / "built.duckdb"
        build_info = {} if built.exists() else build(built, args.profiles, args.events, args.heavy)
        work = Path(tmp) / "data" / "privacy.duckdb"
        work.parent.mkdir()
        shutil.copyfile(built, work)
        results = measure(work)
    figure = results["ten_erasures"]["seconds"]
    print(f"FIGURE: ten erasures queued at once, the last done after {figure:.2f} s")
    write_result(NAME, {"profiles": args.profiles, "events": args.events, "heavy": args.heavy, **build_info,
                        **results, "figure_ten_erasures_s": figure})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
