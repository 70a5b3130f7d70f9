"""The attribute registry: ``attributes list|show|analytics|create|update|recheck``."""

from __future__ import annotations

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
    _run,
    attributes_app,
    console,
)
from portrait.errors import PortraitError


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
                                            lambda remote: remote.attributes_list(standard)), existing=True)
    if as_json:
        console.print_json(data={"attributes": rows})
        return
    console.print(_dashboard(rows) if console.width >= 160 else _compact(rows))


def _dashboard(rows: list[dict[str, Any]]) -> Table:
    """The console dashboard's columns (codes, types and flags never wrap)."""
    table = Table(title="Profile attributes")
    for header in ("Code", "Attribute", "Description", "Type", "Is Personal Info", "Calculate Analytics", "Unit",
                   "Calculated", "Standard", "Status"):
        table.add_column(header, no_wrap=header not in ("Attribute", "Description"))
    for a in rows:
        table.add_row(a["code"], a["name"], a["description"], a["type"], _yes(a["is_personal_info"]),
                      _yes(a["calculate_analytics"]), a["unit"] or "", _yes(a["calculated"]), _yes(a["standard"]),
                      a["status"] + (", broken" if a.get("error") else ""))
    return table


def _compact(rows: list[dict[str, Any]]) -> Table:
    """For a narrow terminal: the yes/no columns as one list of what holds (descriptions: `attributes show`)."""
    table = Table(title="Profile attributes")
    for header in ("Code", "Attribute", "Type", "Unit", "Marked"):
        table.add_column(header, no_wrap=header in ("Code", "Type"))
    for a in rows:
        marks = [word for word, flag in (("personal", a["is_personal_info"]), ("analytics", a["calculate_analytics"]),
                                         ("calculated", a["calculated"]), ("standard", a["standard"])) if flag]
        if a["status"] != "active":
            marks.append(a["status"])
        if a.get("error"):  # its definition cannot be computed now: `attributes show` says why
            marks.append("broken")
        table.add_row(a["code"], a["name"], a["type"], a["unit"] or "", ", ".join(marks))
    return table


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


@attributes_app.command("show")
def attributes_show(code: str, db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None) -> None:
    """One attribute, with how many profiles have a value."""
    attribute = _run(db, url, admin_key, _either(lambda local: local.attributes.get(code),
                                                 lambda remote: remote.attribute(code)), existing=True)
    console.print_json(data=attribute)


@attributes_app.command("recheck")
def attributes_recheck(db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None) -> None:
    """Recompute every profile's traits from the event log with the current attribute definitions.

    After changing an attribute's type or rules: values that now fit are applied, values that no longer fit become
    data-quality issues. Through a running server, its processor pauses meanwhile (events wait in the log).
    """
    done = _run(db, url, admin_key, lambda backend: backend.rebuild_traits())
    console.print(f"Rechecked {done['values']:,} trait values from the log; data-quality issues now: "
                  f"{done['issues']:,}.")


@attributes_app.command("analytics")
def attributes_analytics(code: str, db: DbOption = None, url: UrlOption = None,
                         admin_key: AdminKeyOption = None) -> None:
    """Fill rate, distinct and top values; for numbers min/max/mean/quantiles/histogram; for dates the range."""
    stats = _run(db, url, admin_key, _either(lambda local: local.attributes.analytics(code),
                                             lambda remote: remote.attribute_analytics(code)), existing=True)
    console.print_json(data=stats)


@attributes_app.command("create")
def attributes_create(
    code: Annotated[str, typer.Argument(help="snake_case code, e.g. loyalty_tier")],
    name: Annotated[str, typer.Option(help="Display name.")],
    attribute_type: Annotated[str | None, typer.Option("--type", help="string (default), integer, number, boolean, "
                                                                      "date, datetime, enum, list or object.")] = None,
    definition: Annotated[str | None, typer.Option(help="Makes it calculated, e.g. 'sum(\"Order Completed\", "
                                                        "revenue, within = 90d)' (its type follows).")] = None,
    description: Annotated[str, typer.Option(help="What it means.")] = "",
    unit: Annotated[str | None, typer.Option(help="Unit, e.g. EUR or days.")] = None,
    personal: Annotated[bool | None, typer.Option(
        "--personal/--not-personal", help="Personal information? (default: no; for a calculated attribute, yes "
                                          "when its definition repeats personal data)")] = None,
    analytics: Annotated[bool, typer.Option("--analytics/--no-analytics", help="Calculate analytics?")] = False,
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
) -> None:
    """Define a custom attribute; with --definition a calculated one, computed for every profile at once."""
    fields: dict[str, object] = {"code": code, "name": name, "description": description, "unit": unit,
                                 "calculate_analytics": analytics}
    if personal is not None:  # left out, the registry decides: personal when a definition copies personal data
        fields["is_personal_info"] = personal
    if attribute_type is not None or definition is None:
        fields["type"] = attribute_type or "string"
    if definition is not None:
        fields["definition"] = definition
    created = _run(db, url, admin_key, _either(
        _audited(f"attributes create {code}", lambda local: local.create_attribute(fields)),
        lambda remote: remote.attribute_create(fields)))
    calculated = f", calculated as {created['definition']}" if created["calculated"] else ""
    console.print(f"Created attribute {created['code']} ({created['type']}{calculated}).")


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
    definition: Annotated[str | None, typer.Option(help="A new definition (calculated attributes).")] = None,
    deprecate: Annotated[bool, typer.Option("--deprecate", help="Mark deprecated (values are kept).")] = False,
    activate: Annotated[bool, typer.Option("--activate", help="Mark active again.")] = False,
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
) -> None:
    """Change an attribute's name, description, unit or flags, or deprecate it."""
    changes: dict[str, Any] = {k: v for k, v in {"name": name, "description": description, "unit": unit,
                                                  "is_personal_info": personal,
                                                  "calculate_analytics": analytics,
                                                  "definition": definition}.items() if v is not None}
    if deprecate or activate:
        changes["status"] = "deprecated" if deprecate else "active"
    if not changes:
        raise _fail(PortraitError("nothing to change: pass --name, --description, --unit, --personal, --analytics, "
                                  "--definition, --deprecate or --activate"))
    updated = _run(db, url, admin_key, _either(
        _audited(f"attributes update {code}", lambda local: local.update_attribute(code, changes)),
        lambda remote: remote.attribute_update(code, changes)))
    console.print(f"Updated attribute {updated['code']}: {', '.join(sorted(changes))}.")


@attributes_app.command("recalculate")
def attributes_recalculate(db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None) -> None:
    """Recompute every calculated attribute (and RFM scores) for every profile now.

    The server does this periodically (PORTRAIT_SEGMENT_RECOUNT_SECONDS) and for touched profiles after each batch.
    """
    done = _run(db, url, admin_key, _either(_audited("attributes recalculate", lambda local: local.recalculate()),
                                            lambda remote: remote.send_json("POST", "/api/attributes/recalculate", {})))
    count = done["attributes"]
    console.print(f"Recalculated {count} calculated attribute{'' if count == 1 else 's'} in {done['seconds']} s.")
