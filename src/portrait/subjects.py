"""Data-subject rights (GDPR, CCPA, LGPD): access and erasure requests, and suppression of erased people.

- **Access** assembles everything Portrait holds about the person: the profile (traits, identities, merges),
  consents, every event, segment memberships and their history, data-quality records, and what an erasure would
  take as hers beyond the profile (events no profile holds that name her, rejected messages holding her values).
- **Erase** removes the profile and everything derived from it -- across every profile merged into it: its raw
  events, identities, traits, consent records, memberships and history, merges, data-quality records, rejected
  messages holding its identifier values, events that no profile holds (set aside, no usable identifier) naming
  it, earlier access exports; its identifier values in saved conditions become "(erased)". DuckDB leaves the
  bytes of deleted rows in freed blocks, so the database file is then rewritten (when Portrait next closes it --
  a server stop -- or opens it): afterwards no byte of the person is left on disk. The person's identifiers are
  kept only as SHA-256 hashes, so later events carrying them are dropped and counted (``events_suppressed``)
  instead of re-creating the person.
- Requests are queued with ids and statuses (pending, running, done, failed), run by a background worker in the
  server (or at once from the CLI), and survive restarts (a request cut off runs again; both kinds are idempotent).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import phonenumbers

from portrait.attributes import code_for
from portrait.background import Worker
from portrait.conditions import from_json, to_json
from portrait.conditions.calculations import definition_text, parse_definition
from portrait.conditions.erasing import Eraser
from portrait.errors import BadRequest, NotFound
from portrait.identity import identity_hash
from portrait.model import Identifier
from portrait.spec import event_document, iso_time, utc_now
from portrait.sql import reads
from portrait.sql import rebuild as rebuild_q
from portrait.sql import subjects as q
from portrait.store import Session

log = logging.getLogger(__name__)
TYPES = ("access", "erase")


@dataclass(frozen=True)
class Hooks:
    """What the requests need from the rest of the service."""

    resolve: Callable[[str], str]  # TYPE:VALUE -> profile id (NotFound if none)
    normalize_key: Callable[[str], str]  # TYPE:VALUE -> the normalized identity key (for the hash)
    normalize: Callable[[str, str], Identifier | None]  # (type, raw value) -> the identifier, as the processor reads it
    profile: Callable[[str], dict[str, Any]]  # profile id -> the profile document
    consents: Callable[[str], dict[str, Any]]
    after_erase: Callable[[], None]  # e.g. ask for the database file to be rewritten
    recount: Callable[[], Any]  # compute calculated attributes and segments again (after a condition was rewritten)
    pause: Callable[[], Any]  # a context manager: processing paused while erasing
    catch_up: Callable[[], Any]  # apply every event received so far (called while paused)
    suppressing: Callable[[], Any]  # a context manager: no request is being read while it is held


class PrivacyRequests:
    def __init__(self, session: Callable[[], Session], hooks: Hooks) -> None:
        self._session = session
        self._hooks = hooks
        self._lock = threading.Lock()
        self.suppressed: frozenset[str] = self._load_suppressed()

    def _load_suppressed(self) -> frozenset[str]:
        return frozenset(row[0] for row in self._session().execute(q.ALL_SUPPRESSED))

    # -- the queue -----------------------------------------------------------------------------------------------
    def create(self, fields: dict[str, Any], requested_by: str) -> dict[str, Any]:
        unknown = set(fields) - {"type", "identity"}
        if unknown:
            raise BadRequest(f"unknown request fields {', '.join(sorted(unknown))}", code="invalid_request")
        kind, identity = fields.get("type"), fields.get("identity")
        if kind not in TYPES:
            raise BadRequest(f"type is access or erase, not {kind!r}", code="invalid_request", field="type")
        if not isinstance(identity, str) or ":" not in identity:
            raise BadRequest("identity is TYPE:VALUE, e.g. email:ann@example.com", code="invalid_request",
                             field="identity")
        request_id = f"pr_{uuid.uuid4().hex[:16]}"
        digest = identity_hash(self._hooks.normalize_key(identity))
        self._session().execute(q.INSERT_REQUEST, [request_id, kind, identity, digest, requested_by, utc_now()])
        return self.get(request_id)

    def get(self, request_id: str, *, with_result: bool = True) -> dict[str, Any]:
        rows = self._session().execute(q.GET_REQUEST, [request_id])
        if not rows:
            raise NotFound(f"no privacy request has the id {request_id!r}")
        return _document(rows[0], with_result)

    def all(self, limit: int = 100, before: str | None = None) -> list[dict[str, Any]]:
        """Requests newest first; ``before`` (a request's id) gives the page after that request."""
        if before is None:
            rows = self._session().execute(q.LIST_REQUESTS, [limit])
        else:
            if not self._session().execute(q.GET_REQUEST, [before]):  # not an empty page that ends the listing
                raise BadRequest(f"before {before!r} names no privacy request: pass the `next` of the previous page",
                                 code="invalid_cursor")
            rows = self._session().execute(q.LIST_REQUESTS_BEFORE, [before, before, before, limit])
        return [_document(row, False) for row in rows]

    def resume(self) -> None:
        self._session().execute(q.RESUME)

    def run_pending(self) -> int:
        done = 0
        for (request_id,) in self._session().execute(q.PENDING):
            self.run(request_id)
            done += 1
        return done

    def run(self, request_id: str) -> dict[str, Any]:
        with self._lock:
            request = self.get(request_id)
            if request["status"] in ("done", "failed"):
                return request
            session = self._session()
            session.execute(q.START, [utc_now(), request_id])
            recount = False  # an erasure that rewrote a saved condition is recounted once recorded (see _recount)
            try:
                result = self._access(request) if request["type"] == "access" else self._erase(request)
            except NotFound as exc:
                session.execute(q.FINISH, ["failed", utc_now(), None, exc.message, request_id])
            except Exception as exc:  # recorded on the request; the worker goes on with the next
                log.exception("privacy request %s failed", request_id)
                session.execute(q.FINISH, ["failed", utc_now(), None, f"{type(exc).__name__}: {exc}", request_id])
            else:
                session.execute(q.FINISH, ["done", utc_now(), orjson.dumps(result).decode(), None, request_id])
                recount = bool(result.get("conditions_rewritten"))
        if recount:
            self._recount()
        return self.get(request_id)

    def _recount(self) -> None:
        """What follows a rewritten condition follows now: a value pasted from her identifier (``concat``) is gone
        before the file is rewritten, and no one stays a member of a segment that no longer selects them.

        Run once the erasure is committed and recorded ``done``, outside the processing pause and the request lock:
        the recount takes the segments' recount lock and then pauses processing, as the segment thread does, so
        taking it inside the pause could deadlock with that thread; and on a big store it takes as long as a full
        recount, which the request's status need not wait for. If it fails, the erasure stands (her profile is
        gone, her identifiers stay suppressed): it is logged, and the periodic full recount does it later."""
        try:
            self._hooks.recount()
        except Exception:
            log.exception("recounting after an erasure rewrote saved conditions failed; the periodic recount "
                          "will do it")

    # -- access --------------------------------------------------------------------------------------------------
    def _access(self, request: dict[str, Any]) -> dict[str, Any]:
        profile_id = self._hooks.resolve(request["identity"])
        session = self._session()
        events = [event_document(r) for r in session.execute(q.ALL_EVENTS, [profile_id])]
        memberships = [{"segment": r[0], "change": r[1], "at": iso_time(r[2])}
                       for r in session.execute(q.MEMBERSHIPS, [profile_id, profile_id])]
        quality = [{"attribute": r[0], "raw_value": r[1], "reason": r[2], "source": r[3], "detected_at": iso_time(r[4])}
                   for r in session.execute(q.QUALITY, [profile_id, profile_id])]
        consents = self._hooks.consents(f"profile_id:{profile_id}")
        # What an erasure would take as hers beyond the profile: events no profile holds, rejected messages.
        identities = session.execute(q.IDENTITY_KEYS, [profile_id])
        session.execute(q.SUBJECT_SEQS)
        _find_unlinked(session, identities)
        unlinked = [event_document(r) for r in session.execute(q.UNLINKED_EVENTS)]
        rejected: dict[int, dict[str, Any]] = {}
        searches: list[tuple[Any, list[str]]] = [(q.REJECTED_SET_ASIDE, [])]
        for _key, kind, value in identities:
            text, digits = _needles(kind, str(value))
            searches += [(q.REJECTED_HOLDING, [text])] if text else []
            searches += [(q.REJECTED_HOLDING_PHONE, [digits])] if digits else []
        for statement, params in searches:
            for row in session.execute(statement, params):
                rejected[row[0]] = {k: (iso_time(v) if isinstance(v, datetime) else v)
                                    for k, v in zip(reads.REJECTED_COLUMNS, row, strict=True)}
        return {"profile": self._hooks.profile(profile_id), "consents": consents["consents"],
                "consent_history": consents["history"], "events": events, "segment_history": memberships,
                "data_quality": quality, "events_without_profile": unlinked,
                "rejected": [rejected[key] for key in sorted(rejected)], "generated_at": iso_time(utc_now())}

    # -- erasure -------------------------------------------------------------------------------------------------
    def _erase(self, request: dict[str, Any]) -> dict[str, Any]:
        identity = request["identity"]
        if identity is None:  # already erased and forgotten: a repeat has nothing left to do
            return {"erased": False, "reason": "already done"}
        with self._hooks.pause():
            # Events about the person that arrived before the request are applied first, so they are erased with
            # the profile instead of bringing it back once processing resumes.
            self._hooks.catch_up()
            with self._hooks.suppressing():  # from here on ingestion drops the person's messages...
                self._suppress(self._keys_of(identity), request["id"])
            try:
                self._hooks.catch_up()  # ...and those read before are committed and applied, to be erased too
                try:
                    profile_id = self._hooks.resolve(identity)
                except NotFound:
                    kind, _, value = self._hooks.normalize_key(identity).partition(":")
                    session = self._session()
                    with session.transaction():
                        rewritten = self._rewrite_conditions(session, [(f"{kind}:{value}", kind, value)])
                    self._forget(request)
                    if rewritten:
                        self._hooks.after_erase()  # the file is rewritten: the old conditions' bytes go too
                    return {"erased": False, "reason": "no profile had this identity; it is suppressed from now on",
                            "conditions_rewritten": rewritten}
                result = self._erase_profile(profile_id, request)
            except Exception:
                self._unsuppress(request["id"])  # a failed erasure leaves nothing behind; it can be asked again
                raise
        self._forget(request)
        self._hooks.after_erase()  # the file is rewritten when the database is next closed or opened
        return result

    def _keys_of(self, identity: str) -> list[str]:
        """The normalized keys of every identifier of the profile ``identity`` names (its own if none does)."""
        try:
            profile_id = self._hooks.resolve(identity)
        except NotFound:
            return [self._hooks.normalize_key(identity)]
        return [str(key) for key, _kind, _value in self._session().execute(q.IDENTITY_KEYS, [profile_id])]

    def _erase_profile(self, profile_id: str, request: dict[str, Any]) -> dict[str, Any]:
        """Erase one profile and those merged into it; suppress all their identifiers."""
        session = self._session()
        with session.transaction():
            merged = [row[0] for row in session.execute(q.MERGED_IDS, [profile_id])]
            identities = session.execute(q.IDENTITY_KEYS, [profile_id])
            for statement in q.ERASE_SCOPE[:1]:
                session.execute(statement)
            session.execute(q.ERASE_SCOPE[1], [profile_id])
            for erased_id in (profile_id, *merged):
                session.execute(q.ADD_ERASE_PROFILE, [erased_id])
            _find_unlinked(session, identities)
            events = int(session.execute(q.COUNT_SCOPE)[0][0])
            for statement in q.ERASE:
                session.execute(statement)
            if session.execute(rebuild_q.KEEPING_CALCULATED)[0][0]:  # what a rebuild cut short keeps to put back
                session.execute(rebuild_q.ERASE_KEPT)
            for _key, kind, value in identities:
                text, digits = _needles(kind, str(value))
                if text:
                    session.execute(q.ERASE_REJECTED, [text])
                if digits:
                    session.execute(q.ERASE_REJECTED_PHONE, [digits])
            for key, _kind, _value in identities:
                session.execute(q.SUPPRESS, [identity_hash(str(key)), request["id"], utc_now()])
            keys = [str(key) for key, _kind, _value in identities]
            named = [*keys, *(self._hooks.normalize_key(f"profile_id:{erased}") for erased in (profile_id, *merged))]
            session.execute(q.DROP_EXPORTS, [[request["identity_hash"], *map(identity_hash, named)]])
            session.execute(q.DROP_STATIC_IDENTITIES, [keys])
            for statement in q.DROP_NAMED_IDENTIFIERS:
                session.execute(statement, [keys, keys])
            session.execute(q.DROP_EMPTY_CONFLICTS)
            rewritten = self._rewrite_conditions(session, identities)
        self.suppressed = self._load_suppressed()
        return {"erased": True, "profile_id": profile_id, "merged_profiles": len(merged),
                "identities_suppressed": len(identities), "events": events, "conditions_rewritten": rewritten}

    def _rewrite_conditions(self, session: Session, identities: Sequence[tuple[Any, ...]]) -> int:
        """Replace her identifier values in saved segment conditions and calculated attributes' definitions by
        "(erased)" (conditions/erasing.py says why the segments keep their meaning); returns how many segments and
        attributes changed. A value names her if it is one of her identifiers as stored, or as the processor would
        store it: an email in other letters, a phone number however it is written ("+48 601 234 567"); an identifier
        of digits only (user id 42) only where it is compared with its own kind (``loyalty_card = "1001"``). Only
        identifier values are known to be hers: her first name in ``first_name = "Ann"`` is other people's too, and
        stays."""
        mine = [(str(key), str(kind), str(value)) for key, kind, value in identities]

        def naming(text: str, field: str | None) -> bool:
            return _names_her(text, field, {kind for key, kind, value in mine if text == value or (
                (found := self._hooks.normalize(kind, text)) is not None and found.key == key)})

        return self._rewrite_named(session, naming)

    def _rewrite_hashed(self, session: Session, hashes: set[str]) -> int:
        """As :meth:`_rewrite_conditions`, for identifiers known only by their hashes (erased since a backup was
        made): a value names one if, read as an identifier of a type this database has, its key hashes to one."""
        kinds = sorted({str(row[0]) for row in session.execute(q.IDENTITY_TYPES)} | {"email", "phone", "user_id",
                                                                                      "anonymous_id"})

        def naming(text: str, field: str | None) -> bool:
            return _names_her(text, field, {kind for kind in kinds if (found := self._hooks.normalize(kind, text))
                                            is not None and identity_hash(found.key) in hashes})

        return self._rewrite_named(session, naming)

    def _rewrite_named(self, session: Session, naming: Callable[[str, str | None], bool]) -> int:
        now, rewritten = utc_now(), 0
        for segment_id, stored in session.execute(q.SAVED_CONDITIONS):
            eraser = Eraser(naming)
            condition = eraser.condition(from_json(orjson.loads(stored)))
            if eraser.replaced and condition is not None:
                session.execute(q.REWRITE_CONDITION, [orjson.dumps(to_json(condition)).decode(), now, segment_id])
                rewritten += 1
        for code, stored in session.execute(q.SAVED_DEFINITIONS):
            eraser = Eraser(naming)
            calculation = eraser.calculation(parse_definition(str(stored)))
            if eraser.replaced:
                session.execute(q.REWRITE_DEFINITION, [definition_text(calculation), now, code])
                rewritten += 1
        return rewritten

    def suppressed_rows(self) -> list[tuple[Any, ...]]:
        """Every erased identifier, hashed, with its request and time (what a restore carries over)."""
        return self._session().execute(q.SUPPRESSED_ROWS)

    def carry_erasures(self, rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        """After a restore: suppress the identifiers erased since the backup was taken (``rows`` from the database
        it replaces), then erase again every profile of the backup holding one, so a restore never brings back a
        person who asked to be forgotten. Returns the erasure requests made (by "restore")."""
        missing = [row for row in rows if row[0] not in self.suppressed]
        if not missing:
            return []
        # The backup's events not yet applied (received just before it was made) are applied first, as an erasure
        # does: they join her profile and go with it. Applied after her identifiers were suppressed, they joined
        # no profile and stayed in the log, her email and traits with them.
        self._hooks.catch_up()
        session = self._session()
        for key_hash, request_id, at in missing:
            session.execute(q.SUPPRESS, [key_hash, request_id, at])
        self.suppressed = self._load_suppressed()
        holding = [row[0] for row in session.execute(q.PROFILES_HOLDING, [[row[0] for row in missing]])]
        # Conditions naming an identifier erased since: rewritten then, they are back as the backup had them (the
        # profiles erased again below rewrite those naming their own identifiers; here, those no profile held).
        with session.transaction():
            rewritten = self._rewrite_hashed(session, {str(row[0]) for row in missing})
        if rewritten:
            self._hooks.after_erase()
        done = []
        for profile_id in holding:  # by profile id: the request keeps none of her identifiers, even for a moment
            request = self.create({"type": "erase", "identity": f"profile_id:{profile_id}"}, "restore")
            done.append(self.run(request["id"]))
        if rewritten:  # last, and never in the way of the erasures above (see _recount)
            self._recount()
        return done

    def expired(self) -> int:
        """How many raw events retention has deleted so far."""
        return int(self._session().execute(q.COUNT_EXPIRED)[0][0])

    def expire(self, days: int, now: datetime | None = None) -> int:
        """Delete raw events older than ``days`` (retention), and rejected messages received before then; returns
        how many raw events went."""
        if days <= 0:
            return 0
        cutoff = (now or utc_now()) - timedelta(days=days)
        session = self._session()
        with self._hooks.pause(), session.transaction():
            count = int(session.execute(q.EXPIRED, [cutoff])[0][0])
            if count:
                for statement in q.EXPIRE:
                    session.execute(statement, [cutoff])
            rejected = int(session.execute(q.EXPIRE_REJECTED, [cutoff])[0][0])
        if count or rejected:
            log.info("retention: deleted %d raw events and %d rejected messages older than %d days", count, rejected,
                     days)
        return count

    def _suppress(self, keys: list[str], request_id: str) -> None:
        for key in keys:
            self._session().execute(q.SUPPRESS, [identity_hash(key), request_id, utc_now()])
        self.suppressed = self._load_suppressed()

    def _unsuppress(self, request_id: str) -> None:
        self._session().execute(q.UNSUPPRESS, [request_id])
        self.suppressed = self._load_suppressed()

    def _forget(self, request: dict[str, Any]) -> None:
        self._session().execute(q.FORGET_IDENTITY, [request["id"]])


def _names_her(text: str, field: str | None, kinds: set[str]) -> bool:
    """Whether ``text``, equal to her identifiers of ``kinds``, names her where compared with ``field``. A number as
    text ("42": a user id, and a shop's, a zip's, an order's) names her only where it is compared with that kind of
    identifier: shop = "42" selected other customers, and went on doing so."""
    return bool(kinds) and (not text.strip().isdigit() or bool(kinds & {"email", "phone"})
                            or (field is not None and code_for(field) in kinds))


def _find_unlinked(session: Session, identities: list[tuple[Any, ...]]) -> None:
    """Add to ``erase_seqs`` the events no profile holds (set aside, no usable identifier) that name the person."""
    session.execute(q.UNLINKED_SCOPE)
    for _key, kind, value in identities:
        session.execute(q.ADD_UNLINKED_NAMING, [str(value)])
        text, digits = _needles(kind, str(value))
        if text:
            session.execute(q.ADD_UNLINKED_HOLDING, [text])
        if digits:
            session.execute(q.ADD_UNLINKED_HOLDING_PHONE, [digits])
    session.execute(q.DROP_UNLINKED_SCOPE)


def _needles(kind: str, value: str) -> tuple[str | None, str | None]:
    """What marks a message or an unlinked event as naming the person: the identifier's value if it has 5+
    characters (a short one, user id "42", would match unrelated ones), and a phone number's national digits if
    there are 6+ of them (it may be written "+48 601 234 567")."""
    digits = _national_digits(value) if kind == "phone" else ""
    return (value if len(value) >= 5 else None), (digits if len(digits) >= 6 else None)


def _national_digits(phone: str) -> str:
    """The national digits of a stored (E.164) phone number: 601234567 for +48601234567; '' if it is not one."""
    try:
        return str(phonenumbers.parse(phone, None).national_number)
    except phonenumbers.NumberParseException:
        return ""


def _document(row: tuple[Any, ...], with_result: bool) -> dict[str, Any]:
    record = dict(zip(q.REQUEST_COLUMNS, row, strict=True))
    for key in ("created_at", "started_at", "finished_at"):
        record[key] = iso_time(record[key])
    result = record.pop("result")
    if with_result:
        record["result"] = orjson.loads(result) if result else None
    return record


class PrivacyWorker(Worker):
    """Runs pending requests in the background (in the server), checking every ``poll`` seconds, and applies
    retention hourly."""

    def __init__(self, requests: PrivacyRequests, poll: float = 1.0, retention_days: int = 0) -> None:
        super().__init__("portrait-privacy", interval=poll)
        self._requests = requests
        self._retention_days = retention_days
        self._last_expiry = 0.0

    def start(self) -> None:
        self._requests.resume()
        super().start()

    def step(self) -> None:
        self._requests.run_pending()
        if self._retention_days and time.monotonic() - self._last_expiry >= 3600:
            self._requests.expire(self._retention_days)
            self._last_expiry = time.monotonic()
