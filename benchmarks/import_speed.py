"""Figure (issue #3, first slice): import N event rows from a Parquet file of Segment messages.

Builds a Parquet file of N track/identify messages (default 1,000,000 over 100,000 customers, historical
timestamps), then imports it in process with the same code as ``portrait import events`` and reports the time to
have every row durable in the event log, the time until the processor has applied them, and rows/s.

    .venv/bin/python benchmarks/import_speed.py [--rows 1000000]

With ``--csv`` it measures rows mode instead: a CSV of N order rows (customer, amount, signup date, vip flag,
zip code, sku; one ``amount`` of ``tbd`` in the middle, so that column is read as text unless declared), imported
as ``portrait import events orders.csv --user-id customer --event Order`` (add ``--types`` for
``--types amount=number,signup=date,vip=boolean,zip=text``): the time to read the rows into messages alone, and
to have them in the event log.

    .venv/bin/python benchmarks/import_speed.py --csv [--types]

With ``--date-format`` (implies ``--types``) the signup dates are written day-first, ``24.12.2024``, and declared
``signup=date:%d.%m.%Y``: the cost of a declared format against the ISO dates of ``--types``.

    .venv/bin/python benchmarks/import_speed.py --csv --date-format
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result

from portrait.config import Settings
from portrait.files import read_messages
from portrait.mapping import RowMapping
from portrait.service import Portrait

EVENTS = ("Product Viewed", "Product Added", "Checkout Started", "Order Completed")


def build_file(path: Path, rows: int, customers: int) -> None:
    """Write the file in row groups; every 10th message is an identify with traits."""
    group = 100_000
    writer = None
    for start in range(0, rows, group):
        n = min(group, rows - start)
        index = range(start, start + n)
        table = pa.table({
            "type": ["identify" if i % 10 == 0 else "track" for i in index],
            "messageId": [f"imp-{i}" for i in index],
            "userId": [f"cust-{(i * 7919) % customers}" for i in index],
            "event": [None if i % 10 == 0 else EVENTS[i % 4] for i in index],
            "timestamp": [f"2019-{1 + i % 12:02d}-{1 + i % 28:02d}T10:{i % 60:02d}:00Z" for i in index],
            "properties": [None if i % 10 == 0 else {"sku": f"S-{i % 500}", "price": float(i % 90)} for i in index],
            "traits": [{"email": f"cust{(i * 7919) % customers}@example.com", "plan": "pro"} if i % 10 == 0
                       else None for i in index],
        })
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    if writer:
        writer.close()


CSV_TYPES = {"amount": "number", "signup": "date", "vip": "boolean", "zip": "text"}
DAY_FIRST = "%d.%m.%Y"


def build_csv(path: Path, rows: int, customers: int, day_first: bool = False) -> None:
    with path.open("w") as handle:
        handle.write("customer,amount,signup,vip,zip,sku\n")
        for i in range(rows):
            amount = "tbd" if i == rows // 2 else f"{i % 500}.{i % 100:02d}"
            month, day = 1 + i % 12, 1 + i % 28
            signup = f"{day:02d}.{month:02d}.2024" if day_first else f"2024-{month:02d}-{day:02d}"
            handle.write(f"c{(i * 7919) % customers},{amount},{signup},"
                         f"{'true' if i % 3 else 'false'},{i % 90000:05d},S-{i % 500}\n")


def csv_rows_mode(rows: int, customers: int, types: dict[str, str]) -> dict[str, object]:
    """Seconds to read the CSV into messages, and to have them in the log (a fresh process for each of with and
    without types: run one after the other in one process, the second was the slower, whichever it was)."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "orders.csv"
        day_first = types.get("signup") == f"date:{DAY_FIRST}"
        build_csv(source, rows, customers, day_first)
        mapping = RowMapping("events", user_id="customer", event="Order", types=types)
        started = time.perf_counter()
        read = sum(len(chunk) for chunk in read_messages(source, "csv", mapping))
        reading = time.perf_counter() - started
        service = Portrait(Settings(db_path=str(Path(tmp) / "import.duckdb")), background=True)
        started = time.perf_counter()
        stored = rejected = 0
        for chunk in service.import_messages(read_messages(source, "csv", mapping), "import:bench"):
            stored += chunk.result.accepted
            rejected += len(chunk.rejected)
        logged = time.perf_counter() - started
        service.close()
    label = ("declared types, day-first dates" if day_first else "declared types") if types else "inferred types"
    print(f"  {label}: read {reading:5.1f} s ({rows / reading:,.0f} rows/s), in the log "
          f"{logged:5.1f} s ({rows / logged:,.0f} rows/s); stored {stored:,}, rejected {rejected:,}")
    return {"rows": rows, "customers": customers, "types": types, "rows_read": read,
            "seconds_to_read": round(reading, 2), "seconds_to_log": round(logged, 2), "stored": stored,
            "rejected": rejected}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--csv", action="store_true", help="measure a CSV in rows mode (types inferred)")
    parser.add_argument("--types", action="store_true", help="with --csv: with the column types declared")
    parser.add_argument("--date-format", action="store_true",
                        help=f"with --csv: signup dates written day-first, declared date:{DAY_FIRST}")
    args = parser.parse_args()
    if args.csv:
        print(f"Import {args.rows:,} CSV rows in rows mode")
        types = ({**CSV_TYPES, "signup": f"date:{DAY_FIRST}"} if args.date_format
                 else CSV_TYPES if args.types else {})
        name = "date_format" if args.date_format else "declared" if types else "inferred"
        path = write_result(f"import_speed_csv_{name}", csv_rows_mode(args.rows, args.customers, types))
        print(f"  result {path}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "events.parquet"
        build_file(source, args.rows, args.customers)
        # The processor runs beside the import (as under `portrait import events`), on the other core.
        service = Portrait(Settings(db_path=str(Path(tmp) / "import.duckdb")), background=True)
        started = time.perf_counter()
        stored = rejected = 0
        for chunk in service.import_messages(read_messages(source, "parquet"), "import:bench"):
            stored += chunk.result.accepted
            rejected += len(chunk.rejected)
        logged = time.perf_counter() - started
        while service.status()["lag"] > 0:
            time.sleep(0.05)
        total = time.perf_counter() - started
        status = service.status()
        service.close()
    result = {"rows": args.rows, "customers": args.customers, "stored": stored, "rejected": rejected,
              "seconds_to_log": round(logged, 2), "seconds_to_profiles": round(total, 2),
              "rows_per_second_to_log": round(args.rows / logged), "profiles": status["profiles"]}
    path = write_result("import_speed", result)
    print(f"Import {args.rows:,} rows from Parquet ({args.customers:,} customers)")
    print(f"  in the event log   {logged:6.1f} s  ({args.rows / logged:,.0f} rows/s); stored {stored:,}, "
          f"rejected {rejected:,}")
    print(f"  applied to profiles {total:6.1f} s  (target: under 30 s: {'yes' if total < 30 else 'NO'}); "
          f"{status['profiles']:,} profiles")
    print(f"  result {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
