"""One Settings object, read once from ``PORTRAIT_*`` environment variables and passed down.

Every setting is documented in docs/settings.md; a test checks that the two agree.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import phonenumbers

DEFAULT_BLOCKED_VALUES = ("null", "undefined", "none", "nil", "0", "-1", "test@test.com", "test@example.com", "unknown")
DEFAULT_PRIORITY = ("user_id", "email", "phone")
# The whole-number settings for which 0 means something (docs/settings.md says what); every other one is at least 1
# (the port has its own range): 0 there would start a server that refuses every batch or never lets a body arrive.
ZERO_MEANS = {"retention_days": "keep events forever", "rate_limit": "no limit",
              "processor_interval_ms": "process every commit at once", "ingest_pending_mb": "no bound",
              "memory_limit_mb": "the database's default", "backup_hours": "only when asked",
              "backup_keep": "keep all"}


@dataclass(frozen=True)
class Settings:
    """Runtime settings. Field docs are the source of docs/settings.md."""

    db_path: str = "portrait.duckdb"
    """Path of the embedded DuckDB database file."""
    host: str = "127.0.0.1"
    """Address the server listens on."""
    port: int = 8000
    """Port the server listens on."""
    write_key: str | None = field(default=None, repr=False)  # a secret: never in a printed Settings
    """Ingestion write key set at start (otherwise one is generated once and printed)."""
    admin_key: str | None = field(default=None, repr=False)  # a secret: never in a printed Settings
    """Admin API key set at start (otherwise one is generated once and printed)."""
    encryption_key: str | None = field(default=None, repr=False)  # a secret: never in a printed Settings
    """Encrypts the database file (and its write-ahead log) at rest; every start needs the same key."""
    previous_encryption_key: str | None = field(default=None, repr=False)  # a secret: never in a printed Settings
    """The key before a key change: `portrait encrypt` re-encrypts from it, `portrait restore` reads backups with it."""
    max_message_bytes: int = 32 * 1024
    """Largest single message accepted, after decompression."""
    max_batch_bytes: int = 500 * 1024
    """Largest request body accepted, after decompression."""
    max_batch_items: int = 2500
    """Most messages accepted in one batch."""
    max_json_depth: int = 20
    """Deepest nesting accepted inside a message's properties, traits or context."""
    max_object_keys: int = 1000
    """Most keys of one object (or items of one list) inside a message."""
    max_string_length: int = 16384
    """Longest string value accepted inside a message, in characters."""
    retention_days: int = 0
    """Raw events older than this many days are deleted (hourly) once applied to profiles; 0 keeps them forever."""
    rate_limit: int = 1000
    """Requests per second allowed per key, per client address for write keys (bursts of twice that); 0: no limit."""
    default_phone_region: str = "US"
    """Region used to read phone numbers written without a +country prefix (ISO 3166 alpha-2)."""
    identity_traits: tuple[str, ...] = ("loyalty_card", "crm_id", "device_id")
    """Trait names whose values are identifiers of their own type (e.g. loyalty_card)."""
    identity_priority: tuple[str, ...] = DEFAULT_PRIORITY
    """Identifier types from most to least trusted; unlisted types follow, anonymous_id always last."""
    identity_limits: Mapping[str, int] = field(default_factory=lambda: {"user_id": 1})
    """Most identifiers of one type per profile, as type=N pairs; types not listed use identity_default_limit."""
    identity_default_limit: int = 5
    """Most identifiers of a type per profile where identity_limits names no other number."""
    blocked_values: tuple[str, ...] = DEFAULT_BLOCKED_VALUES
    """Identifier values never used for matching (compared case-insensitively after trimming)."""
    processor_batch_size: int = 20000
    """Most events the processor takes in one micro-batch while it keeps up."""
    processor_max_batch_size: int = 100000
    """Most events in one micro-batch while the processor is behind (batches double from processor_batch_size)."""
    processor_interval_ms: int = 200
    """Shortest time between the starts of two processor batches while it is caught up (each batch has a fixed cost)."""
    commit_max_events: int = 20000
    """Most events the ingest writer groups into one commit."""
    ingest_pending_mb: int = 32
    """Most megabytes of ingestion bodies in progress (read, checked, awaiting commit); past it: 503, 0: no bound."""
    body_timeout_seconds: int = 30
    """Longest time an ingestion request's body may take to arrive; a slower one is answered 408 and closed."""
    dedup_window_hours: int = 168
    """How long live traffic's messageIds are remembered for the duplicate check (imports check the whole log)."""
    dedup_max_ids: int = 5_000_000
    """Most messageIds remembered for the duplicate check (about 135-160 bytes of memory each: ~760 MB for 5M);
    the oldest go first."""
    checkpoint_wal_mb: int = 256
    """Size of the write-ahead log at which it is written into the database file (bigger: fewer checkpoints)."""
    memory_limit_mb: int = 0
    """Most memory the database may use in MB (its cache, query work; large queries spill to disk); 0: 80% of RAM."""
    trusted_proxies: tuple[str, ...] = ("127.0.0.1",)
    """Reverse proxies (addresses or networks) whose X-Forwarded-For/-Proto are believed; empty: none."""
    cors_origins: tuple[str, ...] = ("*",)
    """Origins allowed to call the ingestion endpoints from a browser."""
    unknown_traits: str = "infer"
    """What happens to a trait no attribute describes: infer (create a custom attribute) or strict (not applied)."""
    segment_recount_seconds: int = 300
    """How often every segment is recounted in full (for conditions that change with time alone)."""
    source_poll_seconds: int = 5
    """How often the server looks for SQL sources due for a scheduled sync."""
    source_chunk_rows: int = 5000
    """Rows a source sync reads and commits at a time (its cursor is saved after each chunk)."""
    backup_dir: str | None = None
    """Folder for backups (made on demand or every backup_hours); unset: a backups folder beside the database."""
    backup_hours: int = 0
    """Make a backup every this many hours while the server runs; 0 makes them only when asked."""
    backup_keep: int = 7
    """How many of the backups Portrait names (<database name>-<time>.duckdb) are kept, newest first; 0 keeps all."""
    imports_at_once: int = 2
    """Import jobs (files sent to the server) that run at the same time; the others wait in a queue, in order."""
    exports_at_once: int = 2
    """Export jobs (POST /api/exports) that run at the same time; the others wait in a queue, in order."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:  # 0: a free port the system picks (the server says which)
            raise ValueError(f"port must be from 0 to 65535, not {self.port}")
        if self.unknown_traits not in ("infer", "strict"):
            raise ValueError(f"unknown_traits must be infer or strict, not {self.unknown_traits!r}")
        for proxy in self.trusted_proxies:
            if proxy != "*":
                try:
                    ipaddress.ip_network(proxy, strict=False)
                except ValueError:  # uvicorn would trust no one for it, silently
                    raise ValueError(f"trusted_proxies: {proxy!r} is not an address or a network (e.g. 10.0.0.0/8)"
                                     ) from None
        region = self.default_phone_region.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:  # phonenumbers would refuse every local number silently
            raise ValueError(f"default_phone_region must be a region code such as US, PL or GB (ISO 3166 alpha-2), "
                             f"not {self.default_phone_region!r}")
        object.__setattr__(self, "default_phone_region", region)  # "pl" is PL: phonenumbers knows upper case only
        if not 1 <= self.max_json_depth <= 100:  # well under spec.CUT_DEPTH, where nesting is cut off when read
            raise ValueError(f"max_json_depth must be from 1 to 100, not {self.max_json_depth}")
        too_low = sorted(kind for kind, limit in self.identity_limits.items() if limit < 1)
        if too_low or self.identity_default_limit < 1:  # a profile holds at least the identifier that made it
            raise ValueError(f"identity limits must be at least 1 (not for {', '.join(too_low) or 'the default'})")
        self._check_whole_numbers()

    def _check_whole_numbers(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "port" or type(value) is not int:
                continue
            if item.name in ZERO_MEANS and value < 0:
                raise ValueError(f"{item.name} must be 0 or more (0: {ZERO_MEANS[item.name]}), not {value}")
            if item.name not in ZERO_MEANS and value < 1:
                raise ValueError(f"{item.name} must be at least 1, not {value}")

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields changed (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _parse(kind: str, raw: str) -> Any:
    if kind == "int":
        return int(raw)
    if kind.startswith("tuple"):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if kind.startswith("Mapping"):
        pairs = (part.split("=", 1) for part in raw.split(",") if "=" in part)
        return {key.strip(): int(value) for key, value in pairs}
    return raw


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from ``PORTRAIT_<FIELD>`` environment variables (comma lists for tuples)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = env.get(f"PORTRAIT_{f.name.upper()}")
        if raw is not None:
            try:
                values[f.name] = _parse(str(f.type), raw)
            except ValueError as exc:
                raise ValueError(f"PORTRAIT_{f.name.upper()}={raw!r} is not a valid {f.type}") from exc
    try:
        return Settings(**values)
    except ValueError as exc:  # a rule across values (a port past 65535): name the variables it is about
        named = [f"PORTRAIT_{name.upper()}={env[f'PORTRAIT_{name.upper()}']}" for name in values
                 if name in str(exc) or name.replace("_", " ") in str(exc)]
        raise ValueError(f"{', '.join(named)}: {exc}" if named else str(exc)) from exc
