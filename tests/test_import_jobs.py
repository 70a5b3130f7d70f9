"""Import jobs (:mod:`portrait.import_jobs`): polled progress, stopping, who may read a job, its folder removed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.conftest import start_server

from portrait.errors import Interrupted, NotFound
from portrait.files import ReadProgress
from portrait.import_jobs import ImportJob, ImportJobs
from portrait.service import ImportReport


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
        if job.status != "running":
            return job
        threading.Event().wait(0.01)
    raise AssertionError(f"job {job.id} did not end")


def test_a_job_asked_to_stop_ends_interrupted_and_removes_its_upload(tmp_path: Path) -> None:
    jobs, started = ImportJobs(), threading.Event()
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
    assert job.as_dict()["error"] == {"code": "interrupted", "message": "the import of x.csv stopped after 10 rows"}
    assert not folder.exists()
    jobs.close()


def test_closing_stops_the_running_jobs_before_the_store_closes(tmp_path: Path) -> None:
    jobs, started = ImportJobs(), threading.Event()
    job = jobs.start("key-a", "x.csv", 100, False, _until_stopped(started), tmp_path)
    assert started.wait(10)
    jobs.close(timeout=10)  # returns once the job has ended, not merely asked it to
    assert job.status == "failed" and job.finished is not None


def test_a_finished_job_keeps_its_report(tmp_path: Path) -> None:
    jobs = ImportJobs()
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
