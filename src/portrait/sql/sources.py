"""Statements for SQL sources: Portrait's own ``sources`` table, and the incremental query sent to a source.

The source query is the user's: it is parsed with SQLGlot in the source's dialect (so only a single SELECT gets
through), wrapped, and rendered back. The cursor value goes in as a SQLGlot literal -- quoted by SQLGlot, never
pasted -- so a source query may contain ``%`` or ``?`` without clashing with driver placeholders.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

from portrait.errors import BadRequest
from portrait.sql import param, parse

COLUMNS = ("name", "kind", "url", "query", "cursor_column", "every_seconds", "mapping", "created_at",
           "cursor_value", "status", "last_started_at", "last_finished_at", "last_error", "last_rows", "total_rows")
INSERT = exp.insert(exp.values([exp.Tuple(expressions=[param() for _ in COLUMNS])]), "sources",
                    columns=list(COLUMNS))
LIST = exp.select(*COLUMNS).from_("sources").order_by("name")
GET = exp.select(*COLUMNS).from_("sources").where(exp.column("name").eq(param()))
DELETE = parse("DELETE FROM sources WHERE name = ?")
# Params: started_at, name.
MARK_RUNNING = parse("UPDATE sources SET status = 'running', last_started_at = ?, last_error = NULL, last_rows = 0 "
                     "WHERE name = ?")
# Params: cursor value (JSON text), rows just read, rows just read, name. Saved after each committed chunk.
ADVANCE = parse("UPDATE sources SET cursor_value = ?, last_rows = last_rows + ?, total_rows = total_rows + ? "
                "WHERE name = ?")
# Params: status, finished_at, error, name.
FINISH = parse("UPDATE sources SET status = ?, last_finished_at = ?, last_error = ? WHERE name = ?")
# Params: the reason. A sync cut off by a crash: it resumes from its saved cursor at the next run.
INTERRUPTED = parse("UPDATE sources SET status = 'failed', last_error = ? WHERE status = 'running'")
# Params: now. Sources with a schedule whose last start is at least `every_seconds` ago (or that never ran).
DUE = parse("""
SELECT name FROM sources
WHERE every_seconds IS NOT NULL AND status <> 'running'
  AND (last_started_at IS NULL OR last_started_at + to_seconds(every_seconds) <= ?)
ORDER BY name
""")


def source_query(text: str, dialect: str) -> exp.Query:
    """The user's query as a tree; BadRequest unless it is exactly one SELECT in the source's dialect."""
    try:
        # A comment after the final ';' parses as a statement of its own (exp.Semicolon): not a second statement
        trees = [t for t in sqlglot.parse(text, read=dialect) if t is not None and not isinstance(t, exp.Semicolon)]
    except ParseError as exc:
        raise BadRequest(f"the query is not valid {dialect} SQL: {exc}", code="invalid_source") from exc
    if len(trees) != 1 or not isinstance(trees[0], exp.Query):
        raise BadRequest("the query must be a single SELECT statement", code="invalid_source")
    return trees[0]


def incremental(text: str, dialect: str, cursor: str | None, after: object = None) -> str:
    """The query to send: rows with the cursor at or past ``after``, in cursor order (all rows without a cursor).

    At-or-past (not strictly after) so that rows sharing the last saved value are read again after an interruption;
    their content-derived message ids make the second copy a duplicate that is dropped. Rows whose cursor is NULL
    cannot be tracked and are left out.
    """
    query = source_query(text, dialect)
    if cursor is None:
        return query.sql(dialect)
    column = exp.column(cursor, quoted=True)
    wrapped = exp.select("*").from_(query.subquery("portrait_source")).where(column.is_(exp.null()).not_())
    if after is not None:
        wrapped = wrapped.where(exp.GTE(this=column.copy(), expression=_literal(after)))
    return wrapped.order_by(column.copy()).sql(dialect)


def probe(text: str, dialect: str) -> str:
    """The query with no rows, to learn its columns (and check the connection and the query) cheaply."""
    return exp.select("*").from_(source_query(text, dialect).subquery("portrait_source")).limit(0).sql(dialect)


def _literal(value: object) -> exp.Expr:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return exp.Literal.string(str(value))
    return exp.Literal.number(value)
