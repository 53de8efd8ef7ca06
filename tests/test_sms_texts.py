"""Every outbound SMS text, in every language, fits its segment budget at its worst case (§4, §9).

The texts are found in the catalogue's [sms] section at collection time, so a key added later is
checked without editing this file. Each placeholder is filled with its longest, most expensive
value (core.kit.segments.worst_case_values); a placeholder nobody has decided a worst case for fails
the test by name. Test ids and messages carry keys, languages and figures, never the texts.
"""

from __future__ import annotations

import pytest

from core.kit import segments
from core.kit.segments import (
    UnknownPlaceholderError,
    segment_report,
    sms_budget,
    sms_keys,
    worst_case_text,
    worst_case_values,
)
from core.platform.settings import TEMP_PASSWORD_TTL_MAX_HOURS, Settings
from voice_prompts import Catalogue, Language, load_catalogue

SMS_KEYS = sms_keys(load_catalogue())


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue()


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(_env_file=None)


def test_the_catalogue_has_sms_texts() -> None:
    """Guard against a test that passes because it found nothing to check."""
    assert "sms.code" in SMS_KEYS
    assert len(SMS_KEYS) >= 4


@pytest.mark.parametrize("key", SMS_KEYS)
def test_sms_text_exists_in_every_language(catalogue: Catalogue, key: str) -> None:
    missing = [language.value for language in Language if key not in catalogue.keys(language)]
    assert not missing, f"{key} has no text in: {', '.join(missing)}"


@pytest.mark.parametrize("language", list(Language), ids=str)
@pytest.mark.parametrize("key", SMS_KEYS)
def test_sms_text_fits_its_budget(
    catalogue: Catalogue, settings: Settings, key: str, language: Language
) -> None:
    """A one-time code message is exactly 1 segment; any other SMS at most 2."""
    if key not in catalogue.keys(language):
        pytest.fail(f"{key} has no {language.value} text")
    try:
        text = worst_case_text(catalogue, key, language, worst_case_values(settings))
    except UnknownPlaceholderError as exc:
        pytest.fail(str(exc))
    assert "{" not in text and "}" not in text, f"{key} ({language.value}): a brace is left over"
    encoding, units, count = segment_report(text)
    budget = sms_budget(key)
    assert count <= budget, (
        f"{key} ({language.value}): {len(text)} characters, {units} {encoding} units, "
        f"{count} segments; the budget is {budget}"
    )


@pytest.mark.parametrize("language", list(Language), ids=str)
def test_every_reply_is_one_segment(
    catalogue: Catalogue, settings: Settings, language: Language
) -> None:
    """§6.14: a reply goes to whoever texts us, so its segments are what pumping earns per
    message: one — the after-hours reply too, with the longest working hours the settings
    accept after it."""
    replies = [key for key in SMS_KEYS if key.startswith("sms.reply_")]
    assert "sms.reply_help" in replies and "sms.reply_callback_closed" in replies
    over = {
        key: segment_report(text)[2]
        for key in replies
        if segment_report(
            text := worst_case_text(catalogue, key, language, worst_case_values(settings))
        )[2]
        > 1
    }
    assert not over, f"replies over one segment ({language.value}): {over}"


@pytest.mark.parametrize("language", list(Language), ids=str)
def test_the_after_hours_reply_carries_the_hours(catalogue: Catalogue, language: Language) -> None:
    """The worst case of the after-hours reply is the reply and the longest hours, as sent."""
    text = worst_case_text(catalogue, "sms.reply_callback_closed", language, {})
    assert text.startswith(catalogue.text("sms.reply_callback_closed", language) + " ")
    assert text.count("10:00") == 2 and "11:00" in text


def test_worst_cases_follow_the_settings(settings: Settings) -> None:
    values = worst_case_values(settings)
    password = values["password"]
    assert isinstance(password, str)
    assert len(password) == settings.temp_password_length
    assert set(password) <= set(settings.temp_password_alphabet)
    assert values["code"] == "999999"
    # The longest lifetime a deployment may set, not the default (1 h): the text must fit both.
    assert values["hours"] == TEMP_PASSWORD_TTL_MAX_HOURS == 24
    assert values["hotline"] == settings.hotline_number
    assert len(str(values["login"])) == 32
    assert len(str(values["account"])) == 12


def test_the_report_lists_every_sms_text(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m core.kit.segments` prints a row per text and language, and agrees with the tests."""
    status = segments.main()
    lines = capsys.readouterr().out.splitlines()
    for key in SMS_KEYS:
        for language in Language:
            assert any(line.split()[:2] == [key, language.value] for line in lines if line)
    assert status == 0
