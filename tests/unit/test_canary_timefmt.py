"""The canary core's clock-free time conversion agrees with ``datetime`` and refuses what is not a time."""

from __future__ import annotations

import datetime
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apx.controllers.canary import timefmt

UTC = datetime.UTC


def reference_text(epoch: int) -> str:
    # Built from the fields: strftime("%Y") does not zero-pad years below 1000 on every platform.
    moment = datetime.datetime(1970, 1, 1, tzinfo=UTC) + datetime.timedelta(seconds=epoch)
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}Z"
    )


@pytest.mark.parametrize(
    ("epoch", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (951_782_400, "2000-02-29T00:00:00Z"),
        (1_796_583_600, "2026-12-06T19:00:00Z"),
        (-1, "1969-12-31T23:59:59Z"),
        (4_107_542_399, "2100-02-28T23:59:59Z"),
        (253_402_300_799, "9999-12-31T23:59:59Z"),
    ],
)
def test_known_instants_format_and_parse_both_ways(epoch: int, text: str) -> None:
    assert timefmt.format_rfc3339(epoch) == text
    assert timefmt.parse_rfc3339(text) == epoch


@given(st.integers(min_value=timefmt.MIN_EPOCH, max_value=timefmt.MAX_EPOCH))
def test_format_matches_datetime_and_parse_inverts_it(epoch: int) -> None:
    text = timefmt.format_rfc3339(epoch)
    assert text == reference_text(epoch)
    assert timefmt.parse_rfc3339(text) == epoch


@given(
    st.datetimes(
        min_value=datetime.datetime(1, 1, 2),
        max_value=datetime.datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [
                UTC,
                datetime.timezone(datetime.timedelta(hours=5, minutes=30)),
                datetime.timezone(-datetime.timedelta(hours=8)),
            ]
        ),
    )
)
def test_parse_reads_isoformat_with_offsets_and_fractions(moment: datetime.datetime) -> None:
    parsed = timefmt.parse_rfc3339(moment.isoformat())
    assert parsed is not None
    assert math.isclose(parsed, moment.timestamp(), abs_tol=1e-6)


def test_fractional_seconds_and_numeric_offsets_are_read() -> None:
    base = timefmt.parse_rfc3339("2026-12-06T19:00:00Z")
    assert base is not None
    assert timefmt.parse_rfc3339("2026-12-06T19:00:00.250Z") == base + 0.25
    assert timefmt.parse_rfc3339("2026-12-06T19:00:00+00:00") == base
    assert timefmt.parse_rfc3339("2026-12-06T20:00:00+01:00") == base
    assert timefmt.parse_rfc3339("2026-12-06t19:00:00z") == base


def test_format_truncates_to_whole_seconds() -> None:
    assert timefmt.format_rfc3339(1_796_583_600.999) == "2026-12-06T19:00:00Z"


@pytest.mark.parametrize(
    "value",
    [
        None,
        5,
        "",
        "yesterday",
        "2026-02-29T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-12-06T24:00:00Z",
        "2026-12-06T19:00:00",
        "2026-12-06T19:00:00+25:00",
        "0000-01-01T00:00:00Z",
    ],
)
def test_what_is_not_a_time_parses_to_none(value: object) -> None:
    assert timefmt.parse_rfc3339(value) is None


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e300, -1e300])
def test_format_clamps_values_outside_the_calendar_to_text_that_parses(value: float) -> None:
    assert timefmt.parse_rfc3339(timefmt.format_rfc3339(value)) is not None
