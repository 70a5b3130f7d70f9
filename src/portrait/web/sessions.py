"""Console sessions: a signed-in key behind an HttpOnly, SameSite=Strict cookie, and a CSRF token per session.

Sessions live in memory (a server restart signs everyone out); the key is checked again on every request, so
revoking it ends its sessions at once.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

COOKIE = "portrait_session"
LIFETIME = 12 * 3600


@dataclass
class ConsoleSession:
    key_id: str
    key_secret: str  # kept in memory only, to authenticate as the key on each request
    csrf: str
    started: float


class SessionStore:
    def __init__(self) -> None:
        self._sessions: dict[str, ConsoleSession] = {}
        self._lock = threading.Lock()

    def open(self, key_id: str, key_secret: str) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[token] = ConsoleSession(key_id, key_secret, secrets.token_urlsafe(24), time.time())
        return token

    def get(self, token: str | None) -> ConsoleSession | None:
        if not token:
            return None
        with self._lock:
            found = self._sessions.get(token)
            if found is not None and time.time() - found.started > LIFETIME:
                del self._sessions[token]
                return None
            return found

    def close(self, token: str | None) -> None:
        with self._lock:
            self._sessions.pop(token or "", None)
