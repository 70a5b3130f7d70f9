"""Reading files of Segment-format messages: NDJSON, a JSON array, or Parquet (one message per row).

Files are read in chunks so an import of millions of rows runs in bounded memory. Messages without a messageId get
one derived from their content (``import-<sha1 of the message>``), so importing the same file twice adds nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from portrait.errors import BadRequest

FORMATS = ("ndjson", "json", "parquet")
_SUFFIXES = {".ndjson": "ndjson", ".jsonl": "ndjson", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}


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


def read_messages(path: Path, file_format: str, chunk_rows: int = 10_000) -> Iterator[list[Any]]:
    """Chunks of raw messages, in file order. An NDJSON line that is not JSON comes through as a string saying so,
    which the message reader rejects (``invalid_message``) with that text as what was sent."""
    if not path.is_file():
        raise BadRequest(f"{path} is not a readable file", code="file_not_found")
    readers = {"ndjson": _ndjson, "json": _json_array, "parquet": _parquet}
    chunk: list[Any] = []
    for message in readers[file_format](path):
        chunk.append(with_message_id(message))
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk = []
    if chunk:
        yield chunk



def with_message_id(message: Any) -> Any:
    if isinstance(message, dict) and not message.get("messageId"):
        digest = hashlib.sha1(orjson.dumps(message, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS))
        return {**message, "messageId": f"import-{digest.hexdigest()}"}
    return message


def _ndjson(path: Path) -> Iterator[Any]:
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield _unreadable(line, f"line {number} is not JSON: {exc}")


def _unreadable(line: bytes, reason: str) -> str:
    # A string is not a message: the reader rejects it as invalid_message and keeps the text as the payload.
    return f"{reason}: {line[:2000].decode('utf-8', errors='replace').strip()}"


def _json_array(path: Path) -> Iterator[Any]:
    try:
        document = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{path.name} is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(document, list):
        raise BadRequest(f"{path.name} must hold a JSON array of messages (or use NDJSON)", code="invalid_request")
    yield from document


def _parquet(path: Path) -> Iterator[Any]:
    """Each row is a message; nested columns (properties, traits, context) come through as objects."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
        for row in batch.to_pylist():
            yield {key: _jsonable(value) for key, value in row.items() if value is not None}


def _jsonable(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        text: str = value.isoformat()
        return text if getattr(value, "tzinfo", None) else text + "Z"  # naive times in files are UTC
    return value
