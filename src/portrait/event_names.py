"""Event names a question asks about that no event has had: a funnel's steps, a segment's ``performed(...)``.

Such a name is not an error -- the events may not have arrived yet, and a segment waiting for them is a fine
thing to build -- but it is most often a typo or a difference of case ("Order completed" for "Order Completed"),
and then the answer is silently zero. So the answer carries a note naming it, with the closest name that has been
seen."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from portrait.sql import analytics as q
from portrait.store import Session


def unseen_event_notes(session: Session, names: Iterable[str]) -> list[str]:
    """A note for each of ``names`` no event has had, in the order given, each naming the closest seen name."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return []
    seen = {row[0] for row in session.execute(q.SEEN_EVENT_NAMES, [wanted])}
    unseen = [name for name in wanted if name not in seen]
    if not unseen:
        return []
    pending = {row[0] for row in session.execute(q.RECEIVED_UNPROCESSED_EVENT_NAMES, [unseen])}
    known = [row[0] for row in session.execute(q.KNOWN_EVENT_NAMES)] if len(pending) < len(unseen) else []
    return [_pending_note(name) if name in pending else _note(name, known) for name in unseen]


def _pending_note(name: str) -> str:
    return (f"events named {name!r} have been received but not processed yet: they count once they are "
            f"(GET /api/status shows the lag)")


def _note(name: str, known: list[str]) -> str:
    close = closest_name(name, known)
    hint = f" (did you mean {close!r}?)" if close else ""
    return f"no event named {name!r} has been received{hint}: names match exactly, case too"


def closest_name(name: str, known: list[str]) -> str | None:
    """The seen name ``name`` most likely meant: one equal but for case or spaces first, else the most similar."""
    folded = " ".join(name.casefold().split())
    for candidate in known:  # the most frequent first
        if " ".join(candidate.casefold().split()) == folded:
            return candidate
    by_folded = {candidate.casefold(): candidate for candidate in reversed(known)}  # the most frequent wins
    close = difflib.get_close_matches(name.casefold(), list(by_folded), n=1, cutoff=0.75)
    return by_folded[close[0]] if close else None
