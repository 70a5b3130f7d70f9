"""The web console end to end, in headless Chromium (Debian's package) driven by Playwright, against a real server:
sign in, load demo data, find a customer and open the card, create a custom attribute, build a segment and see its
count while typing, watch an event arrive live, run an erase request. Screenshots of each page are saved to
tests/artifacts/console/ as test artifacts."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from tests.conftest import ADMIN_KEY, WRITE_KEY, Server, start_demo_shop, utc_today_clear_of_midnight

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts" / "console"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("console")
    server = start_demo_shop(folder)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "Debian's chromium package is needed (apt-get install chromium)"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        # The shop page in the browser-SDK test is served by the test on a made-up origin; Chromium's local-network
        # checks would keep it from the server on 127.0.0.1 (a real site reaches a real host, where they do not apply).
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, shop: Server) -> Iterator[Page]:
    context = browser.new_context(base_url=shop.url, viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.goto("/login")
    opened.get_by_label("API key (read or admin)").fill(ADMIN_KEY)
    opened.get_by_role("button", name="Sign in").click()
    expect(opened.get_by_role("heading", name="Overview")).to_be_visible()
    yield opened
    context.close()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def open_live_events(page: Page) -> None:
    """The events page, once its live stream has had the first answer to its polling (a fixed 1.2 s wait before)."""
    with page.expect_response(lambda response: "/console/api/recent" in response.url):
        page.goto("/events")


def test_sign_in_is_required_and_a_wrong_key_is_refused(browser: Browser, shop: Server) -> None:
    context = browser.new_context(base_url=shop.url)
    page = context.new_page()
    page.goto("/customers")
    expect(page).to_have_url(f"{shop.url}/login")
    page.get_by_label("API key (read or admin)").fill("ak_not_a_key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("unknown API key")
    shot(page, "login")
    cookies = {c["name"]: c for c in context.cookies()}
    assert "portrait_session" not in cookies
    context.close()


def test_overview_and_sign_out(page: Page, shop: Server) -> None:
    with shop.admin() as api:
        profiles = api.get("/api/status").json()["profiles"]
    assert profiles >= 40
    expect(page.locator("[data-test=profiles]")).to_have_text(f"{profiles:,}")
    icon = page.locator("link[rel=icon]").get_attribute("href")
    assert icon and page.request.get(f"{shop.url}{icon}").status == 200  # not a 404 for /favicon.ico per page
    shot(page, "overview")
    session = next(c for c in page.context.cookies() if c["name"] == "portrait_session")
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key (read or admin)")).to_be_visible()
    page.goto("/")
    expect(page).to_have_url(f"{shop.url}/login")  # signed out: pages send you to sign in


def test_find_a_customer_and_open_the_card(page: Page) -> None:
    page.goto("/customers")
    page.keyboard.press("Tab")  # keyboard reachable: the search box takes focus from the keyboard
    page.get_by_label("Find by any identifier or attribute value").fill("user-1")
    page.keyboard.press("Enter")
    first = page.locator("table tbody tr").first  # the exact match before user-10, user-11...
    expect(first.locator(".tag", has_text=re.compile(r"^user_id: user-1$"))).to_have_count(1)
    shot(page, "customers")  # once the results page is there: taken while it loaded, the shot lost its page
    expect(page.locator("[data-test=more-results]")).to_have_count(0)
    listed_as = page.locator("table a").first.inner_text()
    assert " " in listed_as  # first and last name (the demo's customers have both)
    page.locator("table a").first.click()
    # the card is headed with the name the results gave (it said only the first name)
    expect(page.locator("[data-test=customer]")).to_contain_text(re.compile(rf"^{re.escape(listed_as)} "))
    expect(page).to_have_title(f"{listed_as} · Customers · Portrait")
    expect(page.get_by_role("heading", name="Identities")).to_be_visible()
    expect(page.get_by_role("heading", name="Activity")).to_be_visible()
    page.locator(".timeline summary").first.click()  # expand an event's properties
    expect(page.locator(".timeline pre").first).to_be_visible()
    shot(page, "customer-card")
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "customer-card-390px")
    assert page.evaluate("document.documentElement.scrollWidth") <= 400  # no sideways scrolling on a phone


def test_a_search_with_more_matches_than_shown_says_so(page: Page) -> None:
    page.goto("/customers?q=user-")  # every demo customer (40)
    expect(page.locator("table tbody tr")).to_have_count(20)
    expect(page.locator("[data-test=more-results]")).to_contain_text("there are more")


def test_older_events_keep_the_event_filter(page: Page, shop: Server) -> None:
    name = "Q&A #1 + more"  # every character that means something in a URL
    with httpx.Client(base_url=shop.url, auth=(WRITE_KEY, ""), timeout=10) as client:
        batch = [{"type": "track", "userId": "pager", "event": name, "messageId": f"pager-{i}",
                  "timestamp": f"2026-01-01T00:{i:02d}:00Z"} for i in range(55)]
        assert client.post("/v1/batch", json={"batch": batch}).status_code == 200
    shop.wait_caught_up()
    with shop.admin() as admin:
        profile_id = admin.get("/api/profiles/user_id:pager").json()["profile_id"]
    page.goto(f"/customers/{profile_id}?event={quote(name)}")
    expect(page.locator(".timeline summary")).to_have_count(50)
    page.get_by_role("link", name="Older events").click()
    expect(page.locator(".timeline summary")).to_have_count(5)
    expect(page.locator(".timeline summary").first).to_contain_text(name)


def test_create_a_custom_attribute(page: Page) -> None:
    page.goto("/attributes?tab=custom")
    page.get_by_label("Code").fill("shoe_size")
    page.get_by_label("Name").fill("Shoe size")
    page.get_by_label("Type").select_option("integer")
    page.get_by_label("Calculate analytics").check()
    page.get_by_role("button", name="Create attribute").click()
    expect(page.get_by_role("heading", name="Shoe size shoe_size")).to_be_visible()
    page.get_by_label("Description").fill("EU sizes")
    page.get_by_label("Unit").fill("EU")
    page.get_by_role("button", name="Save changes").click()  # edit it
    expect(page.get_by_label("Description")).to_have_value("EU sizes")
    page.goto("/attributes?tab=custom")
    row = page.locator("table.attributes tr", has_text="shoe_size")
    expect(row).to_contain_text("EU sizes")
    type_column = page.locator("table.attributes th").all_inner_texts().index("Type")
    expect(row.locator("td").nth(type_column)).to_have_text("integer")  # the list says each attribute's type
    shot(page, "attributes")


def test_build_a_segment_and_see_its_count_while_typing(page: Page) -> None:
    page.goto("/segments/new")
    page.get_by_label("Name").first.fill("Buyers")
    page.get_by_label("Event").fill("Order Completed")
    page.get_by_role("button", name="Add event condition").click()
    expect(page.locator("#condition")).to_have_value('performed("Order Completed")')
    expect(page.locator("#preview")).to_contain_text("customers — customers who performed")
    count = int(page.locator("#preview").get_attribute("data-count") or "-1")
    assert count > 0
    # some of them, recognisably: user id, email and name (the admin key reads personal data)
    sample = page.locator("[data-test=preview-sample]")
    expect(sample.locator("th").first).to_have_text("user id")
    expect(sample.locator("th", has_text="email")).to_have_count(1)
    expect(sample.locator("tbody td", has_text=re.compile(r"^[a-z]+\.[a-z]+\d*@example\.(com|org|net)$")).first
           ).to_be_visible()
    shot(page, "segment-builder")
    page.get_by_role("button", name="Save segment").click()
    expect(page.locator("[data-test=size]")).to_have_text(f"{count:,}")
    shot(page, "segment")
    # A second segment built from rows: a group of attribute conditions joined by "or", and the first segment.
    page.goto("/segments/new")
    page.get_by_label("Name").first.fill("Buyers in PL or DE")
    page.get_by_label("Attribute").select_option("address_country")
    page.get_by_label("Operator").select_option("=")
    page.get_by_label("Value").fill("PL")
    page.get_by_role("button", name="Add attribute condition").click()
    page.get_by_label("Join").select_option("or")
    page.get_by_label("Value").fill("DE")
    page.get_by_role("button", name="Add attribute condition").click()
    page.get_by_role("button", name="Group what is written ( … )").click()
    page.get_by_label("Join").select_option("and")
    page.locator("#row-segment").select_option("Buyers")
    page.get_by_role("button", name="Add segment condition").click()
    expect(page.locator("#condition")).to_have_value(
        '(address_country = "PL" or address_country = "DE") and in_segment("Buyers")')
    expect(page.locator("#preview")).to_contain_text('who are in the segment "Buyers"')


def test_an_event_arrives_live(page: Page, shop: Server) -> None:
    open_live_events(page)  # the page has started polling
    with httpx.Client(base_url=shop.url, auth=(WRITE_KEY, ""), timeout=10) as sdk:
        assert sdk.post("/v1/track", json={"userId": "live-1", "event": "Live Test Event"}).status_code == 200
    expect(page.locator("#live")).to_contain_text("Live Test Event", timeout=15_000)
    shot(page, "events")


def test_a_page_view_and_a_track_of_the_same_name_read_apart(page: Page, shop: Server) -> None:
    """A page named "Pricing" and a track "Pricing" were both listed as "Pricing" -- on the card, in the live
    stream, and counted as one line in the overview's top events. A view is now named with its kind."""
    open_live_events(page)  # the page has started polling
    now = datetime.now(UTC)

    def message(kind: str, i: int) -> dict[str, Any]:  # views and tracks alternate in time, newest a view
        name = {"name": "Pricing"} if kind == "page" else {"event": "Pricing"}
        at = now - timedelta(seconds=2 * i + (kind == "track"))
        return {"type": kind, "userId": "reader-1", "messageId": f"pricing-{kind}-{i}",
                "timestamp": at.isoformat(), **name}

    batch = [message("page", i) for i in range(300)] + [message("track", i) for i in range(200)]
    with httpx.Client(base_url=shop.url, auth=(WRITE_KEY, ""), timeout=10) as sdk:
        assert sdk.post("/v1/batch", json={"batch": batch}).status_code == 200
    live = page.locator("#live summary")
    expect(live.filter(has_text=re.compile(r"Pricing \(page\)\s+reader-1")).first).to_be_visible(timeout=15_000)
    expect(live.filter(has_text=re.compile(r"Z\s+Pricing\s+reader-1")).first).to_be_visible(timeout=15_000)
    shop.wait_caught_up()
    page.goto("/")
    top = page.locator("section.two table").first
    expect(top.locator("tr", has_text=re.compile(r"^Pricing \(page\)\s*300$"))).to_have_count(1)
    expect(top.locator("tr", has_text=re.compile(r"^Pricing\s*200$"))).to_have_count(1)
    with shop.admin() as admin:
        profile_id = admin.get("/api/profiles/user_id:reader-1").json()["profile_id"]
    page.goto(f"/customers/{profile_id}")
    names = page.locator(".timeline summary strong")
    expect(names.filter(has_text=re.compile(r"^Pricing \(page\)$"))).to_have_count(25)
    expect(names.filter(has_text=re.compile(r"^Pricing$"))).to_have_count(25)


def test_an_event_name_no_event_has_had_is_noted_in_the_funnel_and_the_builder(page: Page) -> None:
    """A step or a performed(...) misspelt counted zero without a word; now a note names it and the name meant."""
    page.goto("/funnels?steps=Product+Viewed,order+completed&within=30d")
    expect(page.locator("p.note[role=status]")).to_have_text(
        "no event named 'order completed' has been received (did you mean 'Order Completed'?): names match exactly, "
        "case too.")
    page.goto("/funnels?steps=Product+Viewed,Order+Completed&within=30d")
    expect(page.locator("svg.chart")).to_have_count(1)
    expect(page.locator("p.note[role=status]")).to_have_count(0)
    page.goto("/segments/new")
    page.locator("#condition").fill('performed("Order Complete")')
    expect(page.locator("#preview")).to_contain_text(
        "Note: no event named 'Order Complete' has been received (did you mean 'Order Completed'?)")


def test_a_read_key_cannot_change_anything_through_the_console(browser: Browser, shop: Server) -> None:
    """The pages hide the forms from a read key; posting them anyway (with a valid CSRF token) is refused, as the
    API refuses it: no segment, no attribute change (which could switch off the masking of personal data)."""
    with shop.admin() as admin:
        created = admin.post("/api/keys", json={"kind": "read", "name": "analyst"})
        assert created.status_code == 201, created.text
        read_key = created.json()["key"]
    reader = sign_in(browser, shop, read_key)
    csrf = reader.locator("body").get_attribute("data-csrf")
    for path, form in (("/segments", {"name": "by reader", "condition": "plan is set"}),
                       ("/attributes", {"code": "reader_attr", "name": "R", "type": "string"}),
                       ("/attributes/email", {"name": "Email", "description": "email"}),
                       ("/admin/privacy", {"type": "erase", "identity": "email:nobody@example.com"})):
        answer = reader.request.post(path, form={**form, "csrf": csrf or ""}, max_redirects=0)
        assert answer.status == 403 and "admin" in answer.text(), (path, answer.status)
    with shop.admin() as admin:
        assert "by reader" not in [s["name"] for s in admin.get("/api/segments").json()["segments"]]
        assert admin.get("/api/attributes/reader_attr").status_code == 404
        assert admin.get("/api/attributes/email").json()["is_personal_info"] is True
    reader.context.close()


def sign_in(browser: Browser, shop: Server, key: str) -> Page:
    context = browser.new_context(base_url=shop.url)
    signed_in = context.new_page()
    signed_in.goto("/login")
    signed_in.get_by_label("API key (read or admin)").fill(key)
    signed_in.get_by_role("button", name="Sign in").click()
    expect(signed_in.get_by_role("heading", name="Overview")).to_be_visible()
    return signed_in


def cli(shop: Server, *args: str, key: str = ADMIN_KEY) -> subprocess.CompletedProcess[str]:
    """The ``portrait`` command through the running server, as a person at a terminal runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTRAIT_")}
    return subprocess.run([sys.executable, "-m", "portrait", *args, "--url", shop.url, "--admin-key", key],
                          capture_output=True, text=True, env={**env, "COLUMNS": "200"}, timeout=120, check=False)


def test_an_admin_without_pii_read_edits_a_definition_it_sees_masked(browser: Browser, shop: Server) -> None:
    """The definition compares an email address: an admin key without pii:read sees it masked on the attribute
    pages and in the CLI, and saving the edit form with a new description keeps the real definition."""
    definition = 'count("Order Completed", where email = "ann@example.com")'
    with shop.admin() as admin:
        made = admin.post("/api/attributes", json={"code": "ann_orders", "name": "Ann's orders",
                                                   "definition": definition})
        assert made.status_code == 201, made.text
        ops = admin.post("/api/keys", json={"kind": "admin", "name": "ops", "scopes": ["read", "admin"]}).json()
    editor = sign_in(browser, shop, ops["key"])
    editor.goto("/attributes?tab=custom")
    expect(editor.locator("table.attributes")).to_contain_text('email = "a***@example.com"')
    expect(editor.locator("table.attributes")).not_to_contain_text("ann@example.com")
    editor.goto("/attributes/ann_orders")
    expect(editor.locator(".facts")).to_contain_text('email = "a***@example.com"')
    masked = 'count("Order Completed", where email = "a***@example.com")'
    expect(editor.get_by_label("Definition")).to_have_value(masked)
    editor.get_by_label("Description").fill("orders of one customer")
    editor.get_by_role("button", name="Save changes").click()
    expect(editor.get_by_label("Description")).to_have_value("orders of one customer")
    expect(editor.get_by_role("alert")).to_have_count(0)
    shot(editor, "attribute-masked-definition")
    with shop.admin() as admin:
        real = admin.get("/api/attributes/ann_orders").json()
    assert real["definition"] == definition and real["description"] == "orders of one customer"
    editor.get_by_label("Definition").fill('count("Order Completed", within = 30d, where email = "a***@example.com")')
    editor.get_by_role("button", name="Save changes").click()
    expect(editor.get_by_role("alert")).to_contain_text("cannot change the definition of ann_orders")
    with shop.admin() as admin:
        assert admin.get("/api/attributes/ann_orders").json()["definition"] == definition
    editor.context.close()
    for args in (("attributes", "show", "ann_orders"), ("attributes", "list", "--kind", "custom", "--json")):
        shown = cli(shop, *args, key=ops["key"])
        assert shown.returncode == 0 and "a***@example.com" in shown.stdout, shown.stderr
        assert "ann@example.com" not in shown.stdout


def test_a_user_id_that_is_an_email_is_masked_in_the_console_and_the_cli(browser: Browser, shop: Server) -> None:
    """A shop using the customer's email as the userId: a key without pii:read read it in clear in search results,
    the card, live events, a segment's members and its CSV, and the CLI through the server. It is masked as an
    email identity is, a search by its beginning finds nothing (it would spell it out), and TYPE:VALUE finds it."""
    secret = "nina.masked@example.com"
    with httpx.Client(base_url=shop.url, auth=(WRITE_KEY, ""), timeout=10) as sdk:
        assert sdk.post("/v1/identify", json={"userId": secret, "traits": {"plan": "nina-plan"}}).status_code == 200
    shop.wait_caught_up()
    with shop.admin() as admin:
        made = admin.post("/api/segments", json={"name": "ninas", "condition": 'plan = "nina-plan"'})
        assert made.status_code == 201 and made.json()["size"] == 1, made.text
        reader = admin.post("/api/keys", json={"kind": "read", "name": "masked-reader"}).json()["key"]
    page = sign_in(browser, shop, reader)
    page.goto("/customers?q=nina.mas")
    expect(page.locator("table tbody")).to_contain_text("Nobody matches")
    page.goto(f"/customers?q=user_id:{quote(secret)}")
    expect(page.locator("table tbody .tag", has_text="user_id: n***@example.com")).to_have_count(1)
    page.locator("table tbody a").first.click()
    expect(page.get_by_role("heading", name="Identities")).to_be_visible()
    expect(page.locator("main")).to_contain_text("n***@example.com")
    expect(page.locator("main")).not_to_contain_text(secret)
    page.goto(f"/segments/{made.json()['id']}")
    expect(page.locator("main")).to_contain_text("n***@example.com")
    assert secret not in page.content()
    exported = page.request.get(f"/segments/{made.json()['id']}/export.csv")
    assert exported.ok and "n***@example.com" in exported.text() and secret not in exported.text()
    open_live_events(page)
    with httpx.Client(base_url=shop.url, auth=(WRITE_KEY, ""), timeout=10) as sdk:
        assert sdk.post("/v1/track", json={"userId": secret, "event": "Masked Live Event"}).status_code == 200
    expect(page.locator("#live")).to_contain_text("Masked Live Event", timeout=15_000)
    expect(page.locator("#live")).to_contain_text("n***@example.com")
    assert secret not in page.content()
    page.context.close()
    shown = cli(shop, "profiles", "get", f"user_id:{secret}", key=reader)
    assert shown.returncode == 0 and "n***@example.com" in shown.stdout, shown.stderr
    assert secret not in shown.stdout
    assert secret in cli(shop, "profiles", "get", f"user_id:{secret}").stdout  # the admin key has pii:read


def test_numbers_are_shown_with_their_unit(page: Page, shop: Server) -> None:
    """An attribute's analytics (mean, range, chart, top values) and the customer card write a number's unit."""
    with shop.admin() as admin:
        admin.post("/api/attributes", json={"code": "basket_pln", "name": "Basket", "type": "number", "unit": "PLN",
                                            "calculate_analytics": True}).raise_for_status()
    with httpx.Client(base_url=shop.url, auth=(WRITE_KEY, ""), timeout=10) as sdk:
        for user, basket in (("unit-1", 12.5), ("unit-2", 30)):
            sdk.post("/v1/identify", json={"userId": user, "traits": {"basket_pln": basket}}).raise_for_status()
    shop.wait_caught_up()
    page.goto("/attributes/basket_pln")
    expect(page.locator("main")).to_contain_text("mean 21.25 PLN, from 12.5 PLN to 30 PLN")
    expect(page.locator("table").last).to_contain_text("12.5 PLN")
    expect(page.locator("svg")).to_contain_text("12.5\u201314.25 PLN")
    shot(page, "attribute-unit")
    with shop.admin() as admin:
        profile_id = admin.get("/api/profiles/user_id:unit-1").json()["profile_id"]
    page.goto(f"/customers/{profile_id}")
    expect(page.locator("dd", has_text="12.5")).to_have_text("12.5 PLN")


def run_privacy_request(page: Page, kind: str, identity: str) -> None:
    """Ask for an access or erase request on the admin page's form."""
    page.goto("/admin")
    page.get_by_label("Type").select_option(kind)
    page.get_by_label("Identity").fill(identity)
    page.get_by_role("button", name="Run request").click()


def test_run_an_erase_request(page: Page) -> None:
    run_privacy_request(page, "erase", "user_id:user-3")
    page.get_by_label("Identity").fill("email:still.typing@example.com")  # while the request runs in the worker
    expect(page.locator("[data-test=request-status]").first).to_have_text("done", timeout=20_000)  # queued, then run
    expect(page.get_by_label("Identity")).to_have_value("email:still.typing@example.com")  # the table alone refreshed
    shot(page, "admin")
    page.goto("/customers?q=user_id:user-3")
    expect(page.locator("table")).to_contain_text("Nobody matches")


def test_download_a_finished_access_export(page: Page) -> None:
    run_privacy_request(page, "access", "user_id:user-5")
    link = page.get_by_role("link", name="Download export").first
    expect(link).to_be_visible(timeout=20_000)
    with page.expect_download() as download:
        link.click()
    export = json.loads(Path(download.value.path()).read_text())
    assert download.value.suggested_filename.startswith("access-pr_")
    assert {"user_id", "user-5"} <= {v for i in export["profile"]["identities"] for v in (i["type"], i["value"])}
    assert export["events"], "the customer's events are in the export"


# -- the official browser SDK ------------------------------------------------------------------------------------
BUNDLE_CACHE = Path(__file__).parent / ".cache" / "analytics-next"


@pytest.fixture(scope="module")
def analytics_next() -> Path:
    """Segment's @segment/analytics-next from the npm registry, installed once at test setup into tests/.cache."""
    umd = BUNDLE_CACHE / "node_modules" / "@segment" / "analytics-next" / "dist" / "umd"
    if not (umd / "index.js").exists():
        BUNDLE_CACHE.mkdir(parents=True, exist_ok=True)
        installed = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", "--prefix",
                                    str(BUNDLE_CACHE), "@segment/analytics-next@1"], capture_output=True, text=True,
                                   timeout=300, check=False)
        assert installed.returncode == 0, installed.stderr
    return umd


SHOP_PAGE = """<!doctype html><html><head><script src="/ajs/index.js"></script></head><body><script>
window.analytics = window.AnalyticsNext.AnalyticsBrowser.load({
  writeKey: "%(key)s",
  cdnSettings: {integrations: {"Segment.io": {apiKey: "%(key)s", apiHost: "%(host)s/v1", protocol: "http"}}}
});
</script></body></html>"""


def test_the_official_browser_sdk_lands_on_the_right_profile(browser: Browser, shop: Server,
                                                             analytics_next: Path) -> None:
    context = browser.new_context()
    host = shop.url.removeprefix("http://")

    shop_origin = "http://localhost:8917"  # a loopback origin of its own (Chromium keeps public pages off loopback)

    def serve(route: Any) -> None:
        path = route.request.url.split(shop_origin, 1)[1].split("?", 1)[0]
        if path.startswith("/ajs/"):
            route.fulfill(path=str(analytics_next / path.removeprefix("/ajs/")), content_type="text/javascript")
        else:
            route.fulfill(body=SHOP_PAGE % {"key": WRITE_KEY, "host": host}, content_type="text/html")

    context.route(f"{shop_origin}/**", serve)  # the shop's page and the SDK's files, served by the test itself
    page = context.new_page()
    page.goto(f"{shop_origin}/index.html")
    page.evaluate("""async () => {
        await window.analytics.page("Home");
        await window.analytics.identify("browser-user-1", {email: "browser.user@example.com"});
        await window.analytics.track("Product Viewed", {sku: "B-1"});
    }""")
    deadline = time.monotonic() + 30
    with shop.admin() as api:
        while True:
            found = api.get("/api/profiles/user_id:browser-user-1/events")
            names = [e["type"] + ":" + (e["event"] or "") for e in found.json().get("events", [])] \
                if found.status_code == 200 else []
            if len(names) >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert sorted(names) == ["identify:", "page:Home", "track:Product Viewed"], names
        profile = api.get("/api/profiles/email:browser.user@example.com").json()
        kinds = {i["type"] for i in profile["identities"]}
        assert {"user_id", "anonymous_id", "email"} <= kinds  # the anonymous page view joined the customer
    context.close()


def test_an_import_says_which_csv_column_was_read_as_text(page: Page, tmp_path: Path) -> None:
    orders = tmp_path / "tills.csv"
    orders.write_text("customer_id,amount\nuser-7,12.5\nuser-8,tbd\n")
    page.goto("/admin")
    page.get_by_label("File (NDJSON, JSON or Parquet", exact=False).set_input_files(str(orders))
    page.get_by_label("Event name for every row (CSV events)").fill("Till Sale")
    page.get_by_role("button", name="Check (dry run)").click()
    expect(page.locator("#import-report")).to_contain_text(
        "Note: column amount was read as text: row 2 holds 'tbd', which is not a number")


def test_a_column_given_a_type_rejects_what_does_not_fit_and_imports_typed(page: Page, shop: Server,
                                                                          tmp_path: Path) -> None:
    tills = tmp_path / "typed-tills.csv"
    tills.write_text("customer_id,amount,vip\nuser-7,12.5,yes\nuser-8,tbd,no\nuser-9,3,yes\n")
    page.goto("/admin")
    page.get_by_label("File (NDJSON, JSON or Parquet", exact=False).set_input_files(str(tills))
    expect(page.get_by_label("Type of customer_id")).to_be_hidden()  # an id column takes no type
    page.get_by_label("Type of vip").select_option(label="yes / no")
    page.get_by_label("Event name for every row (CSV events)").fill("Typed Till Sale")
    page.get_by_role("button", name="Check (dry run)").click()
    report = page.locator("#import-report")
    expect(report).to_contain_text("column amount was read as text: row 2 holds 'tbd', which is not a number")
    shot(page, "import-note")
    page.get_by_role("button", name="Declare amount a number", exact=False).focus()  # the note's offer,
    page.keyboard.press("Enter")  # taken from the keyboard
    expect(page.get_by_label("Type of amount")).to_have_value("number")
    expect(page.get_by_label("Type of amount")).to_be_focused()
    expect(report).to_contain_text("Dry run — 3 rows: would store 2, already there 0, rejected 1 (invalid_value: 1)")
    expect(report.locator(".rejections li")).to_have_text(
        ["row 2 (invalid_value): column amount: 'tbd' is not a number"])
    expect(report).not_to_contain_text("read as text")  # a declared column needs no note
    shot(page, "import-rejected")
    page.get_by_role("button", name="Import", exact=True).click()
    expect(report).to_contain_text("Done — 3 rows: stored 2")
    shot(page, "import-typed")
    shop.wait_caught_up()
    with shop.admin() as api:
        sales = api.get("/api/profiles/user_id:user-9/events", params={"event": "Typed Till Sale"}).json()["events"]
    assert sales[0]["properties"] == {"amount": 3, "vip": True}  # a JSON number and boolean, not "3" and "yes"


def test_a_date_column_takes_its_format_and_a_bad_one_is_refused_with_the_reason(page: Page, shop: Server,
                                                                                 tmp_path: Path) -> None:
    signups = tmp_path / "eu-signups.csv"
    signups.write_text("customer_id,signup,plan\nuser-7,24.12.2025,pro\nuser-8,12/24/2025,pro\n")
    page.goto("/admin")
    page.get_by_label("File (NDJSON, JSON or Parquet", exact=False).set_input_files(str(signups))
    page.get_by_label("Event name for every row (CSV events)").fill("EU Signup")
    expect(page.get_by_label("Format of signup")).to_be_hidden()  # only a date or a time takes a format
    page.get_by_label("Type of signup").select_option(label="date")
    page.get_by_label("Format of signup").fill("%d.%m")
    page.get_by_role("button", name="Check (dry run)").click()
    report = page.locator("#import-report")
    expect(report).to_contain_text("column signup: the format '%d.%m' has no year")
    page.get_by_label("Format of signup").fill("%d.%m.%Y")
    page.get_by_role("button", name="Check (dry run)").click()
    expect(report).to_contain_text("Dry run — 2 rows: would store 1, already there 0, rejected 1 (invalid_value: 1)")
    expect(report.locator(".rejections li")).to_have_text(
        ["row 2 (invalid_value): column signup: '12/24/2025' is not a date in the format %d.%m.%Y (like 24.12.2025)"])
    page.get_by_label("Type of signup").select_option(label="text")
    expect(page.get_by_label("Format of signup")).to_be_hidden()
    page.get_by_label("Type of signup").select_option(label="date")
    page.get_by_role("button", name="Import", exact=True).click()
    expect(report).to_contain_text("Done — 2 rows: stored 1")
    shot(page, "import-date-format")
    shop.wait_caught_up()
    with shop.admin() as api:
        signup = api.get("/api/profiles/user_id:user-7/events", params={"event": "EU Signup"}).json()["events"]
    assert signup[0]["properties"] == {"signup": "2025-12-24", "plan": "pro"}


def test_a_column_of_dates_not_in_iso_is_declared_from_its_note(page: Page, shop: Server, tmp_path: Path) -> None:
    signups = tmp_path / "us-signups.csv"  # every day 12 or less: day first or month first, the values do not tell
    signups.write_text("customer_id,signup\nuser-7,01/02/2024\nuser-8,03/04/2024\n")
    page.goto("/admin")
    page.get_by_label("File (NDJSON, JSON or Parquet", exact=False).set_input_files(str(signups))
    page.get_by_label("Event name for every row (CSV events)").fill("US Signup")
    page.get_by_role("button", name="Check (dry run)").click()
    report = page.locator("#import-report")
    expect(report).to_contain_text("Note: column signup was read as text: its values are dates written as "
                                   "'01/02/2024', not ISO-8601; they do not tell day first from month first")
    expect(report).not_to_contain_text("--types")  # the CLI's words are for the CLI
    day_first = page.get_by_role("button", name="Declare signup date:%d/%m/%Y — 01/02/2024 is 1 February 2024 "
                                                "(day first)", exact=True)
    month_first = page.get_by_role("button", name="Declare signup date:%m/%d/%Y — 01/02/2024 is 2 January 2024 "
                                                  "(month first)", exact=True)
    expect(day_first).to_be_visible()
    shot(page, "import-date-note")
    month_first.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_label("Type of signup")).to_have_value("date")
    expect(page.get_by_label("Format of signup")).to_have_value("%m/%d/%Y")
    expect(page.get_by_label("Format of signup")).to_be_focused()
    expect(report).to_contain_text("Dry run — 2 rows: would store 2, already there 0, rejected 0")
    expect(report).not_to_contain_text("read as text")  # declared: no note
    page.get_by_role("button", name="Import", exact=True).click()
    expect(report).to_contain_text("Done — 2 rows: stored 2")
    shop.wait_caught_up()
    with shop.admin() as api:
        signup = api.get("/api/profiles/user_id:user-7/events", params={"event": "US Signup"}).json()["events"]
    assert signup[0]["properties"] == {"signup": "2024-01-02"}  # a date, read month first


def test_import_a_csv_with_a_column_mapping(page: Page, shop: Server, tmp_path: Path) -> None:
    orders = tmp_path / "pos.csv"
    orders.write_text("customer_id,amount,store\nuser-7,12.5,Gdansk\nuser-8,30,Warsaw\n")
    page.goto("/admin")
    page.get_by_label("File (NDJSON, JSON or Parquet", exact=False).set_input_files(str(orders))
    expect(page.locator("#import-columns")).to_be_visible()
    expect(page.locator("#import-role-0")).to_have_value("user_id")  # guessed from the column name
    page.get_by_label("Event name for every row (CSV events)").fill("POS Sale")
    page.get_by_role("button", name="Check (dry run)").click()
    expect(page.locator("#import-report")).to_contain_text("Dry run — 2 rows: would store 2")
    page.get_by_role("button", name="Import", exact=True).click()
    expect(page.locator("#import-report")).to_contain_text("Done — 2 rows: stored 2")
    # The import ran as a job the page polled: the rows read of the rows in the file, as the CLI shows them
    expect(page.locator("[data-test=import-count]")).to_contain_text("2 of 2 rows")
    shot(page, "import")
    shop.wait_caught_up()
    with shop.admin() as api:
        sales = api.get("/api/profiles/user_id:user-7/events", params={"event": "POS Sale"}).json()["events"]
    assert sales[0]["properties"] == {"amount": 12.5, "store": "Gdansk"}


def test_an_import_waiting_for_the_servers_other_imports_says_so_then_runs(page: Page, shop: Server,
                                                                           tmp_path: Path) -> None:
    """The server runs two imports at a time (PORTRAIT_IMPORTS_AT_ONCE): the console's waits behind two sent
    through the API, saying so and its place, and runs once one of them ends (here: both cancelled)."""
    big = tmp_path / "big.csv"
    with big.open("w") as out:
        out.write("cust,total\n")
        out.writelines(f"c{n},{n}\n" for n in range(400_000))
    with shop.admin() as api:
        blockers = [api.post("/api/imports", params={"filename": big.name, "user_id": "cust", "event": "Order",
                                                     "dry_run": "true"},
                             content=big.read_bytes(), headers={"Prefer": "respond-async"}, timeout=60).json()
                    for _ in range(2)]
        assert [b["status"] for b in blockers] == ["running", "running"], blockers
        small = tmp_path / "later.csv"
        small.write_text("customer_id,amount\nuser-7,12.5\nuser-8,30\n")
        page.goto("/admin")
        page.get_by_label("File (NDJSON, JSON or Parquet", exact=False).set_input_files(str(small))
        page.get_by_label("Event name for every row (CSV events)").fill("Later Sale")
        page.get_by_role("button", name="Check (dry run)").click()
        expect(page.locator("[data-test=import-count]")).to_contain_text(
            "Waiting for the server's other imports: place 1 in the queue (it runs next)")
        for blocker in blockers:
            api.delete(f"/api/imports/{blocker['id']}")
    expect(page.locator("#import-report")).to_contain_text("Dry run — 2 rows: would store 2", timeout=60_000)


@pytest.mark.parametrize(("name", "text"), [
    ("quoted.csv", 'customer_id,"amount, EUR","say ""hi"""\nuser-7,12.5,yes\n'),
    ("tills.tsv", "customer_id\tamount, EUR\tsay \"hi\"\nuser-7\t12.5\tyes\n")])
def test_a_csv_header_is_read_as_the_server_reads_it(page: Page, shop: Server, tmp_path: Path, name: str,
                                                     text: str) -> None:
    """Column names with the delimiter in quotes, doubled quotes, and a .tsv file's tabs: the mapping names the
    columns the server finds. Before, the console split the first line on ',' (and trimmed quotes): it offered
    'customer_id\tamount' as one column of a .tsv, and cut '"amount, EUR"' in two; the import then failed with
    'names a missing column'."""
    tills = tmp_path / name
    tills.write_text(text)
    page.goto("/admin")
    page.get_by_label("File (NDJSON, JSON or Parquet", exact=False).set_input_files(str(tills))
    expect(page.get_by_label("Type of amount, EUR")).to_be_attached()
    expect(page.get_by_label('Type of say "hi"')).to_be_attached()
    page.get_by_label("Event name for every row (CSV events)").fill(f"Header Sale {name}")
    page.get_by_role("button", name="Check (dry run)").click()
    expect(page.locator("#import-report")).to_contain_text("Dry run — 1 rows: would store 1")
    page.get_by_role("button", name="Import", exact=True).click()
    expect(page.locator("#import-report")).to_contain_text("Done — 1 rows: stored 1")
    shop.wait_caught_up()
    with shop.admin() as api:
        sales = api.get("/api/profiles/user_id:user-7/events", params={"event": f"Header Sale {name}"}).json()
    assert sales["events"][0]["properties"] == {"amount, EUR": 12.5, 'say "hi"': "yes"}


def test_back_up_from_the_admin_page(page: Page, shop: Server) -> None:
    page.goto("/admin")
    page.get_by_role("button", name="Back up now").click()
    expect(page.locator("#backup-list")).to_contain_text(".duckdb")  # named <database>-<time>.duckdb
    # started, not waited for: a row shows its progress until the page's refresh finds it made
    expect(page.locator("#backup-list [data-test=backup-running]")).to_have_count(0)
    expect(page.locator("#backup-list")).to_contain_text(" MB")
    with shop.admin() as api:
        made = api.get("/api/backups").json()["backups"]
        assert made and Path(made[0]["path"]).is_file()
        assert any(e["action"] == "console backup" for e in api.get("/api/audit").json()["entries"])


@pytest.mark.parametrize("width", [1280, 390])
def test_every_page_reads_at_desktop_and_phone_widths(page: Page, width: int) -> None:
    page.set_viewport_size({"width": width, "height": 900})
    for path in ("/", "/attributes", "/customers?q=user-1", "/segments", "/segments/new", "/funnels", "/events",
                 "/admin"):
        page.goto(path)
        expect(page.locator("main h1")).to_be_visible()
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 2, (path, width, overflow)  # wide tables scroll inside their box, not the page
        name = path.strip("/").split("?")[0].replace("/", "-") or "overview"
        shot(page, f"{name}-{width}px")


def test_the_api_docs_page_renders_the_api(browser: Browser, shop: Server) -> None:
    """/docs shows the operations of the OpenAPI 3.1 document FastAPI writes (Swagger UI 4 could not read it and
    showed only an error), from files served by Portrait: a request elsewhere would fail here, offline."""
    context = browser.new_context(base_url=shop.url)
    opened = context.new_page()
    elsewhere: list[str] = []
    opened.on("request", lambda r: None if r.url.startswith(shop.url) else elsewhere.append(r.url))
    opened.goto("/docs")
    expect(opened.locator(".opblock-summary-path", has_text="/api/profiles/{identity}").first).to_be_visible()
    expect(opened.get_by_text("Unable to render this definition")).to_have_count(0)
    assert opened.locator(".opblock").count() > 40  # every operation, not a fragment
    shot(opened, "api-docs")
    context.close()
    assert elsewhere == []


def test_trait_values_read_as_the_json_that_was_sent() -> None:
    """Lists, objects and true/false on the customer card and in top values: JSON, not Python's printing."""
    from portrait.web.common import shown

    assert [shown(v) for v in (["a", "b"], {"k": 1}, True, None, "text", 42)] == [
        '["a","b"]', '{"k":1}', "true", "null", "text", 42]


# -- charts ------------------------------------------------------------------------------------------------------
CHART_GEOMETRY = """svg => {
    const box = svg.getBoundingClientRect();
    const texts = sel => Array.from(svg.querySelectorAll(sel)).map(t => {
        const r = t.getBoundingClientRect();
        return {text: t.textContent, left: r.left - box.left, right: r.right - box.left, top: r.top - box.top,
                bottom: r.bottom - box.top, height: r.height};
    });
    return {width: box.width, height: box.height, x: texts(".x-axis text"), y: texts(".y-axis text"),
            values: texts(".values text")};
}"""


def _inside(label: dict[str, Any], chart: dict[str, Any]) -> bool:
    return label["left"] >= -1 and label["top"] >= -1 and label["right"] <= chart["width"] + 1 \
        and label["bottom"] <= chart["height"] + 1


def _apart(labels: list[dict[str, Any]]) -> bool:
    """No two labels cover each other (rotated ones are compared by their boxes' leading edges)."""
    edges = sorted(label["right"] for label in labels)
    return all(b - a >= 4 for a, b in itertools.pairwise(edges))


@pytest.mark.parametrize("width", [1280, 390])
def test_charts_have_whole_labels_and_value_axes(page: Page, shop: Server, width: int) -> None:
    """Every bar's label is shown whole (no "rancisco" for San Francisco), inside the chart and apart from the
    next, and the value axis has ticks with numbers up to the largest bar, readable at a phone's width."""
    page.set_viewport_size({"width": width, "height": 900})
    page.goto("/attributes/address_city")
    values = page.locator("table.top-values tbody tr td:first-child").all_inner_texts()
    counts = [int(c.replace(",", "")) for c in
              page.locator("table.top-values tbody tr td:nth-child(2)").all_inner_texts()]
    assert any(len(v) > 8 for v in values), values  # the demo has San Francisco, Manchester...
    chart = page.locator("svg.chart").first.evaluate(CHART_GEOMETRY)
    assert [label["text"] for label in chart["x"]] == values
    assert all(_inside(label, chart) for label in chart["x"] + chart["y"]), chart
    assert _apart(chart["x"]), chart["x"]
    ticks = [float(t["text"].replace(",", "")) for t in chart["y"]]
    assert len(ticks) >= 3 and ticks == sorted(ticks) and ticks[0] == 0 and ticks[-1] >= max(counts), ticks
    assert min(label["height"] for label in chart["x"] + chart["y"]) >= 9, "labels too small to read"
    page.goto("/")
    overview = page.locator("svg.chart").first.evaluate(CHART_GEOMETRY)
    assert overview["x"] and len(overview["y"]) >= 3, overview
    assert all(_inside(label, overview) for label in overview["x"] + overview["y"]), overview
    page.goto("/funnels?steps=Product+Viewed,Order+Completed&within=30d")
    steps = page.locator("svg.chart").first.evaluate(CHART_GEOMETRY)
    assert steps["values"][0]["text"].startswith(("1", "2", "3", "4", "5", "6", "7", "8", "9")), steps
    assert all(_inside(label, steps) for label in steps["x"] + steps["values"]), steps  # "784 (100%)" whole
    shot(page, f"funnel-chart-{width}px")


def test_the_overview_chart_has_every_one_of_the_14_days(server: Server) -> None:
    """Days without events are bars of 0: the chart's days are the 14 days, not only those with events (the bars
    of 2 days, 5 days apart, stood side by side)."""
    today = utc_today_clear_of_midnight()
    with httpx.Client(base_url=server.url, auth=(WRITE_KEY, ""), timeout=10) as sdk:
        batch = [{"type": "track", "userId": "days-1", "event": "Seen", "messageId": f"days-{ago}",
                  "timestamp": f"{today - timedelta(days=ago)}T00:30:00Z"} for ago in (0, 5, 20)]
        assert sdk.post("/v1/batch", json={"batch": batch}).status_code == 200
    server.wait_caught_up()
    with httpx.Client(base_url=server.url, timeout=10) as console:
        console.post("/login", data={"key": ADMIN_KEY})
        html = console.get("/").text
    axis = re.search(r'<g class="x-axis">(.*?)</g>', html)
    assert axis is not None, html
    days = re.findall(r">([^<]+)</text>", axis.group(1))
    assert days == [(today - timedelta(days=ago)).isoformat()[5:] for ago in range(13, -1, -1)]
    values = [int(v) for v in re.findall(r"<title>[^<]*: (\d+)</title>", html)]
    assert values == [0] * 8 + [1] + [0] * 4 + [1]


# -- refused forms -----------------------------------------------------------------------------------------------
def _refused(page: Page, field: str, says: str) -> None:
    """The form came back refused: the message next to ``field``, which is marked invalid."""
    expect(page.locator(f"#{field}-error")).to_contain_text(says)
    expect(page.locator(f"[aria-describedby={field}-error]")).to_have_attribute("aria-invalid", "true")


def test_a_refused_segment_comes_back_as_typed_with_the_reason_at_the_condition(page: Page, shop: Server) -> None:
    with shop.admin() as admin:
        assert admin.post("/api/segments", json={"name": "Taken", "condition": "plan is set"}).status_code == 201
    page.goto("/segments/new")
    page.get_by_label("Name").first.fill("High spenders")
    page.locator("#condition").fill('performed("Order Completed", count >= )')
    page.get_by_label("Description").fill("for the spring campaign")
    page.get_by_role("button", name="Save segment").click()
    _refused(page, "condition", "position")
    expect(page.get_by_role("heading", name="New segment")).to_be_visible()
    expect(page.get_by_label("Name").first).to_have_value("High spenders")
    expect(page.locator("#condition")).to_have_value('performed("Order Completed", count >= )')
    expect(page.get_by_label("Description")).to_have_value("for the spring campaign")
    shot(page, "segment-builder-refused")
    page.get_by_label("Name").first.fill("Taken")
    page.locator("#condition").fill('performed("Order Completed")')
    page.get_by_role("button", name="Save segment").click()
    _refused(page, "name", "exists already")
    expect(page.locator("#condition")).to_have_value('performed("Order Completed")')
    page.get_by_label("Name").first.fill("Taken, then not")
    page.get_by_role("button", name="Save segment").click()
    expect(page.get_by_role("heading", name="Taken, then not")).to_be_visible()


def test_refused_attribute_forms_come_back_as_typed(page: Page, shop: Server) -> None:
    page.goto("/attributes?tab=custom")
    page.get_by_label("Code").fill("email")  # a standard attribute's code
    page.get_by_label("Name").fill("E-mail again")
    page.get_by_label("Unit").fill("addr")
    page.get_by_label("Description", exact=True).fill("a second email")
    page.get_by_label("Calculate analytics").check()
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Create attribute").click()
    assert answer.value.status == 409  # as the API answers: it exists, nothing wrong with how it was asked
    _refused(page, "code", "exists already")
    expect(page.get_by_label("Name")).to_have_value("E-mail again")
    expect(page.get_by_label("Unit")).to_have_value("addr")
    expect(page.get_by_label("Description", exact=True)).to_have_value("a second email")
    expect(page.get_by_label("Calculate analytics")).to_be_checked()
    page.get_by_label("Code").fill("spend_90d")
    page.get_by_label("Definition (makes it calculated)").fill('sum("Order Completed", revenue, within = 90)')
    page.get_by_role("button", name="Create attribute").click()
    _refused(page, "definition", "position")
    expect(page.get_by_label("Definition (makes it calculated)")).to_have_value(
        'sum("Order Completed", revenue, within = 90)')
    expect(page.get_by_label("Code")).to_have_value("spend_90d")
    shot(page, "attribute-refused")
    page.get_by_label("Definition (makes it calculated)").fill("days_since(first_name)")  # a string: no date
    page.get_by_role("button", name="Create attribute").click()
    _refused(page, "definition", "cannot use first_name, a string attribute: it needs a date or datetime")
    with shop.admin() as admin:
        created = admin.post("/api/attributes", json={"code": "orders_total", "name": "Orders",
                                                      "definition": 'count("Order Completed")'})
        assert created.status_code == 201, created.text
    page.goto("/attributes/orders_total")
    page.get_by_label("Description").fill("orders ever")
    page.get_by_label("Definition").fill('count("Order Completed"')
    page.get_by_role("button", name="Save changes").click()
    _refused(page, "definition", "position")
    expect(page.get_by_label("Description")).to_have_value("orders ever")
    expect(page.get_by_label("Definition")).to_have_value('count("Order Completed"')


def test_refused_funnel_and_privacy_forms_come_back_as_typed(page: Page) -> None:
    page.goto("/funnels")
    page.get_by_label("Steps, in order").fill("Product Viewed, Order Completed")
    page.get_by_label("Conversion window").fill("a week")
    page.get_by_role("button", name="Show").click()
    _refused(page, "within", "duration")
    expect(page.get_by_label("Steps, in order")).to_have_value("Product Viewed, Order Completed")
    expect(page.get_by_label("Conversion window")).to_have_value("a week")
    run_privacy_request(page, "erase", "ann@example.com")  # no TYPE:
    _refused(page, "identity", "TYPE:VALUE")
    expect(page.get_by_label("Identity")).to_have_value("ann@example.com")
    expect(page.locator("select[name=type]")).to_have_value("erase")


def test_long_unbroken_values_wrap_instead_of_widening_the_page(page: Page, shop: Server) -> None:
    """An event name, trait or identifier of hundreds of characters without a space (a token, a URL) wraps in its
    box: the page does not scroll sideways, on the card, the live stream or the search results."""
    long = "utm_source=newsletter&token=" + "x" * 300
    with httpx.Client(base_url=shop.url, auth=(WRITE_KEY, ""), timeout=10) as sdk:
        assert sdk.post("/v1/batch", json={"batch": [
            {"type": "identify", "userId": "long-1", "messageId": "long-1", "traits": {"landing": long}},
            {"type": "track", "userId": "long-1", "event": long, "messageId": "long-2"}]}).status_code == 200
    shop.wait_caught_up()
    with shop.admin() as admin:
        profile_id = admin.get("/api/profiles/user_id:long-1").json()["profile_id"]
    page.goto("/events")
    page.set_viewport_size({"width": 390, "height": 900})
    expect(page.locator("#live")).to_contain_text("utm_source=newsletter", timeout=15_000)
    for path in ("/events", f"/customers/{profile_id}", f"/customers?q={quote(long)}"):
        if path != "/events":
            page.goto(path)
        for width in (1280, 390):
            page.set_viewport_size({"width": width, "height": 900})
            overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 2, (path, width, overflow)


def test_a_live_event_expands_to_what_was_sent_masked_for_a_read_key(page: Page, browser: Browser,
                                                                     shop: Server) -> None:
    """Opening an event in the live stream shows its properties and traits (it showed {} for every event), with
    personal values masked for a key without pii:read, as on the customer card."""
    with shop.admin() as admin:
        read_key = admin.post("/api/keys", json={"kind": "read", "name": "live reader"}).json()["key"]
    context = browser.new_context(base_url=shop.url)
    reader = context.new_page()
    reader.goto("/login")
    reader.get_by_label("API key (read or admin)").fill(read_key)
    reader.get_by_role("button", name="Sign in").click()
    expect(reader.get_by_role("heading", name="Overview")).to_be_visible()
    for opened in (page, reader):
        open_live_events(opened)  # both pages have started polling
    with httpx.Client(base_url=shop.url, auth=(WRITE_KEY, ""), timeout=10) as sdk:
        assert sdk.post("/v1/batch", json={"batch": [
            {"type": "identify", "userId": "live-2", "messageId": "live-2a",
             "traits": {"email": "live.two@example.com", "plan": "gold"}},
            {"type": "track", "userId": "live-2", "event": "Live Detail", "messageId": "live-2b",
             "properties": {"sku": "SKU-42", "revenue": 12.5}}]}).status_code == 200
    for opened in (page, reader):
        item = opened.locator("#live li", has_text="Live Detail")
        expect(item).to_have_count(1, timeout=15_000)
        item.locator("summary").click()
        expect(item.locator("pre")).to_contain_text('"sku": "SKU-42"')
        identify = opened.locator("#live li", has_text="identify").filter(has_text="live-2").first
        identify.locator("summary").click()
        expect(identify.locator("pre")).to_contain_text('"plan": "gold"')
    expect(page.locator("#live li", has_text="identify").filter(has_text="live-2").first.locator("pre")
           ).to_contain_text("live.two@example.com")
    masked = reader.locator("#live li", has_text="identify").filter(has_text="live-2").first.locator("pre")
    expect(masked).not_to_contain_text("live.two@example.com")
    expect(masked).to_contain_text("@example.com")
    context.close()


def test_a_read_key_counts_in_the_builder_but_is_not_offered_a_save_it_cannot_do(browser: Browser,
                                                                                  shop: Server) -> None:
    with shop.admin() as admin:
        read_key = admin.post("/api/keys", json={"kind": "read", "name": "builder reader"}).json()["key"]
    context = browser.new_context(base_url=shop.url)
    reader = context.new_page()
    reader.goto("/login")
    reader.get_by_label("API key (read or admin)").fill(read_key)
    reader.get_by_role("button", name="Sign in").click()
    expect(reader.get_by_role("heading", name="Overview")).to_be_visible()
    reader.goto("/segments/new")
    reader.locator("#condition").fill('performed("Order Completed")')
    expect(reader.locator("#preview")).to_contain_text("customers — customers who performed")
    # the sample's emails masked for a key without pii:read, as everywhere
    masked = reader.locator("[data-test=preview-sample] tbody td", has_text="***@example.")
    expect(masked.first).to_be_visible()
    expect(reader.locator("[data-test=preview-sample] tbody td", has_text=re.compile(r"^[a-z]+\.[a-z]+\d*@"))
           ).to_have_count(0)
    expect(reader.get_by_role("button", name="Save segment")).to_have_count(0)
    expect(reader.locator("#builder")).to_contain_text("Saving a segment needs an admin key")
    context.close()
