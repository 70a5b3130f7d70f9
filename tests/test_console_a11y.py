"""Accessibility of the web console (WCAG 2.1 AA basics), in Debian's Chromium driven by Playwright against a real
server with demo data: axe-core (from the npm registry, installed into tests/.cache at test setup) scans every page
at desktop and phone widths, and the main flows are walked with the keyboard alone."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright
from tests.conftest import ADMIN_KEY, WRITE_KEY, Server, start_demo_shop

CHROMIUM = "/usr/bin/chromium"
AXE_CACHE = Path(__file__).parent / ".cache" / "axe-core"
BLOCKING = ("serious", "critical")
WIDTHS = (1280, 390)  # at a phone's width tables and charts scroll inside their boxes: other rules apply


@pytest.fixture(scope="module")
def axe() -> Path:
    """axe-core from the npm registry, installed once at test setup (skipped, saying why, if npm cannot)."""
    script = AXE_CACHE / "node_modules" / "axe-core" / "axe.min.js"
    if not script.exists():
        if shutil.which("npm") is None:
            pytest.skip("npm is not on PATH: axe-core cannot be installed from the npm registry")
        AXE_CACHE.mkdir(parents=True, exist_ok=True)
        installed = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", "--prefix",
                                    str(AXE_CACHE), "axe-core@4"], capture_output=True, text=True, timeout=300,
                                   check=False)
        if installed.returncode != 0 or not script.exists():
            pytest.skip(f"npm could not install axe-core from the registry: {installed.stderr.strip()[-500:]}")
    return script


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with the demo shop (customers, events, attributes), a saved segment and a custom attribute."""
    folder = tmp_path_factory.mktemp("console-a11y")
    server = start_demo_shop(folder)
    with server.admin() as api:
        assert api.post("/api/segments", json={"name": "Buyers", "condition": 'performed("Order Completed")'}
                        ).status_code == 201
        assert api.post("/api/attributes", json={"code": "shoe_size", "name": "Shoe size", "type": "integer"}
                        ).status_code == 201
        assert api.post("/api/attributes", json={"code": "newsletter", "name": "Newsletter", "type": "boolean",
                                                 "calculate_analytics": True}).status_code == 201
    with httpx.Client(base_url=server.url, auth=(WRITE_KEY, ""), timeout=10) as sdk:
        assert sdk.post("/v1/batch", json={"batch": [
            {"type": "identify", "userId": f"news-{i}", "traits": {"newsletter": i % 3 == 0}} for i in range(6)]}
                        ).status_code == 200
    server.wait_caught_up()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "Debian's chromium package is needed (apt-get install chromium)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def signed_in(browser: Browser, shop: Server, **options: Any) -> Page:
    page = browser.new_context(base_url=shop.url, viewport={"width": 1280, "height": 900}, **options).new_page()
    page.goto("/login")
    page.get_by_label("API key (read or admin)").fill(ADMIN_KEY)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    return page


# -- axe-core on every page --------------------------------------------------------------------------------------
AXE_RUN = """async () => (await axe.run(document, {resultTypes: ["violations"], runOnly: {type: "tag",
    values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]}})).violations.map(v => ({
    id: v.id, impact: v.impact, help: v.help, targets: v.nodes.map(n => n.target.join(" "))}))"""


def blocking(page: Page, axe: Path, where: str) -> list[str]:
    """axe's serious and critical violations on the page as it is now, at each width: 'where: id (impact) help
    at targets'."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(axe))
    found = []
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        found += [f"{where} @{width}px: {v['id']} ({v['impact']}) {v['help']} at {', '.join(v['targets'][:5])}"
                  for v in page.evaluate(AXE_RUN) if v["impact"] in BLOCKING]
    page.set_viewport_size({"width": 1280, "height": 900})
    return found


def test_axe_finds_nothing_serious_on_any_page(browser: Browser, shop: Server, axe: Path, tmp_path: Path) -> None:
    # The console's Content-Security-Policy (script-src 'self') refuses the inline script Playwright injects axe as.
    page = browser.new_context(base_url=shop.url, bypass_csp=True).new_page()
    problems: list[str] = []
    page.goto("/login")
    problems += blocking(page, axe, "sign-in")
    page.get_by_label("API key (read or admin)").fill("ak_not_a_key")
    page.get_by_role("button", name="Sign in").click()
    problems += blocking(page, axe, "sign-in refused")
    page.get_by_label("API key (read or admin)").fill(ADMIN_KEY)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    with shop.admin() as api:
        profile = api.get("/api/profiles/user_id:user-1").json()["profile_id"]
        segment = api.get("/api/segments").json()["segments"][0]["id"]
    for path in ("/", "/attributes", "/attributes?tab=custom", "/attributes/address_city", "/attributes/age",
                 "/attributes/shoe_size", "/customers", "/customers?q=user-1", "/customers?q=nobody",
                 f"/customers/{profile}", "/segments", "/segments/new", f"/segments/{segment}", "/funnels",
                 "/funnels?steps=Product+Viewed,Order+Completed&within=30d", "/funnels?steps=A&within=soon",
                 "/events", "/admin", "/segments/no-such-segment"):
        page.goto(path)
        expect(page.locator("main h1")).to_be_visible()
        problems += blocking(page, axe, path)
    page.goto("/segments/new")
    page.get_by_label("Name").first.fill("Refused")
    page.get_by_label("Condition (text form)").fill("age >")
    page.get_by_role("button", name="Save segment").click()
    expect(page.locator("#condition-error")).to_be_visible()
    problems += blocking(page, axe, "segment refused")
    csv = tmp_path / "pos.csv"
    csv.write_text("customer_id,amount\nuser-7,12.5\nuser-8,tbd\n")
    page.goto("/admin")
    page.get_by_label("File (NDJSON, JSON or Parquet", exact=False).set_input_files(str(csv))
    expect(page.locator("#import-columns")).to_be_visible()
    page.get_by_label("Event name for every row (CSV events)").fill("POS Sale")
    page.get_by_role("button", name="Check (dry run)").click()  # a report with a note and its buttons
    expect(page.get_by_role("button", name="Read amount as text")).to_be_visible()
    page.evaluate("document.getElementById('import-progress').hidden = false")  # as while an import runs
    problems += blocking(page, axe, "import with a column mapping and a note")
    page.get_by_role("button", name="Declare amount a number", exact=False).click()
    expect(page.locator("#import-report .rejections li")).to_have_count(1)
    problems += blocking(page, axe, "import dry run with a rejected row")
    dates = tmp_path / "signups.csv"  # day first or month first: a note with a button for each
    dates.write_text("customer_id,signup\nuser-7,01/02/2024\nuser-8,03/04/2024\n")
    page.get_by_label("File (NDJSON, JSON or Parquet", exact=False).set_input_files(str(dates))
    expect(page.get_by_label("Type of signup")).to_be_attached()
    page.get_by_role("button", name="Check (dry run)").click()
    expect(page.get_by_role("button", name="Declare signup date:%m/%d/%Y", exact=False)).to_be_visible()
    problems += blocking(page, axe, "import dry run with a date note")
    assert not problems, "axe-core found serious or critical problems:\n" + "\n".join(problems)


# -- keyboard only -----------------------------------------------------------------------------------------------
FOCUS = """() => {
    const el = document.activeElement, style = getComputedStyle(el);
    const rgb = c => (c.match(/[\\d.]+/g) || []).slice(0, 3).map(Number);
    const lum = ([r, g, b]) => [r, g, b].map(v => v / 255).map(v => v <= 0.03928 ? v / 12.92
        : Math.pow((v + 0.055) / 1.055, 2.4)).reduce((s, v, i) => s + v * [0.2126, 0.7152, 0.0722][i], 0);
    const contrast = (a, b) => (Math.max(lum(a), lum(b)) + 0.05) / (Math.min(lum(a), lum(b)) + 0.05);
    const ring = rgb(style.outlineColor), page = rgb(getComputedStyle(document.body).backgroundColor);
    const box = el.getBoundingClientRect();
    return {tag: el.tagName, html: el.outerHTML.slice(0, 120), outline: style.outlineStyle,
            width: parseFloat(style.outlineWidth),
            contrast: Math.min(contrast(ring, page), contrast(ring, [255, 255, 255])),
            inView: box.width > 0 && box.height > 0 && box.bottom > 0 && box.right > 0
                    && box.top < innerHeight && box.left < innerWidth};
}"""


def focused(page: Page) -> dict[str, Any]:
    """What has the keyboard focus, checked to be visibly marked: an outline of 2 px or more, in a colour with at
    least 3:1 contrast to the page and to white (WCAG 1.4.11, 2.4.7), on screen."""
    now: dict[str, Any] = page.evaluate(FOCUS)
    assert now["tag"] != "BODY", "the focus was lost"
    assert now["outline"] != "none" and now["width"] >= 2, f"no visible focus on {now['html']}"
    assert now["contrast"] >= 3, f"focus ring of {now['contrast']:.1f}:1 on {now['html']}"
    assert now["inView"], f"the focused element is off screen: {now['html']}"
    return now


def tab_to(page: Page, selector: str, limit: int = 80) -> None:
    """Press Tab until the element matching ``selector`` has the focus, every stop on the way visibly focused (past
    the page's last control the focus leaves for the browser's own, then comes back to the first)."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement === document.body"):
            continue
        focused(page)
        if page.evaluate("s => document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"{selector} cannot be reached with Tab")


def test_sign_in_find_a_customer_and_build_a_segment_with_the_keyboard_alone(browser: Browser,
                                                                              shop: Server) -> None:
    page = browser.new_context(base_url=shop.url, viewport={"width": 1280, "height": 900}).new_page()
    page.goto("/login")
    # Chromium applies autofocus in a later frame than the load, so wait for it rather than read it at once
    expect(page.get_by_label("API key (read or admin)")).to_be_focused()
    focused(page)  # ... and the key field's focus is visibly marked
    page.keyboard.type(ADMIN_KEY)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page).to_have_title(re.compile("^Overview · Portrait"))

    page.keyboard.press("Tab")  # the first stop skips the navigation
    assert focused(page)["html"].startswith('<a class="skip" href="#main"')
    tab_to(page, "nav a[href='/customers']")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Customers")).to_be_visible()
    tab_to(page, "a.skip")
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")  # from the skip link straight into the page: the search field
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.type("user-1")
    page.keyboard.press("Enter")
    expect(page).to_have_title(re.compile("user-1"))  # the search is in the title
    tab_to(page, "main table a")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Identities")).to_be_visible()
    name = page.locator("[data-test=customer]").evaluate("h => h.firstChild.textContent.trim()")
    expect(page).to_have_title(re.compile(f"^{re.escape(name)} · Customers"))  # which customer, not "Customer"
    tab_to(page, ".timeline summary")
    page.keyboard.press("Enter")  # an event opens to its properties
    expect(page.locator(".timeline details").first).to_have_attribute("open", "")

    tab_to(page, "nav a[href='/segments']")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Segments", exact=True)).to_be_visible()
    tab_to(page, "a[href='/segments/new']")
    page.keyboard.press("Enter")
    expect(page.get_by_role("group", name="Conditions")).to_be_visible()
    tab_to(page, "input[name=name]")
    page.keyboard.type("Keyboard buyers")
    tab_to(page, "#row-event")
    page.keyboard.type("Order Completed")
    tab_to(page, "#add-event")
    page.keyboard.press("Space")
    expect(page.locator("#condition")).to_have_value('performed("Order Completed")')
    expect(page.locator("#preview")).to_contain_text("customers who performed")
    tab_to(page, "#builder button[type=submit]")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Keyboard buyers")).to_be_visible()


# -- what axe does not check -------------------------------------------------------------------------------------
def test_charts_give_their_figures_as_a_table(browser: Browser, shop: Server) -> None:
    """A chart is an image: its figures are also in a table (behind a disclosure), for screen readers and for
    anyone who cannot hover a bar to read its value."""
    page = signed_in(browser, shop)
    page.goto("/attributes/address_city")
    tops = page.locator("table.top-values tbody tr").evaluate_all(
        "rows => rows.map(r => [r.cells[0].innerText, r.cells[1].innerText])")
    chart = page.locator(".chart-box").first
    expect(chart.locator("svg")).to_have_attribute("role", "img")
    summary = chart.locator("summary")
    summary.focus()
    page.keyboard.press("Enter")
    figures = chart.locator("table")
    expect(figures).to_be_visible()
    expect(figures.locator("thead th")).to_have_text(["Value", "Profiles"])
    assert figures.locator("tbody tr").evaluate_all(
        "rows => rows.map(r => [r.cells[0].innerText, r.cells[1].innerText])") == tops
    page.goto("/attributes/newsletter")  # true/false as JSON writes them in the chart too, not Python's True
    summary = page.locator(".chart-box summary").first
    summary.focus()
    page.keyboard.press("Enter")
    expect(page.locator(".chart-box table tbody th")).to_have_text(["false", "true"])
    expect(page.locator("table.top-values tbody td:first-child")).to_have_text(["false", "true"])
    page.goto("/")
    days = page.locator(".chart-box table tbody tr")
    expect(days).to_have_count(14)  # every day of the chart, with its count
    expect(page.locator(".chart-box table thead th")).to_have_text(["Day", "Events"])


def test_a_refused_sign_in_names_the_field_at_fault(browser: Browser, shop: Server) -> None:
    page = browser.new_context(base_url=shop.url).new_page()
    page.goto("/login")
    page.get_by_label("API key (read or admin)").fill("ak_not_a_key")
    page.keyboard.press("Enter")
    field = page.get_by_label("API key (read or admin)")
    expect(field).to_have_attribute("aria-invalid", "true")
    described = field.get_attribute("aria-describedby")
    assert described, "the error is not tied to the key field"
    expect(page.locator(f"#{described}")).to_have_attribute("role", "alert")
    expect(page.locator(f"#{described}")).to_contain_text("unknown API key")
    expect(field).to_be_focused()  # back in the field, to type the key again


def test_form_fields_stand_out_from_their_background(browser: Browser, shop: Server) -> None:
    """A text field's border is what shows where to type: 3:1 against what is behind it (WCAG 1.4.11)."""
    page = signed_in(browser, shop)
    weak = []
    for path in ("/segments/new", "/attributes?tab=custom", "/customers", "/admin"):
        page.goto(path)
        weak += page.locator("main input:not([type=hidden]):not([type=checkbox]):not([type=file]), main select, "
                             "main textarea").evaluate_all(BORDER_CONTRAST)
    assert not weak, weak


BORDER_CONTRAST = """fields => {
    const rgb = c => (c.match(/[\\d.]+/g) || []).slice(0, 4).map(Number);
    const lum = ([r, g, b]) => [r, g, b].map(v => v / 255).map(v => v <= 0.03928 ? v / 12.92
        : Math.pow((v + 0.055) / 1.055, 2.4)).reduce((s, v, i) => s + v * [0.2126, 0.7152, 0.0722][i], 0);
    const behind = el => { for (let p = el.parentElement; p; p = p.parentElement) {
        const c = rgb(getComputedStyle(p).backgroundColor); if (c.length < 4 || c[3] > 0) return c; }
        return [255, 255, 255]; };
    return fields.filter(f => f.offsetParent !== null).map(f => {
        const a = rgb(getComputedStyle(f).borderTopColor), b = behind(f);
        const ratio = (Math.max(lum(a), lum(b)) + 0.05) / (Math.min(lum(a), lum(b)) + 0.05);
        return ratio < 3 ? `${f.outerHTML.slice(0, 80)}: ${ratio.toFixed(2)}:1` : null;
    }).filter(Boolean);
}"""


def test_the_live_event_stream_can_be_paused(browser: Browser, shop: Server) -> None:
    """Content that keeps moving beside the rest of the page can be paused (WCAG 2.2.2), from the keyboard."""
    page = signed_in(browser, shop)
    page.goto("/events")
    pause = page.get_by_role("button", name="Pause")
    expect(pause).to_have_attribute("aria-pressed", "false")
    pause.focus()
    page.keyboard.press("Space")
    expect(pause).to_have_attribute("aria-pressed", "true")
    before = page.locator("#live li").count()
    with httpx.Client(base_url=shop.url, auth=(WRITE_KEY, ""), timeout=10) as sdk:
        assert sdk.post("/v1/track", json={"userId": "paused-1", "event": "While Paused"}).status_code == 200
    time.sleep(1.5)  # the page checks every second
    assert page.locator("#live li").count() == before
    page.keyboard.press("Space")  # resumed: what arrived meanwhile shows
    # by its user: the next test's "Sent While Paused", among the latest events the stream opens with when that test
    # ran first, held "While Paused" too, and a resume that fetched nothing passed
    expect(page.locator("#live li", has_text="paused-1")).to_contain_text("While Paused")


def test_an_answer_that_comes_after_the_pause_is_not_shown_until_resumed(browser: Browser, shop: Server) -> None:
    """A poll already on its way when Pause is pressed: its answer (here held back by the test until an event was
    sent meanwhile) was still added to the paused list. It is now set aside, and fetched again on resuming."""
    page = signed_in(browser, shop)
    held: list[Route] = []
    page.route("**/console/api/recent*", lambda route: held.append(route))  # the first poll waits here
    page.goto("/events")
    while not held:
        page.wait_for_timeout(50)
    page.get_by_role("button", name="Pause").click()
    expect(page.get_by_role("button", name="Pause")).to_have_attribute("aria-pressed", "true")
    before = page.locator("#live li").count()
    with httpx.Client(base_url=shop.url, auth=(WRITE_KEY, ""), timeout=10) as sdk:
        assert sdk.post("/v1/track", json={"userId": "late-1", "event": "Sent While Paused"}).status_code == 200
    with page.expect_event("requestfinished", lambda request: "/console/api/recent" in request.url):
        held[0].continue_()  # the poll from before the pause reaches the server now, and finds the event
    page.unroute("**/console/api/recent*")  # (paused, the page asks nothing more meanwhile)
    page.wait_for_timeout(300)  # time for the page's script to have handled the answer
    assert page.locator("#live li").count() == before, "the list moved while paused"
    page.get_by_role("button", name="Pause").click()  # resumed
    expect(page.locator("#live li", has_text="Sent While Paused")).to_have_count(1)


def test_the_error_page_back_link_works_under_the_consoles_script_policy(browser: Browser, shop: Server) -> None:
    """``javascript:history.back()`` is refused by the console's Content-Security-Policy (script-src 'self'): the
    Back link did nothing. console.js goes back in the history; without one, the link goes to the console page
    that led to the error (its Referer, same host only), or to the overview."""
    page = signed_in(browser, shop)
    page.goto("/attributes")
    page.goto("/attributes/no_such_attribute", referer=f"{shop.url}/attributes")
    expect(page.get_by_role("heading", name="That did not work")).to_be_visible()
    page.get_by_role("link", name="Back").click()
    expect(page).to_have_url(f"{shop.url}/attributes")
    # where the link itself goes, for a page opened with no history (a link from elsewhere, a new tab)
    page.goto("/attributes/no_such_attribute", referer="https://elsewhere.example/attributes")
    expect(page.get_by_role("link", name="Back")).to_have_attribute("href", "/")  # never another site
    page.goto("/attributes/no_such_attribute", referer=f"{shop.url}/segments?kind=static")
    expect(page.get_by_role("link", name="Back")).to_have_attribute("href", "/segments?kind=static")
