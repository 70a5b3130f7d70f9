"""Figure: the cost of appending to the event log as it grows (group commits of 3,200 events, the size 32 SDK
connections sending 100 events each produce), Portrait's writer against the design it replaced, in the same run.

- **baseline**: the event log as it was before schema migration 10 -- ``message_id`` PRIMARY KEY and an index on
  ``seq``, duplicates skipped by ``INSERT ... ON CONFLICT DO NOTHING RETURNING``, DuckDB's default checkpoint
  threshold (16 MB) -- on its own database file, driven by the same Arrow tables.
- **portrait**: the real :class:`portrait.writer.EventWriter` on a real store with the default settings (no index
  on the log, duplicates found by :mod:`portrait.dedup`, 256 MB checkpoint threshold).

Both get the same groups, alternately (the machine is shared and noisy), until each log holds ``--events``
events. Reported: the mean milliseconds per group commit in each slice of the run and how much the last slice
costs relative to the first -- a flat line is the goal. Reading the JSON (the HTTP side) is not included.

    .venv/bin/python benchmarks/log_growth.py [--events 2000000] [--slices 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from _common import write_result

from portrait.spec import EventColumns, Limits, MessageReader, ParsedRequest
from portrait.store.duckdb import DuckDBStore
from portrait.writer import EVENT_SCHEMA, EventWriter

NAME = "log_growth"
GROUP = 3_200
CONTEXT = {"library": {"name": "analytics-python", "version": "2.4.0"},
           "page": {"path": "/products/p", "url": "https://shop.example.com/p"}}
LIMITS = Limits(max_message_bytes=32 * 1024, max_batch_bytes=500 * 1024, max_batch_items=GROUP)
BASELINE_DDL = """
CREATE TABLE events (
    seq BIGINT NOT NULL, message_id VARCHAR PRIMARY KEY, type VARCHAR NOT NULL, event VARCHAR, user_id VARCHAR,
    anonymous_id VARCHAR, previous_id VARCHAR, group_id VARCHAR, timestamp TIMESTAMP NOT NULL,
    original_timestamp TIMESTAMP, sent_at TIMESTAMP, received_at TIMESTAMP NOT NULL, properties VARCHAR,
    traits VARCHAR, context VARCHAR, source VARCHAR NOT NULL, ip VARCHAR, identity_hints VARCHAR);
CREATE INDEX events_seq ON events (seq);
"""
BASELINE_INSERT = ("INSERT INTO events SELECT * FROM incoming_events ON CONFLICT DO NOTHING RETURNING message_id")


def make_group(now: datetime) -> EventColumns:
    """3,200 track events with fresh random (v4 UUID) messageIds, as the SDKs send them, read by the real
    :class:`portrait.spec.MessageReader` into the columns the writer receives."""
    stamp = now.isoformat(timespec="milliseconds") + "Z"
    messages = []
    for _ in range(GROUP):
        user = random.randint(1, 200_000)
        messages.append({
            "type": "track", "event": "Product Viewed", "userId": f"user-{user}", "anonymousId": f"anon-{user}",
            "messageId": str(uuid.UUID(int=random.getrandbits(128), version=4)), "timestamp": stamp,
            "properties": {"product_id": f"p-{random.randint(1, 500)}", "category": "Shoes", "price": 49.99,
                           "currency": "USD", "name": "Running shoe"},
            "context": CONTEXT,
        })
    reader = MessageReader(received_at=now, source="default", ip="127.0.0.1", request=ParsedRequest(messages),
                           limits=LIMITS, body_bytes=0)
    columns, rejections = reader.read_all()
    assert not rejections, rejections[:1]
    return columns


class Baseline:
    def __init__(self, path: Path) -> None:
        self.con = duckdb.connect(str(path))
        self.con.execute(BASELINE_DDL)
        self.seq = 0

    def append(self, events: EventColumns) -> None:
        table = pa.table({"seq": list(range(self.seq + 1, self.seq + 1 + len(events))), **events.as_dict()},
                         schema=EVENT_SCHEMA)
        self.con.register("incoming_events", table)
        self.con.begin()
        self.con.execute(BASELINE_INSERT).fetchall()
        self.con.commit()
        self.con.unregister("incoming_events")
        self.seq += len(events)


def run(events: int, slices: int, workdir: Path) -> dict[str, Any]:
    baseline = Baseline(workdir / "baseline.duckdb")
    store = DuckDBStore(str(workdir / "portrait.duckdb"), checkpoint_wal_mb=256)
    writer = EventWriter(store, max_events=20_000)
    groups = max(slices, events // GROUP)
    per_slice = groups // slices
    times: dict[str, list[float]] = {"baseline": [], "portrait": []}
    now = datetime.now(UTC).replace(tzinfo=None)
    try:
        for number in range(groups):
            group = make_group(now)
            order = ("baseline", "portrait") if number % 2 == 0 else ("portrait", "baseline")
            for kind in order:
                started = time.perf_counter()
                if kind == "baseline":
                    baseline.append(group)
                else:
                    result = writer.submit(group).result()
                    assert result.accepted == GROUP, result
                times[kind].append(time.perf_counter() - started)
            if (number + 1) % per_slice == 0:
                done = (number + 1) * GROUP
                print(f"  {done:>10,} events: baseline {1000 * statistics.fmean(times['baseline'][-per_slice:]):7.1f}"
                      f" ms/group, portrait {1000 * statistics.fmean(times['portrait'][-per_slice:]):7.1f} ms/group",
                      flush=True)
    finally:
        writer.close()
        store.close()
        baseline.con.close()
    summary: dict[str, Any] = {}
    for kind, values in times.items():
        means = [1000 * statistics.fmean(values[i * per_slice:(i + 1) * per_slice]) for i in range(slices)]
        summary[kind] = {"ms_per_group_by_slice": [round(m, 2) for m in means],
                         "last_over_first": round(means[-1] / means[0], 2),
                         "max_ms": round(1000 * max(values), 1),
                         "events_per_s_last_slice": round(GROUP / (means[-1] / 1000))}
    summary["portrait_over_baseline_last_slice"] = round(
        summary["portrait"]["ms_per_group_by_slice"][-1] / summary["baseline"]["ms_per_group_by_slice"][-1], 3)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2_000_000, help="events in each log at the end")
    parser.add_argument("--slices", type=int, default=5, help="slices of the run to report (default 5)")
    args = parser.parse_args(argv)
    random.seed(7)
    print(f"Appending {args.events:,} events in groups of {GROUP:,} to two logs, alternately")
    with tempfile.TemporaryDirectory(prefix="portrait-log-growth-") as tmp:
        summary = run(args.events, args.slices, Path(tmp))
    for kind in ("baseline", "portrait"):
        s = summary[kind]
        print(f"  {kind:<9} last slice {s['ms_per_group_by_slice'][-1]:.1f} ms/group "
              f"({s['events_per_s_last_slice']:,} events/s), x{s['last_over_first']} of the first slice, "
              f"slowest group {s['max_ms']:.0f} ms")
    path = write_result(NAME, {"figure": "Event-log append cost as the log grows: Portrait vs primary-key baseline",
                               "options": vars(args), "group_events": GROUP, "summary": summary})
    print(f"  result    {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
