"""Profile exports as jobs (POST /api/exports): the real server process over loopback for the API as a client sees
it; in process, on the real DuckDB, an export held at a known chunk for what only a running job shows (progress,
the file asked for too early, a cancel)."""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conftest import ADMIN_KEY, WRITE_KEY, Server, start_server
from portrait import exports
from portrait.api.app import create_app
from portrait.cli import app
from portrait.client import RemotePortrait
from portrait.export_jobs import MOST_KEPT, ExportJobs
from portrait.job_queue import MOST_UNFINISHED_PER_KEY
from portrait.service import Portrait

AS_JOB = {"Prefer": "respond-async"}
runner = CliRunner()
Held = tuple[TestClient, threading.Event, threading.Event]


def _identify(server: Server, count: int) -> None:
    with httpx.Client(base_url=server.url, auth=(WRITE_KEY, ""), timeout=30) as client:
        batch = [{"type": "identify", "userId": f"u{n}", "traits": {"plan": "pro" if n % 2 else "free",
                                                                      "email": f"u{n}@example.com"}}
                 for n in range(count)]
        assert client.post("/v1/batch", json={"batch": batch}).status_code == 200
    server.wait_caught_up()


def _followed(admin: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while job["status"] == "running":
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
        answer = admin.get(f"/api/exports/{job['id']}")
        assert answer.status_code == 200, answer.text
        job = answer.json()
    return job


def _new_key(admin: httpx.Client, kind: str, scopes: list[str]) -> httpx.Client:
    made = admin.post("/api/keys", json={"kind": kind, "name": f"{kind}-{len(scopes)}", "scopes": scopes})
    assert made.status_code == 201, made.text
    return httpx.Client(base_url=str(admin.base_url), headers={"Authorization": f"Bearer {made.json()['key']}"},
                        timeout=10)


def test_an_export_asked_as_a_job_answers_at_once_and_its_file_is_the_synchronous_export(server: Server) -> None:
    _identify(server, 25)
    with server.admin() as admin:
        started = admin.post("/api/exports", json={"format": "csv", "attributes": ["plan"]}, headers=AS_JOB)
        assert started.status_code == 202, started.text
        assert started.headers["Preference-Applied"] == "respond-async"
        job = started.json()
        assert started.headers["Location"] == f"/api/exports/{job['id']}"
        done = _followed(admin, job)
        assert done["status"] == "done", done
        assert done["rows_written"] == done["rows_total"] == 25
        assert done["report"]["rows"] == 25 and done["expires_at"] and done["file"] == f"/api/exports/{job['id']}/file"
        got = admin.get(done["file"])
        assert got.status_code == 200, got.text
        assert got.headers["content-type"].startswith("text/csv")
        assert "profiles.csv" in got.headers["content-disposition"]
        assert '"rows": 25' in got.headers["x-portrait-export"]
        today = admin.get("/api/exports/profiles", params={"format": "csv", "attributes": "plan"})
        assert sorted(csv.reader(io.StringIO(got.text))) == sorted(csv.reader(io.StringIO(today.text)))
        assert admin.get(done["file"]).content == got.content  # downloaded again while it is kept


def test_without_the_preference_the_request_waits_and_answers_the_finished_job(server: Server) -> None:
    _identify(server, 3)
    with server.admin() as admin:
        made = admin.post("/api/exports", json={"format": "parquet", "attributes": "plan,email"})
        assert made.status_code == 201, made.text
        job = made.json()
        assert job["status"] == "done" and made.headers["Location"] == f"/api/exports/{job['id']}"
        assert job["report"]["personal_included"] == ["email"]
        got = admin.get(f"/api/exports/{job['id']}/file")
        assert got.headers["content-type"] == "application/vnd.apache.parquet"
        rows = pq.read_table(io.BytesIO(got.content)).to_pylist()
        assert sorted(r["email"] for r in rows) == ["u0@example.com", "u1@example.com", "u2@example.com"]
        audit = admin.get("/api/audit", params={"limit": 20}).json()["entries"]
        assert [e["detail"] for e in audit if e["action"] == "export_personal_data"] == [
            {"rows": 3, "personal": ["email"]}]


def test_an_unknown_export_job_is_404_and_a_removed_one_with_its_file(server: Server) -> None:
    _identify(server, 2)
    with server.admin() as admin:
        unknown = admin.get("/api/exports/nosuchjob")
        assert unknown.status_code == 404 and unknown.json()["code"] == "export_not_found"
        assert admin.get("/api/exports/nosuchjob/file").json()["code"] == "export_not_found"
        assert admin.delete("/api/exports/nosuchjob").status_code == 404
        job = admin.post("/api/exports", json={}).json()
        assert admin.delete(f"/api/exports/{job['id']}").status_code == 204
        assert admin.get(f"/api/exports/{job['id']}").status_code == 404
        assert admin.get(f"/api/exports/{job['id']}/file").status_code == 404


def test_export_jobs_keep_the_permission_checks_and_are_their_keys_own(server: Server) -> None:
    _identify(server, 2)
    with server.admin() as admin, _new_key(admin, "read", ["read"]) as reader:
        refused = reader.post("/api/exports", json={"include_personal": True}, headers=AS_JOB)
        assert refused.status_code == 403 and "pii:read" in refused.json()["message"], refused.text
        named = reader.post("/api/exports", json={"attributes": ["email"]}, headers=AS_JOB)
        assert named.status_code == 403
        bad = reader.post("/api/exports", json={"format": "xlsx"})
        assert bad.status_code == 400 and bad.json()["code"] == "invalid_format"
        unknown = reader.post("/api/exports", json={"columns": "plan"})
        assert unknown.status_code == 400 and unknown.json()["code"] == "invalid_export"
        no_segment = reader.post("/api/exports", json={"segment": "nope"})
        assert no_segment.status_code == 404
        # A read key exports (as with GET /api/exports/profiles); user ids that are emails come masked
        job = _followed(reader, reader.post("/api/exports", json={"format": "ndjson"}, headers=AS_JOB).json())
        assert job["status"] == "done", job
        # ... and its job and file are its own: not there for another key, even an admin one
        assert admin.get(f"/api/exports/{job['id']}").status_code == 404
        assert admin.get(f"/api/exports/{job['id']}/file").status_code == 404
        assert admin.delete(f"/api/exports/{job['id']}").status_code == 404
        assert reader.get(f"/api/exports/{job['id']}/file").status_code == 200
        assert reader.delete(f"/api/exports/{job['id']}").status_code == 204


@pytest.fixture
def held(portrait: Portrait, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[Held]:
    """The app in process, on the real DuckDB, with 3 profiles written a row a chunk, and each export held after its
    first row (or the rows given as the fixture's parameter) until ``release`` is set (``reached`` says it got
    there)."""
    portrait.ingest_messages([{"type": "identify", "userId": f"h{n}", "traits": {"plan": "pro"}} for n in range(3)])
    portrait.process_pending()
    monkeypatch.setattr(exports, "CHUNK_ROWS", 1)
    reached, release = threading.Event(), threading.Event()
    hold_at = getattr(request, "param", 1)
    real = portrait.export_profiles

    def holding(path: Path, file_format: str, *, on_written: Callable[[int, int], None] = lambda r, t: None,
                **options: Any) -> dict[str, Any]:
        def written(rows: int, total: int) -> None:
            on_written(rows, total)
            if rows == hold_at:
                reached.set()
                assert release.wait(30)

        return real(path, file_format, on_written=written, **options)

    monkeypatch.setattr(portrait, "export_profiles", holding)
    with TestClient(create_app(portrait=portrait)) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
        yield client, reached, release
        release.set()


def test_a_running_export_shows_its_progress_and_its_file_is_refused_until_done(held: Held) -> None:
    client, reached, release = held
    job = client.post("/api/exports", json={"format": "csv"}, headers=AS_JOB).json()
    assert reached.wait(30)
    running = client.get(f"/api/exports/{job['id']}").json()
    assert (running["status"], running["rows_written"], running["rows_total"]) == ("running", 1, 3)
    early = client.get(f"/api/exports/{job['id']}/file")
    assert early.status_code == 409 and early.json()["code"] == "export_not_ready", early.text
    release.set()
    while (job := client.get(f"/api/exports/{job['id']}").json())["status"] == "running":
        time.sleep(0.01)
    assert (job["status"], job["rows_written"]) == ("done", 3)
    assert client.get(f"/api/exports/{job['id']}/file").text.count("\n") == 4  # the header and 3 rows


def test_a_cancelled_export_fails_says_so_and_keeps_no_file(held: Held) -> None:
    client, reached, release = held
    job = client.post("/api/exports", json={}, headers=AS_JOB).json()
    assert reached.wait(30)
    asked = client.delete(f"/api/exports/{job['id']}")
    assert asked.status_code == 200 and asked.json()["cancelling"] is True, asked.text
    release.set()
    while (job := client.get(f"/api/exports/{job['id']}").json())["status"] == "running":
        time.sleep(0.01)
    assert job["status"] == "failed" and job["error"]["code"] == "export_cancelled", job
    assert "cancelled after 1 of 3 rows" in job["error"]["message"]
    gone = client.get(f"/api/exports/{job['id']}/file")
    assert gone.status_code == 409 and gone.json()["code"] == "export_failed"


@pytest.mark.parametrize("held", [3], indirect=True)
def test_a_cancel_that_comes_as_the_last_rows_are_written_still_cancels(held: Held) -> None:
    """DELETE answered "cancelling" for a job that had written its last chunk, which then ended done, its file kept
    for an hour on the server: the CLI's Ctrl-C left a file there that nobody would fetch."""
    client, reached, release = held
    job = client.post("/api/exports", json={}, headers=AS_JOB).json()
    assert reached.wait(30)  # every row written, the export not yet ended
    assert client.delete(f"/api/exports/{job['id']}").json()["cancelling"] is True
    release.set()
    while (job := client.get(f"/api/exports/{job['id']}").json())["status"] == "running":
        time.sleep(0.01)
    assert job["status"] == "failed" and job["error"]["code"] == "export_cancelled", job


def _running_or_done(client: TestClient, job_id: str, rows: int) -> dict[str, Any]:
    """The job once it has written ``rows`` rows (a held export stops there)."""
    deadline = time.monotonic() + 30
    while (job := client.get(f"/api/exports/{job_id}").json())["rows_written"] < rows:
        assert time.monotonic() < deadline, job
        time.sleep(0.01)
    return job


def test_exports_beyond_those_the_server_runs_at_once_wait_in_order_with_their_place(held: Held) -> None:
    """Any number of exports ran at once, each in a thread holding the profiles it writes: a read key asking for
    many ran the server out of memory. Two run at once (PORTRAIT_EXPORTS_AT_ONCE); the others wait, queued."""
    client, reached, release = held
    first, second, third, fourth = (client.post("/api/exports", json={}, headers=AS_JOB) for _ in range(4))
    assert reached.wait(30)
    assert _running_or_done(client, second.json()["id"], 1)["status"] == "running"
    assert third.status_code == 202, third.text
    waiting = [client.get(f"/api/exports/{answer.json()['id']}").json() for answer in (third, fourth)]
    assert [(job["status"], job["queue_place"], job["rows_written"], job["seconds"], job["started_at"])
            for job in waiting] == [("queued", 1, 0, 0.0, None), ("queued", 2, 0, 0.0, None)]
    early = client.get(f"/api/exports/{waiting[0]['id']}/file")
    assert early.status_code == 409 and early.json()["code"] == "export_not_ready", early.text
    assert "waits for the server's other exports" in early.json()["message"]
    cancelled = client.delete(f"/api/exports/{waiting[0]['id']}")  # a queued one ends at once, never started
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "failed", cancelled.text
    assert cancelled.json()["error"]["code"] == "export_cancelled"
    assert client.get(f"/api/exports/{waiting[1]['id']}").json()["queue_place"] == 1
    release.set()
    for answer in (first, second, fourth):
        deadline = time.monotonic() + 30
        while (job := client.get(f"/api/exports/{answer.json()['id']}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.01)
        assert (job["status"], job["queue_place"], job["rows_written"]) == ("done", None, 3), job


@pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")  # the client's, in process
def test_the_cli_follows_an_export_that_waits_its_turn_to_its_file(held: Held, tmp_path: Path) -> None:
    """The CLI's client polled while its job was running, and a queued one is not: it asked for the file of an
    export not started (409 export_not_ready)."""
    client, reached, release = held
    for _ in range(2):  # the two the server runs at once, held
        assert client.post("/api/exports", json={}, headers=AS_JOB).status_code == 202
    assert reached.wait(30)
    remote = RemotePortrait("http://testserver", admin_key=ADMIN_KEY)
    remote._http = client  # the app in process, its exports held: the CLI's export waits behind them
    seen: list[dict[str, Any]] = []

    def progressed(job: dict[str, Any]) -> None:
        seen.append(job)
        if job["status"] == "queued":
            release.set()

    report = remote.export_profiles(tmp_path / "out.csv", "csv", None, False, on_progress=progressed,
                                    poll_seconds=0.01)
    assert seen[0]["status"] == "queued" and seen[0]["queue_place"] == 1, seen[0]
    assert report["rows"] == 3 and (tmp_path / "out.csv").read_text().count("\n") == 4


def test_a_stopping_server_ends_the_queued_exports_before_they_start(portrait: Portrait) -> None:
    jobs = ExportJobs(at_once=1)
    started, stopped = threading.Event(), threading.Event()
    ran: list[str] = []

    def holding(path: Path, written: Callable[[int, int], None], stop: Callable[[], bool]) -> dict[str, Any]:
        ran.append(path.parent.name)
        started.set()
        while not stop():
            time.sleep(0.01)
        stopped.set()
        raise exports.ExportCancelled("cancelled")

    running = jobs.start("k", "csv", holding)
    queued = jobs.start("k", "csv", holding)
    assert started.wait(30)
    assert (running.status, queued.status, queued.queue_place) == ("running", "queued", 1)
    jobs.close()
    assert stopped.is_set() and ran == [running.id]  # the queued one never ran
    assert queued.status == "failed" and queued.error is not None and queued.error.code == "export_cancelled"
    assert "stopped before the export started" in queued.error.message and queued.ended.is_set()


def _done(client: TestClient) -> dict[str, Any]:
    """An export of the held fixture's 3 profiles, let run to its end."""
    job = client.post("/api/exports", json={}).json()
    assert job["status"] == "done", job
    return job


@pytest.mark.parametrize("held", [99], indirect=True)  # never held (3 rows)
def test_a_file_removed_right_after_its_job_was_looked_up_is_404_not_a_server_error(
        held: Held, monkeypatch: pytest.MonkeyPatch) -> None:
    """DELETE or the sweep removing the job and its file between the download's lookup of the job and the file's
    opening: the server answered 500 (the file not found where the job said). The window is forced: the removal
    comes right after the lookup."""
    client, _, _ = held
    job = _done(client)
    looked_up = ExportJobs.get

    def removed_after_lookup(jobs: ExportJobs, job_id: str, owner: str) -> Any:
        found = looked_up(jobs, job_id, owner)
        monkeypatch.setattr(ExportJobs, "get", looked_up)  # once: the DELETE looks it up too
        jobs.cancel(job_id, owner)  # as DELETE /api/exports/{id} does, or the sweep once its hour is up
        return found

    monkeypatch.setattr(ExportJobs, "get", removed_after_lookup)
    gone = client.get(f"/api/exports/{job['id']}/file")
    assert gone.status_code == 404 and gone.json()["code"] == "export_not_found", gone.text
    assert "removed" in gone.json()["message"]


@pytest.mark.parametrize("held", [99], indirect=True)
def test_a_file_removed_once_opened_still_downloads_whole(held: Held, monkeypatch: pytest.MonkeyPatch) -> None:
    """The removal right after the file was looked up and opened (the answer not yet sent): the download is the
    whole file, opened before it went, and nothing of it stays on the disk."""
    client, _, _ = held
    job = _done(client)
    real_file = ExportJobs.file
    folders: list[Path] = []

    def removed_once_found(jobs: ExportJobs, job_id: str, owner: str) -> Any:
        found = real_file(jobs, job_id, owner)
        folders.append(jobs.get(job_id, owner).path.parent)
        jobs.cancel(job_id, owner)
        return found

    monkeypatch.setattr(ExportJobs, "file", removed_once_found)
    answer = client.get(f"/api/exports/{job['id']}/file")
    assert answer.status_code == 200, answer.text
    assert answer.text.count("\n") == 4 and int(answer.headers["content-length"]) == len(answer.content)
    assert answer.headers["content-disposition"] == 'attachment; filename="profiles.csv"'
    assert folders and not folders[0].exists()


@pytest.mark.parametrize("held", [99], indirect=True)
def test_a_file_removed_behind_the_servers_back_is_410_gone(held: Held) -> None:
    """The file deleted by something else than the server (a cleaner of /tmp) while the job is kept: 410, saying
    to ask again, not a 500; the job goes with it."""
    client, _, _ = held
    job = _done(client)
    folders = list(Path(tempfile.gettempdir()).glob(f"portrait-exports-{os.getpid()}-*/{job['id']}"))
    assert len(folders) == 1
    shutil.rmtree(folders[0])
    gone = client.get(f"/api/exports/{job['id']}/file")
    assert gone.status_code == 410 and gone.json()["code"] == "export_file_gone", gone.text
    assert "ask for the export again" in gone.json()["message"]
    assert client.get(f"/api/exports/{job['id']}").status_code == 404
    declared = client.get("/openapi.json").json()["paths"]["/api/exports/{job_id}/file"]["get"]["responses"]
    assert "410" in declared  # every status the API answers is in its document


def test_half_a_surrogate_pair_is_refused_not_a_server_error(held: Held) -> None:
    """JSON's "\\ud800" alone reached DuckDB's binding (500) or the audit log's JSON (a failed job)."""
    client, _, _ = held
    for field in ("purpose", "segment", "attributes", "format"):
        refused = client.post("/api/exports", content=f'{{"{field}": "\\ud800"}}'.encode(),
                              headers={"Content-Type": "application/json"})
        assert refused.status_code == 400 and refused.json()["code"] == "invalid_export", refused.text


def test_finished_exports_and_their_files_are_removed_after_their_time(portrait: Portrait) -> None:
    jobs = ExportJobs(kept_seconds=0.2)
    try:
        job = jobs.start("k", "csv", lambda path, written, stop: portrait.export_profiles(path, "csv"))
        jobs.wait(job)
        assert job.status == "done" and job.path.is_file()
        jobs.forget_expired()
        assert job.path.is_file()  # within its time
        time.sleep(0.3)  # the time to keep it, passing (not a wait for something to happen)
        jobs.forget_expired()
        assert not job.path.exists()
        with pytest.raises(Exception, match="there is no export"):
            jobs.get(job.id, "k")
    finally:
        jobs.close()
    assert not job.path.parent.parent.exists()  # the server's folder of exports, gone when it stops


def test_a_finished_export_is_kept_however_many_wait_behind_it(portrait: Portrait) -> None:
    """At most 100 jobs are kept, the oldest finished going first: counted with the queued ones, a long queue
    removed each export as soon as it ended, before its file could be downloaded."""
    jobs = ExportJobs(at_once=1)

    def holding(path: Path, written: Callable[[int, int], None], stop: Callable[[], bool]) -> dict[str, Any]:
        while not stop():
            time.sleep(0.01)
        raise exports.ExportCancelled("cancelled")

    try:
        done = jobs.wait(jobs.start("k", "csv", lambda path, written, stop: portrait.export_profiles(path, "csv")))
        waiting = [jobs.start(f"k{n}", "csv", holding) for n in range(MOST_KEPT + 1)]  # keys of their own: each
        # key may have MOST_UNFINISHED_PER_KEY at once
        assert waiting[-1].status == "queued"
        assert jobs.get(done.id, "k") is done and done.path.is_file()
    finally:
        jobs.close()


def _deleted_jobs(admin: httpx.Client) -> list[int]:
    """The statuses of the DELETEs of export jobs in the audit log (the CLI removes its job once done)."""
    entries = admin.get("/api/audit", params={"limit": 100}).json()["entries"]
    return [e["status"] for e in entries if e["action"].startswith("DELETE /api/exports/")]


def test_the_cli_exports_through_a_server_as_a_job_and_leaves_nothing_there(server: Server, tmp_path: Path) -> None:
    _identify(server, 4)
    out = tmp_path / "profiles.csv"
    made = runner.invoke(app, ["export", "profiles", "-o", str(out), "--db", server.db_path, "--admin-key",
                               ADMIN_KEY, "--attributes", "plan"])
    assert made.exit_code == 0, made.output
    assert "Exported 4 profiles with 3 columns" in made.output
    assert sorted(r["plan"] for r in csv.DictReader(io.StringIO(out.read_text()))) == ["free", "free", "pro", "pro"]
    with server.admin() as admin:
        assert _deleted_jobs(admin) == [204]  # the job was used, and its file removed from the server
    seen: list[dict[str, Any]] = []
    remote = RemotePortrait(server.url, admin_key=ADMIN_KEY)
    try:
        remote.export_profiles(tmp_path / "again.csv", "csv", None, False, on_progress=seen.append)
    finally:
        remote.close()
    assert (seen[-1]["status"], seen[-1]["rows_written"], seen[-1]["rows_total"]) == ("done", 4, 4)


def test_ctrl_c_during_an_export_through_a_server_cancels_it_there_and_says_so(
        server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C printed click's bare "Aborted!" (and the server went on); now the server's job goes too, and the
    command says what became of the file. (The interrupt comes during the download, where it is sure to land.)"""
    _identify(server, 2)
    out = tmp_path / "profiles.csv"
    out.write_text("yesterday's\n")

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(RemotePortrait, "_downloaded", interrupted)
    stopped = runner.invoke(app, ["export", "profiles", "-o", str(out), "--force", "--db", server.db_path,
                                  "--admin-key", ADMIN_KEY])
    assert stopped.exit_code == 130, stopped.output
    assert "Aborted" not in stopped.output
    assert "interrupted: the export was cancelled, on the server too; the file that was there is as it was" in \
        " ".join(stopped.output.split())
    assert out.read_text() == "yesterday's\n" and not list(tmp_path.glob(".profiles.csv.*"))  # no partial left
    with server.admin() as admin:
        assert _deleted_jobs(admin) == [204]


def test_the_files_of_a_killed_server_are_removed_when_one_starts_again(tmp_path: Path) -> None:
    """A finished export's file (personal data, when asked for) is kept an hour in a temporary folder; a server
    killed in that hour (kill -9, the OOM killer, docker kill) left it there for good: nothing knew it was there.
    The next server to start removes the folders of servers that are gone, and leaves a running one's alone."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {"TMPDIR": str(temporary)}
    killed = start_server(str(tmp_path / "killed.duckdb"), tmp_path / "killed.log", extra_env=env)
    running = start_server(str(tmp_path / "running.duckdb"), tmp_path / "running.log", extra_env=env)
    try:
        for served in (killed, running):
            with served.admin() as admin:
                job = admin.post("/api/exports", json={"include_personal": True})
                assert job.status_code == 201, job.text
        kept = sorted(temporary.glob("portrait-exports-*/*/profiles.csv"))
        assert len(kept) == 2
        killed.stop(kill=True)
        assert all(path.is_file() for path in kept)  # what the killed server could not remove
        again = start_server(killed.db_path, tmp_path / "again.log", extra_env=env)
        again.stop()
        with running.admin() as admin:  # the running server's file is still there, and downloads
            jobs = [p.parent.name for p in kept if p.is_file()]
            assert len(jobs) == 1 and admin.get(f"/api/exports/{jobs[0]}/file").status_code == 200
    finally:
        killed.stop(kill=True)
        running.stop()


def test_the_export_answered_in_its_request_waits_its_turn_as_the_jobs_do(held: Held,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /api/exports/profiles ran its export at once, beside the PORTRAIT_EXPORTS_AT_ONCE jobs: the bound that
    keeps a read key from running the server out of memory (each export holds the profiles it writes) did not hold
    for it. It runs as a job the queue bounds, its answer the job's file (the job removed once it is sent)."""
    client, reached, release = held
    for _ in range(2):  # the two the server runs at once, held
        assert client.post("/api/exports", json={}, headers=AS_JOB).status_code == 202
    assert reached.wait(30)
    queued = threading.Event()
    real_start = ExportJobs.start

    def start(self: ExportJobs, *args: Any, **kwargs: Any) -> Any:
        job = real_start(self, *args, **kwargs)
        if job.status == "queued":
            queued.set()
        return job

    monkeypatch.setattr(ExportJobs, "start", start)
    answers: list[httpx.Response] = []
    asking = threading.Thread(target=lambda: answers.append(client.get("/api/exports/profiles")))
    asking.start()
    try:
        assert queued.wait(10), "the export answered in its request did not wait behind the two running"
    finally:
        release.set()
        asking.join(30)
    assert answers[0].status_code == 200, answers[0].text
    assert answers[0].text.count("\n") == 4 and "X-Portrait-Export" in answers[0].headers


def test_exports_and_imports_are_taken_again_when_the_app_starts_again(portrait: Portrait) -> None:
    """An app's lifespan can run more than once (a test client's does; the schema fuzz's per request): closing the job
    holders at its end refused every later export as 'the server is stopping' (409) and left imports queued."""
    portrait.ingest_messages([{"type": "identify", "userId": "again", "traits": {"plan": "pro"}}])
    portrait.process_pending()
    app_ = create_app(portrait=portrait)
    for _ in range(2):
        with TestClient(app_) as client:
            client.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
            exported = client.get("/api/exports/profiles")
            assert exported.status_code == 200, exported.text
            assert "again" in exported.text
            started = client.post("/api/imports", params={"filename": "rows.csv", "kind": "profiles",
                                                          "user_id": "user_id"},
                                  content=b"user_id,plan\nrow1,free\n", headers={"Prefer": "respond-async"})
            assert started.status_code == 202, started.text
            deadline = time.monotonic() + 30
            while (job := client.get(started.headers["Location"]).json())["status"] in ("queued", "running"):
                assert time.monotonic() < deadline, job
                time.sleep(0.05)
            assert job["status"] == "done", job


def test_a_key_past_the_most_unfinished_exports_is_refused_and_another_key_is_not(held: Held) -> None:
    """One key -- a script in a loop -- could queue any number of exports, every other key's waiting behind them
    all. Past MOST_UNFINISHED_PER_KEY queued or running, the key's next is refused (409) until one ends."""
    client, reached, release = held
    asked = [client.post("/api/exports", json={}, headers=AS_JOB) for _ in range(MOST_UNFINISHED_PER_KEY)]
    assert [answer.status_code for answer in asked] == [202] * MOST_UNFINISHED_PER_KEY, asked[-1].text
    refused = client.post("/api/exports", json={}, headers=AS_JOB)
    assert refused.status_code == 409 and refused.json()["code"] == "too_many_exports", refused.text
    assert refused.json()["message"].startswith(f"this key has {MOST_UNFINISHED_PER_KEY} exports queued or running")
    waited = client.get("/api/exports/profiles")  # the export answered in its request counts as one too
    assert waited.status_code == 409 and waited.json()["code"] == "too_many_exports", waited.text
    made = client.post("/api/keys", json={"kind": "read", "name": "other"})
    assert made.status_code == 201, made.text
    other = client.post("/api/exports", json={}, headers={**AS_JOB, "Authorization": f"Bearer {made.json()['key']}"})
    assert other.status_code == 202 and other.json()["status"] == "queued", other.text
    assert client.delete(f"/api/exports/{asked[-1].json()['id']}").status_code == 200  # a queued one cancelled
    again = client.post("/api/exports", json={}, headers=AS_JOB)
    assert again.status_code == 202, again.text
    assert reached.wait(30)
    release.set()
    for answer in (*asked[:-1], again):
        deadline = time.monotonic() + 60
        while (job := client.get(f"/api/exports/{answer.json()['id']}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.01)
        assert job["status"] == "done", job
