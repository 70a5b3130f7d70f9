"""Analytics: ``analytics funnel|breakdown|sizes``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table

from portrait.attributes import unit_shown, with_unit
from portrait.cli.common import AdminKeyOption, DbOption, JsonOption, UrlOption, _either, _run, app, console

analytics_app = typer.Typer(help="Funnels, segment breakdowns and sizes over time.", no_args_is_help=True)
app.add_typer(analytics_app, name="analytics")


@analytics_app.command("funnel")
def analytics_funnel(
    steps: Annotated[list[str], typer.Argument(help="Event names in order, e.g. 'Product Viewed' 'Order Completed'.")],
    within: Annotated[str, typer.Option(help="Conversion window from the first step: 1h, 1d, 7d...")] = "7d",
    since: Annotated[str | None, typer.Option("--from", help="First steps from this date (default: 30 days ago).")
                     ] = None,
    until: Annotated[str | None, typer.Option("--to", help="First steps before this date (default: now).")] = None,
    segment: Annotated[str | None, typer.Option(help="Only the members of this segment.")] = None,
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None, as_json: JsonOption = False,
) -> None:
    """How many customers reach each step, in order, within the window -- and where they drop off.

    Example:
    portrait analytics funnel "Product Viewed" "Product Added" "Order Completed" --within 1d --from 2026-01-01
    """
    fields: dict[str, Any] = {"steps": steps, "within": within}
    fields.update({k: v for k, v in (("from", since), ("to", until), ("segment", segment)) if v is not None})
    found = _run(db, url, admin_key, _either(lambda local: local.funnel(fields),
                                             lambda remote: remote.send_json("POST", "/api/analytics/funnel", fields)),
                                                 existing=True)
    if as_json:
        console.print_json(data=found)
        return
    console.print(_funnel_table(found, bar_width=0))
    for note in found.get("notes", []):  # .get: a server from before notes answers without them
        console.print(f"Note: {note}.", markup=False)


def _funnel_table(found: dict[str, Any], bar_width: int) -> Table:
    """The funnel as a table, with a bar per step in the room the other columns leave (up to 30 characters): a
    bar of 30 in 80 columns (a pipe, a narrow terminal) squeezed the event names and wrapped itself over lines."""
    if bar_width == 0:
        spare = console.width - console.measure(_funnel_table(found, bar_width=-1)).maximum - 3
        bar_width = min(30, spare) if spare >= 5 else -1
    title = f"Funnel within {found['within']}, first steps {found['from'][:10]} to {found['to'][:10]}"
    columns = ["Step", "Event", "Customers", "From previous", "From start", "Dropped"]
    table = Table(*columns, *([""] if bar_width > 0 else []), title=title)
    for row in found["steps"]:
        bar = ["#" * round(bar_width * row["conversion_from_start"])] if bar_width > 0 else []
        table.add_row(str(row["step"]), row["event"], f"{row['profiles']:,}", f"{row['conversion_from_previous']:.1%}",
                      f"{row['conversion_from_start']:.1%}", f"{row['dropped']:,}", *bar)
    return table


@analytics_app.command("breakdown")
def analytics_breakdown(
    segment: Annotated[str, typer.Argument(help="The segment's id or name.")],
    attribute: Annotated[str, typer.Argument(help="The attribute code, e.g. country.")],
    top: Annotated[int, typer.Option(min=1, max=100, help="How many values (1 to 100).")] = 10,
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None, as_json: JsonOption = False,
) -> None:
    """A segment's members by the value of one attribute."""
    found = _run(db, url, admin_key, _either(
        lambda local: local.segment_breakdown(segment, attribute, top),
        lambda remote: remote.get_json(f"/api/segments/{quote(segment, safe='')}/breakdown",
                                       {"attribute": attribute, "top": top})), existing=True)
    if as_json:
        console.print_json(data=found)
        return
    table = Table(attribute, "Customers", "Share", title=f"{found['segment']} ({found['size']:,}) by {attribute}")
    unit = unit_shown(found)  # the breakdown names its attribute's type and unit
    for row in found["values"]:
        table.add_row(with_unit(str(row["value"]), unit), f"{row['profiles']:,}", f"{row['share']:.1%}")
    for label, count in (("(other values)", found["other_values"]), ("(not set)", found["not_set"])):
        if count:
            table.add_row(label, f"{count:,}", f"{count / found['size']:.1%}")
    console.print(table)


@analytics_app.command("sizes")
def analytics_sizes(
    segment: Annotated[str, typer.Argument(help="The segment's id or name.")],
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None, as_json: JsonOption = False,
) -> None:
    """A segment's size at each recount (its size over time)."""
    path = f"/api/segments/{quote(segment, safe='')}/sizes"
    found = _run(db, url, admin_key, _either(
        lambda local: _every_page(lambda after: local.segments.sizes(segment, after=after)),
        lambda remote: _every_page(lambda after: remote.get_json(path, None if after is None else {"after": after}))),
        existing=True)
    if as_json:
        console.print_json(data=found)
        return
    for row in found:
        console.print(f"{row['at']}  {row['size']:>10,}")


def _every_page(read: Callable[[int | None], dict[str, Any]]) -> list[dict[str, Any]]:
    """Every point of a segment's sizes, page after page."""
    points: list[dict[str, Any]] = []
    after = None
    while True:
        found = read(after)
        points += found["sizes"]
        if found["next"] is None:
            return points
        after = found["next"]
