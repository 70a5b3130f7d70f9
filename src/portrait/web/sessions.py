"""Console sessions: a signed-in key behind an HttpOnly, SameSite=Strict cookie, and a CSRF token per session.

Sessions live in memory (a server restart signs everyone out); the key is checked again on every request, so
revoking it ends its sessions at once. Bounded for a server that runs for months: a session is forgotten once
expired even if its browser never comes back (closed for good, cookies cleared, a script signing in on every run),
and past ``MAX_SESSIONS`` the oldest ones are signed out first.
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
    MAX_SESSIONS = 10_000  # sessions held at once; more sign-ins sign the oldest sessions out

    def __init__(self) -> None:
        # In the order they were opened (oldest first), so the expired and the oldest are found at the front.
        self._sessions: dict[str, ConsoleSession] = {}
        self._lock = threading.Lock()

    def open(self, key_id: str, key_secret: str) -> str:
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            self._forget_expired(now)
            while len(self._sessions) >= self.MAX_SESSIONS:
                del self._sessions[next(iter(self._sessions))]
            self._sessions[token] = ConsoleSession(key_id, key_secret, secrets.token_urlsafe(24), now)
        return token

    def _forget_expired(self, now: float) -> None:
        """Drop the expired sessions at the front (the oldest): only as many steps as there are expired ones."""
        while self._sessions:
            oldest = next(iter(self._sessions))
            if now - self._sessions[oldest].started <= LIFETIME:
                return
            del self._sessions[oldest]

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
