"""The ``portrait`` command under Ctrl-C, SIGTERM and output that cannot be written (a closed pipe, a full disk):
real processes, real signals, real pipes, a real DuckDB file."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
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
