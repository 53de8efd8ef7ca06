"""Turn Twilio's ``SpeechResult`` for a spoken number into a digit string.

Callers of the hotline say their personal account number or a one-time code.
Twilio's recogniser hands back either digits ("123 456"), number words
("сто двадцать три"), or a mix of both ("12 тридцать четыре").  This module
reduces such a transcript to the digits the caller meant, or to ``None`` when
the transcript holds anything that is not a number ("оператор", "не знаю"), so
the IVR can re-prompt or route the call instead of acting on a guess.

Number words are handled by `number-parser`_ (``parse`` / ``parse_number``).
A thin layer on top of it adds what a spoken *identifier* needs and the
library does not do:

* zero words ("ноль", "нуль", "zero", "oh") are literal digits, so leading and
  inner zeros survive ("ноль ноль семь" -> "007", "двадцать ноль" -> "200");
* consecutive groups are concatenated, not kept apart
  ("двенадцать тридцать четыре" -> "1234");
* digit runs from the recogniser are kept verbatim, whatever separates them;
* English "double" / "triple" before a single digit;
* a small allow-list of filler words per language; any other word -> ``None``;
* size limits and a strict character allow-list, so no input raises.

.. _number-parser: https://github.com/scrapinghub/number-parser
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Final

from number_parser import parse, parse_number

__all__ = ["speech_to_digits"]

MAX_INPUT_CHARS: Final = 300
MAX_DIGITS: Final = 32

# Characters that may separate tokens and carry no meaning of their own.
# "№" is how the recogniser sometimes writes "номер".
_SEPARATORS: Final = frozenset(" \t\r\n.,;:!?-\u2010\u2012\u2013\u2014\u2212№")
_LETTERS: Final = frozenset("abcdefghijklmnopqrstuvwxyzабвгдежзийклмнопрстуфхцчшщъыьэюя")
_DIGITS: Final = frozenset("0123456789")
_ALLOWED: Final = _SEPARATORS | _LETTERS | _DIGITS

_TOKEN_RE: Final = re.compile(r"[0-9]+|[a-zа-я]+")
_GROUPS_RE: Final = re.compile(r"[0-9]+(?: [0-9]+)*")

# Words that are not numbers but are fine to hear around one.
_FILLERS: Final[dict[str, frozenset[str]]] = {
    "ru": frozenset(
        {
            # hesitation ("э-э" tokenises as "э", "э")
            "э",
            "ээ",
            "эээ",
            "эм",
            "мм",
            "ммм",
            "ну",
            "так",
            "вот",
            "это",
            # what the caller is reading out
            "мой",
            "номер",
            "лицевой",
            "лицевого",
            "счет",
            "счета",
            "код",
        }
    ),
    "en": frozenset(
        {
            "uh",
            "um",
            "umm",
            "er",
            "erm",
            "ah",
            "hmm",
            "so",
            "my",
            "is",
            "the",
            "number",
            "account",
            "code",
            # "one hundred and twenty three" means the same without it
            "and",
        }
    ),
}

# Zero is always a literal digit; number-parser would fold it into the
# preceding number ("двадцать ноль" -> 20) and lacks the "нуль" forms.
_ZERO_WORDS: Final[dict[str, frozenset[str]]] = {
    "ru": frozenset(
        {"ноль", "ноля", "нолю", "нолем", "ноле", "нуль", "нуля", "нулю", "нулем", "нуле"}
    ),
    "en": frozenset({"zero", "oh", "o", "nought"}),
}

# English "double five" -> "55", "triple two" -> "222".
_REPEATERS: Final[dict[str, dict[str, int]]] = {
    "ru": {},
    "en": {"double": 2, "triple": 3},
}

# Lowest value of a word that multiplies the number before it ("two hundred",
# "две тысячи"); Russian hundreds are words of their own ("двести").
_MULTIPLIER_FROM: Final[dict[str, int]] = {"ru": 1000, "en": 100}


def speech_to_digits(text: str, language: str = "ru") -> str | None:
    """Return the digits spoken in ``text``, or ``None`` if it is not just a number.

    ``language`` is a Twilio language tag such as ``"ru"``, ``"ru-RU"``, ``"en"``
    or ``"en-US"``; an unsupported one raises :class:`ValueError` (a
    configuration error, not a caller's).  Any ``text`` is accepted without
    raising.  The result is 1 to 32 ASCII digits with leading zeros kept.
    """
    lang = _language(language)
    if not isinstance(text, str) or len(text) > MAX_INPUT_CHARS:
        return None
    normalised = _normalise(text)
    if normalised is None:
        return None

    fillers = _FILLERS[lang]
    zeros = _ZERO_WORDS[lang]
    repeaters = _REPEATERS[lang]

    parts: list[str] = []
    words: list[str] = []  # pending number words for number-parser
    repeat = 1  # pending "double"/"triple"

    def flush() -> bool:
        if not words:
            return True
        digits = _words_to_digits(tuple(words), lang)
        words.clear()
        if digits is None:
            return False
        parts.append(digits)
        return True

    for token in _TOKEN_RE.findall(normalised):
        if repeat > 1:
            digit = _single_digit(token, lang)
            if digit is None:
                return None
            parts.append(digit * repeat)
            repeat = 1
        elif token[0] in _DIGITS:
            if not flush():
                return None
            parts.append(token)
        elif token in fillers:
            continue
        elif token in zeros:
            if not flush():
                return None
            parts.append("0")
        elif token in repeaters:
            if not flush():
                return None
            repeat = repeaters[token]
        else:
            value = _word_value(token, lang)
            if value is None:
                return None
            if value >= _MULTIPLIER_FROM[lang] and not words and parts:
                # "2 тысячи" / "5 hundred": a multiplier after recogniser digits
                # (or after a zero) is ambiguous; better to ask again than guess.
                return None
            words.append(token)
        if sum(map(len, parts)) > MAX_DIGITS:
            return None

    if repeat > 1 or not flush():
        return None
    result = "".join(parts)
    if not result or len(result) > MAX_DIGITS:
        return None
    return result


def _language(language: str) -> str:
    base = language.strip().lower().replace("_", "-").split("-", 1)[0]
    if base not in _FILLERS:
        raise ValueError(f"unsupported speech language: {language!r}")
    return base


def _normalise(text: str) -> str | None:
    """Lower-case, fold compatibility forms and "ё"; None on any unexpected character."""
    folded = unicodedata.normalize("NFKC", text.replace("№", " ")).lower().replace("ё", "е")
    if not set(folded) <= _ALLOWED:
        return None
    return folded


@lru_cache(maxsize=2048)
def _word_value(word: str, lang: str) -> int | None:
    """Value of a single cardinal number word, per number-parser; None if it is not one."""
    value = parse_number(word, language=lang)
    return value if isinstance(value, int) else None


def _single_digit(token: str, lang: str) -> str | None:
    """The digit a token stands for, if it is exactly one digit (for "double five")."""
    if token in _ZERO_WORDS[lang]:
        return "0"
    if len(token) == 1 and token in _DIGITS:
        return token
    value = _word_value(token, lang) if token[0] not in _DIGITS else None
    if value is not None and 0 <= value <= 9:
        return str(value)
    return None


def _words_to_digits(words: tuple[str, ...], lang: str) -> str | None:
    """Let number-parser build the numbers and concatenate the groups it finds.

    ``parse("сто двадцать три четыреста пятьдесят шесть")`` gives ``"123 456"``
    and ``parse("один два три")`` gives ``"1 2 3"``; spoken identifiers want the
    groups run together.
    """
    built = parse(" ".join(words), language=lang)
    if not isinstance(built, str) or not _GROUPS_RE.fullmatch(built):
        return None
    return built.replace(" ", "")
