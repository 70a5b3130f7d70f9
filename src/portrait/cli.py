"""The ``portrait`` command. Parses arguments, calls the service (or a running server), prints."""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from portrait.client import RemotePortrait, remove_server_file, running_server_url, write_server_file
from portrait.config import Settings, load_settings
from portrait.errors import DatabaseInUse, PortraitError
from portrait.mapping import RowMapping
from portrait.service import Portrait

app = typer.Typer(help="Portrait: a self-hosted customer data platform.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
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
console = Console(soft_wrap=True)
errors = Console(stderr=True)

DbOption = Annotated[str | None, typer.Option("--db", help="Database file (default: PORTRAIT_DB_PATH or "
                                                         "./portrait.duckdb).")]
UrlOption = Annotated[str | None, typer.Option("--url", help="Talk to a running server at this URL instead of "
                                                           "opening the database file.")]
AdminKeyOption = Annotated[str | None, typer.Option("--admin-key", envvar="PORTRAIT_ADMIN_KEY",
                                                    help="Admin key, needed with --url or a running server.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]

Backend = Portrait | RemotePortrait
T = TypeVar("T")


def _settings(db: str | None) -> Settings:
    return load_settings().with_overrides(db_path=db)


def _print_generated(generated: dict[str, str]) -> None:
    for kind, key in generated.items():
        console.print(f"[bold yellow]Generated {kind} key (shown once, store it now):[/] {key}")


@contextmanager
def _backend(db: str | None, url: str | None, admin_key: str | None, write_key: str | None = None, *,
             background: bool = False) -> Iterator[Backend]:
    """The local database when it is free, else the server that holds it (with an admin key), else a clear error.

    Locally, pending events are processed first; with ``background`` the processor instead runs beside the command
    (imports), and the command waits for it to catch up before it ends.
    """
    settings = _settings(db)
    backend: Backend
    if url:
        backend = RemotePortrait(url, admin_key=admin_key, write_key=write_key)
    else:
        try:
            backend = Portrait(settings, background=background)
        except DatabaseInUse as exc:
            server = running_server_url(settings.db_path)
            if server is None or not (admin_key or write_key):
                hint = (f" A server runs at {server}: pass --admin-key (or set PORTRAIT_ADMIN_KEY) to go through it,"
                        " or stop it first." if server else
                        " Stop that process, or pass --url and --admin-key to use a server.")
                raise DatabaseInUse(exc.message + hint) from exc
            backend = RemotePortrait(server, admin_key=admin_key, write_key=write_key)
        else:
            _print_generated(backend.generated_keys)
            if not background:
                backend.process_pending()
    try:
        yield backend
        if isinstance(backend, Portrait) and background:
            backend.wait_processed()
    finally:
        backend.close()


def _run(db: str | None, url: str | None, admin_key: str | None, action: Callable[[Backend], T]) -> T:
    """Run ``action`` on the local database or the server holding it; a PortraitError ends the command clearly."""
    try:
        with _backend(db, url, admin_key) as backend:
            return action(backend)
    except PortraitError as exc:
        raise _fail(exc) from exc


def _either(local: Callable[[Portrait], T], remote: Callable[[RemotePortrait], T]) -> Callable[[Backend], T]:
    """One action for both backends where their methods differ (the registry lives under ``attributes`` locally)."""
    return lambda backend: local(backend) if isinstance(backend, Portrait) else remote(backend)


def _fail(exc: PortraitError) -> typer.Exit:
    errors.print(f"error: {exc.message}", style="bold red", markup=False, soft_wrap=True, highlight=False)
    return typer.Exit(code=1)


@app.command()
def serve(
    db: DbOption = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default 8000).")] = None,
) -> None:
    """Start the HTTP server: Segment-compatible ingestion under /v1 and the admin API under /api."""
    import uvicorn

    from portrait.api import create_app

    settings = _settings(db).with_overrides(host=host, port=port)
    # The writer and processor threads wait on DuckDB with the GIL released; a shorter switch interval lets them
    # take it back sooner while the event loop is busy reading requests (measured: ~25% more events/s).
    sys.setswitchinterval(0.001)
    # Ingestion allocates many short-lived dicts (parsed JSON) without reference cycles; the default collector
    # thresholds made the cyclic GC run constantly (seen with py-spy). Collect less often, and never walk the
    # objects alive after start-up.
    gc.set_threshold(50_000, 50, 100)
    try:
        portrait = Portrait(settings)
    except DatabaseInUse as exc:
        raise _fail(exc) from exc
    _print_generated(portrait.generated_keys)
    gc.freeze()
    url = f"http://{settings.host}:{settings.port}"
    write_server_file(settings.db_path, url)
    console.print(f"Portrait serving {settings.db_path} on [bold]{url}[/] (ingestion: {url}/v1/batch, "
                  f"API docs: {url}/docs)")
    try:
        uvicorn.run(create_app(settings, portrait), host=settings.host, port=settings.port, log_level="warning",
                    access_log=False)
    finally:
        portrait.close()
        remove_server_file(settings.db_path)


@app.command()
def status(db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
           as_json: JsonOption = False) -> None:
    """Ingestion and processing counters (lag = events received but not yet reflected in profiles)."""
    info = _run(db, url, admin_key, lambda backend: backend.status())
    if as_json:
        console.print_json(data=info)
        return
    table = Table("counter", "value", title="Portrait status")
    for key, value in info.items():
        table.add_row(key, str(value))
    console.print(table)


@profiles_app.command("get")
def profiles_get(
    identity: Annotated[str, typer.Argument(help="TYPE:VALUE, e.g. email:ann@example.com, user_id:42, profile_id:…")],
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None, as_json: JsonOption = False,
    events: Annotated[int, typer.Option(help="How many recent events to show.")] = 10,
) -> None:
    """Show the unified profile of any identifier: traits, identities, merges and recent events."""
    try:
        with _backend(db, url, admin_key) as backend:
            profile = backend.profile(identity)
            recent = backend.events(identity, limit=events)["events"] if events else []
    except PortraitError as exc:
        raise _fail(exc) from exc
    if as_json:
        console.print_json(data={**profile, "events": recent})
        return
    _print_profile(profile, recent)


def _print_profile(profile: dict[str, Any], recent: list[dict[str, Any]]) -> None:
    console.print(f"[bold]Profile[/] {profile['profile_id']}  first seen {profile['first_seen']}, "
                  f"last seen {profile['last_seen']}")
    traits = Table("trait", "value", title="Traits")
    for key, value in profile["traits"].items():
        traits.add_row(key, json.dumps(value, ensure_ascii=False))
    console.print(traits)
    idents = Table("type", "value", "first seen", title="Identities")
    for ident in profile["identities"]:
        idents.add_row(ident["type"], ident["value"], ident["first_seen"] or "")
    console.print(idents)
    if profile["merges"]:
        merges = Table("merged profile", "when", "event", "identifiers", title="Merges")
        for m in profile["merges"]:
            merges.add_row(m["merged_profile_id"], m["merged_at"], m["message_id"],
                           ", ".join(f"{i['type']}:{i['value']}" for i in m["identifiers"]))
        console.print(merges)
    if recent:
        table = Table("timestamp", "type", "event", "properties", title=f"Latest {len(recent)} events")
        for e in recent:
            table.add_row(e["timestamp"], e["type"], e["event"] or "", json.dumps(e["properties"])[:80])
        console.print(table)


@events_app.command("tail")
def events_tail(
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
    lines: Annotated[int, typer.Option("-n", "--lines", help="How many recent events to show first.")] = 20,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing new events as they arrive.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Print the latest events of the log (and follow new ones with -f)."""
    try:
        with _backend(db, url, admin_key) as backend:
            after = max(0, int(backend.status()["last_seq"]) - lines)
            while True:
                batch = backend.recent_events(after, 1000)
                for event in batch:
                    _print_event(event, as_json)
                    after = int(event["seq"])
                if not follow:
                    return
                if not batch:
                    time.sleep(1.0)
    except PortraitError as exc:
        raise _fail(exc) from exc
    except KeyboardInterrupt:
        return


def _print_event(event: dict[str, Any], as_json: bool) -> None:
    if as_json:
        console.print_json(data=event)
        return
    who = event.get("user_id") or f"anon:{event.get('anonymous_id')}"
    console.print(f"{event['seq']:>8}  {event['timestamp']}  {event['type']:<8} {event.get('event') or '':<24} {who}")


@events_app.command("rejected")
def events_rejected(
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
    limit: Annotated[int, typer.Option(help="How many to show, newest first.")] = 50,
    code: Annotated[str | None, typer.Option(help="Only this rejection code.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Messages and requests that were not accepted, with the reason and what was sent."""
    page = _run(db, url, admin_key, lambda backend: backend.rejected(limit=limit, code=code))
    if as_json:
        console.print_json(data=page)
        return
    table = Table("id", "received", "code", "reason", "payload", title="Rejected")
    for item in page["rejected"]:
        table.add_row(str(item["id"]), item["received_at"], item["code"], item["reason"], item["payload"][:60])
    console.print(table)


@app.command()
def demo(
    profiles: Annotated[int, typer.Option("--profiles", help="How many synthetic customers.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 0,
    db: DbOption = None, url: UrlOption = None,
    write_key: Annotated[str | None, typer.Option("--write-key", envvar="PORTRAIT_WRITE_KEY",
                                                  help="Write key, needed with --url or a running server.")] = None,
) -> None:
    """Load a realistic synthetic e-commerce data set through the normal ingestion path."""
    from portrait.demo import generate_batches

    try:
        with _backend(db, url, None, write_key) as backend, _progress() as progress:
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


FormatOption = Annotated[str | None, typer.Option("--format", help="ndjson, json, parquet or csv (default: from "
                                                                  "the file name).")]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Read and check everything, write nothing.")]
RejectsOption = Annotated[Path | None, typer.Option("--rejects", help="Where to write rejected rows (NDJSON; "
                                                                  "default FILE.rejects.ndjson when there are any).")]
Column = Annotated[str | None, typer.Option(help="Column name.")]


@import_app.command("events")
def import_events(
    file: Annotated[Path, typer.Argument(help="NDJSON, JSON array, Parquet or CSV file.")],
    file_format: FormatOption = None, dry_run: DryRunOption = False, rejects: RejectsOption = None,
    event: Annotated[str | None, typer.Option(help="Event name for every row (rows mode).")] = None,
    event_column: Annotated[str | None, typer.Option(help="Column holding the event name (rows mode).")] = None,
    user_id: Annotated[str | None, typer.Option(help="Column holding the user id (rows mode).")] = None,
    anonymous_id: Column = None, email: Column = None, phone: Column = None,
    timestamp: Annotated[str | None, typer.Option(help="Column holding the event time (rows mode).")] = None,
    timestamp_format: Annotated[str | None, typer.Option(help="strptime format of the time column when it is not "
                                                                   "ISO-8601, e.g. %Y%m%d.")] = None,
    message_id: Annotated[str | None, typer.Option(help="Column with a unique id per row (rows mode).")] = None,
    properties: Annotated[str | None, typer.Option(help="Comma-separated columns that become properties "
                                                        "(default: every column not used otherwise).")] = None,
    delimiter: Annotated[str, typer.Option(help="CSV field separator.")] = ",",
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
) -> None:
    """Import events from a file: Segment-format messages as they are, or rows described by column options.

    Without column options the file holds Segment messages (identify, track, page, ...) as the HTTP API takes
    them. With them (and always for CSV), each row becomes a track event. Historical timestamps are kept;
    everything goes through the same checks, identity resolution and trait rules as live events. Re-importing the
    same file adds nothing.
    """
    mapping = _row_mapping("events", user_id=user_id, anonymous_id=anonymous_id, email=email, phone=phone,
                           event=event, event_column=event_column, timestamp=timestamp,
                           timestamp_format=timestamp_format, message_id=message_id, fields=properties)
    _import(file, file_format, mapping, delimiter, dry_run, rejects, db, url, admin_key)


@import_app.command("profiles")
def import_profiles(
    file: Annotated[Path, typer.Argument(help="CSV, Parquet, NDJSON or JSON array file, one customer per row.")],
    file_format: FormatOption = None, dry_run: DryRunOption = False, rejects: RejectsOption = None,
    user_id: Column = None, anonymous_id: Column = None, email: Column = None, phone: Column = None,
    timestamp: Annotated[str | None, typer.Option(help="Column with the time the row's values are from "
                                                       "(default: now).")] = None,
    timestamp_format: Annotated[str | None, typer.Option(help="strptime format of the time column.")] = None,
    traits: Annotated[str | None, typer.Option(help="Comma-separated columns that become traits (default: every "
                                                    "column not used otherwise).")] = None,
    delimiter: Annotated[str, typer.Option(help="CSV field separator.")] = ",",
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
) -> None:
    """Import customers (a CRM export): each row becomes an identify with its columns as traits."""
    mapping = _row_mapping("profiles", user_id=user_id, anonymous_id=anonymous_id, email=email, phone=phone,
                           timestamp=timestamp, timestamp_format=timestamp_format, fields=traits, force=True)
    _import(file, file_format, mapping, delimiter, dry_run, rejects, db, url, admin_key)


def _row_mapping(kind: str, *, fields: str | None, force: bool = False, **columns: Any) -> RowMapping | None:
    """A mapping when any column option is given (always for profiles); None means the rows are messages."""
    if not force and fields is None and not any(columns.values()):
        return None
    names = tuple(f.strip() for f in fields.split(",") if f.strip()) if fields is not None else None
    return RowMapping(kind, fields=names, **columns)


def _import(file: Path, file_format: str | None, mapping: RowMapping | None, delimiter: str, dry_run: bool,
            rejects: Path | None, db: str | None, url: str | None, admin_key: str | None) -> None:
    rejects_path = rejects or file.with_name(file.name + ".rejects.ndjson")
    try:
        with _backend(db, url, admin_key, background=True) as backend:
            if not isinstance(backend, Portrait):
                _import_through_server(backend, file, file_format, mapping, delimiter, dry_run, rejects_path)
                return
            with _RejectsFile(rejects_path) as rejected, _progress() as progress:
                task = progress.add_task("rows", total=None)
                started = time.monotonic()

                def show(rows: int) -> None:
                    rate = rows / max(time.monotonic() - started, 1e-9)
                    progress.update(task, completed=rows, description=f"{rows:,} rows, {rate:,.0f}/s")

                report = backend.import_file(file, file_format, mapping, delimiter=delimiter, dry_run=dry_run,
                                             on_rejected=rejected.write, on_progress=show)
    except PortraitError as exc:
        raise _fail(exc) from exc
    _print_import_report(report.as_dict(), dry_run, rejects_path if report.rejected else None)


def _import_through_server(backend: RemotePortrait, file: Path, file_format: str | None,
                           mapping: RowMapping | None, delimiter: str, dry_run: bool, rejects_path: Path) -> None:
    if not file.is_file():
        raise PortraitError(f"{file} is not a readable file")
    params: dict[str, Any] = {"filename": file.name, "format": file_format, "dry_run": dry_run,
                              "delimiter": delimiter}
    if mapping is not None:
        params.update({k: v for k, v in vars(mapping).items() if k not in ("fields", "identifier_columns")})
        params["fields"] = ",".join(mapping.fields) if mapping.fields is not None else None
    console.print(f"Sending {file.name} to {backend.url} ...")
    report = backend.import_file(file, params)
    with _RejectsFile(rejects_path) as rejected:
        for record in report["first_rejected"]:
            rejected.write(record)
    if report["rejected"] > len(report["first_rejected"]):
        console.print(f"(the first {len(report['first_rejected'])} rejected rows are in the rejects file; all are "
                      "listed by `portrait events rejected`)")
    _print_import_report(report, dry_run, rejects_path if report["rejected"] else None)


class _RejectsFile:
    """Rejected rows as NDJSON, created only when there is a first one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: Any = None

    def __enter__(self) -> _RejectsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.close()

    def write(self, record: dict[str, Any]) -> None:
        if self._handle is None:
            self._handle = self.path.open("w", encoding="utf-8")
        self._handle.write(json.dumps(record) + "\n")


def _print_import_report(report: dict[str, Any], dry_run: bool, rejects_path: Path | None) -> None:
    verb = "would store" if dry_run else "stored"
    console.print(f"{report['rows']:,} rows read in {report['seconds']} s: {verb} {report['stored']:,}, "
                  f"already there {report['duplicates']:,}, rejected {report['rejected']:,}.")
    for code, count in sorted(report["by_code"].items()):
        console.print(f"  rejected {code}: {count:,}")
    if rejects_path:
        console.print(f"Rejected rows, with the reason and the row as read: {rejects_path}")


@export_app.command("profiles")
def export_profiles(
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")],
    file_format: Annotated[str | None, typer.Option("--format", help="csv, parquet or ndjson (default: from the "
                                                                     "output file name).")] = None,
    attributes: Annotated[str | None, typer.Option(help="Comma-separated attribute codes (default: every active "
                                                        "attribute that is not personal information).")] = None,
    include_personal: Annotated[bool, typer.Option("--include-personal", help="Also export personal-information "
                                                                              "attributes.")] = False,
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
) -> None:
    """Export every profile, one row each, with the chosen attributes as columns."""
    chosen = output.suffix.lstrip(".").lower() if file_format is None else file_format
    names = [a.strip() for a in attributes.split(",") if a.strip()] if attributes else None
    try:
        with _backend(db, url, admin_key) as backend:
            if isinstance(backend, Portrait):
                report = backend.export_profiles(output, chosen, attributes=names, include_personal=include_personal)
            else:
                report = backend.export_profiles(output, chosen, names, include_personal)
    except PortraitError as exc:
        raise _fail(exc) from exc
    console.print(f"Exported {report['rows']:,} profiles with {len(report['columns'])} columns to {output}.")
    if report["personal_included"]:
        console.print(f"Personal information included: {', '.join(report['personal_included'])}")


@app.command()
def quality(
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
    limit: Annotated[int, typer.Option(help="How many to show, newest first.")] = 50,
    attribute: Annotated[str | None, typer.Option(help="Only this attribute code.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Data-quality issues: trait values not applied because they break their attribute's type or rules."""
    page = _run(db, url, admin_key, lambda backend: backend.data_quality(limit=limit, attribute=attribute))
    if as_json:
        console.print_json(data=page)
        return
    table = Table("id", "detected", "attribute", "value", "reason", "profile", title="Data quality")
    for item in page["issues"]:
        table.add_row(str(item["id"]), item["detected_at"], item["attribute"], str(item["raw_value"])[:40],
                      item["reason"], (item["profile_id"] or "")[:13])
    console.print(table)


@attributes_app.command("list")
def attributes_list(
    kind: Annotated[str, typer.Option("--kind", help="all, standard or custom.")] = "all",
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None, as_json: JsonOption = False,
) -> None:
    """The attributes, as in the console's Profile Attributes dashboard."""
    if kind not in ("all", "standard", "custom"):
        raise _fail(PortraitError("--kind must be all, standard or custom"))
    standard = None if kind == "all" else kind == "standard"
    rows = _run(db, url, admin_key, _either(lambda local: local.attributes.list(standard=standard),
                                            lambda remote: remote.attributes_list(standard)))
    if as_json:
        console.print_json(data={"attributes": rows})
        return
    table = Table("Code", "Attribute", "Description", "Type", "Is Personal Info", "Calculate Analytics", "Unit",
                  "Calculated", "Standard", "Status", title="Profile attributes")
    for a in rows:
        table.add_row(a["code"], a["name"], a["description"], a["type"], _yes(a["is_personal_info"]),
                      _yes(a["calculate_analytics"]), a["unit"] or "", _yes(a["calculated"]), _yes(a["standard"]),
                      a["status"])
    console.print(table)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


@attributes_app.command("show")
def attributes_show(code: str, db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None) -> None:
    """One attribute, with how many profiles have a value."""
    attribute = _run(db, url, admin_key, _either(lambda local: local.attributes.get(code),
                                                 lambda remote: remote.attribute(code)))
    console.print_json(data=attribute)


@attributes_app.command("recheck")
def attributes_recheck(db: DbOption = None) -> None:
    """Recompute every profile's traits from the event log with the current attribute definitions.

    After changing an attribute's type or rules: values that now fit are applied, values that no longer fit become
    data-quality issues. Runs on the database file (stop the server first).
    """
    try:
        with _backend(db, None, None) as backend:
            if not isinstance(backend, Portrait):
                raise PortraitError("stop the server first: rechecking rewrites every profile's traits")
            values = backend.rebuild_traits()
            issues = len(backend.data_quality(limit=1000)["issues"])
    except PortraitError as exc:
        raise _fail(exc) from exc
    console.print(f"Rechecked {values:,} trait values from the log; data-quality issues now: "
                  f"{issues if issues < 1000 else 'over 1,000'}.")


@attributes_app.command("analytics")
def attributes_analytics(code: str, db: DbOption = None, url: UrlOption = None,
                         admin_key: AdminKeyOption = None) -> None:
    """Fill rate, distinct and top values; for numbers min/max/mean/quantiles/histogram; for dates the range."""
    stats = _run(db, url, admin_key, _either(lambda local: local.attributes.analytics(code),
                                             lambda remote: remote.attribute_analytics(code)))
    console.print_json(data=stats)


@attributes_app.command("create")
def attributes_create(
    code: Annotated[str, typer.Argument(help="snake_case code, e.g. loyalty_tier")],
    name: Annotated[str, typer.Option(help="Display name.")],
    attribute_type: Annotated[str, typer.Option("--type", help="string, integer, number, boolean, date, datetime, "
                                                               "enum, list or object.")] = "string",
    description: Annotated[str, typer.Option(help="What it means.")] = "",
    unit: Annotated[str | None, typer.Option(help="Unit, e.g. EUR or days.")] = None,
    personal: Annotated[bool, typer.Option("--personal/--not-personal", help="Personal information?")] = False,
    analytics: Annotated[bool, typer.Option("--analytics/--no-analytics", help="Calculate analytics?")] = False,
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
) -> None:
    """Define a custom attribute."""
    fields = {"code": code, "name": name, "type": attribute_type, "description": description, "unit": unit,
              "is_personal_info": personal, "calculate_analytics": analytics}
    created = _run(db, url, admin_key, _either(lambda local: local.attributes.create(fields),
                                               lambda remote: remote.attribute_create(fields)))
    console.print(f"Created attribute {created['code']} ({created['type']}).")


@attributes_app.command("update")
def attributes_update(
    code: str,
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    description: Annotated[str | None, typer.Option(help="What it means.")] = None,
    unit: Annotated[str | None, typer.Option(help="Unit.")] = None,
    personal: Annotated[bool | None, typer.Option("--personal/--not-personal", help="Personal information?")
                        ] = None,
    analytics: Annotated[bool | None, typer.Option("--analytics/--no-analytics", help="Calculate analytics?")
                         ] = None,
    deprecate: Annotated[bool, typer.Option("--deprecate", help="Mark deprecated (values are kept).")] = False,
    activate: Annotated[bool, typer.Option("--activate", help="Mark active again.")] = False,
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
) -> None:
    """Change an attribute's name, description, unit or flags, or deprecate it."""
    changes: dict[str, Any] = {k: v for k, v in {"name": name, "description": description, "unit": unit,
                                                  "is_personal_info": personal,
                                                  "calculate_analytics": analytics}.items() if v is not None}
    if deprecate or activate:
        changes["status"] = "deprecated" if deprecate else "active"
    if not changes:
        raise _fail(PortraitError("nothing to change: pass --name, --description, --unit, --personal, --analytics, "
                                  "--deprecate or --activate"))
    updated = _run(db, url, admin_key, _either(lambda local: local.attributes.update(code, changes),
                                               lambda remote: remote.attribute_update(code, changes)))
    console.print(f"Updated attribute {updated['code']}: {', '.join(sorted(changes))}.")


def _customers_done(batch: list[dict[str, Any]], total: int) -> int:
    """Demo user ids are ``user-{i}``; the highest seen tells how far the generator got."""
    best = 0
    for message in batch:
        user = str(message.get("userId") or "")
        if user.startswith("user-") and user[5:].isdigit():
            best = max(best, int(user[5:]) + 1)
    return min(best, total)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=os.environ.get("PORTRAIT_NO_PROGRESS") == "1")


def main() -> None:  # pragma: no cover - console entry point
    app()
