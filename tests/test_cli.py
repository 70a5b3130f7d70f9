"""The ``portrait`` command on a local database (no server running)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from rich.cells import cell_len
from tests.conftest import ctrl_c_as_in_a_terminal, wait_until_events_are_stored
from tests.test_docs import commands
from typer.testing import CliRunner

from portrait.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTRAIT_NO_PROGRESS", "1")
    for name in ("PORTRAIT_ADMIN_KEY", "PORTRAIT_WRITE_KEY", "PORTRAIT_DB_PATH"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def demo_db(tmp_path: Path) -> str:
    db = str(tmp_path / "demo.duckdb")
    result = runner.invoke(app, ["demo", "--profiles", "60", "--db", db])
    assert result.exit_code == 0, result.output
    assert "Loaded" in result.output
    return db


def test_demo_loads_through_ingestion_and_processes(demo_db: str) -> None:
    result = runner.invoke(app, ["status", "--db", demo_db, "--json"])
    status = json.loads(result.output)
    assert status["events_received"] > 600
    assert status["lag"] == 0
    assert 30 < status["profiles"] <= 120  # anonymous devices of customers who never log in stay separate
    assert status["events_rejected"] == 0
    table = runner.invoke(app, ["status", "--db", demo_db], env={"COLUMNS": "120"})
    assert table.exit_code == 0, table.output
    assert re.search(r"memory database_mb\s*│\s*\d+(\.\d+)?\s", table.output), table.output  # one value a row
    # Words, not Python's None and False: the table is for people (--json keeps null and false)
    assert re.search(r"processing_error\s*│\s*none\s", table.output), table.output
    assert re.search(r"traits_recheck_due\s*│\s*no\s", table.output), table.output


def test_profiles_get_shows_the_unified_profile(demo_db: str) -> None:
    result = runner.invoke(app, ["profiles", "get", "user_id:user-0", "--db", demo_db, "--json"])
    assert result.exit_code == 0, result.output
    profile = json.loads(result.output)
    assert {"user_id", "email", "anonymous_id"} <= {i["type"] for i in profile["identities"]}
    assert profile["events"] and profile["traits"]["email"].split("@")[1].startswith("example.")
    table = runner.invoke(app, ["profiles", "get", "user_id:user-0", "--db", demo_db])
    assert "Traits" in table.output and "Identities" in table.output
    # In 80 columns (a pipe, a small terminal) each identifier stays whole on its line, to be copied, and each
    # event takes one line: the 36-character anonymous ids were broken in two, and an event took up to five lines.
    narrow = runner.invoke(app, ["profiles", "get", "user_id:user-0", "--db", demo_db], env={"COLUMNS": "80"})
    lines = narrow.output.splitlines()
    assert max(len(line) for line in lines if line[:1] in "│┃┏┡└") <= 80  # the tables
    for identity in profile["identities"]:
        assert any(f"│ {identity['value']} " in line for line in lines), (identity, narrow.output)
    events = lines[next(i for i, line in enumerate(lines) if line.startswith("Latest")) + 4:-1]
    assert len(events) == len(profile["events"][:10]) and all(re.match(r"│ \d{4}-", line) for line in events)


def test_profiles_get_events_in_80_columns_with_wide_characters(tmp_path: Path) -> None:
    """An event named in Japanese (each character two columns wide) was measured in characters: the table came
    out too wide for 80 columns, and rich took the difference from the other columns -- the type column squeezed
    to nothing, the time cut to the minute, the name cut."""
    db = str(tmp_path / "p.duckdb")
    (tmp_path / "ev.ndjson").write_text("\n".join(json.dumps(m, ensure_ascii=False) for m in [
        {"type": "track", "event": "注文完了しました", "userId": "u1",
         "properties": {"商品": "テスト商品" * 6, "price": 12}, "timestamp": "2026-01-05T10:11:12Z"},
        {"type": "page", "name": "Pricing", "userId": "u1", "properties": {"path": "/pricing"},
         "timestamp": "2026-01-05T10:12:12Z"}]) + "\n")
    assert runner.invoke(app, ["import", "events", str(tmp_path / "ev.ndjson"), "--db", db]).exit_code == 0
    narrow = runner.invoke(app, ["profiles", "get", "user_id:u1", "--db", db], env={"COLUMNS": "80"})
    lines = narrow.output.splitlines()
    events = lines[next(i for i, line in enumerate(lines) if line.startswith("Latest")) + 4:-1]
    assert len(events) == 2, narrow.output
    assert "│ 2026-01-05T10:12:12.000Z │ page  │ Pricing " in events[0], narrow.output
    assert "│ 2026-01-05T10:11:12.000Z │ track │ 注文完了しました │ {" in events[1], narrow.output
    assert all(cell_len(line) <= 80 and line.endswith("│") for line in events), narrow.output


@pytest.mark.parametrize("user_id", ["customer-0000000000-0000000000-0000000000",
                                     "山田太郎山田太郎-000000000000000000000000"])
def test_profiles_get_keeps_each_identifier_whole_in_80_columns(tmp_path: Path, user_id: str) -> None:
    """The room for the first-seen time was reckoned from the longest type *and* value of one identity, while the
    table's columns are as wide as the longest type and the longest value of any: a 41-character user id beside a
    36-character anonymous id (type anonymous_id) was broken over two lines. And wide characters count twice."""
    db = str(tmp_path / "p.duckdb")
    (tmp_path / "ev.ndjson").write_text(json.dumps({
        "type": "track", "event": "Order", "userId": user_id, "anonymousId": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "properties": {}, "timestamp": "2026-01-05T10:11:12Z"}, ensure_ascii=False) + "\n")
    assert runner.invoke(app, ["import", "events", str(tmp_path / "ev.ndjson"), "--db", db]).exit_code == 0
    narrow = runner.invoke(app, ["profiles", "get", f"user_id:{user_id}", "--db", db], env={"COLUMNS": "80"})
    lines = narrow.output.splitlines()
    assert any(f"│ {user_id} " in line for line in lines), narrow.output
    assert any("│ 0f8fad5b-d9cb-469f-a165-70867728950e " in line for line in lines), narrow.output
    assert all(cell_len(line) <= 80 for line in lines if line[:1] in "│┃┏┡└"), narrow.output


def test_profiles_get_unknown_is_a_clear_error(demo_db: str) -> None:
    result = runner.invoke(app, ["profiles", "get", "email:nobody@example.com", "--db", demo_db])
    assert result.exit_code == 1
    assert "no profile has the identity email:nobody@example.com" in result.output
    # A type misspelt: the identity with the identifier type meant, which the lookup never tried
    for mistyped, meant in (("mail:ann@example.com", "email:ann@example.com"), ("userid:user-0", "user_id:user-0"),
                            ("Loyalty-Card:LC-1", "loyalty_card:LC-1")):
        result = runner.invoke(app, ["profiles", "get", mistyped, "--db", demo_db])
        assert result.exit_code == 1
        assert f"no profile has the identity {mistyped} (did you mean {meant}?)" in result.output, result.output
    result = runner.invoke(app, ["profiles", "get", "email:nobody@example.com", "--db", demo_db])
    assert "did you mean" not in result.output  # a known type: nothing to suggest


@pytest.mark.parametrize(("args", "says"), [
    (["analytics", "breakdown", "poles", "address_country"], "no segment is named 'poles' (did you mean 'Poles'?)"),
    (["segments", "preview", 'in_segment("Pole")'], "no segment is named 'Pole' (did you mean 'Poles'?)"),
    (["analytics", "breakdown", "Poles", "country"],
     "no attribute has the code 'country' (did you mean 'address_country'?)"),
    (["attributes", "show", "frist_name"], "no attribute has the code 'frist_name' (did you mean 'first_name'?)"),
    (["export", "profiles", "-o", "out.csv", "--attributes", "plan,lastname"],
     "no attribute has the code 'lastname' (did you mean 'last_name'?)"),
])
def test_a_misspelt_segment_or_attribute_name_is_answered_with_the_closest_one(
        demo_db: str, args: list[str], says: str) -> None:
    """A new user's `breakdown poles country` said only `no attribute has the code 'country'` (and `no segment is
    named 'poles'` for the segment `Poles`), where a condition's misspelt attribute already got a suggestion."""
    created = runner.invoke(app, ["segments", "create", "Poles", "--condition", 'address_country = "PL"',
                                  "--db", demo_db])
    assert created.exit_code == 0, created.output
    result = runner.invoke(app, [*args, "--db", demo_db])
    assert result.exit_code == 1, result.output
    assert f"error: {says}" in " ".join(result.output.split())


@pytest.mark.parametrize(("args", "env", "says"), [
    (["status", "--url", "http://127.0.0.1:1", "--admin-key", "k"], {},
     "cannot reach the Portrait server at http://127.0.0.1:1"),
    (["status", "--url", "notaurl", "--admin-key", "k"], {}, "cannot reach the Portrait server at notaurl"),
    (["keys", "list", "--db", "/nonexistent/folder/a.duckdb"], {},
     "cannot open the database /nonexistent/folder/a.duckdb: there is no folder /nonexistent/folder (create it"),
    (["status", "--db", "/nonexistent/folder/a.duckdb"], {}, "there is no database at /nonexistent/folder/a.duckdb"),
    (["status", "--db", "{tmp}"], {}, "cannot open the database"),
    (["keys", "list", "--db", "{tmp}/lockers/a.duckdb"], {}, "cannot open the database"),  # not "in use"
    (["status", "--url", "http://[::1", "--admin-key", "k"], {}, "is not a server URL"),
    (["profiles", "get", "user_id:1", "--db", "{tmp}/not-duckdb.txt"], {},
     "the file does not start as a DuckDB database does; nothing was changed"),
    (["status", "--db", "{tmp}/a.duckdb"], {"PORTRAIT_PORT": "eighty"}, "invalid setting: PORTRAIT_PORT='eighty'"),
    (["serve", "--db", "{tmp}/a.duckdb"], {"PORTRAIT_PROCESSOR_BATCH_SIZE": "0"},
     "invalid setting: PORTRAIT_PROCESSOR_BATCH_SIZE=0: processor_batch"),
    (["export", "profiles", "-o", "{tmp}/missing/out.csv", "--db", "{tmp}/a.duckdb"], {},
     "cannot write the export to {tmp}/missing/out.csv: there is no folder {tmp}/missing"),
    (["export", "profiles", "-o", "{tmp}", "--format", "csv", "--db", "{tmp}/a.duckdb"], {},
     "cannot write the export to {tmp}: it is a folder"),
    (["privacy", "request", "--type", "access", "--identity", "user_id:1", "-o", "{tmp}/missing/x.json", "--db",
      "{tmp}/a.duckdb"], {}, "cannot write the access export to {tmp}/missing/x.json: there is no folder"),
    (["import", "events", "{tmp}/not-duckdb.txt", "--format", "ndjson", "--rejects", "{tmp}/missing/r.ndjson",
      "--db", "{tmp}/a.duckdb"], {}, "cannot write the rejected rows to {tmp}/missing/r.ndjson: there is no folder"),
    (["import", "events", "{tmp}/not-duckdb.txt", "--format", "parquet", "--db", "{tmp}/a.duckdb"], {},
     "not-duckdb.txt is not a Parquet file: Parquet file size is 5 bytes"),
])
def test_mistakes_end_with_a_clear_message_not_a_traceback(tmp_path: Path, args: list[str], env: dict[str, str],
                                                          says: str) -> None:
    (tmp_path / "not-duckdb.txt").write_text("hello")
    result = runner.invoke(app, [a.replace("{tmp}", str(tmp_path)) for a in args], env=env)
    assert result.exit_code == 1, result.output
    assert says.replace("{tmp}", str(tmp_path)) in " ".join(result.output.split()), result.output  # rich may wrap
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("command", [["status"], ["profiles", "get", "user_id:1"], ["events", "tail"],
                                     ["events", "rejected"], ["quality"],
                                     ["export", "profiles", "-o", "{tmp}/out.csv"], ["attributes", "list"],
                                     ["attributes", "show", "email"], ["attributes", "analytics", "age"],
                                     ["segments", "list"], ["segments", "show", "vip"],
                                     ["segments", "preview", "age > 30"], ["segments", "members", "vip"],
                                     ["segments", "explain", "vip", "user_id:1"], ["analytics", "funnel", "A", "B"],
                                     ["analytics", "breakdown", "vip", "age"], ["analytics", "sizes", "vip"],
                                     ["audit"], ["privacy", "list"], ["privacy", "show", "pr_1"], ["sources", "list"],
                                     ["sources", "show", "crm"], ["backups"]])
def test_a_command_that_only_reads_does_not_create_a_database(tmp_path: Path, command: list[str]) -> None:
    """A mistyped --db (or a command run from another folder) made a new, empty database and printed new keys,
    which read as the data being gone."""
    typo = tmp_path / "portait.duckdb"
    result = runner.invoke(app, [*(c.replace("{tmp}", str(tmp_path)) for c in command), "--db", str(typo)])
    assert result.exit_code == 1 and f"there is no database at {typo}" in " ".join(result.output.split())
    assert not typo.exists() and "write key" not in result.output.lower()


@pytest.mark.parametrize(("args", "names"), [
    (["demo", "--profiles", "-3"], "--profiles"),
    (["serve", "--port", "99999"], "--port"),
    (["profiles", "get", "user_id:1", "--events", "-1"], "--events"),
    (["events", "tail", "-n", "-5"], "-n"),
    (["events", "rejected", "--limit", "0"], "--limit"),
    (["analytics", "breakdown", "vip", "country", "--top", "-1"], "--top"),  # was DuckDB's "LIMIT cannot be negative"
    (["analytics", "breakdown", "vip", "country", "--top", "101"], "--top"),  # the API's limit
    (["audit", "--before", "-5"], "--before"),  # was "The audit log has no entries yet."
])
def test_out_of_range_options_are_refused_by_name(tmp_path: Path, args: list[str], names: str) -> None:
    result = runner.invoke(app, [*args, "--db", str(tmp_path / "a.duckdb")])
    assert result.exit_code == 2
    assert "Invalid value" in result.output and names in result.output
    assert not (tmp_path / "a.duckdb").exists()  # refused before anything was opened


def test_events_tail_prints_the_latest_events(demo_db: str) -> None:
    result = runner.invoke(app, ["events", "tail", "-n", "5", "--db", demo_db, "--json"])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.output.splitlines()]  # one JSON object per line
    assert len(events) == 5 and [e["seq"] for e in events] == sorted(e["seq"] for e in events)


def test_events_rejected_lists_reasons(tmp_path: Path) -> None:
    from portrait.config import Settings
    from portrait.service import Portrait

    db = str(tmp_path / "r.duckdb")
    service = Portrait(Settings(db_path=db), background=False)
    service.ingest_messages([{"type": "track", "userId": "u", "messageId": "bad-1"}])
    service.close()
    result = runner.invoke(app, ["events", "rejected", "--db", db, "--json"])
    rejected = json.loads(result.stdout)["rejected"]
    assert [(r["code"], r["message_id"]) for r in rejected] == [("missing_field", "bad-1")]


def test_first_use_prints_generated_keys_once(tmp_path: Path) -> None:
    db = str(tmp_path / "keys.duckdb")
    first = runner.invoke(app, ["keys", "list", "--db", db])  # a command that may create the database
    assert "Generated write key" in first.output and "Generated admin key" in first.output
    second = runner.invoke(app, ["status", "--db", db])
    assert "Generated" not in second.output


def run_piped(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command with its output piped (not a terminal), as in `portrait ... --json | jq`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PORTRAIT_")}
    return subprocess.run([sys.executable, "-m", "portrait", *args], capture_output=True, text=True,
                          env={**clean, **(env or {})}, timeout=120)


def test_piped_output_holds_only_the_data(tmp_path: Path) -> None:
    """Generated keys went to stdout before the JSON (`keys list --json | jq` failed on a first use), and a
    progress bar's last frame was printed into a piped stdout."""
    listed = run_piped("keys", "list", "--json", "--db", str(tmp_path / "new.duckdb"))
    assert listed.returncode == 0, listed.stderr
    assert {key["kind"] for key in json.loads(listed.stdout)} == {"write", "admin"}
    assert "Generated admin key" in listed.stderr  # shown, beside the data rather than in it
    loaded = run_piped("demo", "--profiles", "5", "--db", str(tmp_path / "new.duckdb"))
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.splitlines() == ["Loaded 111 events for 5 customers."]
    assert "━" not in loaded.stderr  # no terminal to draw a bar on


def test_rejected_rows_that_cannot_be_written_end_the_import_clearly(tmp_path: Path) -> None:
    """The rejects file beside the imported one could not be created (here a folder has its name; a read-only
    folder does the same): a traceback part-way through the import."""
    source = tmp_path / "events.ndjson"
    source.write_text('{"type": "track", "userId": "u1", "event": "Seen", "messageId": "m1"}\nnot json\n')
    (tmp_path / "events.ndjson.rejects.ndjson").mkdir()
    db = str(tmp_path / "a.duckdb")
    result = runner.invoke(app, ["import", "events", str(source), "--db", db])
    assert result.exit_code == 1 and not isinstance(result.exception, OSError), result.output
    assert f"cannot write the rejected rows to {source}.rejects.ndjson" in " ".join(result.output.split())
    again = runner.invoke(app, ["import", "events", str(source), "--db", db, "--rejects", str(tmp_path / "r.ndjson")])
    assert again.exit_code == 0 and "rejected 1" in again.output, again.output  # run again, nothing lost
    assert json.loads((tmp_path / "r.ndjson").read_text())["code"] == "invalid_message"


COMMANDS_WITH_EXAMPLES = {"import events", "import profiles", "export profiles", "profiles get", "events tail",
                          "segments create", "segments preview", "analytics funnel", "privacy request", "demo",
                          "sources add", "restore"}


def test_the_help_examples_are_commands_that_parse() -> None:
    """`--help` shows how a command is used; each example is parsed as the command line it is, so an option renamed
    or made stricter cannot leave an example that fails."""
    root = typer.main.get_command(app)
    found: dict[str, list[str]] = {}
    for path, command in commands(root):
        examples = [line.strip() for line in (command.help or "").splitlines() if line.strip().startswith("portrait ")]
        if examples:
            found[" ".join(path)] = examples
    assert set(found) >= COMMANDS_WITH_EXAMPLES
    for example in (e for examples in found.values() for e in examples):
        words, command = shlex.split(example)[1:], root
        while getattr(command, "commands", None):
            command = command.commands[words.pop(0)]
        command.make_context(example, words)  # raises (a usage error) on an unknown option or a bad value


def test_help_shows_paragraphs_whole_and_examples_line_by_line() -> None:
    """--help kept the docstring's line breaks: sentences were cut where the source code wraps."""
    shown = runner.invoke(app, ["import", "events", "--help"], env={"COLUMNS": "250"}).output
    assert "as the HTTP API takes them. With them (and always for CSV), each row becomes a track event." in shown
    assert "\n portrait import events tracks.ndjson" in shown


def test_ctrl_c_during_a_long_load_says_what_is_kept_and_the_database_stays_whole(tmp_path: Path) -> None:
    """Ctrl-C (a real SIGINT) ended `demo`/`import` with exit code 130 and not a word: was anything loaded, is it
    safe to run again?"""
    db = tmp_path / "big.duckdb"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PORTRAIT_")}
    loading = subprocess.Popen([sys.executable, "-m", "portrait", "demo", "--profiles", "200000", "--db", str(db)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean,
                               preexec_fn=ctrl_c_as_in_a_terminal)
    wait_until_events_are_stored(db, loading)
    loading.send_signal(signal.SIGINT)
    _, stderr = loading.communicate(timeout=60)
    assert loading.returncode == 130, stderr
    assert "interrupted: what was loaded stays; run the same command again" in " ".join(stderr.split())
    status = json.loads(run_piped("status", "--json", "--db", str(db)).stdout)
    assert 0 < status["events_received"] == status["events_processed"]  # whole batches, all processed


def test_ctrl_c_while_the_command_starts_is_one_line(tmp_path: Path) -> None:
    """Ctrl-C in the second or two the CLI spends importing DuckDB, pyarrow and FastAPI printed a traceback of
    whichever module was loading. The signal is sent once the interpreter runs our code (it has loaded DuckDB's
    library) and before the command could start (it would create the database)."""
    db = tmp_path / "never.duckdb"
    starting = subprocess.Popen([sys.executable, "-m", "portrait", "demo", "--profiles", "10", "--db", str(db)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=ctrl_c_as_in_a_terminal)
    maps = Path(f"/proc/{starting.pid}/maps")
    deadline = time.monotonic() + 30
    while "duckdb" not in maps.read_text() and time.monotonic() < deadline:
        time.sleep(0.002)
    starting.send_signal(signal.SIGINT)
    _, stderr = starting.communicate(timeout=30)
    assert not db.exists(), "sent too late to test the start: the command had begun"
    assert starting.returncode == 130, stderr
    assert stderr.strip() == "Interrupted while starting: nothing was done."


# The CLI as `portrait` runs it, with a real SIGINT arriving while typer builds the command from the functions'
# signatures (after the imports, before click reads the command line): the moment is made certain by sending the
# signal from inside typer's get_command, the code a Ctrl-C pressed then interrupts.
_CTRL_C_WHILE_TYPER_BUILDS_THE_COMMAND = """
import os, signal, time
import typer.main
from portrait.__main__ import main
build = typer.main.get_command
def interrupted_build(typer_app):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
    return build(typer_app)
typer.main.get_command = interrupted_build
main()
"""


def test_ctrl_c_while_typer_builds_the_command_is_one_line(tmp_path: Path) -> None:
    """Past the imports, typer still spends tens of milliseconds (seconds on a busy machine) building the command
    from the functions' signatures: a Ctrl-C then printed a traceback of typer's inspection, exit status -2."""
    db = tmp_path / "never.duckdb"
    starting = subprocess.run([sys.executable, "-c", _CTRL_C_WHILE_TYPER_BUILDS_THE_COMMAND, "demo", "--profiles",
                               "10", "--db", str(db)], capture_output=True, text=True, timeout=60,
                              preexec_fn=ctrl_c_as_in_a_terminal)
    assert starting.returncode == 130, starting.stderr
    assert starting.stderr.strip() == "Interrupted while starting: nothing was done."
    assert not db.exists()


@pytest.mark.parametrize(("content", "says"), [
    (b"PAR1" + bytes(range(256)) * 8 + b"PAR1", "it is Parquet: pass --format parquet"),
    ("id,mail\n1,ann@example.com\n".encode("utf-16"), "it is UTF-16"),  # Excel's "Unicode text"
    ("id,prénom\n1,Zoé\n".encode("latin-1"), "save it as UTF-8"),
    (b"id,mail\n" + bytes(range(256)), "it holds NUL bytes"),
])
def test_a_binary_file_read_as_csv_is_named_as_such(tmp_path: Path, content: bytes, says: str) -> None:
    """A binary file read as CSV ended with its bytes printed in the error (and pyarrow's "Exception ignored"
    traceback about decoding them)."""
    source = tmp_path / "customers.csv"
    source.write_bytes(content)
    result = runner.invoke(app, ["import", "profiles", str(source), "--user-id", "id", "--db",
                                 str(tmp_path / "a.duckdb")])
    assert result.exit_code == 1, result.output
    shown = " ".join(result.output.split())
    assert "customers.csv is not UTF-8 text" in shown and says in shown
    assert "Exception ignored" not in shown and "\ufffd" not in shown


# What a sender can put in an event name, a trait or a user id, for a terminal: rich markup (a closing tag with
# nothing to close made `events tail` fail; [link=...] a hyperlink), emoji codes, and escape sequences (clear the
# screen, retitle the window).
MARKUP = "[bold]Paid[/] [/] [link=https://evil.example]pay here[/link] :smile:"
ESCAPES = "\x1b[2J\x1b]0;owned\x07\u202e"


def test_customer_data_is_printed_as_text_not_as_markup_or_terminal_codes(tmp_path: Path) -> None:
    from portrait.config import Settings
    from portrait.service import Portrait

    db = str(tmp_path / "hostile.duckdb")
    service = Portrait(Settings(db_path=db), background=False)
    service.ingest_messages([
        {"type": "identify", "userId": f"u{ESCAPES}", "traits": {"plan": MARKUP, "nickname": ESCAPES}},
        {"type": "track", "userId": f"u{ESCAPES}", "event": MARKUP + ESCAPES, "properties": {}},
        {"type": "track", "userId": "[/]", "messageId": "[/]"}])  # rejected: no event name
    service.process_pending()
    service.segments.create({"name": "marked", "condition": f'plan = "{MARKUP}"'})
    service.close()
    for args in (["events", "tail"], ["events", "rejected"], ["profiles", "get", f"user_id:u{ESCAPES}"],
                 ["segments", "explain", "marked", f"user_id:u{ESCAPES}"], ["segments", "list"]):
        result = runner.invoke(app, [*args, "--db", db])
        assert result.exit_code == 0, (args, result.output, result.exception)
        assert "\x1b" not in result.output and "\u202e" not in result.output, args
        assert "😄" not in result.output, args
        if args[-1] not in ("rejected", "list"):  # there the cells are narrow: the text is wrapped
            assert "[/] [link=https://evil.example]" in result.output, (args, result.output)
        if args[1] in ("tail", "get"):  # the escapes are in the user id and a trait
            assert "U+001B[2JU+001B]0;ownedU+0007U+202E" in result.output, (args, result.output)


def test_analytics_sizes_prints_every_recount_page_after_page(tmp_path: Path) -> None:
    """The API pages a segment's sizes (1,000 a page): the command follows the pages to the last point."""
    from portrait.config import Settings
    from portrait.service import Portrait
    from portrait.sql import parse

    db = str(tmp_path / "sizes.duckdb")
    portrait = Portrait(Settings(db_path=db), background=False)
    segment = portrait.create_segment({"name": "everyone", "condition": "email is set"})
    session = portrait.store.session()
    try:  # a week of recounts every 5 minutes (2,016), as the recount thread records them
        session.execute(parse("INSERT INTO segment_sizes (segment_id, at, size) SELECT ?, TIMESTAMP '2026-11-01' "
                              "+ INTERVAL 5 MINUTE * i, i FROM range(1, 2017) AS t(i)"), [segment["id"]])
    finally:
        session.close()
    portrait.close()
    result = runner.invoke(app, ["analytics", "sizes", "everyone", "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    points = json.loads(result.stdout)
    assert len(points) == 2017  # and the point of its creation, today, last
    assert [point["size"] for point in points[:-1]] == list(range(1, 2017))
