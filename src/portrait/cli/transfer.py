"""Data in and out: ``import events``, ``import profiles``, ``export profiles``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn

from portrait.cli.common import (
    AdminKeyOption,
    DbOption,
    ForceOption,
    UrlOption,
    _backend,
    _check_new_file,
    _check_writable,
    _fail,
    _interruptible,
    _same_as_stdout,
    _shows_progress,
    _written_whole,
    console,
    errors,
    export_app,
    import_app,
)
from portrait.client import RemotePortrait
from portrait.column_types import parse_types
from portrait.errors import PortraitError
from portrait.files import check_readable_file
from portrait.mapping import RowMapping, combine, parse_mapping_text
from portrait.service import Portrait

FormatOption = Annotated[str | None, typer.Option("--format", help="ndjson, json, parquet or csv (default: from "
                                                                  "the file name).")]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Read and check everything, write nothing.")]
RejectsOption = Annotated[Path | None, typer.Option("--rejects", help="Where to write rejected rows (NDJSON; "
                                                                  "default FILE.rejects.ndjson when there are any).")]
Column = Annotated[str | None, typer.Option(help="Column name.")]
MappingOption = Annotated[Path | None, typer.Option("--mapping", help="YAML or JSON mapping file (see \"Mapping "
                                                                      "files\"); column options override it.")]


def _checked_types(text: str | None) -> str | None:
    """Refuse a --types that cannot apply (an unknown type, a bad date format) as a bad option value: exit code 2,
    before any file or database is opened."""
    if text is not None:
        try:
            parse_types(text)
        except PortraitError as exc:
            raise typer.BadParameter(exc.message) from exc
    return text


TypesOption = Annotated[str | None, typer.Option(
    "--types", callback=_checked_types,
    help="Declared column types, e.g. amount=number,signup=date,vip=boolean,zip=text (text, number, integer, "
         "boolean, date, timestamp); a date or timestamp not in ISO-8601 takes its strptime format: "
         "signup=date:%d.%m.%Y. A cell that does not convert rejects its row.")]


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
    delimiter: Annotated[str | None, typer.Option(help="CSV field separator: one character, \\t or tab for a tab "
                                                      "(default: a tab for .tsv files, else a comma).")] = None,
    mapping_file: MappingOption = None, types: TypesOption = None,
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
) -> None:
    """Import events from a file: Segment-format messages as they are, or rows described by column options.

    Without column options the file holds Segment messages (identify, track, page, ...) as the HTTP API takes
    them. With them (and always for CSV), each row becomes a track event. Historical timestamps are kept;
    everything goes through the same checks, identity resolution and trait rules as live events. Re-importing the
    same file adds nothing.

    Examples:
    portrait import events tracks.ndjson
    portrait import events orders.csv --event "Order Completed" --user-id customer_id --timestamp sold_at
    portrait import events orders.csv --mapping orders.yaml --dry-run
    """
    mapping = _row_mapping("events", mapping_file, user_id=user_id, anonymous_id=anonymous_id, email=email, phone=phone,
                           event=event, event_column=event_column, timestamp=timestamp,
                           timestamp_format=timestamp_format, message_id=message_id, fields=properties,
                           types=types)
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
    delimiter: Annotated[str | None, typer.Option(help="CSV field separator: one character, \\t or tab for a tab "
                                                      "(default: a tab for .tsv files, else a comma).")] = None,
    mapping_file: MappingOption = None, types: TypesOption = None,
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
) -> None:
    """Import customers (a CRM export): each row becomes an identify with its columns as traits.

    Examples:
    portrait import profiles crm.csv --user-id id --email mail
    portrait import profiles export.parquet --user-id user_id --traits plan,country
    """
    mapping = _row_mapping("profiles", mapping_file, user_id=user_id, anonymous_id=anonymous_id, email=email,
                           phone=phone, timestamp=timestamp, timestamp_format=timestamp_format, fields=traits,
                           types=types)
    _import(file, file_format, mapping, delimiter, dry_run, rejects, db, url, admin_key)


def _row_mapping(kind: str, mapping_file: Path | None, *, fields: str | None, types: str | None = None,
                 **columns: str | None) -> RowMapping | None:
    """The mapping file's mapping with the column options laid over it (see :func:`portrait.mapping.combine`)."""
    try:
        document = parse_mapping_text(_read_text(mapping_file), mapping_file.name) if mapping_file else None
        return combine(kind, document, fields, columns, types)
    except PortraitError as exc:
        raise _fail(exc) from exc


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PortraitError(f"cannot read the mapping file {path}: {exc}") from exc


def _import(file: Path, file_format: str | None, mapping: RowMapping | None, delimiter: str | None, dry_run: bool,
            rejects: Path | None, db: str | None, url: str | None, admin_key: str | None) -> None:
    try:  # before the database is opened: a first import with a typo in the name made one, and printed its keys
        check_readable_file(file)
    except PortraitError as exc:
        raise _fail(exc) from exc
    rejects_path = rejects or file.with_name(file.name + ".rejects.ndjson")
    if rejects:  # asked for: known wrong before the import starts (the default one is beside the file)
        _check_writable(rejects, "the rejected rows")
    try:
        with _interruptible(), _backend(db, url, admin_key, background=True) as backend:
            if not isinstance(backend, Portrait):
                _import_through_server(backend, file, file_format, mapping, delimiter, dry_run, rejects_path)
                return
            with _RejectsFile(rejects_path) as rejected, _import_progress() as progress:
                shown = _RowsShown(progress, progress.add_task(f"reading {file.name}", total=None))
                report = backend.import_file(file, file_format, mapping, delimiter=delimiter, dry_run=dry_run,
                                             on_rejected=rejected.write,
                                             on_progress=lambda read: shown.update(read.as_dict()))
    except PortraitError as exc:
        raise _fail(exc) from exc
    _print_import_report(report.as_dict(), dry_run, rejects_path if report.rejected else None)


def _import_through_server(backend: RemotePortrait, file: Path, file_format: str | None,
                           mapping: RowMapping | None, delimiter: str | None, dry_run: bool, rejects_path: Path
                           ) -> None:
    params: dict[str, Any] = {"filename": file.name, "format": file_format, "dry_run": dry_run,
                              "delimiter": delimiter}
    if mapping is not None:
        params["kind"] = mapping.kind
        params["mapping"] = json.dumps(mapping.to_document())
    size = file.stat().st_size
    with _import_progress() as progress:  # the rows are read on the server, once the file is there
        sending = progress.add_task(f"sending {file.name} to {backend.url}", total=size)
        importing: list[_RowsShown] = []

        def sent(done: int) -> None:
            progress.update(sending, completed=done,
                            description=f"sending {file.name} to {backend.url}: {_megabytes(done, size)}")

        def imported(read: dict[str, Any]) -> None:
            if not importing:
                # A finished task's clock stops: the upload's would show its own time through the whole import. The
                # import gets a task of its own, whose clock starts as the server starts.
                progress.update(sending, visible=False)
                importing.append(_RowsShown(progress, progress.add_task(f"the server is reading {file.name}",
                                                                        total=None)))
            importing[0].update(read)

        report = backend.import_file(file, params, on_sent=sent, on_progress=imported)
    with _RejectsFile(rejects_path) as rejected:
        for record in report["first_rejected"]:
            rejected.write(record)
    if report["rejected"] > len(report["first_rejected"]):
        console.print(_rest_of_the_rejected(len(report["first_rejected"]), report["rejected"], dry_run))
    _print_import_report(report, dry_run, rejects_path if report["rejected"] else None)


def _rest_of_the_rejected(returned: int, rejected: int, dry_run: bool) -> str:
    """Where the rejected rows the server did not send back are: in the rejected events after an import; after a
    dry run, which keeps nothing, nowhere."""
    where = ("a dry run keeps none of them, so the others are not listed anywhere: import for real, or stop the "
             "server, to see them all" if dry_run else "all are listed by `portrait events rejected`")
    return f"(the first {returned} of the {rejected:,} rejected rows are in the rejects file; {where})"


def _export_through(remote: RemotePortrait, partial: Path, file_format: str, names: list[str] | None,
                    include_personal: bool, segment: str | None, purpose: str | None, ignore_consent: bool,
                    output: Path) -> dict[str, Any]:
    """An export made by the server as a job, followed on a terminal (rows written of the rows to write, then the
    download), its file written into ``partial`` (to become ``output``). Ctrl-C cancels the server's export too
    (nobody would fetch its file) and says so, exit code 130, where click printed a bare "Aborted!"."""
    try:
        return _followed_export(remote, partial, file_format, names, include_personal, segment, purpose,
                                ignore_consent)
    except KeyboardInterrupt:
        left = "the file that was there is as it was" if output.exists() else "no file was made"
        errors.print(f"interrupted: the export was cancelled, on the server too; {left} ({output})",
                     style="bold red", soft_wrap=True, highlight=False, markup=False)
        raise typer.Exit(code=130) from None


def _followed_export(remote: RemotePortrait, partial: Path, file_format: str, names: list[str] | None,
                     include_personal: bool, segment: str | None, purpose: str | None, ignore_consent: bool
                     ) -> dict[str, Any]:
    with _import_progress() as progress:
        exporting = progress.add_task(f"exporting profiles on {remote.url}", total=None)
        downloading: list[TaskID] = []

        def exported(job: dict[str, Any]) -> None:
            place = job.get("queue_place")
            if place is not None:  # the server runs PORTRAIT_EXPORTS_AT_ONCE exports at a time: this one waits
                ahead = "it runs next" if place == 1 else f"{place - 1} before it"
                progress.update(exporting, description=f"waiting for the server's other exports (queued, place "
                                                       f"{place}: {ahead})")
                return
            written, total = job["rows_written"], job["rows_total"]
            shown = f"{written:,} of {total:,} rows written" if total is not None else "reading the profiles"
            progress.update(exporting, total=total, completed=written,
                            description=f"exporting profiles on {remote.url}: {shown}")

        def downloaded(done: int, size: int | None) -> None:
            if not downloading:
                downloading.append(progress.add_task("downloading the export", total=size))
            progress.update(downloading[0], completed=done,
                            description=f"downloading the export: {_megabytes(done, size or done)}")

        return remote.export_profiles(partial, file_format, names, include_personal, segment, purpose,
                                      ignore_consent, on_progress=exported, on_downloaded=downloaded)


def _import_progress() -> Progress:
    """Rows and rate are in each task's description: a bar's total is rows where the file tells how many it holds,
    else bytes (NDJSON), so a plain M/N column would show either."""
    return Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                    console=errors, disable=not _shows_progress())


class _RowsShown:
    """An import's progress as a task of a progress display: rows of the rows in the file, or of the bytes read
    when the file does not say how many rows it has (NDJSON); the rate since the first rows came."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self.progress, self.task = progress, task
        self.started = time.monotonic()

    def update(self, read: dict[str, Any]) -> None:
        place = read.get("queue_place")
        if place is not None:  # the server runs PORTRAIT_IMPORTS_AT_ONCE imports at a time: this one waits
            ahead = "it runs next" if place == 1 else f"{place - 1} before it"
            self.progress.update(self.task, description=f"waiting for the server's other imports (queued, place "
                                                        f"{place}: {ahead})")
            self.progress.reset(self.task, total=None)  # the clock and the rate start when it does
            self.started = time.monotonic()
            return
        rows, rows_total, bytes_read = read["rows"], read["rows_total"], read["bytes_read"]
        rate = rows / max(time.monotonic() - self.started, 1e-9)
        if rows_total is not None:
            self.progress.update(self.task, total=rows_total, completed=rows,
                                 description=f"{rows:,} of {rows_total:,} rows, {rate:,.0f} rows/s")
        elif bytes_read is not None:
            self.progress.update(self.task, total=read["bytes_total"], completed=bytes_read,
                                 description=f"{rows:,} rows ({_megabytes(bytes_read, read['bytes_total'])}), "
                                             f"{rate:,.0f} rows/s")
        elif rows:
            self.progress.update(self.task, description=f"{rows:,} rows, {rate:,.0f} rows/s")


def _megabytes(done: int, total: int) -> str:
    return f"{done / 1e6:,.1f} of {total / 1e6:,.1f} MB"


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
            try:
                self._handle = self.path.open("w", encoding="utf-8")
            except OSError as exc:  # rows stored so far stay: the same import run again adds nothing twice
                raise PortraitError(f"cannot write the rejected rows to {self.path}: {exc.strerror or exc}; pass "
                                    "--rejects with a file that can be written, and import again",
                                    code="cannot_write") from exc
        self._handle.write(json.dumps(record) + "\n")


def _print_import_report(report: dict[str, Any], dry_run: bool, rejects_path: Path | None) -> None:
    verb = "would store" if dry_run else "stored"
    console.print(f"{report['rows']:,} rows read in {report['seconds']} s: {verb} {report['stored']:,}, "
                  f"already there {report['duplicates']:,}, rejected {report['rejected']:,}.")
    for code, count in sorted(report["by_code"].items()):
        console.print(f"  rejected {code}: {count:,}")
    for note in report.get("notes", []):  # .get: a server from before notes answers without them
        console.print(f"Note: {note}.", markup=False)
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
    segment: Annotated[str | None, typer.Option(help="Only the members of this segment (id or name).")] = None,
    purpose: Annotated[str | None, typer.Option(help="What the export is for (e.g. marketing): only customers who "
                                                     "granted consent for it.")] = None,
    ignore_consent: Annotated[bool, typer.Option(
        "--ignore-consent", help="With --purpose: export regardless of consent (recorded in the audit log).")] = False,
    force: ForceOption = False,
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
) -> None:
    """Export every profile (or a segment's members), one row each, with the chosen attributes as columns.

    An existing file is not written over without --force; the file appears only once the export is whole.

    Examples:
    portrait export profiles -o profiles.parquet
    portrait export profiles -o vip.csv --segment VIP --attributes email,country --purpose marketing
    """
    _check_new_file(output, "the export", force)
    chosen = output.suffix.lstrip(".").lower() if file_format is None else file_format
    names = [a.strip() for a in attributes.split(",") if a.strip()] if attributes else None
    try:
        with _backend(db, url, admin_key, existing=True) as backend, _written_whole(output, "the export") as partial:
            if isinstance(backend, Portrait):
                report = backend.export_profiles(partial, chosen, attributes=names, include_personal=include_personal,
                                                 segment=segment, purpose=purpose, ignore_consent=ignore_consent)
                if purpose and ignore_consent:
                    backend.audit.record(None, "export_ignoring_consent", target=segment or "all profiles",
                                         detail={"purpose": purpose, "rows": report["rows"]})
            else:
                report = _export_through(backend, partial, chosen, names, include_personal, segment, purpose,
                                         ignore_consent, output)
    except PortraitError as exc:
        raise _fail(exc) from exc
    whose = f"members of {segment}" if segment else "profile" if report["rows"] == 1 else "profiles"
    if purpose:
        whose += f" (consent for {purpose} {'ignored' if ignore_consent else 'granted'})"
    said = errors if _same_as_stdout(output) else console  # the report beside the data, not inside it
    said.print(f"Exported {report['rows']:,} {whose} with {len(report['columns'])} columns to {output}.")
    if report["personal_included"]:
        said.print(f"Personal information included: {', '.join(report['personal_included'])}")
