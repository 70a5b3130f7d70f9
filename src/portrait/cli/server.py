"""``portrait serve``, ``status``, ``demo`` and ``encrypt``."""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.table import Table

from portrait.cli.common import (
    AdminKeyOption,
    DbOption,
    JsonOption,
    UrlOption,
    _backend,
    _fail,
    _generate_keys,
    _interruptible,
    _progress,
    _run,
    _settings,
    app,
    console,
    errors,
    styled,
)
from portrait.client import (
    portrait_version_at,
    remove_server_file,
    running_server_url,
    server_process,
    write_server_file,
)
from portrait.errors import DatabaseInUse, PortraitError
from portrait.service import Portrait
from portrait.store.duckdb import PREVIOUS_KEY_VARIABLE, compact_file, compaction_marker, opens_with

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
PORT_PICKS = 5  # --port 0: ports the system may pick, each taken on another of the host's addresses, before giving up


def _fixed_mmap_threshold(size: int = 128 * 1024) -> None:
    """Keep glibc's mmap threshold at its default instead of letting it rise (up to 32 MB) each time a large block
    is freed. Risen, it puts the large transient blocks of exports, console pages and bursts of worker threads
    into heaps that cannot shrink below a chunk still in use: in a 14-minute mixed soak their free memory grew
    21 -> 840 MB and kept growing; fixed, 8 -> 35 MB in 5 minutes (docs/performance.md, the soak). An explicit
    ``MALLOC_MMAP_THRESHOLD_`` in the environment wins; elsewhere than glibc this does nothing."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is not None or not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, size)


@app.command()
def serve(
    db: DbOption = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="Port to listen on (default 8000; 0: a free one "
                                                                    "the system picks, printed).")] = None,
) -> None:
    """Start the HTTP server: Segment-compatible ingestion under /v1 and the admin API under /api."""
    import uvicorn

    from portrait.api import create_app

    _fixed_mmap_threshold()
    settings = _settings(db).with_overrides(host=host, port=port)
    try:  # before the database is opened (or keys generated and printed): a port in use ends here, clearly
        listening = _listen(settings.host, settings.port, settings.db_path)
    except PortraitError as exc:
        raise _fail(exc) from exc
    # --port 0: the port the system picked is the one printed, noted in <db>.server.json and served on
    settings = settings.with_overrides(port=listening[0].getsockname()[1])
    # The writer and processor threads wait on DuckDB with the GIL released; a shorter switch interval lets them
    # take it back sooner while the event loop is busy reading requests (measured: ~25% more events/s).
    sys.setswitchinterval(0.001)
    # Ingestion allocates many short-lived dicts (parsed JSON) without reference cycles; the default collector
    # thresholds made the cyclic GC run constantly (seen with py-spy). Collect less often, and never walk the
    # objects alive after start-up.
    gc.set_threshold(50_000, 50, 100)
    try:
        portrait = Portrait(settings)
    except PortraitError as exc:  # in use by another process, a missing or wrong encryption key...
        _close_all(listening)
        raise _fail(_second_server(exc, settings.db_path) if isinstance(exc, DatabaseInUse) else exc) from exc
    # From here SIGTERM (docker stop, systemd) ends the process through the `finally` below. While uvicorn runs it
    # shuts down gracefully first and then raises the signal again, which by default would end the process before
    # the database is closed and the server file removed.
    signal.signal(signal.SIGTERM, _exit_quietly)
    try:
        _generate_keys(portrait)
        gc.freeze()
        # An IPv6 address in brackets: http://::1:8000 is no URL, and the CLI could not reach the server it noted
        url = f"http://{_bracketed(settings.host)}:{settings.port}"
        try:
            write_server_file(settings.db_path, url)
        except PortraitError as exc:
            raise _fail(exc) from exc
        where = os.path.abspath(settings.db_path)  # the whole path: a relative one names another file elsewhere
        console.print(styled(f"Portrait serving {where} on ", (url, "bold"),
                             f" (ingestion: {url}/v1/batch, API docs: {url}/docs)"))
        if portrait.traits_recheck_due():
            console.print("This database was written by an earlier Portrait: its profiles' traits follow that "
                          "version's rules until `portrait attributes recheck` derives them again from the log "
                          "(once; it runs on this server too).", style="yellow")
        if portrait.rebuild_interrupted():
            console.print("A profile rebuild was cut short: the processor goes on rebuilding the profiles; "
                          "run `portrait profiles rebuild` again so that the profile ids of before resolve again.",
                          style="yellow")
        config = uvicorn.Config(create_app(settings, portrait, schedule_sources=True), host=settings.host,
                                port=settings.port, log_level="warning", access_log=False,
                                # The client's address (context.ip) and https (secure cookies) as a trusted reverse
                                # proxy forwards them; from anyone else the headers are ignored.
                                proxy_headers=bool(settings.trusted_proxies),
                                forwarded_allow_ips=list(settings.trusted_proxies))
        # Ctrl-C: uvicorn shuts down gracefully, then raises it again (uvicorn.run, no longer used, swallowed it)
        with contextlib.suppress(KeyboardInterrupt):
            _stopping_server(uvicorn, config, portrait.stop_long_work).run(sockets=listening)
    finally:
        # A second SIGTERM or Ctrl-C must not cut closing short: it interrupted the rewrite of the file after an
        # erasure ("Query interrupted", exit 1, the rewrite left to the next start). kill -9 still stops it, safely.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, _closing)
        if compaction_marker(settings.db_path).exists():
            # seconds to minutes of silence after Ctrl-C looked like a hung server, and got it killed. Said only if
            # it can be: an error output gone (`serve 2>&1 | tee`, tee ended by the same Ctrl-C) must not stop the
            # closing below (the database left open, the file not rewritten, the server file left behind)
            with contextlib.suppress(OSError):
                errors.print("Stopping: rewriting the database file after an erasure, so that nothing of the people "
                             "erased stays on disk; it is safe to wait (a large database takes a while: 10-25 s for "
                             "440 MB).", soft_wrap=True)
        portrait.close()
        remove_server_file(settings.db_path)


def _second_server(exc: DatabaseInUse, db_path: str) -> DatabaseInUse:
    """A second `portrait serve` (a second `make run`) on a database that one already serves: where that one is,
    and the two ways on."""
    running = running_server_url(db_path)
    where = f"A Portrait server already serves it at {running}: use that one, or stop it first" if running else (
        "Stop that process first")
    return DatabaseInUse(f"{exc.message} {where}; a second server needs a database of its own (--db or "
                         "PORTRAIT_DB_PATH).")


def _stopping_server(uvicorn: Any, config: Any, stop_long_work: Callable[[], None]) -> Any:
    """uvicorn's server, telling Portrait as soon as a stop is asked for: uvicorn waits for the requests in progress
    before it shuts the app down, and a sync or a rebuild asked for through the API could hold the stop for as long
    as it runs (minutes, hours; docker and systemd then kill -9)."""

    class StoppingServer(uvicorn.Server):  # type: ignore[misc]
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            stop_long_work()
            super().handle_exit(sig, frame)

    return StoppingServer(config)


def _closing(signum: int, frame: object) -> None:
    errors.print("closing the database; it is safe to wait (or to kill -9: what is left is done at the next start)")


def _listen(host: str, port: int, db_path: str) -> list[socket.socket]:
    """The server's sockets, bound as asyncio binds them for uvicorn: one per address the host resolves to
    (``localhost``: 127.0.0.1 and ::1), IPv6 ones for IPv6 only. A port in use is refused saying what holds it
    (:func:`_port_taken`). Port 0: the system picks a free one for the first address, and the others take the same
    (a port looked up as free and then passed in could be taken by another program before it was bound); free on
    the first address, it may be in use on another, and the system picks again (up to :data:`PORT_PICKS` times):
    any port was asked for."""
    picked: list[int] = []  # port 0: the ports the system picked that were in use on another address
    while True:
        sockets: list[socket.socket] = []
        addresses: list[str] = []
        bound = port  # port 0: the one the system picked, once it did
        try:
            for family, kind, protocol, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                          flags=socket.AI_PASSIVE):
                addresses.append(str(address[0]))
                listening = socket.socket(family, kind, protocol)
                sockets.append(listening)
                listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    listening.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                listening.bind((address[0], bound, *address[2:]))
                bound = bound or listening.getsockname()[1]
        except OSError as exc:  # socket.gaierror (an unknown host) is one
            _close_all(sockets)
            if port == 0 and bound != 0 and exc.errno == errno.EADDRINUSE:  # picked, then in use on another address
                picked.append(bound)
                if len(picked) < PORT_PICKS:
                    continue
                raise PortraitError(
                    f"cannot listen on {host}:0: each of the {len(picked)} ports the system picked for {addresses[0]} "
                    f"was in use on {addresses[-1]} ({', '.join(map(str, picked))}): try again, or choose a port "
                    "with --port or PORTRAIT_PORT", code="cannot_listen") from exc
            why = _port_taken(host, bound, db_path) if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
            raise PortraitError(f"cannot listen on {host}:{bound}: {why}", code="cannot_listen") from exc
        return sockets


def _port_taken(host: str, port: int, db_path: str) -> str:
    """What holds the port, and the ways on: a Portrait server of this database (its ``<db>.server.json`` names
    this port), a Portrait server of another one (which one is for a key to ask: /healthz does not say), or another
    program. A second `make run` used to be told only that "another program" listened there."""
    other = port + 1 if port < 65535 else 8000
    another_port = f"choose another port with --port or PORTRAIT_PORT (make run PORT={other})"
    url = f"http://{_loopback(host)}:{port}"
    version = portrait_version_at(url)
    if version is None:
        return f"another program is listening there: stop it or {another_port}"
    ours, pid = running_server_url(db_path), server_process(db_path)
    if ours is not None and pid is not None and urlsplit(ours).port == port:
        return (f"Portrait {version} already serves this database ({os.path.abspath(db_path)}) there, process "
                f"{pid}: use it as it is (the CLI goes through it: portrait status --db {db_path}), or stop it "
                f"first (Ctrl-C where it runs, or kill {pid})")
    return (f"a Portrait server ({version}) is listening there, on another database (portrait status --url {url} "
            f"with its admin key says which): stop it (Ctrl-C where it runs) or {another_port}")


def _loopback(host: str) -> str:
    """Where this machine reaches a server listening on ``host``: a wildcard address through loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return _bracketed(host)


def _bracketed(host: str) -> str:
    """``host`` as a URL holds it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def _close_all(sockets: list[socket.socket]) -> None:
    for listening in sockets:
        listening.close()


def _exit_quietly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


@app.command()
def encrypt(db: DbOption = None) -> None:
    """Encrypt a database file with PORTRAIT_ENCRYPTION_KEY, or change its key (stop the server first).

    The file is copied into a new, encrypted one that then takes its place; every later start needs the same key.
    To change the key of an encrypted database, set PORTRAIT_PREVIOUS_ENCRYPTION_KEY to its present key and
    PORTRAIT_ENCRYPTION_KEY to the new one.
    """
    settings = _settings(db)
    new, previous = settings.encryption_key, settings.previous_encryption_key
    if not new:
        raise _fail(PortraitError("set PORTRAIT_ENCRYPTION_KEY to the key to encrypt with (keep it safe: without it "
                                  "the data cannot be read)"))
    if previous == new:
        raise _fail(PortraitError("PORTRAIT_PREVIOUS_ENCRYPTION_KEY and PORTRAIT_ENCRYPTION_KEY are the same key: "
                                  "nothing to change"))
    try:
        compact_file(settings.db_path, previous, new, old_key_name=PREVIOUS_KEY_VARIABLE)
    except PortraitError as exc:
        if exc.code in ("encryption_key_missing", "encryption_key_wrong") and opens_with(settings.db_path, new):
            # run again after it was done (killed before it could say so): not a lost database
            console.print(f"{settings.db_path} is already encrypted with PORTRAIT_ENCRYPTION_KEY: nothing to change.")
            return
        if exc.code == "encryption_key_missing" and not previous:
            exc = PortraitError(f"{settings.db_path} is encrypted already: to change its key, set "
                                "PORTRAIT_PREVIOUS_ENCRYPTION_KEY to its present key too", code=exc.code)
        raise _fail(exc) from exc
    if previous:
        console.print(f"Re-encrypted {settings.db_path} with the new key; the previous key no longer opens it. "
                      "Backups made before keep the previous key: restore them with PORTRAIT_PREVIOUS_ENCRYPTION_KEY "
                      "set to it.")
        return
    console.print(f"Encrypted {settings.db_path}. Start Portrait with the same PORTRAIT_ENCRYPTION_KEY from now on.")


@app.command()
def status(db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
           as_json: JsonOption = False) -> None:
    """Ingestion and processing counters (lag = events received but not yet reflected in profiles)."""
    info = _run(db, url, admin_key, lambda backend: backend.status(), existing=True)
    if as_json:
        console.print_json(data=info)
        return
    table = Table("counter", "value", title="Portrait status")
    for key, value in info.items():
        for name, shown in (value.items() if isinstance(value, dict) else [(None, value)]):
            table.add_row(f"{key} {name}" if name else key, _for_people(shown))  # memory process_mb, ...
    console.print(table)


def _for_people(value: object) -> str:
    """A status value in the table: `none`, `yes`, `no` rather than Python's None, True, False (`--json` keeps the
    JSON values)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


@app.command()
def demo(
    profiles: Annotated[int, typer.Option("--profiles", min=0, help="How many synthetic customers.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 0,
    db: DbOption = None, url: UrlOption = None,
    write_key: Annotated[str | None, typer.Option("--write-key", envvar="PORTRAIT_WRITE_KEY",
                                                  help="Write key, needed with --url or a running server.")] = None,
) -> None:
    """Load a realistic synthetic e-commerce data set through the normal ingestion path.

    Example:
    portrait demo --profiles 5000 --db demo.duckdb
    """
    from portrait.demo import generate_batches

    try:
        with _interruptible(), _backend(db, url, None, write_key, sends_events=True) as backend, \
                _progress() as progress:
            task = progress.add_task("customers", total=profiles)
            sent = 0
            for batch in generate_batches(profiles, batch_size=500, seed=seed):
                if isinstance(backend, Portrait):
                    backend.ingest_messages(batch, source="demo")
                else:
                    backend.send_batch(batch)
                sent += len(batch)
                progress.update(task, completed=_customers_done(batch, profiles), description=f"{sent:,} events")
            progress.update(task, completed=profiles)
            if isinstance(backend, Portrait):
                process = progress.add_task("processing", total=None)
                backend.process_pending()
                progress.update(process, total=1, completed=1)
    except PortraitError as exc:
        raise _fail(exc) from exc
    console.print(f"Loaded {sent:,} events for {profiles:,} customers.")


def _customers_done(batch: list[dict[str, Any]], total: int) -> int:
    """Demo user ids are ``user-{i}``; the highest seen tells how far the generator got."""
    best = 0
    for message in batch:
        user = str(message.get("userId") or "")
        if user.startswith("user-") and user[5:].isdigit():
            best = max(best, int(user[5:]) + 1)
    return min(best, total)
