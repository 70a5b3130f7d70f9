"""API keys: stored as SHA-256 hashes (keys are long random tokens, so a plain hash is enough), checked in memory."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from portrait.errors import Unauthorized
from portrait.spec import utc_now
from portrait.sql import reads
from portrait.store import Session

KINDS = ("write", "admin")


@dataclass(frozen=True)
class ApiKey:
    kind: str
    name: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key(kind: str) -> str:
    prefix = "wk" if kind == "write" else "ak"
    return f"{prefix}_{secrets.token_urlsafe(24)}"


class KeyRing:
    """Known keys by hash. ``ensure`` makes sure a key of each kind exists and returns the ones it generated."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._keys: dict[str, ApiKey] = {}
        self.reload()

    def reload(self) -> None:
        self._keys = {row[0]: ApiKey(row[1], row[2]) for row in self._session.execute(reads.ALL_KEYS)}

    def add(self, key: str, kind: str, name: str) -> None:
        self._session.execute(reads.INSERT_KEY, [hash_key(key), kind, name, utc_now()])
        self.reload()

    def ensure(self, configured: dict[str, str | None]) -> dict[str, str]:
        """Register configured keys; generate (and return, to be shown once) any kind that has none."""
        generated: dict[str, str] = {}
        for kind in KINDS:
            key = configured.get(kind)
            if key:
                self.add(key, kind, "default")
            elif not any(k.kind == kind for k in self._keys.values()):
                generated[kind] = new_key(kind)
                self.add(generated[kind], kind, "default")
        return generated

    def check(self, key: str | None, kind: str) -> ApiKey:
        if not key:
            raise Unauthorized(f"a {kind} key is required")
        # Comparing hashes by dict lookup leaks nothing useful about the key itself.
        api_key = self._keys.get(hash_key(key))
        if api_key is None or api_key.kind != kind:
            raise Unauthorized(f"unknown {kind} key")
        return api_key
