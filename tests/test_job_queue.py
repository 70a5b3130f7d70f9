"""The queue exports and imports wait in (portrait.job_queue), driven directly with real threads: each job blocks on
an event the test sets, so which jobs run at a time is known exactly, without sleeps."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from portrait.job_queue import JobQueue


class Jobs:
    """Jobs that record when they begin and wait to be let go."""

    def __init__(self, at_once: int) -> None:
        self.lock = threading.Lock()
        self.queue = JobQueue("test", at_once, self.lock)
        self.begun: list[str] = []
        self.release: dict[str, threading.Event] = {}
        self.ended: dict[str, threading.Event] = {}
        self.started: dict[str, threading.Event] = {}

    def add(self, job_id: str) -> None:
        self.release[job_id], self.ended[job_id], self.started[job_id] = (threading.Event(), threading.Event(),
                                                                           threading.Event())
        with self.lock:
            self.queue.add(job_id, lambda: self._begin(job_id), self._job(job_id))

    def _begin(self, job_id: str) -> None:  # called holding the lock, by the thread that starts the job
        self.begun.append(job_id)
        self.started[job_id].set()

    def _job(self, job_id: str) -> Callable[[], None]:
        def run() -> None:
            assert threading.current_thread().name == f"portrait-test-{job_id[:8]}"
            self.release[job_id].wait(30)
            self.ended[job_id].set()
        return run

    def places(self, *job_ids: str) -> list[int | None]:
        with self.lock:
            return [self.queue.place(job_id) for job_id in job_ids]



def test_at_most_at_once_run_and_the_others_wait_in_order_with_their_place() -> None:
    jobs = Jobs(at_once=2)
    for job_id in ("a", "b", "c", "d"):
        jobs.add(job_id)
    assert jobs.begun == ["a", "b"]
    assert jobs.places("a", "b", "c", "d") == [None, None, 1, 2]
    jobs.release["a"].set()
    assert jobs.started["c"].wait(30)
    assert jobs.begun == ["a", "b", "c"]
    assert jobs.places("c", "d") == [None, 1]
    for job_id in ("b", "c", "d"):
        jobs.release[job_id].set()
    assert jobs.started["d"].wait(30)
    jobs.queue.join(30)
    assert all(event.is_set() for event in jobs.ended.values())


def test_a_job_taken_out_never_starts_and_the_rest_move_up() -> None:
    jobs = Jobs(at_once=1)
    for job_id in ("a", "b", "c"):
        jobs.add(job_id)
    with jobs.lock:
        assert jobs.queue.take("b")
        assert not jobs.queue.take("b")  # no longer waiting
        assert not jobs.queue.take("a")  # running: not the queue's to take
    assert jobs.places("c") == [1]
    jobs.release["a"].set()
    assert jobs.started["c"].wait(30)
    assert jobs.begun == ["a", "c"]
    jobs.release["c"].set()
    jobs.queue.join(30)
    assert not jobs.ended["b"].is_set()


def test_stop_hands_back_the_waiting_and_starts_nothing_until_opened_again() -> None:
    jobs = Jobs(at_once=1)
    for job_id in ("a", "b", "c"):
        jobs.add(job_id)
    with jobs.lock:
        assert jobs.queue.stop() == ["b", "c"]
    assert jobs.queue.stopping
    jobs.release["a"].set()
    jobs.queue.join(30)
    assert jobs.ended["a"].is_set() and jobs.begun == ["a"]
    jobs.add("d")  # queued, not started, while stopping
    assert jobs.begun == ["a"] and jobs.places("d") == [1]
    with jobs.lock:
        jobs.queue.open()
    assert not jobs.queue.stopping
    assert jobs.begun == ["a", "d"]
    jobs.release["d"].set()
    jobs.queue.join(30)
    assert jobs.ended["d"].is_set()


def test_a_job_that_says_it_ended_hands_its_place_on_in_the_same_hold_of_the_lock() -> None:
    """A holder records a job's end and calls ended() in one hold of the lock: no poller sees the job done while
    the next still waits in place 1."""
    lock = threading.Lock()
    queue = JobQueue("test", 1, lock)
    begun: list[str] = []
    seen_at_the_end: list[list[str]] = []
    ended = threading.Event()

    def first() -> None:
        with lock:
            queue.ended("a")
            seen_at_the_end.append(list(begun))
        ended.set()

    with lock:
        queue.add("a", lambda: begun.append("a"), first)
        queue.add("b", lambda: begun.append("b"), lambda: None)
    assert ended.wait(30)
    queue.join(30)
    assert seen_at_the_end == [["a", "b"]]


def test_a_job_whose_thread_cannot_start_waits_first_in_line_instead_of_reading_running(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of threads ("can't start new thread"), the job was marked running, never ran, and held its place for
    good; it now waits, first in line, and starts with the next chance."""
    real_start = threading.Thread.start
    refused: list[str] = []

    def refusing_once(thread: threading.Thread) -> None:
        if not refused:
            refused.append(thread.name)
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", refusing_once)
    jobs = Jobs(at_once=1)
    jobs.add("a")
    assert refused == ["portrait-test-a"] and jobs.begun == [] and jobs.places("a") == [1]
    jobs.add("b")  # the next chance: "a" starts, first in line
    assert jobs.begun == ["a"] and jobs.places("a", "b") == [None, 1]
    jobs.release["a"].set()
    assert jobs.started["b"].wait(30)
    jobs.release["b"].set()
    jobs.queue.join(30)
    assert jobs.ended["a"].is_set() and jobs.ended["b"].is_set()
