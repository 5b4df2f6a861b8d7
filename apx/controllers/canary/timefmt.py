"""Epoch seconds ↔ RFC 3339 UTC text, by plain arithmetic (no clock, no ``datetime``).

Used by ``apx.controllers.canary.decide`` to write the times it records in
``status.canary`` (``2026-12-06T19:00:00Z``) and to read them back. The pure
core gets ``now`` as epoch seconds from its caller; keeping this conversion
arithmetic keeps the core free of clock modules (``tests/unit/test_architecture.py``).

The calendar maths is Howard Hinnant's ``days_from_civil`` / ``civil_from_days``
(proleptic Gregorian calendar, exact for every year 0001-9999).
"""

from __future__ import annotations

import functools
import math
import re

SECONDS_PER_DAY = 86_400

# Accepts what Kubernetes and people write: `Z`, `z` or a numeric offset, optional
# fractional seconds, `T`, `t` or a space between date and time.
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))$"
)
_MIN_YEAR, _MAX_YEAR = 1, 9999


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date."""
    year -= month <= 2
    era = (year if year >= 0 else year - 399) // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146_097 + day_of_era - 719_468


def civil_from_days(days: int) -> tuple[int, int, int]:
    """``(year, month, day)`` of a day count since 1970-01-01."""
    days += 719_468
    era = (days if days >= 0 else days - 146_096) // 146_097
    day_of_era = days - era * 146_097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    month_index = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * month_index + 2) // 5 + 1
    month = month_index + (3 if month_index < 10 else -9)
    return year_of_era + era * 400 + (month <= 2), month, day


def _days_in_month(year: int, month: int) -> int:
    next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
    return days_from_civil(next_year, next_month, 1) - days_from_civil(year, month, 1)


# Bounds of what format_rfc3339 can write with a four-digit year.
MIN_EPOCH = days_from_civil(_MIN_YEAR, 1, 1) * SECONDS_PER_DAY
MAX_EPOCH = days_from_civil(_MAX_YEAR + 1, 1, 1) * SECONDS_PER_DAY - 1


def format_rfc3339(epoch_seconds: float) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` of an epoch time, truncated to whole seconds.

    Status times are second-precision like Kubernetes' own timestamps; values
    outside years 0001-9999 (or NaN) are clamped so the result always parses.
    """
    if math.isnan(epoch_seconds):
        epoch_seconds = 0.0
    return _format_seconds(math.floor(min(max(epoch_seconds, MIN_EPOCH), MAX_EPOCH)))


# The canary loop formats and reads the same few instants per Route over and
# over; both directions are pure, so they are memoised.
@functools.lru_cache(maxsize=4096)
def _format_seconds(seconds: int) -> str:
    days, second_of_day = divmod(seconds, SECONDS_PER_DAY)
    year, month, day = civil_from_days(days)
    hour, rest = divmod(second_of_day, 3600)
    minute, second = divmod(rest, 60)
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}Z"


def parse_rfc3339(text: object) -> float | None:
    """Epoch seconds of an RFC 3339 time, or ``None`` when it is not one.

    Never raises: statuses can hold anything a person or an older version
    wrote, and the caller treats ``None`` as "not recorded". Leap seconds
    (``:60``) count as the next second.
    """
    if not isinstance(text, str):
        return None
    return _parse_text(text)


@functools.lru_cache(maxsize=4096)
def _parse_text(text: str) -> float | None:
    match = _RFC3339.match(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    if not (_MIN_YEAR <= year <= _MAX_YEAR and 1 <= month <= 12):
        return None
    if not (1 <= day <= _days_in_month(year, month) and hour < 24 and minute < 60 and second <= 60):
        return None
    fraction = float(match.group(7)) if match.group(7) else 0.0
    offset = 0
    if match.group(9):
        offset_hours, offset_minutes = int(match.group(10)), int(match.group(11))
        if offset_hours > 23 or offset_minutes > 59:
            return None
        offset = (offset_hours * 3600 + offset_minutes * 60) * (1 if match.group(9) == "+" else -1)
    days = days_from_civil(year, month, day)
    return float(days * SECONDS_PER_DAY + hour * 3600 + minute * 60 + second - offset) + fraction
