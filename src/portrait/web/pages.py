"""Console pages: sign-in, overview, the attribute dashboard, customers and the customer card."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date, datetime, time, timedelta
from functools import wraps
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from portrait.attributes import unit_shown, with_unit
from portrait.errors import NotFound, PortraitError, Unauthorized
from portrait.privacy import PERSONAL_IDENTITY_TYPES
from portrait.spec import utc_now
from portrait.sql import console as q
from portrait.viewer import Viewer
from portrait.web.charts import bars, number
from portrait.web.common import (
    TEMPLATES,
    Console,
    SignInNeeded,
    error_page,
    form_error,
    shown,
    sign_in_redirect,
    status_of,
)
from portrait.web.sessions import COOKIE, LIFETIME

Handler = Callable[..., Awaitable[Response]]
GROUPS = {  # how the customer card groups attributes
    "Contact": ("email", "phone", "address_street", "address_city", "address_postal_code", "address_state",
                "address_country", "website", "username"),
    "Demographic": ("first_name", "last_name", "name", "gender", "birthday", "age", "language", "timezone",
                    "company", "title"),
}


def page(console: Console) -> Callable[[Handler], Handler]:
    """Pages answer a redirect to sign-in without a session, and an error page for a PortraitError."""
    def decorate(handler: Handler) -> Handler:
        @wraps(handler)
        async def run(request: Request, *args: Any, **kwargs: Any) -> Response:
            try:
                return await handler(request, *args, **kwargs)
            except SignInNeeded:
                return sign_in_redirect()
            except PortraitError as exc:
                return error_page(request, console, exc)
        return run
    return decorate


def router(console: Console) -> APIRouter:
    web = APIRouter(include_in_schema=False)
    portrait = console.portrait
    guard = page(console)

    @web.get("/login")
    async def login_form(request: Request) -> Response:
        # No message from the address (?error=...): a link could make this page say what its sender wants.
        return TEMPLATES.TemplateResponse(request, "login.html", {"error": ""})

    @web.post("/login")
    async def login(request: Request) -> Response:
        if _from_another_site(request):  # a page elsewhere signing the browser in with a key of its own
            return TEMPLATES.TemplateResponse(request, "login.html", {
                "error": "sign in from Portrait's own sign-in page"}, status_code=403)
        fields = {k: v[-1] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        secret = fields.get("key", "").strip()
        try:
            key = portrait.keys.authenticate(secret)
        except Unauthorized as exc:
            return TEMPLATES.TemplateResponse(request, "login.html", {"error": exc.message}, status_code=401)
        if key.kind == "write":
            return TEMPLATES.TemplateResponse(request, "login.html", {
                "error": "a write key only sends events: sign in with a read or admin key"}, status_code=403)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, console.sessions.open(key.id, secret), httponly=True, samesite="strict",
                            max_age=LIFETIME, secure=request.url.scheme == "https")
        await run_in_threadpool(lambda: portrait.audit.record(key, "console sign-in"))
        return response

    @web.post("/logout")
    @guard
    async def logout(request: Request) -> Response:
        await console.form(request)
        console.sessions.close(request.cookies.get(COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @web.get("/")
    @guard
    async def overview(request: Request) -> Response:
        console.session(request)
        data = await run_in_threadpool(_overview, console)
        return console.render(request, "overview.html", data)

    async def attributes_page(request: Request, tab: str, values: dict[str, str],
                              error: dict[str, str] | None = None, status: int = 200) -> Response:
        listed = console.viewer(request).attributes(
            await run_in_threadpool(lambda: portrait.attributes.list(standard=tab != "custom")))
        return console.render(request, "attributes.html", {"attributes": listed, "tab": tab, "values": values,
                                                           "error": error}, status)

    @web.get("/attributes")
    @guard
    async def attributes(request: Request, tab: str = "standard") -> Response:
        console.session(request)
        return await attributes_page(request, tab, {})

    @web.post("/attributes")
    @guard
    async def create_attribute(request: Request) -> Response:
        fields, _ = await console.admin_form(request, "create attributes")
        wanted = _new_attribute(fields)
        try:
            await run_in_threadpool(console.viewer(request).check_definition, str(wanted["code"]), wanted)
            created = await run_in_threadpool(portrait.create_attribute, wanted)
        except PortraitError as exc:  # the form again, with what was typed and why it was refused
            return await attributes_page(request, "custom", fields, form_error(exc, "definition"), status_of(exc))
        return RedirectResponse(f"/attributes/{created['code']}", status_code=303)

    @web.post("/attributes/{code}")
    @guard
    async def edit_attribute(request: Request, code: str) -> Response:
        fields, _ = await console.admin_form(request, "change attributes")
        changes = _attribute_changes(fields)
        viewer = console.viewer(request)
        try:  # the form sends back the definition it showed, masked for a key without pii:read: not a change
            changes = await run_in_threadpool(viewer.without_shown_definition, code, changes)
            if "definition" in changes and changes["is_personal_info"] == (
                    await run_in_threadpool(portrait.attributes.get, code))["is_personal_info"]:
                del changes["is_personal_info"]  # untouched: a new definition copying personal data makes it personal
            await run_in_threadpool(viewer.check_attribute_change, code, changes)
            await run_in_threadpool(portrait.update_attribute, code, changes)
        except PortraitError as exc:  # the form again, with what was typed and why it was refused
            return await attribute_page(request, code, fields, form_error(exc, "definition"), status_of(exc))
        return RedirectResponse(f"/attributes/{code}", status_code=303)

    @web.get("/attributes/{code}")
    @guard
    async def attribute(request: Request, code: str) -> Response:
        return await attribute_page(request, code, None)

    async def attribute_page(request: Request, code: str, values: dict[str, str] | None,
                             error: dict[str, str] | None = None, status: int = 200) -> Response:
        """An attribute's facts, analytics and edit form (``values``: what was typed, else the attribute's own)."""
        viewer = console.viewer(request)
        found = viewer.attribute(await run_in_threadpool(portrait.attributes.get, code))
        stats = None
        if found["calculate_analytics"]:
            stats = viewer.analytics(code, await run_in_threadpool(portrait.attributes.analytics, code))
        unit = unit_shown(found)  # 12.5 PLN wherever a value is shown (mean, range, bars, top values)
        chart = None
        if stats and stats.get("histogram"):
            chart = bars([(with_unit(f"{number(b['from'])}\u2013{number(b['to'])}", unit), b["count"])
                          for b in stats["histogram"]], label="distribution", columns=("Range", "Profiles"))
        elif stats:
            chart = bars([(with_unit(str(shown(v["value"])), unit), v["count"]) for v in stats["top_values"]],
                         label="top values", columns=("Value", "Profiles"))
        return console.render(request, "attribute.html", {
            "attribute": found, "stats": stats, "chart": chart, "error": error, "unit": unit,
            "values": _attribute_values(found) if values is None else values}, status)

    @web.get("/customers")
    @guard
    async def customers(request: Request, q: str = "") -> Response:
        viewer = console.viewer(request)
        found = await run_in_threadpool(_search, console, q.strip(), viewer) if q.strip() else []
        shown = [viewer.profile(p, "console_search") for p in found[:SEARCH_LIMIT]]
        return console.render(request, "customers.html", {"q": q, "found": shown, "more": len(found) > SEARCH_LIMIT})

    @web.get("/customers/{profile_id}")
    @guard
    async def customer(request: Request, profile_id: str, event: str = "", since: str = "",
                       cursor: str = "") -> Response:
        viewer = console.viewer(request)
        reference = f"profile_id:{profile_id}"
        document = viewer.profile(await run_in_threadpool(portrait.profile, reference), "console_card")
        page_ = await run_in_threadpool(lambda: portrait.events(
            reference, event=event or None, since=_day(since), cursor=cursor or None, limit=50))
        events = viewer.events(page_["events"])
        segments = await run_in_threadpool(portrait.profile_segments, reference)
        attributes = {a["code"]: a for a in await run_in_threadpool(portrait.attributes.list)}
        return console.render(request, "customer.html", {
            "profile": document, "events": events, "next": page_["next"], "event": event, "since": since,
            "segments": segments["segments"], "groups": _grouped(document["traits"], attributes)})

    return web


def _new_attribute(fields: dict[str, str]) -> dict[str, Any]:
    """The create form's fields as the service takes them (a definition makes it calculated, its type follows)."""
    wanted: dict[str, Any] = {"code": fields.get("code", ""), "name": fields.get("name", ""),
                              "description": fields.get("description", ""), "unit": fields.get("unit") or None,
                              "calculate_analytics": fields.get("analytics") == "on"}
    personal = fields.get("personal") == "on"
    if personal or not fields.get("definition"):  # unticked with a definition: the registry decides (a copy of
        wanted["is_personal_info"] = personal      # personal data is personal)
    if fields.get("definition"):
        wanted["definition"] = fields["definition"]
    else:
        wanted["type"] = fields.get("type", "string")
    return wanted


def _attribute_changes(fields: dict[str, str]) -> dict[str, Any]:
    """The edit form's fields as the service takes them."""
    changes: dict[str, Any] = {"name": fields.get("name", ""), "description": fields.get("description", ""),
                               "unit": fields.get("unit") or None,
                               "is_personal_info": fields.get("personal") == "on",
                               "calculate_analytics": fields.get("analytics") == "on",
                               "status": "deprecated" if fields.get("deprecated") == "on" else "active"}
    if fields.get("definition"):
        changes["definition"] = fields["definition"]
    return changes


def _attribute_values(attribute: dict[str, Any]) -> dict[str, str]:
    """An attribute as its edit form's fields (the inverse of :func:`_attribute_changes`)."""
    return {"name": attribute["name"], "unit": attribute["unit"] or "", "description": attribute["description"],
            "definition": attribute["definition"] or "", "personal": "on" if attribute["is_personal_info"] else "",
            "analytics": "on" if attribute["calculate_analytics"] else "",
            "deprecated": "on" if attribute["status"] == "deprecated" else ""}


def _overview(console: Console) -> dict[str, Any]:
    portrait = console.portrait
    session = portrait._reads  # the console reads through the service's own sessions
    now = utc_now()
    # Whole days (UTC), today and the 13 before: from 14 x 24 hours ago the first bar was a part of its day.
    first_day = datetime.combine((now - timedelta(days=13)).date(), time())
    per_day = _every_day(dict(session.execute(q.EVENTS_PER_DAY, [first_day])), first_day.date(), 14)
    top = session.execute(q.TOP_EVENTS, [now - timedelta(days=7)])
    return {
        "status": portrait.status(),
        "per_day": bars([(day.isoformat()[5:], n) for day, n in per_day] if any(n for _, n in per_day) else [],
                        label="events per day", columns=("Day", "Events")),
        "top_events": [(event_type, name, int(n)) for event_type, name, n in top],
        "rejected_24h": int(session.execute(q.REJECTED_SINCE, [now - timedelta(days=1)])[0][0]),
        "quality_24h": int(session.execute(q.QUALITY_SINCE, [now - timedelta(days=1)])[0][0]),
        "segments": portrait.segments.all()[:8],
    }


def _every_day(counts: dict[date, int], first: date, days: int) -> list[tuple[date, int]]:
    """The count of each of ``days`` days from ``first``, 0 for a day without events (the query has no row for
    it); a day after them (an event up to a day ahead, a clock running early) is not one of them."""
    return [(day, int(counts.get(day, 0))) for day in (first + timedelta(days=i) for i in range(days))]


SEARCH_LIMIT = 20  # customers listed for a search; one more is read to tell that there are more


def _search(console: Console, text: str, viewer: Viewer) -> list[dict[str, Any]]:
    """Profiles for a search: an exact identity (TYPE:VALUE), else identifiers starting with it or a trait equal.
    Without ``pii:read`` emails, phones and personal traits are not searched: extending a prefix letter by letter
    would spell out every email address -- nor identifiers of other types that may be one (a userId
    ``ann@example.com``, anything with an ``@`` or starting with ``+``); ``TYPE:VALUE`` finds them exactly."""
    portrait = console.portrait
    if ":" in text:
        try:
            return [portrait.profile(text)]
        except (NotFound, PortraitError):
            pass
    types, traits = ([], []) if viewer.sees_pii else (sorted(PERSONAL_IDENTITY_TYPES), sorted(viewer.personal()))
    rows = portrait._reads.execute(q.SEARCH, [text.lower(), types, traits, SEARCH_LIMIT + 1, viewer.sees_pii])
    return [portrait.profile(f"profile_id:{row[0]}") for row in rows]


def _grouped(traits: dict[str, Any], attributes: dict[str, dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    names = (*GROUPS, "Behavioral and calculated", "Preferences and other")
    groups: dict[str, list[Any]] = {name: [] for name in names}
    for code, value in sorted(traits.items()):
        attribute = attributes.get(code, {})
        group = next((name for name, codes in GROUPS.items() if code in codes), None)
        if group is None:
            group = "Behavioral and calculated" if attribute.get("calculated") else "Preferences and other"
        groups[group].append((attribute.get("name") or code, code, value, attribute.get("unit")))
    return [(name, items) for name, items in groups.items() if items]


def _day(text: str) -> datetime | None:
    """The date filter of the timeline (an ISO date); anything unreadable means no filter."""
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _from_another_site(request: Request) -> bool:
    """Whether the browser says the request comes from another site's page: Sec-Fetch-Site (sent by current
    browsers), else an Origin naming another host ("null" is what the console's own pages send: no referrer)."""
    fetched_from = request.headers.get("sec-fetch-site")
    if fetched_from is not None:
        return fetched_from not in ("same-origin", "none")
    origin = request.headers.get("origin")
    return origin not in (None, "null") and urlsplit(origin).netloc != request.url.netloc
