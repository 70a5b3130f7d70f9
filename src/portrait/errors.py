"""Domain errors. Each carries a stable machine-readable ``code``; the HTTP layer maps classes to status codes."""

from __future__ import annotations


class PortraitError(Exception):
    """Base of every error Portrait raises on purpose. ``field`` names the input at fault when one is (a form shows
    the message next to it)."""

    code = "error"
    field: str | None = None

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if field is not None:
            self.field = field


class BadRequest(PortraitError):
    """The request as a whole cannot be read (malformed JSON, too large, wrong shape)."""

    code = "bad_request"


class Unauthorized(PortraitError):
    """No key, or a key we do not know."""

    code = "unauthorized"


class Forbidden(PortraitError):
    """A valid key without the scope the request needs."""

    code = "forbidden"


class NotFound(PortraitError):
    """The thing asked for does not exist."""

    code = "not_found"


class Gone(PortraitError):
    """The thing asked for was there and is no longer (a file removed behind the server's back)."""

    code = "gone"


class DatabaseInUse(PortraitError):
    """The embedded database is held by another process (normally a running server)."""

    code = "database_in_use"


class Conflict(PortraitError):
    """The thing exists already, or is busy (a sync running)."""

    code = "conflict"


class StorageUnavailable(PortraitError):
    """The database's disk refuses writes (full, over quota, read-only): nothing of the operation was written, and
    the same operation succeeds once there is room."""

    code = "storage_unavailable"


class DatabaseDamaged(PortraitError):
    """The database file cannot be read: DuckDB found a damaged block (its checksum does not match: a failing disk,
    a bad copy) or the file gave an I/O error. Retrying does not help; restoring a backup does."""

    code = "database_damaged"


class SourceUnavailable(PortraitError):
    """A source database cannot be reached, or refused the query."""

    code = "source_failed"


class Interrupted(PortraitError):
    """Long work (a sync, a rebuild) stopped part-way because the server is stopping; it is safe to run again."""

    code = "interrupted"


class SyncInterrupted(Interrupted):
    """A source sync stopped part-way because the server is stopping; the next sync resumes from its cursor."""

    code = "sync_interrupted"


class RateLimited(PortraitError):
    """A key sent more requests than its rate allows; ``retry_after`` is in seconds."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServerUnreachable(PortraitError):
    """A client (the CLI) could not reach a Portrait server: refused, timed out, not a URL."""

    code = "server_unreachable"
