from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from core.kit.phones import InvalidPhoneNumber, parse_phone
from core.models import LineType


def _phonenumbers_verdict(raw: str, region: str) -> str | None:
    """The E.164 form when phonenumbers itself calls the number valid, else None."""
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@given(
    prefix=st.sampled_from(["+7", "8", "+", "", "+44", "+1", "+882", "+800", "7"]),
    digits=st.text(alphabet="0123456789", min_size=1, max_size=13),
    region=st.sampled_from(["RU", "KZ", "GB"]),
)
@example(prefix="+7", digits="9123456789", region="RU")  # a mobile
@example(prefix="8", digits="4951234567", region="RU")  # a Moscow landline
@example(prefix="+7", digits="0001234567", region="RU")  # no such range
@example(prefix="+882", digits="1234567890", region="RU")  # an international network
def test_parse_phone_accepts_exactly_what_phonenumbers_calls_valid(
    prefix: str, digits: str, region: str
) -> None:
    # parse_phone asks phonenumbers for the line type only: UNKNOWN must mean invalid.
    raw = prefix + digits
    expected = _phonenumbers_verdict(raw, region)
    try:
        phone = parse_phone(raw, region)
    except InvalidPhoneNumber:
        assert expected is None
    else:
        assert phone.e164 == expected


@pytest.mark.parametrize(
    ("raw", "line_type"),
    [
        ("+7 912 345-67-89", LineType.mobile),
        ("8 (495) 123-45-67", LineType.fixed),
        ("8 800 555-35-35", LineType.fixed),  # toll-free: a line, not a mobile
    ],
)
def test_parse_phone_tells_the_line_type(raw: str, line_type: LineType) -> None:
    assert parse_phone(raw).line_type == line_type
