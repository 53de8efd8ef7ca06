"""The operator desk's working hours: a weekly schedule in a time zone, with holidays (§3).

Pure: every answer is computed from the `now` it is given (callers inject the clock), so tests
set the time instead of waiting for it. The schedule is written in configuration as
`"mon-fri 08:00-20:00; sat 10:00-16:00"`: groups of days (a day or a range) with one interval
each; a day not named is a day off. The text of the hours (for prompts and SMS) is built from
the [hours] fragments of the prompt catalogue, so it follows the caller's language.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cache
from typing import TYPE_CHECKING, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays as official_holidays

if TYPE_CHECKING:
    from voice_prompts import Catalogue, Language

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# At most this many groups of days with their own hours: the text must fit an SMS reply.
MAX_GROUPS = 3
END_OF_DAY = 24 * 60


class HoursSettings(Protocol):
    """What a schedule is read from: the platform's Settings (which imports this module)."""

    @property
    def operator_hours(self) -> str: ...
    @property
    def operator_timezone(self) -> str: ...
    @property
    def operator_holidays(self) -> Sequence[date]: ...
    @property
    def operator_official_holidays(self) -> bool: ...


_GROUP = re.compile(
    r"^(?P<first>[a-z]{3})(?:-(?P<last>[a-z]{3}))?\s+"
    r"(?P<opens>\d{1,2}:\d{2})-(?P<closes>\d{1,2}:\d{2})$"
)


class HoursError(ValueError):
    """The schedule in configuration cannot be understood."""


@dataclass(frozen=True, slots=True)
class Interval:
    """Opening hours of one day, in minutes after midnight (`closes` may be 24:00)."""

    opens: int
    closes: int

    def contains(self, minute: int) -> bool:
        return self.opens <= minute < self.closes


def _minutes(text: str) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    if minutes >= 60 or hours > 24 or (hours == 24 and minutes):
        raise HoursError(f"{text} is not a time of day")
    return hours * 60 + minutes


def parse_hours(text: str) -> dict[int, Interval]:
    """Weekday (0 = Monday) → its interval; empty text → an empty schedule (always open)."""
    days: dict[int, Interval] = {}
    groups = [part.strip().lower() for part in text.split(";") if part.strip()]
    if len(groups) > MAX_GROUPS:
        raise HoursError(f"at most {MAX_GROUPS} groups of days, like 'mon-fri 08:00-20:00'")
    for group in groups:
        match = _GROUP.match(re.sub(r"\s+", " ", group))
        if match is None:
            raise HoursError(f"{group!r} is not like 'mon-fri 08:00-20:00'")
        first, last = match["first"], match["last"] or match["first"]
        if first not in DAYS or last not in DAYS or DAYS.index(last) < DAYS.index(first):
            raise HoursError(f"{group!r}: days are mon, tue, wed, thu, fri, sat, sun, in order")
        interval = Interval(_minutes(match["opens"]), _minutes(match["closes"]))
        if interval.closes <= interval.opens:
            raise HoursError(f"{group!r}: the desk must close after it opens")
        for day in range(DAYS.index(first), DAYS.index(last) + 1):
            if day in days:
                raise HoursError(f"{group!r}: {DAYS[day]} is named twice")
            days[day] = interval
    return days


def parse_zone(name: str) -> ZoneInfo:
    """The time zone, or a clear error."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise HoursError(f"{name!r} is not a known time zone") from exc


@dataclass(frozen=True)
class Schedule:
    """When operators take calls."""

    days: Mapping[int, Interval] = field(default_factory=dict)
    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("Europe/Moscow"))
    holidays: frozenset[date] = frozenset()
    official_holidays: bool = False

    @property
    def always_open(self) -> bool:
        """No schedule configured: the desk takes calls at any time."""
        return not self.days

    @classmethod
    def from_settings(cls, settings: HoursSettings) -> Schedule:
        """The schedule the settings describe (cached per distinct configuration)."""
        return _schedule(
            settings.operator_hours,
            settings.operator_timezone,
            tuple(settings.operator_holidays),
            settings.operator_official_holidays,
        )

    def is_holiday(self, day: date) -> bool:
        """A configured day off, or (when enabled) an official Russian non-working day."""
        return day in self.holidays or (self.official_holidays and day in _russian_holidays())

    def is_open(self, now: datetime) -> bool:
        """Whether operators take calls at `now` (an aware datetime)."""
        if self.always_open:
            return True
        local = now.astimezone(self.zone)
        if self.is_holiday(local.date()):
            return False
        interval = self.days.get(local.weekday())
        return interval is not None and interval.contains(local.hour * 60 + local.minute)

    def groups(self) -> list[tuple[int, int, Interval]]:
        """Runs of consecutive days with the same hours: (first day, last day, interval)."""
        runs: list[tuple[int, int, Interval]] = []
        for day in sorted(self.days):
            interval = self.days[day]
            if runs and runs[-1][1] == day - 1 and runs[-1][2] == interval:
                runs[-1] = (runs[-1][0], day, interval)
            else:
                runs.append((day, day, interval))
        return runs

    def describe(self, prompts: Catalogue, language: Language, *, short: bool = False) -> str:
        """The hours in words: "с понедельника по пятницу с восьми до двадцати, в субботу …".

        `short` is the compact form for SMS: "пн–пт 8:00–20:00, сб 10:00–16:00".
        """
        if self.always_open:
            return prompts.text("hours.always", language)
        prefix = "hours.short_" if short else "hours."
        parts: list[str] = []
        for first, last, interval in self.groups():
            if first == last:
                days = prompts.words(f"{prefix}on_day", language)[first]
            else:
                days = prompts.text(
                    f"{prefix}range",
                    language,
                    first=prompts.words(f"{prefix}from_day", language)[first],
                    last=prompts.words(f"{prefix}to_day", language)[last],
                )
            parts.append(
                prompts.text(
                    f"{prefix}times",
                    language,
                    days=days,
                    opens=_clock_text(interval.opens, prompts, language, short),
                    closes=_clock_text(interval.closes, prompts, language, short),
                )
            )
        return prompts.text("hours.separator", language).join(parts)


def _clock_text(minutes: int, prompts: Catalogue, language: Language, short: bool) -> str:
    """Digits in an SMS ("8:00"); words when spoken ("с восьми до двадцати", §3)."""
    if short:
        return f"{minutes // 60}:{minutes % 60:02d}"
    return prompts.clock(minutes, language)


@cache
def _schedule(hours: str, zone: str, extra: Iterable[date], official: bool) -> Schedule:
    return Schedule(
        days=parse_hours(hours),
        zone=parse_zone(zone),
        holidays=frozenset(extra),
        official_holidays=official,
    )


@cache
def _russian_holidays() -> official_holidays.HolidayBase:
    """Russia's official holidays and the government's transferred days off (lazy, any year)."""
    return official_holidays.country_holidays("RU")
