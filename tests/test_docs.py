"""Documentation that cannot drift: settings and CLI reference are checked against the code."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from portrait.cli import app
from portrait.config import Settings, load_settings

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_settings_doc_names_every_setting_and_only_those() -> None:
    documented = set(re.findall(r"^\| `(PORTRAIT_[A-Z_]+)` \|", (DOCS / "settings.md").read_text(), re.MULTILINE))
    actual = {f"PORTRAIT_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    assert documented == actual


def test_settings_doc_gives_the_defaults() -> None:
    rows = re.findall(r"^\| `(PORTRAIT_[A-Z_]+)` \| (.+?) \|", (DOCS / "settings.md").read_text(), re.MULTILINE)
    defaults = Settings()
    for variable, default in rows:
        actual = getattr(defaults, variable.removeprefix("PORTRAIT_").lower())
        if default == "(none)":
            assert actual is None, variable
        else:  # the documented default, read as the variable, is the default
            assert getattr(load_settings({variable: default.strip("`")}), variable.removeprefix("PORTRAIT_").lower()
                           ) == actual, variable


def test_settings_are_read_from_the_environment() -> None:
    settings = load_settings({"PORTRAIT_PORT": "9001", "PORTRAIT_IDENTITY_LIMITS": "user_id=1,email=3",
                              "PORTRAIT_BLOCKED_VALUES": "null, n/a", "PORTRAIT_DB_PATH": "/tmp/x.duckdb"})
    assert (settings.port, settings.identity_limits, settings.blocked_values, settings.db_path) == (
        9001, {"user_id": 1, "email": 3}, ("null", "n/a"), "/tmp/x.duckdb")


def test_a_setting_out_of_range_names_its_variable() -> None:
    with pytest.raises(ValueError, match=r"^PORTRAIT_PORT=99999: port must be from 0 to 65535, not 99999$"):
        load_settings({"PORTRAIT_PORT": "99999"})


@pytest.mark.parametrize(("variable", "value", "refusal"), [
    ("PORTRAIT_RATE_LIMIT", "-1", "rate_limit must be 0 or more (0: no limit), not -1"),
    ("PORTRAIT_RETENTION_DAYS", "-7", "retention_days must be 0 or more (0: keep events forever), not -7"),
    ("PORTRAIT_MAX_BATCH_BYTES", "0", "max_batch_bytes must be at least 1, not 0"),
    ("PORTRAIT_BODY_TIMEOUT_SECONDS", "0", "body_timeout_seconds must be at least 1, not 0"),
    ("PORTRAIT_CHECKPOINT_WAL_MB", "-5", "checkpoint_wal_mb must be at least 1, not -5"),
    ("PORTRAIT_DEFAULT_PHONE_REGION", "XX", "default_phone_region must be a region code such as US, PL or GB "
                                            "(ISO 3166 alpha-2), not 'XX'"),
])
def test_a_setting_that_makes_no_sense_is_refused_by_name(variable: str, value: str, refusal: str) -> None:
    """A number out of its range, or a region phonenumbers does not know, would otherwise start a server that
    refuses every batch, or one where no local phone number is ever an identifier, without a word."""
    with pytest.raises(ValueError, match=f"^{re.escape(f'{variable}={value}: {refusal}')}$"):
        load_settings({variable: value})


def test_the_phone_region_is_read_in_any_case() -> None:
    assert load_settings({"PORTRAIT_DEFAULT_PHONE_REGION": "pl"}).default_phone_region == "PL"


def test_the_settings_doc_says_what_0_means_for_exactly_the_settings_that_take_it() -> None:
    from portrait.config import ZERO_MEANS

    rows = re.findall(r"^\| `PORTRAIT_([A-Z_]+)` \| .+? \| (.+) \|$", (DOCS / "settings.md").read_text(), re.MULTILINE)
    documented = {name.lower() for name, meaning in rows if re.search(r"`0`", meaning)}
    assert documented == set(ZERO_MEANS)


def commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    subcommands = getattr(group, "commands", None)
    if subcommands:
        for name, sub in subcommands.items():
            yield from commands(sub, (*path, name))
    else:
        yield path, group


def test_cli_doc_describes_every_command_and_option() -> None:
    text = (DOCS / "cli.md").read_text()
    sections = re.split(r"^## ", text, flags=re.MULTILINE)
    for path, command in commands(typer.main.get_command(app)):
        heading = f"`portrait {' '.join(path)}"
        section = next((s for s in sections if s.startswith(heading)), None)
        assert section is not None, f"docs/cli.md has no section for portrait {' '.join(path)}"
        options = [param for param in command.params if param.param_type_name == "option"]
        assert options, f"portrait {' '.join(path)}: no options found (--help always is one)"
        for param in options:
            if "--help" not in param.opts:
                assert any(f"`{opt}" in section for opt in param.opts), f"{heading}: {param.opts} not described"
        # and the other way round: an option the table names (renamed or removed since) is one the command has
        real = {opt for param in options for opt in (*param.opts, *param.secondary_opts)}
        for row in re.findall(r"^\| (.+?) \|", section, re.MULTILINE):
            for named in re.findall(r"`(--?[a-z][a-z-]*)", row):
                assert named in real, f"{heading}: documents {named}, which the command does not have"
    documented = {s.split("`")[1] for s in sections[1:]}
    actual = {"portrait " + " ".join(path) for path, _ in commands(typer.main.get_command(app))}
    assert {re.sub(r" ([A-Z]+\b|--).*", "", d) for d in documented} == actual


def test_the_defaults_in_the_cli_doc_are_the_defaults() -> None:
    text = (DOCS / "cli.md").read_text()
    sections = re.split(r"^## ", text, flags=re.MULTILINE)
    settings = Settings()
    checked = 0
    for path, command in commands(typer.main.get_command(app)):
        heading = f"`portrait {' '.join(path)}"
        section = next(s for s in sections if s.startswith(heading))
        for row in re.findall(r"^\| (.+?) \| (.+) \|$", section, re.MULTILINE):
            stated = re.search(r"\(default `?([^`:)]+?)`?\)", row[1])
            names = re.findall(r"`(--?[a-z-]+)", row[0])
            if stated is None or len(names) != 1:
                continue
            param = next(p for p in command.params if names[0] in getattr(p, "opts", ()))
            actual = param.default if param.default is not None else getattr(settings, param.name)
            assert str(actual) == stated.group(1), f"{heading} {names[0]}: documented {stated.group(1)}, is {actual}"
            checked += 1
    assert checked >= 10


def test_the_mapping_file_example_reads_as_documented() -> None:
    from portrait.mapping import RowMapping, parse_mapping_text

    example = re.search(r"```yaml\n(# orders.yaml.*?)```", (DOCS / "cli.md").read_text(), re.DOTALL)
    assert example is not None
    mapping = RowMapping.from_document(parse_mapping_text(example.group(1), "orders.yaml"), "events")
    assert mapping == RowMapping("events", user_id="customer_no", identifier_columns={"loyalty_card": "card"},
                                 event="Order Completed", timestamp="sold_at", timestamp_format="%Y-%m-%d %H:%M",
                                 message_id="receipt_id", fields=("total", "items"), renames={"total": "revenue"},
                                 types={"total": "number", "items": "integer"})


def test_the_null_semantics_table_is_what_the_engines_do() -> None:
    from datetime import datetime

    from portrait.conditions import Schema, check, parse, to_json
    from portrait.conditions.evaluate import ProfileData, compile_predicate

    text = (DOCS / "segments.md").read_text()
    rows = re.findall(r"^\| `(.+?)` \| (yes|no) \|$", text, re.MULTILINE)
    assert len(rows) >= 20
    schema = Schema({"age": "integer", "country": "string", "tags": "list", "signup_at": "datetime"})
    empty = ProfileData("p1")
    for condition_text, expected in rows:
        condition = parse(condition_text)
        check(condition, schema)
        assert compile_predicate(condition, schema, datetime(2026, 6, 1))(empty) is (expected == "yes"), condition_text
        assert to_json(condition)  # every documented example also has a JSON form


def test_the_documented_forms_of_the_example_are_the_same_condition() -> None:
    import json

    from portrait.conditions import from_json, parse

    text = (DOCS / "segments.md").read_text()
    example = re.search(r"```text\n(.+?)\n```", text, re.DOTALL)
    document = re.search(r"```json\n(.+?)\n```", text, re.DOTALL)
    assert example is not None and document is not None
    assert parse(example.group(1)) == from_json(json.loads(document.group(1)))


def test_the_calculated_attribute_table_gives_the_types_the_code_gives() -> None:
    from portrait.conditions.calculations import parse_definition, result_type

    text = (DOCS / "calculated.md").read_text()
    rows = re.findall(r"^\| `([a-z_]+\(.+?\))`.*? \| (integer|number|string|list|datetime|enum) \|", text, re.MULTILINE)
    complete = [(d, k) for d, k in rows if "…" not in d]  # "avg(…)" rows are shorthand for the row above
    assert len(complete) >= 10
    for definition, kind in complete:
        assert result_type(parse_definition(definition)) == kind, definition


def test_the_api_doc_names_every_operation_and_only_real_ones_and_status_fields(portrait: Any) -> None:
    from fastapi.testclient import TestClient
    from tests.conftest import ADMIN_KEY

    from portrait.api import create_app

    with TestClient(create_app(portrait=portrait)) as client:
        schema = client.get("/openapi.json").json()
        status = client.get("/api/status", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    actual = {(method.upper(), re.sub(r"\{[^}]+\}", "{}", path))
              for path, operations in schema["paths"].items() if path.startswith("/api/") for method in operations}
    text = (DOCS / "api.md").read_text()
    example = re.search(r"## `GET /api/status`\n\n```json\n(.+?)```", text, re.DOTALL)
    assert example is not None and list(json.loads(example.group(1))) == list(status)
    documented = {(method, re.sub(r"\{[^}]+\}", "{}", path.replace("{type}:{value}", "{identity}")))
                  for method, path in re.findall(r"`(GET|POST|PATCH|PUT|DELETE) (/api/[^` ?]*)", text)}
    assert documented - actual == set(), "docs/api.md names operations the API does not have"
    assert actual - documented == set(), "operations docs/api.md does not name"


# The JSON examples of docs/api.md that stand for a whole answer: the heading they follow, and a path answering it.
API_EXAMPLES = [("GET /api/profiles/{identity}", "/api/profiles/user_id:u1"),
                ("GET /api/profiles/{identity}/events", "/api/profiles/user_id:u1/events?limit=1"),
                ("GET /api/events/rejected", "/api/events/rejected"),
                ("GET /api/data-quality", "/api/data-quality")]


def test_the_api_doc_examples_have_the_fields_of_real_answers(portrait: Any) -> None:
    from fastapi.testclient import TestClient
    from tests.conftest import ADMIN_KEY

    from portrait.api import create_app

    portrait.ingest_messages([{"type": "identify", "userId": "u1", "traits": {"age": "abc", "email": "a@b.c"}},
                              {"type": "track", "anonymousId": "a2", "event": "Viewed"},
                              {"type": "track", "userId": "u1"}])  # rejected: no event name
    portrait.process_pending()
    portrait.ingest_messages([{"type": "identify", "userId": "u1", "anonymousId": "a2"}])  # a merge
    portrait.process_pending()
    text = (DOCS / "api.md").read_text()
    with TestClient(create_app(portrait=portrait)) as client:
        for heading, path in API_EXAMPLES:
            example = re.search(re.escape(f"## `{heading}`") + r"\n\n.*?```json\n(.+?)```", text, re.DOTALL)
            assert example is not None, heading
            documented = json.loads(example.group(1))
            real = client.get(path, headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
            assert set(documented) == set(real), heading
            for field, value in documented.items():  # and the fields of the first item of each list
                if isinstance(value, list) and value and isinstance(value[0], dict):
                    assert real[field], (heading, field)
                    assert set(value[0]) == set(real[field][0]), (heading, field)


def served_routes(routes: Any) -> Iterator[Any]:
    """Every route the app answers, the routers' included in theirs (FastAPI >= 0.165 nests them)."""
    for route in routes:
        included = getattr(route, "effective_route_contexts", None)
        if included is not None:
            yield from served_routes(included())
        else:
            yield route


def served_paths(settings: Settings) -> set[tuple[str, str, str]]:
    """(method, path, module of the handler) for every route of the whole app, the console's and /v1's too."""
    from fastapi import FastAPI

    from portrait.api import create_app

    app: Any = create_app(settings)
    while not isinstance(app, FastAPI):  # the ingestion fast path and the JSON-body reader wrap it
        app = app.app
    try:
        return {(method, route.path, getattr(route.endpoint, "__module__", "")) for route in served_routes(app.routes)
                if getattr(route, "methods", None) for method in route.methods}
    finally:
        app.state.portrait.close()  # the app opened the database; no lifespan runs here to close it


def test_the_ingestion_doc_names_every_v1_path_and_only_served_ones(settings: Settings) -> None:
    served = {(method, path) for method, path, _ in served_paths(settings) if path.startswith("/v1")}
    table = (DOCS / "ingestion.md").read_text().split("## Endpoints", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(?:POST )?(/v1/[a-z]+)`", table))
    assert {path for method, path in served if method == "POST" and not path.endswith("/")} == documented
    for path in documented:  # each answers POST and a CORS preflight, also with a trailing slash, as the page says
        assert {("POST", path), ("OPTIONS", path), ("POST", path + "/"), ("OPTIONS", path + "/")} <= served, path


def test_every_other_path_the_server_answers_is_documented(settings: Settings) -> None:
    """Outside /api and /v1 (checked above): the console's pages are in console.md's table, and the rest — health,
    OpenAPI, the docs page — in api.md. Static files and the console's own JSON calls (made by console.js, not a
    public API) are left out."""
    routes = {(method, path, module) for method, path, module in served_paths(settings)
              if not path.startswith(("/api/", "/v1", "/static/", "/console/api/")) and method != "HEAD"}
    console_table = (DOCS / "console.md").read_text().split("## Pages", 1)[1].split("\n## ", 1)[0]
    console_pages = set(re.findall(r"^\| [^|`]+`(/[a-z]*)`", console_table, re.MULTILINE))
    console_gets = {path for method, path, module in routes if module.startswith("portrait.web") and method == "GET"}
    assert console_pages and console_pages <= console_gets, console_pages - console_gets
    others = {(method, path) for method, path, module in routes
              if not module.startswith("portrait.web") and not path.endswith(".js")}  # the docs page's script
    api_doc = (DOCS / "api.md").read_text()
    assert {(method, path) for method, path in others if f"`{method} {path}`" not in api_doc} == set()


def documented_command_lines() -> Iterator[tuple[str, str, bool]]:
    """(page, command line, whole) for every `portrait ...` in README.md and docs/: the lines of shell examples
    (whole commands, run as written) and inline code (often a fragment: `portrait segments create --file`)."""
    for page in [DOCS.parent / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = page.read_text()
        for block in re.findall(r"```(?:sh|bash)\n(.*?)```", text, re.DOTALL):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"^\S*portrait\b", "portrait", line.strip())
                if line.startswith("portrait "):
                    yield page.name, line.split(" #")[0], True
        for span in re.findall(r"`((?:\.venv/bin/)?portrait [^`]+)`", text):
            yield page.name, re.sub(r"^\S*portrait", "portrait", span), False


def test_every_documented_command_line_names_real_commands_and_options() -> None:
    import shlex

    root = typer.main.get_command(app)
    checked = 0
    for page, line, whole in documented_command_lines():
        words = shlex.split(line)[1:]
        command: Any = root
        while words and words[0] in getattr(command, "commands", {}):  # typer's groups (its own click) have them
            command = command.commands[words.pop(0)]
        if getattr(command, "commands", None):  # `portrait attributes list|show` or `portrait analytics ...`
            own = {opt for param in command.params for opt in param.opts}  # `portrait --version`
            fragment = not words or "|" in words[0] or words[0] in ("...", "…", "--help", *own)
            assert fragment, f"{page}: {line}: no such command"
            continue
        options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        unknown = [word for word in words if word.startswith("--") and word.split("=")[0] not in options]
        assert not unknown, f"{page}: {line}: the command has no {unknown}"
        if whole:  # a shell example is parsed as the command line would be: arguments, values, choices
            try:
                command.make_context("portrait", words)
            except Exception as error:  # typer's click: a usage error, so the example would not run as written
                pytest.fail(f"{page}: {line}: {error}")
        checked += 1
    assert checked >= 100


def test_the_export_report_header_has_the_documented_fields(portrait: Any) -> None:
    from fastapi.testclient import TestClient
    from tests.conftest import ADMIN_KEY

    from portrait.api import create_app

    text = (DOCS / "api.md").read_text()
    sentence = re.search(r"The `X-Portrait-Export` header carries the report as JSON: (.+?)\.\n", text, re.DOTALL)
    assert sentence is not None
    documented = set(re.findall(r"`([a-z_]+)`", re.sub(r"\(.*?\)", "", sentence.group(1), flags=re.DOTALL)))
    portrait.ingest_messages([{"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}])
    portrait.process_pending()
    with TestClient(create_app(portrait=portrait)) as client:
        answer = client.get("/api/exports/profiles", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert documented == set(json.loads(answer.headers["X-Portrait-Export"]))


def test_the_funnel_pages_give_its_number_of_steps() -> None:
    from portrait.analytics import MAX_STEPS

    for page in ("api.md", "cli.md"):  # a funnel of one step, or of eleven, is refused: the pages say so
        assert f"2 to {MAX_STEPS} steps" in (DOCS / page).read_text(), page


def heading_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_pages_finds_its_page_and_heading() -> None:
    pages = {page.name: page.read_text() for page in [DOCS.parent / "README.md", *DOCS.glob("*.md")]}
    prose = {name: re.sub(r"```.*?```", "", text, flags=re.DOTALL) for name, text in pages.items()}  # no # comments
    anchors = {name: {heading_anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}
               for name, text in prose.items()}
    links = 0
    for name, text in pages.items():
        for target, anchor in re.findall(r"\]\((?:docs/)?([a-z]+\.md)?(?:#([^)]+))?\)", text):
            page = target or name
            assert page in pages, f"{name} links to {page}, which does not exist"
            assert not anchor or anchor in anchors[page], f"{name} links to {page}#{anchor}: no such heading"
            links += 1
    assert links >= 50


def test_the_readme_names_every_command_of_the_cli() -> None:
    """README.md's CLI list: every group, and every command of a group whose commands it spells out."""
    listed = re.search(r"\*\*CLI\*\*: `portrait ([^`]+)`", (DOCS.parent / "README.md").read_text())
    assert listed is not None
    named: dict[str, set[str]] = {}  # "profiles get|rebuild|consent" -> {"profiles": {"get", "rebuild", "consent"}}
    for part in " ".join(listed.group(1).split()).split(" | "):
        group, _, subcommands = part.partition(" ")
        named.setdefault(group, set()).update(filter(None, subcommands.split("|")))
    for path, _ in commands(typer.main.get_command(app)):
        assert path[0] in named, f"README.md's CLI list leaves out portrait {path[0]}"
        spelled = named[path[0]]
        assert len(path) == 1 or not spelled or path[1] in spelled, f"README.md's CLI list leaves out {path}"
