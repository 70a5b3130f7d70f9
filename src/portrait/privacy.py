"""Masking personal data for callers without the ``pii:read`` scope (pure functions, no I/O).

What is personal: attributes flagged ``is_personal_info`` in the registry (email, phone, names, birthday, address
parts, and any custom attribute so flagged), identifiers of the types email and phone, and any identifier whose
value is an email address or an international phone number (:func:`personal_identifier`: a userId, anonymousId,
previousId or custom identifier ``ann@example.com``). Masked values keep just enough to recognize a record without
revealing it: ``a***@example.com``, ``***89``, ``A***``; numbers, dates and booleans become ``***``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import fields, is_dataclass, replace
from datetime import date
from typing import Any

import phonenumbers

from portrait.attributes import code_for, reads_as_personal
from portrait.conditions.ast import Compare, Condition
from portrait.conditions.calculations import Calculation, copied_values

PERSONAL_IDENTITY_TYPES = frozenset({"email", "phone"})
HIDDEN = "***"
_EMAIL = re.compile(r"^([^@\s])[^@\s]*(@[^@\s]+)$")
_PHONE = re.compile(r"^\+?[\d\s().\-/]{6,}$")
# An identifier value that is an email address: local@domain.tld, the top-level domain letters (or an IDN's xn--).
_EMAIL_IDENTIFIER = re.compile(r"^[^@\s]+@(?:[^@\s.]+\.)+(?:[^\W\d_]{2,}|xn--[\w-]+)$")
# The event fields that hold identifiers (as the API shows an event).
IDENTIFIER_FIELDS = ("user_id", "anonymous_id", "previous_id", "group_id")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ][\d:.]+(Z|[+-]\d{2}:?\d{2})?)?$")  # a date as text is a date


def mask(value: Any) -> Any:
    """A masked copy of a personal value (structure kept for lists and objects)."""
    if value is None:
        return None
    if isinstance(value, str):
        email = _EMAIL.match(value)
        if email:
            return f"{email.group(1)}{HIDDEN}{email.group(2)}"
        if _DATE.match(value):
            return HIDDEN
        if _PHONE.match(value):
            digits = re.sub(r"\D", "", value)
            return f"{HIDDEN}{digits[-2:]}"
        return f"{value[:1]}{HIDDEN}" if len(value) > 2 else HIDDEN
    if isinstance(value, list):
        return [mask(item) for item in value]
    if isinstance(value, dict):
        return {key: mask(item) for key, item in value.items()}
    return HIDDEN


def personal_identifier(value: object) -> bool:
    """Whether an identifier's value is personal data whatever its type: an email address (``local@domain.tld``)
    or a phone number written in international form (starting with ``+``) that ``phonenumbers`` reads as a valid
    number. Many businesses use the email as the userId; an anonymous or custom id may be one too. The test is
    conservative: an order number, ``42`` or ``A-1001`` is not a phone, and ``team@42`` not an email."""
    if not isinstance(value, str):
        return False
    text = value.strip()
    if _EMAIL_IDENTIFIER.match(text):
        return True
    if not text.startswith("+"):
        return False
    try:
        return bool(phonenumbers.is_valid_number(phonenumbers.parse(text, None)))
    except phonenumbers.NumberParseException:
        return False


def mask_identifier(value: Any) -> Any:
    """An identifier's value as a caller without ``pii:read`` sees it: masked if it is an email or a phone."""
    return mask(value) if personal_identifier(value) else value


def mask_request(request: dict[str, Any]) -> dict[str, Any]:
    """A data-subject request as a caller without ``pii:read`` sees it: the identity it names (``email:ann@...``,
    ``user_id:42``) masked -- who asked to be forgotten or to see their data is personal data too -- also where the
    error of a failed one repeats it ("no profile has the identity email:ann@...")."""
    identity = request.get("identity")
    if not isinstance(identity, str):
        return request
    kind, sep, value = identity.partition(":")
    masked = {**request, "identity": f"{kind}:{mask(value)}" if sep else mask(identity)}
    error, shown = request.get("error"), value if sep else identity
    if isinstance(error, str) and shown:
        masked["error"] = re.sub(re.escape(shown), lambda _: str(mask(shown)), error, flags=re.IGNORECASE)
    return masked


def mask_traits(traits: dict[str, Any], personal: Iterable[str]) -> dict[str, Any]:
    """Profile traits by attribute code: personal ones masked."""
    codes = set(personal)
    return {code: mask(value) if code in codes else value for code, value in traits.items()}


def mask_identities(identities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Identities with the values of the types email and phone masked, and any other whose value is an email or a
    phone (:func:`personal_identifier`: a userId ``ann@example.com``)."""
    return [{**i, "value": mask(i.get("value"))} if _personal_identity(i.get("type"), i.get("value")) else i
            for i in identities]


def _personal_identity(kind: object, value: object) -> bool:
    """Whether an identity (an identifier or an external id) is personal: of the type email or phone, or its value
    is one (:func:`personal_identifier`)."""
    return str(kind or "").lower() in PERSONAL_IDENTITY_TYPES or personal_identifier(value)


def mask_members(page: dict[str, Any]) -> dict[str, Any]:
    """A page of segment members, whose ``user_id`` is masked when it is an email or a phone."""
    return {**page, "members": [{**m, "user_id": mask_identifier(m.get("user_id"))} for m in page["members"]]}


def is_personal_field(name: str, codes: Collection[str], open_codes: Collection[str]) -> bool:
    """Whether the values of an event field or property ``name`` (``email``, ``firstName``, ``shipping.email``) are
    personal: its path read as an attribute code is one of ``codes`` (``address.city`` -> ``address_city``), its
    last key is an email or a phone, however deep, or it reads as personal data (:func:`named_personal`). Events
    are masked by this rule, so calculated attributes copying a property and conditions comparing one follow it
    too: ``last_value("Order", shipping.email)`` is an email, ``where mobilePhone starts with "+48 6"`` tells one."""
    return _marked_personal(name, codes) or named_personal(name, open_codes)


def _marked_personal(name: str, codes: Collection[str]) -> bool:
    return code_for(name) in codes or code_for(name.rsplit(".", 1)[-1]) in PERSONAL_IDENTITY_TYPES


def named_personal(name: str, open_codes: Collection[str]) -> bool:
    """Whether a field reads as personal data by its name (``mobilePhone``, ``dateOfBirth``, ``customer.firstName``;
    see :data:`portrait.attributes.PERSONAL_CODE`), as a trait so named becomes a personal attribute -- unless an
    attribute of that code (``open_codes``: those not marked personal) says it is not."""
    code = code_for(name)
    return code not in open_codes and reads_as_personal(code)


def mask_fields(fields: Any, personal: Iterable[str], prefix: str = "", *, open_codes: Collection[str]) -> Any:
    """Traits/properties/context of a raw message: values whose key (as an attribute code: ``firstName`` ->
    ``first_name``, ``address.city`` -> ``address_city``) is personal are masked, and so are email/phone external
    ids. A value (not an object) under a name that reads as personal data is masked too; an object so named is
    looked into, so that ``address.country`` stays as open as the attribute address_country."""
    codes = set(personal) | PERSONAL_IDENTITY_TYPES
    if not isinstance(fields, dict):
        return fields
    masked: dict[str, Any] = {}
    for key, value in fields.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key == "externalIds" and isinstance(value, list):
            masked[key] = [{**v, "id": mask(v.get("id"))} if isinstance(v, dict) and
                           _personal_identity(v.get("type"), v.get("id")) else v for v in value]
        elif _marked_personal(path, codes) or code_for(str(key)) in PERSONAL_IDENTITY_TYPES:
            masked[key] = mask(value)  # an "email" or "phone" key is one however deep it is (shipping.email)
        elif isinstance(value, dict):
            masked[key] = mask_fields(value, codes, path if key != "traits" else "", open_codes=open_codes)
        elif isinstance(value, list):  # objects in a list (recipients: [{"email": ...}]) as objects
            masked[key] = [mask_fields(item, codes, path, open_codes=open_codes) if isinstance(item, dict)
                           else _leaf(item, path, open_codes) for item in value]
        else:
            masked[key] = _leaf(value, path, open_codes)
    return masked


def _leaf(value: Any, path: str, open_codes: Collection[str]) -> Any:
    return mask(value) if named_personal(path, open_codes) else value


ALWAYS_PERSONAL_FIELDS = frozenset(("ip",))


def personal_copied(calculation: Calculation, personal: Iterable[str], *, open_codes: Collection[str]
                    ) -> list[str]:
    """The personal data a calculated attribute's values would repeat: personal attributes it copies, and event
    properties masked in events (an email, a phone, an IP address, a property named like a personal attribute or
    reading as personal data). Such an attribute is personal itself: ``concat(first_name, " ", last_name)`` is a
    name."""
    codes = set(personal)
    attributes, properties = copied_values(calculation)
    event_codes = codes | PERSONAL_IDENTITY_TYPES | ALWAYS_PERSONAL_FIELDS
    return sorted({a for a in attributes if a in codes}
                  | {p for p in properties if is_personal_field(p, event_codes, open_codes)})


def mask_condition(tree: Condition, personal: Iterable[str], *, open_codes: Collection[str]) -> Condition:
    """A condition with the values it compares personal data to masked: a segment saved by a key with ``pii:read``
    (``email = "ann@example.com"``) is read by keys without it. Personal are the attributes of ``personal`` and the
    event properties masked in events (:func:`is_personal_field`, as conditions are checked, see
    :class:`portrait.viewer.Viewer`); ``is set`` has no value, and a relative time (``within last 30d``) is not the
    person's."""
    masked: Condition = _masked_tree(tree, set(personal) | PERSONAL_IDENTITY_TYPES, open_codes)
    return masked


def mask_calculation(calculation: Calculation, personal: Iterable[str], *, open_codes: Collection[str]
                     ) -> Calculation:
    """A calculated attribute's definition with the values its ``where`` compares personal data to masked
    (``count("Signed Up", where email = "a***@example.com")``), as :func:`mask_condition` masks a segment's."""
    masked: Calculation = _masked_tree(calculation, set(personal) | PERSONAL_IDENTITY_TYPES, open_codes)
    return masked


def _masked_tree(node: Any, codes: set[str], open_codes: Collection[str]) -> Any:
    if isinstance(node, Compare):
        if not is_personal_field(node.field, codes, open_codes):
            return node
        return replace(node, values=tuple(mask(v) if isinstance(v, str | int | float | date) else v
                                          for v in node.values))
    if isinstance(node, tuple):
        return tuple(_masked_tree(item, codes, open_codes) for item in node)
    if is_dataclass(node) and not isinstance(node, type):
        changed = {f.name: _masked_tree(getattr(node, f.name), codes, open_codes) for f in fields(node)}
        return replace(node, **changed)
    return node


def mask_event(event: dict[str, Any], personal: Iterable[str], *, open_codes: Collection[str]) -> dict[str, Any]:
    """An event as the API returns it, with personal values in its traits, properties, context and other top-level
    fields (``extra``: an ``email`` sent beside ``userId``) masked, and its identifiers (``user_id``,
    ``anonymous_id``, ``previous_id``, ``group_id``) when they are emails or phones. An IP address (``context.ip``,
    which ingestion fills from the request) is personal data under the GDPR: always masked. ``open_codes``: the
    attributes not marked personal (a field named like one is not masked for its name alone)."""
    codes = set(personal) | ALWAYS_PERSONAL_FIELDS
    out = dict(event)
    for name in IDENTIFIER_FIELDS:
        if name in out:
            out[name] = mask_identifier(out[name])
    for part in ("traits", "properties", "context", "extra"):
        if isinstance(out.get(part), dict):
            out[part] = mask_fields(out[part], codes, open_codes=open_codes)
    return out


def mask_profile(document: dict[str, Any], personal: Iterable[str], *, open_codes: Collection[str]
                 ) -> dict[str, Any]:
    """A profile document (traits, identities, merges, identity conflicts, events) with personal data masked."""
    codes = set(personal)
    out = dict(document)
    if isinstance(out.get("traits"), dict):
        out["traits"] = mask_traits(out["traits"], codes)
    if isinstance(out.get("identities"), list):
        out["identities"] = mask_identities(out["identities"])
    if isinstance(out.get("merges"), list):
        out["merges"] = [_mask_merge(m) for m in out["merges"]]
    if isinstance(out.get("identity_conflicts"), list):  # the identifiers not used are the person's too
        out["identity_conflicts"] = [{**c, "dropped": mask_identities(c["dropped"])}
                                     if isinstance(c, dict) and isinstance(c.get("dropped"), list) else c
                                     for c in out["identity_conflicts"]]
    if isinstance(out.get("events"), list):
        out["events"] = [mask_event(e, codes, open_codes=open_codes) for e in out["events"]]
    return out


def _mask_merge(merge: Any) -> Any:
    if not isinstance(merge, dict) or not isinstance(merge.get("identifiers"), list):
        return merge
    identifiers = [mask_identities([i])[0] if isinstance(i, dict) else i for i in merge["identifiers"]]
    return {**merge, "identifiers": identifiers}
