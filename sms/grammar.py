"""Parse the text of an inbound SMS to the short number into a :class:`Command`.

Residents write the way they write: any case, "ё" or "е", punctuation and
spaces anywhere, an account number broken into groups, a Latin letter slipped
into a Cyrillic word, a keyword transliterated ("VOSSTANOVIT'") or misspelt
("востановить").  The first word of the message decides the command; for
``restore``/``login``/``code`` the rest of the message is searched for the
argument.  Nothing here raises and nothing here talks to the outside world.

Typos are bounded so a real word never turns into a command by accident:

* a word is compared with a keyword by Damerau–Levenshtein distance, allowed
  only when *both* words are long enough: at most 1 edit when the shorter has
  5–8 letters, at most 2 when it has 9 or more, none below 5 ("stop", "код",
  "logn" must be exact); two edits also need the same first letter, which keeps
  "записаться" from "отписаться" and "subscribe" from "unsubscribe";
* a word equally close to two different commands matches neither;
* real words that sit within reach of a keyword but mean something else
  ("остановить" is two edits from "восстановить") are listed and never match;
* opt-in words (START and friends) are exact only: re-subscribing someone must
  never rest on a guess, while a misspelt opt-out is still honoured;
* STOP and START count only as the whole message, as carriers treat them.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from core.recovery.codes import CODE_DIGITS, well_formed_code
from voice_prompts import Language

__all__ = [
    "MAX_ACCOUNT_CHARS",
    "MAX_BODY_CHARS",
    "Command",
    "Keyword",
    "Language",
    "damerau_levenshtein",
    "parse_sms",
]

# Ten concatenated SMS segments; anything longer is not a command.
MAX_BODY_CHARS: Final = 1600
MAX_ACCOUNT_CHARS: Final = 32


class Keyword(StrEnum):
    """What the sender asked for."""

    restore = "restore"
    login = "login"
    code = "code"
    call = "call"
    help = "help"
    stop = "stop"
    start = "start"
    operator = "operator"
    cancel = "cancel"
    unknown = "unknown"


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed SMS: the keyword, its argument and the language it was written in."""

    keyword: Keyword
    # The argument can be a one-time code, so it stays out of the repr.
    argument: str = field(default="", repr=False)
    language: Language = Language.ru


# Every spelling a keyword is recognised by, with the language it signals.
# Words that are the same in English and in transliteration ("login", "stop",
# "start", "operator") count as English: the reply can then be read by anyone.
_VOCABULARY: Final[dict[str, tuple[Keyword, Language]]] = {
    # Russian
    "восстановить": (Keyword.restore, Language.ru),
    "восстановление": (Keyword.restore, Language.ru),
    "логин": (Keyword.login, Language.ru),
    "код": (Keyword.code, Language.ru),
    "звонок": (Keyword.call, Language.ru),
    "позвоните": (Keyword.call, Language.ru),
    "позвонить": (Keyword.call, Language.ru),
    "помощь": (Keyword.help, Language.ru),
    "справка": (Keyword.help, Language.ru),
    "стоп": (Keyword.stop, Language.ru),
    "отписаться": (Keyword.stop, Language.ru),
    "отписка": (Keyword.stop, Language.ru),
    "старт": (Keyword.start, Language.ru),
    "подписаться": (Keyword.start, Language.ru),
    "оператор": (Keyword.operator, Language.ru),
    "человек": (Keyword.operator, Language.ru),
    "перезвоните": (Keyword.operator, Language.ru),
    "отмена": (Keyword.cancel, Language.ru),
    "отменить": (Keyword.cancel, Language.ru),
    # Russian in Latin letters
    "vosstanovit": (Keyword.restore, Language.ru),
    "kod": (Keyword.code, Language.ru),
    "zvonok": (Keyword.call, Language.ru),
    "pozvonite": (Keyword.call, Language.ru),
    "pomosch": (Keyword.help, Language.ru),
    "pomosh": (Keyword.help, Language.ru),
    "pomoshch": (Keyword.help, Language.ru),
    "spravka": (Keyword.help, Language.ru),
    "otpisatsya": (Keyword.stop, Language.ru),
    "otpiska": (Keyword.stop, Language.ru),
    "podpisatsya": (Keyword.start, Language.ru),
    "chelovek": (Keyword.operator, Language.ru),
    "perezvonite": (Keyword.operator, Language.ru),
    "otmena": (Keyword.cancel, Language.ru),
    # English
    "restore": (Keyword.restore, Language.en),
    "login": (Keyword.login, Language.en),
    "code": (Keyword.code, Language.en),
    "call": (Keyword.call, Language.en),
    "help": (Keyword.help, Language.en),
    "info": (Keyword.help, Language.en),
    "stop": (Keyword.stop, Language.en),
    "stopall": (Keyword.stop, Language.en),
    "unsubscribe": (Keyword.stop, Language.en),
    "end": (Keyword.stop, Language.en),
    "quit": (Keyword.stop, Language.en),
    "start": (Keyword.start, Language.en),
    "unstop": (Keyword.start, Language.en),
    "operator": (Keyword.operator, Language.en),
    "cancel": (Keyword.cancel, Language.en),
}

# Real words within typo reach of a keyword that mean something else.
_DECOYS: Final = frozenset(
    {
        "описка",  # "slip of the pen", one edit from "отписка"
        "справа",  # "on the right", one edit from "справка"
        "logic",
        "cancer",
    }
)

_WHOLE_MESSAGE_ONLY: Final = frozenset({Keyword.stop, Keyword.start})
_EXACT_ONLY: Final = frozenset({Keyword.start})
_WITH_ARGUMENT: Final = frozenset({Keyword.restore, Keyword.login, Keyword.code})

# Keywords longer than this are not worth a fuzzy comparison.
_MAX_WORD_CHARS: Final = 24

# Letters that look the same in both alphabets (after lower-casing; B, H, M, T
# and K are upper-case look-alikes that lower-case differently).
_LATIN_TO_CYRILLIC: Final = str.maketrans("abcehkmoptxy", "авсенкмортху")
_CYRILLIC_TO_LATIN: Final = str.maketrans("авсенкмортху", "abcehkmoptxy")

_CYRILLIC_RE: Final = re.compile(r"[а-я]")
_LATIN_RE: Final = re.compile(r"[a-z]")
_ALNUM_RE: Final = re.compile(r"[^\W_]")
_LETTER_RE: Final = re.compile(r"[^\W\d_]")
_WORD_RE: Final = re.compile(r"[^\W\d_]+")
_CHUNK_RE: Final = re.compile(r"[0-9a-zа-я]+")
_DIGIT_RE: Final = re.compile(r"[0-9]")
# What may join a letter group to the digits of an account ("AB-12345").
_TIGHT_SEPARATOR_RE: Final = re.compile(r"[-‐‑‒–—/.]*")
_QUESTION_ONLY_RE: Final = re.compile(r"\?+")


def parse_sms(body: str) -> Command:
    """Parse an inbound SMS body into a command; never raises."""
    if not isinstance(body, str) or len(body) > MAX_BODY_CHARS:
        return Command(Keyword.unknown)
    text = _normalise(body)

    first = _ALNUM_RE.search(text)
    if first is None:
        if _QUESTION_ONLY_RE.fullmatch(text.replace(" ", "")):
            return Command(Keyword.help)
        return Command(Keyword.unknown, language=_script_language(text))

    word_match = _WORD_RE.match(text, first.start())
    if word_match is None:
        return _bare_number(text)

    match = _match_keyword(_unify_script(word_match.group()))
    rest = text[word_match.end() :]
    if match is None:
        return Command(Keyword.unknown, language=_script_language(text))
    keyword, language = match
    if keyword in _WHOLE_MESSAGE_ONLY and _ALNUM_RE.search(rest):
        return Command(Keyword.unknown, language=_script_language(text))
    argument = _argument(keyword, rest) if keyword in _WITH_ARGUMENT else ""
    return Command(keyword, argument, language)


def damerau_levenshtein(a: str, b: str) -> int:
    """Edits (insert, delete, substitute, swap neighbours) that turn ``a`` into ``b``."""
    # Optimal string alignment: no substring is edited twice, which is what a
    # typo is; the full metric would only differ on contrived strings.
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, start=1):
            cost = 0 if ca == cb else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[len(b)]


def _normalise(body: str) -> str:
    # "№" is "номер"; NFKC would turn it into the letters "No".
    text = body.replace("№", " ")
    text = unicodedata.normalize("NFKC", text)
    out: list[str] = []
    for char in text:
        category = unicodedata.category(char)
        if category == "Cf":
            # Zero-width and soft-hyphen characters sit inside words.
            continue
        out.append(" " if category[0] in "CZ" else char)
    return "".join(out).lower().replace("ё", "е")


def _unify_script(word: str) -> str:
    """Rewrite look-alike letters of a mixed-script word into one alphabet."""
    if not _CYRILLIC_RE.search(word) or not _LATIN_RE.search(word):
        return word
    # Prefer the rewrite that leaves a single alphabet ("BOCCTAHOBИTЬ" can only
    # be Cyrillic); if both do, the alphabet most of the letters are in.
    as_cyrillic = word.translate(_LATIN_TO_CYRILLIC)
    as_latin = word.translate(_CYRILLIC_TO_LATIN)
    cyrillic_clean = not _LATIN_RE.search(as_cyrillic)
    latin_clean = not _CYRILLIC_RE.search(as_latin)
    if cyrillic_clean and latin_clean:
        cyrillic = len(_CYRILLIC_RE.findall(word))
        return as_cyrillic if cyrillic * 2 >= len(word) else as_latin
    if cyrillic_clean:
        return as_cyrillic
    if latin_clean:
        return as_latin
    return word


def _allowed_edits(typed: str, known: str) -> int:
    shorter = min(len(typed), len(known))
    if shorter >= 9:
        return 2 if typed[0] == known[0] else 1
    if shorter >= 5:
        return 1
    return 0


def _match_keyword(word: str) -> tuple[Keyword, Language] | None:
    exact = _VOCABULARY.get(word)
    if exact is not None:
        return exact
    if word in _DECOYS or len(word) > _MAX_WORD_CHARS:
        return None
    best: tuple[Keyword, Language] | None = None
    best_distance = _MAX_WORD_CHARS
    tied = False
    for known, (keyword, language) in _VOCABULARY.items():
        if keyword in _EXACT_ONLY:
            continue
        allowed = _allowed_edits(word, known)
        if allowed == 0 or abs(len(word) - len(known)) > allowed:
            continue
        distance = damerau_levenshtein(word, known)
        if distance > allowed or distance > best_distance:
            continue
        if distance < best_distance:
            best, best_distance, tied = (keyword, language), distance, False
        elif best is not None and best[0] != keyword:
            tied = True
    return None if tied else best


def _argument(keyword: Keyword, rest: str) -> str:
    account = _account(rest)
    if keyword is Keyword.code:
        return account if well_formed_code(account) else ""
    return account


def _account(rest: str) -> str:
    """The account number in ``rest``: digit groups joined, with letters stuck to them."""
    chunks = list(_CHUNK_RE.finditer(rest))

    def has_digit(index: int) -> bool:
        return 0 <= index < len(chunks) and _DIGIT_RE.search(chunks[index].group()) is not None

    def tight(left: int, right: int) -> bool:
        separator = rest[chunks[left].end() : chunks[right].start()]
        return _TIGHT_SEPARATOR_RE.fullmatch(separator) is not None

    parts: list[str] = []
    for index, chunk in enumerate(chunks):
        text = chunk.group()
        if has_digit(index):
            parts.append(text)
            continue
        # A short letter group belongs to the account only when written against
        # its digits ("AB-12345"); words around the number ("лс", "пожалуйста") do not.
        glued = len(text) <= 4 and (
            (has_digit(index + 1) and tight(index, index + 1))
            or (bool(parts) and has_digit(index - 1) and tight(index - 1, index))
        )
        if glued:
            parts.append(text)
        elif parts:
            break
    account = "".join(parts).upper()
    if not _DIGIT_RE.search(account) or len(account) > MAX_ACCOUNT_CHARS:
        return ""
    return account


def _bare_number(text: str) -> Command:
    # A message of digits alone: a code if it has six; a code with a digit missed or doubled
    # if it has five or seven (the dialog answers "the code has six digits", not "we did not
    # understand"); anything else is not understood.
    if _LETTER_RE.search(text) is None:
        alnum = _ALNUM_RE.findall(text)
        digits = "".join(alnum)
        if abs(len(digits) - CODE_DIGITS) <= 1 and digits.isascii() and digits.isdigit():
            # The argument is a well-formed code or nothing, as after "КОД 12345".
            return Command(Keyword.code, digits if well_formed_code(digits) else "", Language.ru)
    return Command(Keyword.unknown, language=_script_language(text))


def _script_language(text: str) -> Language:
    if _CYRILLIC_RE.search(text) or not _LATIN_RE.search(text):
        return Language.ru
    return Language.en
