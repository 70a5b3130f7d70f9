"""The DuckDB store's append path (the ingest writer's), on a real database file."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from portrait.errors import PortraitError
from portrait.sql import parse
from portrait.store.duckdb import DuckDBStore

COUNTERS = parse("SELECT name, value FROM counters ORDER BY name")


@pytest.fixture()
def store(tmp_path: Path) -> DuckDBStore:
    return DuckDBStore(str(tmp_path / "store.duckdb"))


def test_append_adds_rows_by_the_tables_column_order(store: DuckDBStore) -> None:
    session = store.session()
    before = session.execute(COUNTERS)
    with session.transaction():
        session.append("counters", pa.table({"name": ["zz_test"], "value": [7]}))
    assert session.execute(COUNTERS) == sorted([*before, ("zz_test", 7)])


def test_append_refuses_columns_in_another_order_and_appends_nothing(store: DuckDBStore) -> None:
    session = store.session()
    before = session.execute(COUNTERS)
    with pytest.raises(PortraitError, match=r"cannot append to counters: columns \['value', 'name'\]"):
        session.append("counters", pa.table({"value": [7], "name": ["zz_test"]}))
    assert session.execute(COUNTERS) == before
