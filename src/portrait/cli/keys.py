"""API keys and the audit log: ``keys create|list|revoke|rotate``, ``audit``."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from portrait.cli.common import (
    AdminKeyOption,
    DbOption,
    JsonOption,
    UrlOption,
    _either,
    _run,
    _show,
    app,
    console,
    styled,
)
from portrait.service import Portrait

keys_app = typer.Typer(help="API keys: write (per source), read, admin; the pii:read scope.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _local_change(local: Portrait, action: str, result: tuple[str, Any] | Any) -> Any:
    local.audit.record(None, action, target="cli")  # who: "local" (the database file's user)
    return result


@keys_app.command("create")
def keys_create(
    kind: Annotated[str, typer.Option(help="write (sends events), read or admin.")],
    name: Annotated[str, typer.Option(help="What it is for; for write keys the source, e.g. website or pos.")],
    scope: Annotated[list[str] | None, typer.Option("--scope", help="Scopes (repeat): read, admin, pii:read, ingest "
                                                                    "(default: the kind's usual ones).")] = None,
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
) -> None:
    """Create a key and print its secret -- shown this once only."""
    def local(service: Portrait) -> dict[str, Any]:
        secret, created = service.keys.create(kind, name, scope)
        return dict(_local_change(service, f"keys create {created.id}", {**created.public(), "key": secret}))

    body = {"kind": kind, "name": name, **({"scopes": scope} if scope else {})}
    created = _run(db, url, admin_key, _either(local, lambda remote: remote.send_json("POST", "/api/keys", body)))
    console.print(f"Created {created['kind']} key {created['id']} ({created['name']}, scopes "
                  f"{', '.join(created['scopes'])}).")
    console.print(styled(("Key (shown once, store it now):", "bold yellow"), f" {created['key']}"))


@keys_app.command("list")
def keys_list(db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
              as_json: JsonOption = False) -> None:
    """Every key: id, kind, name, scopes, created, revoked (never the secret)."""
    found = _run(db, url, admin_key, _either(lambda local: local.keys.all(),
                                             lambda remote: remote.get_json("/api/keys")["keys"]))
    if as_json:
        console.print_json(data=found)
        return
    table = Table("Id", "Kind", "Name", "Scopes", "Created", "Revoked")
    for key in found:
        table.add_row(key["id"], key["kind"], key["name"], ", ".join(key["scopes"]), key["created_at"] or "",
                      key["revoked_at"] or "")
    _show(table, "No keys.")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (from keys list).")],
                db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None) -> None:
    """Revoke a key: it is refused (401) from now on."""
    _run(db, url, admin_key, _either(
        lambda local: _local_change(local, f"keys revoke {key_id}", local.keys.revoke(key_id)),
        lambda remote: remote.send_json("POST", f"/api/keys/{key_id}/revoke", {})))
    console.print(f"Key {key_id} revoked.")


@keys_app.command("rotate")
def keys_rotate(key_id: Annotated[str, typer.Argument(help="The key's id (from keys list).")],
                db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None) -> None:
    """Replace a key's secret: a new key with the same kind, name and scopes; the old one stops working now."""
    def local(service: Portrait) -> dict[str, Any]:
        secret, fresh = service.keys.rotate(key_id)
        return dict(_local_change(service, f"keys rotate {key_id}", {**fresh.public(), "key": secret}))

    fresh = _run(db, url, admin_key, _either(local, lambda remote: remote.send_json(
        "POST", f"/api/keys/{key_id}/rotate", {})))
    console.print(f"Key {key_id} revoked; its replacement is {fresh['id']}.")
    console.print(styled(("Key (shown once, store it now):", "bold yellow"), f" {fresh['key']}"))


@app.command()
def audit(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many entries.")] = 50,
    before: Annotated[int, typer.Option(min=0, help="Entries older than this id (the next page; 0: the newest).")] = 0,
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None, as_json: JsonOption = False,
) -> None:
    """The audit log, newest first: every admin action and every read of personal data."""
    found = _run(db, url, admin_key, _either(
        lambda local: local.audit.entries(before_id=before, limit=limit),
        lambda remote: remote.get_json("/api/audit", {"limit": limit, "before": before})), existing=True)
    if as_json:
        console.print_json(data=found)
        return
    table = Table("Id", "When", "Key", "Action", "Profile", "Status")
    for entry in found["entries"]:
        who = f"{entry['key_name']} ({entry['key_id']})" if entry["key_id"] else entry["key_name"]
        table.add_row(str(entry["id"]), entry["at"], who, entry["action"], entry["profile_id"] or "",
                      str(entry["status"] or ""))
    _show(table, "The audit log has no entries yet.")
