"""The store interface: what every backend (DuckDB now, PostgreSQL next) provides."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
from sqlglot import exp


@dataclass(frozen=True)
class Capabilities:
    """What differs between backends, as data (not ``if backend == ...`` checks)."""

    dialect: str
    single_writer_process: bool
    arrow_scan: bool  # can query an in-memory Arrow table by name (else it is copied into a temp table)


class Session(Protocol):
    """One connection/cursor, used by one thread at a time."""

    def execute(self, statement: exp.Expr, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]: ...

    def arrow(self, statement: exp.Expr, params: Sequence[Any] = ()) -> pa.Table:
        """Run a statement and return its rows as an Arrow table (no Python objects per row)."""

    def load(self, name: str, table: pa.Table) -> None:
        """Make ``table`` queryable as ``name`` until :meth:`unload`."""

    def unload(self, name: str) -> None: ...

    def append(self, table: str, rows: pa.Table) -> None:
        """Append ``rows`` to ``table``; their columns must be the table's, in its order (else a PortraitError).

        The ingest writer's path: no statement to plan, no name to register (each costs a round trip into the
        engine, measured at ~15% of a commit's time under load)."""

    def transaction(self) -> AbstractContextManager[None]: ...

    def close(self) -> None: ...


class Store(Protocol):
    capabilities: Capabilities
    path: str

    def session(self) -> Session: ...

    def checkpoint(self) -> None: ...

    def read_problem(self) -> str | None:
        """Why the database could not be read since it was opened (a damaged block...), the first time; else None."""

    def memory(self) -> tuple[int, str]:
        """Bytes the database engine holds in memory now, and its limit as the engine writes it."""

    def backup(self, target: str) -> None:
        """Copy the whole database, as one snapshot (writes go on meanwhile), into the new file ``target``,
        encrypted as the database is."""

    def close(self) -> None: ...
