"""Rebuilding every profile from the event log with the current settings.

Profiles, identities, traits, merges, consent and data-quality records are derived from the log (see
docs/concepts.md), so they can be derived again: after the identity settings change (a new identity trait such as
``loyalty_card``, blocked values, the phone region, the per-type limits), an event's identity hints are read again
from its traits and context, the derived tables are emptied and the processor applies the whole log once more.

With the same settings the result is the same as before, profile ids included (an id derives from the event that
created the profile). A profile id the new rules no longer make keeps resolving, to the profile now holding the
event that created it. The caller pauses the background processor meanwhile and recounts segments afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson
import pyarrow as pa

from portrait.errors import Interrupted
from portrait.identity import HINT_SEPARATOR, identity_hints
from portrait.pipeline import Processor
from portrait.sql import rebuild as q
from portrait.store import Session

_CHUNK = 50_000  # events whose hints are read again per query


@dataclass(frozen=True)
class Rebuilt:
    events: int  # applied again
    hints_changed: int  # events whose identity hints the current settings read otherwise
    profiles_before: int
    profiles_after: int
    ids_redirected: int  # profile ids the new rules no longer make, now resolving to the profile that took over

    def as_dict(self) -> dict[str, int]:
        return {"events": self.events, "hints_changed": self.hints_changed, "profiles_before": self.profiles_before,
                "profiles_after": self.profiles_after, "ids_redirected": self.ids_redirected}


def rebuild_profiles(session: Session, processor: Processor, identity_traits: tuple[str, ...],
                     on_progress: Callable[[int, int], None] = lambda done, total: None, *,
                     stopping: Callable[[], bool] = lambda: False) -> Rebuilt:
    """Derive every profile again from the log; ``on_progress(events applied, events in the log)``. When
    ``stopping()`` (the server stops) it ends after the batch it is applying, as a crash would leave it."""
    hints_changed = rehint(session, identity_traits)
    interrupted = was_interrupted(session)  # then the profiles of before are those of the snapshot
    profiles_before = int(session.execute(q.COUNT_OLD_PROFILES if interrupted else q.COUNT_PROFILES)[0][0])
    total = int(session.execute(q.COUNT_EVENTS)[0][0])
    with session.transaction():
        for statement in (*q.SNAPSHOT, *q.CLEAR):
            session.execute(statement)
        last = int(session.execute(q.LAST_SEQ)[0][0])
    # The log as it is now, not until caught up: under steady traffic that never came, and the processor's pause
    # (segments, erasures) was held until traffic stopped. What arrives meanwhile is the processor's, as usual.
    done = 0
    while int(session.execute(q.WATERMARK)[0][0]) < last and (step := processor.process_next(session)) > 0:
        done += step
        on_progress(done, total)
        if stopping():
            raise Interrupted("the server is stopping: the rebuild stopped part-way; the processor goes on with it "
                              "at the next start, and running it again finishes it")
    with session.transaction():
        session.execute(q.KEEP_CREATED_AT)
        redirected = int(session.execute(q.COUNT_VANISHED)[0][0])
        for statement in (*q.ALIAS_VANISHED, q.KEEP_CALCULATED, *q.DROP_SNAPSHOT):
            session.execute(statement)
    return Rebuilt(done, hints_changed, profiles_before, int(session.execute(q.COUNT_PROFILES)[0][0]), redirected)


def was_interrupted(session: Session) -> bool:
    """Whether a rebuild was cut short (a crash): the processor rebuilds the profiles as it goes on, and running the
    rebuild again makes the profile ids of before resolve again."""
    return bool(session.execute(q.INTERRUPTED)[0][0])


def rehint(session: Session, identity_traits: tuple[str, ...]) -> int:
    """Read every event's identity hints again with the current identity traits; returns how many changed."""
    changed = 0
    after = 0
    while rows := session.execute(q.HINT_SOURCES, [after, _CHUNK]):
        seqs: list[int] = []
        hints: list[str | None] = []
        for seq, kind, traits, context, stored in rows:
            hinted = _unique(identity_hints(kind, {"traits": _object(traits)}, identity_traits, _context(context)))
            if set((hinted or "").split(HINT_SEPARATOR)) != set((stored or "").split(HINT_SEPARATOR)):
                seqs.append(seq)
                hints.append(hinted)
        if seqs:
            session.load("rehinted", pa.table({"seq": pa.array(seqs, pa.int64()),
                                               "hints": pa.array(hints, pa.string())}))
            try:
                session.execute(q.SET_HINTS)
            finally:
                session.unload("rehinted")
            changed += len(seqs)
        after = int(rows[-1][0])
    return changed


def _unique(hints: str | None) -> str | None:
    """Each hint once: the log's traits of an identify hold its context.traits too, so both name the same ones."""
    return HINT_SEPARATOR.join(dict.fromkeys(hints.split(HINT_SEPARATOR))) if hints else None


def _object(text: str | None) -> object:
    return orjson.loads(text) if text else None


def _context(text: str | None) -> object:
    """The context, if it can name the person (most do not: they are not parsed at all)."""
    return _object(text) if text and ('"traits"' in text or '"externalIds"' in text) else None
