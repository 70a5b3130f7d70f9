"""The queue the server's long jobs wait in -- profile exports (:mod:`portrait.export_jobs`) and file imports
(:mod:`portrait.import_jobs`): at most ``at_once`` run, each in a thread of its own, and the others wait in the
order they came, each with its place in the queue (1: it runs next).

The queue knows jobs by id only; what a job is, and what its status says, is its holder's. The holder's lock guards
both its jobs and this queue -- they change together (a job leaves the queue as its status becomes running) -- so
every method here but :meth:`JobQueue.join` is called holding it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from portrait.errors import Conflict

log = logging.getLogger(__name__)

MOST_UNFINISHED_PER_KEY = 10
"""Jobs of one kind a key may have queued or running at once: past it, its next is refused (409). Without a bound
one key -- a read key's script in a loop -- could queue any number, each waiting job holding its upload on disk (an
import) and every other key's jobs waiting behind them all."""


def refuse_past_the_most_unfinished(unfinished: int, kind: str, then: str) -> None:
    """409 ``too_many_<kind>s`` when a key already has ``unfinished`` (queued or running) jobs of ``kind``, the most
    it may; ``then`` says what to do."""
    if unfinished >= MOST_UNFINISHED_PER_KEY:
        raise Conflict(f"this key has {unfinished} {kind}s queued or running, the most a key may have at once: {then}",
                       code=f"too_many_{kind}s")


@dataclass(frozen=True)
class _Waiting:
    begin: Callable[[], None]  # called holding the lock as the job leaves the queue: the holder marks it running
    run: Callable[[], None]  # the job, in its thread; it records its own end (and never raises)


class JobQueue:
    def __init__(self, kind: str, at_once: int, lock: threading.Lock) -> None:
        self._kind = kind  # names the threads: portrait-export-<id>, portrait-import-<id>
        self._at_once = max(1, at_once)
        self._lock = lock
        self._order: deque[str] = deque()
        self._waiting: dict[str, _Waiting] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._stopping = threading.Event()

    @property
    def stopping(self) -> bool:
        """Set by :meth:`stop` (the server stopping): running jobs read it to end early, and none starts."""
        return self._stopping.is_set()

    def add(self, job_id: str, begin: Callable[[], None], run: Callable[[], None]) -> None:
        """Queue a job, started at once if fewer than ``at_once`` run."""
        self._order.append(job_id)
        self._waiting[job_id] = _Waiting(begin, run)
        self._start_next()

    def place(self, job_id: str) -> int | None:
        """The job's place while it waits (1: it runs next); None once it runs or ran."""
        return self._order.index(job_id) + 1 if job_id in self._waiting else None

    def take(self, job_id: str) -> bool:
        """Take a waiting job out of the queue, never to start (cancelled); False if it is not waiting."""
        if self._waiting.pop(job_id, None) is None:
            return False
        self._order.remove(job_id)
        return True

    def stop(self) -> list[str]:
        """The server is stopping: nothing more starts; the ids of the jobs that waited, taken out of the queue."""
        self._stopping.set()
        waited = list(self._order)
        self._order.clear()
        self._waiting.clear()
        return waited

    def open(self) -> None:
        """The server is starting (again: an app's lifespan can run more than once, as a test client's does)."""
        self._stopping.clear()
        self._start_next()

    def join(self, timeout: float) -> None:
        """Wait for the running jobs' threads to end, ``timeout`` seconds at most in all; called without the lock
        (a job's end takes it)."""
        with self._lock:
            threads = list(self._threads.values())
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def ended(self, job_id: str) -> None:
        """The job has ended: its place goes to the next waiting. Called by the holder as it records the end, in the
        same hold of the lock, so that no poller sees a job done while the next still waits in place 1 (the job's
        thread calls it again on its way out, in case the holder did not get there)."""
        if self._threads.pop(job_id, None) is not None:
            self._start_next()

    def _start_next(self) -> None:
        while self._order and len(self._threads) < self._at_once and not self._stopping.is_set():
            job_id = self._order[0]
            waiting = self._waiting[job_id]
            thread = threading.Thread(target=self._run, args=(job_id, waiting.run),
                                      name=f"portrait-{self._kind}-{job_id[:8]}", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # "can't start new thread": it waits, first in line, for the next job's end
                log.exception("could not start a thread for %s %s: it waits for the next job to end", self._kind,
                              job_id)
                return
            # Marked running once its thread is there (else it read "running" for good, holding a place); the
            # thread cannot get ahead of it: whatever it records of its end waits for the lock held here.
            self._order.popleft()
            del self._waiting[job_id]
            self._threads[job_id] = thread
            waiting.begin()

    def _run(self, job_id: str, run: Callable[[], None]) -> None:
        try:
            run()
        finally:
            with self._lock:
                self.ended(job_id)
