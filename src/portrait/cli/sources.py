"""SQL sources: ``sources add|list|show|sync|remove``.

In this group ``--url`` is the source database's URL (as the issue and users expect), so the running server, when
one is wanted explicitly, is ``--server``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from portrait.cli.common import (
    AdminKeyOption,
    DbOption,
    JsonOption,
    _audited,
    _backend,
    _either,
    _fail,
    _run,
    _show,
    app,
    console,
)
from portrait.cli.transfer import MappingOption, TypesOption, _row_mapping
from portrait.errors import PortraitError
from portrait.service import Portrait

sources_app = typer.Typer(help="SQL sources: queries on other databases synchronized into Portrait.",
                          no_args_is_help=True)
app.add_typer(sources_app, name="sources")
ServerOption = Annotated[str | None, typer.Option("--server", help="Talk to a running server at this URL instead of "
                                                                  "opening the database file.")]
Column = Annotated[str | None, typer.Option(help="Column name.")]


@sources_app.command("add")
def sources_add(
    name: Annotated[str, typer.Argument(help="A short name: lower-case letters, digits, - and _.")],
    url: Annotated[str, typer.Option("--url", help="postgresql://user:password@host:port/db or sqlite:///path.db "
                                                   "(the password is stored, never printed).")],
    query: Annotated[str, typer.Option(help="A SELECT returning one row per customer (profiles) or event.")],
    kind: Annotated[str, typer.Option(help="profiles (each row an identify) or events (each row a track).")],
    cursor: Annotated[str | None, typer.Option(help="An increasing column (updated_at, id): each sync reads only "
                                                    "rows at or past the last value seen.")] = None,
    every: Annotated[str | None, typer.Option(help="Sync on this schedule in the server: 30s, 15m, 6h, 1d.")] = None,
    mapping_file: MappingOption = None,
    user_id: Column = None, anonymous_id: Column = None, email: Column = None, phone: Column = None,
    event: Annotated[str | None, typer.Option(help="Event name for every row (events).")] = None,
    event_column: Annotated[str | None, typer.Option(help="Column holding the event name (events).")] = None,
    timestamp: Annotated[str | None, typer.Option(help="Column with the event time / when the values are "
                                                       "from.")] = None,
    fields: Annotated[str | None, typer.Option(help="Comma-separated columns that become properties/traits "
                                                    "(default: every column not used otherwise).")] = None,
    types: TypesOption = None,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Connect now and check the query's columns "
                                                                   "against the cursor and mapping.")] = True,
    db: DbOption = None, server: ServerOption = None, admin_key: AdminKeyOption = None,
) -> None:
    """Define a SQL source. Nothing is read until `portrait sources sync NAME` or its schedule.

    Examples:
    portrait sources add pos --url postgresql://u@db/pos --kind events --query 'SELECT * FROM sales' --event Sale
    portrait sources add crm --url sqlite:///crm.db --kind profiles --query 'SELECT * FROM c' --cursor id --every 1h
    """
    mapping = _row_mapping(kind if kind in ("profiles", "events") else "profiles", mapping_file, fields=fields,
                           user_id=user_id, anonymous_id=anonymous_id, email=email, phone=phone, event=event,
                           event_column=event_column, timestamp=timestamp, types=types)
    definition: dict[str, Any] = {"name": name, "kind": kind, "url": url, "query": query, "cursor": cursor,
                                  "every": every, "mapping": mapping.to_document() if mapping else {}}
    added = _run(db, server, admin_key, _either(
        _audited(f"sources add {name}", lambda local: local.add_source(definition, check=check)),
        lambda remote: remote.add_source(definition, check=check)))
    console.print(f"Source {added['name']} added ({added['kind']} from {added['url']}"
                  + (f", every {added['every']}" if added["every"] else "") + f"). Sync it: portrait sources sync "
                  f"{added['name']}")


@sources_app.command("list")
def sources_list(db: DbOption = None, server: ServerOption = None, admin_key: AdminKeyOption = None,
                 as_json: JsonOption = False) -> None:
    """Every source and its last sync (URLs without passwords)."""
    found = _run(db, server, admin_key, _either(lambda local: local.sources.all(),
                                                lambda remote: remote.sources_all()), existing=True)
    if as_json:
        console.print_json(data=found)
        return
    table = Table("Name", "Kind", "URL", "Cursor", "Every", "Status", "Last rows", "Total rows", "Last sync",
                  "Error")
    for s in found:
        table.add_row(s["name"], s["kind"], s["url"], _cursor_text(s), s["every"] or "-", s["status"],
                      f"{s['last_rows']:,}", f"{s['total_rows']:,}", s["last_finished_at"] or "-",
                      s["last_error"] or "")
    _show(table, "No SQL sources yet: add one with portrait sources add.")


def _cursor_text(source: dict[str, Any]) -> str:
    if not source["cursor"]:
        return "(none: whole query)"
    return f"{source['cursor']} >= {source['cursor_value']}" if source["cursor_value"] is not None else \
        source["cursor"]


@sources_app.command("show")
def sources_show(name: str, db: DbOption = None, server: ServerOption = None,
                 admin_key: AdminKeyOption = None) -> None:
    """One source: its query, mapping, cursor and last sync (JSON)."""
    console.print_json(data=_run(db, server, admin_key, _either(lambda local: local.sources.state(name),
                                                                lambda remote: remote.source_state(name)),
                                                                    existing=True))


@sources_app.command("sync")
def sources_sync(
    name: str,
    full: Annotated[bool, typer.Option("--full", help="Read every row again, not only those past the cursor "
                                                      "(rows already imported are recognized and skipped).")] = False,
    db: DbOption = None, server: ServerOption = None, admin_key: AdminKeyOption = None,
) -> None:
    """Read the source's new rows now, into the event log (through a running server if there is one)."""
    try:
        with _backend(db, server, admin_key, background=True) as backend:
            if isinstance(backend, Portrait):
                report = backend.sync_source(name, full=full).as_dict()
                backend.audit.record(None, f"sources sync {name}", target="cli")
            else:
                console.print(f"Syncing {name} through {backend.url} ...")
                report = backend.sync_source(name, full=full)
    except PortraitError as exc:
        raise _fail(exc) from exc
    console.print(f"{name}: {report['rows']:,} rows read in {report['seconds']} s: stored {report['stored']:,}, "
                  f"already there {report['duplicates']:,}, rejected {report['rejected']:,}; cursor now "
                  f"{report['cursor']}.")
    for code, count in sorted(report.get("by_code", {}).items()):  # .get: a server from before answers without
        console.print(f"  rejected {code}: {count:,}")
    if report["rejected"]:
        console.print(f"Rejected rows are listed by `portrait events rejected` (source source:{name}).")


@sources_app.command("remove")
def sources_remove(name: str, db: DbOption = None, server: ServerOption = None,
                   admin_key: AdminKeyOption = None) -> None:
    """Forget a source; what it brought in stays."""
    _run(db, server, admin_key, _either(_audited(f"sources remove {name}", lambda local: local.remove_source(name)),
                                        lambda remote: remote.remove_source(name)))
    console.print(f"Source {name} removed.")

