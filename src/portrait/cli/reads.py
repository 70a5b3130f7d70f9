"""Looking things up: ``profiles get``, ``events tail``, ``events rejected``, ``quality``."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from portrait.attributes import unit_shown, with_unit
from portrait.cli.common import (
    AdminKeyOption,
    DbOption,
    JsonOption,
    UrlOption,
    _backend,
    _either,
    _fail,
    _progress,
    _run,
    _show,
    app,
    console,
    events_app,
    output_written,
    profiles_app,
    styled,
)
from portrait.client import RemotePortrait, profile_path
from portrait.errors import PortraitError
from portrait.service import Portrait


@profiles_app.command("get")
def profiles_get(
    identity: Annotated[str, typer.Argument(help="TYPE:VALUE, e.g. email:ann@example.com, user_id:42, profile_id:…")],
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None, as_json: JsonOption = False,
    events: Annotated[int, typer.Option(min=0, max=1000, help="How many recent events to show.")] = 10,
) -> None:
    """Show the unified profile of any identifier: traits, identities, merges and recent events.

    Examples:
    portrait profiles get email:ann@example.com
    portrait profiles get user_id:42 --events 50 --json
    """
    try:
        with _backend(db, url, admin_key, existing=True) as backend:
            profile = backend.profile(identity)
            recent = backend.events(identity, limit=events)["events"] if events else []
            units = {} if as_json else _units(backend)
    except PortraitError as exc:
        raise _fail(exc) from exc
    if as_json:
        console.print_json(data={**profile, "events": recent})
        return
    _print_profile(profile, recent, units)


@profiles_app.command("rebuild")
def profiles_rebuild(db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None) -> None:
    """Derive every profile again from the event log with the current settings.

    After changing the identity settings (PORTRAIT_IDENTITY_TRAITS, blocked values, the phone region, the limits):
    events are grouped into profiles by the new rules. With the same settings the result is the same. Through a
    running server, its processor pauses meanwhile (events wait in the log) and reads see profiles being rebuilt.
    """
    def local(backend: Portrait) -> dict[str, int]:
        with _progress() as progress:
            task = progress.add_task("events applied", total=None)
            done = backend.rebuild_profiles(lambda applied, total: progress.update(task, completed=applied,
                                                                                   total=total))
        backend.audit.record(None, "rebuild_profiles", target="cli")
        return done

    done = _run(db, url, admin_key, _either(local, lambda remote: remote.rebuild_profiles()))
    console.print(f"Rebuilt {done['profiles_after']:,} profiles (were {done['profiles_before']:,}) from "
                  f"{done['events']:,} events; identity hints read otherwise: {done['hints_changed']:,}; old profile "
                  f"ids now leading to another profile: {done['ids_redirected']:,}.")


def _units(backend: Portrait | RemotePortrait) -> dict[str, str | None]:
    """The unit of each number attribute, written after its values in the traits table (12.5 PLN)."""
    listed = backend.attributes.list() if isinstance(backend, Portrait) else backend.attributes_list()
    return {a["code"]: unit_shown(a) for a in listed}


def _print_profile(profile: dict[str, Any], recent: list[dict[str, Any]], units: dict[str, str | None]) -> None:
    console.print(styled(("Profile", "bold"), f" {profile['profile_id']}  first seen {profile['first_seen']}, "
                                              f"last seen {profile['last_seen']}"))
    traits = Table("trait", "value", title="Traits")
    for key, value in profile["traits"].items():
        traits.add_row(key, with_unit(json.dumps(value, ensure_ascii=False), units.get(key)))
    console.print(traits)
    console.print(_identities_table(profile["identities"]))
    if profile["merges"]:
        merges = Table("merged profile", "when", "event", "identifiers", title="Merges")
        for m in profile["merges"]:
            merges.add_row(m["merged_profile_id"], m["merged_at"], m["message_id"],
                           ", ".join(f"{i['type']}:{i['value']}" for i in m["identifiers"]))
        console.print(merges)
    if recent:
        console.print(_recent_events_table(recent))


def _identities_table(identities: list[dict[str, Any]]) -> Table:
    """The identities, each on one line where the terminal allows: the first-seen time shortened (to the second,
    then the day) before an identifier is broken over lines -- it is what gets copied into the next command."""
    table = Table("type", "value", "first seen", title="Identities")
    # The columns are as wide as the longest type and the longest value (of any identities), as shown
    used = (max((_shown_width(i["type"]) for i in identities), default=0)
            + max((_shown_width(i["value"]) for i in identities), default=0) + 10)  # 10: borders, padding
    cut = next((n for n in (24, 19, 10) if used + n <= console.width), 10)  # 24: 2026-01-31T10:11:12.345Z
    for ident in identities:
        seen = ident["first_seen"] or ""
        table.add_row(ident["type"], ident["value"], seen if cut == 24 else seen[:cut].replace("T", " "))
    return table


def _recent_events_table(recent: list[dict[str, Any]]) -> Table:
    """One line per event: the properties cut to the room the time, type and name leave (at least 10
    characters), with an ellipsis -- cut at 80 characters and wrapped, an event took five lines of 80 columns."""
    table = Table(*(Column(name, no_wrap=True) for name in ("timestamp", "type", "event")),
                  Column("properties", no_wrap=True, overflow="ellipsis"), title=f"Latest {len(recent)} events")
    # Measured as shown, in terminal columns: a character of Japanese takes two, and one escaped (a control or
    # direction mark) takes its <U+...>. Counted in characters, a wide event name made the table too wide and rich
    # took the difference from the other columns: the type squeezed to nothing, the time cut to the minute.
    widest = {key: max(_shown_width(e[key] or "") for e in recent) for key in ("timestamp", "type", "event")}
    room = max(10, console.width - sum(max(w, len(k)) for k, w in widest.items()) - 13)  # 13: borders, padding
    for e in recent:
        properties = console.render_str(json.dumps(e["properties"], ensure_ascii=False), highlight=False)
        properties.truncate(room, overflow="ellipsis")
        table.add_row(e["timestamp"], e["type"], e["event"] or "", properties)
    return table


def _shown_width(text: str) -> int:
    """How many terminal columns ``text`` takes in a table cell."""
    return console.render_str(text, highlight=False).cell_len


@events_app.command("tail")
def events_tail(
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
    lines: Annotated[int, typer.Option("-n", "--lines", min=0, help="How many recent events to show first.")] = 20,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing new events as they arrive.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Print the latest events of the log (and follow new ones with -f).

    Examples:
    portrait events tail -n 50
    portrait events tail -f --json
    """
    try:
        with _backend(db, url, admin_key, existing=True) as backend:
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
    if as_json:  # one line per event (NDJSON), so a followed stream can be read line by line
        with output_written():
            print(json.dumps(event, ensure_ascii=False), flush=True)
        return
    who = event.get("user_id") or f"anon:{event.get('anonymous_id')}"
    console.print(f"{event['seq']:>8}  {event['timestamp']}  {event['type']:<8} {event.get('event') or '':<24} {who}")


@events_app.command("rejected")
def events_rejected(
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many to show, newest first.")] = 50,
    code: Annotated[str | None, typer.Option(help="Only this rejection code.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Messages and requests that were not accepted, with the reason and what was sent."""
    page = _run(db, url, admin_key, lambda backend: backend.rejected(limit=limit, code=code), existing=True)
    if as_json:
        console.print_json(data=page)
        return
    table = Table("id", "received", "code", "reason", "payload", title="Rejected")
    for item in page["rejected"]:
        table.add_row(str(item["id"]), item["received_at"], item["code"], item["reason"], item["payload"][:60])
    _show(table, "No rejected events.")


@app.command()
def quality(
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many to show, newest first.")] = 50,
    attribute: Annotated[str | None, typer.Option(help="Only this attribute code.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Data-quality issues: trait values not applied because they break their attribute's type or rules."""
    page = _run(db, url, admin_key, lambda backend: backend.data_quality(limit=limit, attribute=attribute),
                existing=True)
    if as_json:
        console.print_json(data=page)
        return
    table = Table("id", "detected", "attribute", "value", "reason", "profile", title="Data quality")
    for item in page["issues"]:
        table.add_row(str(item["id"]), item["detected_at"], item["attribute"], str(item["raw_value"])[:40],
                      item["reason"], (item["profile_id"] or "")[:13])
    _show(table, "No data-quality issues.")


@profiles_app.command("consent")
def profiles_consent(
    identity: Annotated[str, typer.Argument(help="TYPE:VALUE, e.g. email:ann@example.com")],
    grant: Annotated[list[str] | None, typer.Option("--grant", help="Purpose or channel to record as granted "
                                                                     "(repeat).")] = None,
    deny: Annotated[list[str] | None, typer.Option("--deny", help="Purpose or channel to record as denied "
                                                                   "(repeat).")] = None,
    basis: Annotated[str | None, typer.Option("--basis", help="Legal basis of what you record: consent, contract, "
                                                              "legitimate_interests, ...")] = None,
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None, as_json: JsonOption = False,
) -> None:
    """Show a customer's consent per purpose and its history; --grant/--deny record new statements."""
    statements = {p: {"status": "granted", **({"legal_basis": basis} if basis else {})} for p in grant or []}
    statements.update({p: {"status": "denied", **({"legal_basis": basis} if basis else {})} for p in deny or []})
    try:
        with _backend(db, url, admin_key, existing=True) as backend:
            if statements:
                if isinstance(backend, Portrait):
                    backend.set_consent(identity, statements, source="cli")
                    backend.process_pending()
                else:
                    backend.send_json("POST", profile_path(identity, "consent"), statements)
                    _wait_processed(backend)
            found = backend.consents(identity) if isinstance(backend, Portrait) else backend.get_json(
                profile_path(identity, "consent"))
    except PortraitError as exc:
        raise _fail(exc) from exc
    if as_json:
        console.print_json(data=found)
        return
    table = Table("Purpose", "Status", "Legal basis", "Since", "Source", title="Consent")
    for purpose, current in sorted(found["consents"].items()):
        table.add_row(purpose, current["status"], current["legal_basis"] or "", current["at"] or "",
                      current["source"] or "")
    _show(table, "No consent statements for this profile.")


def _wait_processed(server: RemotePortrait, timeout: float = 10.0) -> None:
    """Wait until the server has processed what it had received when asked (a statement just recorded is among
    it), for up to ``timeout`` seconds: a fixed half second showed the consent of before on a busy server."""
    received = int(server.get_json("/api/status")["events_received"])
    deadline = time.monotonic() + timeout
    while int(server.get_json("/api/status")["events_processed"]) < received and time.monotonic() < deadline:
        time.sleep(0.05)
