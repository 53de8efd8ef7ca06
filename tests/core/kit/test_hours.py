"""Working hours: the schedule's grammar, Moscow boundaries, weekends, holidays, and its words."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from core.kit.schedule import HoursError, Interval, Schedule, parse_hours, parse_zone
from core.kit.segments import segment_report
from core.platform.settings import Settings
from voice_prompts import Language, load_catalogue

MOSCOW = ZoneInfo("Europe/Moscow")
WEEKDAYS_AND_SATURDAY = "mon-fri 08:00-20:00; sat 10:00-16:00"
PROMPTS = load_catalogue()


def schedule(
    hours: str = WEEKDAYS_AND_SATURDAY,
    *,
    holidays: frozenset[date] = frozenset(),
    official: bool = False,
) -> Schedule:
    return Schedule(
        days=parse_hours(hours), zone=MOSCOW, holidays=holidays, official_holidays=official
    )


def moscow(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=MOSCOW)


# 2026-11-24 is a Tuesday, 2026-11-28 a Saturday, 2026-11-29 a Sunday.
TUESDAY = (2026, 11, 24)
SATURDAY = (2026, 11, 28)
SUNDAY = (2026, 11, 29)


def test_parse_groups_days_and_times() -> None:
    days = parse_hours(WEEKDAYS_AND_SATURDAY)
    assert sorted(days) == [0, 1, 2, 3, 4, 5]
    assert days[0] == days[4] == Interval(8 * 60, 20 * 60)
    assert days[5] == Interval(10 * 60, 16 * 60)
    assert parse_hours("") == {}
    assert parse_hours("  SUN 9:30-24:00 ") == {6: Interval(9 * 60 + 30, 24 * 60)}


@pytest.mark.parametrize(
    "text",
    [
        "weekdays 08:00-20:00",
        "fri-mon 08:00-20:00",
        "mon-fri 20:00-08:00",
        "mon-fri 08:00-08:00",
        "mon-fri 25:00-26:00",
        "mon-fri 08:60-20:00",
        "mon-fri 8-20",
        "mon-fri 08:00-20:00; fri 10:00-12:00",
        "mon 08:00-20:00; tue 08:00-19:00; wed 08:00-18:00; thu 08:00-17:00",
    ],
)
def test_bad_schedules_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(HoursError):
        parse_hours(text)


def test_settings_refuse_a_bad_schedule_zone_or_operator_number() -> None:
    for field, value in (
        ("operator_hours", "every day"),
        ("operator_timezone", "Mars/Olympus"),
        ("operator_number", "operator"),
        ("operator_number", "sip:nobody"),
    ):
        with pytest.raises(ValidationError):
            Settings.model_validate({field: value})
    assert Settings(_env_file=None, operator_number="sip:desk@pbx.example.org").operator_number


def test_default_settings_are_always_open_in_moscow() -> None:
    settings = Settings(_env_file=None)
    assert settings.operator_timezone == "Europe/Moscow"
    desk = Schedule.from_settings(settings)
    assert desk.always_open
    assert desk.is_open(moscow(*SUNDAY, 3, 0)) and desk.is_open(moscow(2027, 1, 1, 12, 0))


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (moscow(*TUESDAY, 7, 59), False),
        (moscow(*TUESDAY, 8, 0), True),
        (moscow(*TUESDAY, 19, 59), True),
        (moscow(*TUESDAY, 20, 0), False),
        (moscow(*SATURDAY, 9, 59), False),
        (moscow(*SATURDAY, 10, 0), True),
        (moscow(*SATURDAY, 15, 59), True),
        (moscow(*SATURDAY, 16, 0), False),
        (moscow(*SUNDAY, 12, 0), False),
    ],
)
def test_moscow_boundaries_and_weekends(moment: datetime, expected: bool) -> None:
    assert schedule().is_open(moment) is expected


def test_utc_instants_are_read_in_moscow_time() -> None:
    """Moscow is UTC+3 all year (no DST): 05:00 UTC is 08:00 in Moscow, in winter and summer."""
    desk = schedule()
    for month, day in ((1, 13), (7, 14)):  # Tuesdays in winter and summer
        assert not desk.is_open(datetime(2026, month, day, 4, 59, tzinfo=UTC))
        assert desk.is_open(datetime(2026, month, day, 5, 0, tzinfo=UTC))
        assert desk.is_open(datetime(2026, month, day, 16, 59, tzinfo=UTC))
        assert not desk.is_open(datetime(2026, month, day, 17, 0, tzinfo=UTC))


def test_configured_holiday_closes_the_day() -> None:
    desk = schedule(holidays=frozenset({date(*TUESDAY)}))
    assert not desk.is_open(moscow(*TUESDAY, 12, 0))
    assert desk.is_open(moscow(2026, 11, 25, 12, 0))


def test_official_russian_holidays() -> None:
    with_official = schedule(official=True)
    without = schedule(official=False)
    # 4 November (Unity Day, a Wednesday in 2026), 9 March 2026 (the 8 March holiday moved).
    for day in (date(2026, 11, 4), date(2026, 3, 9), date(2027, 1, 4)):
        noon = datetime.combine(day, datetime.min.time(), MOSCOW) + timedelta(hours=12)
        assert not with_official.is_open(noon), day
        assert without.is_open(noon), day
    assert with_official.is_open(moscow(*TUESDAY, 12, 0))


def test_the_hours_in_words() -> None:
    desk = schedule()
    assert desk.describe(PROMPTS, Language.ru) == (
        "с понедельника по пятницу с восьми до двадцати, в субботу с десяти до шестнадцати"
    )
    assert desk.describe(PROMPTS, Language.en) == (
        "Monday to Friday, 8 a.m. to 8 p.m.; on Saturday, 10 a.m. to 4 p.m."
    )
    assert desk.describe(PROMPTS, Language.ru, short=True) == "пн–пт 8:00–20:00, сб 10:00–16:00"
    assert schedule("").describe(PROMPTS, Language.ru) == "круглосуточно"
    # Days with the same hours that are not next to each other are named separately.
    split = schedule("mon 09:00-18:00; wed-thu 09:00-18:00")
    assert schedule("mon 08:30-24:00").describe(PROMPTS, Language.ru) == (
        "в понедельник с восьми тридцати до двадцати четырёх"
    )
    assert schedule("mon 00:00-12:05").describe(PROMPTS, Language.en) == (
        "on Monday, midnight to 12:05 p.m."
    )
    assert split.describe(PROMPTS, Language.ru, short=True) == ("пн 9:00–18:00, ср–чт 9:00–18:00")


# The longest schedule the grammar allows: three groups, each day with its own range.
LONGEST = "mon-tue 10:30-20:30; wed-fri 11:30-21:30; sat-sun 12:30-16:30"


@pytest.mark.parametrize("language", list(Language))
def test_after_hours_sms_reply_fits_two_segments_at_its_longest(language: Language) -> None:
    """The after-hours SMS reply is the catalogue's sentence and the compact hours (sms/router)."""
    hours = schedule(LONGEST).describe(PROMPTS, language, short=True)
    text = f"{PROMPTS.text('sms.reply_callback_closed', language)} {hours}"
    _, _, segments = segment_report(text)
    assert segments <= 2, (language, len(text))


def test_zone_errors_are_clear() -> None:
    with pytest.raises(HoursError, match="time zone"):
        parse_zone("Nowhere/Special")
    assert parse_zone("Europe/Moscow") == MOSCOW


def test_the_hours_pieces_exist_in_every_language() -> None:
    for language in Language:
        for key in ("from_day", "to_day", "on_day", "short_from_day", "short_to_day"):
            assert len(PROMPTS.words(f"hours.{key}", language)) == 7, (key, language)
        assert len(PROMPTS.words("hours.short_on_day", language)) == 7
        assert PROMPTS.text("hours.always", language)
    assert [PROMPTS.count("hours.minutes", n, Language.ru) for n in (1, 3, 5, 11, 21, 22)] == [
        "1 минута",
        "3 минуты",
        "5 минут",
        "11 минут",
        "21 минута",
        "22 минуты",
    ]
    assert PROMPTS.count("hours.minutes", 1, Language.en) == "1 minute"
    assert PROMPTS.count("hours.minutes", 12, Language.en) == "12 minutes"
