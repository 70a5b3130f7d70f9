"""Statements for the attribute registry."""

from __future__ import annotations

from sqlglot import exp

from portrait.sql import param, parse

COLUMNS = ("code", "name", "type", "description", "unit", "is_personal_info", "calculate_analytics", "calculated",
           "standard", "merge_strategy", "validation", "status", "auto_created", "created_at", "updated_at")
# Standard attributes are (re)seeded at start; an existing row (perhaps edited by the user) is left alone.
SEED = exp.insert(exp.select(*COLUMNS).from_("seed_attributes"), "attributes", columns=list(COLUMNS))
SEED.set("conflict", exp.OnConflict(action=exp.var("DO NOTHING")))
INSERT = exp.insert(exp.select(*COLUMNS).from_("new_attribute"), "attributes", columns=list(COLUMNS))
GET = exp.select(*COLUMNS).from_("attributes").where(exp.column("code").eq(param()))
USAGE = parse("SELECT count(*), count(DISTINCT profile_id) FROM profile_traits WHERE key = ? AND value IS NOT NULL")


def listing(standard: bool | None, status: str | None) -> tuple[exp.Expr, list[object]]:
    query = exp.select(*COLUMNS).from_("attributes")
    params: list[object] = []
    if standard is not None:
        query = query.where(exp.column("standard").eq(param()))
        params.append(standard)
    if status is not None:
        query = query.where(exp.column("status").eq(param()))
        params.append(status)
    return query.order_by("standard DESC", "code"), params


def update(columns: list[str]) -> exp.Expr:
    """``UPDATE attributes SET c1 = ?, ... WHERE code = ?``; column names come from the registry's own list."""
    assert set(columns) <= set(COLUMNS), columns
    return exp.update("attributes", {c: param() for c in columns}, where=exp.column("code").eq(param()))
