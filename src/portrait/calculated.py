"""Calculated attributes kept current: every active definition in the registry, computed in SQL and stored in
``profile_traits`` -- for the profiles a batch touched (right after it is processed, before segments look at
them) and for everyone at a full recompute (periodically, for values that move with time such as "days since";
and on demand). RFM scores are quintiles over all customers, so they change only at a full recompute.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from portrait.conditions import Schema
from portrait.conditions.calculations import (
    Calculation,
    Concat,
    DaysSince,
    Rfm,
    YearsSince,
    parse_definition,
    unfit_attribute,
)
from portrait.errors import StorageUnavailable
from portrait.sql import calculated as q
from portrait.store import Session

log = logging.getLogger(__name__)


class Calculator:
    def __init__(self, schema: Callable[[], Schema], failures: dict[str, str] | None = None) -> None:
        self._schema = schema
        self._unfit: dict[str, str] = {}  # code -> why its definition was last skipped (logged once per reason)
        # code -> why its statement failed when last run (the attribute registry shows it as the attribute's error)
        self.failures: dict[str, str] = {} if failures is None else failures

    def definitions(self, session: Session) -> list[tuple[str, Calculation]]:
        """Active calculated attributes, those computed from events before those computed from attributes."""
        found = [(str(code), parse_definition(str(text))) for code, text in session.execute(q.CALCULATED)]
        return sorted(found, key=lambda item: isinstance(item[1], Concat | YearsSince | DaysSince))

    def apply(self, session: Session, now: datetime, *, scoped: bool) -> int:
        """Compute and store every calculated attribute for ``seg_live`` (scoped) or every profile, each in a
        transaction of its own, which the caller must not hold: a statement that fails aborts the whole transaction
        in DuckDB (no savepoints), so one attribute failing when run (an old definition after a change, say) would
        otherwise take every other attribute -- and the segments after them -- down with it, after every batch.
        Each is computed from what is committed, so one done again after a crash gives the same values. Returns how
        many attributes were computed."""
        schema = self._schema()
        done = 0
        for code, calculation in self.definitions(session):
            if scoped and isinstance(calculation, Rfm):
                continue  # quintiles over everyone: full recomputes only
            if self._unusable(code, calculation, schema):
                continue
            try:
                with session.transaction():
                    self._compute(session, code, calculation, schema, now, scoped=scoped)
            except StorageUnavailable:
                raise  # a full disk is no fault of the definition: the whole pass is tried again later
            except Exception as exc:  # this one only: its values stay as they were
                self._failed(code, exc)
                continue
            self.failures.pop(code, None)
            done += 1
        return done

    @staticmethod
    def _compute(session: Session, code: str, calculation: Calculation, schema: Schema, now: datetime, *,
                 scoped: bool) -> None:
        query, params = q.calculation_query(calculation, schema, now, scoped=scoped)
        session.execute(q.new_values(query), params)
        session.execute(q.UPSERT, {"code": code, "now": now})
        session.execute(q.DROP_SCOPED if scoped else q.DROP_ALL, {"code": code})

    def _failed(self, code: str, exc: Exception) -> None:
        """Remember (and log, once per reason) why the attribute's statement failed."""
        reason = f"cannot be computed, its values are kept as they were: {type(exc).__name__}: {exc}; change the " \
                 "definition"
        if self.failures.get(code) != reason:
            log.error("calculated attribute %r %s", code, reason)
        self.failures[code] = reason

    def _unusable(self, code: str, calculation: Calculation, schema: Schema) -> bool:
        """Whether the definition uses an attribute of a type it cannot use: one not defined when the definition
        was saved, since created (by the processor, from traits) with such a type. Computed, it would give every
        profile null or JSON text; skipped, its values stay as they were and the registry shows why (``error``),
        while every other attribute and the processor go on."""
        unfit = unfit_attribute(calculation, schema.attribute_types)
        if unfit is None:
            self._unfit.pop(code, None)
            return False
        if self._unfit.get(code) != unfit[1]:
            log.error("calculated attribute %r is not computed: %s", code, unfit[1])
        self._unfit[code] = unfit[1]
        return True
