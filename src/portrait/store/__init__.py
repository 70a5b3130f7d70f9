"""Storage behind one interface. The domain and service layers only see :class:`Store` and :class:`Session`."""

from portrait.store.base import Capabilities, Session, Store
from portrait.store.duckdb import DuckDBStore, open_store

__all__ = ["Capabilities", "DuckDBStore", "Session", "Store", "open_store"]
