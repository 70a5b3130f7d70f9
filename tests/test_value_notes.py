"""Notes on text values a segment compares an attribute with that no profile has (portrait.value_notes)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from tests.conftest import ADMIN_KEY
from typer.testing import CliRunner

from portrait.api import create_app
from portrait.cli import app
from portrait.config import Settings
from portrait.service import Portrait

RULE = "values match exactly, case too"


def load(portrait: Portrait) -> None:
    people = [("ann", "PL", "Kraków", "Pro"), ("bob", "PL", "Warszawa", "Pro"), ("cem", "TR", "İstanbul", "Free"),
              ("dan", "Pl", "Kraków", "Free"), ("eve", "DE", "Berlin", "Pro")]
    portrait.ingest_messages([{"type": "identify", "userId": user, "traits": {
        "address": {"country": country, "city": city}, "plan": plan, "score": 7}}
        for user, country, city, plan in people])
    portrait.process_pending()


def test_a_value_held_only_in_another_case_is_noted_with_what_is_held(portrait: Portrait) -> None:
    """``address_country = "pl"`` counted zero, silently, where profiles say "PL"."""
    load(portrait)
    preview = portrait.segments.preview('address_country = "pl"')
    assert preview["count"] == 0
    assert preview["notes"] == [
        f"no profile has address_country 'pl': did you mean 'PL' (2) or 'Pl' (1)? ({RULE})"]
    one = portrait.segments.preview('address_country in ("de", "tr")')
    assert one["count"] == 0
    assert one["notes"] == [f"no profile has address_country 'de': did you mean 'DE'? 1 profile has it ({RULE})",
                            f"no profile has address_country 'tr': did you mean 'TR'? 1 profile has it ({RULE})"]
    # Only a zero is explained (looking costs a pass over the attribute's values): a count of someone has no note.
    counted = portrait.segments.preview('address_country in ("PL", "de")')
    assert counted["count"] == 2 and counted["notes"] == []


def test_values_every_profile_or_none_holds_get_no_note_or_the_closest_value(portrait: Portrait) -> None:
    load(portrait)
    assert portrait.segments.preview('address_country = "PL" or address_country != "TR"')["notes"] == []
    assert portrait.segments.preview('address_country = "FR"')["notes"] == [
        f"no profile has address_country 'FR' ({RULE})"]
    assert portrait.segments.preview('plan = "Prro"')["notes"] == ["no profile has plan 'Prro' (did you mean 'Pro'?)"]
    # Not text equality: no note, whatever the data holds.
    assert portrait.segments.preview('address_country contains "fr" or address_country > "zz"')["notes"] == []
    assert portrait.segments.preview('performed("Signed Up", where plan = "x")')["notes"] == [
        "no event named 'Signed Up' has been received: names match exactly, case too"]


def test_a_personal_value_is_counted_never_shown(portrait: Portrait) -> None:
    """address_city is personal: the note says how many profiles hold it in another case, never how it is written,
    and guesses no closest value (which would show another customer's)."""
    load(portrait)
    assert portrait.segments.preview('address_city = "kraków"')["notes"] == [
        f"no profile has address_city 'kraków': 2 profiles have it in other letter case ({RULE}; a personal value is "
        "not shown)"]
    assert portrait.segments.preview('address_city = "istanbul"')["notes"] == [
        f"no profile has address_city 'istanbul': 1 profile has it in other letter case ({RULE}; a personal value "
        "is not shown)"]  # İ lowers to i as the database's lower() has it
    assert portrait.segments.preview('address_city = "Krakw"')["notes"] == [
        f"no profile has address_city 'Krakw' ({RULE})"]


def test_notes_come_with_a_saved_segment_the_api_and_the_cli(portrait: Portrait, tmp_path: Path) -> None:
    load(portrait)
    created = portrait.create_segment({"name": "Poles", "condition": 'address_country = "pl"'})
    assert created["size"] == 0 and created["notes"] == [
        f"no profile has address_country 'pl': did you mean 'PL' (2) or 'Pl' (1)? ({RULE})"]
    assert "notes" not in portrait.update_segment("Poles", {"condition": 'address_country in ("PL", "Pl")'})
    with TestClient(create_app(portrait=portrait)) as client:
        answer = client.post("/api/segments/preview", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                             json={"condition": 'address_country = "tr"'})
        assert answer.json()["notes"] == [
            f"no profile has address_country 'tr': did you mean 'TR'? 1 profile has it ({RULE})"]
    db = str(tmp_path / "cli.duckdb")
    service = Portrait(Settings(db_path=db), background=False)
    load(service)
    service.close()
    previewed = CliRunner().invoke(app, ["segments", "preview", 'address_country = "de"', "--db", db],
                                   env={"COLUMNS": "200"})
    assert previewed.exit_code == 0, previewed.output
    said = f"Note: no profile has address_country 'de': did you mean 'DE'? 1 profile has it ({RULE})."
    assert said in previewed.output


def test_a_long_list_of_values_no_profile_has_gets_five_notes_and_a_count_of_the_rest(portrait: Portrait) -> None:
    load(portrait)
    codes = ", ".join(f'"{n:05d}"' for n in range(40))
    notes = portrait.segments.preview(f"address_country in ({codes})")["notes"]
    assert notes[:5] == [f"no profile has address_country '{n:05d}' ({RULE})" for n in range(5)]
    assert notes[5:] == [f"no profile has address_country 35 more of the values given ({RULE})"]
