"""Import jobs (:mod:`portrait.import_jobs`): polled progress, stopping, who may read a job, its folder removed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import ADMIN_KEY, WRITE_KEY, start_server

from portrait.api.errors import status_of
from portrait.config import Settings
from portrait.errors import Conflict, Interrupted, NotFound, StorageUnavailable
from portrait.files import ReadProgress
from portrait.import_jobs import ImportJob, ImportJobs
from portrait.job_queue import MOST_UNFINISHED_PER_KEY
from portrait.service import ImportReport, Portrait


@pytest.fixture
def portrait(tmp_path: Path) -> Iterator[Portrait]:
    service = Portrait(Settings(db_path=str(tmp_path / "jobs.duckdb"), write_key=WRITE_KEY, admin_key=ADMIN_KEY),
                       background=False)
    yield service
    service.close()


def _jobs(portrait: Portrait, at_once: int = 1) -> ImportJobs:
    return ImportJobs(portrait.import_records, at_once, status_of)


def _until_stopped(started: threading.Event) -> Callable[[Callable[[ReadProgress], None], Callable[[], bool]],
                                                          ImportReport]:
    """An importer that reports one chunk, then imports chunk after chunk until it is asked to stop, as
    :meth:`Portrait.import_file` does."""
    def run(on_progress: Callable[[ReadProgress], None], stop: Callable[[], bool]) -> ImportReport:
        on_progress(ReadProgress(100, rows=10, rows_total=30))
        started.set()
        while not stop():
            threading.Event().wait(0.01)
        raise Interrupted("the import of x.csv stopped after 10 rows")
    return run


def _finished(job: ImportJob) -> ImportJob:
    for _ in range(1000):
        if job.status not in ("queued", "running"):
            return job
        threading.Event().wait(0.01)
    raise AssertionError(f"job {job.id} did not end")


def test_a_job_asked_to_stop_ends_interrupted_and_removes_its_upload(tmp_path: Path, portrait: Portrait) -> None:
    jobs, started = _jobs(portrait), threading.Event()
    folder = tmp_path / "upload"
    folder.mkdir()
    job = jobs.start("key-a", "x.csv", 100, False, _until_stopped(started), folder)
    assert started.wait(10)
    assert job.as_dict()["progress"] == {"rows": 10, "rows_total": 30, "bytes_read": None, "bytes_total": 100}
    with pytest.raises(NotFound):  # another key's job is not there for it
        jobs.stop(job.id, "key-b")
    assert jobs.get(job.id, "key-a").status == "running"
    jobs.stop(job.id, "key-a")
    assert _finished(job).status == "failed"
    assert job.as_dict()["error"] == {"code": "interrupted", "message": "the import of x.csv stopped after 10 rows",
                                      "status": 503}
    assert not folder.exists()
    jobs.close()


def test_closing_stops_the_running_jobs_before_the_store_closes(tmp_path: Path, portrait: Portrait) -> None:
    jobs, started = _jobs(portrait), threading.Event()
    job = jobs.start("key-a", "x.csv", 100, False, _until_stopped(started), tmp_path)
    assert started.wait(10)
    jobs.close(timeout=10)  # returns once the job has ended, not merely asked it to
    assert job.status == "failed" and job.finished is not None


def test_a_key_past_the_most_unfinished_imports_is_refused_its_upload_removed(tmp_path: Path,
                                                                              portrait: Portrait) -> None:
    """One key could queue any number of imports, each holding its upload on disk and every other key's imports
    waiting behind them all: past MOST_UNFINISHED_PER_KEY queued or running, its next is refused (409), nothing
    recorded and its upload removed, until one ends; another key's are not."""
    jobs, started = _jobs(portrait), threading.Event()

    def upload(name: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        return folder

    kept = [jobs.start("key-a", "x.csv", 100, False, _until_stopped(started), upload(f"a{n}"))
            for n in range(MOST_UNFINISHED_PER_KEY)]
    assert started.wait(10) and [job.status for job in kept] == ["running"] + ["queued"] * (len(kept) - 1)
    with pytest.raises(Conflict) as refused:
        jobs.start("key-a", "x.csv", 100, False, _until_stopped(started), upload("past"))
    assert refused.value.code == "too_many_imports" and status_of(refused.value) == 409
    assert refused.value.message.startswith(f"this key has {MOST_UNFINISHED_PER_KEY} imports queued or running")
    assert not (tmp_path / "past").exists()
    assert len(portrait.import_records.unfinished()) == MOST_UNFINISHED_PER_KEY  # the refused one not recorded
    other = jobs.start("key-b", "y.csv", 100, False, _until_stopped(started), upload("b"))
    assert other.status == "queued"
    jobs.stop(kept[-1].id, "key-a")  # a queued one cancelled: room for one more
    again = jobs.start("key-a", "x.csv", 100, False, _until_stopped(started), upload("again"))
    assert again.status == "queued"
    jobs.close(timeout=10)
    assert all(job.status == "failed" for job in (*kept, other, again))


def test_an_import_the_store_refuses_as_old_jobs_are_forgotten_leaves_nothing_behind(
        tmp_path: Path, portrait: Portrait, monkeypatch: pytest.MonkeyPatch) -> None:
    """Queuing a job first forgets the old ones, a write to the store. Refused (a full disk), the job was already
    recorded and counted: it stayed queued for good, never started, its upload kept, and after
    MOST_UNFINISHED_PER_KEY such refusals the key was refused every import (too_many_imports) until a restart."""
    jobs = _jobs(portrait)

    def disk_full(kept: timedelta, most: int) -> None:  # what a store on a full disk answers (StorageUnavailable)
        raise StorageUnavailable("the disk holding the database is full")

    monkeypatch.setattr(portrait.import_records, "forget_old", disk_full)
    for attempt in range(MOST_UNFINISHED_PER_KEY + 1):
        upload = tmp_path / f"refused{attempt}"
        upload.mkdir()
        with pytest.raises(StorageUnavailable):
            jobs.start("key-a", "x.csv", 5, False, lambda on_progress, stop: ImportReport(rows=1), upload)
        assert not upload.exists()
    assert portrait.import_records.unfinished() == []  # nothing recorded as queued, to be reported interrupted
    monkeypatch.undo()  # room on the disk again: the key's next import runs
    (tmp_path / "kept").mkdir()
    job = _finished(jobs.start("key-a", "x.csv", 5, False, lambda on_progress, stop: ImportReport(rows=1),
                               tmp_path / "kept"))
    assert job.status == "done", job.error
    jobs.close(timeout=10)


def test_an_import_sent_as_the_server_stops_is_refused_and_its_upload_removed(tmp_path: Path,
                                                                              portrait: Portrait) -> None:
    """It was queued and recorded, never to start, and reported interrupted only at the next start; exports were
    refused so already."""
    jobs = _jobs(portrait)
    jobs.close()
    folder = tmp_path / "upload"
    folder.mkdir()
    with pytest.raises(Conflict) as refused:
        jobs.start("key-a", "x.csv", 100, False, lambda on_progress, stop: ImportReport(rows=1), folder)
    assert refused.value.code == "server_stopping" and status_of(refused.value) == 409
    assert "nothing of x.csv was imported" in refused.value.message
    assert not folder.exists() and portrait.import_records.unfinished() == []
    jobs.open()  # started again (an app's lifespan run again): taken as before
    folder.mkdir()
    job = jobs.start("key-a", "x.csv", 5, True, lambda on_progress, stop: ImportReport(rows=3, stored=3), folder)
    assert _finished(job).status == "done"
    jobs.close()


def test_a_finished_job_keeps_its_report(tmp_path: Path, portrait: Portrait) -> None:
    jobs = _jobs(portrait)
    job = jobs.start("key-a", "x.csv", 5, True, lambda on_progress, stop: ImportReport(rows=3, stored=3), tmp_path)
    assert _finished(job).status == "done"
    assert jobs.stop(job.id, "key-a").status == "done"  # too late to stop: left as it is
    assert jobs.get(job.id, "key-a").as_dict()["report"]["stored"] == 3
    jobs.close()


def test_an_upload_refused_for_its_name_leaves_no_folder_behind(tmp_path: Path) -> None:
    """A file name the server refuses (a control character) is refused before a folder is made for the upload:
    each such request left an empty ``portrait-import-*`` folder in the server's temporary directory."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    server = start_server(str(tmp_path / "s.duckdb"), tmp_path / "s.log", {"TMPDIR": str(temporary)})
    try:
        with server.admin() as api:
            for prefer in ({}, {"Prefer": "respond-async"}):
                refused = api.post("/api/imports", params={"filename": "a\x01b.csv"}, content=b"x", headers=prefer)
                assert refused.status_code == 400 and refused.json()["code"] == "invalid_request"
    finally:
        server.stop()
    assert list(temporary.iterdir()) == []


def _big_csv(path: Path, rows: int) -> Path:
    """A CSV of ``rows`` orders, ~64 bytes a row: its first pass (the column types) takes ~0.8 s per 1.5M rows."""
    with path.open("w") as out:
        out.write("cust,total,note,day\n")
        out.writelines(f"c{n},{n}.5,some words about order {n} here,2024-01-{n % 28 + 1:02d}\n"
                       for n in range(rows))
    return path


def test_a_cancel_during_the_pass_that_settles_a_csvs_column_types_ends_it_there(tmp_path: Path) -> None:
    """Before its first row is imported a CSV is read through (its column types, numbers kept as text, the notes):
    a second or more per 100 MB. A cancel then used to wait for those passes and for the first chunk to be stored;
    it now ends the job within a block (4 MB), nothing stored."""
    source = _big_csv(tmp_path / "orders.csv", 1_500_000)
    server = start_server(str(tmp_path / "s.duckdb"), tmp_path / "s.log")
    try:
        with server.admin() as api, source.open("rb") as body:
            started = api.post("/api/imports", params={"filename": source.name, "user_id": "cust",
                                                       "event": "Order"},
                               content=body, headers={"Prefer": "respond-async"}, timeout=60)
            assert started.status_code == 202, started.text
            asked = time.monotonic()
            assert api.delete(started.headers["location"]).status_code == 200
            job = started.json()
            while job["status"] == "running":
                job = api.get(started.headers["location"]).json()
            print(f"cancel took effect {time.monotonic() - asked:.2f} s after it was asked")
            assert job["status"] == "failed" and job["error"]["code"] == "interrupted", job
            assert "stopped before its first row was imported" in job["error"]["message"], job
            assert job["progress"]["rows"] == 0, job
            assert api.get("/api/status").json()["events_received"] == 0
    finally:
        server.stop()
    assert "Traceback" not in server.log_path.read_text()


AS_JOB = {"Prefer": "respond-async"}
ORDERS = {"user_id": "cust", "event": "Order"}


def _send(api: httpx.Client, source: Path, **params: str) -> dict[str, Any]:
    with source.open("rb") as body:
        started = api.post("/api/imports", params={"filename": source.name, **ORDERS, **params}, content=body,
                           headers=AS_JOB, timeout=60)
    assert started.status_code == 202, started.text
    return dict(started.json())


def _poll_until(api: httpx.Client, job_id: str, done: Callable[[dict[str, Any]], bool],
                timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = api.get(f"/api/imports/{job_id}").json()
        if done(job):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def _ended(job: dict[str, Any]) -> bool:
    return job["status"] not in ("queued", "running")


def test_an_import_cut_off_by_a_killed_server_is_reported_after_the_restart_and_importing_again_stores_no_row_twice(
        tmp_path: Path) -> None:
    """The server is killed (kill -9) during an import: started again on the same database, it answers for the job
    -- interrupted, the rows imported and stored before its last record of progress, what to do -- where it
    answered 404, and importing the file again stores only the rows that were not stored."""
    source = _big_csv(tmp_path / "orders.csv", 200_000)
    db, uploads = str(tmp_path / "s.duckdb"), tmp_path / "tmp"
    uploads.mkdir()
    environment = {"TMPDIR": str(uploads)}
    server = start_server(db, tmp_path / "s.log", environment)
    try:
        with server.admin() as api:
            job = _send(api, source)
            running = _poll_until(api, job["id"], lambda j: j["progress"]["rows"] >= 20_000 or _ended(j))
            assert running["status"] == "running", running
        server.stop(kill=True)
        server = start_server(db, tmp_path / "s.log", environment)
        with server.admin() as api:
            answer = api.get(f"/api/imports/{job['id']}")
            assert answer.status_code == 200, answer.text
            after = answer.json()
            assert after["status"] == "failed" and after["error"]["code"] == "interrupted", after
            rows = after["progress"]["rows"]
            assert rows >= running["progress"]["rows"] and after["stored"] == rows, after  # each row a new event
            assert after["progress"]["rows_total"] == 200_000
            message = after["error"]["message"]
            assert f"{rows:,} of 200,000 rows had been imported ({rows:,} of them stored)" in message, message
            assert "Import the file again with the same options" in message and "not stored twice" in message
            assert list(uploads.iterdir()) == []  # the killed job's upload went with it
            before = api.get("/api/status").json()["events_received"]
            assert before >= rows  # a chunk committed after the last record of progress is in the log too
            with source.open("rb") as body:
                again = api.post("/api/imports", params={"filename": source.name, **ORDERS}, content=body,
                                 timeout=300).json()
            assert again["duplicates"] == before and again["stored"] == 200_000 - before, again
            assert api.get("/api/status").json()["events_received"] == 200_000
    finally:
        server.stop()


def test_a_server_stopped_during_imports_records_them_and_keeps_a_finished_one_across_the_restart(
        tmp_path: Path) -> None:
    """Stopped the ordinary way (SIGTERM), the server ends the running import after its chunk and the queued one
    before it starts, and records both; a job finished before the stop is still there, with its report."""
    environment = {"PORTRAIT_IMPORTS_AT_ONCE": "1"}
    small = tmp_path / "small.csv"
    small.write_text("cust,total\n" + "".join(f"s{n},{n}\n" for n in range(50)) + "bad-row,1,2\n")
    source = _big_csv(tmp_path / "orders.csv", 300_000)
    db = str(tmp_path / "s.duckdb")
    server = start_server(db, tmp_path / "s.log", environment)
    try:
        with server.admin() as api:
            finished = _poll_until(api, _send(api, small)["id"], _ended)
            assert finished["status"] == "done" and finished["report"]["rejected"] == 1, finished
            running = _send(api, source)
            queued = _send(api, source, dry_run="true")
            assert queued["status"] == "queued" and queued["queue_place"] == 1, queued
            _poll_until(api, running["id"], lambda j: j["progress"]["rows"] >= 10_000 or _ended(j))
        server.stop()
        server = start_server(db, tmp_path / "s.log", environment)
        with server.admin() as api:
            stopped = api.get(f"/api/imports/{running['id']}").json()
            assert stopped["status"] == "failed" and stopped["error"]["code"] == "interrupted", stopped
            assert stopped["error"]["status"] == 503 and stopped["progress"]["rows"] >= 10_000
            assert f"stopped after {stopped['progress']['rows']:,} rows" in stopped["error"]["message"], stopped
            never = api.get(f"/api/imports/{queued['id']}").json()
            assert never["status"] == "failed" and never["progress"]["rows"] == 0, never
            assert "stopped before the import of orders.csv started: nothing was stored" in never["error"]["message"]
            kept = api.get(f"/api/imports/{finished['id']}").json()
            assert kept["status"] == "done" and "error" not in kept, kept
            assert {k: v for k, v in kept["report"].items() if k != "first_rejected"} == {
                k: v for k, v in finished["report"].items() if k != "first_rejected"}
            assert kept["report"]["first_rejected"] == []  # the file's rows as sent are not kept in the store
            other = api.post("/api/keys", json={"kind": "admin", "name": "other"}).json()["key"]
            assert httpx.get(f"{server.url}/api/imports/{finished['id']}",
                             headers={"Authorization": f"Bearer {other}"}).status_code == 404
    finally:
        server.stop()


def test_imports_beyond_the_setting_wait_in_a_queue_and_a_queued_one_can_be_cancelled(tmp_path: Path) -> None:
    """PORTRAIT_IMPORTS_AT_ONCE=1: the second and third imports wait, with their place; cancelling one that waits
    ends it at once, its upload removed, and the one behind it moves up; each runs once the one before has ended."""
    source = _big_csv(tmp_path / "orders.csv", 300_000)
    small = tmp_path / "small.csv"
    small.write_text("cust,total\n" + "".join(f"s{n},{n}\n" for n in range(50)))
    uploads = tmp_path / "tmp"
    uploads.mkdir()
    server = start_server(str(tmp_path / "s.duckdb"), tmp_path / "s.log",
                          {"TMPDIR": str(uploads), "PORTRAIT_IMPORTS_AT_ONCE": "1"})
    try:
        with server.admin() as api:
            first = _send(api, source, dry_run="true")
            second, third = _send(api, small), _send(api, small, dry_run="true")
            assert [j["status"] for j in (first, second, third)] == ["running", "queued", "queued"]
            assert (second["queue_place"], third["queue_place"]) == (1, 2)
            assert second["seconds"] == 0 and second["progress"]["rows"] == 0
            assert len(list(uploads.iterdir())) == 3
            cancelled = api.delete(f"/api/imports/{second['id']}").json()
            assert cancelled["status"] == "failed" and cancelled["error"]["code"] == "interrupted", cancelled
            assert "cancelled before it started: nothing was stored" in cancelled["error"]["message"]
            assert api.get(f"/api/imports/{third['id']}").json()["queue_place"] == 1
            assert len(list(uploads.iterdir())) == 2
            seen: list[tuple[str, str]] = []
            while True:
                # The third read first: seen running, and the first seen running after that, the first was running
                # then too (it ran from before, and a job never runs again) -- two at once. Read the other way
                # round, the first could end and the third start between the two reads.
                states = [api.get(f"/api/imports/{j['id']}").json() for j in (third, first)][::-1]
                seen.append((states[0]["status"], states[1]["status"]))
                if all(map(_ended, states)):
                    break
                time.sleep(0.05)
            assert ("running", "running") not in seen, seen  # one at a time
            assert states[0]["status"] == states[1]["status"] == "done", states
            assert states[1]["report"]["rows"] == 50
            assert api.get("/api/status").json()["events_received"] == 0  # the cancelled one stored nothing
            assert list(uploads.iterdir()) == []
    finally:
        server.stop()
    assert "Traceback" not in server.log_path.read_text()


def test_a_finished_jobs_record_outlives_a_restart_for_its_hour_only(tmp_path: Path, portrait: Portrait,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The record a new server (a new ImportJobs on the same store) reads back, until its hour is over: then it
    is neither shown nor kept (its report may hold values of the file: the notes' first misfit)."""
    jobs = _jobs(portrait)
    job = jobs.start("key-a", "x.csv", 5, False, lambda on_progress, stop: ImportReport(rows=3, stored=3), tmp_path)
    assert _finished(job).status == "done"
    jobs.close()
    restarted = _jobs(portrait).get(job.id, "key-a")
    assert (restarted.status, restarted.as_dict()["report"]["stored"]) == ("done", 3)
    with pytest.raises(NotFound):
        _jobs(portrait).get(job.id, "key-b")
    monkeypatch.setattr("portrait.import_jobs.KEPT_SECONDS", 0.0)
    assert portrait.import_records.get(job.id) is not None
    with pytest.raises(NotFound):
        _jobs(portrait).get(job.id, "key-a")
    assert portrait.import_records.get(job.id) is None  # deleted as the new server started
