"""The ``portrait`` command under Ctrl-C, SIGTERM and output that cannot be written (a closed pipe, a full disk):
real processes, real signals, real pipes, a real DuckDB file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from tests.conftest import ADMIN_KEY, WRITE_KEY, ctrl_c_as_in_a_terminal

from portrait.config import Settings
from portrait.service import Portrait

LOGGED_EVENTS = 400_000  # enough for a backup (one COPY statement) to take about a second
# Exit code 130, or killed by a Ctrl-C pressed again as the interpreter ends (it has put back the default action by
# then): a shell shows both as 130.
ENDED_BY_CTRL_C = (128 + signal.SIGINT, -signal.SIGINT)


CLEAN = {k: v for k, v in os.environ.items() if not k.startswith("PORTRAIT_")}


def _portrait(*args: str, stdout: int | None = subprocess.PIPE) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "portrait", *args], stdout=stdout, stderr=subprocess.PIPE,
                            text=True, env=CLEAN, preexec_fn=ctrl_c_as_in_a_terminal)


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database with 5,000 events: ``events tail -n 5000 --json`` prints over a megabyte, more than a pipe holds."""
    db = tmp_path_factory.mktemp("logged") / "logged.duckdb"
    _database_with_a_long_log(db, 5_000)
    return db


def _database_with_a_long_log(path: Path, events: int = LOGGED_EVENTS) -> None:
    """A Portrait database whose event log holds that many processed events, written in one SQL statement (a
    second or two; ingesting and processing them would take a minute)."""
    Portrait(Settings(db_path=str(path), write_key=WRITE_KEY, admin_key=ADMIN_KEY), background=False).close()
    with duckdb.connect(str(path)) as con:
        con.execute("""
            INSERT INTO events (seq, message_id, type, event, user_id, timestamp, received_at, properties, source)
            SELECT i, 'm-' || i, 'track', 'Viewed', 'u' || (i % 50000), TIMESTAMP '2026-01-01' + to_seconds(i),
                   TIMESTAMP '2026-01-02', '{"sku": "' || md5(i::VARCHAR) || '"}', 'test'
            FROM range(1, $n + 1) AS t(i)""", {"n": events})
        con.execute("UPDATE processor_state SET value = $n", {"n": events})  # watermark, events processed
        con.execute("UPDATE segment_state SET value = $n", {"n": events})
        con.execute("UPDATE counters SET value = $n WHERE name = 'events_received'", {"n": events})


def _interrupt_until_it_ends(process: subprocess.Popen[str], signal_number: int) -> str:
    """Send the signal, again every few seconds while the process runs (as someone pressing Ctrl-C again would),
    and return its stderr. Not faster: a second Ctrl-C landing while the command closes the database after the
    first replaced the first one's failure (a traceback, exit code 1) with a clean KeyboardInterrupt."""
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        process.send_signal(signal_number)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
    _, stderr = process.communicate(timeout=30)
    return stderr


def test_ctrl_c_inside_a_duckdb_statement_ends_the_command_as_ctrl_c_does(tmp_path: Path) -> None:
    """Ctrl-C while DuckDB ran a statement (here the backup's copy) came back from DuckDB as RuntimeError('Query
    interrupted'): a traceback and exit code 1 (and `profiles rebuild` took it for a failed batch and carried on
    to exit code 0). Now: exit code 130, no traceback, no backup left half made, the database as it was."""
    db = tmp_path / "big.duckdb"
    _database_with_a_long_log(db)
    backing_up = _portrait("backup", "--db", str(db))
    copying = tmp_path / "backups"
    deadline = time.monotonic() + 30
    while not list(copying.glob("*.partial")) and backing_up.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.1)  # past the ATTACH, into the copy (about a second)
    stderr = _interrupt_until_it_ends(backing_up, signal.SIGINT)
    assert backing_up.returncode in ENDED_BY_CTRL_C, stderr
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    assert list(copying.iterdir()) == []  # neither a backup nor what one left
    opened = subprocess.run([sys.executable, "-m", "portrait", "status", "--json", "--db", str(db)],
                            capture_output=True, text=True, timeout=60)
    assert opened.returncode == 0, opened.stderr
    assert json.loads(opened.stdout)["events_received"] == LOGGED_EVENTS
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*), max(seq) FROM events").fetchall() == [(LOGGED_EVENTS, LOGGED_EVENTS)]


def _run_side_by_side(commands: list[list[str]], db: Path, stdout: Any) -> dict[str, tuple[int, str]]:
    """Each command on a copy of ``db`` (one process may open a database), all at once; exit code and stderr."""
    running = {}
    for number, command in enumerate(commands):
        copy = db.with_name(f"copy{number}-{db.name}")
        shutil.copyfile(db, copy)
        copy.chmod(0o600)  # as Portrait makes its files: no notice that it made it so
        on_copy = ["--db", str(copy)] if command[-1] not in ("--version", "--help") else []  # those open none
        running[" ".join(command)] = subprocess.Popen(
            [sys.executable, "-m", "portrait", *command, *on_copy],
            stdout=stdout, stderr=subprocess.PIPE, text=True, env=CLEAN)
    return {name: (process.wait(timeout=60), process.communicate()[1]) for name, process in running.items()}


def test_output_into_a_pipe_closed_by_its_reader_ends_as_unix_tools_do(logged: Path) -> None:
    """`portrait ... | head -1` ended with exit code 1 (rich's and click's handling of BrokenPipeError), as if the
    command had failed. Now it dies of SIGPIPE as ls, cat and git do: no word on stderr, 141 to a shell."""
    reading, writing = os.pipe()
    os.close(reading)  # the reader is gone before the commands write their first byte
    try:
        ended = _run_side_by_side([["status", "--json"], ["segments", "list"], ["events", "tail", "--json"],
                                   ["--version"], ["--help"], ["events", "tail", "--help"]], logged, writing)
    finally:
        os.close(writing)
    assert ended == dict.fromkeys(ended, (-signal.SIGPIPE, ""))


def test_head_reading_one_line_of_a_long_output(logged: Path) -> None:
    """A real shell pipeline: head exits after the first line while the command still writes (a megabyte)."""
    shell = subprocess.run(
        ["bash", "-c", f'"$0" -m portrait events tail -n 5000 --json --db {logged} | head -1; '
                       'echo "status ${PIPESTATUS[0]}" >&2', sys.executable],
        capture_output=True, text=True, env=CLEAN, timeout=60)
    assert json.loads(shell.stdout)["seq"] == 1
    assert shell.stderr == "status 141\n"


def test_output_onto_a_full_disk_is_one_line_saying_so(logged: Path) -> None:
    """`portrait status > /dev/full` (stdout on a full disk) ended in a traceback of rich's write."""
    with open("/dev/full", "w") as full:
        ended = _run_side_by_side([["status"], ["events", "tail", "-n", "3", "--json"]], logged, full)
    assert ended == dict.fromkeys(ended, (1, "error: could not write the output: No space left on device\n"))


def test_help_onto_a_full_disk_is_one_line_saying_so() -> None:
    """A command's or a group's help is printed while its own arguments are parsed, outside the top command's
    handling of output: `portrait demo --help > /dev/full` ended in a traceback of rich's write."""
    asked = [["demo", "--help"], ["profiles", "get", "--help"], ["profiles", "--help"], ["profiles"], ["--help"]]
    with open("/dev/full", "w") as full:
        running = {" ".join(args): subprocess.Popen([sys.executable, "-m", "portrait", *args], stdout=full,
                                                    stderr=subprocess.PIPE, text=True, env=CLEAN) for args in asked}
        ended = {name: (process.wait(timeout=60), process.communicate()[1]) for name, process in running.items()}
    assert ended == dict.fromkeys(ended, (1, "error: could not write the output: No space left on device\n"))


def test_ctrl_c_while_encrypt_copies_the_database_leaves_it_as_it_was(tmp_path: Path) -> None:
    """`portrait encrypt` copies the database in a connection of its own (not the store's): Ctrl-C during the copy
    printed DuckDB's RuntimeError as a traceback and left the half-written copy, ``<db>.compacting``, beside it."""
    db = tmp_path / "big.duckdb"
    _database_with_a_long_log(db)
    copy = Path(f"{db}.compacting")
    encrypting = subprocess.Popen([sys.executable, "-m", "portrait", "encrypt", "--db", str(db)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**CLEAN, "PORTRAIT_ENCRYPTION_KEY": "k" * 32},
                                  preexec_fn=ctrl_c_as_in_a_terminal)
    deadline = time.monotonic() + 30
    while not copy.exists() and encrypting.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.1)  # past the ATTACH, into the copy
    stderr = _interrupt_until_it_ends(encrypting, signal.SIGINT)
    assert encrypting.returncode in ENDED_BY_CTRL_C, stderr
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    assert not copy.exists() and not Path(f"{copy}.wal").exists()
    with duckdb.connect(str(db), read_only=True) as con:  # not encrypted: it opens without a key, whole
        assert con.execute("SELECT count(*), max(seq) FROM events").fetchall() == [(LOGGED_EVENTS, LOGGED_EVENTS)]


# Run as `python -c` in the child: the CLI, with a Ctrl-C sent to itself (a real SIGINT) the moment the module named
# in argv[1] starts to load. Python acts on the signal at its next instruction, inside that import, where a Ctrl-C
# pressed by hand lands only when it is pressed in just that moment.
_CTRL_C_WHILE_IMPORTING = """
import os, signal, sys

watched = sys.argv[1]

class CtrlCWhileImporting:
    def find_spec(self, name, path=None, target=None):
        if name == watched:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlCWhileImporting())
sys.argv[:2] = ["portrait"]
from portrait.__main__ import main
main()
"""


# pyarrow.pandas_compat: pyarrow passed that one on even before; kept so that loading it early stays harmless.
@pytest.mark.parametrize("loading", ["pandas", "pyarrow.dataset", "pyarrow.pandas_compat"])
def test_ctrl_c_while_a_library_loads_itself_is_not_swallowed(tmp_path: Path, loading: str) -> None:
    """DuckDB loads pandas at the first statement with parameters (a new database's migrations) and pyarrow.dataset
    at the first Arrow result, and pyarrow loads its pandas support at the first table built from rows: a Ctrl-C
    landing while one of them loaded was taken by that library for "not installed" and dropped -- `portrait demo`
    Ctrl-C'd 0.05 s after it created its database loaded all of it and exited 0 -- or left pandas half loaded (a
    traceback: "partially initialized module 'pandas'"). They are loaded before the database is opened now: exit code
    130, no traceback, and the database, if there is one, opens."""
    db = tmp_path / "new.duckdb"
    demo = subprocess.Popen([sys.executable, "-c", _CTRL_C_WHILE_IMPORTING, loading, "demo", "--profiles", "2000",
                             "--db", str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLEAN,
                            preexec_fn=ctrl_c_as_in_a_terminal)
    stdout, stderr = demo.communicate(timeout=120)
    assert demo.returncode == 128 + signal.SIGINT, stderr
    assert "Traceback" not in stderr and "Loaded" not in stdout, stderr
    if db.exists():
        opened = subprocess.run([sys.executable, "-m", "portrait", "status", "--json", "--db", str(db)],
                                capture_output=True, text=True, timeout=60, env=CLEAN)
        assert opened.returncode == 0, opened.stderr
