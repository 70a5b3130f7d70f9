"""The attribute registry use cases: list, show, create, update (deprecate) attributes; seed the standard ones.

Changing an attribute never rewrites stored profile values: the registry describes them. Deprecating an attribute
keeps its values and stops nothing; a deprecated attribute is hidden from new segment and console choices later.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, fields
from datetime import date, datetime
from typing import Any

import orjson
import pyarrow as pa

from portrait.attributes import STANDARD, TYPES, Attribute, check_code
from portrait.conditions.calculations import (
    definition_text,
    misfit,
    parse_definition,
    result_type,
    unfit_attribute,
    unfit_type,
)
from portrait.errors import BadRequest, Conflict, NotFound
from portrait.event_names import closest_name
from portrait.privacy import personal_copied
from portrait.spec import utc_now
from portrait.sql import attributes as q
from portrait.store import Session

EDITABLE = ("name", "description", "unit", "is_personal_info", "calculate_analytics", "merge_strategy",
            "definition", "validation", "status", "type")


class AttributeRegistry:
    def __init__(self, session: Callable[[], Session]) -> None:
        self._session = session
        # Calculated attributes whose statement failed when last run, by code: why (see calculated.Calculator).
        self.failures: dict[str, str] = {}

    def seed(self) -> None:
        now = utc_now()
        rows = [_row(attribute, now, now) for attribute in STANDARD]
        table = pa.Table.from_pylist(rows)
        session = self._session()
        session.load("seed_attributes", table)
        try:
            session.execute(q.SEED)
        finally:
            session.unload("seed_attributes")

    def list(self, *, standard: bool | None = None, status: str | None = None) -> list[dict[str, Any]]:
        query, params = q.listing(standard, status)
        types = self.types()
        return [_with_error(_json(row), types, self.failures) for row in self._session().execute(query, params)]

    def types(self) -> dict[str, str]:
        """Every attribute's type, by code."""
        return {str(code): str(kind) for code, kind in self._session().execute(q.TYPES)}

    def get(self, code: str) -> dict[str, Any]:
        rows = self._session().execute(q.GET, [code])
        if not rows:
            raise NotFound(unknown_code(code, self.types()))
        attribute = _with_error(_json(rows[0]), self.types(), self.failures)
        filled, profiles = self._session().execute(q.USAGE, [code])[0]
        attribute["usage"] = {"values": int(filled), "profiles": int(profiles)}
        return attribute

    def create(self, fields_: dict[str, Any]) -> dict[str, Any]:
        unknown = set(fields_) - {f.name for f in fields(Attribute)} - {"standard", "auto_created"}
        if unknown:
            raise BadRequest(f"unknown attribute fields: {', '.join(sorted(unknown))}", code="invalid_attribute")
        if "code" not in fields_ or "name" not in fields_:
            raise BadRequest("an attribute needs a code and a name", code="invalid_attribute")
        fields_ = {**fields_, **_calculated(fields_)}
        if fields_.get("calculated"):
            self.refuse_unfit_attributes(fields_["definition"])
        if isinstance(fields_["code"], str) and isinstance(fields_.get("type", "string"), str):
            self._refuse_definitions_unfit_for(fields_["code"], fields_.get("type", "string"), None)
        if fields_.get("calculated") and "is_personal_info" not in fields_:
            fields_["is_personal_info"] = self.copies_personal(fields_["definition"])
        attribute = Attribute(**{k: v for k, v in fields_.items() if k not in ("standard", "auto_created")}).checked()
        session = self._session()
        if session.execute(q.GET, [attribute.code]):
            raise Conflict(f"attribute {attribute.code!r} exists already; update it instead",
                           code="attribute_exists", field="code")
        now = utc_now()
        session.load("new_attribute", pa.Table.from_pylist([_row(attribute, now, now)]))
        try:
            session.execute(q.INSERT)
        finally:
            session.unload("new_attribute")
        return self.get(attribute.code)

    def update(self, code: str, changes: dict[str, Any]) -> dict[str, Any]:
        check_code(code)
        unknown = set(changes) - set(EDITABLE)
        if unknown:
            raise BadRequest(f"these fields cannot be changed: {', '.join(sorted(unknown))} (editable: "
                             f"{', '.join(EDITABLE)})", code="invalid_attribute")
        current = self.get(code)
        if "definition" in changes:
            changes = {**changes, **_calculated({"type": current["type"] if "type" in changes else None,
                                                 **changes})}
            if changes["definition"] != current["definition"]:  # the console's form sends it back unchanged
                self.refuse_unfit_attributes(changes["definition"])
            if "is_personal_info" not in changes and not current["is_personal_info"] \
                    and self.copies_personal(changes["definition"]):
                changes["is_personal_info"] = True
        elif current["calculated"] and "type" in changes:
            raise BadRequest(f"{code} is calculated: its type follows its definition", code="invalid_attribute")
        merged = {k: current[k] for k in (f.name for f in fields(Attribute))}
        merged.update(changes)
        Attribute(**merged).checked()
        columns = [*changes, "updated_at"]
        values = [orjson.dumps(v).decode() if k == "validation" else v for k, v in changes.items()]
        self._session().execute(q.update(columns), [*values, utc_now(), code])
        return self.get(code)

    def personal(self) -> set[str]:
        """The codes of the attributes marked personal information."""
        return self.personal_and_open()[0]

    def personal_and_open(self) -> tuple[set[str], set[str]]:
        """The codes of the attributes marked personal information, and of those not (an event's field named like
        personal data, mobile_phone, is masked unless such an attribute says it is not personal): one read of the
        list for both."""
        listed = self.list()
        return ({a["code"] for a in listed if a["is_personal_info"]},
                {a["code"] for a in listed if not a["is_personal_info"]})

    def copies_personal(self, definition: str) -> bool:
        """Whether a calculated attribute with this definition repeats personal data (and so is personal itself,
        unless someone allowed to read personal data says otherwise)."""
        personal, open_codes = self.personal_and_open()
        return bool(personal_copied(parse_definition(definition), personal, open_codes=open_codes))

    def type_after(self, code: str, changes: dict[str, Any]) -> str:
        """The type attribute ``code`` would have after ``changes`` (a definition's own type for a calculated one),
        so what depends on the type can be checked before anything changes."""
        current = self.get(code)
        if "definition" in changes:
            found = _calculated({"type": changes.get("type"), "definition": changes["definition"]})
            return str(found.get("type", changes.get("type", current["type"])))
        return str(changes.get("type", current["type"]))

    def refuse_unfit_definitions(self, code: str, kind: str) -> None:
        """Conflict if giving attribute ``code`` the type ``kind`` breaks a calculated attribute's definition that
        uses it (``days_since(created_at)`` once created_at is text), as segments' conditions are checked: the
        values would quietly become null or JSON text."""
        before = str(self.get(code)["type"])
        if before != kind:
            self._refuse_definitions_unfit_for(code, kind, before)

    def _refuse_definitions_unfit_for(self, code: str, kind: str, before: str | None) -> None:
        """Conflict if attribute ``code``, of type ``before`` (None: created now), cannot be ``kind`` for a calculated
        attribute's definition that uses it. Creating it is checked too: a definition may name an attribute not
        defined yet, and creating that with a type the definition cannot use would break it as a type change does
        (the processor's auto-created attributes cannot be refused: their definitions show an ``error`` instead)."""
        if kind not in TYPES:
            return  # not a type at all (create and update refuse that: 400, not a conflict)
        unfit = []
        for attribute in self.list():
            if not attribute["calculated"] or not attribute["definition"] or attribute["code"] == code:
                continue
            calculation = parse_definition(attribute["definition"])
            reason = misfit(calculation, code, kind) if before is None else unfit_type(calculation, code, before, kind)
            if reason:
                unfit.append(f"{attribute['code']} = {attribute['definition']} ({reason})")
        if unfit:
            verb = f"make {code}" if before is not None else f"create {code} as"
            raise Conflict(f"cannot {verb} {kind}: the calculated attribute {'; '.join(unfit)} would no longer "
                           "make sense; change its definition first", code="attribute_in_use")

    def refuse_unfit_attributes(self, definition: str) -> None:
        """BadRequest if the definition uses an attribute whose type it cannot use (``days_since(first_name)``, a
        string; ``concat(tags)``, a list): saved, it would give every profile null or JSON text. The check a type
        change makes (:meth:`refuse_unfit_definitions`), made when the definition is written. An attribute not
        defined yet passes: it may be defined next, and changing its type later is checked."""
        unfit = unfit_attribute(parse_definition(definition), self.types())
        if unfit:
            raise BadRequest(f"{definition} {unfit[1]}", code="invalid_attribute", field="definition")

    def analytics(self, code: str, top: int = 10) -> dict[str, Any]:
        """Fill rate, distinct values, top values; numbers: min/max/mean/quantiles/histogram; dates: range."""
        attribute = self.get(code)
        if not attribute["calculate_analytics"]:
            raise BadRequest(f"analytics are off for {code}: turn them on with `portrait attributes update {code} "
                             "--analytics` (or PATCH calculate_analytics)", code="analytics_off")
        session = self._session()
        profiles = int(session.execute(q.COUNT_PROFILES)[0][0])
        numeric = attribute["type"] in ("integer", "number")
        filled, distinct = session.execute(q.FILL_NUMBERS if numeric else q.FILL, [code])[0]
        if numeric:  # 10 and 10.0 are one value
            top_values = [{"value": _number(x, whole), "count": int(n)}
                          for x, whole, n in session.execute(q.TOP_NUMBERS, [code, top])]
        else:
            top_values = [{"value": orjson.loads(v), "count": int(n)}
                          for v, n in session.execute(q.TOP_VALUES, [code, top])]
        result: dict[str, Any] = {
            "code": code, "type": attribute["type"], "unit": attribute["unit"], "profiles": profiles,
            "filled": int(filled), "fill_rate": round(filled / profiles, 4) if profiles else 0.0,
            "distinct": int(distinct), "top_values": top_values,
        }
        if numeric:
            result.update(self._numeric(session, code))
        if attribute["type"] in ("date", "datetime"):
            first, last = session.execute(q.date_range(attribute["type"]), [code])[0]
            result["range"] = {"min": _moment(first), "max": _moment(last)}
        return result

    @staticmethod
    def _numeric(session: Session, code: str) -> dict[str, Any]:
        rows = session.execute(q.NUMERIC, [code])
        if not rows:
            return {"min": None, "max": None, "mean": None, "quantiles": {}, "histogram": []}
        low, high, mean, quantiles, low_whole, high_whole = rows[0]
        width = (high - low) / 10 or 1.0
        bins = dict(session.execute(q.HISTOGRAM, [low, high, low, code]))
        return {
            "min": _number(low, low_whole), "max": _number(high, high_whole), "mean": mean,
            "quantiles": dict(zip(("p25", "p50", "p75", "p90", "p99"), quantiles, strict=True)),
            "histogram": [{"from": low + i * width, "to": low + (i + 1) * width, "count": int(bins.get(i, 0))}
                          for i in range(10)] if high > low else [{"from": low, "to": high,
                                                                   "count": int(sum(bins.values()))}],
        }


def _number(x: float, whole: int | None) -> int | float:
    """A number as sent: 10 (not 10.0) and 9007199254740993 exactly when whole, else the double (1e+300, 9.5)."""
    return x if whole is None else whole


def _moment(value: date | None) -> str | None:
    """A date as 2026-06-01; a datetime (naive UTC) as the API writes times, 2026-06-01T23:00:00.000Z."""
    if isinstance(value, datetime):  # before date: a datetime is a date too
        return value.isoformat(timespec="milliseconds") + "Z"
    return None if value is None else value.isoformat()


def _with_error(attribute: dict[str, Any], types: dict[str, str], failures: dict[str, str]) -> dict[str, Any]:
    """The attribute with ``error``: why its definition cannot be computed now, else None. A definition may name an
    attribute not defined yet; when the processor then creates it from traits with a type the definition cannot use
    (a date arrives as JSON text), the definition is not computed (see calculated.Calculator) and says so here; so
    does one whose statement failed when last run (``failures``)."""
    definition = attribute["definition"] if attribute["calculated"] else None
    attribute["error"] = (definition_error(definition, types) or failures.get(attribute["code"])
                          if definition else None)
    return attribute


def definition_error(definition: str, types: dict[str, str]) -> str | None:
    """What a definition that cannot be computed with the attributes as typed now says about itself (as a segment
    that cannot be evaluated does), or None."""
    unfit = unfit_attribute(parse_definition(definition), types)
    if unfit is None:
        return None
    code, reason = unfit
    return (f"cannot be computed, its values are kept as they were: {definition} {reason}; change the definition "
            f"or the type of {code}")


def _calculated(fields_: dict[str, Any]) -> dict[str, Any]:
    """For a definition: its canonical text, ``calculated`` on and the type it yields (a given type must match)."""
    definition = fields_.get("definition")
    if definition is None:
        return {}
    if not isinstance(definition, str):
        raise BadRequest("definition is text, e.g. sum(\"Order Completed\", revenue)", code="invalid_attribute")
    calculation = parse_definition(definition)
    kind = result_type(calculation)
    if fields_.get("type") not in (None, kind):
        raise BadRequest(f"{definition_text(calculation)} yields {kind}, not {fields_['type']}",
                         code="invalid_attribute", field="definition")
    return {"definition": definition_text(calculation), "calculated": True, "type": kind}


def _row(attribute: Attribute, created: datetime, updated: datetime) -> dict[str, Any]:
    row = asdict(attribute)
    row["validation"] = orjson.dumps(row["validation"]).decode()
    return {**row, "created_at": created, "updated_at": updated}


def _json(row: tuple[Any, ...]) -> dict[str, Any]:
    record = dict(zip(q.COLUMNS, row, strict=True))
    record["validation"] = orjson.loads(record["validation"] or "{}")
    for key in ("created_at", "updated_at"):
        record[key] = record[key].isoformat(timespec="milliseconds") + "Z"
    return record


def unknown_code(code: str, codes: Iterable[str]) -> str:
    """The message for an attribute code no attribute has, naming the closest code there is (`country` is
    `address_country`), as a condition's misspelt attribute is answered."""
    known = list(codes)
    close = closest_name(code, known) or _the_one_code_with_the_word(code, known)
    return f"no attribute has the code {code!r}" + (f" (did you mean {close!r}?)" if close else "")


def _the_one_code_with_the_word(word: str, codes: list[str]) -> str | None:
    """`country` for `address_country`, `city` for `address_city`: too short a part of the code to be similar."""
    having = [code for code in codes if word.casefold() in code.split("_")]
    return having[0] if len(having) == 1 else None
