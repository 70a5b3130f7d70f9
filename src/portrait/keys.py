"""API keys: kinds, scopes, and their life cycle (create, list, revoke, rotate).

- **write** keys send events (scope ``ingest``), one per source ("website", "ios-app", "pos"): the key's name is
  the source recorded on every event it sends.
- **read** keys read profiles, segments and analytics (scope ``read``).
- **admin** keys also change things (scope ``admin``).
- ``pii:read`` is separate: without it, personal data comes back masked (``a***@example.com``). Admin keys have it
  unless created without it; read keys only when given it.

Keys are long random tokens stored as SHA-256 hashes (a plain hash is enough for such tokens) with a short public id
(the hash's first 12 characters) to list, revoke and rotate them by. The secret is shown once, when created.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from portrait.errors import BadRequest, Forbidden, NotFound, PortraitError, RateLimited, Unauthorized
from portrait.spec import iso_time, utc_now
from portrait.sql import keys as q
from portrait.store import Session

KINDS = ("write", "read", "admin")
SCOPES = ("ingest", "read", "admin", "pii:read")
DEFAULT_SCOPES = {"write": ("ingest",), "read": ("read",), "admin": ("read", "admin", "pii:read")}
PREFIXES = {"write": "wk", "read": "rk", "admin": "ak"}


@dataclass(frozen=True)
class ApiKey:
    id: str
    kind: str
    name: str
    scopes: frozenset[str]
    revoked_at: datetime | None = None
    created_at: datetime | None = None

    @property
    def can_read_pii(self) -> bool:
        return "pii:read" in self.scopes

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "name": self.name, "scopes": sorted(self.scopes),
                "created_at": iso_time(self.created_at), "revoked_at": iso_time(self.revoked_at),
                "active": self.revoked_at is None}


def scopes_for(kind: str, scopes: object) -> tuple[str, ...]:
    """The scopes a new key of ``kind`` gets: ``scopes`` as given (a list of scope names), or the kind's default
    when it is None. The API asks this before it checks that the caller may hand them out, so the check and the
    key see the same scopes (a JSON object passed the check as "no scopes given" and was then read as a list)."""
    if scopes is None:
        return DEFAULT_SCOPES.get(kind, ())
    if not isinstance(scopes, list | tuple) or not all(isinstance(s, str) for s in scopes):
        raise BadRequest(f"scopes is a list of scope names such as [\"read\", \"pii:read\"], not {scopes!r}",
                         code="invalid_key")
    if kind not in KINDS:
        raise BadRequest(f"kind is one of {', '.join(KINDS)}, not {kind!r}", code="invalid_key")
    chosen = tuple(dict.fromkeys(scopes))
    allowed = {"write": {"ingest"}, "read": {"read", "pii:read"}, "admin": {"read", "admin", "pii:read"}}[kind]
    if set(chosen) - allowed or (kind != "write" and "read" not in chosen) or (
            kind == "admin" and "admin" not in chosen):
        raise BadRequest(f"a {kind} key takes the scopes {', '.join(sorted(allowed))} (and needs "
                         f"{'ingest' if kind == 'write' else 'read' if kind == 'read' else 'read and admin'})",
                         code="invalid_key")
    return chosen


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key(kind: str) -> str:
    return f"{PREFIXES[kind]}_{secrets.token_urlsafe(24)}"


class KeyRing:
    """Known keys by hash, cached in memory (reloaded after every change)."""

    def __init__(self, session: Callable[[], Session]) -> None:
        self._session = session  # this thread's session (keys change from API threads)
        self._keys: dict[str, ApiKey] = {}
        self.reload()

    def reload(self) -> None:
        self._keys = {row[0]: ApiKey(row[3], row[1], row[2], frozenset((row[4] or "").split(",")) - {""}, row[5],
                                     row[6]) for row in self._session().execute(q.ALL_KEYS)}

    def add(self, key: str, kind: str, name: str, scopes: tuple[str, ...] | None = None) -> ApiKey:
        self._insert(key, kind, name, scopes)
        self.reload()
        return self._keys[hash_key(key)]

    def _insert(self, key: str, kind: str, name: str, scopes: tuple[str, ...] | None = None) -> None:
        digest = hash_key(key)
        chosen = scopes if scopes is not None else DEFAULT_SCOPES[kind]
        self._session().execute(q.INSERT_KEY, [digest, kind, name, utc_now(), digest[:12], ",".join(sorted(chosen))])

    def register(self, configured: dict[str, str | None]) -> None:
        """Register the keys set in the configuration (PORTRAIT_WRITE_KEY, PORTRAIT_ADMIN_KEY); known ones stay."""
        for kind in ("write", "admin"):
            key = configured.get(kind)
            if key:
                self.add(key, kind, "default")

    def generate_missing(self, announce: Callable[[dict[str, str]], None]) -> dict[str, str]:
        """A new write and admin key for each kind that has no active key, shown through ``announce`` (once: only
        hashes are stored), and returned.

        All or nothing, from the user's view: both keys are written in one transaction and announced before it
        commits. A first start killed half-way stored the write key alone (printed by nobody: the next start saw a
        write key and generated only an admin key), or stored both and died before printing them -- keys nobody
        ever saw. Now a start that dies before the commit stored nothing, and the next one generates again; the
        caller holds off SIGTERM and Ctrl-C meanwhile (see cli.common._signals_held), so only kill -9 can land
        between printing and committing, and then the next start prints new keys, the only ones stored."""
        missing = [kind for kind in ("write", "admin")
                   if not any(k.kind == kind and k.revoked_at is None for k in self._keys.values())]
        generated = {kind: new_key(kind) for kind in missing}
        if not generated:
            return generated
        announced = False
        try:
            with self._session().transaction():
                for kind, key in generated.items():
                    self._insert(key, kind, "default")
                announce(generated)
                announced = True
        except PortraitError as exc:  # the commit failed (a full disk): what was printed must not be trusted
            if announced:
                raise type(exc)(f"the generated keys printed above were not stored ({exc.message}); the next start "
                                "generates new ones", code=exc.code) from exc
            raise
        finally:
            self.reload()
        return generated

    def rows(self) -> list[tuple[Any, ...]]:
        """Every key as stored (hashed), for :meth:`carry_over` in a restored database."""
        return self._session().execute(q.KEY_ROWS)

    def carry_over(self, rows: list[tuple[Any, ...]]) -> None:
        """Take the keys ``rows`` of the database a restore replaces as they are there: a key revoked since the
        backup stays revoked, one created since keeps working. A key only the backup has stays too: keys are never
        deleted, only revoked, so the replaced database lacks one only when it is not the backup's own later state
        -- an empty database a first start made on a new machine, whose keys replacing them all left every SDK
        and script of the backup answered 401."""
        session = self._session()
        with session.transaction():
            session.execute(q.DROP_KEYS, [[row[0] for row in rows]])
            for row in rows:
                session.execute(q.INSERT_KEY_ROW, list(row))
        self.reload()

    # -- checking ------------------------------------------------------------------------------------------------
    def authenticate(self, key: str | None) -> ApiKey:
        """The key's record; Unauthorized for none, an unknown key or a revoked one."""
        if not key:
            raise Unauthorized("an API key is required")
        api_key = self._keys.get(hash_key(key))  # a dict lookup by hash leaks nothing useful about the key
        if api_key is None:
            raise Unauthorized("unknown API key")
        return _current(api_key)

    def check(self, key: str | None, kind: str) -> ApiKey:
        """For ingestion: a write key (401 for anything else, as Segment answers)."""
        if not key:
            raise Unauthorized(f"a {kind} key is required")
        api_key = self._keys.get(hash_key(key))
        if api_key is None:
            raise Unauthorized(f"unknown {kind} key")
        _current(api_key)
        if api_key.kind != kind:  # whoever sent it holds it: saying what it is gives nothing away
            raise Unauthorized(f"key {api_key.id} is {'an' if api_key.kind == 'admin' else 'a'} {api_key.kind} key, "
                               f"for the API and the console: events are sent with a {kind} key (one per source)")
        return api_key

    @staticmethod
    def require(api_key: ApiKey, scope: str, doing: str) -> None:
        if scope not in api_key.scopes:
            raise Forbidden(f"key {api_key.id} ({api_key.kind}, {api_key.name!r}) cannot {doing}: it needs the "
                            f"{scope!r} scope")

    # -- life cycle ----------------------------------------------------------------------------------------------
    def all(self) -> list[dict[str, Any]]:
        return [k.public() for k in sorted(self._keys.values(), key=lambda k: (k.created_at or utc_now(), k.id))]

    def create(self, kind: str, name: str, scopes: object = None) -> tuple[str, ApiKey]:
        """A new key; returns its secret (shown once) and its record."""
        if kind not in KINDS:
            raise BadRequest(f"kind is one of {', '.join(KINDS)}, not {kind!r}", code="invalid_key")
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            raise BadRequest("a key needs a name (1-100 characters), e.g. the source it is for", code="invalid_key")
        chosen = scopes_for(kind, scopes)
        secret = new_key(kind)
        return secret, self.add(secret, kind, name.strip(), chosen)

    def find(self, key_id: str) -> ApiKey:
        for api_key in self._keys.values():
            if api_key.id == key_id:
                return api_key
        raise NotFound(f"no key has the id {key_id!r}")

    def revoke(self, key_id: str) -> ApiKey:
        api_key = self.find(key_id)
        self._session().execute(q.REVOKE, [utc_now(), key_id])
        self.reload()
        return self.find(api_key.id)

    def rotate(self, key_id: str) -> tuple[str, ApiKey]:
        """A new secret with the same kind, name and scopes; the old one stops working now."""
        old = self.find(key_id)
        if old.revoked_at is not None:
            raise BadRequest(f"key {key_id} is revoked; create a new one instead", code="invalid_key")
        secret, fresh = self.create(old.kind, old.name, sorted(old.scopes))
        self.revoke(key_id)
        return secret, fresh


def _current(api_key: ApiKey) -> ApiKey:
    """``api_key`` unless it was revoked (Unauthorized, saying so)."""
    if api_key.revoked_at is not None:
        raise Unauthorized(f"API key {api_key.id} was revoked")
    return api_key


class RateLimiter:
    """A token bucket per key -- per key and client address for ingestion -- ``rate`` requests a second, bursts up
    to twice that; 0 turns it off."""

    SWEEP_AT = 10_000  # buckets held before idle (full) ones are dropped: one per client address that sent lately

    def __init__(self, rate: int) -> None:
        self._rate = float(rate)
        self._capacity = 2.0 * rate
        self._buckets: dict[tuple[str, str | None], tuple[float, float]] = {}  # (key id, client) -> (tokens, when)
        self._sweep_at = self.SWEEP_AT
        self._lock = threading.Lock()

    def take(self, key_id: str, client: str | None = None) -> None:
        """One request of ``key_id``, from ``client`` where each client has an allowance of its own: a write key is
        shared by every browser of a website and is public in its pages, so one sender (a bug, a bot) using up the
        key's whole allowance would have every visitor's events refused."""
        if self._rate <= 0:
            return
        now = time.monotonic()
        bucket = (key_id, client)
        with self._lock:
            tokens, then = self._buckets.get(bucket, (self._capacity, now))
            tokens = min(self._capacity, tokens + (now - then) * self._rate)
            if tokens < 1.0:
                self._buckets[bucket] = (tokens, now)
                wait = math.ceil((1.0 - tokens) / self._rate)
                sender = f"key {key_id}" + (f" from {client}" if client else "")
                raise RateLimited(f"{sender} sent more than {self._rate:g} requests a second; retry in {wait} s",
                                  retry_after=wait)
            self._buckets[bucket] = (tokens - 1.0, now)
            if len(self._buckets) >= self._sweep_at:
                self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Drop the buckets that have filled up again (a client gone quiet for two seconds starts full anyway)."""
        refill = self._capacity / self._rate
        self._buckets = {bucket: state for bucket, state in self._buckets.items() if now - state[1] < refill}
        self._sweep_at = max(self.SWEEP_AT, 2 * len(self._buckets))  # amortized: busy clients are not rescanned
