"""Data-subject requests: ``privacy request|list|show``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from portrait.cli.common import (
    AdminKeyOption,
    DbOption,
    ForceOption,
    JsonOption,
    UrlOption,
    _backend,
    _check_new_file,
    _either,
    _fail,
    _run,
    _show,
    _written_whole,
    app,
    console,
)
from portrait.errors import PortraitError
from portrait.service import Portrait

privacy_app = typer.Typer(help="Data-subject requests: access exports and erasure (GDPR, CCPA, LGPD).",
                          no_args_is_help=True)
app.add_typer(privacy_app, name="privacy")


@privacy_app.command("request")
def privacy_request(
    kind: Annotated[str, typer.Option("--type", help="access (everything held about the person) or erase.")],
    identity: Annotated[str, typer.Option(help="TYPE:VALUE of the person, e.g. email:ann@example.com.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write an access export to this JSON file "
                                                                      "(default: print it).")] = None,
    force: ForceOption = False,
    db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
) -> None:
    """Run an access or erase request and wait for it (through a running server when there is one).

    Examples:
    portrait privacy request --type access --identity email:ann@example.com -o ann.json
    portrait privacy request --type erase --identity user_id:42
    """
    fields = {"type": kind, "identity": identity}
    if output:  # refused before the request is made: it would be made, and audited, for nothing
        _check_new_file(output, "the access export", force)
    try:
        with _backend(db, url, admin_key) as backend:
            if isinstance(backend, Portrait):
                done = backend.privacy_request(fields, "local", run_now=True)
                backend.audit.record(None, f"privacy request {kind} {done['id']}", target="cli")
            else:
                created = backend.send_json("POST", "/api/privacy/requests", fields)
                done = _wait(backend, created["id"])
    except PortraitError as exc:
        raise _fail(exc) from exc
    if done["status"] == "failed":
        raise _fail(PortraitError(f"request {done['id']} failed: {done['error']}"))
    if done["status"] != "done":  # still pending or running after the wait: nothing to print or write yet
        raise _fail(PortraitError(f"request {done['id']} is still {done['status']} after {WAIT_SECONDS:.0f} s; "
                                  f"see `portrait privacy show {done['id']}` for when it is done"))
    result = done.get("result") or {}
    if kind == "access":
        text = json.dumps(result, indent=2, ensure_ascii=False)
        if output:
            try:
                with _written_whole(output, "the access export") as partial:
                    partial.write_text(text, encoding="utf-8")
            except PortraitError as exc:
                raise _fail(exc) from exc
            console.print(f"Request {done['id']} done: {len(result.get('events', []))} events and the whole profile "
                          f"written to {output}.")
        else:
            console.print(text, markup=False, highlight=False)
    else:
        console.print(f"Request {done['id']} done: {_erasure_said(result)}", markup=False, highlight=False)


def _erasure_said(result: dict[str, Any]) -> str:
    """An erasure's result as a sentence (it was printed as its JSON; `privacy show` gives that)."""
    rewritten = f"saved conditions rewritten: {result.get('conditions_rewritten', 0)}"
    if not result.get("erased"):  # the identity may still have been named in a saved condition
        also = f"; {rewritten}" if result.get("conditions_rewritten") else ""
        return f"nothing to erase: {result.get('reason', 'no profile had this identity')}{also}."
    events, identities = result.get("events", 0), result.get("identities_suppressed", 0)
    return (f"erased profile {result.get('profile_id')} with its {events} event{'' if events == 1 else 's'} and "
            f"{identities} {'identity' if identities == 1 else 'identities'} (suppressed from now on); profiles "
            f"merged into it: {result.get('merged_profiles', 0)}; {rewritten}.")


WAIT_SECONDS = 120.0


def _wait(backend: Any, request_id: str, timeout: float = WAIT_SECONDS) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found: dict[str, Any] = backend.get_json(f"/api/privacy/requests/{request_id}")
        if found["status"] in ("done", "failed") or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


@privacy_app.command("list")
def privacy_list(db: DbOption = None, url: UrlOption = None, admin_key: AdminKeyOption = None,
                 as_json: JsonOption = False) -> None:
    """Requests, newest first, with their status."""
    found = _run(db, url, admin_key, _either(lambda local: local.privacy.all(),
                                             lambda remote: remote.get_json("/api/privacy/requests")["requests"]),
                                                 existing=True)
    if as_json:
        console.print_json(data=found)
        return
    table = Table("Id", "Type", "Identity", "Status", "Requested by", "Created", "Finished", "Error")
    for r in found:
        table.add_row(r["id"], r["type"], r["identity"] or "(forgotten)", r["status"], r["requested_by"] or "",
                      r["created_at"] or "", r["finished_at"] or "", r["error"] or "")
    _show(table, "No privacy requests yet.")


@privacy_app.command("show")
def privacy_show(request_id: str, db: DbOption = None, url: UrlOption = None,
                 admin_key: AdminKeyOption = None) -> None:
    """One request as JSON, with its result (an access export) once done."""
    console.print_json(data=_run(db, url, admin_key, _either(
        lambda local: local.privacy.get(request_id),
        lambda remote: remote.get_json(f"/api/privacy/requests/{request_id}")), existing=True))
