"""What every console page shares: templates, the signed-in key, forms with CSRF tokens, rendering."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import orjson
from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from portrait.api.errors import STATUS
from portrait.attributes import with_unit
from portrait.conditions.text import ConditionError
from portrait.errors import Forbidden, PortraitError, Unauthorized
from portrait.keys import ApiKey
from portrait.service import Portrait
from portrait.untrusted import INVISIBLE, INVISIBLE_IN_JSON, code_point
from portrait.viewer import Viewer
from portrait.web.sessions import COOKIE, ConsoleSession, SessionStore

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def shown(value: Any) -> Any:
    """A trait value as people read it in the JSON they sent: lists, objects and true/false as JSON, not as Python
    prints them (['a', 'b'], True)."""
    if isinstance(value, list | dict | bool) or value is None:
        return orjson.dumps(value).decode()
    return value


def json_text(value: Any) -> str:
    """What was sent as indented JSON for a ``<pre>``: the characters themselves (Jinja's ``tojson`` writes <, >,
    &, ' and every non-ASCII letter as \\uXXXX, for a <script> element: "Zo\\u00eb O\\u0027Brien" on the page);
    the template escapes it as any text. Invisible characters are written as their JSON escape: they are shown, and
    cannot reorder or hide the text around them. Still valid JSON, meaning the same."""
    text = orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    return INVISIBLE_IN_JSON.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


def visible(value: Any) -> Any:
    """A value for the page's text, each invisible character in it (:mod:`portrait.untrusted`) shown as its code
    point (``U+202E``, marked, not obeyed): names, identifiers and event names sit inline, next to other text they
    could turn around or look the same as. Text is isolated in a ``<bdi>``: a right-to-left name (Hebrew, Arabic)
    would otherwise pull the digits after it -- a profile id, a count -- into its run. Not for form fields (what
    is typed is sent back as it is)."""
    if not isinstance(value, str):
        return value
    if not INVISIBLE.search(value):
        return Markup("<bdi>{}</bdi>").format(value)
    parts = INVISIBLE.split(value)
    marks = [Markup('<span class="char" title="an invisible character">{}</span>').format(code_point(found))
             for found in INVISIBLE.findall(value)]
    shown = Markup("").join(item for pair in zip(parts, [*marks, ""], strict=True) for item in pair)
    return Markup("<bdi>{}</bdi>").format(shown)


def event_label(event_type: str, event: str | None) -> str:
    """How an event is named in lists: a track by its event name, a page or screen view by its name and kind (a
    page named "Product" and a track "Product" read differently: both are *named* Product, as a segment's
    ``performed("Product")`` and the API's ``event=`` filter take them), an unnamed one by its kind."""
    if event is None:
        return event_type
    return f"{event} ({event_type})" if event_type in ("page", "screen") else event


def customer_name(traits: Mapping[str, Any]) -> str | None:
    """What a customer is called in the console: the ``name`` trait, else first and last name together (as in the
    search results, where the card said only "Mia" of Mia Nowak), else None."""
    if isinstance(traits.get("name"), str) and traits["name"].strip():
        return str(traits["name"])
    parts = [traits.get(code) for code in ("first_name", "last_name")]
    joined = " ".join(part.strip() for part in parts if isinstance(part, str) and part.strip())
    return joined or None


TEMPLATES.env.filters["shown"] = shown
TEMPLATES.env.filters["visible"] = visible
TEMPLATES.env.filters["json_text"] = json_text
TEMPLATES.env.globals["event_label"] = event_label
TEMPLATES.env.globals["customer_name"] = customer_name
TEMPLATES.env.filters["with_unit"] = lambda value, unit: with_unit(str(value), unit)
NAV = [("/", "Overview"), ("/attributes", "Attributes"), ("/customers", "Customers"), ("/segments", "Segments"),
       ("/funnels", "Funnels"), ("/events", "Events"), ("/admin", "Sources & keys")]


class SignInNeeded(Exception):
    pass


class Console:
    def __init__(self, portrait: Portrait) -> None:
        self.portrait = portrait
        self.sessions = SessionStore()

    def session(self, request: Request) -> tuple[ConsoleSession, ApiKey]:
        """The request's session and its key (checked again now); SignInNeeded otherwise."""
        found = self.sessions.get(request.cookies.get(COOKIE))
        if found is None:
            raise SignInNeeded
        try:
            key = self.portrait.keys.authenticate(found.key_secret)
        except Unauthorized:
            self.sessions.close(request.cookies.get(COOKIE))
            raise SignInNeeded from None
        request.state.key = key
        return found, key

    def viewer(self, request: Request) -> Viewer:
        return Viewer(self.portrait, self.session(request)[1])

    async def form(self, request: Request) -> dict[str, str]:
        """A urlencoded form, after checking its CSRF token against the session's."""
        session, _ = self.session(request)
        fields = {k: v[-1] for k, v in parse_qs((await request.body()).decode("utf-8", "replace"),
                                                keep_blank_values=True).items()}
        if not _same_token(fields.get("csrf"), session.csrf):
            raise Forbidden("the form expired or came from another site; reload the page and try again")
        return fields

    async def admin_form(self, request: Request, action: str) -> tuple[dict[str, str], ApiKey]:
        """A form that changes something: as :meth:`form`, and only for a key with the admin scope (the pages hide
        such forms from other keys; this refuses them whoever posts them), as the API does."""
        fields = await self.form(request)
        key: ApiKey = request.state.key  # authenticated by form() (see session)
        self.portrait.keys.require(key, "admin", action)
        return fields, key

    def check_header(self, request: Request) -> ConsoleSession:
        session, _ = self.session(request)
        if not _same_token(request.headers.get("x-csrf-token"), session.csrf):
            raise Forbidden("missing or wrong X-CSRF-Token")
        return session

    def render(self, request: Request, template: str, context: Mapping[str, Any], status: int = 200) -> Response:
        session, key = self.session(request)
        return TEMPLATES.TemplateResponse(request, template, {
            **context, "nav": NAV, "path": request.url.path, "csrf": session.csrf, "key": key,
            "sees_pii": key.can_read_pii, "is_admin": "admin" in key.scopes}, status_code=status)


def _same_token(sent: str | None, expected: str) -> bool:
    """Compared in constant time (as bytes: compare_digest refuses non-ASCII text, which a forged token may be)."""
    return sent is not None and hmac.compare_digest(sent.encode("utf-8", "replace"), expected.encode())


def sign_in_redirect() -> RedirectResponse:
    return RedirectResponse("/login", status_code=303)


def status_of(exc: PortraitError) -> int:
    """The API's status for the error (403 for a missing scope, 404...), a plain 400 for the rest of the mistakes."""
    return next((code for kind, code in STATUS.items() if isinstance(exc, kind) and code < 500), 400)


def form_error(exc: PortraitError, condition_field: str) -> dict[str, str]:
    """What a form shows for a refused submission: the message, next to the field at fault (the error's own
    ``field``; a condition or duration that cannot be read is the form's ``condition_field``), else above the form
    (``field`` empty)."""
    field = exc.field or (condition_field if isinstance(exc, ConditionError) else "")
    return {"message": exc.message, "field": field}


def error_page(request: Request, console: Console, exc: PortraitError) -> Response:
    status = status_of(exc)
    try:
        return console.render(request, "error.html", {"error": exc.message, "code": exc.code,
                                                      "back": _back(request)}, status=status)
    except SignInNeeded:  # the session ended meanwhile (signed out in another tab, the key revoked)
        return sign_in_redirect()


def _back(request: Request) -> str:
    """Where the error page's Back link goes when console.js has no history to go back in: the console page that
    led here (same host only), else the overview."""
    referer = urlsplit(request.headers.get("referer", ""))
    if referer.netloc == request.url.netloc and referer.path.startswith("/") and referer.path != request.url.path:
        return urlunsplit(("", "", referer.path, referer.query, ""))
    return "/"
