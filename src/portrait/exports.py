"""Exports: one row per profile, with the chosen attributes as typed columns, to CSV, Parquet or NDJSON.

Personal-information attributes (flagged in the registry) are left out unless asked for: by name in
``attributes`` or with ``include_personal``. Deprecated attributes are left out unless named. In CSV, text that a
spreadsheet would run as a formula gets a leading ``'`` (see :func:`_csv`).

List and object attributes are JSON values in NDJSON; in Parquet a list is a native list column when every value
fits one element type exactly (``list<string>`` for tags), and otherwise -- and an object always -- a column of the
Parquet JSON logical type (Arrow's ``arrow.json``). A struct column would not do for objects: it needs one set of
fields and one type per field across all profiles, and would read a field one profile lacks as null. The profile
import reads JSON columns back as their values (:mod:`portrait.files`). CSV has only text: there they are JSON text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from portrait.errors import BadRequest, Interrupted
from portrait.privacy import mask_identifier
from portrait.registry import AttributeRegistry, unknown_code
from portrait.sql import attributes as q
from portrait.sql.attributes import JSON_TYPES
from portrait.store import Session

FORMATS = ("csv", "parquet", "ndjson")
CHUNK_ROWS = 100_000  # rows written between two progress reports (CSV, NDJSON)
# Parquet's chunk is a row group: Arrow's default size, as the export always wrote. Row groups of 100,000 rows made
# a file of a million profiles 28% bigger (18.8 -> 24.0 MB) and its writing twice as slow (0.16 -> 0.34 s).
PARQUET_CHUNK_ROWS = 1024 * 1024

Written = Callable[[int, int], None]
"""Told the rows written so far and the rows to write, after each chunk (an export job's progress)."""


class ExportCancelled(Interrupted):
    """An export job cancelled (``DELETE /api/exports/{id}``) while it was writing: its file is not kept."""

    code = "export_cancelled"


def choose_attributes(registry: AttributeRegistry, names: list[str] | None, include_personal: bool
                      ) -> list[dict[str, Any]]:
    every = {a["code"]: a for a in registry.list()}
    if names:
        unknown = [n for n in names if n not in every]
        if unknown:
            raise BadRequest("; ".join(unknown_code(n, every) for n in unknown), code="invalid_attribute")
        return [every[n] for n in names]
    return [a for a in every.values()
            if a["status"] == "active" and (include_personal or not a["is_personal_info"])]


def export_profiles(session: Session, registry: AttributeRegistry, path: Path, file_format: str, *,
                    attributes: list[str] | None = None, include_personal: bool = False,
                    segment_id: int | None = None, consent_purpose: str | None = None,
                    mask_identifiers: bool = False, on_written: Written = lambda rows, total: None,
                    stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """Write the profiles (every one, or the members of ``segment_id``; with ``consent_purpose`` only those who
    granted it) to ``path``; returns a report. ``mask_identifiers`` (a caller without ``pii:read``): a ``user_id``
    that is an email or a phone (:func:`portrait.privacy.personal_identifier`) is written masked.

    The profiles are read in one query, then written ``CHUNK_ROWS`` at a time (``PARQUET_CHUNK_ROWS``), telling
    ``on_written`` the rows written of the rows to write after each chunk; ``stop`` returning true between two
    chunks ends the export with :class:`ExportCancelled` (the query itself runs to its end)."""
    if file_format not in FORMATS:
        raise BadRequest(f"format {file_format!r} is not one of {', '.join(FORMATS)}", code="invalid_format")
    chosen = choose_attributes(registry, attributes, include_personal)
    query, params = q.export_profiles([(a["code"], a["type"]) for a in chosen], segment_id, consent_purpose)
    lists = [a["code"] for a in chosen if a["type"] == "list"] if file_format == "parquet" else []
    table = _with_json_columns(session.arrow(query, params), [a["code"] for a in chosen if a["type"] in JSON_TYPES],
                               native_lists=lists)
    table = _with_integer_columns(table, [a["code"] for a in chosen if a["type"] == "integer"])
    if mask_identifiers:
        index = table.schema.get_field_index("user_id")
        masked = pa.array([mask_identifier(v) for v in table.column(index).to_pylist()], type=pa.string())
        table = table.set_column(index, "user_id", masked)
    on_written(0, table.num_rows)
    WRITERS[file_format](table, path, _chunks(table, on_written, stop))
    return {"rows": table.num_rows, "columns": table.column_names, "path": str(path), "format": file_format,
            "personal_included": sorted(a["code"] for a in chosen if a["is_personal_info"])}


def _with_json_columns(table: pa.Table, codes: list[str], native_lists: list[str]) -> pa.Table:
    """``table`` with the columns ``codes`` (JSON texts) typed as JSON, those in ``native_lists`` as a native list
    column where that keeps every value exactly."""
    for code in codes:
        index = table.schema.get_field_index(code)
        column = table.column(index).cast(pa.json_())
        table = table.set_column(index, code, _native_list(column) if code in native_lists else column)
    return table


def _native_list(column: pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """The JSON texts as a list column when Arrow gives every list back exactly: one element type (``[1, "a"]``
    has none, ``[1, 2.5]`` would turn 1 into 1.0, objects with different keys would gain null fields). Otherwise,
    or when no profile has a list (no element type to tell), the JSON column as it is."""
    values = [None if text is None else orjson.loads(text) for text in column.to_pylist()]
    if not any(isinstance(value, list) for value in values) or not all(
            value is None or isinstance(value, list) for value in values):
        return column
    try:
        native = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return column
    return native if orjson.dumps(native.to_pylist()) == orjson.dumps(values) else column


_INT64 = (-(2 ** 63), 2 ** 63 - 1)


def _with_integer_columns(table: pa.Table, codes: list[str]) -> pa.Table:
    """Integer columns as int64 when every value fits, else as decimal(20, 0), which holds every integer the
    attribute takes (to 2^64 - 1) exactly: such values used to be written as empty cells."""
    for code in codes:
        index = table.schema.get_field_index(code)
        column = table.column(index)
        bounds = pc.min_max(column).as_py()
        fits = bounds["min"] is None or (_INT64[0] <= bounds["min"] and bounds["max"] <= _INT64[1])
        table = table.set_column(index, code, column.cast(pa.int64() if fits else pa.decimal128(20, 0)))
    return table


Chunks = Callable[[pa.Table, int], Iterator[pa.Table]]


def _chunks(table: pa.Table, on_written: Written, stop: Callable[[], bool]) -> Chunks:
    """What a writer writes ``table`` by: its slices of ``rows`` rows (of the table it is given, which may have its
    columns converted), each counted as written once the writer asks for the next."""
    total = table.num_rows

    def chunks(converted: pa.Table, rows: int) -> Iterator[pa.Table]:
        for offset in range(0, total, rows):
            if stop():
                raise ExportCancelled(f"the export was cancelled after {offset:,} of {total:,} rows; its file is "
                                      "not kept")
            yield converted.slice(offset, rows)
            on_written(min(offset + rows, total), total)

    return chunks


def _ndjson(table: pa.Table, path: Path, chunks: Chunks) -> None:
    """One JSON object per line; the JSON columns (lists, objects) go in as the JSON values they hold."""
    json_columns = [f.name for f in table.schema if isinstance(f.type, pa.JsonType)]
    with path.open("wb") as handle:
        for batch in (b for chunk in chunks(table, CHUNK_ROWS) for b in chunk.to_batches(max_chunksize=10_000)):
            for row in batch.to_pylist():
                for name in json_columns:
                    if row[name] is not None:
                        row[name] = orjson.Fragment(row[name])
                handle.write(orjson.dumps(row, default=_whole) + b"\n")


def _whole(value: Any) -> int:
    """A decimal(20, 0) integer (past int64, see ``_with_integer_columns``) as the JSON integer it is."""
    if isinstance(value, Decimal):
        return int(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


# CSV cells a spreadsheet would run as a formula (OWASP, "CSV injection"): text starting with = + - @, a tab or a
# carriage return -- unless it holds only digits, spaces and + - ( ) . , / (a number, a phone number, a date), which
# can name no function or cell.
_FORMULA_START = r"^[=+\-@\t\r]"
_ONLY_NUMBERS = r"^[0-9\s+\-().,/]*$"


def _csv(table: pa.Table, path: Path, chunks: Chunks) -> None:
    """CSV with every text cell that could run as a formula prefixed with ``'`` (shown, not run, by spreadsheets)."""
    columns = []
    for column in table.columns:
        if isinstance(column.type, pa.JsonType):
            column = column.cast(pa.string())  # CSV has no JSON: lists and objects are their JSON text
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            risky = pc.and_(pc.match_substring_regex(column, _FORMULA_START),
                            pc.invert(pc.match_substring_regex(column, _ONLY_NUMBERS)))
            column = pc.if_else(pc.fill_null(risky, False), pc.binary_join_element_wise("'", column, ""), column)
        columns.append(column)
    defused = pa.table(columns, names=table.column_names)
    with pa_csv.CSVWriter(path, defused.schema) as writer:  # the header, even with no rows
        for chunk in chunks(defused, CHUNK_ROWS):
            writer.write_table(chunk)


def _parquet(table: pa.Table, path: Path, chunks: Chunks) -> None:
    """A row group per chunk, of Arrow's default size: the file is the one ``pq.write_table`` wrote."""
    with pq.ParquetWriter(path, table.schema) as writer:
        for chunk in chunks(table, PARQUET_CHUNK_ROWS):
            writer.write_table(chunk)


WRITERS: dict[str, Callable[[pa.Table, Path, Chunks], None]] = {"csv": _csv, "parquet": _parquet, "ndjson": _ndjson}
