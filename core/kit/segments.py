"""How many SMS segments a text costs, counted the way carriers and Twilio bill it (§4, §9).

A text that uses only the GSM 03.38 alphabet travels as GSM-7: 160 septets in a single segment,
153 per part once it has to be concatenated (the user-data header takes the rest). A character of
the extension table (``^{}\\[~]|€`` and form feed) is an escape plus a septet, so it costs 2.
Any other character (Cyrillic, for one) switches the whole text to UCS-2: 70 UTF-16 code units in
a single segment, 67 per part; a character outside the BMP (an emoji) is a surrogate pair, 2 units.
Parts are filled greedily and an escape sequence or a surrogate pair is never split between two
parts, so a part can hold a unit less than its nominal size.

Run ``python -m core.kit.segments`` for the budget table of every outbound SMS text in the prompt
catalogue, filled with worst-case values (the same figures ``tests/test_sms_texts.py`` checks).
"""

from __future__ import annotations

import re
import string
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias

from core.platform.settings import TEMP_PASSWORD_TTL_MAX_HOURS

if TYPE_CHECKING:
    from core.platform.settings import Settings
    from voice_prompts import Catalogue, Language

Encoding: TypeAlias = Literal["GSM-7", "UCS-2"]

# The GSM 03.38 basic character set, in table order (0x1B, the escape to the extension table, is
# not a character of its own).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The extension table: each of these is sent as escape + septet.
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")

SINGLE_SEGMENT: Mapping[Encoding, int] = {"GSM-7": 160, "UCS-2": 70}
CONCATENATED_PART: Mapping[Encoding, int] = {"GSM-7": 153, "UCS-2": 67}


def sms_encoding(text: str) -> Encoding:
    """GSM-7 if every character is in the GSM 03.38 alphabet (extension included), else UCS-2."""
    if all(char in GSM7_BASIC or char in GSM7_EXTENSION for char in text):
        return "GSM-7"
    return "UCS-2"


def _unit_costs(text: str, encoding: Encoding) -> list[int]:
    """What each character costs: septets in GSM-7, UTF-16 code units in UCS-2."""
    if encoding == "GSM-7":
        return [2 if char in GSM7_EXTENSION else 1 for char in text]
    return [2 if ord(char) > 0xFFFF else 1 for char in text]


def _segments(costs: list[int], encoding: Encoding) -> int:
    if sum(costs) <= SINGLE_SEGMENT[encoding]:
        return 1  # the empty text too: it is still one message
    part = CONCATENATED_PART[encoding]
    parts, used = 1, 0
    for cost in costs:
        if used + cost > part:  # an escape sequence or surrogate pair is never split
            parts, used = parts + 1, 0
        used += cost
    return parts


def segment_report(text: str) -> tuple[Encoding, int, int]:
    """The encoding, the length in its units (septets or UTF-16 code units), and the segments."""
    encoding = sms_encoding(text)
    costs = _unit_costs(text, encoding)
    return encoding, sum(costs), _segments(costs, encoding)


def sms_segments(text: str) -> int:
    """How many SMS segments a carrier bills for this text."""
    return segment_report(text)[2]


# --- the budget of the product's own SMS texts --------------------------------------------------

SMS_SECTION = "sms."
# Placeholders that stand for a number: the worst case is a 3-digit value.
NUMERIC_NAMES = frozenset(
    {"number", "count", "minutes", "seconds", "days", "attempts", "tries", "left", "remaining"}
)
NUMERIC_SUFFIXES = ("_number", "_count", "_minutes", "_seconds", "_days", "_left", "_remaining")
WORST_NUMBER = 999
WORST_CODE = "999999"
WORST_LOGIN = "ivanova.marina.sergeevna.1234567"  # 32 characters
WORST_ACCOUNT = "*********123"  # a masked account number, 12 characters
_FIELD_ROOT = re.compile(r"[^.\[]*")


class UnknownPlaceholderError(LookupError):
    """An SMS text has a placeholder whose worst-case value nobody has decided yet."""

    def __init__(self, key: str, placeholder: str) -> None:
        super().__init__(
            f"{key} has the placeholder {{{placeholder}}} with no worst-case value: "
            "decide one in core/kit/segments.py (worst_case_values)"
        )
        self.key = key
        self.placeholder = placeholder


# Replies followed by the operators' working hours (core/kit/schedule.py, the short form).
REPLIES_WITH_HOURS = frozenset({"sms.reply_callback_closed"})
# The longest working hours the settings accept: three groups of days (the most the parser
# takes), each a range of days with two-digit hours that differ, so that none merge.
WORST_HOURS = "mon-tue 10:00-20:00; wed-thu 11:00-21:00; fri-sat 10:00-19:00"
# What a recovery by SMS hands the resident after the code: one segment each, so that the
# whole recovery costs two (§4, §9: the code reply and the credential).
CREDENTIALS = frozenset({"sms.temporary_password", "sms.login"})


def sms_budget(key: str) -> int:
    """The most segments an SMS text may take (§4): a one-time code 1, a reply 1, the
    credential of a recovery 1, anything else 2.

    A reply goes to whoever texts us, so its segments are what SMS pumping earns per message
    sent (§6.14): 1, the working hours that follow the after-hours reply included.
    """
    name = key.removeprefix(SMS_SECTION)
    if "code" in name or name.startswith("reply_") or key in CREDENTIALS:
        return 1
    return 2


def worst_string(alphabet: str, length: int) -> str:
    """A string of `length` characters from `alphabet`, its most expensive characters first.

    A character outside GSM-7 (one is enough to make the text UCS-2) comes first, and among the
    rest those that cost 2 units; then the alphabet repeats in that order.
    """

    def cost(char: str) -> tuple[bool, int]:
        gsm = char in GSM7_BASIC or char in GSM7_EXTENSION
        units = 2 if char in GSM7_EXTENSION or ord(char) > 0xFFFF else 1
        return (not gsm, units)

    ranked = sorted(dict.fromkeys(alphabet), key=cost, reverse=True)
    return "".join(ranked[index % len(ranked)] for index in range(length))


def worst_case_values(settings: Settings) -> dict[str, object]:
    """The longest, most expensive value each known placeholder of an SMS text can take."""
    return {
        "code": WORST_CODE,
        "password": worst_string(settings.temp_password_alphabet, settings.temp_password_length),
        "login": WORST_LOGIN,
        # The longest lifetime the settings accept, not the one configured: a deployment may
        # raise it, and the text must still fit.
        "hours": TEMP_PASSWORD_TTL_MAX_HOURS,
        "hotline": settings.hotline_number,
        "account": WORST_ACCOUNT,
        # Catalogue.wait says minutes below an hour, else hours (a day at most): "59 minutes"
        # is the longest.
        "wait": "59 minutes",
    }


def is_numeric_placeholder(name: str) -> bool:
    """Whether a placeholder's name says it holds a number ("count", "attempts_left"...)."""
    return name in NUMERIC_NAMES or name.endswith(NUMERIC_SUFFIXES)


def placeholders(template: str) -> list[str]:
    """The names of a template's placeholders, in order; "" for a positional `{}`."""
    names: list[str] = []
    for _literal, field, _spec, _conversion in string.Formatter().parse(template):
        if field is not None:
            match = _FIELD_ROOT.match(field)
            names.append(match.group() if match else field)
    return names


def worst_case_text(
    catalogue: Catalogue, key: str, language: Language, values: Mapping[str, object]
) -> str:
    """The text of `key` with every placeholder at its worst case.

    Raises UnknownPlaceholderError for a placeholder with no decided worst case (or a positional
    one), and KeyError if the language has no such text.
    """
    params: dict[str, object] = {}
    for name in placeholders(catalogue.text(key, language)):
        if name in values:
            params[name] = values[name]
        elif name and not name.isdigit() and is_numeric_placeholder(name):
            params[name] = WORST_NUMBER
        else:
            raise UnknownPlaceholderError(key, name)
    text = catalogue.text(key, language, **params)
    if key in REPLIES_WITH_HOURS:
        # As sms/router.py sends it: the text, a space, the hours in their short form.
        from core.kit.schedule import Schedule, parse_hours

        hours = Schedule(days=parse_hours(WORST_HOURS)).describe(catalogue, language, short=True)
        text = f"{text} {hours}"
    return text


def sms_keys(catalogue: Catalogue) -> list[str]:
    """Every `sms.*` key of any language, sorted."""
    from voice_prompts import Language

    return sorted(
        {key for lang in Language for key in catalogue.keys(lang) if key.startswith(SMS_SECTION)}
    )


@dataclass(frozen=True)
class BudgetRow:
    """One SMS text in one language, filled with worst-case values."""

    key: str
    language: str
    encoding: Encoding | None
    characters: int
    units: int
    segments: int
    budget: int
    problem: str | None = None

    @property
    def over_budget(self) -> bool:
        return self.problem is not None or self.segments > self.budget


def budget_rows(catalogue: Catalogue, settings: Settings) -> Iterator[BudgetRow]:
    """A row for every SMS text in every language."""
    from voice_prompts import Language

    values = worst_case_values(settings)
    for key in sms_keys(catalogue):
        for language in Language:
            budget = sms_budget(key)
            try:
                text = worst_case_text(catalogue, key, language, values)
            except UnknownPlaceholderError as exc:
                yield BudgetRow(key, language.value, None, 0, 0, 0, budget, str(exc))
                continue
            except KeyError:
                yield BudgetRow(key, language.value, None, 0, 0, 0, budget, "missing")
                continue
            encoding, units, segments = segment_report(text)
            yield BudgetRow(key, language.value, encoding, len(text), units, segments, budget)


def main() -> int:
    """Print the budget table; exit 1 if a text is over budget or cannot be filled."""
    from core.platform.settings import Settings
    from voice_prompts import load_catalogue

    settings = Settings(_env_file=None)
    worst = worst_case_values(settings)
    rows = list(budget_rows(load_catalogue(), settings))
    header = ("key", "lang", "encoding", "chars", "units", "segments", "budget", "")
    table = [
        (
            row.key,
            row.language,
            row.encoding or "-",
            str(row.characters),
            str(row.units),
            str(row.segments),
            str(row.budget),
            row.problem or ("OVER BUDGET" if row.over_budget else ""),
        )
        for row in rows
    ]
    widths = [max(len(line[column]) for line in [header, *table]) for column in range(7)]
    for line in [header, *table]:
        cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1]), line[2].ljust(widths[2])]
        cells += [cell.rjust(width) for cell, width in zip(line[3:7], widths[3:], strict=True)]
        print("  ".join([*cells, line[7]]).rstrip())
    print(
        f"\nWorst cases: code {len(WORST_CODE)} digits, password "
        f"{settings.temp_password_length} characters, login {len(WORST_LOGIN)} characters, "
        f"account {len(WORST_ACCOUNT)} characters, numbers {len(str(WORST_NUMBER))} digits, "
        f"{worst['hours']} hours, hotline {settings.hotline_number}."
    )
    return 1 if any(row.over_budget for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
