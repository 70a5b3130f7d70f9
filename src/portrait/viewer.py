"""What one caller may see: personal data masked for keys without ``pii:read``, reads of it audited for keys with
it, and the changes that would let a key without it learn masked values refused. The API and the console both show
customers' data through a :class:`Viewer`, so the rules live here, in the service layer, once."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields, is_dataclass
from typing import Any

from portrait import privacy
from portrait.conditions import describe, from_json, parse, to_json, to_text
from portrait.conditions.ast import Compare, Condition
from portrait.conditions.calculations import definition_text, parse_definition
from portrait.conditions.explain import compare_why
from portrait.errors import PortraitError
from portrait.keys import ApiKey
from portrait.segments import read_condition
from portrait.service import Portrait


class Viewer:
    """What one caller may see: masks personal data unless the key has ``pii:read`` (then audits the read)."""

    def __init__(self, portrait: Portrait, key: ApiKey) -> None:
        self.portrait = portrait
        self.key = key

    @property
    def sees_pii(self) -> bool:
        return self.key.can_read_pii

    def personal(self) -> set[str]:
        return self.portrait.attributes.personal()

    def personal_and_open(self) -> tuple[set[str], set[str]]:
        """The personal attributes' codes and the others' (see AttributeRegistry.personal_and_open)."""
        return self.portrait.attributes.personal_and_open()

    def profile(self, document: dict[str, Any], action: str) -> dict[str, Any]:
        if self.sees_pii:
            self.portrait.audit.record(self.key, action, target=document.get("profile_id"),
                                       profile_id=document.get("profile_id"))
            return document
        personal, open_codes = self.personal_and_open()
        return privacy.mask_profile(document, personal, open_codes=open_codes)

    def profile_events(self, page: dict[str, Any]) -> dict[str, Any]:
        """A page of one profile's events: masked, or audited as a read of personal data."""
        if self.sees_pii:
            self.portrait.audit.record(self.key, "read_events", target=page.get("profile_id"),
                                       profile_id=page.get("profile_id"))
            return page
        return {**page, "events": self.events(page["events"])}

    def events(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.sees_pii:
            return events
        personal, open_codes = self.personal_and_open()
        return [privacy.mask_event(e, personal, open_codes=open_codes) for e in events]

    def preview(self, found: dict[str, Any]) -> dict[str, Any]:
        """A segment preview's sampled profiles: their personal attributes masked, and a ``user_id`` that is an
        email or a phone. Shown to a key with ``pii:read`` unaudited, as the other feeds are (docs/security.md): the
        console's builder previews as the condition is typed, and a record per keystroke would bury the reads of
        one person's data."""
        if self.sees_pii:
            return found
        personal = self.personal()
        return {**found, "sample_profiles": [{**p, "user_id": privacy.mask_identifier(p["user_id"]),
                                              "traits": privacy.mask_traits(p["traits"], personal)}
                                             for p in found.get("sample_profiles", [])]}

    def members(self, page: dict[str, Any]) -> dict[str, Any]:
        """A page of segment members: a ``user_id`` that is an email or a phone masked."""
        return page if self.sees_pii else privacy.mask_members(page)

    def rejected(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self.sees_pii:
            return payload
        hidden = "(hidden: the message may hold personal data; a key with pii:read sees it)"
        return {**payload, "rejected": [{**r, "payload": hidden} for r in payload["rejected"]]}

    def data_quality(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self.sees_pii:
            return payload
        personal = self.personal()
        return {**payload, "issues": [{**i, "raw_value": privacy.mask(i.get("raw_value"))}
                                      if i.get("attribute") in personal else i for i in payload["issues"]]}

    def analytics(self, code: str, stats: dict[str, Any]) -> dict[str, Any]:
        """Attribute analytics: for a personal attribute the top values are masked, and so are the statistics that
        are one customer's value (the oldest and youngest birthday, a minimum, a maximum, quantiles, a mean, the
        histogram's edges); counts stay."""
        if self.sees_pii or code not in self.personal():
            return stats
        shown = {**stats, "top_values": [{**v, "value": privacy.mask(v["value"])} for v in stats["top_values"]]}
        for name in ("min", "max", "mean"):
            if shown.get(name) is not None:
                shown[name] = privacy.HIDDEN
        if shown.get("quantiles"):
            shown["quantiles"] = {name: privacy.HIDDEN for name in shown["quantiles"]}
        if shown.get("histogram"):
            shown["histogram"] = []
        if isinstance(shown.get("range"), dict):
            shown["range"] = {k: None if v is None else privacy.HIDDEN for k, v in shown["range"].items()}
        return shown

    def breakdown(self, found: dict[str, Any]) -> dict[str, Any]:
        """A segment breakdown: the values of a personal attribute masked, as in attribute analytics."""
        if self.sees_pii or found.get("attribute") not in self.personal():
            return found
        return {**found, "values": [{**v, "value": privacy.mask(v["value"])} for v in found["values"]]}

    def explanation(self, found: dict[str, Any]) -> dict[str, Any]:
        if self.sees_pii or "explanation" not in found:
            return found
        return {**found, "explanation": _mask_explanation(found["explanation"], *self.personal_and_open())}

    def segment(self, document: dict[str, Any]) -> dict[str, Any]:
        """A segment whose condition compares personal data (saved by a key with ``pii:read``: ``email =
        "ann@example.com"``) with those values masked in its JSON, text and English forms."""
        if self.sees_pii or not isinstance(document.get("condition"), dict):
            return document
        personal, open_codes = self.personal_and_open()
        tree = privacy.mask_condition(from_json(document["condition"]), personal, open_codes=open_codes)
        return {**document, "condition": to_json(tree), "text": to_text(tree), "english": describe(tree)}

    def segments(self, documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return documents if self.sees_pii else [self.segment(d) for d in documents]

    def attribute(self, document: dict[str, Any]) -> dict[str, Any]:
        """An attribute whose definition compares personal data (saved by a key with ``pii:read``:
        ``count("Signed Up", where email = "ann@example.com")``) with those values masked, as a segment's are."""
        return document if self.sees_pii else self._attribute(document, *self.personal_and_open())

    def attributes(self, documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.sees_pii:
            return documents
        personal, open_codes = self.personal_and_open()  # read once for the whole list
        return [self._attribute(d, personal, open_codes) for d in documents]

    @staticmethod
    def _attribute(document: dict[str, Any], personal: set[str], open_codes: set[str]) -> dict[str, Any]:
        shown = _shown_definition(document.get("definition"), personal, open_codes)
        return document if shown == document.get("definition") else {**document, "definition": shown}

    def without_shown_definition(self, code: str, changes: dict[str, Any]) -> dict[str, Any]:
        """The changes of attribute ``code`` to apply, without a definition that is the masked one this key was
        shown: the console's edit form (and a client that read the attribute) sends it back beside a new
        description, and a masked text must neither replace the real definition nor have the whole edit refused.
        A definition changed while still comparing those masked values is refused plainly (pii:read needed)."""
        definition = changes.get("definition")
        if self.sees_pii or not isinstance(definition, str):
            return changes
        current = self.portrait.attributes.get(code).get("definition")
        shown = _shown_definition(current, *self.personal_and_open())
        if shown == current:  # nothing masked: the definition is this key's to change as written
            return changes
        if _same_definition(definition, shown):
            return {k: v for k, v in changes.items() if k != "definition"}
        try:
            tested = self._personal_compared(parse_definition(definition))
        except PortraitError:
            return changes  # the registry says what is wrong with it
        if tested:
            self.require_pii(f"change the definition of {code}, which compares personal data ({', '.join(tested)}) "
                             "to values shown masked (its other fields can be changed without pii:read)")
        return changes

    def check_condition(self, raw: object) -> None:
        """A condition previewed by a key without ``pii:read`` may test a personal attribute (or an event's email or
        phone property) only for being set: its count would otherwise tell the values one by one (``email = "ann@..."
        and birthday before 1970-01-01``, ``email contains "an"``...). Unreadable conditions are left to the
        preview to refuse."""
        if self.sees_pii:
            return
        try:
            condition = read_condition(raw)
        except PortraitError:
            return
        self._check_compares(condition)

    def _personal_compared(self, tree: object) -> list[str]:
        """The personal data a condition or definition compares to values (``is set`` tells no value)."""
        personal, open_codes = self.personal_and_open()
        personal = personal | privacy.PERSONAL_IDENTITY_TYPES
        return sorted({node.field for node in _compares(tree)
                       if privacy.is_personal_field(node.field, personal, open_codes)
                       and node.op not in ("is set", "is not set")})

    def _check_compares(self, tree: object) -> None:
        tested = self._personal_compared(tree)
        if tested:
            self.require_pii(f"compare the values of personal data ({', '.join(tested)}) in a condition")

    def check_attribute_change(self, code: str, changes: dict[str, Any]) -> None:
        """Unflagging a personal attribute ends its masking: only a key that may read it unmasked may do that."""
        if not self.sees_pii and changes.get("is_personal_info") is False and code in self.personal():
            self.require_pii(f"mark {code} as not personal (its values would no longer be masked)")
        self.check_definition(code, changes)

    def check_definition(self, code: str, fields_: dict[str, Any]) -> None:
        """A calculated attribute is read by keys without ``pii:read`` unless it is personal: one that repeats
        personal data (``concat(first_name, " ", last_name)``) may be marked not personal only by a key that may read
        that data, and its ``where`` may compare personal values only then (per profile, it would tell them, as a
        preview's count would). Unreadable definitions are left to the registry to refuse."""
        definition = fields_.get("definition")
        if self.sees_pii or not isinstance(definition, str):
            return
        try:
            calculation = parse_definition(definition)
        except PortraitError:
            return
        self._check_compares(calculation)
        personal, open_codes = self.personal_and_open()
        copied = privacy.personal_copied(calculation, personal, open_codes=open_codes)
        if copied and fields_.get("is_personal_info") is False:
            self.require_pii(f"make {code} a copy of personal data ({', '.join(copied)}) not marked personal")

    def require_pii(self, doing: str) -> None:
        self.portrait.keys.require(self.key, "pii:read", doing)


def _shown_definition(definition: object, personal: set[str], open_codes: set[str]) -> object:
    """A calculated attribute's definition as a key without ``pii:read`` sees it (the stored text is canonical, so
    it comes back unchanged when nothing in it is masked)."""
    if not isinstance(definition, str):
        return definition
    try:
        return definition_text(privacy.mask_calculation(parse_definition(definition), personal,
                                                        open_codes=open_codes))
    except PortraitError:  # it was read when saved; if it no longer reads, none of it is shown
        return privacy.HIDDEN


def _same_definition(sent: str, shown: object) -> bool:
    """Whether a definition sent is the one shown, as written or once read (spacing, quoting)."""
    if sent.strip() == shown:
        return True
    try:
        return definition_text(parse_definition(sent)) == shown
    except PortraitError:
        return False


def _compares(node: object) -> Iterator[Compare]:
    """Every comparison in a condition tree, those inside events' ``where`` too."""
    if isinstance(node, Compare):
        yield node
    elif is_dataclass(node):
        for item in fields(node):
            yield from _compares(getattr(node, item.name))
    elif isinstance(node, tuple):
        for item in node:
            yield from _compares(item)


def _mask_explanation(node: dict[str, Any], personal: set[str], open_codes: set[str]) -> dict[str, Any]:
    out = dict(node)
    masked: Condition | None = None
    try:  # each part's text is the condition's text form, which reads back
        masked = privacy.mask_condition(parse(str(out.get("text", ""))), personal, open_codes=open_codes)
        out["text"] = to_text(masked)
    except PortraitError:
        out["text"] = privacy.HIDDEN
    if out.get("attribute") in personal:
        out["value"] = privacy.mask(out.get("value"))
        out["why"] = compare_why(masked, out["value"], out.get("unit")) if isinstance(masked, Compare) else \
            privacy.HIDDEN
    if "parts" in out:
        out["parts"] = [_mask_explanation(p, personal, open_codes) for p in out["parts"]]
    return out
