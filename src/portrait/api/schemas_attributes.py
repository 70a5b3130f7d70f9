"""The shapes of the attribute, rebuild, backup and import answers, for the OpenAPI document only (see
:mod:`portrait.api.schemas`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from portrait.api.schemas import TIME, sometimes

AttributeType = Literal["string", "integer", "number", "boolean", "date", "datetime", "enum", "list", "object"]
MASKED = "; a string (masked) for a personal attribute read without pii:read"


class Attribute(BaseModel):
    code: str
    name: str
    type: AttributeType
    description: str
    unit: str | None = Field(description="What a number counts (EUR, years); values stay JSON numbers")
    is_personal_info: bool = Field(description="Masked for keys without pii:read, left out of exports unless asked")
    calculate_analytics: bool
    calculated: bool = Field(description="Computed from a definition rather than sent")
    standard: bool = Field(description="One of Portrait's standard attributes")
    merge_strategy: Literal["latest", "earliest", "max", "min", "sum", "union"]
    validation: dict[str, Any] = Field(description="Rules a value must follow (e.g. min, max, pattern, values)")
    status: Literal["active", "deprecated"]
    auto_created: bool = Field(description="Created from an incoming trait no attribute had")
    definition: str | None = Field(description="A calculated attribute's definition, else null")
    created_at: str = Field(description=TIME)
    updated_at: str = Field(description=TIME)
    error: str | None = Field(description="Why the definition cannot be computed now, else null")


class Usage(BaseModel):
    values: int = Field(description="Profiles with a value")
    profiles: int = Field(description="Every profile")


class AttributeWithUsage(Attribute):
    usage: Usage


class Attributes(BaseModel):
    attributes: list[Attribute] = Field(description="Standard first")


class TopValue(BaseModel):
    value: Any = Field(description="A value as stored (any JSON value)" + MASKED)
    count: int = Field(description="Profiles with it")


class Bin(BaseModel):
    from_: float = Field(alias="from", description="Inclusive lower edge")
    to: float
    count: int


class DateRange(BaseModel):
    min: str | None = Field(description="2026-12-01 for a date, " + TIME + " for a datetime; null without "
                                        "values" + MASKED)
    max: str | None = Field(description="As min")


class Analytics(BaseModel):
    code: str
    type: AttributeType
    unit: str | None
    profiles: int = Field(description="Every profile")
    filled: int = Field(description="Profiles with a value")
    fill_rate: float = Field(description="filled / profiles, 0 to 1 (4 decimals)")
    distinct: int = Field(description="Distinct values")
    top_values: list[TopValue] = Field(description="The most common values (?top=), most common first")
    min: float | str | None = sometimes("Numbers only; null without values" + MASKED)
    max: float | str | None = sometimes("Numbers only; null without values" + MASKED)
    mean: float | str | None = sometimes("Numbers only; null without values" + MASKED)
    quantiles: dict[str, float | str] = sometimes("Numbers only: p25, p50, p75, p90, p99 (empty without values)"
                                                  + MASKED)
    histogram: list[Bin] = sometimes("Numbers only: 10 equal bins from min to max (one when they are equal; none "
                                     "without values or when masked)")
    range: DateRange = sometimes("Dates and datetimes only: the earliest and latest value")


class Rechecked(BaseModel):
    values: int = Field(description="Trait values read from the log")
    issues: int = Field(description="Data-quality issues now")


class Rebuilt(BaseModel):
    events: int = Field(description="Events read from the log")
    hints_changed: int
    profiles_before: int
    profiles_after: int
    ids_redirected: int = Field(description="Profile ids that now resolve to another profile")


class Recalculated(BaseModel):
    attributes: int = Field(description="Calculated attributes recomputed")
    seconds: float


class BackupFile(BaseModel):
    name: str
    path: str
    bytes: int
    created_at: str = Field(description="When the file was last written; " + TIME)


class Backup(BackupFile):
    encrypted: bool | None = Field(description="Read from the file's header: true (restoring needs the encryption "
                                               "key), false, or null for a file that is not a DuckDB database")


class BackupMade(Backup):
    seconds: float
    removed: list[str] = Field(description="Names of older backups deleted under the keep setting")
    removed_incomplete: list[str] = Field(description="Names of what interrupted backups left, deleted first")


class BackupError(BaseModel):
    code: str
    message: str


class BackupJob(BaseModel):
    """A backup being made in the background, or made: poll GET /api/backups/jobs/{id} until status is not running.
    Once done it carries the backup's fields too."""

    id: str
    status: Literal["running", "done", "failed"]
    name: str
    path: str
    started_at: str = Field(description=TIME)
    finished_at: str | None = Field(description="null while running; " + TIME)
    elapsed_seconds: float
    database_bytes: int = Field(description="The database and its write-ahead log when the backup started: about "
                                            "what the backup writes")
    bytes_written: int = Field(description="Written so far (the whole backup once done): the progress")
    error: BackupError | None = sometimes("Why it failed (status failed)")
    bytes: int | None = sometimes("The backup's size (status done)")
    created_at: str | None = sometimes("When the backup was written (status done); " + TIME)
    encrypted: bool | None = sometimes("Read from the backup's header (status done)")
    seconds: float | None = sometimes("How long the copy took (status done)")
    removed: list[str] | None = sometimes("Older backups deleted under the keep setting (status done)")
    removed_incomplete: list[str] | None = sometimes("What interrupted backups left, deleted first (status done)")


class Backups(BaseModel):
    folder: str
    keep: int = Field(description="How many of the backups Portrait names are kept; 0 keeps all")
    backups: list[Backup] = Field(description="Newest first")
    incomplete: list[BackupFile] = Field(description="The .partial files of backups being written or interrupted")
    running: BackupJob | None = Field(default=None, description="The backup job running now, if any")
    failed: BackupJob | None = Field(default=None, description="The newest backup job, if it failed (with why)")


class RejectedRow(BaseModel):
    row: int = Field(description="The row's number in the file, from 1")
    code: str
    reason: str
    message: str | None = Field(description="The message made from the row, as JSON text")


class TextColumn(BaseModel):
    column: str
    row: int = Field(description="The row (from 1) of the first value that did not fit")
    value: str = Field(description="That value, as written")
    type: str = Field(description="The type of the rows before it: the declared type that would reject such rows")


class DateColumn(BaseModel):
    column: str
    example: str = Field(description="Its first value, as written (24.12.2025)")
    formats: list[str] = Field(description="The strptime formats that read every value (%d.%m.%Y); two, day- and "
                                           "month-first, when the values do not tell which")
    example_dates: list[str] = Field(description="The example as each of formats reads it, in the same order, as an "
                                                 "ISO-8601 date (2025-12-24)")


class ImportReport(BaseModel):
    rows: int
    stored: int
    duplicates: int = Field(description="Rows whose message the log held already (same message id)")
    rejected: int
    by_code: dict[str, int] = Field(description="Rejection code -> rows")
    seconds: float
    first_rejected: list[RejectedRow] = Field(description="The first 100 rejected rows")
    notes: list[str] = Field(description="What the import found worth saying about the file, e.g. a CSV column "
                                         "read as text because its values do not fit one type")
    read_as_text: list[TextColumn] = Field(description="The CSV columns read as text because their values do not "
                                                       "fit one type (each has a note), as data")
    dates_as_text: list[DateColumn] = Field(description="The CSV columns read as text whose values are all dates "
                                                        "written one usual way that is not ISO-8601 (each has a "
                                                        "note), as data: the formats that would declare them")


class ImportProgress(BaseModel):
    rows: int = Field(description="Rows imported so far")
    rows_total: int | None = Field(description="Rows in the file, where its format tells before it is read through "
                                               "(CSV, once its column types are settled; Parquet; a JSON array); "
                                               "else null")
    bytes_read: int | None = Field(description="Bytes of the file read so far, where rows_total is not known "
                                               "(NDJSON); else null")
    bytes_total: int = Field(description="The file's size")


class ImportFailure(BaseModel):
    code: str
    message: str
    status: int = Field(description="The HTTP status the synchronous import would have answered with")


class ExportReport(BaseModel):
    rows: int
    columns: list[str]
    format: str
    personal_included: list[str] = Field(description="The personal-information attributes written")
    segment: str | None
    purpose: str | None
    consent_checked: bool = Field(description="Only customers who granted purpose were written")


class ExportJob(BaseModel):
    """A profile export run as a job (POST /api/exports): poll GET /api/exports/{id} until status is done or failed,
    then download its file."""

    id: str
    status: Literal["queued", "running", "done", "failed"] = Field(
        description="queued (waiting for the server's other exports: PORTRAIT_EXPORTS_AT_ONCE run at a time), "
                    "running, done or failed")
    format: str
    queue_place: int | None = Field(description="While queued: its place in the queue (1 runs next); null otherwise")
    rows_written: int = Field(description="Rows written so far (all of them once done): the progress")
    rows_total: int | None = Field(description="Rows to write, known once the profiles are read (null before)")
    seconds: float = Field(description="Since the export started, until it ended (0 while queued)")
    started_at: str | None = Field(description="null while queued; " + TIME)
    finished_at: str | None = Field(description="null while running; " + TIME)
    expires_at: str | None = Field(description="When the job and its file are removed (an hour after it ended); "
                                               "null while running")
    cancelling: bool | None = sometimes("true once DELETE asked a running export to stop")
    report: ExportReport | None = sometimes("Once done: the report (as GET /api/exports/profiles's header)")
    file: str | None = sometimes("Once done: where to download the file")
    error: ImportFailure | None = sometimes("Once failed: why (export_cancelled: cancelled with DELETE)")


class ImportJob(BaseModel):
    id: str
    status: str = Field(description="queued (waiting for the server's other imports: PORTRAIT_IMPORTS_AT_ONCE run "
                                    "at a time), running, done or failed")
    filename: str
    dry_run: bool
    seconds: float = Field(description="Since the import started running, until it ended (0 while queued)")
    queue_place: int | None = Field(description="While queued: its place in the queue (1 runs next); else null")
    stored: int = Field(description="Of the rows imported so far, those stored (not already there, not rejected)")
    progress: ImportProgress
    report: ImportReport | None = sometimes("Once done: what the import did, as the synchronous answer")
    error: ImportFailure | None = sometimes("Once failed: why, as the synchronous answer's error")
