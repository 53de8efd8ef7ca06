"""Tests for ``ivr.speech.speech_to_digits``."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ivr.speech import MAX_DIGITS, MAX_INPUT_CHARS, speech_to_digits

# --------------------------------------------------------------------------
# Table of cases
# --------------------------------------------------------------------------

RU_CASES: list[tuple[str, str | None]] = [
    # digit by digit
    ("один два три четыре", "1234"),
    ("ноль ноль семь", "007"),
    ("ноль", "0"),
    ("нуль один", "01"),
    ("девять восемь семь шесть пять четыре три два один ноль", "9876543210"),
    # compound numbers
    ("сто двадцать три", "123"),
    ("сто двадцать три четыреста пятьдесят шесть", "123456"),
    ("двенадцать тридцать четыре", "1234"),
    ("две тысячи двадцать пять", "2025"),
    ("сто двадцать три тысячи четыреста пятьдесят шесть", "123456"),
    ("тысяча", "1000"),
    ("двадцать ноль пять", "2005"),
    ("сто ноль ноль", "10000"),
    ("шестьсот девятьсот", "600900"),
    # gender / case forms, ё, capitals, punctuation
    ("одна", "1"),
    ("одну две", "12"),
    ("трёхсот", "300"),
    ("ТРЕХСОТ", "300"),
    ("Сто Двадцать Три.", "123"),
    ("один, два, три!", "123"),
    # fillers
    ("э-э, мой номер: двенадцать тридцать четыре", "1234"),
    ("так, лицевой счёт сто двадцать три", "123"),
    ("код ноль ноль семь", "007"),
    ("ну вот номер 123", "123"),
    ("№ 42", "42"),
    # what the recogniser actually returns
    ("123 456 789", "123456789"),
    ("1-2-3", "123"),
    ("12 34 56.", "123456"),
    ("123456", "123456"),
    ("007", "007"),
    ("12 тридцать четыре", "1234"),
    ("123,", "123"),
    ("123\u00a0456", "123456"),
    ("１２３", "123"),  # full-width digits
    # not a number
    ("оператор", None),
    ("не знаю", None),
    ("hello", None),
    ("one two three", None),  # English words while expecting Russian
    ("", None),
    ("   ", None),
    ("...", None),
    ("номер", None),
    ("э-э", None),
    ("<script>", None),
    ("<script>alert(1)</script>", None),
    ("1 2 3 abc", None),
    ("12abc", None),
    ("один два оператор", None),
    ("соединить с оператором", None),
    ("2 тысячи", None),  # recogniser digits + multiplier: ambiguous
    ("123 & 456", None),
    ("1 2 3 \U0001f600", None),
    ("1\x00 2", None),
    ("٣", None),  # Arabic-Indic digit
    ("五", None),
    ("первый", None),
]

EN_CASES: list[tuple[str, str | None]] = [
    ("one two three", "123"),
    ("oh seven", "07"),
    ("O 7", "07"),
    ("zero zero seven", "007"),
    ("double five", "55"),
    ("double oh seven", "007"),
    ("triple two", "222"),
    ("four triple two one", "42221"),
    ("double 5", "55"),
    ("one hundred twenty three", "123"),
    ("one hundred and twenty three", "123"),
    ("twelve thirty four", "1234"),
    ("twenty-one", "21"),
    ("My number is, uh, 4 5 6.", "456"),
    ("two thousand twenty five", "2025"),
    ("123 456", "123456"),
    # not a number
    ("operator", None),
    ("hello", None),
    ("I don't know", None),
    ("double", None),
    ("double fifty", None),
    ("double double five", None),
    ("first", None),
    ("5 hundred", None),
    ("один два", None),  # Russian words while expecting English
    ("and", None),
]


@pytest.mark.parametrize(("text", "expected"), RU_CASES)
def test_russian(text: str, expected: str | None) -> None:
    assert speech_to_digits(text) == expected
    assert speech_to_digits(text, "ru-RU") == expected


@pytest.mark.parametrize(("text", "expected"), EN_CASES)
def test_english(text: str, expected: str | None) -> None:
    assert speech_to_digits(text, "en") == expected
    assert speech_to_digits(text, "en-US") == expected


def test_input_length_limit() -> None:
    at_limit = "1" + " " * (MAX_INPUT_CHARS - 2) + "2"
    assert len(at_limit) == MAX_INPUT_CHARS
    assert speech_to_digits(at_limit) == "12"
    assert speech_to_digits(at_limit + " ") is None


def test_result_length_limit() -> None:
    assert speech_to_digits("1" * MAX_DIGITS) == "1" * MAX_DIGITS
    assert speech_to_digits("1" * (MAX_DIGITS + 1)) is None
    assert speech_to_digits(" ".join(["девять"] * (MAX_DIGITS + 1))) is None
    assert speech_to_digits("секстиллион секстиллион") is None  # 44 digits


@pytest.mark.parametrize("language", ["de", "", "english", "uk"])
def test_unsupported_language_is_a_configuration_error(language: str) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        speech_to_digits("1", language)


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------

RU_DIGIT_WORDS: dict[str, list[str]] = {
    "0": ["ноль", "нуль"],
    "1": ["один", "одна", "Один"],
    "2": ["два", "две"],
    "3": ["три"],
    "4": ["четыре"],
    "5": ["пять"],
    "6": ["шесть"],
    "7": ["семь"],
    "8": ["восемь"],
    "9": ["девять"],
}
EN_DIGIT_WORDS: dict[str, list[str]] = {
    "0": ["zero", "oh", "o"],
    "1": ["one", "One"],
    "2": ["two"],
    "3": ["three"],
    "4": ["four"],
    "5": ["five"],
    "6": ["six"],
    "7": ["seven"],
    "8": ["eight"],
    "9": ["nine", "NINE"],
}
SEPARATORS = st.sampled_from([" ", "  ", ", ", " - ", ". ", "\n"])
digit_strings = st.text(alphabet="0123456789", min_size=1, max_size=12)


def _spell_digits(
    data: st.DataObject, digits: str, words: dict[str, list[str]], fillers: list[str]
) -> str:
    spoken: list[str] = []
    for digit in digits:
        if data.draw(st.integers(0, 4)) == 0:
            spoken.append(data.draw(st.sampled_from(fillers)))
        spoken.append(data.draw(st.sampled_from(words[digit])))
    text = data.draw(SEPARATORS).join(spoken)
    return text + data.draw(st.sampled_from(["", ".", ","]))


@given(digits=digit_strings, data=st.data())
def test_russian_digit_by_digit(digits: str, data: st.DataObject) -> None:
    plain = " ".join(RU_DIGIT_WORDS[d][0] for d in digits)
    assert speech_to_digits(plain, "ru") == digits
    text = _spell_digits(data, digits, RU_DIGIT_WORDS, ["э", "так", "номер", "код"])
    assert speech_to_digits(text, "ru") == digits


@given(digits=digit_strings, data=st.data())
def test_english_digit_by_digit(digits: str, data: st.DataObject) -> None:
    text = _spell_digits(data, digits, EN_DIGIT_WORDS, ["uh", "um", "number", "code"])
    assert speech_to_digits(text, "en-US") == digits


_RU_UNITS = ["", "один", "два", "три", "четыре", "пять", "шесть", "семь", "восемь", "девять"]
_RU_TEENS = [
    "десять",
    "одиннадцать",
    "двенадцать",
    "тринадцать",
    "четырнадцать",
    "пятнадцать",
    "шестнадцать",
    "семнадцать",
    "восемнадцать",
    "девятнадцать",
]
_RU_TENS = [
    "",
    "",
    "двадцать",
    "тридцать",
    "сорок",
    "пятьдесят",
    "шестьдесят",
    "семьдесят",
    "восемьдесят",
    "девяносто",
]
_RU_HUNDREDS = [
    "",
    "сто",
    "двести",
    "триста",
    "четыреста",
    "пятьсот",
    "шестьсот",
    "семьсот",
    "восемьсот",
    "девятьсот",
]


def _ru_below_thousand(n: int, *, feminine: bool) -> list[str]:
    words = [_RU_HUNDREDS[n // 100]]
    rest = n % 100
    if 10 <= rest <= 19:
        words.append(_RU_TEENS[rest - 10])
    else:
        words.append(_RU_TENS[rest // 10])
        unit = _RU_UNITS[rest % 10]
        if feminine and rest % 10 in (1, 2):
            unit = "одна" if rest % 10 == 1 else "две"
        words.append(unit)
    return [w for w in words if w]


def spell_russian(n: int, *, say_one_thousand: bool = False) -> str:
    """Spell 1..999999 in Russian words ("две тысячи двадцать пять")."""
    assert 1 <= n <= 999_999
    thousands, rest = divmod(n, 1000)
    words: list[str] = []
    if thousands:
        if thousands % 100 in range(11, 15) or thousands % 10 in (0, 5, 6, 7, 8, 9):
            noun = "тысяч"
        elif thousands % 10 == 1:
            noun = "тысяча"
        else:
            noun = "тысячи"
        if thousands > 1 or say_one_thousand:
            words += _ru_below_thousand(thousands, feminine=True)
        words.append(noun)
    words += _ru_below_thousand(rest, feminine=False)
    return " ".join(words)


def test_russian_speller_itself() -> None:
    assert spell_russian(2025) == "две тысячи двадцать пять"
    assert spell_russian(1000) == "тысяча"
    assert spell_russian(21_001) == "двадцать одна тысяча один"
    assert spell_russian(999_999) == ("девятьсот девяносто девять тысяч девятьсот девяносто девять")
    assert spell_russian(112_000) == "сто двенадцать тысяч"


@given(n=st.integers(1, 999_999), say_one=st.booleans())
@example(n=1000, say_one=True)
@example(n=100_010, say_one=False)
@example(n=999_999, say_one=False)
def test_russian_compound_numbers(n: int, say_one: bool) -> None:
    assert speech_to_digits(spell_russian(n, say_one_thousand=say_one)) == str(n)


# The second group starts with a hundreds word, which cannot continue the
# first one, so the caller can only have meant the two numbers side by side.
@given(a=st.integers(1, 999), b=st.integers(100, 999))
def test_russian_groups_are_concatenated(a: int, b: int) -> None:
    text = f"{spell_russian(a)} {spell_russian(b)}"
    assert speech_to_digits(text) == f"{a}{b}"


DIGIT_RESULT = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}")
LANGUAGES = st.sampled_from(["ru", "ru-RU", "en", "en-US"])
VOCABULARY = [
    *(w for ws in RU_DIGIT_WORDS.values() for w in ws),
    *(w for ws in EN_DIGIT_WORDS.values() for w in ws),
    *_RU_TEENS,
    *_RU_TENS[2:],
    *_RU_HUNDREDS[1:],
    "тысяча",
    "тысяч",
    "миллион",
    "секстиллион",
    "hundred",
    "thousand",
    "double",
    "triple",
    "and",
    "э",
    "номер",
    "оператор",
    "12",
    "0",
    "999",
    "-",
    ",",
    ".",
    "<",
    "&",
    "\x00",
    "\u00a0",
    "ё",
    "\U0001f600",
]


def _check_result(result: str | None) -> None:
    assert result is None or DIGIT_RESULT.fullmatch(result), result


@given(text=st.text(max_size=MAX_INPUT_CHARS + 20), language=LANGUAGES)
def test_arbitrary_text_never_raises(text: str, language: str) -> None:
    _check_result(speech_to_digits(text, language))


@given(
    words=st.lists(st.sampled_from(VOCABULARY), max_size=60),
    sep=st.sampled_from([" ", "", "-"]),
    language=LANGUAGES,
)
def test_arbitrary_number_word_soup_never_raises(words: list[str], sep: str, language: str) -> None:
    _check_result(speech_to_digits(sep.join(words), language))


@given(
    groups=st.lists(st.text(alphabet="0123456789", min_size=1, max_size=6), min_size=1),
    sep=SEPARATORS,
)
def test_recogniser_digits_are_kept_verbatim(groups: list[str], sep: str) -> None:
    text = sep.join(groups)
    digits = "".join(groups)
    expected = digits if len(digits) <= MAX_DIGITS and len(text) <= MAX_INPUT_CHARS else None
    assert speech_to_digits(text) == expected
