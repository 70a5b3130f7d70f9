"""Import jobs (:mod:`portrait.import_jobs`): polled progress, stopping, who may read a job, its folder removed."""

from __future__ import annotations

import threading
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
