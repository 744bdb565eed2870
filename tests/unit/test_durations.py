from __future__ import annotations

import re
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.durations import format_duration, parse_duration, parse_offset

S, M, H, D, W = (timedelta(seconds=n) for n in (1, 60, 3600, 86400, 604800))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", 30 * S),
        ("30m", 30 * M),
        ("2h", 2 * H),
        ("7d", 7 * D),
        ("2w", 2 * W),
        ("0s", timedelta(0)),
        ("  45m\t", 45 * M),
        ("1h30m", 90 * M),
        ("1h 30m", 90 * M),
        ("1w2d3h4m5s", W + 2 * D + 3 * H + 4 * M + 5 * S),
        ("+30m", 30 * M),
        ("PT30M", 30 * M),
        ("P1D", D),
        ("P2W", 2 * W),
        ("P1DT2H", D + 2 * H),
        ("PT0.5S", timedelta(milliseconds=500)),
        ("PT1,25S", timedelta(milliseconds=1250)),
        ("PT1.5H", 90 * M),
        ("P1W2D", 9 * D),
        ("pt30m", 30 * M),
        ("PT0S", timedelta(0)),
        ("P0D", timedelta(0)),
        ("PT36H", 36 * H),
    ],
)
def test_parse_duration_accepts(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("30x", "unknown unit 'x'"),
        ("30M", "units are lowercase"),
        ("30", "missing unit"),
        ("", "use a number and a unit"),
        ("   ", "use a number and a unit"),
        ("m", "use a number and a unit"),
        ("1.5h", "whole number"),
        ("30m1h", "largest to smallest"),
        ("1h1h", "largest to smallest"),
        ("-3d", "cannot be negative"),
        ("3 months", "months and years are not supported"),
        ("1y", "months and years are not supported"),
        ("P1M", "months and years are not supported"),
        ("P1Y2D", "months and years are not supported"),
        ("P", "ISO 8601 like PT30M"),
        ("PT", "ISO 8601 like PT30M"),
        ("P1DT", "ISO 8601 like PT30M"),
        ("P1H", "ISO 8601 like PT30M"),
        ("PT1D", "ISO 8601 like PT30M"),
        ("PT1.5H30M", "only the last part"),
        ("-PT30M", "cannot be negative"),
        ("99999999999w", "too large"),
        ("30 minutes", "unknown unit 'minutes'"),
        ("٣m", "use a number and a unit"),  # non-ASCII digits are not numbers here
    ],
)
def test_parse_duration_rejects_with_clear_message(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    message = str(info.value)
    assert message.startswith(f"invalid duration '{text}'")
    assert reason in message


def test_message_for_an_unknown_unit_names_the_accepted_forms() -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            "invalid duration '30x': unknown unit 'x'; use a number and a unit "
            "(s, m, h, d, w), e.g. 30m, or ISO 8601 like PT30M"
        ),
    ):
        parse_duration("30x")


@pytest.mark.parametrize("value", [30, 1.5, None, b"30m"])
def test_non_strings_are_rejected_as_values_not_type_errors(value: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("-3d", -3 * D), ("+3d", 3 * D), ("3d", 3 * D), ("- 1w", -W), ("-P3D", -3 * D), ("0d", 0 * D)],
)
def test_parse_offset_allows_a_sign(text: str, expected: timedelta) -> None:
    assert parse_offset(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(0), "0s"),
        (30 * S, "30s"),
        (90 * M, "90m"),
        (2 * H, "2h"),
        (D, "1d"),
        (7 * D, "1w"),
        (14 * D, "2w"),
        (8 * D, "8d"),
        (D + S, "1d1s"),
        (25 * H, "25h"),
        (-3 * D, "-3d"),
        (timedelta(milliseconds=500), "PT0.5S"),
        (D + H + timedelta(microseconds=1), "P1DT1H0.000001S"),
    ],
)
def test_format_duration(value: timedelta, expected: str) -> None:
    assert format_duration(value) == expected


def test_parse_is_cached() -> None:
    assert parse_duration("17m") is parse_duration("17m")


whole_seconds = st.integers(min_value=0, max_value=10**10).map(lambda n: timedelta(seconds=n))


@given(whole_seconds)
def test_round_trip_whole_seconds(value: timedelta) -> None:
    assert parse_duration(format_duration(value)) == value


@given(st.timedeltas(min_value=-timedelta(days=10**5), max_value=timedelta(days=10**5)))
def test_round_trip_any_timedelta_through_offsets(value: timedelta) -> None:
    assert parse_offset(format_duration(value)) == value


@given(whole_seconds)
def test_format_is_never_longer_than_the_single_unit_form(value: timedelta) -> None:
    seconds = int(value.total_seconds())
    units = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
    single = min(
        (f"{seconds // size}{unit}" for unit, size in units.items() if seconds % size == 0),
        key=len,
    )
    assert len(format_duration(value)) <= len(single)


ISO_FORM = {"s": "PT{}S", "m": "PT{}M", "h": "PT{}H", "d": "P{}D", "w": "P{}W"}


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(ISO_FORM)))
def test_short_and_iso_forms_agree(amount: int, unit: str) -> None:
    assert parse_duration(f"{amount}{unit}") == parse_duration(ISO_FORM[unit].format(amount))


@given(st.text(max_size=12))
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        assert text in str(exc)
    else:
        assert value >= timedelta(0)
