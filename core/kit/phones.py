"""Phone numbers: parse, normalise, classify and mask with phonenumbers."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType

from core.models import LineType

_MOBILE_TYPES = {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE}
_FIXED_TYPES = {PhoneNumberType.FIXED_LINE, PhoneNumberType.VOIP, PhoneNumberType.TOLL_FREE}
# The lines a resident's own phone is on. Everything else (premium rate, shared cost, toll-free,
# UAN, personal/forwarding numbers, pagers, voicemail, a type phonenumbers cannot tell) is where
# SMS pumping and toll fraud earn their money, and no resident needs a text or a call there.
_ORDINARY_TYPES = frozenset(
    {
        PhoneNumberType.MOBILE,
        PhoneNumberType.FIXED_LINE_OR_MOBILE,
        PhoneNumberType.FIXED_LINE,
        PhoneNumberType.VOIP,
    }
)
# phonenumbers' region for calling codes of no country: satellite (+881), international
# networks (+882, +883), global freephone (+800)...
NON_GEOGRAPHIC = "001"


class InvalidPhoneNumber(ValueError):
    """The text is not a valid phone number."""


@dataclass(frozen=True, slots=True)
class Phone:
    """A valid phone number in E.164 with its line type."""

    e164: str
    line_type: LineType

    def __repr__(self) -> str:
        return f"Phone({mask_phone(self.e164)}, {self.line_type})"


def parse_phone(raw: str, region: str = "RU") -> Phone:
    """Parse a number as residents write it ("8 912 …", "+7…") into a Phone."""
    text = raw.strip()
    if not text or len(text) > 32:
        raise InvalidPhoneNumber("empty or overlong phone number")
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException as exc:
        raise InvalidPhoneNumber(f"not a phone number ({exc.error_type})") from None
    # number_type() is UNKNOWN exactly when is_valid_number() is false (both match the number
    # against its region's patterns, tests/core/kit/test_phones.py): one call costs half of two.
    kind = phonenumbers.number_type(number)
    if kind == PhoneNumberType.UNKNOWN:
        raise InvalidPhoneNumber("not a valid phone number")
    if kind in _MOBILE_TYPES:
        line_type = LineType.mobile
    elif kind in _FIXED_TYPES:
        line_type = LineType.fixed
    else:
        line_type = LineType.unknown
    return Phone(
        e164=phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164),
        line_type=line_type,
    )


def outbound_allowed(e164: str, countries: Collection[str]) -> bool:
    """Whether we may text or call this number at all (§6.14): an ordinary line in a country
    we serve. Fails closed: a number phonenumbers cannot place is refused."""
    try:
        number = phonenumbers.parse(e164, None)
    except NumberParseException:
        return False
    if not phonenumbers.is_valid_number(number):
        return False
    region = phonenumbers.region_code_for_number(number) or ""
    if region == NON_GEOGRAPHIC or region not in countries:
        return False
    return phonenumbers.number_type(number) in _ORDINARY_TYPES


def mask_phone(e164: str | None) -> str:
    """Keep the country code and the last two digits: +7*******67."""
    if not e164:
        return "-"
    digits = e164.lstrip("+")
    if len(digits) < 5:
        return "+" + "*" * len(digits)
    return "+" + digits[0] + "*" * (len(digits) - 3) + digits[-2:]


def mask_account(account_number: str | None) -> str:
    """Keep the last three characters of an account number: ******123."""
    if not account_number:
        return "-"
    visible = 3 if len(account_number) > 5 else 1
    return "*" * (len(account_number) - visible) + account_number[-visible:]
