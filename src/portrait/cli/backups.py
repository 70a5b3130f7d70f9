"""``portrait backup``, ``backups`` and ``restore``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from portrait.cli.common import (
    AdminKeyOption,
    DbOption,
    JsonOption,
    UrlOption,
    _audited,
    _either,
    _fail,
    _progress,
    _run,
    _settings,
    app,
    console,
    errors,
)
from portrait.client import RemotePortrait, running_server_url, server_answers
from portrait.config import Settings
from portrait.errors import DatabaseInUse, NotFound, PortraitError
from portrait.service import restore_backup


@app.command()
def backup(
    name: Annotated[str | None, typer.Option("--name", help="File name in the backup folder (default: "
                                                            "<database name>-<time>.duckdb).")] = None,
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None, as_json: JsonOption = False,
) -> None:
    """Back up the whole database into the backup folder, while the server runs or not (ingestion goes on)."""
    made = _run(db, url, admin_key, _either(
        _audited("make_backup", lambda local: local.backups.make(name)),
        lambda remote: _backup_through(remote, name)), existing=True)
    if as_json:
        console.print_json(data=made)
        return
    console.print(f"Backed up to {made['path']} ({_size(made['bytes'])} in {made['seconds']} s).")
    if made["removed"]:
        console.print(f"Deleted older backups (PORTRAIT_BACKUP_KEEP): {', '.join(made['removed'])}")
    if made.get("removed_incomplete"):  # .get: a server of an older version does not say
        console.print(f"Deleted what interrupted backups left: {', '.join(made['removed_incomplete'])}")


def _backup_through(remote: RemotePortrait, name: str | None) -> dict[str, Any]:
    """A backup made by the server: started as a job, then followed (a progress bar on a terminal) until it is made
    or has failed. A server of an older version answers with the backup made."""
    job: dict[str, Any] = remote.send_json("POST", "/api/backups", {"name": name} if name else {}, as_job=True)
    if "status" not in job:
        return job
    try:
        with _progress() as progress:
            task = progress.add_task(f"Backing up to {job['name']}", total=max(job["database_bytes"], 1))
            while job["status"] == "running":
                progress.update(task, completed=min(job["bytes_written"], job["database_bytes"]))
                time.sleep(0.5)
                job = remote.get_json(f"/api/backups/jobs/{job['id']}")
    except KeyboardInterrupt:
        # Only the following stops: the server's copy goes on (click's bare "Aborted!" let one think it stopped too).
        errors.print(f"stopped following the backup: the server goes on making {job['name']}; `portrait backups` "
                     "lists it once it is made", style="bold red", soft_wrap=True, highlight=False, markup=False)
        raise typer.Exit(code=130) from None
    if job["status"] == "failed":
        raise PortraitError(job["error"]["message"], code=job["error"]["code"])
    return job


@app.command()
def backups(db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
            as_json: JsonOption = False) -> None:
    """List the backups in the backup folder, newest first."""
    found = _run(db, url, admin_key, _either(lambda local: local.backups.listing(),
                                             lambda remote: remote.get_json("/api/backups")), existing=True)
    if as_json:
        console.print_json(data=found)
        return
    if not found["backups"]:
        console.print(f"No backups in {found['folder']} yet: make one with `portrait backup`.")
    else:
        table = Table("name", "made at", "size", "encrypted", title=f"Backups in {found['folder']}")
        for item in found["backups"]:
            table.add_row(item["name"], item["created_at"], _size(item["bytes"]), _encrypted(item.get("encrypted")))
        console.print(table)
    _print_incomplete(found.get("incomplete", []))  # .get: a server of an older version does not say


def _print_incomplete(incomplete: list[dict[str, Any]]) -> None:
    """Files of backups not complete: being written, or left by a backup that was killed (each up to the database's
    size, and not a backup: nothing can restore them)."""
    if not incomplete:
        return
    table = Table("name", "last written", "size", title="Incomplete backups (being written, or left by an "
                                                        "interrupted one: not restorable)")
    for item in incomplete:
        table.add_row(item["name"], item["created_at"], _size(item["bytes"]))
    console.print(table)
    console.print("Delete them once no backup is running; the next automatic backup deletes those of its database.")


@app.command()
def restore(
    file: Annotated[Path, typer.Argument(help="The backup file to restore.")],
    db: DbOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Put a backup in place of the database (stop the server first); erasures done since the backup are made again.

    The database it replaces is kept beside it as <name>.before-restore-<time>.

    Example:
    portrait restore backups/portrait-20261124T011502.123Z.duckdb --db portrait.duckdb
    """
    settings = _settings(db)
    refusal = _bound_to_fail(settings, file)
    if refusal is not None:
        raise _fail(refusal)
    if not yes:
        typer.confirm(f"Replace {Path(settings.db_path).expanduser().resolve()} with the backup "
                      f"{file.expanduser().resolve()}? (the current database is kept beside it)", abort=True)
    try:
        done: dict[str, Any] = restore_backup(settings, str(file))
    except PortraitError as exc:
        raise _fail(exc) from exc
    console.print(f"Restored {done['restored_from']} into {done['database']}: {done['events']:,} events, "
                  f"{done['profiles']:,} profiles.")
    if done["erasures_made_again"]:
        console.print(f"Erased again {done['erasures_made_again']} profile(s) of people who asked to be forgotten "
                      "after the backup was made.")
    if done["previous"]:
        console.print(f"The database it replaced is kept as {done['previous']}; delete it once you no longer "
                      "need it.")


def _bound_to_fail(settings: Settings, file: Path) -> PortraitError | None:
    """What stops a restore for sure, said before asking to confirm it rather than after a "y": a backup that is
    not there, a server that holds the database. (restore_backup checks both again, and the database's lock.)"""
    if not file.expanduser().is_file():
        return NotFound(f"there is no backup at {file.expanduser().resolve()}")
    server = running_server_url(settings.db_path)
    if server is not None and server_answers(server):
        return DatabaseInUse(f"the database {Path(settings.db_path).expanduser().resolve()} is held by the server "
                             f"at {server}. Stop the server before restoring a backup into it.")
    return None


def _encrypted(value: bool | None) -> str:
    """yes/no; "?" for a file that is not a DuckDB database, or from a server too old to say."""
    return "?" if value is None else "yes" if value else "no"


def _size(count: int) -> str:
    return f"{count / 1_000_000:,.1f} MB"
