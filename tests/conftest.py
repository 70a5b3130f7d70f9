"""Shared fixtures: an in-process service on a real DuckDB file, the ASGI app, and a real server process."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.postgres import PostgresServer

from portrait.client import server_file
from portrait.config import Settings
from portrait.service import Portrait
from portrait.sql import parse

# pytest-xdist's workers (make test runs two) set COLUMNS=80 and LINES=24 in their environment; the CLI's rich
# consoles, made as it is imported, would keep that size for good, where each test gives a command its own COLUMNS
if "PYTEST_XDIST_WORKER" in os.environ:
    for size in ("COLUMNS", "LINES"):
        os.environ.pop(size, None)

WRITE_KEY = "wk_test_key"
# The official Node.js SDKs (tests/test_node_sdks.py, tests/test_pushback.py), installed from npm into tests/.cache
NODE_SDKS = {"segment": "@segment/analytics-node", "rudder": "@rudderstack/rudder-sdk-node"}
NODE_SDKS_CACHE = Path(__file__).parent / ".cache" / "node-sdks"
ADMIN_KEY = "ak_test_key"
# Profiles whose kept activity (first/last seen, number of events) differs from their events in event_profiles.
_ACTIVITY_MISMATCHES = parse("""
SELECT coalesce(a.profile_id, e.profile_id), a.first_seen, e.first_seen, a.last_seen, e.last_seen, a.events, e.events
FROM profile_activity AS a FULL OUTER JOIN (
    SELECT profile_id, min(timestamp) AS first_seen, max(timestamp) AS last_seen, count(*) AS events
    FROM event_profiles GROUP BY profile_id
) AS e ON e.profile_id = a.profile_id
WHERE a.first_seen IS DISTINCT FROM e.first_seen OR a.last_seen IS DISTINCT FROM e.last_seen
   OR a.events IS DISTINCT FROM e.events
""")


def activity_mismatches(portrait: Portrait) -> list[tuple[object, ...]]:
    """What the processor keeps per profile must equal what its events say (an empty list when it does)."""
    session = portrait.store.session()
    try:
        return session.execute(_ACTIVITY_MISMATCHES)
    finally:
        session.close()


# Threads that live as long as the process, in a server too: the ingest API's pool for large bodies.
_PROCESS_WIDE_THREADS = ("portrait-large-bodies",)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A test that leaves a Portrait open leaves its threads (writer, processor, workers) running into the
    interpreter's exit, where DuckDB is torn down under them: a run once aborted after its summary with "terminate
    called without an active exception". Such a run fails here, naming the threads."""
    for module in {getattr(item, "module", None) for item in session.items}:
        close = getattr(module, "close_what_was_opened_at_import", None)  # a Portrait opened to be collected
        if close is not None:
            close()
    left = sorted(thread.name for thread in threading.enumerate()
                  if thread.name.startswith("portrait-") and not thread.name.startswith(_PROCESS_WIDE_THREADS))
    left += session.config.stash.get(_LEFT_BY_WORKERS, [])
    if left:
        sys.stderr.write(f"\nA test left a Portrait open (threads still running: {', '.join(left)}): close it.\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        worker_output = getattr(session.config, "workeroutput", None)
        if worker_output is not None:  # a pytest-xdist worker: its exit status is not the run's, so it tells it
            worker_output["portrait_threads_left"] = left


_LEFT_BY_WORKERS = pytest.StashKey[list[str]]()


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: without it (-p no:xdist) pytest refused to start
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist's controller, as a worker ends: the threads a test left running there fail the run too."""
    left = getattr(node, "workeroutput", {}).get("portrait_threads_left", [])
    node.config.stash[_LEFT_BY_WORKERS] = [*node.config.stash.get(_LEFT_BY_WORKERS, []), *left]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(db_path=str(tmp_path / "portrait.duckdb"), write_key=WRITE_KEY, admin_key=ADMIN_KEY)


@pytest.fixture
def portrait(settings: Settings) -> Iterator[Portrait]:
    """The service with the processor run on demand (``process_pending``), for deterministic tests."""
    service = Portrait(settings, background=False)
    yield service
    service.close()


@pytest.fixture
def small_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A file system of its own (tmpfs; 2 MB unless the test says, through indirect parametrization), so a disk can
    really fill up. Mounting needs root, which CI has."""
    mount = tmp_path / "disk"
    mount.mkdir()
    size = getattr(request, "param", "2m")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def utc_today_clear_of_midnight(margin_seconds: float = 60.0) -> date:
    """Today's UTC date, once at least ``margin_seconds`` remain of it (it waits out the rest of the day otherwise).
    A test that takes "today" and then asks the server for per-day figures failed when midnight fell between the
    two: the server's days had moved on by one. The margin is longer than any such test takes."""
    now = datetime.now(UTC)
    left = (datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC) - now).total_seconds()
    if left < margin_seconds:
        time.sleep(left + 0.1)
    return datetime.now(UTC).date()


def ctrl_c_as_in_a_terminal() -> None:
    """A child's ``preexec_fn`` for a test that sends it SIGINT: the default disposition, as a terminal gives it.
    A run started in the background of a shell (``make test &``, nohup, many CI wrappers) passes SIGINT on ignored,
    and Python then installs no KeyboardInterrupt handler: a Ctrl-C before the server sets its own handlers was
    dropped and the test waited 60 s for a server that kept running."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_until_events_are_stored(db: Path, loading: subprocess.Popen[str], timeout: float = 60.0) -> None:
    """Until ``loading`` (a `portrait demo` or import into ``db``) has committed events: its write-ahead log holds
    over a megabyte (the migrations write a few kB; each batch of 500 demo messages ~300 kB). A fixed second after
    the file appeared was not always enough: the migrations and the first batch took 0.76 s of it on the 2-core box
    under load, and a Ctrl-C sent before the first commit found nothing loaded."""
    wal = db.with_name(db.name + ".wal")
    deadline = time.monotonic() + timeout
    while True:
        try:
            if wal.stat().st_size > 1_000_000:
                return
        except FileNotFoundError:  # not made yet
            pass
        assert loading.poll() is None, f"it ended ({loading.returncode}) before storing events"
        assert time.monotonic() < deadline, f"no events stored within {timeout:.0f} s"
        time.sleep(0.05)


@dataclass
class Server:
    """A real ``portrait serve`` process on loopback."""

    url: str
    db_path: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)

    def wait_caught_up(self, timeout: float = 30.0) -> dict[str, int]:
        """Wait until every received event is reflected in profiles (lag == 0)."""
        deadline = time.monotonic() + timeout
        with self.admin() as client:
            while True:
                status = client.get("/api/status").json()
                if status["lag"] == 0:
                    return dict(status)
                if time.monotonic() > deadline:
                    raise AssertionError(f"processor did not catch up: {status}")
                time.sleep(0.05)

    def stop(self, *, kill: bool = False) -> None:
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            self.process.wait(timeout=30)


def start_server(db_path: str, log_path: Path, extra_env: dict[str, str] | None = None,
                 stderr: int = subprocess.STDOUT, host: str = "127.0.0.1") -> Server:
    """``stderr``: where the server's errors go (by default into the log, with its output).

    The server listens on a port the system picks (``--port 0``) and notes it in ``<db>.server.json``: a port looked
    up as free here and passed in could be taken by another process (another test run, a connection's own port)
    before the server bound it, and the server then refused to start ("cannot listen")."""
    env = {**os.environ, "PORTRAIT_WRITE_KEY": WRITE_KEY, "PORTRAIT_ADMIN_KEY": ADMIN_KEY, **(extra_env or {})}
    with log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "portrait", "serve", "--db", db_path, "--host", host, "--port", "0"],
            stdout=log, stderr=stderr, env=env,
        )
    try:
        return _started(process, db_path, log_path)
    except BaseException:  # a server that did not start as expected (a note it wrote wrong) is not left running
        process.kill()
        process.wait(timeout=30)
        raise


def _started(process: subprocess.Popen[bytes], db_path: str, log_path: Path) -> Server:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {log_path.read_text()}")
        url = _url_noted_by(process.pid, db_path)
        try:
            if url is not None and httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return Server(url, db_path, process, log_path)
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"server did not start: {log_path.read_text()}")


def _url_noted_by(pid: int, db_path: str) -> str | None:
    """The address the server process ``pid`` noted beside its database, once it has (not one another server of
    the same database left there)."""
    try:
        noted = json.loads(server_file(db_path).read_text())
    except (OSError, ValueError):  # not written yet, or being written
        return None
    return str(noted["url"]) if noted.get("pid") == pid else None


def start_demo_shop(folder: Path, profiles: int = 40) -> Server:
    """A real server holding `portrait demo`'s shop (customers, events, attributes), loaded through ingestion and
    processed."""
    server = start_server(str(folder / "console.duckdb"), folder / "server.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTRAIT_")}
    env.update(PORTRAIT_WRITE_KEY=WRITE_KEY, PORTRAIT_NO_PROGRESS="1")
    loaded = subprocess.run([sys.executable, "-m", "portrait", "demo", "--profiles", str(profiles), "--db",
                             server.db_path], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert loaded.returncode == 0, loaded.stderr
    server.wait_caught_up()
    return server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = start_server(str(tmp_path / "server.duckdb"), tmp_path / "server.log")
    yield running
    running.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the whole run (started from the machine's binaries; never skipped)."""
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """The two Node.js SDKs from the npm registry (latest major, 3 for both), installed once at test setup."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed to run the official Node.js SDKs and are not on PATH")
    modules = NODE_SDKS_CACHE / "node_modules"
    NODE_SDKS_CACHE.mkdir(parents=True, exist_ok=True)
    # Under a lock: test workers (pytest -n) each run this, and two npm installs into one folder break each other
    with (NODE_SDKS_CACHE / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not all((modules / name / "package.json").exists() for name in NODE_SDKS.values()):
            installed = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", "--prefix",
                                        str(NODE_SDKS_CACHE), *(f"{name}@3" for name in NODE_SDKS.values())],
                                       capture_output=True, text=True, timeout=300, check=False)
            assert installed.returncode == 0, installed.stderr
    return modules
