"""Numbers as Russian callers hear them (§3): {hours}, {length} and times of day, in words and
with the right case and plural, for 1, 2, 5, 12, 21 and 24."""

from __future__ import annotations

import pytest

from core.kit.schedule import Schedule, parse_hours
from voice_prompts import Language, load_catalogue

PROMPTS = load_catalogue()

HOURS = {1: "1 час", 2: "2 часа", 5: "5 часов", 12: "12 часов", 21: "21 час", 24: "24 часа"}
LENGTH = {
    1: "одного знака",
    2: "двух знаков",
    5: "пяти знаков",
    12: "двенадцати знаков",
    21: "двадцати одного знака",
    24: "двадцати четырёх знаков",
}
CLOCK = {
    1: "одного",
    2: "двух",
    5: "пяти",
    12: "двенадцати",
    21: "двадцати одного",
    24: "двадцати четырёх",
}


@pytest.mark.parametrize("number", sorted(HOURS))
def test_hours_render_with_their_plural(number: int) -> None:
    hours = PROMPTS.count("hours.hours", number, Language.ru)
    assert hours == HOURS[number]
    said = PROMPTS.text("voice.password_rules", Language.ru, hours=hours)
    assert f"действует {HOURS[number]}," in said
    assert PROMPTS.count("hours.hours", number, Language.en).startswith(f"{number} hour")


@pytest.mark.parametrize("number", sorted(LENGTH))
def test_length_is_said_in_words_in_the_genitive(number: int) -> None:
    length = PROMPTS.count("hours.characters", number, Language.ru)
    said = PROMPTS.text("voice.password_ready", Language.ru, length=length)
    assert f"из {LENGTH[number]}" in said
    assert not any(ch.isdigit() for ch in said)
    english = PROMPTS.count("hours.characters", number, Language.en)
    assert english == f"{number} character{'s' if number != 1 else ''}"


@pytest.mark.parametrize("number", sorted(CLOCK))
def test_times_of_day_are_said_in_words(number: int) -> None:
    opens = number - 1 if number > 1 else 0
    desk = Schedule(days=parse_hours(f"mon {opens:02d}:00-{number:02d}:00"))
    said = desk.describe(PROMPTS, Language.ru)
    assert said.endswith(f"до {CLOCK[number]}"), said
    assert ":" not in said and not any(ch.isdigit() for ch in said)
    # The SMS keeps digits: it is read, not heard.
    assert f"{number}:00" in desk.describe(PROMPTS, Language.ru, short=True)


def test_a_time_with_minutes() -> None:
    assert PROMPTS.clock(8 * 60 + 30, Language.ru) == "восьми тридцати"
    assert PROMPTS.clock(9 * 60 + 5, Language.ru) == "девяти ноль пяти"
    assert PROMPTS.clock(20 * 60, Language.en) == "8 p.m."
    assert PROMPTS.clock(12 * 60, Language.en) == "noon"


@pytest.mark.parametrize("seconds", [1, 2, 5, 12, 21, 24])
def test_a_cool_down_is_said_in_seconds(seconds: int) -> None:
    forms = {
        1: "1 секунду",
        2: "2 секунды",
        5: "5 секунд",
        12: "12 секунд",
        21: "21 секунду",
        24: "24 секунды",
    }
    said = PROMPTS.text(
        "voice.code_resend_wait", Language.ru, seconds=PROMPTS.seconds(seconds, Language.ru)
    )
    assert f"через {forms[seconds]}" in said and "минут" not in said


def test_the_password_alphabet_avoids_misheard_letters() -> None:
    from core.platform.settings import Settings

    alphabet = Settings(_env_file=None).temp_password_alphabet
    assert not set("hcjqwxy") & set(alphabet)
    assert alphabet == alphabet.lower()


def test_no_letter_is_spelled_with_a_cyrillic_lookalike_word() -> None:
    """h is never "аш, как Харитон" (callers write Х): such letters are said as "латинская …"."""
    for letter in "hcjqwxy":
        said = PROMPTS.spelled(letter, Language.ru)[0]
        assert said.startswith("латинская") and "как" not in said, (letter, said)
    assert PROMPTS.spelled("ab7", Language.ru) == ["а, как Анна", "бэ, как Борис", "семь"]


def test_eirc_is_said_as_letters() -> None:
    assert PROMPTS.substitutions(Language.ru) == {"ЕИРЦ": "е-и-эр-цэ"}
