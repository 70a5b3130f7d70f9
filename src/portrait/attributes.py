"""The attribute registry's rules (pure): standard attributes, codes for incoming trait names, type inference.

Every profile attribute has a stable snake_case **code**. Incoming Segment traits are mapped onto codes: camelCase
becomes snake_case (``firstName`` -> ``first_name``) and one level of nesting is flattened with ``_``
(``address.city`` -> ``address_city``). The same mapping runs in the processor's SQL (``sql.processor``) and here,
for lookups; a test keeps the two in step.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field, fields
from typing import Any

from portrait.errors import BadRequest

TYPES = ("string", "integer", "number", "boolean", "date", "datetime", "enum", "list", "object")
MERGE_STRATEGIES = ("latest", "earliest", "max", "min", "sum", "union")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_NOT_CODE = re.compile(r"[^a-z0-9_]+")
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# Codes that read as personal data (a word of the code, e.g. mobile_phone, date_of_birth, home_address, zip, ip):
# an attribute created from such a trait is marked personal information, so it is masked for keys without
# pii:read from its first value on -- as are the configured identity traits (loyalty_card...), which identify the
# person; and an event's field so named is masked unless an attribute of that code is not personal. A business can
# unmark one (PATCH /api/attributes/CODE); leaving personal data open by default is the mistake that cannot be
# taken back. Plain enough for both Python's re and DuckDB's RE2 (the processor marks traits in SQL).
PERSONAL_CODE = (
    r"(^|_)(e_?mail|phone|mobile|cell|fax|surname|birth|birthday|birthdate|dob|address|street|zip|zipcode|postal|"
    r"postcode|ip|ssn|passport|iban|national_id|tax_id|latitude|longitude|full_name|first_name|last_name|given_name|"
    r"family_name|middle_name|maiden_name|nickname)(_|$)"
)
_PERSONAL_CODE = re.compile(PERSONAL_CODE)


def code_for(name: str) -> str:
    """The attribute code of a trait name: ``firstName`` -> ``first_name``, ``address.city`` -> ``address_city``,
    ``prénom`` -> ``prenom``; ``''`` for a name with no Latin letter or digit (as DuckDB's strip_accents in SQL)."""
    plain = "".join(c for c in unicodedata.normalize("NFD", name.strip().replace("ß", "ss"))
                    if unicodedata.category(c) not in ("Mn", "Mc", "Me"))
    snake = _CAMEL.sub(r"\1_\2", plain).lower()
    return _NOT_CODE.sub("_", snake).strip("_")


def reads_as_personal(code: str) -> bool:
    """Whether an attribute code reads as personal data (see :data:`PERSONAL_CODE`)."""
    return _PERSONAL_CODE.search(code) is not None


def unit_shown(attribute: dict[str, Any]) -> str | None:
    """The unit people read after a value of this attribute (12.5 PLN, 30 days): a number's unit. JSON answers
    keep values as numbers and give the unit beside them."""
    return (attribute.get("unit") or None) if attribute.get("type") in ("integer", "number") else None


def with_unit(text: str, unit: str | None) -> str:
    """A value as people read it, with its unit when there is one."""
    return f"{text} {unit}" if unit else text


def check_code(code: str) -> str:
    if not _CODE.match(code):
        raise BadRequest(f"attribute code {code!r} must be snake_case: a letter, then letters, digits or _ "
                         "(at most 63)", code="invalid_attribute", field="code")
    return code


# The type a custom attribute gets from the first value seen (DuckDB's json_type names); anything else: string.
# A whole number gives "number", not "integer": JSON does not tell 10.0 from 10, so a price or score that first
# arrives whole must still take 10.5 later (define the attribute as integer to refuse fractions). One level of
# nesting is flattened into codes of their own; an object nested deeper is kept as an object.
INFERRED_TYPES = {"BIGINT": "number", "UBIGINT": "number", "DOUBLE": "number", "BOOLEAN": "boolean",
                  "ARRAY": "list", "OBJECT": "object"}


@dataclass
class Attribute:
    """One profile attribute: what it means and how it is treated."""

    code: str
    name: str
    type: str = "string"
    description: str = ""
    unit: str | None = None
    is_personal_info: bool = False
    calculate_analytics: bool = False
    calculated: bool = False
    standard: bool = False
    merge_strategy: str = "latest"
    validation: dict[str, Any] = field(default_factory=dict)
    status: str = "active"
    auto_created: bool = False
    definition: str | None = None  # calculated attributes: how the value is computed (conditions/calculations.py)

    def checked(self) -> Attribute:
        _check_field_types(self)
        check_code(self.code)
        if self.type not in TYPES:
            raise BadRequest(f"type {self.type!r} is not one of {', '.join(TYPES)}", code="invalid_attribute",
                             field="type")
        if self.merge_strategy not in MERGE_STRATEGIES:
            raise BadRequest(f"merge strategy {self.merge_strategy!r} is not one of {', '.join(MERGE_STRATEGIES)}",
                             code="invalid_attribute")
        if self.status not in ("active", "deprecated"):
            raise BadRequest("status must be active or deprecated", code="invalid_attribute")
        if not self.name.strip():
            raise BadRequest("an attribute needs a name", code="invalid_attribute", field="name")
        return self

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


# The JSON type each field a client sends must have. Checked before anything else: the store would otherwise cast
# what it is given ("yes" became true, 5 became "5") or fail on it (a 500 for a list as the name).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "code": (str,), "name": (str,), "type": (str,), "description": (str,), "unit": (str, type(None)),
    "is_personal_info": (bool,), "calculate_analytics": (bool,), "merge_strategy": (str,), "validation": (dict,),
    "status": (str,), "definition": (str, type(None))}
_JSON_NAMES = {str: "text", bool: "true or false", dict: "an object", type(None): "null"}


def _check_field_types(attribute: Attribute) -> None:
    for name, allowed in _FIELD_TYPES.items():
        value = getattr(attribute, name)
        if not isinstance(value, allowed):
            expected = " or ".join(_JSON_NAMES[t] for t in allowed)
            raise BadRequest(f"{name} must be {expected}, not {value!r}", code="invalid_attribute", field=name)


def _std(code: str, name: str, kind: str = "string", description: str = "", *, pii: bool = False,
         analytics: bool = True, unit: str | None = None) -> Attribute:
    return Attribute(code, name, kind, description, unit, is_personal_info=pii, calculate_analytics=analytics,
                     standard=True)


STANDARD: tuple[Attribute, ...] = (
    _std("first_name", "First name", pii=True, analytics=False),
    _std("last_name", "Last name", pii=True, analytics=False),
    _std("name", "Full name", pii=True, analytics=False),
    _std("email", "Email", description="Primary email address", pii=True, analytics=False),
    _std("phone", "Phone", description="Phone number (E.164 when it can be read)", pii=True, analytics=False),
    _std("gender", "Gender"),
    _std("birthday", "Birthday", "date", pii=True),
    _std("age", "Age", "integer", unit="years"),
    _std("address_city", "City", description="address.city", pii=True),
    _std("address_country", "Country", description="address.country (ISO 3166 alpha-2)"),
    _std("address_postal_code", "Postal code", description="address.postalCode", pii=True),
    _std("address_street", "Street", description="address.street", pii=True, analytics=False),
    _std("address_state", "State or region", description="address.state"),
    _std("language", "Language", description="Preferred language (e.g. de-DE)"),
    _std("timezone", "Time zone", description="IANA time zone"),
    _std("company", "Company"),
    _std("title", "Job title"),
    _std("username", "User name", pii=True, analytics=False),
    _std("website", "Website", analytics=False),
    _std("avatar", "Avatar", description="Picture URL", analytics=False),
    _std("created_at", "Created at", "datetime", description="When the customer's account was created"),
    _std("external_id", "External id", description="Id of the customer in another system", analytics=False),
)
