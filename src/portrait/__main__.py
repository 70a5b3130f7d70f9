"""``python -m portrait`` and the ``portrait`` command: the CLI."""

import codecs
import io
import os
import sys
from collections.abc import Callable
from typing import TextIO

from portrait.untrusted import UNICODE_ESCAPES

# What the command writes (the database and its write-ahead log, spill files, backups, exports, the server file)
# holds personal data: readable by its owner only, whatever the umask (commonly 022: world-readable files).
PRIVATE = 0o077


def main() -> None:
    """Run the CLI. Its imports (DuckDB, pyarrow, FastAPI...) take a second or two before click handles Ctrl-C:
    pressed then, it printed a long traceback of whichever module was loading."""
    os.umask(os.umask(PRIVATE) | PRIVATE)  # os.umask returns the mask it replaces: keep what that forbade too
    for stream in (sys.stdout, sys.stderr):
        _escape_what_the_terminal_cannot_show(stream)
    try:
        command = _the_command()
    except KeyboardInterrupt:
        print("Interrupted while starting: nothing was done.", file=sys.stderr)
        raise SystemExit(130) from None
    run_reporting_damage(command)


def _the_command() -> Callable[[], object]:
    """The click command. Typer builds it from the functions' signatures each time the app is called, tens of
    milliseconds after the imports (seconds on a busy machine) outside click's own handling of Ctrl-C: built here,
    where a Ctrl-C is the one line above instead of a traceback of typer's inspection. (The app's pretty
    exceptions are off, so calling the command directly loses nothing of typer's.)"""
    import typer.main

    from portrait.cli import app

    command: Callable[[], object] = typer.main.get_command(app)
    return command


def run_reporting_damage(app: Callable[[], object]) -> None:
    """Run the CLI app; a damaged database file, which DuckDB finds only when it reads the damaged block (any
    command, any query), ends it with one line saying so instead of a traceback of whatever was reading."""
    from portrait.store.duckdb import damage

    try:
        app()
    except Exception as exc:
        problem = damage(exc)
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(1) from None


def _escape_what_the_terminal_cannot_show(stream: TextIO | None) -> None:
    """On a terminal whose encoding is not UTF-8 (LANG=en_US.ISO-8859-1, PYTHONIOENCODING=ascii) printing a name
    such as "Zoë", or an emoji, ended the command in a UnicodeEncodeError. Such characters are written as
    ``\\u00eb`` instead (tables escape them before measuring columns: see cli.common.Terminal)."""
    if isinstance(stream, io.TextIOWrapper) and codecs.lookup(stream.encoding).name != "utf-8":
        stream.reconfigure(errors=UNICODE_ESCAPES)


if __name__ == "__main__":
    main()
