"""Use cases: what the HTTP API, the CLI and (later) the console all call. No HTTP or terminal concerns here."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from portrait import analytics, sql
from portrait.audit import AuditLog
from portrait.background import SharedExclusiveLock
from portrait.backups import Backups, BackupWorker, backup_folder, database_name
from portrait.config import Settings
from portrait.connectors import Connector, connect, scrub
from portrait.errors import (
    BadRequest,
    Conflict,
    DatabaseDamaged,
    DatabaseInUse,
    Interrupted,
    NotFound,
    PortraitError,
    SyncInterrupted,
)
from portrait.event_names import closest_name
from portrait.exports import FORMATS as EXPORT_FORMATS
from portrait.exports import Written, choose_attributes, export_profiles
from portrait.files import DatesAsText, Note, ReadProgress, TextFallback, detect_format, read_messages
from portrait.identity import PROFILE_ID_TYPE, IdentityRules, identity_hash
from portrait.import_records import ImportRecords
from portrait.keys import ApiKey, KeyRing, RateLimiter
from portrait.mapping import RowMapping
from portrait.model import IngestResult, Rejection
from portrait.pipeline import Processor, ProcessorThread
from portrait.rebuild import rebuild_profiles, was_interrupted
from portrait.registry import AttributeRegistry
from portrait.segments import Segments, SegmentThread
from portrait.sources import (
    INTERRUPTED,
    Source,
    SourceRegistry,
    SourceScheduler,
    SyncReport,
    probe_columns,
    read_chunks,
    source_from_fields,
)
from portrait.spec import (
    EventColumns,
    Limits,
    MessageReader,
    ParsedRequest,
    RefusedBody,
    decode_body,
    event_document,
    iso_time,
    kept_refusal,
    key_from_basic_auth,
    parse_request,
    raw_preview,
    readable_head,
    utc_now,
)
from portrait.sql import ingest as ingest_sql
from portrait.sql import reads
from portrait.store import Session, Store, open_store
from portrait.store.duckdb import (
    PREVIOUS_KEY_VARIABLE,
    compact_file,
    compact_if_marked,
    compaction_marker,
    copy_encrypted,
    damage_found,
    damage_reported_by_caller,
    mark_for_compaction,
)
from portrait.subjects import Hooks, PrivacyRequests, PrivacyWorker
from portrait.writer import DedupPolicy, EventWriter

AUDIENCE_ROUNDS = 10  # most rounds of segment changes -> audience events -> segment changes in process_pending


@dataclass
class ImportReport:
    """What an import did (or, with a dry run, would do)."""

    rows: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    by_code: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    first_rejected: list[dict[str, Any]] = field(default_factory=list)  # up to 100, with row numbers
    notes: list[str] = field(default_factory=list)  # what the reader found worth saying (a column read as text)
    # The CSV columns those notes are about, as data: the console offers to declare each one's type
    read_as_text: list[dict[str, Any]] = field(default_factory=list)
    # The CSV columns of dates not in ISO-8601 those notes are about, as data: the console offers each format
    dates_as_text: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ImportChunk:
    """What importing one chunk of a file did: rows read, the ingestion result, rejected rows by number."""

    rows: int
    result: IngestResult
    rejected: list[tuple[int, Rejection]]


@dataclass(frozen=True)
class _Read:
    """A request's messages as read: the events to store, the rejected ones, and how many named an erased person."""

    events: EventColumns
    rejections: list[Rejection]
    suppressed: int


@dataclass(frozen=True)
class IncomingRequest:
    """An ingestion request as the HTTP layer hands it over."""

    endpoint: str
    body: bytes
    content_encoding: str | None = None
    authorization: str | None = None
    query_key: str | None = None
    ip: str | None = None
    # False when the HTTP layer stopped reading a body past the largest one that can be accepted (``body`` holds
    # its start): refused as too large without holding the rest in memory.
    complete: bool = True


class _ThreadSession:
    """Holds one thread's read session in a thread-local; when the thread ends, Python drops its thread-local values
    and this closes the session. The HTTP server's worker threads come and go (anyio lets an idle one exit after
    10 s, and a burst of requests starts new ones): without this, each one's cursor stayed open in
    ``Portrait._sessions`` until the server stopped, a list growing with every burst for months."""

    def __init__(self, session: Session, forget: Callable[[Session], None]) -> None:
        self.session = session
        self._forget = forget

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit there may be nothing left to close it with
            self._forget(self.session)


class Portrait:
    """The application: one store, one writer thread, one processor (thread or on demand)."""

    def __init__(self, settings: Settings, store: Store | None = None, *, background: bool = True) -> None:
        self.settings = settings
        if store is None:
            compact_if_marked(settings.db_path, settings.encryption_key)  # an erasure before a crash is rewritten too
        self.store = store or open_store(settings.db_path, settings.encryption_key,
                                         checkpoint_wal_mb=settings.checkpoint_wal_mb,
                                         memory_limit_mb=settings.memory_limit_mb)
        self.rules = IdentityRules.from_settings(settings)
        self.limits = Limits(settings.max_message_bytes, settings.max_batch_bytes, settings.max_batch_items,
                             settings.max_json_depth, settings.max_object_keys, settings.max_string_length)
        self.rate_limiter = RateLimiter(settings.rate_limit)
        self._local = threading.local()
        self._audience_lock = threading.Lock()  # one sender of the segments' outbox at a time
        # Reading a request and queueing its events is shared; changing the suppression list is exclusive, so once
        # an erasure has suppressed someone, every request read before is already queued for the writer (flush).
        self._reading = SharedExclusiveLock()
        self._sessions: list[Session] = []
        self._sessions_lock = threading.Lock()
        self.keys = KeyRing(lambda: self._reads)
        self.audit = AuditLog(lambda: self._reads)
        self.attributes = AttributeRegistry(lambda: self._reads)
        self.attributes.seed()
        self.keys.register({"write": settings.write_key, "admin": settings.admin_key})
        self.processor = Processor(self.store, self.rules, batch_size=settings.processor_batch_size,
                                   max_batch_size=settings.processor_max_batch_size,
                                   unknown_traits=settings.unknown_traits)
        self.segments = Segments(lambda: self._reads, self.attributes, self.rules.normalize, self._processing_paused)
        self._segment_thread = (SegmentThread(self.segments, self._send_audience_events,
                                              settings.segment_recount_seconds) if background else None)
        self._processor_thread = (ProcessorThread(self.processor, self.store, self._segment_thread.notify,
                                                  interval=settings.processor_interval_ms / 1000)
                                  if self._segment_thread else None)
        notify = self._processor_thread.notify if self._processor_thread else (lambda: None)
        self.writer = EventWriter(self.store, max_events=settings.commit_max_events, on_commit=notify,
                                  dedup=DedupPolicy(timedelta(hours=settings.dedup_window_hours),
                                                    settings.dedup_max_ids))
        self.privacy = PrivacyRequests(lambda: self._reads, Hooks(
            resolve=self.resolve_profile_id, normalize_key=self._identity_key, normalize=self.rules.normalize,
            profile=lambda profile_id: self.profile(f"profile_id:{profile_id}"), consents=self.consents,
            after_erase=lambda: mark_for_compaction(self.store.path), recount=self._recount_after_erasure,
            pause=self._processing_paused, catch_up=self._catch_up, suppressing=self._reading.exclusive))
        self._privacy_worker: PrivacyWorker | None = None
        self.backups = Backups(self.store, backup_folder(settings), settings.backup_keep, database_name(settings))
        self._backup_worker: BackupWorker | None = None
        self.sources = SourceRegistry(lambda: self._reads)
        self.import_records = ImportRecords(lambda: self._reads)  # the server's import jobs (portrait.import_jobs)
        self._syncing: set[str] = set()
        self._syncing_lock = threading.Lock()
        self._closing = threading.Event()  # set by close(): a running sync stops after the chunk it is committing
        self._scheduler: SourceScheduler | None = None
        if self._processor_thread and self._segment_thread:  # last: they use everything above
            self._processor_thread.start()
            self._segment_thread.start()

    def generate_missing_keys(self, announce: Callable[[dict[str, str]], None]) -> dict[str, str]:
        """A write and an admin key for a database that has none of that kind (a first start), passed to
        ``announce`` to be shown before they are stored (see KeyRing.generate_missing)."""
        return self.keys.generate_missing(announce)

    def _catch_up(self) -> None:
        """Commit what has been read and apply everything the log then holds (an erasure, processing paused)."""
        self.writer.flush()
        self.processor.catch_up()

    def _processing_paused(self) -> contextlib.AbstractContextManager[None]:
        thread = getattr(self, "_processor_thread", None)
        return thread.paused() if thread is not None else contextlib.nullcontext()

    def start_scheduler(self) -> None:
        """Run the server's background work: scheduled SQL-source syncs, privacy requests and retention (one-off CLI
        commands do not)."""
        self.sources.mark_interrupted()
        self._scheduler = SourceScheduler(lambda: self.sources.due(utc_now()), self.sync_source,
                                          self.settings.source_poll_seconds)
        self._scheduler.start()
        self._privacy_worker = PrivacyWorker(self.privacy, retention_days=self.settings.retention_days)
        self._privacy_worker.start()
        if self.settings.backup_hours:
            self._backup_worker = BackupWorker(self.backups, self.settings.backup_hours)
            self._backup_worker.start()

    def stop_long_work(self) -> None:
        """The server is stopping: a running sync or rebuild ends after the chunk or batch it is committing (it
        resumes, or can be run again, safely), rather than holding the stop until it is done."""
        self._closing.set()

    def close(self) -> None:
        self.stop_long_work()
        if self._scheduler:
            self._scheduler.stop()
        if self._privacy_worker:
            self._privacy_worker.stop()
        if self._backup_worker:
            self._backup_worker.stop()
        self.backups.wait()  # one started from the API or the console: its copy reads the store closed below
        if self._segment_thread:
            self._segment_thread.stop()
        self.writer.close()
        if self._processor_thread:
            self._processor_thread.stop()
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        self.store.close()
        compact_if_marked(self.store.path, self.settings.encryption_key)  # after an erasure: no byte of them on disk

    @property
    def _reads(self) -> Session:
        """This thread's read session (DuckDB cursors must not be shared between threads), closed and forgotten
        when the thread ends (see :class:`_ThreadSession`)."""
        held: _ThreadSession | None = getattr(self._local, "held", None)
        if held is None:
            held = _ThreadSession(self.store.session(), self._forget_session)
            self._local.held = held
            with self._sessions_lock:
                self._sessions.append(held.session)
        return held.session

    def _forget_session(self, session: Session) -> None:
        with self._sessions_lock:
            if session not in self._sessions:  # close() closed it already
                return
            self._sessions.remove(session)
        session.close()

    # -- ingestion ---------------------------------------------------------------------------------------------
    def ingest(self, request: IncomingRequest) -> Future[IngestResult]:
        """Authenticate, read and validate a request; the future resolves once its events are committed.

        Raises Unauthorized (no/unknown key), BadRequest (unreadable body) or RateLimited. An unreadable body from
        an authenticated sender (key in header or query, or in a body refused as a whole) is kept in the rejected
        events, so the user can see it.
        """
        header_key = key_from_basic_auth(request.authorization) or request.query_key
        # A key sent beside the body is checked before the body is read: an unknown one costs no decompressing or
        # parsing (a body's own writeKey can only be checked after).
        header_source = self.keys.check(header_key, "write") if header_key else None
        received_at = utc_now()
        body: bytes | None = None  # decompressed: what is kept of an unreadable body is the text, not the gzip
        try:
            if not request.complete:
                raise BadRequest(f"request body is larger than the limit of {self.limits.max_batch_bytes} bytes "
                                 f"(reading stopped after {len(request.body)})", code="body_too_large")
            body = decode_body(request.body, request.content_encoding, self.limits)
            parsed = parse_request(body, request.endpoint, self.limits)
        except BadRequest as exc:
            sender_key = header_key or (exc.write_key if isinstance(exc, RefusedBody) else None)
            if sender_key is None:
                raise
            source = header_source or self.keys.check(sender_key, "write")
            self.rate_limiter.take(source.id, request.ip)
            kept, more = readable_head(request.body, request.content_encoding) if body is None else (body, False)
            return self._keep_unreadable(kept, exc, source, received_at, sender_key, more)
        source = header_source or self.keys.check(parsed.write_key, "write")
        self.rate_limiter.take(source.id, request.ip)
        return self._submit(parsed, source.name, received_at, request.ip, len(body))

    def ingest_messages(self, messages: list[Any], source: str = "default") -> IngestResult:
        """In-process ingestion of Segment-format messages (demo, imports): the same reading rules and writer."""
        unknown_size = self.limits.max_message_bytes + 1  # no body to measure: check every message's size
        return self._submit(ParsedRequest(messages), source, utc_now(), None, unknown_size).result()

    def _submit(self, parsed: ParsedRequest, source: str, received_at: datetime, ip: str | None,
                body_bytes: int) -> Future[IngestResult]:
        with self._reading.shared():  # read and queued under one suppression list (see _reading)
            read = self._read(parsed, source, received_at, ip, body_bytes)
            return self.writer.submit(read.events, read.rejections, suppressed=read.suppressed)

    def _read(self, parsed: ParsedRequest, source: str, received_at: datetime, ip: str | None,
              body_bytes: int, *, any_identifier: bool = False) -> _Read:
        reader = MessageReader(received_at=received_at, source=source, ip=ip, request=parsed, limits=self.limits,
                               body_bytes=body_bytes, identity_traits=self.rules.identity_traits,
                               any_identifier=any_identifier,
                               suppressed=self._is_suppressed if self.privacy.suppressed else None)
        events, rejections = reader.read_all()
        return _Read(events, rejections, reader.suppressed_count)

    def _is_suppressed(self, identifiers: list[tuple[str, str]]) -> bool:
        suppressed = self.privacy.suppressed
        for kind, value in identifiers:
            found = self.rules.normalize(kind, value)
            if found is not None and identity_hash(found.key) in suppressed:
                return True
        return False

    def _identity_key(self, reference: str) -> str:
        kind, _, value = reference.partition(":")
        found = self.rules.normalize(kind.strip().lower(), value)
        stored = self._stored_key(reference)
        if found is None and self._reads.execute(reads.PROFILE_BY_IDENTITY, [stored]):
            return stored  # stored under an earlier rule (see _stored_key)
        if found is None:
            raise BadRequest(f"{reference!r} is not an identity Portrait can match (empty, blocked or unreadable)",
                             code="invalid_identity")
        return found.key

    # -- data-subject requests -----------------------------------------------------------------------------------
    @property
    def runs_privacy_requests(self) -> bool:
        """Whether a worker runs queued privacy requests (a server; one-off CLI commands run them themselves)."""
        return self._privacy_worker is not None

    def privacy_request(self, fields: dict[str, Any], requested_by: str, *, run_now: bool = False
                        ) -> dict[str, Any]:
        """Queue an access or erase request (the server's worker runs it; ``run_now`` runs it here)."""
        created = self.privacy.create(fields, requested_by)
        if run_now:
            return self.privacy.run(created["id"])
        if self._privacy_worker:
            self._privacy_worker.notify()
        return created

    def _keep_unreadable(self, raw: bytes, exc: BadRequest, source: ApiKey, received_at: datetime, secret: str,
                         more: bool = False) -> Future[IngestResult]:
        """Store what was sent (``more``: only its start), then fail with the 400 (the answer comes only once the
        record is durable)."""
        payload = (kept_refusal(exc, secret) if isinstance(exc, RefusedBody) and exc.document is not None
                   else raw_preview(raw, secret, more=more))
        rejection = Rejection(code=exc.code, reason=exc.message, payload=payload, received_at=received_at,
                              source=source.name)
        answer: Future[IngestResult] = Future()

        def stored(done: Future[IngestResult]) -> None:
            failure = done.exception()
            answer.set_exception(exc if failure is None else failure)

        self.writer.submit(EventColumns(), [rejection]).add_done_callback(stored)
        return answer

    def import_file(self, path: Path, file_format: str | None = None, mapping: RowMapping | None = None, *,
                    delimiter: str | None = None, source: str | None = None, dry_run: bool = False,
                    on_rejected: Callable[[dict[str, Any]], None] = lambda row: None,
                    on_progress: Callable[[ReadProgress], None] = lambda progress: None,
                    stop: Callable[[], bool] = lambda: False) -> ImportReport:
        """Import a file (see docs/cli.md): Segment messages, or rows turned into messages by ``mapping``.

        ``on_progress`` is told after each chunk how far the file is read (the rows, and the rows in the file or
        the bytes read, where the format tells). ``stop`` is asked between chunks, and before each block of the
        passes a CSV file is read in before its first row (:func:`portrait.files.read_messages`): when it says so
        the import ends there with :class:`Interrupted` (the rows stored so far stay; the same file imported again adds
        nothing twice)."""
        report = ImportReport()
        fallbacks: list[Note] = []
        progress = ReadProgress(path.stat().st_size)
        chunks = read_messages(path, detect_format(path, file_format), mapping, delimiter=delimiter,
                               identity_traits=self.rules.identity_traits, fallbacks=fallbacks, progress=progress,
                               stop=lambda: stop() or self._closing.is_set())
        started = time.monotonic()
        for chunk in self.import_messages(chunks, source or f"import:{path.name}", dry_run=dry_run):
            report.rows += chunk.rows
            report.stored += chunk.result.accepted
            report.duplicates += chunk.result.duplicates
            report.rejected += len(chunk.rejected)
            for row, rejection in chunk.rejected:
                report.by_code[rejection.code] = report.by_code.get(rejection.code, 0) + 1
                record = {"row": row, "code": rejection.code, "reason": rejection.reason,
                          "message": rejection.payload}
                if len(report.first_rejected) < 100:
                    report.first_rejected.append(record)
                on_rejected(record)
            progress.rows, progress.stored = report.rows, report.stored
            if progress.rows_total is not None:  # a CSV row too misshapen to count in the first pass is a row too
                progress.rows_total = max(progress.rows_total, report.rows)
            on_progress(progress)
            if stop() or self._closing.is_set():
                raise Interrupted(f"the import of {path.name} stopped after {report.rows:,} rows; the rows stored "
                                  "so far stay, and importing the file again adds nothing twice")
        report.seconds = round(time.monotonic() - started, 2)
        report.notes = [fallback.note() for fallback in fallbacks]
        report.read_as_text = [{"column": f.column, "row": f.row, "value": f.value, "type": f.kind} for f in fallbacks
                               if isinstance(f, TextFallback)]  # the console offers these types to declare
        report.dates_as_text = [f.as_dict() for f in fallbacks if isinstance(f, DatesAsText)]
        return report

    def export_profiles(self, path: Path, file_format: str, *, attributes: list[str] | None = None,
                        include_personal: bool = False, segment: str | None = None, purpose: str | None = None,
                        ignore_consent: bool = False, mask_identifiers: bool = False,
                        on_written: Written = lambda rows, total: None, stop: Callable[[], bool] = lambda: False
                        ) -> dict[str, Any]:
        """Write every profile (or a segment's members) with the chosen attributes to ``path`` (see
        :mod:`portrait.exports`). With a ``purpose`` (e.g. marketing) only profiles that granted it are written,
        unless ``ignore_consent`` (which the caller must audit). ``mask_identifiers``: for a caller without
        ``pii:read``, a user_id that is an email or a phone is written masked. ``on_written`` and ``stop``: an export
        job's progress and cancel (:func:`portrait.exports.export_profiles`)."""
        segment_id = self.segments.find(segment).id if segment else None
        report = export_profiles(self._reads, self.attributes, path, file_format, attributes=attributes,
                                 include_personal=include_personal, segment_id=segment_id,
                                 consent_purpose=purpose if purpose and not ignore_consent else None,
                                 mask_identifiers=mask_identifiers, on_written=on_written, stop=stop)
        return {**report, "segment": segment, "purpose": purpose, "consent_checked": bool(purpose) and not
                ignore_consent}

    def check_export(self, file_format: str, attributes: list[str] | None, include_personal: bool,
                     segment: str | None) -> None:
        """Refuse what :meth:`export_profiles` would refuse at its start -- an unknown format, attribute or segment
        -- before an export job is started for it: the error answers the request that asked, not a job."""
        if file_format not in EXPORT_FORMATS:
            raise BadRequest(f"format {file_format!r} is not one of {', '.join(EXPORT_FORMATS)}",
                             code="invalid_format")
        choose_attributes(self.attributes, attributes, include_personal)
        if segment:
            self.segments.find(segment)

    # -- consent -------------------------------------------------------------------------------------------------
    def consents(self, reference: str) -> dict[str, Any]:
        """The profile's current consent per purpose and the full history of statements."""
        profile_id = self.resolve_profile_id(reference)
        history = [_consent_statement(*r[:5]) for r in self._reads.execute(reads.CONSENT_HISTORY, [profile_id])]
        return {"profile_id": profile_id, "consents": _current_consents(history), "history": history}

    def set_consent(self, reference: str, statements: dict[str, Any], *, source: str = "api") -> dict[str, Any]:
        """Record consent statements for a profile, through the event log (a ``Consent Updated`` event)."""
        profile_id = self.resolve_profile_id(reference)
        consent = _consent_statements(statements)
        identifier = self.segments.identifier_of(profile_id)
        if identifier is None:
            raise NotFound(f"profile {profile_id} has no identifier to record consent with")
        kind, value = identifier
        message = _named_by({"type": "track", "event": "Consent Updated", "properties": {},
                             "context": {"consent": consent}}, kind, value)
        chunk = next(self.import_messages([[message]], f"{source}:consent"))
        if chunk.rejected:
            raise BadRequest(chunk.rejected[0][1].reason, code=chunk.rejected[0][1].code)
        return {"profile_id": profile_id, "recorded": _consent_answer(consent)}

    def import_messages(self, chunks: Iterable[list[Any]], source: str, *, dry_run: bool = False
                        ) -> Iterator[ImportChunk]:
        """Import chunks of Segment-format messages (a file), through the same reading rules as HTTP -- except that
        a row identified only by email, phone or another identifier type needs no userId/anonymousId.

        Yields one result per chunk, with each rejected row's number (1-based, across chunks). With ``dry_run``
        nothing is written: the messages are only read and checked, and those the log holds already (or an earlier
        row of the file) are counted as duplicates, as the import would.
        """
        first_row = 1
        seen: set[str] = set()  # a dry run's message ids so far: a later copy in the file is a duplicate
        for chunk in chunks:
            unknown_size = self.limits.max_message_bytes + 1  # no body to measure: check every message's size
            with self._reading.shared():
                read = self._read(ParsedRequest(chunk), source, utc_now(), None, unknown_size, any_identifier=True)
                stored = None if dry_run else self.writer.submit(read.events, read.rejections, whole_log=True,
                                                                 suppressed=read.suppressed)
            if stored is None:
                new = self._not_yet_stored(read.events.message_id, seen)
                result = IngestResult(new, len(read.events) - new, len(read.rejections))
            else:
                result = stored.result()
            rows = [(first_row + (r.position or 0), r) for r in read.rejections]
            yield ImportChunk(len(chunk), result, rows)
            first_row += len(chunk)

    def _not_yet_stored(self, message_ids: Sequence[str], seen: set[str]) -> int:
        """How many of a dry run's ids neither the log nor ``seen`` holds (those are added to ``seen``)."""
        candidates = [m for m in dict.fromkeys(message_ids) if m not in seen]
        session = self._reads
        session.load("incoming_ids", pa.table({"message_id": pa.array(candidates, pa.string())}))
        try:
            present = {row[0] for row in session.execute(ingest_sql.ALREADY_IN_LOG)}
        finally:
            session.unload("incoming_ids")
        new = 0
        for message_id in message_ids:
            if message_id not in seen and message_id not in present:
                new += 1
            seen.add(message_id)
        return new

    # -- calculated attributes ---------------------------------------------------------------------------------
    def create_attribute(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Define an attribute; a calculated one is computed for every profile at once."""
        # Processing paused: a batch applying the code's first values creates the attribute too, and whichever of
        # the two committed second failed on the duplicate code (the batch then retried one event at a time).
        with self._processing_paused():
            created = self.attributes.create(fields)
        if created["calculated"]:
            self.segments.recalculate()
            created = self.attributes.get(created["code"])
        return created

    def update_attribute(self, code: str, changes: dict[str, Any]) -> dict[str, Any]:
        kind = self.attributes.type_after(code, changes)
        retyped = kind != self.attributes.get(code)["type"]
        self.segments.refuse_type_change(code, kind)
        self.attributes.refuse_unfit_definitions(code, kind)
        updated = self.attributes.update(code, changes)
        # a new type may be what a definition using the attribute was waiting for (its ``error`` cleared): computed
        # for everyone now, not only for the profiles of the next events
        if "definition" in changes or retyped or (updated["calculated"] and "status" in changes):
            self.segments.recalculate()
            updated = self.attributes.get(code)
        return updated

    def recalculate(self) -> dict[str, Any]:
        """Recompute every calculated attribute for every profile now."""
        started = time.monotonic()
        count = self.segments.recalculate()
        return {"attributes": count, "seconds": round(time.monotonic() - started, 2)}

    # -- analytics ---------------------------------------------------------------------------------------------
    def funnel(self, fields: dict[str, Any]) -> dict[str, Any]:
        return analytics.funnel(self._reads, self.segments, fields)

    def segment_breakdown(self, reference: str, attribute: str, top: int = 10) -> dict[str, Any]:
        found = self.attributes.get(attribute)  # an unknown attribute is a 404, not an empty breakdown
        split = analytics.breakdown(self._reads, self.segments, reference, attribute, found["type"], top)
        return {**split, "type": found["type"], "unit": found["unit"]}  # for the unit people read beside numbers

    # -- segments ----------------------------------------------------------------------------------------------
    def create_segment(self, fields: dict[str, Any]) -> dict[str, Any]:
        document, _changes = self.segments.create(fields)
        self._audience_events_follow()
        return document

    def update_segment(self, reference: str, fields: dict[str, Any]) -> dict[str, Any]:
        document, _changes = self.segments.update(reference, fields)
        self._audience_events_follow()
        return document

    def recount_segment(self, reference: str) -> dict[str, Any]:
        changes = self.segments.recount(reference)
        self._audience_events_follow()
        entered = sum(1 for c in changes if c.change == "entered")
        return {**self.segments.get(reference), "entered": entered, "exited": len(changes) - entered}

    def profile_segments(self, reference: str) -> dict[str, Any]:
        profile_id = self.resolve_profile_id(reference)
        return {"profile_id": profile_id, "segments": self.segments.of_profile(profile_id)}

    def explain_segment(self, reference: str, profile: str) -> dict[str, Any]:
        return self.segments.explain(reference, self.resolve_profile_id(profile))

    def _recount_after_erasure(self) -> None:
        """An erasure rewrote saved conditions naming the person: compute calculated attributes and recount
        segments now, as an edit of a definition or a condition does."""
        self.segments.recount_all()
        self._audience_events_follow()

    def _audience_events_follow(self) -> None:
        """A segment change's Audience events wait in the outbox, committed with the membership change. Where the
        segment thread runs (a server), it writes them after the answer: writing 100,000 of them takes seconds
        (~4 s here), which a segment's creation need not wait for. Without it (CLI commands, tests) they are
        written now."""
        if self._segment_thread is not None:
            self._segment_thread.notify()
        else:
            self._send_audience_events()

    def _send_audience_events(self) -> int:
        """Write the Audience Entered / Exited events waiting in the segments' outbox to the log (each on the
        profile's timeline, named by the profile's own identifier so it follows merges like any event); returns
        how many left the outbox. Ids were fixed when membership changed: sending again stores no duplicate."""
        sent = 0
        with self._audience_lock:
            while rows := self.segments.outbox_messages(5000):
                messages = [_audience_message(*row) for row in rows if row[6] is not None]
                if messages:
                    for _ in self.import_messages([messages], "portrait:segments"):
                        pass
                self.segments.sent([str(row[0]) for row in rows])
                sent += len(rows)
        return sent

    # -- SQL sources -------------------------------------------------------------------------------------------
    def add_source(self, fields: dict[str, Any], *, check: bool = True) -> dict[str, Any]:
        """Define a source (see :mod:`portrait.sources`). With ``check``, connect first and check the query's
        columns against the cursor and mapping, so a mistake shows now rather than at the first sync."""
        source = source_from_fields(fields)
        source.check()
        if check:
            source.check_columns(probe_columns(source))
        self.sources.add(source)
        return self.sources.state(source.name)

    def remove_source(self, name: str) -> None:
        """Forget a source; Conflict while it is syncing (the sync would go on saving its cursor, and then saved it
        into a source added again under that name, which then read from the wrong place)."""
        with self._syncing_lock:
            if name in self._syncing:
                raise Conflict(f"source {name!r} is syncing; remove it when the sync has ended", code="sync_running")
            self.sources.remove(name)

    def sync_source(self, name: str, *, full: bool = False) -> SyncReport:
        """Read the source's new rows (all rows with ``full``) into the event log; Conflict if it is syncing."""
        with self._syncing_lock:
            if name in self._syncing:
                raise Conflict(f"source {name!r} is syncing already", code="sync_running")
            source = self.sources.get(name)
            self._syncing.add(name)
        try:
            return self._sync(source, None if full else self.sources.cursor_value(name))
        finally:
            with self._syncing_lock:
                self._syncing.discard(name)

    def _sync(self, source: Source, after: Any) -> SyncReport:
        report = SyncReport(source.name, cursor=after)
        started = time.monotonic()
        self.sources.mark_running(source.name, utc_now())
        try:
            connector = connect(source.url)
            try:
                self._import_chunks(source, connector, after, report)
            finally:
                connector.close()
        except PortraitError as exc:
            self.sources.finish(source.name, "failed", exc.message)
            raise
        except Exception as exc:
            self.sources.finish(source.name, "failed", f"unexpected error: {scrub(str(exc), source.url)}")
            raise
        self.sources.finish(source.name, "ok", None)
        report.seconds = round(time.monotonic() - started, 2)
        return report

    def _import_chunks(self, source: Source, connector: Connector, after: Any, report: SyncReport) -> None:
        """Each chunk into the log, then its cursor saved. Closing the service (a server stopping) ends the sync
        after the chunk it is committing: it resumes from there, rather than holding the stop for the whole table."""
        chunks = read_chunks(source, connector, after, self.settings.source_chunk_rows)
        with contextlib.closing(chunks):  # the source's cursor is closed before its connection
            for chunk in chunks:
                done = next(self.import_messages([chunk.messages], f"source:{source.name}"))
                report.add(done.rows, done.result.accepted, done.result.duplicates,
                           [rejection.code for _, rejection in done.rejected])
                report.cursor = chunk.cursor if source.cursor else None
                self.sources.advance(source.name, report.cursor, done.rows)
                if self._closing.is_set():
                    raise SyncInterrupted(INTERRUPTED)

    # -- processing --------------------------------------------------------------------------------------------
    def process_pending(self) -> int:
        """Process the log until caught up and bring segment memberships up to date, in this thread (for the CLI
        when no server runs)."""
        done = self.processor.drain()
        # Audience events can move profiles into segments defined on them (performed("Audience Entered", ...)), so
        # this repeats until nothing changes; the bound stops segments that keep moving each other in and out.
        for _ in range(AUDIENCE_ROUNDS):
            changes = self.segments.refresh_touched()
            if not self._send_audience_events() and not changes:
                break
            done += self.processor.drain()
        return done

    def rebuild_traits(self) -> dict[str, int]:
        """Recompute all traits from the log with the current attribute definitions (see Processor).

        Returns how many trait values were read and how many data-quality issues there are now.
        """
        with self._from_the_log("traits") as session:
            # The log as it is now, not until caught up (process_pending): under steady traffic that never came,
            # and the processor's pause -- erasures, segment upkeep -- was held until traffic stopped. What arrives
            # meanwhile is the processor's, as usual, with the definitions the recheck applied.
            self._catch_up()
            values = self.processor.rebuild_traits(session)
            session.execute(sql.RECHECK_DONE)
            issues = int(session.execute(reads.COUNT_QUALITY)[0][0])
        return {"values": values, "issues": issues}

    def rebuild_profiles(self, on_progress: Callable[[int, int], None] = lambda done, total: None
                         ) -> dict[str, int]:
        """Derive every profile again from the log with the current settings (see :mod:`portrait.rebuild`)."""
        self.writer.flush()
        with self._from_the_log("profiles") as session:
            rebuilt = rebuild_profiles(session, self.processor, self.rules.identity_traits, on_progress,
                                       stopping=self._closing.is_set)
            session.execute(sql.RECHECK_DONE)  # traits included
        return rebuilt.as_dict()

    @contextlib.contextmanager
    def _from_the_log(self, what: str) -> Iterator[Session]:
        """Derived state computed again from the log: refused once retention deleted raw events (what they set
        would be lost: nothing in the log could bring it back); the background processor paused meanwhile (events
        keep arriving and wait in the log); then, since calculated values and memberships follow, a full recount
        with its Audience events, not only the next real-time refresh."""
        expired = self.privacy.expired()
        if expired:
            raise Conflict(f"retention has deleted {expired} raw events, so the log no longer holds everything the "
                           f"{what} were built from; computing them again from it would lose what those events set")
        with self._processing_paused():
            session = self.store.session()
            try:
                yield session
            finally:
                session.close()
        self.segments.recount_all()
        self._send_audience_events()

    def rebuild_interrupted(self) -> bool:
        return was_interrupted(self._reads)

    def wait_processed(self, poll: float = 0.05) -> None:
        """Block until the background processor has applied every event received so far."""
        while self.status()["lag"] > 0:
            time.sleep(poll)

    def status(self) -> dict[str, Any]:
        session = self._reads
        counters = dict(session.execute(sql.GET_COUNTERS))
        received = int(counters.get("events_received", 0))
        processed = int(counters.get("events_processed", 0))
        watermark = int(counters.get("watermark", 0))
        oldest = session.execute(reads.OLDEST_UNPROCESSED, [watermark])[0][0] if received > processed else None
        batch_events, batch_seconds = self.processor.last_batch
        return {
            "events_received": received,
            "events_processed": processed,
            "lag": received - processed,
            "lag_seconds": round((utc_now() - oldest).total_seconds(), 3) if oldest else 0.0,
            "last_batch_events": batch_events,
            "last_batch_seconds": round(batch_seconds, 3),
            "events_rejected": int(session.execute(reads.COUNT_REJECTED)[0][0]),
            "events_suppressed": int(counters.get("events_suppressed", 0)),
            "events_duplicate": int(counters.get("events_duplicate", 0)),
            "ingest_queue_events": self.writer.queued_events,
            "profiles": int(session.execute(reads.COUNT_PROFILES)[0][0]),
            "watermark": watermark,
            "last_seq": int(session.execute(ingest_sql.MAX_SEQ)[0][0]),
            "database": self.store.path,
            "memory": self._memory(),
            "processing_error": self._processor_thread.error if self._processor_thread else None,
            "database_damaged": self.store.read_problem(),
            "traits_recheck_due": self.traits_recheck_due(counters),
        }

    def traits_recheck_due(self, counters: dict[str, Any] | None = None) -> bool:
        """Whether profiles' traits were derived by an earlier version's rules (an upgraded database) and wait for
        `portrait attributes recheck` to be derived by today's (see schema migration 23)."""
        if counters is None:
            counters = dict(self._reads.execute(sql.GET_COUNTERS))
        return bool(counters.get("traits_recheck_due", 0))

    def _memory(self) -> dict[str, Any]:
        """The server's resident memory and the database engine's part of it, in MB (see memory_limit_mb)."""
        used, limit = self.store.memory()
        return {"process_mb": _resident_mb(), "database_mb": round(used / 2**20, 1), "database_limit": limit}

    # -- reads -------------------------------------------------------------------------------------------------
    def resolve_profile_id(self, reference: str) -> str:
        """``type:value`` (e.g. ``email:ann@example.com``, ``profile_id:...``) -> current profile id, or NotFound."""
        kind, sep, value = reference.partition(":")
        if not sep or not kind or not value:
            raise BadRequest(f"identity {reference!r} must look like TYPE:VALUE, e.g. email:ann@example.com",
                             code="invalid_identity")
        session = self._reads
        looked_up = None  # the identity key already tried
        if kind == PROFILE_ID_TYPE:
            if session.execute(reads.PROFILE_ROW, [value]):
                return value
            rows = session.execute(reads.PROFILE_BY_ALIAS, [value])
        else:
            ident = self.rules.normalize(kind.strip().lower(), value)
            looked_up = ident.key if ident else None
            rows = session.execute(reads.PROFILE_BY_IDENTITY, [looked_up]) if looked_up else []
        stored = self._stored_key(reference)
        if not rows and stored != looked_up:
            # an identifier stored before a rule change, found as the profile shows it (see _stored_key)
            rows = session.execute(reads.PROFILE_BY_IDENTITY, [stored])
        if not rows:
            raise NotFound(f"no profile has the identity {reference}{self._still_processing()}"
                           f"{self._type_meant(kind, value)}")
        return str(rows[0][0])

    def _type_meant(self, kind: str, value: str) -> str:
        """A misspelt identifier type (`mail:`, `userid:`) found nothing, and said only that: the identity with the
        usual type it most likely meant. Any type can be an external id's, so an unknown one is not an error."""
        usual = ["user_id", "email", "phone", "anonymous_id", *self.rules.identity_traits, PROFILE_ID_TYPE]
        meant = None if kind.strip().lower() in usual else closest_name(kind, usual)
        return f" (did you mean {meant}:{value}?)" if meant else ""

    def _still_processing(self) -> str:
        """What to add to "no profile has the identity ..." while events wait for the processor: a lookup right
        after sending (the README's first steps) comes before the profile, which is built a moment after the 200."""
        counters = dict(self._reads.execute(sql.GET_COUNTERS))
        waiting = (int(counters.get("events_received", 0)) - int(counters.get("events_processed", 0))
                   + self.writer.queued_events)
        if waiting <= 0:
            return ""
        events = "1 event received is" if waiting == 1 else f"{waiting:,} events received are"
        return f" yet: {events} still being processed (GET /api/status: lag); try again in a moment"

    @staticmethod
    def _stored_key(reference: str) -> str:
        """``type:value`` as identities are keyed, without today's normalization: identifiers stored under earlier
        rules (a local phone number, an external id of type profile_id) stay on their profiles until reprocessed,
        and must still be found -- and erasable -- as the profile lists them."""
        kind, _, value = reference.partition(":")
        return f"{kind.strip().lower()}:{value}"

    def profile(self, reference: str) -> dict[str, Any]:
        profile_id = self.resolve_profile_id(reference)
        rows = self._reads.execute(reads.PROFILE_DOCUMENT, [profile_id] * reads.PROFILE_DOCUMENT_PARAMS)
        return _profile_document(profile_id, rows)

    def traits(self, reference: str) -> dict[str, Any]:
        return self._traits(self._reads, self.resolve_profile_id(reference))

    def identities(self, reference: str) -> list[dict[str, Any]]:
        return self._identities(self._reads, self.resolve_profile_id(reference))

    def events(self, reference: str, *, event: str | None = None, since: datetime | None = None,
               until: datetime | None = None, cursor: str | None = None, limit: int = 50) -> dict[str, Any]:
        if not 1 <= limit <= 1000:
            raise BadRequest("limit must be between 1 and 1000", code="invalid_limit")
        profile_id = self.resolve_profile_id(reference)
        session = self._reads
        counted = session.execute(reads.PROFILE_EVENT_COUNT, [profile_id])
        query, params = reads.profile_event_page(reads.EventFilter(
            profile_id, event=event, since=since, until=until, before=_decode_cursor(cursor), limit=limit,
            profile_events=int(counted[0][0]) if counted else 0))
        page = session.execute(query, params)
        more = len(page) > limit
        page = page[:limit]
        seqs = [seq for seq, _ in page]
        details = {row[0]: row for cluster in reads.seq_clusters(seqs)
                   for row in session.execute(reads.EVENTS_IN_RANGE, [cluster[0], cluster[-1], cluster])}
        events = [event_document(details[seq]) for seq, _ in page if seq in details]
        next_cursor = _encode_cursor(page[-1][1], page[-1][0]) if more else None
        return {"profile_id": profile_id, "events": events, "next": next_cursor}

    def rejected(self, *, limit: int = 100, before_id: int | None = None, code: str | None = None) -> dict[str, Any]:
        """What was not accepted, newest first (see docs/ingestion.md for the codes)."""
        items, after = self._newest_first("rejected_events", reads.REJECTED_COLUMNS, limit, before_id, {"code": code})
        return {"rejected": items, "next": after}

    def data_quality(self, *, limit: int = 100, before_id: int | None = None, attribute: str | None = None
                     ) -> dict[str, Any]:
        """Trait values that were not applied because they break their attribute's type or rules, newest first."""
        items, after = self._newest_first("data_quality", reads.DATA_QUALITY_COLUMNS, limit, before_id,
                                          {"attribute": attribute})
        return {"issues": items, "next": after}

    def _newest_first(self, table: str, columns: tuple[str, ...], limit: int, before_id: int | None,
                      equals: dict[str, object | None]) -> tuple[list[dict[str, Any]], int | None]:
        query, params = reads.newest_first(table, columns, limit, before_id, equals)
        rows = self._reads.execute(query, params)
        items: list[dict[str, Any]] = [
            {k: (iso_time(v) if isinstance(v, datetime) else v) for k, v in zip(columns, row, strict=True)}
            for row in rows[:limit]
        ]
        return items, (int(items[-1]["id"]) if len(rows) > limit else None)

    def recent_events(self, after_seq: int, limit: int = 100, *, details: bool = False) -> list[dict[str, Any]]:
        """Events after ``after_seq``, oldest first: a summary of each, or (``details``) each as the API shows an
        event, with its properties, traits and context (the console's live stream expands them)."""
        query, params = reads.recent_events(after_seq, limit, details=details)
        rows = self._reads.execute(query, params)
        if details:
            return [event_document(row) for row in rows]
        return [
            {k: (iso_time(v) if isinstance(v, datetime) else v) for k, v in zip(reads.RECENT_COLUMNS, row, strict=True)}
            for row in rows
        ]

    @staticmethod
    def _traits(session: Session, profile_id: str) -> dict[str, Any]:
        return {key: orjson.loads(value) for key, value in session.execute(reads.PROFILE_TRAITS, [profile_id])}

    @staticmethod
    def _identities(session: Session, profile_id: str) -> list[dict[str, Any]]:
        return [{"type": t, "value": v, "first_seen": iso_time(f)}
                for t, v, f in session.execute(reads.PROFILE_IDENTITIES, [profile_id])]


def restore_backup(settings: Settings, backup: str) -> dict[str, Any]:
    """Put the backup file ``backup`` in place of the database (no process may hold it: stop the server first).

    What the database it replaces says of now goes into the backup first (:func:`_carry_over`): the erasures done
    since the backup was made are made again, so a restore never brings back a person who asked to be forgotten;
    the API keys stay as they are (one revoked since stays revoked); the audit log keeps its later entries. The
    database it replaces is kept beside it as ``<name>.before-restore-<time>``; the backup file is left as it is."""
    source = Path(backup).expanduser().resolve()
    database = Path(settings.db_path).expanduser().resolve()
    if not source.is_file():
        raise NotFound(f"there is no backup at {source}")
    if source == database:
        raise BadRequest(f"{source} is the database itself: name a backup of it")
    current = None
    if database.exists():
        try:
            current = Portrait(settings.with_overrides(db_path=str(database)), background=False)
        except DatabaseInUse as exc:
            raise DatabaseInUse(f"{exc.message} Stop the server before restoring a backup into it.") from exc
    staging = database.with_name(database.name + ".restoring")
    try:
        _remove_database_files(staging)
        with damage_reported_by_caller(str(staging)):
            counts, erasures = _restore_into(settings, source, staging, current)
    except BaseException:
        _remove_database_files(staging)
        raise
    finally:
        if current:
            current.close()
    previous = _keep_previous(database) if database.exists() else None
    Path(str(database) + ".wal").unlink(missing_ok=True)  # closed cleanly above: its log is in the file
    os.replace(staging, database)  # one step: the path holds the old database or the restored one, never none
    _remove_database_files(staging)  # what its rewrite after the erasures left beside it
    return {"database": str(database), "restored_from": str(source), "previous": str(previous) if previous else None,
            "events": counts["events_received"], "profiles": counts["profiles"],
            "erasures_made_again": len(erasures)}


def _restore_into(settings: Settings, source: Path, staging: Path, current: Portrait | None
                  ) -> tuple[dict[str, Any], list[Any]]:
    """Copy the backup to ``staging`` and bring it up to date (:func:`_carry_over`): its status and the erasures
    made again."""
    _stage(settings, source, staging)
    restored = _open_backup(settings, staging, source)
    try:
        erasures = _carry_over(current, restored) if current else []
        restored.audit.record(None, "restore_backup", target=source.name,
                              detail={"erasures_made_again": len(erasures)})
        return restored.status(), erasures
    except DatabaseDamaged as exc:  # the backup's file, not the database's: said so, not "restore a backup"
        raise DatabaseDamaged(f"cannot restore {source}: the backup {damage_found(exc.__cause__) or 'is damaged'}"
                              "; the database was not changed; restore another backup") from exc
    finally:
        restored.close()


def _stage(settings: Settings, source: Path, staging: Path) -> None:
    """Copy the backup beside the database, making its folder if there is none yet (a restore onto a new machine);
    what the disk refuses is said plainly, the database left as it was. A plain backup restored into an encrypted
    database is encrypted on the way: copied as it was, then encrypted, a restore killed in between left a plain
    copy of every customer in the data folder."""
    try:
        staging.parent.mkdir(parents=True, exist_ok=True)
        if settings.encryption_key and _encrypted_copy(settings.encryption_key, source, staging):
            return
        shutil.copyfile(source, staging)
    except OSError as exc:
        raise PortraitError(f"cannot copy the backup {source} to {staging}: {exc.strerror or exc}; the database "
                            f"was not changed. Its folder must be writable, with room for a copy of the backup "
                            f"({source.stat().st_size / 1_000_000:,.1f} MB) and what the restore adds",
                            code="restore_failed") from exc


def _encrypted_copy(key: str, source: Path, staging: Path) -> bool:
    """The plain backup ``source`` copied into ``staging`` encrypted with today's key; False if it is encrypted."""
    try:
        return copy_encrypted(str(source), str(staging), key)
    except PortraitError as exc:
        raise type(exc)(f"cannot restore {source}: {exc.message}", code=exc.code) from exc


def _keep_previous(database: Path) -> Path:
    """A second name for the database about to be replaced, ``<name>.before-restore-<time>``; the database keeps
    its own name until the restored one takes it. (Renamed away first, a restore killed before the restored one
    was moved in left no database at all, and the next start made a new, empty one there.)"""
    stamp = f"{database.name}.before-restore-{utc_now():%Y%m%dT%H%M%S}"
    previous = database.with_name(stamp)
    number = 1
    while previous.exists():  # a second restore within the second must not write over the first one's
        number += 1
        previous = database.with_name(f"{stamp}-{number}")
    try:
        os.link(database, previous)
    except OSError:  # a file system without hard links: a copy, the database still in place
        shutil.copyfile(database, previous)
    return previous


def _open_backup(settings: Settings, staging: Path, source: Path) -> Portrait:
    """The copy of the backup, opened (and upgraded) as a database; an error about it names the backup.

    The restored database is encrypted with today's key whatever the backup's was: a backup made before a key
    change is read with PORTRAIT_PREVIOUS_ENCRYPTION_KEY (a plain one was encrypted by :func:`_stage`)."""
    try:
        try:
            return Portrait(settings.with_overrides(db_path=str(staging)), background=False)
        except PortraitError as exc:
            if exc.code != "encryption_key_wrong" or not settings.previous_encryption_key:
                raise
        compact_file(str(staging), settings.previous_encryption_key, settings.encryption_key,
                     old_key_name=PREVIOUS_KEY_VARIABLE)
        return Portrait(settings.with_overrides(db_path=str(staging)), background=False)
    except PortraitError as exc:
        raise type(exc)(f"cannot restore {source}: {_backup_problem(settings, exc, staging, source)}",
                        code=exc.code) from exc


def _backup_problem(settings: Settings, exc: PortraitError, staging: Path, source: Path) -> str:
    """Why the backup did not open, naming the backup (not its copy) and, for a key, every key that was tried."""
    if exc.code == "encryption_key_wrong" and settings.previous_encryption_key:  # both keys were tried
        return ("neither PORTRAIT_ENCRYPTION_KEY nor PORTRAIT_PREVIOUS_ENCRYPTION_KEY is the key of the backup; "
                "nothing was changed")
    hint = (" (a backup made before the key was changed: set PORTRAIT_PREVIOUS_ENCRYPTION_KEY to the key it was "
            "made with)" if exc.code == "encryption_key_wrong" else "")
    return exc.message.replace(str(staging), str(source)) + hint


def _carry_over(current: Portrait, restored: Portrait) -> list[dict[str, Any]]:
    """Into a restored backup, what the database it replaces knows of now; returns the erasures made again."""
    restored.keys.carry_over(current.keys.rows())
    restored.audit.append(current.audit.rows_after(restored.audit.last_id()))
    return restored.privacy.carry_erasures(current.privacy.suppressed_rows())


def _remove_database_files(path: Path) -> None:
    for leftover in (path, Path(str(path) + ".wal"), compaction_marker(str(path)), Path(str(path) + ".compact-lock"),
                     Path(str(path) + ".compacting")):  # the last: its re-encryption from the previous key, killed
        leftover.unlink(missing_ok=True)


def _profile_document(profile_id: str, rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Assemble the API's profile from PROFILE_DOCUMENT rows (part, text_a, text_b, time_a, time_b, number)."""
    doc: dict[str, Any] = {"profile_id": profile_id, "traits": {}, "identities": [], "merges": [],
                           "identity_conflicts": [], "first_seen": None, "last_seen": None, "events_count": 0}
    consent_rows = sorted((r for r in rows if r[0] == "consent"), key=lambda r: (r[3], r[5], r[1]))
    doc["consents"] = _current_consents([_packed_consent(r[1], r[2], r[3]) for r in consent_rows])
    for part, a, b, t1, t2, n in sorted(rows, key=lambda r: (r[0], r[5] or 0, r[1] or "", r[2] or "")):
        if part == "seen":
            doc["first_seen"], doc["last_seen"], doc["events_count"] = iso_time(t1), iso_time(t2), n
        elif part == "trait":
            doc["traits"][a] = orjson.loads(b)
        elif part == "identity":
            doc["identities"].append({"type": a, "value": b, "first_seen": iso_time(t1)})
        elif part == "merge":
            identifiers, message_id = b.rsplit("\t", 1)
            doc["merges"].append({"merged_profile_id": a, "seq": n, "message_id": message_id,
                                  "identifiers": orjson.loads(identifiers), "merged_at": iso_time(t1),
                                  "processed_at": iso_time(t2), "reason": "one event carried identifiers of both"})
        elif part == "conflict":
            doc["identity_conflicts"].append({
                "seq": n, "message_id": a, "dropped": orjson.loads(b), "processed_at": iso_time(t1),
                "reason": "merging would exceed a per-type identifier limit; these identifiers were not used"})
    return doc


def _consent_statement(purpose: str, status: str, basis: str | None, at: datetime, source: str | None
                       ) -> dict[str, Any]:
    """One statement of a consent history (CONSENT_HISTORY's columns)."""
    return {"purpose": purpose, "status": status, "legal_basis": basis, "at": iso_time(at), "source": source}


def _packed_consent(purpose: str, packed: str, at: datetime) -> dict[str, Any]:
    """A consent row of PROFILE_DOCUMENT (status, legal basis and source as a JSON array) as a statement."""
    status, basis, source = orjson.loads(packed)
    return _consent_statement(purpose, status, basis, at, source)


def _current_consents(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last statement per purpose of a history ordered oldest first."""
    return {h["purpose"]: {k: v for k, v in h.items() if k != "purpose"} for h in history}


CONSENT_VALUES = ("granted", "denied")
LEGAL_BASES = ("consent", "contract", "legal_obligation", "vital_interests", "public_task", "legitimate_interests")


def _consent_statements(statements: Any) -> dict[str, Any]:
    """``{"email": "granted", "marketing": {"status": "denied", "legal_basis": "consent"}}`` checked and normalized."""
    if not isinstance(statements, dict) or not statements:
        raise BadRequest('send {"<purpose>": "granted" | "denied" | {"status": ..., "legal_basis": ...}}',
                         code="invalid_consent")
    out: dict[str, Any] = {}
    for purpose, value in statements.items():
        detail = value if isinstance(value, dict) else {"status": value}
        status = detail.get("status")
        basis = detail.get("legal_basis", detail.get("legalBasis"))
        if not purpose.strip():
            raise BadRequest("a consent purpose needs a name (e.g. email, marketing, analytics)",
                             code="invalid_consent")
        if status not in CONSENT_VALUES:
            raise BadRequest(f"consent for {purpose!r} must be granted or denied, not {status!r}",
                             code="invalid_consent")
        if basis is not None and basis not in LEGAL_BASES:
            raise BadRequest(f"legal_basis is one of {', '.join(LEGAL_BASES)}", code="invalid_consent")
        out[purpose] = {"status": status, **({"legalBasis": basis} if basis else {})}
    return out


def _consent_answer(consent: dict[str, Any]) -> dict[str, Any]:
    """Statements as the API reads them back (``legal_basis``), not as the event carries them (Segment's
    ``legalBasis``): the answer of recording consent and of reading it use the same names."""
    return {purpose: {"status": detail["status"], **({"legal_basis": detail["legalBasis"]}
                                                      if "legalBasis" in detail else {})}
            for purpose, detail in consent.items()}


def _encode_cursor(timestamp: datetime, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{timestamp.isoformat()}|{seq}".encode()).decode()


def _decode_cursor(cursor: str | None) -> tuple[datetime, int] | None:
    if not cursor:
        return None
    try:
        stamp, seq = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(stamp), int(seq)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("cursor is not one this API returned", code="invalid_cursor") from exc


def _resident_mb() -> float | None:
    """This process's resident memory (Linux's /proc; None elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def _audience_message(message_id: str, segment_id: int, segment: str, change: str, profile_id: str, at: datetime,
                      kind: str, value: str) -> dict[str, Any]:
    """An outbox row as the track message to log, named by the identifier OUTBOX_MESSAGES chose (the profile's own,
    or for an exit of a profile merged away, its survivor's)."""
    return _named_by({"type": "track", "event": "Audience Entered" if change == "entered" else "Audience Exited",
                      "timestamp": at.isoformat() + "Z", "properties": {"segment": segment, "segment_id": segment_id},
                      "messageId": message_id}, kind, value)


def _named_by(message: dict[str, Any], kind: str, value: str) -> dict[str, Any]:
    """``message`` naming its profile by one identifier: as userId or anonymousId, or another type as an external
    id (as Segment's SDKs send them), so the processor resolves it like any event."""
    if kind in ("user_id", "anonymous_id"):
        message["userId" if kind == "user_id" else "anonymousId"] = value
    else:
        context = message.setdefault("context", {})
        context["externalIds"] = [{"type": kind, "id": value, "collection": "users", "encoding": "none"}]
    return message
