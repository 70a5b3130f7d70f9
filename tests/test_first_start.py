"""The first minutes on an unfriendly machine: a umask that makes files world-readable, a terminal that is not
UTF-8, a database path that names something else than a database, an old Python. Each runs the real command."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from tests.conftest import ctrl_c_as_in_a_terminal, start_server, wait_until_events_are_stored
from typer.testing import CliRunner

from portrait.__main__ import run_reporting_damage
from portrait.cli import app
from portrait.client import write_server_file

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def portrait(*args: str, env: dict[str, str] | None = None, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    """``portrait ARGS`` in a process of its own, started with ``umask`` as a login shell commonly sets it."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PORTRAIT_")}
    return subprocess.run([sys.executable, "-m", "portrait", *args], capture_output=True, text=True, timeout=120,
                          env={**base, "PORTRAIT_NO_PROGRESS": "1", **(env or {})},
                          preexec_fn=lambda: os.umask(umask), check=False)


def test_what_portrait_writes_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    db = tmp_path / "shop.duckdb"
    loaded = portrait("demo", "--profiles", "3", "--db", str(db))
    assert loaded.returncode == 0, loaded.stderr
    backed_up = portrait("backup", "--db", str(db))
    assert backed_up.returncode == 0, backed_up.stderr
    written = [db, tmp_path / "backups", *(tmp_path / "backups").iterdir()]
    assert len(written) == 3
    assert {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in written} == {
        path.name: oct(0o700 if path.is_dir() else 0o600) for path in written}


def test_a_terminal_that_is_not_utf8_shows_names_escaped_instead_of_crashing(tmp_path: Path) -> None:
    db, events = str(tmp_path / "names.duckdb"), tmp_path / "events.ndjson"
    events.write_text(json.dumps({"type": "track", "userId": "zoë", "event": "Café ☕ 🎉", "messageId": "m1"}),
                      encoding="utf-8")
    assert runner.invoke(app, ["import", "events", str(events), "--db", db]).exit_code == 0
    ascii_terminal = {"PYTHONIOENCODING": "ascii"}
    shown = portrait("profiles", "get", "user_id:zoë", "--db", db, env=ascii_terminal)
    assert shown.returncode == 0, shown.stderr
    assert "| user_id | zo\\u00eb |" in shown.stdout  # escaped before the columns were measured: aligned
    tail = portrait("events", "tail", "--db", db, env=ascii_terminal)
    assert tail.returncode == 0, tail.stderr
    assert "Caf\\u00e9 \\u2615 \\ud83c\\udf89" in tail.stdout  # above U+FFFF: a surrogate pair, as JSON has it
    as_json = portrait("events", "tail", "--json", "--db", db, env=ascii_terminal)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["event"] == "Café ☕ 🎉"  # escapes JSON reads back as the same text


def make_database(db: Path) -> None:
    """A small Portrait database, made in this process (the mode of its files does not matter here)."""
    made = runner.invoke(app, ["demo", "--profiles", "3", "--db", str(db)], env={"PORTRAIT_NO_PROGRESS": "1"})
    assert made.exit_code == 0, made.output


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_sqlite_file_given_as_the_database_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "crm.db"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE customers (id INTEGER)")
    connection.close()
    db.chmod(0o644)  # another program's file, readable by others on purpose (a web server serves it)
    before = _digest(db)
    result = runner.invoke(app, ["status", "--db", str(db)])
    assert result.exit_code == 1
    # before: DuckDB tried to download its SQLite extension ("Failed to download extension sqlite_scanner")
    assert "the file is a SQLite database, not a DuckDB database; nothing was changed" in " ".join(
        result.output.split())
    assert _digest(db) == before and sorted(p.name for p in tmp_path.iterdir()) == ["crm.db"]
    assert stat.S_IMODE(db.stat().st_mode) == 0o644  # before: made 0600 on the way to being refused


def test_a_database_cut_short_says_so_and_stays_as_it_was(tmp_path: Path) -> None:
    db = tmp_path / "cut.duckdb"
    make_database(db)
    with db.open("r+b") as file:
        file.truncate(db.stat().st_size // 2)
    before = _digest(db)
    result = runner.invoke(app, ["status", "--db", str(db)])
    assert result.exit_code == 1
    said = " ".join(result.output.split())
    assert "the file is shorter than DuckDB's own record of it says" in said and "portrait restore" in said, said
    assert _digest(db) == before


def fake_python(folder: Path, version: str) -> Path:
    """A ``python3`` that is an older Python as far as the Makefile can tell."""
    folder.mkdir()
    script = folder / "python3"
    script.write_text(f'#!/bin/sh\n[ "$1" = --version ] && echo "Python {version}" && exit 0\nexit 1\n')
    script.chmod(0o755)
    return folder


def test_make_says_which_python_it_needs(tmp_path: Path) -> None:
    path = f"{fake_python(tmp_path / 'bin', '3.10.12')}:{os.environ['PATH']}"
    made = subprocess.run(["make", "-C", str(REPO), "install", f"VENV={tmp_path / 'venv'}"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PATH": path}, check=False)
    assert made.returncode != 0
    assert "Portrait needs Python 3.11 or newer (python3: Python 3.10.12)" in made.stderr, made.stderr
    assert not (tmp_path / "venv").exists()


def test_make_run_takes_the_port_and_host_from_portraits_settings(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    shutil.copy(sys.executable, venv / "bin" / "python")  # present: make does not create the venv (dry run anyway)
    env = {**os.environ, "PORTRAIT_PORT": "8123", "PORTRAIT_HOST": "0.0.0.0"}
    planned = subprocess.run(["make", "-n", "-C", str(REPO), "run", f"VENV={venv}"], capture_output=True, text=True,
                             timeout=60, env=env, check=False)
    assert planned.returncode == 0, planned.stderr
    assert f"{venv}/bin/portrait serve --host 0.0.0.0 --port 8123" in planned.stdout
    explicit = subprocess.run(["make", "-n", "-C", str(REPO), "run", f"VENV={venv}", "PORT=9000"],
                              capture_output=True, text=True, timeout=60, env=env, check=False)
    assert "--port 9000" in explicit.stdout


def test_a_database_its_user_may_not_read_is_refused_with_the_reason(tmp_path: Path) -> None:
    """As root, the command drops to ``nobody`` once its modules are loaded (root reads any file)."""
    folder = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's own folders are closed to other users
    try:
        folder.chmod(0o777)  # the write-ahead log goes beside the database
        db = folder / "locked.duckdb"
        make_database(db)
        db.chmod(0o000)
        as_nobody = "import os; os.setgid(65534); os.setuid(65534)" if os.geteuid() == 0 else "pass"
        run = subprocess.run([sys.executable, "-c", f"from portrait.cli import app; {as_nobody}; app()", "status",
                              "--db", str(db)], capture_output=True, text=True, timeout=60, check=False)
        assert run.returncode == 1, run.stderr  # before: a PermissionError traceback from reading the header
        assert f'Cannot open file "{db}": Permission denied' in " ".join(run.stderr.split()), run.stderr
    finally:
        shutil.rmtree(folder)


def test_sigterm_during_demo_ends_it_as_ctrl_c_does(tmp_path: Path) -> None:
    db = tmp_path / "demo.duckdb"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTRAIT_")}
    loading = subprocess.Popen([sys.executable, "-m", "portrait", "demo", "--profiles", "20000", "--db", str(db)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**env, "PORTRAIT_NO_PROGRESS": "1"})
    wait_until_events_are_stored(db, loading)
    loading.send_signal(signal.SIGTERM)
    _, stderr = loading.communicate(timeout=60)
    assert loading.returncode == 143, stderr  # before: -15, killed where it was, without a word
    assert "interrupted: what was loaded stays; run the same command again" in " ".join(stderr.split())
    status = portrait("status", "--json", "--db", str(db))
    assert status.returncode == 0 and json.loads(status.stdout)["events_received"] > 0, status.stderr


def test_a_damaged_block_ends_any_command_with_one_line_not_a_traceback(tmp_path: Path, monkeypatch: Any,
                                                                        capsys: Any) -> None:
    """DuckDB finds a damaged block only when it reads it: at open, or in whatever query reads it first. Damage at
    each tenth of the file in turn; ``status`` reads enough to meet most of them."""
    db = tmp_path / "whole.duckdb"
    make_database(db)
    whole, damaged = db.read_bytes(), tmp_path / "damaged.duckdb"
    said = []
    for tenth in range(1, 10):
        at = len(whole) * tenth // 10
        damaged.write_bytes(whole[:at] + b"garbage" * 4 + whole[at + 28:])
        monkeypatch.setattr(sys, "argv", ["portrait", "status", "--db", str(damaged)])
        with pytest.raises(SystemExit) as ended:  # before: DuckDB's IOException out of the query that met it
            run_reporting_damage(app)
        said.append((ended.value.code, capsys.readouterr().err.strip().splitlines()[-1:]))
    failures = [lines for code, lines in said if code != 0]
    assert failures and all(lines[0].startswith("error: ") for lines in failures), said
    assert any("the database file is damaged" in lines[0] for lines in failures), said


def test_a_damaged_block_met_by_a_command_is_said_without_a_traceback(tmp_path: Path) -> None:
    """In a process of its own, as people run it: the store's once-only log of the damage (meant for a server's
    log) went to stderr with DuckDB's traceback, above the command's one-line error."""
    db = tmp_path / "damaged.duckdb"
    make_database(db)
    with duckdb.connect(str(db), read_only=True) as reader:
        block = reader.execute("SELECT min(block_id) FROM pragma_storage_info('counters') WHERE block_id >= 0"
                               ).fetchall()[0][0]
    with db.open("r+b") as file:
        file.seek(3 * 4096 + int(block) * 262_144 + 64)  # the file's header, then DuckDB's 256 KiB blocks
        file.write(b"garbage" * 4)
    status = portrait("status", "--db", str(db))
    assert status.returncode == 1, status.stderr
    assert "error: the database file is damaged (Corrupt database file: " in status.stderr, status.stderr
    assert "Traceback" not in status.stderr, status.stderr


def test_a_second_server_on_the_same_database_says_where_the_first_one_is(tmp_path: Path) -> None:
    db = tmp_path / "served.duckdb"
    make_database(db)
    holder = duckdb.connect(str(db))  # holds the file's lock as a running server does
    try:
        write_server_file(str(db), "http://127.0.0.1:8451")  # and what that server notes beside it
        second = portrait("serve", "--db", str(db), "--port", "0")
    finally:
        holder.close()
    assert second.returncode == 1
    said = " ".join(second.stderr.split())
    assert f"error: the database {db} is in use by process {os.getpid()}" in said, said
    assert "A Portrait server already serves it at http://127.0.0.1:8451: use that one, or stop it first" in said


def test_make_test_names_the_system_packages_it_could_not_install(tmp_path: Path) -> None:
    """No Chromium, and apt-get fails (offline): one line naming what is missing, not 40 failed tests later."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("apt-get", "id"):  # apt-get offline; `id -u` says root, so the script tries to install
        (tools / name).write_text("#!/bin/sh\necho 'E: Could not resolve deb.debian.org' >&2; exit 100\n"
                                  if name == "apt-get" else "#!/bin/sh\necho 0\n")
        (tools / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}", "PORTRAIT_TEST_CHROMIUM": str(tmp_path / "none")}
    checked = subprocess.run([str(REPO / "scripts" / "system-packages.sh")], capture_output=True, text=True,
                             timeout=60, env=env, check=False)
    assert checked.returncode == 1
    assert "could not install chromium with apt-get (see its messages above): the tests need them" in checked.stderr


def test_a_narrow_terminal_wraps_long_values_instead_of_cutting_them(tmp_path: Path) -> None:
    db = str(tmp_path / "narrow.duckdb")
    make_database(Path(db))
    found = runner.invoke(app, ["profiles", "get", "user_id:user-1", "--json", "--db", db])
    email = json.loads(found.stdout)["traits"]["email"]
    shown = runner.invoke(app, ["profiles", "get", "user_id:user-1", "--db", db], env={"COLUMNS": "40"})
    assert shown.exit_code == 0, shown.output
    assert max(len(line) for line in shown.output.splitlines()[1:]) <= 40  # the first line is not a table
    assert "…" not in shown.output  # before: "mia.nowak7@exa…", "2026-1…"
    traits = shown.output.split("Identities")[0]  # two columns: a value's lines read on in order
    assert email in "".join(char for char in traits if char not in "│┃ \n"), traits


def test_make_tries_the_venv_again_after_it_failed_half_way(tmp_path: Path) -> None:
    """Debian's python3 without python3-venv makes the venv's folders and bin/python, then fails (no ensurepip):
    the next make skipped the venv (its target existed) and failed on a missing pip."""
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "python3").write_text(
        f'#!/bin/sh\nif [ "$1" = -m ] && [ "$2" = venv ]; then\n  "{sys.executable}" -m venv --without-pip "$3"\n'
        '  echo "The virtual environment was not created successfully because ensurepip is not available." >&2\n'
        f'  exit 1\nfi\nexec "{sys.executable}" "$@"\n')
    (tools / "python3").chmod(0o755)
    venv = tmp_path / "venv"
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"}
    for _ in range(2):  # each run fails the same clear way
        made = subprocess.run(["make", "-C", str(REPO), "install", f"VENV={venv}"], capture_output=True, text=True,
                              timeout=120, env=env, check=False)
        assert made.returncode != 0
        assert "ensurepip is not available" in made.stderr, made.stderr
        assert not venv.exists()


def test_a_second_make_run_does_not_install_again(tmp_path: Path) -> None:
    """pip asks the package index for the build requirements every time: offline, the second make run failed."""
    venv, calls = tmp_path / "venv", tmp_path / "pip-calls"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / "bin" / "pip").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')  # counts the installs, needs no index
    (venv / "bin" / "pip").chmod(0o755)
    for _ in range(2):
        made = subprocess.run(["make", "-C", str(REPO), "install", f"VENV={venv}"], capture_output=True, text=True,
                              timeout=60, check=False)
        assert made.returncode == 0, made.stderr
    assert calls.read_text().splitlines() == ["install --quiet -e ."]


def test_an_empty_database_file_says_to_delete_it(tmp_path: Path) -> None:
    db = tmp_path / "touched.duckdb"
    db.touch()
    result = runner.invoke(app, ["keys", "list", "--db", str(db)])
    assert result.exit_code == 1
    assert ("the file is empty, not a DuckDB database; delete it and start again to make a new database there"
            in " ".join(result.output.split())), result.output  # before: "... not a valid DuckDB database file!"
    assert db.stat().st_size == 0


def _serve_first_time(db: Path, stderr: Any) -> subprocess.Popen[bytes]:
    """``portrait serve`` on a new database without configured keys: it generates and prints them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTRAIT_")}
    return subprocess.Popen([sys.executable, "-m", "portrait", "serve", "--db", str(db), "--port", "0"],
                            stdout=subprocess.DEVNULL, stderr=stderr, env={**env, "PORTRAIT_NO_PROGRESS": "1"},
                            preexec_fn=ctrl_c_as_in_a_terminal)


def _printed_and_stored_keys(said: str, db: Path) -> tuple[set[str], set[str]]:
    """The hashes of the keys ``said`` shows, and of the active keys stored in ``db`` (none before its tables)."""
    # a key is url-safe base64, which can end in "-": no \b after it, the key alone, whatever character ends it
    keys = re.findall(r"\b(?:wk|ak)_[\w-]{32}(?![\w-])", said)
    printed = {hashlib.sha256(key.encode()).hexdigest() for key in keys}
    if not db.exists() or db.stat().st_size == 0:
        return printed, set()
    with duckdb.connect(str(db), read_only=True) as stored:
        if not stored.execute("SELECT 1 FROM duckdb_tables() WHERE table_name = 'api_keys'").fetchall():
            return printed, set()
        return printed, {row[0] for row in stored.execute("SELECT key_hash FROM api_keys WHERE revoked_at IS NULL")
                         .fetchall()}


def test_keys_generated_at_a_first_start_are_stored_only_as_printed_when_stopped_while_printing(
        tmp_path: Path) -> None:
    """The keys' notice cannot be written at once (stderr is a pipe its reader has not emptied: a busy log
    collector) and the server is stopped meanwhile. Before: the keys were committed before being printed, and
    SIGTERM ended the server with both stored and neither ever shown -- and the next start, finding keys, made
    none. Now nothing is stored before the notice is out, and the stop takes effect once it is."""
    db = tmp_path / "first.duckdb"
    reader, writer = os.pipe()
    os.set_blocking(writer, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(writer, b"." * 4096)  # the pipe full: the server's first write to stderr waits
    os.set_blocking(writer, True)
    server = _serve_first_time(db, writer)
    os.close(writer)
    deadline = time.monotonic() + 60
    while "pipe_write" not in Path(f"/proc/{server.pid}/wchan").read_text():  # anon_pipe_write on Linux 6
        assert time.monotonic() < deadline, "the server did not write to stderr"
        assert server.poll() is None, "the server ended before writing to stderr"
        time.sleep(0.01)
    server.send_signal(signal.SIGTERM)
    time.sleep(0.3)  # the signal is there while the notice waits
    with os.fdopen(reader, "rb") as drained:
        said = drained.read().decode().lstrip(".")
    assert server.wait(timeout=60) == 0, said
    printed, stored = _printed_and_stored_keys(said, db)
    assert len(printed) == 2 and printed == stored, said


def test_a_first_start_stopped_at_any_moment_prints_the_keys_it_stored_or_none(tmp_path: Path) -> None:
    """SIGTERM or Ctrl-C at moments spread over a first start (several at once: the machine's load spreads them
    further). Whatever was printed is what is stored; a start that printed nothing stored nothing, so the next
    one generates keys again."""
    started = time.monotonic()
    calibration = _serve_first_time(tmp_path / "calibration.duckdb", subprocess.PIPE)
    assert calibration.stderr is not None
    assert "Generated" in calibration.stderr.readline().decode()
    whole_start = time.monotonic() - started
    calibration.send_signal(signal.SIGTERM)
    calibration.communicate(timeout=60)
    runs = []
    for n, fraction in enumerate((0.6, 0.75, 0.85, 0.92, 0.97, 1.02)):
        db, log = tmp_path / f"stopped-{n}.duckdb", tmp_path / f"stopped-{n}.log"
        with log.open("wb") as stderr:
            runs.append((db, log, fraction * whole_start, n % 2, _serve_first_time(db, stderr)))
    try:
        started = time.monotonic()
        for _, _, delay, interrupt, server in sorted(runs, key=lambda run: run[2]):
            time.sleep(max(0.0, started + delay - time.monotonic()))
            server.send_signal(signal.SIGINT if interrupt else signal.SIGTERM)
        for db, log, _, _, server in runs:
            server.wait(timeout=60)
            printed, stored = _printed_and_stored_keys(log.read_text(), db)
            assert printed == stored and len(stored) in (0, 2), log.read_text()
    finally:  # a server that did not stop is not left running into the next tests
        for *_, server in runs:
            server.kill()
            server.wait()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_database_an_earlier_version_left_readable_by_all_is_made_private_and_said_once(tmp_path: Path) -> None:
    """Earlier versions wrote the database and its write-ahead log with the umask's mode (0644: every user of the
    machine could read the personal data in them) and the docs asked for a chmod. Opening them now tightens both to
    0600 and says so, naming the file and its old mode; the next command finds nothing to say."""
    db = tmp_path / "old.duckdb"
    wal = tmp_path / "old.duckdb.wal"
    server = start_server(str(db), tmp_path / "server.log")
    server.stop(kill=True)  # the keys it registered at start are in the write-ahead log, not yet in the file
    assert wal.exists()
    db.chmod(0o644)
    wal.chmod(0o640)
    first = portrait("status", "--json", "--db", str(db))
    assert first.returncode == 0, first.stderr
    assert _mode(db) == 0o600  # (the log, written into the file as the command closed it, is gone)
    said = " ".join(first.stderr.split())
    assert f"{db} was open to its group and other users (mode 0644); changed to 0600" in said, first.stderr
    assert f"{wal} was open to its group (mode 0640); changed to 0600" in said, first.stderr
    second = portrait("status", "--json", "--db", str(db))
    assert second.returncode == 0 and "mode" not in second.stderr, second.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_database_of_another_user_readable_by_all_is_left_with_a_warning(tmp_path: Path) -> None:
    db = tmp_path / "theirs.duckdb"
    make_database(db)
    db.chmod(0o644)
    os.chown(db, 65534, 65534)  # nobody's: not this user's to change
    opened = portrait("status", "--json", "--db", str(db))
    assert opened.returncode == 0, opened.stderr
    assert _mode(db) == 0o644
    assert (f"{db} holds personal data and is open to its group and other users (mode 0644), which Portrait could "
            f"not change (it belongs to another user (uid 65534)): run chmod 0600 {db}") in " ".join(
        opened.stderr.split()), opened.stderr
