"""Exports: one row per profile, with the chosen attributes as typed columns, to CSV, Parquet or NDJSON.

Personal-information attributes (flagged in the registry) are left out unless asked for: by name in
``attributes`` or with ``include_personal``. Deprecated attributes are left out unless named. In CSV, text that a
spreadsheet would run as a formula gets a leading ``'`` (see :func:`_csv`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from portrait.errors import BadRequest
from portrait.registry import AttributeRegistry
from portrait.sql import attributes as q
from portrait.store import Session

FORMATS = ("csv", "parquet", "ndjson")


def choose_attributes(registry: AttributeRegistry, names: list[str] | None, include_personal: bool
                      ) -> list[dict[str, Any]]:
    every = {a["code"]: a for a in registry.list()}
    if names:
        unknown = [n for n in names if n not in every]
        if unknown:
            raise BadRequest(f"no attribute has the code {', '.join(unknown)}", code="invalid_attribute")
        return [every[n] for n in names]
    return [a for a in every.values()
            if a["status"] == "active" and (include_personal or not a["is_personal_info"])]


def export_profiles(session: Session, registry: AttributeRegistry, path: Path, file_format: str, *,
                    attributes: list[str] | None = None, include_personal: bool = False,
                    segment_id: int | None = None, consent_purpose: str | None = None) -> dict[str, Any]:
    """Write the profiles (every one, or the members of ``segment_id``; with ``consent_purpose`` only those who
    granted it) to ``path``; returns a report."""
    if file_format not in FORMATS:
        raise BadRequest(f"format {file_format!r} is not one of {', '.join(FORMATS)}", code="invalid_format")
    chosen = choose_attributes(registry, attributes, include_personal)
    query, params = q.export_profiles([(a["code"], a["type"]) for a in chosen], segment_id, consent_purpose)
    table = session.arrow(query, params)
    WRITERS[file_format](table, path)
    return {"rows": table.num_rows, "columns": table.column_names, "path": str(path), "format": file_format,
            "personal_included": sorted(a["code"] for a in chosen if a["is_personal_info"])}


def _ndjson(table: pa.Table, path: Path) -> None:
    with path.open("wb") as handle:
        for batch in table.to_batches(max_chunksize=10_000):
            for row in batch.to_pylist():
                handle.write(orjson.dumps(row) + b"\n")


# CSV cells a spreadsheet would run as a formula (OWASP, "CSV injection"): text starting with = + - @, a tab or a
# carriage return -- unless it holds only digits, spaces and + - ( ) . , / (a number, a phone number, a date), which
# can name no function or cell.
_FORMULA_START = r"^[=+\-@\t\r]"
_ONLY_NUMBERS = r"^[0-9\s+\-().,/]*$"


def _csv(table: pa.Table, path: Path) -> None:
    """CSV with every text cell that could run as a formula prefixed with ``'`` (shown, not run, by spreadsheets)."""
    columns = []
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            risky = pc.and_(pc.match_substring_regex(column, _FORMULA_START),
                            pc.invert(pc.match_substring_regex(column, _ONLY_NUMBERS)))
            column = pc.if_else(pc.fill_null(risky, False), pc.binary_join_element_wise("'", column, ""), column)
        columns.append(column)
    pa_csv.write_csv(pa.table(columns, names=table.column_names), path)


WRITERS: dict[str, Callable[[pa.Table, Path], None]] = {
    "csv": _csv,
    "parquet": lambda table, path: pq.write_table(table, path),
    "ndjson": _ndjson,
}
