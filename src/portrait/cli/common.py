"""Shared pieces of the ``portrait`` command: the Typer apps, options, output, and where commands run."""

from __future__ import annotations

import contextlib
import errno
import inspect
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from stat import S_ISDIR, S_ISREG
from types import FrameType
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from portrait import __version__
from portrait.client import RemotePortrait, process_alive, running_server_url
from portrait.config import Settings, load_settings
from portrait.errors import DatabaseInUse, NotFound, PortraitError
from portrait.service import Portrait
from portrait.untrusted import encodable, with_code_points


class OutputLost(Exception):
    """What a command printed could not be written for a reason other than a closed pipe: stdout on a full disk
    (``portrait status > /dev/full``), a quota, an I/O error."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error.strerror or str(error))
        self.reason = error.strerror or str(error)


class _Commands(TyperGroup):
    """The ``portrait`` command: its subcommands, and how one ends when its output cannot be written. The
    database is closed by then (the error passed through the command's ``with``)."""

    # The contexts are click's, which typer >= 0.29 carries inside (typer._click) and older versions import.
    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        """Parsing prints --help and --version: only output can fail here (typer's console raises OSError)."""
        with _output_failures_ended(), output_written(), _help_into_a_closed_pipe_raised():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        with _output_failures_ended():
            return super().invoke(ctx)


class _HelpWritten:
    """A command or group whose ``--help`` that cannot be written (``portrait demo --help > /dev/full``) ends as any
    other output that cannot be: one line, exit code 1 (see _Commands). The help of a subcommand is printed while
    its own arguments are parsed, in its own context, outside the top group's: it ended in a traceback of rich's
    write. Parsing opens no files (no File parameters), so an OSError here is the output's."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        with output_written(), _help_into_a_closed_pipe_raised():
            return super().make_context(info_name, args, parent, **extra)  # type: ignore[misc]


def _raise_broken_pipe(console: Console) -> None:
    console.quiet = True
    raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


@contextmanager
def _help_into_a_closed_pipe_raised() -> Iterator[None]:
    """typer writes --help through a rich Console of its own, whose answer to a closed pipe is ``SystemExit(1)``:
    ``portrait --help | head -1`` ended with exit code 1, as if it had failed. While the arguments are parsed (where
    help is printed) a closed pipe raises BrokenPipeError instead, which _Commands ends as for any other output."""
    rich_answer = Console.on_broken_pipe
    Console.on_broken_pipe = _raise_broken_pipe  # type: ignore[method-assign, assignment]
    try:
        yield
    finally:
        Console.on_broken_pipe = rich_answer  # type: ignore[method-assign]


class _HelpWrittenCommand(_HelpWritten, TyperCommand):
    pass


class _HelpWrittenGroup(_HelpWritten, TyperGroup):
    pass


def check_help_output(group: typer.Typer) -> None:
    """Make every command and group below ``group`` one whose --help is written as _HelpWritten says."""
    for command in group.registered_commands:
        if command.cls in (None, TyperCommand):  # typer's default: every command here
            command.cls = _HelpWrittenCommand
    for subgroup in group.registered_groups:
        subgroup.cls = _HelpWrittenGroup
        if subgroup.typer_instance is not None:
            check_help_output(subgroup.typer_instance)


@contextmanager
def _output_failures_ended() -> Iterator[None]:
    try:
        yield
    except BrokenPipeError:  # `portrait ... | head -1`: rich and click ended it with exit code 1
        _end_as_unix_tools_do_on_a_closed_pipe()
    except OutputLost as exc:  # was a traceback
        with contextlib.suppress(OSError):  # stderr may be just as unwritable
            errors.print(f"error: could not write the output: {exc.reason}", style="bold red", soft_wrap=True,
                         highlight=False)
        raise typer.Exit(code=1) from None


def _end_as_unix_tools_do_on_a_closed_pipe() -> NoReturn:
    """Die of SIGPIPE, as ls, cat, grep and git do when what reads their output has gone: no message (the shell
    prints none for SIGPIPE), exit status 141 to a shell. Not 0: the output was not all delivered, which a script
    with ``set -o pipefail`` is entitled to see; and not 1 with an error, which would be noise after ``head``.
    Python ignores SIGPIPE (so that a write raises BrokenPipeError instead); the default action is put back first.
    Whatever is still buffered for the closed pipe is dropped with the process, not flushed into another error."""
    with contextlib.suppress(OSError):
        sys.stderr.flush()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    raise SystemExit(128 + signal.SIGPIPE)  # not reached: the signal ends the process


app = typer.Typer(help="Portrait: a self-hosted customer data platform.", no_args_is_help=True,
                  pretty_exceptions_enable=False, cls=_Commands)


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(f"portrait {__version__}")
        raise typer.Exit()


@app.callback()
def _everywhere(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print the version and exit.")] = False) -> None:
    """Options of the command itself (before any subcommand)."""


profiles_app = typer.Typer(help="Look up unified customer profiles.", no_args_is_help=True)
events_app = typer.Typer(help="Inspect the event log.", no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")
app.add_typer(events_app, name="events")
import_app = typer.Typer(help="Bring data in from files.", no_args_is_help=True)
app.add_typer(import_app, name="import")
attributes_app = typer.Typer(help="The profile attribute registry.", no_args_is_help=True)
app.add_typer(attributes_app, name="attributes")
export_app = typer.Typer(help="Take data out to files.", no_args_is_help=True)
app.add_typer(export_app, name="export")


class Terminal(Console):
    """A rich console that prints text as it is. Event names, traits and identifiers come from senders: read as
    rich markup, "[/]" in one made ``events tail`` fail and "[link=...]" drew a hyperlink; escape sequences in
    them could clear or retitle the terminal. So no markup or emoji codes are read in any text printed, and
    control and invisible characters are written as their code point (:mod:`portrait.untrusted`), and characters
    a terminal that is not UTF-8 cannot show as ``\\u00eb``. Styles are given as styles (``style=``,
    :class:`rich.text.Text`), never as markup. Tables wrap a value too long for its column rather than cut it."""

    def __init__(self, **options: Any) -> None:
        super().__init__(markup=False, emoji=False, **options)

    def print(self, *objects: Any, **options: Any) -> None:
        for shown in objects:
            if isinstance(shown, Table):
                _wrap_long_values(shown)
        with output_written():
            super().print(*objects, **options)

    def on_broken_pipe(self) -> None:
        """Rich's own ends the process with exit code 1 wherever the print was, the database perhaps still open:
        the error goes on instead, through the command's ``with`` (which closes it) to _Commands."""
        _raise_broken_pipe(self)

    def render_str(self, text: str, **options: Any) -> Text:
        shown = encodable(with_code_points(text), self.encoding)  # escaped before rich measures the columns
        return super().render_str(shown, **{**options, "markup": False, "emoji": False})


@contextmanager
def output_written() -> Iterator[None]:
    """Output that cannot be written raises OutputLost, which ends the command with one line (see _Commands),
    except into a closed pipe, which is no error (BrokenPipeError is left as it is)."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputLost(exc) from exc


def _wrap_long_values(table: Table) -> None:
    """In a narrow terminal (COLUMNS=40, a split pane) rich cut every long cell to its column's width with an
    ellipsis: an email shown as "mia.nowak7@exa…", a timestamp as "2026-1…", nothing left to read or copy. A cut
    value now goes on over the next lines of its cell."""
    for column in table.columns:
        if column.overflow == "ellipsis":  # rich's default; a column given another keeps it
            column.overflow = "fold"


def styled(*parts: str | tuple[str, str]) -> Text:
    """A line of parts, some with a style (``("Profile", "bold")``), the text of each shown as it is."""
    return Text.assemble(*((with_code_points(part), "") if isinstance(part, str) else
                           (with_code_points(part[0]), part[1]) for part in parts))


console = Terminal(soft_wrap=True)
errors = Terminal(stderr=True)

DbOption = Annotated[str | None, typer.Option("--db", help="Database file (default: PORTRAIT_DB_PATH or "
                                                         "./portrait.duckdb).")]
UrlOption = Annotated[str | None, typer.Option("--url", help="Talk to a running server at this URL instead of "
                                                           "opening the database file.")]
AdminKeyOption = Annotated[str | None, typer.Option("--admin-key", envvar="PORTRAIT_ADMIN_KEY",
                                                    help="Admin key, needed with --url or a running server.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]

Backend = Portrait | RemotePortrait
T = TypeVar("T")


def reflow_help(group: typer.Typer) -> None:
    """Every command's docstring as --help shows it: its prose paragraphs as paragraphs (rich help keeps a
    docstring's line breaks, which cut sentences where the source wraps), its example lines one per line."""
    for command in group.registered_commands:
        if command.callback is not None and command.callback.__doc__:
            paragraphs = inspect.cleandoc(command.callback.__doc__).split("\n\n")
            command.callback.__doc__ = "\n\n".join(
                paragraph if any(line.startswith("portrait ") for line in paragraph.splitlines())
                else " ".join(paragraph.split()) for paragraph in paragraphs)
    for subgroup in group.registered_groups:
        if subgroup.typer_instance is not None:
            reflow_help(subgroup.typer_instance)


def _show(table: Table, empty: str) -> None:
    """Print a list as a table, or say there is nothing to list (an empty table reads as a failure). A first
    column of ids is never cut short: they are what the next command takes."""
    if table.row_count == 0:
        console.print(empty)
        return
    first = table.columns[0]
    if str(first.header).lower() == "id":
        first.no_wrap, first.min_width = True, max((len(str(c)) for c in first.cells), default=2)
    console.print(table)


def _settings(db: str | None) -> Settings:
    try:
        return load_settings().with_overrides(db_path=db)
    except ValueError as exc:  # a PORTRAIT_* variable that is not a number, a limit below 1...
        raise _fail(PortraitError(f"invalid setting: {exc}", code="invalid_setting")) from exc


def _generate_keys(portrait: Portrait) -> None:
    """Generate the keys a new database lacks and print them, the two as one step that SIGTERM and Ctrl-C cannot
    split (they take effect right after it): see KeyRing.generate_missing."""
    with _signals_held():
        portrait.generate_missing_keys(_print_generated)


def _print_generated(generated: dict[str, str]) -> None:
    """On stderr: a notice beside the command's output, which stays data (`portrait keys list --json | jq`)."""
    for kind, key in generated.items():
        errors.print(styled((f"Generated {kind} key (shown once, store it now):", "bold yellow"), f" {key}"),
                     soft_wrap=True)
    errors.file.flush()  # out before the keys are committed: a signal held meanwhile ends the process right after


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGTERM, SIGINT and SIGHUP until the block is done, then act on the first that came as it would have
    (its handler from before: end the process, KeyboardInterrupt, the server's own). A Python handler, not a
    blocked signal mask: DuckDB's threads, started before, would still take a signal the mask of this one holds."""
    if threading.current_thread() is not threading.main_thread():  # only it may set handlers (and gets signals)
        yield
        return
    held: list[int] = []
    previous: dict[int, Any] = {}
    try:  # each handler put back even if a signal (Ctrl-C) lands between two of them being set
        for held_signal in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            previous[held_signal] = signal.signal(held_signal, lambda signum, frame: held.append(signum))
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if held:
            signal.raise_signal(held[0])


@contextmanager
def _backend(db: str | None, url: str | None, admin_key: str | None, write_key: str | None = None, *,
             background: bool = False, sends_events: bool = False, existing: bool = False) -> Iterator[Backend]:
    """The local database when it is free, else the server that holds it (with an admin key, or a write key for a
    command that only sends events), else a clear error.

    Locally, pending events are processed first; with ``background`` the processor instead runs beside the command
    (imports), and the command waits for it to catch up before it ends.
    """
    settings = _settings(db)
    backend: Backend
    if existing and not url and not Path(settings.db_path).exists():
        raise NotFound(f"there is no database at {Path(settings.db_path).resolve()}: pass --db with the path "
                       "`portrait serve` printed (a command that only reads does not create one)")
    if url:
        backend = RemotePortrait(url, admin_key=admin_key, write_key=write_key)
    else:
        try:
            backend = Portrait(settings, background=background)
        except DatabaseInUse as exc:
            server = running_server_url(settings.db_path)
            if server is None or not (admin_key or write_key):
                flag, env = ("--write-key", "PORTRAIT_WRITE_KEY") if sends_events else ("--admin-key",
                                                                                      "PORTRAIT_ADMIN_KEY")
                hint = (f" A server runs at {server}: pass {flag} (or set {env}) to go through it, or stop it first."
                        if server else f" Stop that process, or pass --url and {flag} to use a server.")
                raise DatabaseInUse(exc.message + hint) from exc
            backend = RemotePortrait(server, admin_key=admin_key, write_key=write_key)
    try:
        if isinstance(backend, Portrait):  # in the `try`: a stop held while the keys were made closes it too
            _generate_keys(backend)
            if not background:
                backend.process_pending()
        yield backend
        if isinstance(backend, Portrait) and background:
            backend.wait_processed()
    finally:
        backend.close()


def _run(db: str | None, url: str | None, admin_key: str | None, action: Callable[[Backend], T], *,
         existing: bool = False) -> T:
    """Run ``action`` on the local database or the server holding it; a PortraitError ends the command clearly.
    ``existing``: a command that only reads refuses a database file that does not exist rather than create it."""
    try:
        with _backend(db, url, admin_key, existing=existing) as backend:
            return action(backend)
    except PortraitError as exc:
        raise _fail(exc) from exc


def _either(local: Callable[[Portrait], T], remote: Callable[[RemotePortrait], T]) -> Callable[[Backend], T]:
    """One action for both backends where their methods differ (the registry lives under ``attributes`` locally)."""
    return lambda backend: local(backend) if isinstance(backend, Portrait) else remote(backend)


def _audited(action: str, local: Callable[[Portrait], T]) -> Callable[[Portrait], T]:
    """A change made on the database file directly, written to the audit log as done by "local" (through a server,
    the API records it)."""
    def run(backend: Portrait) -> T:
        result = local(backend)
        backend.audit.record(None, action, target="cli")
        return result

    return run


def _check_writable(path: Path, what: str) -> None:
    """Refuse a file the command would write but cannot, before the work that fills it (an export, an access
    request) is done for nothing and ends in a traceback."""
    if _special_file(path):  # written straight to (see _written_whole): its folder is not written
        if not os.access(path, os.W_OK):
            raise _fail(PortraitError(f"cannot write {what} to {path}: permission denied", code="cannot_write"))
        return
    folder = path.expanduser().resolve().parent
    why = ("it is a folder: give a file name" if path.is_dir() else
           f"there is no folder {folder}" if not folder.is_dir() else
           "permission denied" if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK))
           else None)
    if why:
        raise _fail(PortraitError(f"cannot write {what} to {path}: {why}", code="cannot_write"))


ForceOption = Annotated[bool, typer.Option("--force", help="Write over the output file if it exists.")]


def _check_new_file(path: Path, what: str, force: bool) -> None:
    """:func:`_check_writable`, and refuse a file that is there already unless ``force``: the same command typed
    again a day later wrote over yesterday's export without a word."""
    _check_writable(path, what)
    if path.exists() and not force and not _special_file(path):
        raise _fail(PortraitError(f"{path} exists already: pass --force to write {what} over it, or choose another "
                                  "file", code="file_exists"))


@contextmanager
def _written_whole(path: Path, what: str) -> Iterator[Path]:
    """A file to write instead of ``path`` (beside it, hidden), which takes its place only once the work is done:
    an export interrupted (Ctrl-C, a full disk, a server that went away) never leaves half a file under the name
    asked for, nor removes the file that was there. Created by the writer, with its usual permissions. A write that
    fails (a full disk) is a :class:`PortraitError` saying so, not a traceback.

    A path that is not a regular file (``/dev/stdout``, a fifo, a device) has no file to keep, and a rename onto it
    would replace the device or pipe (or fail, in /dev): the work is written into a temporary file, then copied
    there (Parquet's writer seeks, which a pipe cannot). The ``.partial`` files a killed command (``kill -9``) left
    for ``path`` are removed first (:func:`_remove_stale_partials`)."""
    if _special_file(path):
        folder = Path(tempfile.mkdtemp(prefix="portrait-output-"))
        try:
            yield folder / "output"
            _copy_into(folder / "output", path)
        except OSError as exc:
            raise PortraitError(f"cannot write {what} to {path}: {exc.strerror or exc}", code="cannot_write") from exc
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    _remove_stale_partials(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident() % 100_000}.partial")
    try:
        yield partial
        os.replace(partial, path)
    except OSError as exc:
        left = "the file that was there is as it was" if path.exists() else "no file was made"
        raise PortraitError(f"cannot write {what} to {path}: {exc.strerror or exc}; {left}",
                            code="cannot_write") from exc
    finally:
        partial.unlink(missing_ok=True)


def _special_file(path: Path) -> bool:
    """Whether ``path`` names something other than a regular file to write: a fifo, a device, ``/dev/stdout``
    (which is a regular file when the output is redirected to one, but names it through /proc: no rename there)."""
    absolute = os.path.abspath(path.expanduser())
    if absolute in ("/dev/stdout", "/dev/stderr") or absolute.startswith(("/dev/fd/", "/proc/")):
        return True  # a descriptor's name (/dev/shm/x.csv, say, is a regular file on a disk in memory)
    try:
        mode = os.stat(absolute).st_mode
    except OSError:  # not there (or a link to nothing): a new file
        return False
    return not S_ISREG(mode) and not S_ISDIR(mode)  # a folder is refused as one (_check_writable)


def _remove_stale_partials(path: Path) -> None:
    """Delete the ``.partial`` files of ``path`` left by a command that was killed before it could (kill -9, a
    machine that went down): their process is gone. One whose process still runs -- the same export, started twice
    -- is left to it. Each is said on stderr, so that a file that disappears, or stays, is explained."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.\d+\.partial")
    try:
        found = [(p, int(m.group(1))) for p in path.parent.iterdir() if (m := pattern.fullmatch(p.name))]
    except OSError:  # the folder is not readable: the write itself says what is wrong
        return
    for partial, pid in found:
        if pid == os.getpid():
            continue
        if process_alive(pid):
            errors.print(f"note: left {partial.name} alone: process {pid} is still writing it (the same command "
                         "running twice?)", soft_wrap=True, highlight=False, markup=False)
            continue
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
            errors.print(f"note: removed {partial.name}, left by an export that was interrupted (process {pid} is "
                         "gone)", soft_wrap=True, highlight=False, markup=False)


def _copy_into(written: Path, path: Path) -> None:
    """``written`` copied into the special file ``path``; stdout itself when that is where ``path`` goes, rather
    than opened again (which would truncate a file stdout appends to, ``>> all.csv``)."""
    with written.open("rb") as source:
        if _same_as_stdout(path):
            sys.stdout.flush()
            shutil.copyfileobj(source, sys.stdout.buffer, 1 << 20)
            sys.stdout.buffer.flush()
            return
        with path.open("wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)


def _same_as_stdout(path: Path) -> bool:
    """Whether ``path`` is where stdout goes (``-o /dev/stdout``, ``-o -`` would be): a report printed there would
    end up inside the data."""
    try:
        written, out = os.stat(path), os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no stdout descriptor (a test runner's capture)
        return False
    return (written.st_dev, written.st_ino) == (out.st_dev, out.st_ino)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a CI job cancelled), raised where Ctrl-C is, so that a load ends as it does."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the closing of the database short
    raise Terminated


@contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C or SIGTERM during a load (import, demo): say what became of it once the database is closed -- every
    message is stored whole or not at all, and ids make a second run skip what the first one stored. Exit code 130
    or 143, as for any command a SIGINT or SIGTERM ends. (SIGTERM used to end the process where it was: no word of
    what was stored, and the database left to be recovered from its write-ahead log at the next start.)"""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except KeyboardInterrupt as exc:
        errors.print("interrupted: what was loaded stays; run the same command again to load the rest (what is "
                     "already stored is recognized and skipped)", style="bold red", soft_wrap=True, highlight=False)
        raise typer.Exit(code=128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fail(exc: PortraitError) -> typer.Exit:
    errors.print(f"error: {exc.message}", style="bold red", markup=False, soft_wrap=True, highlight=False)
    return typer.Exit(code=1)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=errors, disable=not _shows_progress())


def _shows_progress() -> bool:
    """Progress goes to stderr, and only to a terminal: rich prints a bar's last frame to a file or pipe, which
    would end up in a log or among the data."""
    return os.environ.get("PORTRAIT_NO_PROGRESS") != "1" and errors.is_terminal
