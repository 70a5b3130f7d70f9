"""One shape for Portrait's background threads: a daemon that runs a step when told to, or every ``interval``
seconds, until stopped; a step that fails is logged and tried again at the next turn (after a second's pause).
And the one lock shape they need besides plain locks: shared/exclusive."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


class Worker(ABC):
    """Subclasses implement :meth:`step` (segments, privacy requests, source schedules)."""

    def __init__(self, name: str, interval: float) -> None:
        self._interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def notify(self) -> None:
        """Run the next step now rather than at the end of the interval."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @abstractmethod
    def step(self) -> None:
        """One turn of the worker's job."""

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.step()
            except Exception:
                log.exception("%s failed; retrying", self._thread.name)
                self._stop.wait(1.0)


class SharedExclusiveLock:
    """Many holders at once in shared mode, or one in exclusive mode. A thread waiting for exclusive mode goes
    before threads asking for shared mode after it, so a steady stream of shared holders cannot starve it.
    Not reentrant: a thread must not ask for shared mode while it holds either mode."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0  # threads waiting for exclusive mode

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._exclusive and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            with self._changed:
                self._shared -= 1
                if not self._shared:
                    self._changed.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._changed:
            self._waiting += 1
            try:
                self._changed.wait_for(lambda: not self._exclusive and not self._shared)
            finally:
                self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._changed:
                self._exclusive = False
                self._changed.notify_all()
