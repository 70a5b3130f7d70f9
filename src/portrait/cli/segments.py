"""Segments: ``segments list|show|create|update|delete|preview|members|explain|recount``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table
from rich.text import Text

from portrait.cli.common import (
    AdminKeyOption,
    DbOption,
    JsonOption,
    UrlOption,
    _audited,
    _either,
    _fail,
    _run,
    _show,
    app,
    console,
    styled,
)
from portrait.errors import PortraitError

segments_app = typer.Typer(help="Segments: groups of customers by a condition or an uploaded list.",
                           no_args_is_help=True)
app.add_typer(segments_app, name="segments")
SegmentArgument = Annotated[str, typer.Argument(help="The segment's id or name.")]
ConditionOption = Annotated[str | None, typer.Option(
    "--condition", help="The condition in its text form, e.g. 'age >= 30 and performed(\"Order Completed\")'.")]
FileOption = Annotated[Path | None, typer.Option("--file", help="CSV of identities for a static segment: columns "
                                                              "named by identity type (email, user_id, phone...).")]
ColumnOption = Annotated[str | None, typer.Option("--column", help="Read only this column of --file.")]
TypeOption = Annotated[str | None, typer.Option("--type", help="The identity type of --column (default: its name).")]


@segments_app.command("list")
def segments_list(db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
                  as_json: JsonOption = False) -> None:
    """Every segment with its kind, size and condition."""
    found = _run(db, url, admin_key, _either(lambda local: local.segments.all(),
                                             lambda remote: remote.get_json("/api/segments")["segments"]),
                                                 existing=True)
    if as_json:
        console.print_json(data=found)
        return
    table = Table("Id", "Name", "Kind", "Size", "Condition / identities")
    for s in found:
        table.add_row(str(s["id"]), s["name"], s["kind"], f"{s['size']:,}",
                      s.get("text") or f"{s.get('identities', 0):,} identities")
    _show(table, "No segments yet: create one with portrait segments create.")


@segments_app.command("show")
def segments_show(segment: SegmentArgument, db: DbOption = None, url: UrlOption = None,
                  admin_key: AdminKeyOption = None) -> None:
    """One segment: condition (text, JSON and English) and size."""
    console.print_json(data=_run(db, url, admin_key, _either(lambda local: local.segments.get(segment),
                                                             lambda remote: remote.get_json(_path(segment))),
                                                                 existing=True))


@segments_app.command("create")
def segments_create(
    name: Annotated[str, typer.Argument(help="The segment's name.")],
    condition: ConditionOption = None, file: FileOption = None, column: ColumnOption = None,
    identity_type: TypeOption = None,
    description: Annotated[str, typer.Option(help="What the segment is for.")] = "",
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
) -> None:
    """Create a dynamic segment (--condition) or a static one (--file of identities); it is counted at once.

    Examples:
    portrait segments create "Big buyers" --condition 'performed("Order Completed", count >= 2, within = 30d)'
    portrait segments create "Webinar guests" --file guests.csv --column mail --type email
    """
    fields: dict[str, Any] = {"name": name, "description": description, **_content(condition, file, column,
                                                                                   identity_type)}
    created = _run(db, url, admin_key, _either(
        _audited(f"segments create {name}", lambda local: local.create_segment(fields)),
        lambda remote: remote.send_json("POST", "/api/segments", fields)))
    _print_segment(created)


@segments_app.command("update")
def segments_update(
    segment: SegmentArgument, name: Annotated[str | None, typer.Option(help="A new name.")] = None,
    condition: ConditionOption = None, file: FileOption = None, column: ColumnOption = None,
    identity_type: TypeOption = None,
    description: Annotated[str | None, typer.Option(help="A new description.")] = None,
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
) -> None:
    """Change a segment's name, description, condition or identities (a new condition or list recounts it)."""
    fields: dict[str, Any] = {k: v for k, v in (("name", name), ("description", description)) if v is not None}
    if condition is not None or file is not None:
        fields.update(_content(condition, file, column, identity_type))
    updated = _run(db, url, admin_key, _either(
        _audited(f"segments update {segment}", lambda local: local.update_segment(segment, fields)),
        lambda remote: remote.send_json("PATCH", _path(segment), fields)))
    _print_segment(updated)


@segments_app.command("delete")
def segments_delete(segment: SegmentArgument, db: DbOption = None, url: UrlOption = None,
                    admin_key: AdminKeyOption = None) -> None:
    """Delete a segment (refused while another segment refers to it)."""
    _run(db, url, admin_key, _either(
        _audited(f"segments delete {segment}", lambda local: local.segments.delete(segment)),
        lambda remote: remote.send_json("DELETE", _path(segment), {})))
    console.print(f"Segment {segment} deleted.")


@segments_app.command("preview")
def segments_preview(
    condition: Annotated[str, typer.Argument(help="The condition in its text form.")],
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None, as_json: JsonOption = False,
) -> None:
    """Count the profiles a condition selects, with a sample, without saving anything.

    Example:
    portrait segments preview 'performed("Order Completed", within = 30d) and not performed("Email Opened")'
    """
    found = _run(db, url, admin_key, _either(
        lambda local: local.segments.preview(condition),
        lambda remote: remote.send_json("POST", "/api/segments/preview", {"condition": condition})), existing=True)
    if as_json:
        console.print_json(data=found)
        return
    console.print(f"{found['count']:,} profiles ({found['seconds']} s): {found['english']}")
    _print_sample(found)
    for note in found.get("notes", []):  # .get: a server from before notes answers without them
        console.print(f"Note: {note}.", markup=False)


def _print_sample(found: dict[str, Any]) -> None:
    """The sampled profiles as a table: user id, then the attributes a person is recognised by and those the
    condition compares (personal ones masked by a server for a key without pii:read)."""
    samples = found.get("sample_profiles")
    if samples is None:  # a server from before samples had columns: the ids alone
        for profile_id in found["sample"]:
            console.print(f"  {profile_id}")
        return
    if not samples:
        return
    columns: list[str] = found["sample_columns"]
    table = Table(title=f"{len(samples)} of them")
    table.add_column("Profile", no_wrap=True, min_width=36)  # whole: for `profiles show`
    table.add_column("User id")
    for code in columns:
        table.add_column(code)
    for sample in samples:
        table.add_row(sample["profile_id"], _cell(sample["user_id"]),
                      *[_cell(sample["traits"].get(code)) for code in columns])
    console.print(table)


def _cell(value: Any) -> Text:
    """A customer's value as it is: text, never rich markup (a name may hold "[b]"); lists and objects as JSON."""
    if value is None:
        return Text("")
    return Text(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


@segments_app.command("members")
def segments_members(
    segment: SegmentArgument,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many members.")] = 100,
    after: Annotated[str, typer.Option(help="Continue after this profile id (the `next` of a previous page).")] = "",
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None, as_json: JsonOption = False,
) -> None:
    """The segment's members, a page at a time (export them all with `portrait export profiles --segment`)."""
    page = _run(db, url, admin_key, _either(
        lambda local: local.segments.members(segment, after=after, limit=limit),
        lambda remote: remote.get_json(_path(segment) + "/members", {"after": after, "limit": limit})), existing=True)
    if as_json:
        console.print_json(data=page)
        return
    table = Table("Profile", "User id", "Member since")
    for member in page["members"]:
        table.add_row(member["profile_id"], member["user_id"] or "", member["entered_at"])
    _show(table, "The segment has no members.")
    if page["next"]:
        console.print(f"More: --after {page['next']}")


@segments_app.command("explain")
def segments_explain(
    segment: SegmentArgument,
    identity: Annotated[str, typer.Argument(help="TYPE:VALUE of the profile, e.g. email:ann@example.com.")],
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None, as_json: JsonOption = False,
) -> None:
    """Which parts of the segment's condition hold for a profile, and why."""
    explain_path = f"{_path(segment)}/explain/{quote(identity, safe=':@')}"
    found = _run(db, url, admin_key, _either(lambda local: local.explain_segment(segment, identity),
                                             lambda remote: remote.get_json(explain_path)), existing=True)
    if as_json or "explanation" not in found:
        console.print_json(data=found)
        return
    console.print(f"{found['segment']}: {'member' if found['member'] else 'not a member'}")
    _print_node(found["explanation"], 1)


def _print_node(node: dict[str, Any], depth: int) -> None:
    mark = ("yes", "green") if node["holds"] else ("no", "red")
    console.print(styled("  " * depth, mark, f" {node['text']}  ", (f"({node['why']})", "dim")), highlight=False)
    for part in node.get("parts", []):
        _print_node(part, depth + 1)


@segments_app.command("recount")
def segments_recount(segment: SegmentArgument, db: DbOption = None, url: UrlOption = None,
                     admin_key: AdminKeyOption = None) -> None:
    """Recount a segment now (the server also recounts every segment periodically)."""
    done = _run(db, url, admin_key, _either(
        _audited(f"segments recount {segment}", lambda local: local.recount_segment(segment)),
        lambda remote: remote.send_json("POST", _path(segment) + "/recount", {})))
    console.print(f"{done['name']}: {done['size']:,} members ({done['entered']:,} entered, {done['exited']:,} "
                  "exited).")


def _content(condition: str | None, file: Path | None, column: str | None, identity_type: str | None
             ) -> dict[str, Any]:
    if (condition is None) == (file is None):
        raise _fail(PortraitError("give either --condition (a dynamic segment) or --file (a static one)"))
    if condition is not None:
        return {"condition": condition}
    assert file is not None
    try:
        with file.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise _fail(PortraitError(f"cannot read {file}: {exc}")) from exc
    columns = [column] if column else list(rows[0]) if rows else []
    if column and rows and column not in rows[0]:
        raise _fail(PortraitError(f"{file.name} has no column {column!r}; it has {', '.join(rows[0])}"))
    kind = {c: (identity_type if column else None) or c.strip().lower() for c in columns}
    return {"identities": [f"{kind[c]}:{row[c].strip()}" for row in rows for c in columns
                           if (row.get(c) or "").strip()]}


def _print_segment(segment: dict[str, Any]) -> None:
    console.print(f"Segment {segment['id']} {segment['name']!r}: {segment['size']:,} members.")
    if segment.get("english"):
        console.print(segment["english"])
    if segment.get("rejected_identities"):
        console.print(f"Not identities (left out): {', '.join(segment['rejected_identities'][:20])}")
    for note in segment.get("notes", []):
        console.print(f"Note: {note}.", markup=False)


def _path(segment: str) -> str:
    return f"/api/segments/{quote(segment, safe='')}"
