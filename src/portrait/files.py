"""Reading import files in chunks: NDJSON, a JSON array, Parquet or CSV.

Either the rows are Segment-format messages already, or they are plain rows that a
:class:`portrait.mapping.RowMapping` turns into messages; :func:`read_messages` does both. Files are read in chunks
so an import of millions of rows runs in bounded memory. Messages without a messageId get one derived from their content
(:class:`portrait.mapping.MessageIds`), so importing the same file twice adds nothing.
"""

from __future__ import annotations

import itertools
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from portrait.column_types import has_format
from portrait.connectors import plain
from portrait.errors import BadRequest, Interrupted
from portrait.identity import identity_trait_names
from portrait.mapping import MessageIds, RowMapping, api_times, rows_to_messages
from portrait.spec import Unreadable

FORMATS = ("ndjson", "json", "parquet", "csv")
_BLOCK_BYTES = 1 << 22  # CSV is parsed (and its column types inferred) in blocks of this size
_SUFFIXES = {".ndjson": "ndjson", ".jsonl": "ndjson", ".json": "json", ".parquet": "parquet", ".pq": "parquet",
             ".csv": "csv", ".tsv": "csv", ".txt": "csv"}


@dataclass
class ReadProgress:
    """How far an import has read its file, for the progress bars (the CLI's, the console's, a server's import job).

    ``rows_total`` is known for CSV (counted by the pass that settles the column types, before any row is
    imported), Parquet (its metadata) and a JSON array (once parsed); for NDJSON, which is read line by line, the
    bytes read of ``bytes_total`` say how far it is instead."""

    bytes_total: int
    rows: int = 0  # rows imported so far (the importer sets it, chunk by chunk)
    rows_total: int | None = None
    bytes_read: int | None = None
    stored: int = 0  # of ``rows``, those stored (not already there, not rejected): kept by an import job's record

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "rows_total": self.rows_total, "bytes_read": self.bytes_read,
                "bytes_total": self.bytes_total}


@dataclass(frozen=True)
class TextFallback:
    """A CSV property/trait column read as text because one of its values does not fit the type of the rows before
    it: the first such value, its row (from 1) and the type the column had until then -- what declaring the column
    would take (``kind``: a declared type name, ``number``...)."""

    column: str
    row: int
    value: str
    kind: str

    def note(self) -> str:
        """The note the import's report and the CLI show."""
        return (f"column {self.column} was read as text: row {self.row} holds {self.value!r}, which is not a "
                f"{self.kind} like the rows before it. Declare what the column is (--types {self.column}="
                f"{self.kind}) to reject the rows that do not fit instead, or --types {self.column}=text to read "
                "it as text without this note")


@dataclass(frozen=True)
class DatesAsText:
    """A CSV property/trait column read as text, not declared, whose values are all dates written one of the usual
    ways that are not ISO-8601 (24.12.2025, 12/24/2025): the ``formats`` that read every one of them -- two when the
    values do not tell day-first from month-first (01/02/2024), for the person who knows to choose. Only said, never
    applied: the column stays text until its format is declared."""

    column: str
    example: str
    formats: tuple[str, ...]

    def example_dates(self) -> list[str]:
        """The example as each of ``formats`` reads it (ISO-8601, in the same order): what choosing one means,
        ``01/02/2024`` being 2024-02-01 day-first and 2024-01-02 month-first."""
        return [datetime.strptime(self.example, fmt).date().isoformat() for fmt in self.formats]

    def as_dict(self) -> dict[str, Any]:
        """The import report's ``dates_as_text`` entry: the console offers to declare each format."""
        return {"column": self.column, "example": self.example, "formats": list(self.formats),
                "example_dates": self.example_dates()}

    def note(self) -> str:
        """The note the import's report and the CLI show."""
        declare = " or ".join(f"--types '{self.column}=date:{fmt}'" for fmt in self.formats)
        which = ", day or month first (the values do not tell: say which)" if len(self.formats) > 1 else ""
        return (f"column {self.column} was read as text: its values are dates written as {self.example!r}, not "
                f"ISO-8601{which}. Declare their format ({declare}) to store them as dates")


Note = TextFallback | DatesAsText  # what an import notes about a CSV column read as text


def check_readable_file(path: Path) -> None:
    """Refuse a file to import that is not there, saying what is missing where: `orders.cvs is not a readable file`
    left the user to guess between a typo, the wrong folder and a folder's name."""
    if path.is_file():
        return
    if path.is_dir():
        raise BadRequest(f"{path} is a folder, not a file", code="file_not_found")
    folder = path.parent.resolve()
    if not folder.is_dir():
        raise BadRequest(f"there is no folder {folder} (for the file {path.name})", code="file_not_found")
    if path.exists():
        raise BadRequest(f"{path} is not a regular file", code="file_not_found")
    raise BadRequest(f"there is no file {path.name} in {folder}", code="file_not_found")


def detect_format(path: Path, given: str | None = None) -> str:
    if given:
        if given not in FORMATS:
            raise BadRequest(f"format {given!r} is not one of {', '.join(FORMATS)}", code="invalid_format")
        return given
    found = _SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise BadRequest(f"cannot tell the format of {path.name} from its name; pass --format "
                         f"({', '.join(FORMATS)})", code="invalid_format")
    return found


def read_messages(path: Path, file_format: str, mapping: RowMapping | None = None, *,
                  delimiter: str | None = None, identity_traits: tuple[str, ...] = (),
                  chunk_rows: int = 10_000, fallbacks: list[Note] | None = None,
                  progress: ReadProgress | None = None, stop: Callable[[], bool] = lambda: False
                  ) -> Iterator[list[Any]]:
    """Chunks of messages, in file order: the rows themselves, or the rows turned into messages by ``mapping``.

    CSV columns that identify the person (``identity_traits`` for profiles, see
    :meth:`portrait.mapping.RowMapping.text_columns`) are read as text, and so are those declared ``text`` or with a
    format (``date:%d.%m.%Y``).
    Each CSV column read as text because its values do not fit one type, or are dates not in ISO-8601 (and not
    declared), is appended to ``fallbacks``, once the header is read. ``progress`` gets the rows in the file or the
    bytes read so far, where the format tells (see :class:`ReadProgress`).

    An NDJSON line that is not JSON comes through as an :class:`Unreadable`, which the message reader rejects
    (``invalid_message``, saying where the JSON breaks) with the line as what was sent.

    ``stop`` is asked before each block of the passes a CSV file is read in before its first row is imported
    (:func:`_csv`): when it says so, reading ends with :class:`Interrupted`, nothing imported. (The import itself
    asks it between chunks.)
    """
    check_readable_file(path)
    progress = progress if progress is not None else ReadProgress(0)
    if file_format == "csv":
        if mapping is None:
            raise BadRequest("a CSV file holds rows, not messages: say what the columns are (e.g. --user-id, "
                             "--event, --timestamp)", code="invalid_mapping")
        rows: Iterator[Any] = _csv(path, csv_delimiter(path, delimiter), mapping,
                                   mapping.text_columns(identity_trait_names(identity_traits)),
                                   fallbacks if fallbacks is not None else [], progress, stop)
    else:
        if file_format == "parquet":
            _check_parquet(path)
        rows = {"ndjson": _ndjson, "json": _json_array, "parquet": _parquet}[file_format](path, progress)
    ids = MessageIds()
    times = file_format == "parquet" and any(_has_times(f.type) for f in pq.ParquetFile(path).schema_arrow)
    if mapping is not None:
        # A Parquet file's schema names every column; a row read from it leaves out those it has no value in
        columns = pq.ParquetFile(path).schema_arrow.names if file_format == "parquet" else None
        rows = _mapped(rows, mapping, ids, _parquet_before if times else None, columns)
    elif times:
        rows = (ids.assign(row, _parquet_before(row)) for row in rows)
    tidy = _without_struct_nulls(path) if file_format == "parquet" else None
    chunk: list[Any] = []
    for message in rows:
        # The id first: it derives from the message as read before, so files imported before keep their ids
        message = ids.assign(message) if tidy is None else tidy(ids.assign(message))
        chunk.append(api_times(message) if times else message)  # only files holding times are walked
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _check_parquet(path: Path) -> None:
    """Refuse a file that is not Parquet (a CSV named .parquet, a file cut short) before anything is read, rather
    than with Arrow's error from deep inside the import."""
    try:
        pq.ParquetFile(path).close()
    except (pa.ArrowInvalid, OSError) as exc:
        raise BadRequest(f"{path.name} is not a Parquet file: {exc}", code="invalid_parquet") from exc


def csv_delimiter(path: Path, given: str | None) -> str:
    """The field separator: one character (``\\t`` or ``tab`` for a tab); by default a tab for ``.tsv`` files and a
    comma for the others."""
    if given is None:
        return "\t" if path.suffix.lower() == ".tsv" else ","
    if given in ("\\t", "tab"):
        return "\t"
    if len(given) != 1 or given in "\"\r\n":
        raise BadRequest(f"the delimiter must be one character (\\t or tab for a tab), not {given!r}",
                         code="invalid_request")
    return given


def _mapped(rows: Iterator[Any], mapping: RowMapping, ids: MessageIds,
            before: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
            columns: list[str] | None = None) -> Iterator[Any]:
    """The rows as messages (with their ids), once the file's ``columns`` (when it names them) or else the first
    object among its rows shows the mapping's columns are there. Rows that are not objects (a line that is not JSON)
    become rejections; a file with no object among its first rows is refused. ``before``: see
    :func:`portrait.mapping.rows_to_messages`."""
    if columns is not None:
        mapping.check(columns)
    leading: list[Any] = []
    for row in rows:
        if isinstance(row, dict):
            if columns is None:
                mapping.check(row.keys())
            yield from rows_to_messages(itertools.chain(leading, [row], rows), mapping, ids, before)
            return
        leading.append(row)
        if len(leading) >= _MOST_LEADING_NON_OBJECTS:
            break
    if leading:
        raise BadRequest("the file's rows are not objects, so they cannot be mapped", code="invalid_mapping")


_MOST_LEADING_NON_OBJECTS = 1000  # rows that are not objects before the first one: past this the file is refused


def _csv(path: Path, delimiter: str, mapping: RowMapping, text_columns: list[str],
         fallbacks: list[Note], progress: ReadProgress, stop: Callable[[], bool]) -> Iterator[Any]:
    """The rows as dicts, once the header shows the mapping's columns are there. A row with more or fewer fields
    than the header comes after its block's rows as an :class:`Unreadable` (rejected as ``invalid_row`` with its
    text): one stray separator does not stop the import. A column read as text because its values do not fit one
    type, and not declared, is added to ``fallbacks`` (:func:`_fallbacks`).

    The passes before the first row (the types, numbers kept as text, the notes) each may read the whole file, a
    second per 100 MB or more: ``stop`` is asked before each of their blocks (:class:`_Stoppable`), where a cancel
    during them took effect only once they were through."""
    misshapen: deque[Unreadable] = deque()  # appended to by the reader's threads (so taken out one at a time)

    def set_aside(row: pa_csv.InvalidRow) -> str:
        misshapen.append(Unreadable(row.text, "invalid_row", f"the row has {row.actual_columns} fields where the "
                                    f"header has {row.expected_columns} (a separator too many or too few, or a "
                                    "quote not closed)"))
        return "skip"

    def opened(types: dict[str, pa.DataType], on_invalid: Callable[[pa_csv.InvalidRow], str]
               ) -> pa_csv.CSVStreamingReader:
        return pa_csv.open_csv(path, parse_options=pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True,
                                                                       invalid_row_handler=on_invalid),
                               convert_options=pa_csv.ConvertOptions(column_types=types, strings_can_be_null=True),
                               read_options=pa_csv.ReadOptions(block_size=_BLOCK_BYTES))

    # Declared text is read as written, and so is a column declared with a format (date:%d.%m.%Y): each cell is
    # read with the format, never taken as the date or number Arrow would make of it (2024-01-05, 20240105)
    as_written = [c for c, kind in mapping.types.items() if kind == "text" or has_format(kind)]
    # ... and the --timestamp column with a --timestamp-format: a column of ISO times Arrow read as times was taken
    # past the format, where one ISO time among others was rejected. (Not with %z: Arrow read an offset, and the
    # message ids of files imported then derive from the time it gave.)
    if mapping.timestamp and mapping.timestamp_format and "%z" not in mapping.timestamp_format:
        as_written.append(mapping.timestamp)
    as_text: dict[str, pa.DataType] = {c: pa.string() for c in [*text_columns, *as_written]}
    _check_not_binary(path)
    try:
        checking = opened(as_text, _skip)
        try:
            names = checking.schema.names
        except UnicodeDecodeError as exc:  # a header in Latin-1 or another 8-bit code page
            raise BadRequest(f"{path.name} is not UTF-8 text: its header is not ({_NOT_UTF8})",
                             code="invalid_csv") from exc
        _check_header(path, names)
        _check_text(path, checking.schema)
        mapping.check(names)
        types, progress.rows_total = _settled_types(_Stoppable(checking, stop, path.name), names, as_text,
                                                    lambda types: _Stoppable(opened(types, _skip), stop, path.name))

        def read_as_text(columns: list[str]) -> Iterable[pa.RecordBatch]:
            return _Stoppable(pa_csv.open_csv(
                path, parse_options=pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True,
                                                        invalid_row_handler=_skip),
                convert_options=pa_csv.ConvertOptions(include_columns=columns, strings_can_be_null=True,
                                                      column_types=dict.fromkeys(columns, pa.string())),
                read_options=pa_csv.ReadOptions(block_size=_BLOCK_BYTES)), stop, path.name)

        # A declared type says what the column is: its numbers are numbers, leading zero or not
        kept_as_text = _numbers_to_keep_as_text(opened(types, _skip).schema, read_as_text, set(mapping.types))
        types = {**types, **kept_as_text}
        reader = opened(types, set_aside)
        undeclared = _undeclared_text(reader.schema, mapping, {*as_text, *kept_as_text})
        fallbacks.extend(_fallbacks(undeclared, read_as_text))
        fallbacks.extend(_dates_as_text(undeclared, read_as_text))
        for batch in reader:
            yield from batch.to_pylist()
            while misshapen:
                yield misshapen.popleft()
        while misshapen:
            yield misshapen.popleft()
    except pa.ArrowInvalid as exc:
        hint = f" ({_NOT_UTF8})" if "invalid UTF8" in str(exc) else ""
        raise BadRequest(f"{path.name} is not CSV we can read: {exc}{hint}", code="invalid_csv") from exc


_CONVERSION_ERROR = re.compile(r"In CSV column #(\d+): CSV conversion error")


class _Stoppable:
    """The blocks of a CSV reader for one of the passes before the import, asking ``stop`` before each one (a block
    is 4 MB: tens of milliseconds), and ending with :class:`Interrupted` when it says so."""

    def __init__(self, reader: pa_csv.CSVStreamingReader, stop: Callable[[], bool], file_name: str) -> None:
        self._reader, self._stop, self._file_name = reader, stop, file_name

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        while not self._stop():
            try:
                yield self._reader.read_next_batch()
            except StopIteration:
                return
        self._reader.close()
        raise Interrupted(f"the import of {self._file_name} stopped before its first row was imported (while the "
                          "file was read through to settle its column types): nothing was stored; import it again "
                          "to import it")


def _settled_types(reader: Iterable[pa.RecordBatch], names: list[str], types: dict[str, pa.DataType],
                   reopen: Callable[[dict[str, pa.DataType]], Iterable[pa.RecordBatch]]
                   ) -> tuple[dict[str, pa.DataType], int | None]:
    """The column types to read the file with, and the rows in the file (None when the pass stops short).

    Arrow infers the types from the first block (4 MB), and a column a later block does not fit -- numbers, then
    ``12A`` or ``1.5``; ISO dates, then ``05/01/2024`` -- would stop the import there, part-way. So the whole file
    is read once in Arrow first (about a second per 100 MB, no Python objects), and each column that does not fit is
    read as text; the others keep the types inferred, as before. That pass counts the rows on the way (a misshapen
    row it skips is not among them: the import itself reads and rejects it), for the progress bars."""
    while True:
        rows = 0
        try:
            for batch in reader:
                rows += batch.num_rows
            return types, rows
        except pa.ArrowInvalid as exc:
            found = _CONVERSION_ERROR.search(str(exc))
            if found is None or "invalid UTF8" in str(exc) or names[int(found.group(1))] in types:
                return types, None  # not a type the file outgrows: the import itself says what is wrong
            types = {**types, names[int(found.group(1))]: pa.string()}
            reader = reopen(types)


# A number as Arrow reads it would lose what the text says: a leading zero (a postal code 01234, an account 007),
# a plus sign (a phone number +48601234567, read as the float 48601234567.0) or more digits than a float keeps
# (a 20-digit order number).
_NOT_JUST_A_NUMBER = r"^\s*(\+|-?0\d|-?\d{16,})"


def _numbers_to_keep_as_text(schema: pa.Schema, read_as_text: Callable[[list[str]], Iterable[pa.RecordBatch]],
                             declared: set[str]) -> dict[str, pa.DataType]:
    """The columns typed as numbers that hold a value a number would change (see ``_NOT_JUST_A_NUMBER``): they are
    read as text, as the identifier columns are -- unless their type is ``declared``. One more pass of the file in
    Arrow, over those columns only."""
    numeric = [f.name for f in schema if (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))
               and f.name not in declared]
    if not numeric:
        return {}
    keep: set[str] = set()
    for batch in read_as_text(numeric):
        for name in numeric:
            if name not in keep and pc.any(pc.match_substring_regex(batch.column(name), _NOT_JUST_A_NUMBER)).as_py():
                keep.add(name)
    return {name: pa.string() for name in numeric if name in keep}


# The types a CSV column can start as, each followed by the wider one Arrow moves to when a value needs it (1, then
# 1.5: a column of numbers; a date, then a time: a column of times), with the name --types gives it.
_LADDERS: tuple[tuple[tuple[pa.DataType, str], ...], ...] = (
    ((pa.int64(), "number"), (pa.float64(), "number")),
    ((pa.bool_(), "boolean"),),
    ((pa.date32(), "date"), (pa.timestamp("us"), "timestamp")),
)


def _undeclared_text(schema: pa.Schema, mapping: RowMapping, chosen: set[str]) -> list[str]:
    """The property/trait columns read as text that no one chose to read so (as ids, declared, or numbers kept as
    written): those whose values may not have fit one type. (The time and the event name are read their own way,
    and take no declared type.)"""
    skipped = chosen | set(mapping.types) | mapping.used_columns()
    return [f.name for f in schema if pa.types.is_string(f.type) and f.name not in skipped
            and (mapping.fields is None or f.name in mapping.fields)]


def _fallbacks(columns: list[str], read_as_text: Callable[[list[str]], Iterable[pa.RecordBatch]]
               ) -> list[TextFallback]:
    """A fallback for each of ``columns`` (read as text, not declared) whose values start as numbers, booleans,
    dates or times and then hold one that is not: the first such value, its row, and the type that would declare
    the column. A column of names or notes (its first value fits no type) gets none. Reads the file (those columns,
    in Arrow) until every column is settled: for a column with a misfit, up to it."""
    if not columns:
        return []
    pending = dict.fromkeys(columns)  # column -> [ladder, step] once its first value tells
    found_in: dict[str, TextFallback] = {}
    first_row = 1
    for batch in read_as_text(columns):
        for name in list(pending):
            found = _first_misfit(batch.column(name), pending, name)
            if found is not None:
                index, value, kind = found
                found_in[name] = TextFallback(name, first_row + index, value, kind)
                del pending[name]
        first_row += batch.num_rows
        if not pending:
            break
    return [found_in[name] for name in columns if name in found_in]


def _date_format(fmt: str) -> tuple[str, str]:
    """A usual date format and the shape of the text it reads: digits and its separator."""
    shape = re.escape(fmt).replace("%d", r"\d{1,2}").replace("%m", r"\d{1,2}").replace("%Y", r"\d{4}")
    return fmt, r"^\s*" + shape.replace("%y", r"\d{2}") + r"\s*$"


# The usual ways of writing a date that are not ISO-8601, which a note offers to declare: day-first with dots,
# slashes or dashes, month-first (American) with slashes or dashes, year-first with slashes or dots; four- or
# two-digit years.
_USUAL_DATES = tuple(_date_format(fmt) for fmt in (
    *(f"%d{s}%m{s}%{y}" for s in "./-" for y in "Yy"), *(f"%m{s}%d{s}%{y}" for s in "/-" for y in "Yy"),
    "%Y/%m/%d", "%Y.%m.%d"))
_DISTINCT_CHECKED = 10_000  # distinct values of a column strptime checks, beyond its shape: dates repeat


def _dates_as_text(columns: list[str], read_as_text: Callable[[list[str]], Iterable[pa.RecordBatch]]
                   ) -> list[DatesAsText]:
    """A note for each of ``columns`` (read as text, not declared) whose values are all dates in one of the
    ``_USUAL_DATES`` formats (or two, day- and month-first, when they do not tell). Read in Arrow, those columns
    only, and only when a column's first value looks like such a date: every value's shape in Arrow, and then the
    distinct values with strptime (31.02.2025 is no date)."""
    candidates: dict[str, list[tuple[str, str]] | None] = dict.fromkeys(columns)
    examples: dict[str, str] = {}
    checked: dict[str, set[str]] = {name: set() for name in columns}
    if not columns:
        return []
    for batch in read_as_text(columns):
        for name, formats in list(candidates.items()):
            values = batch.column(name).drop_null()
            if len(values) == 0:
                continue
            if formats is None:
                examples[name] = str(values[0].as_py()).strip()
                formats = [(fmt, shape) for fmt, shape in _USUAL_DATES if re.match(shape, examples[name])]
            formats = _formats_reading(values, formats, checked[name])
            if formats:
                candidates[name] = formats
            else:
                del candidates[name]
        if not candidates:
            return []
    return [DatesAsText(name, examples[name], tuple(fmt for fmt, _ in formats))
            for name, formats in candidates.items() if formats]


def _formats_reading(values: pa.Array, formats: list[tuple[str, str]], checked: set[str]) -> list[tuple[str, str]]:
    """Those of ``formats`` that read every one of ``values``: each value has the format's shape (in Arrow), and
    strptime reads the distinct ones not ``checked`` before (up to ``_DISTINCT_CHECKED``)."""
    formats = [(fmt, shape) for fmt, shape in formats if pc.all(pc.match_substring_regex(values, shape)).as_py()]
    if not formats or len(checked) >= _DISTINCT_CHECKED:
        return formats
    fresh = [text for text in pc.unique(values).to_pylist() if text not in checked][:_DISTINCT_CHECKED]
    checked.update(fresh)
    return [(fmt, shape) for fmt, shape in formats if all(_reads(text, fmt) for text in fresh)]


def _reads(text: str, fmt: str) -> bool:
    try:
        datetime.strptime(text.strip(), fmt)
    except ValueError:
        return False
    return True


def _first_misfit(values: pa.Array, pending: dict[str, Any], name: str) -> tuple[int, str, str] | None:
    """The first of ``values`` (text) that does not fit the column's type so far -- (index, value, type name) --,
    widening the type along its ladder as Arrow does; None when all fit. A column whose first value fits no type is
    plain text: taken out of ``pending``."""
    start = 0
    if pending[name] is None:
        present = values.drop_null()
        if len(present) == 0:
            return None
        first = present.slice(0, 1)
        # The narrowest type the first value fits: 12.5 starts a column of numbers as a decimal, not an integer
        started = next(([lad, step] for lad in _LADDERS for step in range(len(lad)) if _fits(first, lad[step][0])),
                       None)
        if started is None:
            del pending[name]
            return None
        pending[name] = started
    ladder, step = pending[name]
    while True:
        index = _first_failing(values, ladder[step][0], start)
        if index is None:
            pending[name][1] = step
            return None
        wider = next((s for s in range(step + 1, len(ladder)) if _fits(values.slice(index, 1), ladder[s][0])), None)
        if wider is None:
            return index, str(values[index].as_py()), ladder[step][1]
        step, start = wider, index


def _fits(values: pa.Array, kind: pa.DataType) -> bool:
    try:
        pc.cast(values, kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _first_failing(values: pa.Array, kind: pa.DataType, start: int) -> int | None:
    """The index of the first value from ``start`` that does not cast to ``kind``: halving the range, so a batch
    costs a few vectorized casts, not one per value."""
    if _fits(values.slice(start), kind):
        return None
    low, high = start, len(values) - 1  # the first failure is in [low, high]
    while low < high:
        middle = (low + high) // 2
        if _fits(values.slice(low, middle - low + 1), kind):
            low = middle + 1
        else:
            high = middle
    return low


def _skip(row: pa_csv.InvalidRow) -> str:
    return "skip"


def _check_not_binary(path: Path) -> None:
    """Refuse a file read as CSV that is not text, by its first bytes: Arrow would split its bytes into rows (printed
    in its error, with a decoding traceback from its row handler)."""
    with path.open("rb") as handle:
        head = handle.read(8192)
    if head.startswith(b"PAR1"):
        why = "it is Parquet: pass --format parquet (or name it .parquet)"
    elif head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        why = "it is UTF-16, as Excel saves \"Unicode Text\": save it as UTF-8, e.g. with iconv -f utf-16 -t utf-8"
    elif b"\0" in head:
        why = "it holds NUL bytes, as binary files do (a spreadsheet, an archive?): export it as CSV"
    else:
        return
    raise BadRequest(f"{path.name} is not UTF-8 text: {why}", code="invalid_csv")


def _check_header(path: Path, names: list[str]) -> None:
    """Refuse a header naming a column twice: each row would keep only the last of the values."""
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise BadRequest(f"{path.name} has more than one column named {', '.join(repr(n) for n in twice)}: rename "
                         "them so that no value is lost", code="invalid_csv")


_NOT_UTF8 = "the file must be UTF-8 text: save it as UTF-8, e.g. with iconv -f latin1 -t utf-8"


def _check_text(path: Path, schema: pa.Schema) -> None:
    """Refuse a file whose columns are not UTF-8 text (read as bytes, which no message can hold)."""
    binary = [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    if binary:
        raise BadRequest(f"{path.name} has values that are not UTF-8 text in the column "
                         f"{', '.join(repr(n) for n in binary)}: {_NOT_UTF8}", code="invalid_csv")


def _ndjson(path: Path, progress: ReadProgress) -> Iterator[Any]:
    read = 0
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            read += len(line)  # not handle.tell(): 0.8 s per million lines, where this is 0.05 s
            progress.bytes_read = read
            if not line.strip():
                continue
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield _unreadable(line, f"line {number} is not JSON: {exc}")


def _unreadable(line: bytes, reason: str) -> Unreadable:
    # Rejected as invalid_message with the reason, and the line (its start) as what was sent.
    return Unreadable(line[:2000].decode("utf-8", errors="replace").strip(), "invalid_message", reason)


def _json_array(path: Path, progress: ReadProgress) -> Iterator[Any]:
    text = path.read_bytes()
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        lines = ("; it looks like JSON lines (one message per line, as BigQuery exports them): import it as NDJSON "
                 "(--format ndjson, or name it .ndjson)") if text.lstrip()[:1] == b"{" else ""
        raise BadRequest(f"{path.name} is not valid JSON: {exc}{lines}", code="invalid_json") from exc
    if not isinstance(document, list):
        raise BadRequest(f"{path.name} must hold a JSON array of messages (or use NDJSON)", code="invalid_request")
    progress.rows_total = len(document)
    yield from document


def _parquet(path: Path, progress: ReadProgress) -> Iterator[Any]:
    """Each row is a message; nested columns (properties, traits, context) come through as objects, and so do
    columns of the JSON type (a JSON ``null`` in one is no value, as a null cell). Times stay times here, to be
    written as the API writes them once the message has its id (:func:`read_messages`).

    Values JSON has no form for are written as SQL sources write them (:func:`portrait.connectors.plain`): decimals
    as numbers (whole ones as integers), durations as seconds, bytes as base64 -- only in files that hold such
    types, so the others are read exactly as before (their derived message ids do not change).
    """
    parquet = pq.ParquetFile(path)
    progress.rows_total = parquet.metadata.num_rows
    convert = plain if any(_without_json_form(f.type) for f in parquet.schema_arrow) else None
    json_columns = [f.name for f in parquet.schema_arrow if isinstance(f.type, pa.JsonType)]
    for batch in parquet.iter_batches(batch_size=10_000):
        for row in batch.to_pylist():
            for name in json_columns:
                row[name] = _json_value(row[name])
            yield {key: _jsonable(value, convert) for key, value in row.items() if value is not None}


def _json_value(text: str | None) -> Any:
    """A value of a column of the Parquet JSON type (Portrait's export of lists and objects, DuckDB's JSON) as the
    value it holds; text that is not JSON stays text, for the rules to judge as any other value."""
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _without_struct_nulls(path: Path) -> Callable[[Any], Any]:
    """What takes the nulls out of a Parquet message's objects. A struct column has every field in every row, so a
    message that never named ``plan`` reads as ``"plan": null`` -- which would remove the trait ``plan`` that another
    message gave. In Parquet a null field means absent (as a null column already does); NDJSON can send a null.
    (Top-level nulls are already left out when the row is read.) Decided per column from the file's schema, as this
    runs for every row: a struct of plain values (the usual properties or traits) costs one check when it holds no
    null; only columns with objects or lists inside are walked."""
    schema = pq.ParquetFile(path).schema_arrow
    flat = [f.name for f in schema if pa.types.is_struct(f.type)
            and not any(_has_objects(f.type.field(i).type) for i in range(f.type.num_fields))]
    deep = [f.name for f in schema if _has_objects(f.type) and f.name not in flat]

    def tidy(message: Any) -> Any:
        if message.__class__ is not dict:
            return message
        for key in flat:
            value = message.get(key)
            if value.__class__ is dict and None in value.values():
                message[key] = {k: v for k, v in value.items() if v is not None}
        for key in deep:
            value = message.get(key)
            if value.__class__ in _NESTED:
                message[key] = _objects_without_nulls(value)
        return message

    return tidy


def _has_objects(kind: pa.DataType) -> bool:
    return bool(pa.types.is_struct(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)
                or pa.types.is_fixed_size_list(kind) or pa.types.is_list_view(kind)
                or pa.types.is_large_list_view(kind))


def _objects_without_nulls(value: Any) -> Any:
    # Recurses only into objects and lists, never calls itself on a scalar: this runs for each value of each row.
    if value.__class__ is list:
        return [_objects_without_nulls(item) if item.__class__ in _NESTED else item for item in value]
    out = {}
    for key, item in value.items():
        if item is None:
            continue
        out[key] = _objects_without_nulls(item) if item.__class__ in _NESTED else item
    return out


_NESTED = (dict, list)


def _without_json_form(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        return _without_json_form(kind.value_type)
    if (pa.types.is_decimal(kind) or pa.types.is_duration(kind) or pa.types.is_interval(kind)
            or pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind)
            or pa.types.is_binary_view(kind)):
        return True
    return any(_without_json_form(kind.field(i).type) for i in range(kind.num_fields))


def _jsonable(value: Any, convert: Callable[[Any], Any] | None = None) -> Any:
    if convert is None or isinstance(value, date | time):
        return value
    return convert(value)


def _has_times(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        return _has_times(kind.value_type)
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind) or pa.types.is_time(kind):
        return True
    return any(_has_times(kind.field(i).type) for i in range(kind.num_fields))


def _parquet_before(row: Mapping[str, Any]) -> dict[str, Any]:
    """A Parquet row as it was read before its times were written as the API writes them: top-level times as
    ``isoformat()`` with a Z added when there was no zone (a date, too: ``1990-01-02Z``); times inside objects were
    left to orjson, as they are here. The message ids of files imported before derive from this form, so importing
    one again adds nothing."""
    return {key: _isoformat_before(value) if isinstance(value, date | time) else value for key, value in row.items()}


def _isoformat_before(value: date | time) -> str:
    text = value.isoformat()
    return text if getattr(value, "tzinfo", None) else text + "Z"
