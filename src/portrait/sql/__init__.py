"""Every SQL statement Portrait runs, built as SQLGlot expressions and emitted in the store's dialect.

Statements are written once in DuckDB syntax (the default store), parsed into SQLGlot trees at import, and rendered
for whichever dialect the store's capabilities name. Dynamic parts (filters, limits) are added with SQLGlot's builder
API. Values are always bound parameters (``?`` placeholders), never text pasted into SQL.

Submodules: :mod:`.ingest` (raw requests -> validated event log rows), :mod:`.processor` (log -> derived state),
:mod:`.reads` (profile API and status), :mod:`.schema` (migrations).
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp

READ_DIALECT = "duckdb"


def parse(text: str) -> exp.Expr:
    """Parse one statement of Portrait's own SQL (never user input)."""
    tree = sqlglot.parse_one(text, read=READ_DIALECT)
    assert tree is not None
    return tree


def parse_many(text: str) -> list[exp.Expr]:
    return [tree for tree in sqlglot.parse(text, read=READ_DIALECT) if tree is not None]


def param() -> exp.Placeholder:
    return exp.Placeholder()


def insert_from(table: str, source: str, columns: tuple[str, ...]) -> exp.Insert:
    """``INSERT INTO table (columns) SELECT columns FROM source``."""
    return exp.insert(exp.select(*columns).from_(source), table, columns=list(columns))


# Counter rows are created by the first migration; plain UPDATEs are much cheaper than upserts in DuckDB.
ADD_COUNTER = parse("UPDATE counters SET value = value + ? WHERE name = ?")
GET_COUNTERS = parse("SELECT name, value FROM counters UNION ALL SELECT name, value FROM processor_state")
# Traits derived by today's rules again (see schema migration 23).
RECHECK_DONE = parse("UPDATE counters SET value = 0 WHERE name = 'traits_recheck_due'")
ADD_PROCESSOR_COUNTER = parse("UPDATE processor_state SET value = value + ? WHERE name = ?")
SET_PROCESSOR_COUNTER = parse("UPDATE processor_state SET value = ? WHERE name = ?")
GET_PROCESSOR_STATE = parse("SELECT value FROM processor_state WHERE name = ?")
