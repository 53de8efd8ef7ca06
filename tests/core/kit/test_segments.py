"""SMS segments counted the way carriers bill them: GSM-7 septets or UCS-2 code units (§4, §9)."""

from __future__ import annotations

import pytest

from core.kit.segments import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    UnknownPlaceholderError,
    placeholders,
    segment_report,
    sms_budget,
    sms_encoding,
    sms_segments,
    worst_case_text,
    worst_string,
)
from voice_prompts import Catalogue, Language

EMOJI = "😀"  # outside the BMP: a surrogate pair in UTF-16


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        pytest.param("", 1, id="empty"),
        pytest.param("a" * 160, 1, id="gsm-160"),
        pytest.param("a" * 161, 2, id="gsm-161"),
        pytest.param("a" * 306, 2, id="gsm-153x2"),
        pytest.param("a" * 307, 3, id="gsm-153x2+1"),
        pytest.param("a" * 459, 3, id="gsm-153x3"),
        pytest.param("ж" * 70, 1, id="cyrillic-70"),
        pytest.param("ж" * 71, 2, id="cyrillic-71"),
        pytest.param("ж" * 134, 2, id="cyrillic-67x2"),
        pytest.param("ж" * 135, 3, id="cyrillic-67x2+1"),
        pytest.param("a" * 69 + "ж", 1, id="one-cyrillic-letter-makes-it-ucs2"),
        pytest.param("a" * 70 + "ж", 2, id="one-cyrillic-letter-in-71"),
        pytest.param("{" * 80, 1, id="extension-80-is-160-septets"),
        pytest.param("{" * 81, 2, id="extension-81-is-162-septets"),
        pytest.param("a" * 159 + "€", 2, id="euro-costs-2-septets"),
        pytest.param("a" * 158 + "€", 1, id="euro-fits-at-the-end"),
        pytest.param("a" * 159 + "\f", 2, id="form-feed-costs-2-septets"),
        pytest.param("a" * 152 + "[" + "a" * 152, 3, id="escape-not-split-across-parts"),
        pytest.param("a" * 151 + "[" + "a" * 153, 2, id="escape-at-end-of-part"),
        pytest.param(EMOJI * 35, 1, id="emoji-35-is-70-units"),
        pytest.param(EMOJI * 36, 2, id="emoji-36-is-72-units"),
        pytest.param("ж" * 69 + EMOJI, 2, id="emoji-after-69-cyrillic"),
        pytest.param("ж" * 66 + EMOJI + "ж" * 66, 3, id="surrogate-pair-not-split"),
        pytest.param("ж" * 65 + EMOJI + "ж" * 67, 2, id="surrogate-pair-at-end-of-part"),
    ],
)
def test_sms_segments(text: str, segments: int) -> None:
    assert sms_segments(text) == segments


@pytest.mark.parametrize(
    ("text", "report"),
    [
        pytest.param("", ("GSM-7", 0, 1), id="empty"),
        pytest.param("Код 123456", ("UCS-2", 10, 1), id="cyrillic"),
        pytest.param("code ~ 1", ("GSM-7", 9, 1), id="extension"),
        pytest.param("Привет " + EMOJI, ("UCS-2", 9, 1), id="emoji"),
        pytest.param("ç", ("UCS-2", 1, 1), id="lowercase-c-cedilla-is-not-gsm"),
        pytest.param("Ç", ("GSM-7", 1, 1), id="capital-c-cedilla-is-gsm"),
        pytest.param("`", ("UCS-2", 1, 1), id="backtick-is-not-gsm"),
    ],
)
def test_segment_report(text: str, report: tuple[str, int, int]) -> None:
    assert segment_report(text) == report


def test_alphabet_is_gsm_03_38() -> None:
    assert len(GSM7_BASIC) == 127  # 128 code points, one of them the escape
    assert len(GSM7_EXTENSION) == 10
    assert not GSM7_BASIC & GSM7_EXTENSION
    assert sms_encoding("".join(GSM7_BASIC | GSM7_EXTENSION)) == "GSM-7"
    assert sms_encoding("ЕИРЦ") == "UCS-2"
    assert sms_encoding(EMOJI) == "UCS-2"


def test_simulator_uses_the_same_counter() -> None:
    from gateway import simulator

    assert simulator.sms_segments is sms_segments


def test_budget() -> None:
    assert sms_budget("sms.code") == 1
    assert sms_budget("sms.code_resent") == 1
    # The credential ends a recovery by SMS: code reply + credential = 2 segments (§4, §9).
    assert sms_budget("sms.temporary_password") == 1
    assert sms_budget("sms.login") == 1
    assert sms_budget("sms.recovery_notice") == 2


def test_worst_string_puts_expensive_characters_first() -> None:
    assert worst_string("abc", 5) == "abcab"
    assert worst_string("ab{", 3) == "{ab"
    assert worst_string("ab{ж", 4) == "ж{ab"
    assert len(worst_string("abcdefghkmnprstuvz23456789", 64)) == 64


def test_placeholders() -> None:
    assert placeholders("a {code} b {{literal}} {x.y} {z[0]} {n:03d} {}") == [
        "code",
        "x",
        "z",
        "n",
        "",
    ]


def test_unknown_placeholders_are_refused() -> None:
    catalogue = Catalogue(
        {
            Language.ru: {"sms": {"a": "{count} {mystery}", "b": "{}", "c": "{attempts_left}"}},
            Language.en: {"sms": {}},
        }
    )
    with pytest.raises(UnknownPlaceholderError) as caught:
        worst_case_text(catalogue, "sms.a", Language.ru, {})
    assert (caught.value.key, caught.value.placeholder) == ("sms.a", "mystery")
    assert "sms.a" in str(caught.value) and "{mystery}" in str(caught.value)
    with pytest.raises(UnknownPlaceholderError):
        worst_case_text(catalogue, "sms.b", Language.ru, {})
    assert worst_case_text(catalogue, "sms.c", Language.ru, {}) == "999"
    with pytest.raises(KeyError):
        worst_case_text(catalogue, "sms.a", Language.en, {})
