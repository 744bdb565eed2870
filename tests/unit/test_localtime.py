from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.localtime import (
    QuietHours,
    local_date,
    next_cron,
    next_date_trigger,
    next_local_time,
    parse_clock,
    to_utc,
    validate_cron,
    validate_date_offset,
    zone,
)

ZONES = [
    "UTC",
    "Asia/Shanghai",
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",  # 30-minute DST
    "America/Sao_Paulo",  # DST changed at local midnight until 2019
]
NY = ZoneInfo("America/New_York")
SHANGHAI = ZoneInfo("Asia/Shanghai")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, us, tzinfo=UTC)


def local(
    tz: ZoneInfo, y: int, mo: int, d: int, h: int = 0, mi: int = 0, *, fold: int = 0
) -> datetime:
    """The UTC instant of a local wall time (fold=1: the second of two)."""
    return datetime(y, mo, d, h, mi, tzinfo=tz, fold=fold).astimezone(UTC)


# ---------------------------------------------------------------------------- helpers for tests


@cache
def transitions(name: str) -> tuple[datetime, ...]:
    """Every UTC-offset change of a zone between 1990 and 2040, to the second."""
    tz = ZoneInfo(name)
    found: list[datetime] = []
    t, end, step = utc(1990, 1, 1), utc(2041, 1, 1), timedelta(hours=12)
    before = t.astimezone(tz).utcoffset()
    while t < end:
        nxt = t + step
        offset = nxt.astimezone(tz).utcoffset()
        if offset != before:
            lo, hi = t, nxt
            while hi - lo > timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                lo, hi = (mid, hi) if mid.astimezone(tz).utcoffset() == before else (lo, mid)
            found.append(hi.replace(microsecond=0))
        before, t = offset, nxt
    return tuple(found)


def exists(day: date, at: time, tz: ZoneInfo) -> bool:
    naive = datetime.combine(day, at.replace(fold=0))
    return naive.replace(tzinfo=tz).astimezone(UTC).astimezone(tz).replace(tzinfo=None) == naive


def gap_shifted(day: date, at: time, tz: ZoneInfo) -> datetime:
    """The documented reading of a wall time: earlier offset (shift through a gap, first of two)."""
    return datetime.combine(day, at.replace(fold=0), tzinfo=tz).astimezone(UTC)


uniform_instants = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2040, 12, 31)
).map(lambda d: d.replace(tzinfo=UTC))


def instants_for(name: str) -> st.SearchStrategy[datetime]:
    """Random instants, half of them within two days of one of the zone's DST changes."""
    near = transitions(name)
    if not near:
        return uniform_instants
    close = st.builds(
        lambda t, s: t + timedelta(seconds=s),
        st.sampled_from(near),
        st.integers(min_value=-2 * 86400, max_value=2 * 86400),
    )
    return st.one_of(uniform_instants, close)


zoned_instants = st.sampled_from(ZONES).flatmap(
    lambda name: st.tuples(st.just(ZoneInfo(name)), instants_for(name))
)
# Wall times that often land in DST gaps and overlaps, plus anything at all.
wall_times = st.one_of(
    st.builds(time, st.integers(0, 3), st.sampled_from([0, 15, 30, 45, 59])),
    st.builds(time, st.integers(22, 23), st.sampled_from([0, 30])),
    st.times(),
)


# ---------------------------------------------------------------------------- small helpers


def test_to_utc_normalises_and_refuses_naive() -> None:
    assert to_utc(datetime(2026, 5, 7, 9, tzinfo=SHANGHAI)) == utc(2026, 5, 7, 1)
    assert to_utc(datetime(2026, 5, 7, 9, tzinfo=SHANGHAI)).tzinfo is UTC
    with pytest.raises(ValueError, match="naive datetime"):
        to_utc(datetime(2026, 5, 7, 9))


def test_local_date() -> None:
    assert local_date(utc(2026, 5, 6, 17), SHANGHAI) == date(2026, 5, 7)
    assert local_date(utc(2026, 5, 6, 15), SHANGHAI) == date(2026, 5, 6)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("09:00", time(9)),
        ("9:00", time(9)),
        (" 23:59 ", time(23, 59)),
        ("00:00", time(0)),
        ("07:30:15", time(7, 30, 15)),
    ],
)
def test_parse_clock(text: str, expected: time) -> None:
    assert parse_clock(text) == expected


@pytest.mark.parametrize("text", ["25:00", "24:00", "12:60", "9", "9am", "", "12:00:60", "1:2"])
def test_parse_clock_rejects(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_clock(text)
    assert str(info.value) == f"invalid time '{text}': use HH:MM, 00:00–23:59"


@pytest.mark.parametrize("value", [1320, None, 9.5])
def test_parse_clock_rejects_non_strings_with_a_quoting_hint(value: object) -> None:
    # YAML 1.1 turns an unquoted 22:00 into 1320 (base 60).
    with pytest.raises(ValueError, match=f"invalid time '{value}': use HH:MM.*quotes"):
        parse_clock(value)  # type: ignore[arg-type]


def test_zone() -> None:
    assert zone("Asia/Shanghai") is zone("Asia/Shanghai")
    assert zone("UTC").utcoffset(datetime(2026, 1, 1)) == timedelta(0)


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../etc/passwd", "/etc/localtime", "Asia/"])
def test_zone_rejects_unknown_names(name: str) -> None:
    with pytest.raises(ValueError, match=f"unknown time zone '{name}'"):
        zone(name)


# ---------------------------------------------------------------------------- next_local_time


@pytest.mark.parametrize(
    ("after", "at", "tz", "expected"),
    [
        # Same day, later; exactly at; just missed -> next day.
        (utc(2026, 5, 6, 0), time(9), SHANGHAI, utc(2026, 5, 6, 1)),
        (utc(2026, 5, 6, 1), time(9), SHANGHAI, utc(2026, 5, 6, 1)),
        (utc(2026, 5, 6, 1, 0, 1), time(9), SHANGHAI, utc(2026, 5, 7, 1)),
        # Local date differs from the UTC date.
        (utc(2026, 5, 6, 17), time(9), SHANGHAI, utc(2026, 5, 7, 1)),
        # New York spring forward 2026-03-08: 02:30 does not exist -> 03:30 EDT.
        (local(NY, 2026, 3, 8, 0), time(2, 30), NY, local(NY, 2026, 3, 8, 3, 30)),
        (local(NY, 2026, 3, 8, 0), time(2, 30), NY, utc(2026, 3, 8, 7, 30)),
        (utc(2026, 3, 8, 7, 30), time(2, 30), NY, utc(2026, 3, 8, 7, 30)),
        (utc(2026, 3, 8, 7, 31), time(2, 30), NY, local(NY, 2026, 3, 9, 2, 30)),
        (local(NY, 2026, 3, 8, 3, 10), time(3), NY, local(NY, 2026, 3, 9, 3)),
        # New York fall back 2026-11-01: 01:30 happens twice -> the first (EDT, 05:30 UTC).
        (local(NY, 2026, 11, 1, 0), time(1, 30), NY, utc(2026, 11, 1, 5, 30)),
        # Past the first occurrence, the second one does not count: next day.
        (utc(2026, 11, 1, 5, 31), time(1, 30), NY, local(NY, 2026, 11, 2, 1, 30)),
        (utc(2026, 11, 1, 5, 31), time(1, 30), NY, utc(2026, 11, 2, 6, 30)),
        # Lord Howe moves by 30 minutes: 02:00 -> 02:30 on 2026-10-04.
        (local(LORD_HOWE, 2026, 10, 4, 0), time(2, 15), LORD_HOWE, utc(2026, 10, 3, 15, 45)),
        # ... and 02:00 -> 01:30 on 2026-04-05: 01:45 means the first (+11:00) one.
        (local(LORD_HOWE, 2026, 4, 5, 0), time(1, 45), LORD_HOWE, utc(2026, 4, 4, 14, 45)),
    ],
)
def test_next_local_time_cases(after: datetime, at: time, tz: ZoneInfo, expected: datetime) -> None:
    result = next_local_time(after, at, tz)
    assert result == expected
    assert result.tzinfo is UTC


def test_next_local_time_shifted_wall_time_is_visible_locally() -> None:
    result = next_local_time(local(NY, 2026, 3, 8, 0), time(2, 30), NY)
    assert result.astimezone(NY).time() == time(3, 30)


def test_next_local_time_ignores_fold_on_the_wall_time() -> None:
    after = local(NY, 2026, 11, 1, 0)
    assert next_local_time(after, time(1, 30, fold=1), NY) == utc(2026, 11, 1, 5, 30)


def test_next_local_time_accepts_any_aware_input() -> None:
    after = datetime(2026, 5, 6, 8, tzinfo=SHANGHAI)
    assert next_local_time(after, time(9), SHANGHAI) == utc(2026, 5, 6, 1)


@settings(max_examples=400)
@given(zoned_instants, wall_times)
def test_next_local_time_properties(zoned: tuple[ZoneInfo, datetime], at: time) -> None:
    tz, after = zoned
    result = next_local_time(after, at, tz)
    assert result.tzinfo is UTC
    assert result >= after
    assert result - after <= timedelta(hours=25)
    wall = result.astimezone(tz)
    assert wall.fold == 0  # never the second occurrence of a repeated wall time
    if wall.time() == at:
        day = wall.date()
    else:  # only when `at` does not exist that day: shifted forward through the gap
        day = next(
            d
            for d in (wall.date(), wall.date() - timedelta(days=1))
            if gap_shifted(d, at, tz) == result
        )
        assert not exists(day, at, tz)
        assert wall.replace(tzinfo=None) > datetime.combine(day, at)
    # Nothing earlier qualifies: the previous day's instant was before `after`.
    assert gap_shifted(day - timedelta(days=1), at, tz) < after


# ---------------------------------------------------------------------------- quiet hours


NIGHT = QuietHours(time(22), time(8))
LUNCH = QuietHours(time(12), time(14))


@pytest.mark.parametrize(
    ("hours", "at", "tz", "expected"),
    [
        # Outside: unchanged.
        (NIGHT, local(SHANGHAI, 2026, 5, 6, 21, 59), SHANGHAI, local(SHANGHAI, 2026, 5, 6, 21, 59)),
        (NIGHT, local(SHANGHAI, 2026, 5, 6, 8), SHANGHAI, local(SHANGHAI, 2026, 5, 6, 8)),
        # Inside before midnight: to tomorrow's 08:00; after midnight: to today's 08:00.
        (NIGHT, local(SHANGHAI, 2026, 5, 6, 22), SHANGHAI, local(SHANGHAI, 2026, 5, 7, 8)),
        (NIGHT, local(SHANGHAI, 2026, 5, 6, 23, 30), SHANGHAI, local(SHANGHAI, 2026, 5, 7, 8)),
        (NIGHT, local(SHANGHAI, 2026, 5, 7, 0, 0), SHANGHAI, local(SHANGHAI, 2026, 5, 7, 8)),
        (NIGHT, local(SHANGHAI, 2026, 5, 7, 7, 59), SHANGHAI, local(SHANGHAI, 2026, 5, 7, 8)),
        # Same-day window.
        (LUNCH, local(SHANGHAI, 2026, 5, 6, 12), SHANGHAI, local(SHANGHAI, 2026, 5, 6, 14)),
        (LUNCH, local(SHANGHAI, 2026, 5, 6, 11, 59), SHANGHAI, local(SHANGHAI, 2026, 5, 6, 11, 59)),
        (LUNCH, local(SHANGHAI, 2026, 5, 6, 14), SHANGHAI, local(SHANGHAI, 2026, 5, 6, 14)),
        # The local time decides, not UTC: 23:00 UTC is 07:00 in Shanghai.
        (NIGHT, utc(2026, 5, 6, 23), SHANGHAI, utc(2026, 5, 7, 0)),
        (NIGHT, utc(2026, 5, 6, 23), ZoneInfo("UTC"), utc(2026, 5, 7, 8)),
        # The window's end in the spring gap (02:30 NY on 2026-03-08) is shifted to 03:30 EDT.
        (
            QuietHours(time(22), time(2, 30)),
            local(NY, 2026, 3, 8, 1),
            NY,
            local(NY, 2026, 3, 8, 3, 30),
        ),
        # The second pass of the repeated hour (01:20 EST) waits for 01:45 EST, not tomorrow.
        (
            QuietHours(time(1), time(1, 45)),
            local(NY, 2026, 11, 1, 1, 20, fold=1),
            NY,
            utc(2026, 11, 1, 6, 45),
        ),
        (
            QuietHours(time(1), time(1, 45)),
            local(NY, 2026, 11, 1, 1, 20, fold=0),
            NY,
            utc(2026, 11, 1, 5, 45),
        ),
        # Open only 02:00-02:15, and on 1990-04-15 Shanghai skipped 02:00-03:00: next day.
        (
            QuietHours(time(2, 15), time(2)),
            local(SHANGHAI, 1990, 4, 14, 23),
            SHANGHAI,
            local(SHANGHAI, 1990, 4, 16, 2),
        ),
    ],
)
def test_quiet_hours_defer(
    hours: QuietHours, at: datetime, tz: ZoneInfo, expected: datetime
) -> None:
    assert hours.defer(at, tz) == expected


def test_quiet_hours_parse_and_contains() -> None:
    hours = QuietHours.parse("22:00", "08:00")
    assert hours == NIGHT
    assert hours.contains(time(23)) and hours.contains(time(0)) and hours.contains(time(7, 59))
    assert not hours.contains(time(8)) and not hours.contains(time(21, 59, 59))
    with pytest.raises(ValueError, match="invalid time '25:00'"):
        QuietHours.parse("25:00", "08:00")


quiet_windows = st.tuples(wall_times, wall_times).map(lambda pair: QuietHours(*pair))


@settings(max_examples=400)
@given(zoned_instants, quiet_windows)
def test_quiet_hours_properties(zoned: tuple[ZoneInfo, datetime], hours: QuietHours) -> None:
    tz, at = zoned
    result = hours.defer(at, tz)
    wall = result.astimezone(tz)
    assert result >= at
    assert not hours.contains(wall.time())
    if not hours.contains(at.astimezone(tz).time()):
        assert result == at
    else:
        # Usually within a day; two when a window leaves only a gap-swallowed slot open.
        assert result - at <= timedelta(hours=49)
        day = wall.date()
        assert wall.time() == hours.end or any(
            gap_shifted(d, hours.end, tz) == result and not exists(d, hours.end, tz)
            for d in (day, day - timedelta(days=1))
        )


def _reference_defer(hours: QuietHours, at: datetime, tz: ZoneInfo) -> datetime:
    """`QuietHours.defer` before its window ends were memoised per zone and day."""
    at = at.astimezone(UTC)
    if not hours.contains(at.astimezone(tz).replace(tzinfo=None).time()):
        return at
    today = at.astimezone(tz).date()
    best: datetime | None = None
    for k in range(-1, 8):
        day = today + k * timedelta(days=1)
        for fold in (0, 1):
            local = datetime.combine(day, hours.end.replace(fold=fold), tzinfo=tz)
            instant = local.astimezone(UTC)
            wall = instant.astimezone(tz).replace(tzinfo=None)
            if fold and wall != local.replace(tzinfo=None, fold=0):
                continue
            if instant >= at and not hours.contains(wall.time()):
                best = instant if best is None else min(best, instant)
        if best is not None and k >= 1:
            return best
    assert best is not None
    return best


@settings(max_examples=600)
@given(zoned_instants, quiet_windows)
def test_quiet_hours_defer_matches_the_reference(
    zoned: tuple[ZoneInfo, datetime], hours: QuietHours
) -> None:
    tz, at = zoned
    for moment in (at, at + timedelta(minutes=37), at + timedelta(hours=5)):
        assert hours.defer(moment, tz) == _reference_defer(hours, moment, tz)


@given(zoned_instants, wall_times)
def test_quiet_hours_with_equal_ends_never_defer(zoned: tuple[ZoneInfo, datetime], t: time) -> None:
    tz, at = zoned
    assert QuietHours(t, t).defer(at, tz) == at


# ---------------------------------------------------------------------------- cron


@pytest.mark.parametrize(
    ("expr", "after", "tz", "expected"),
    [
        # Mondays 09:00 in Shanghai are Mondays 01:00 UTC (2026-05-11 is a Monday).
        ("0 9 * * 1", utc(2026, 5, 6, 12), SHANGHAI, utc(2026, 5, 11, 1)),
        ("0 9 * * 1", utc(2026, 5, 11, 0, 59, 59, 999999), SHANGHAI, utc(2026, 5, 11, 1)),
        # Strictly after.
        ("0 9 * * 1", utc(2026, 5, 11, 1), SHANGHAI, utc(2026, 5, 18, 1)),
        ("0 9 * * mon", utc(2026, 5, 11, 1), SHANGHAI, utc(2026, 5, 18, 1)),
        ("@daily", utc(2026, 5, 6, 12), SHANGHAI, utc(2026, 5, 6, 16)),
        # A firing in the spring gap moves forward by the gap (02:30 -> 03:30 EDT).
        ("30 2 * * *", utc(2026, 3, 8, 0), NY, local(NY, 2026, 3, 8, 3, 30)),
        ("30 2 * * *", local(NY, 2026, 3, 8, 3, 20), NY, local(NY, 2026, 3, 8, 3, 30)),
        ("30 2 * * *", local(NY, 2026, 3, 8, 3, 30), NY, local(NY, 2026, 3, 9, 2, 30)),
        # A firing in the repeated hour happens once, at the first occurrence.
        ("30 1 * * *", utc(2026, 11, 1, 0), NY, utc(2026, 11, 1, 5, 30)),
        ("30 1 * * *", utc(2026, 11, 1, 5, 30), NY, local(NY, 2026, 11, 2, 1, 30)),
    ],
)
def test_next_cron_cases(expr: str, after: datetime, tz: ZoneInfo, expected: datetime) -> None:
    result = next_cron(expr, after, tz)
    assert result == expected
    assert result.tzinfo is UTC


def _cron_sequence(expr: str, start: datetime, tz: ZoneInfo, count: int) -> list[datetime]:
    out, t = [], start
    for _ in range(count):
        t = next_cron(expr, t, tz)
        out.append(t)
    return out


def test_next_cron_over_fall_back_skips_the_repeated_hour() -> None:
    fired = _cron_sequence("*/30 * * * *", local(NY, 2026, 11, 1, 0, 10), NY, 5)
    assert [f.astimezone(NY).strftime("%H:%M%z") for f in fired] == [
        "00:30-0400",
        "01:00-0400",
        "01:30-0400",
        "02:00-0500",
        "02:30-0500",
    ]


def test_next_cron_over_spring_forward_fires_each_instant_once() -> None:
    fired = _cron_sequence("*/30 * * * *", local(NY, 2026, 3, 8, 1, 10), NY, 5)
    assert [f.astimezone(NY).strftime("%H:%M%z") for f in fired] == [
        "01:30-0500",
        "03:00-0400",
        "03:30-0400",
        "04:00-0400",
        "04:30-0400",
    ]


def test_next_cron_rejects_bad_expressions() -> None:
    with pytest.raises(ValueError, match="invalid cron expression '61 9 \\* \\* \\*'"):
        next_cron("61 9 * * *", utc(2026, 1, 1), SHANGHAI)


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("0 9 * * 1", None),
        ("*/15 8-18 * * mon-fri", None),
        ("0 0 29 2 *", None),
        ("@weekly", None),
        ("0 0 L * *", None),
        ("", "empty cron expression"),
        ("0 9 * *", "use 5 fields"),
        ("0 0 9 * * 1", "use 5 fields"),
        ("61 9 * * *", "out of range"),
        ("0 9 * * funday", "unreadable field"),
        ("@reboot", "invalid cron expression"),
        ("0 0 30 2 *", "never fires"),
    ],
)
def test_validate_cron(expr: str, problem: str | None) -> None:
    message = validate_cron(expr)
    if problem is None:
        assert message is None
    else:
        assert message is not None and problem in message


def _cron_oracle(expr: str, after: datetime, tz: ZoneInfo) -> datetime:
    """Read every matching wall time around `after` with the DST policy; take the first after."""
    wall_after = after.astimezone(tz).replace(tzinfo=None)
    it = croniter(expr, wall_after - timedelta(days=1))
    candidates: list[datetime] = []
    while True:
        wall: datetime = it.get_next(datetime)
        if wall > wall_after + timedelta(days=9):
            break
        instant = wall.replace(tzinfo=tz).astimezone(UTC)
        if instant > after:
            candidates.append(instant)
    return min(candidates)


CRONS = ["*/20 * * * *", "30 2 * * *", "15,45 0-3 * * *", "0 0 * * *", "45 1 * * 0", "0 9 * * 1"]


@settings(max_examples=150)
@given(zoned_instants, st.sampled_from(CRONS))
def test_next_cron_matches_oracle(zoned: tuple[ZoneInfo, datetime], expr: str) -> None:
    tz, after = zoned
    result = next_cron(expr, after, tz)
    assert result > after
    assert result == _cron_oracle(expr, after, tz)


# ---------------------------------------------------------------------------- date triggers

NINE = time(9)
DAY = timedelta(days=1)


@pytest.mark.parametrize(
    ("value", "offset", "after", "expected"),
    [
        # Feb 29 birthdays fall on Feb 28 in common years, Feb 29 in leap years.
        ("2000-02-29", 0 * DAY, utc(2026, 6, 1), local(SHANGHAI, 2027, 2, 28, 9)),
        ("2000-02-29", 0 * DAY, utc(2027, 6, 1), local(SHANGHAI, 2028, 2, 29, 9)),
        ("2000-02-29", 0 * DAY, local(SHANGHAI, 2027, 2, 28, 9), local(SHANGHAI, 2028, 2, 29, 9)),
        # ... and the offset applies to that day: 3 days before Feb 28 / Feb 29.
        ("2000-02-29", -3 * DAY, utc(2026, 6, 1), local(SHANGHAI, 2027, 2, 25, 9)),
        ("2000-02-29", -3 * DAY, utc(2027, 6, 1), local(SHANGHAI, 2028, 2, 26, 9)),
        # -3d across the new year: Jan 2 birthday fires Dec 30 of the year before.
        ("1990-01-02", -3 * DAY, utc(2026, 6, 1), local(SHANGHAI, 2026, 12, 30, 9)),
        (
            "1990-01-02",
            -3 * DAY,
            local(SHANGHAI, 2026, 12, 30, 9),
            local(SHANGHAI, 2027, 12, 30, 9),
        ),
        ("1990-01-02", -3 * DAY, utc(2026, 1, 1), local(SHANGHAI, 2026, 12, 30, 9)),
        ("1990-12-30", 3 * DAY, utc(2026, 6, 1), local(SHANGHAI, 2027, 1, 2, 9)),
        ("1990-12-30", 3 * DAY, utc(2027, 1, 1), local(SHANGHAI, 2027, 1, 2, 9)),
        # Strictly after: the firing instant itself moves on to next year.
        ("1990-05-07", 0 * DAY, local(SHANGHAI, 2026, 5, 7, 9), local(SHANGHAI, 2027, 5, 7, 9)),
        ("1990-05-07", 0 * DAY, local(SHANGHAI, 2026, 5, 7, 8, 59), local(SHANGHAI, 2026, 5, 7, 9)),
        # Local date, not UTC date: 2026-05-07 09:00 Shanghai is 01:00 UTC.
        ("1990-05-07", 0 * DAY, utc(2026, 5, 6, 20), utc(2026, 5, 7, 1)),
        # Other accepted shapes.
        (date(1990, 5, 7), 0 * DAY, utc(2026, 1, 1), utc(2026, 5, 7, 1)),
        (datetime(1990, 5, 7, 23, tzinfo=UTC), 0 * DAY, utc(2026, 1, 1), utc(2026, 5, 7, 1)),
        ("--05-07", 0 * DAY, utc(2026, 1, 1), utc(2026, 5, 7, 1)),
        ("05-07", 0 * DAY, utc(2026, 1, 1), utc(2026, 5, 7, 1)),
        (" 1990-05-07T00:00:00Z ", 0 * DAY, utc(2026, 1, 1), utc(2026, 5, 7, 1)),
        ("02-29", 0 * DAY, utc(2026, 1, 1), local(SHANGHAI, 2026, 2, 28, 9)),
    ],
)
def test_next_date_trigger_cases(
    value: object, offset: timedelta, after: datetime, expected: datetime
) -> None:
    assert next_date_trigger(value, offset, NINE, SHANGHAI, after) == expected


@pytest.mark.parametrize(
    "value", [None, "", "soon", "1990-02-30", "2023-02-29", "13-01", "02-30", 19900507, 1.5, []]
)
def test_next_date_trigger_without_a_usable_date(value: object) -> None:
    assert next_date_trigger(value, 0 * DAY, NINE, SHANGHAI, utc(2026, 1, 1)) is None


def test_next_date_trigger_rejects_partial_day_offsets() -> None:
    assert validate_date_offset(-3 * DAY) is None
    assert validate_date_offset(timedelta(hours=-36)) is not None
    with pytest.raises(ValueError, match="whole days"):
        next_date_trigger("1990-05-07", timedelta(hours=12), NINE, SHANGHAI, utc(2026, 1, 1))


def test_next_date_trigger_in_a_dst_gap_shifts_forward() -> None:
    result = next_date_trigger("03-08", 0 * DAY, time(2, 30), NY, utc(2026, 1, 1))
    assert result == local(NY, 2026, 3, 8, 3, 30)


def _anniversary(year: int, month: int, day: int) -> date:
    if (month, day) == (2, 29) and not calendar.isleap(year):
        return date(year, 2, 28)
    return date(year, month, day)


birthdays = st.dates(min_value=date(2000, 1, 1), max_value=date(2000, 12, 31))  # 2000 is leap


@settings(max_examples=300)
@given(
    zoned_instants,
    birthdays,
    st.integers(min_value=-60, max_value=60),
    wall_times,
)
def test_next_date_trigger_properties(
    zoned: tuple[ZoneInfo, datetime], birthday: date, offset_days: int, at: time
) -> None:
    tz, after = zoned
    offset = timedelta(days=offset_days)
    result = next_date_trigger(f"--{birthday:%m-%d}", offset, at, tz, after)
    assert result is not None
    assert result > after
    assert result - after <= timedelta(days=367)
    wall = result.astimezone(tz)
    # Which firing day produced it (a gap can push the wall time past midnight).
    day = next(d for d in (wall.date(), wall.date() - DAY) if gap_shifted(d, at, tz) == result)
    assert wall.time() == at or not exists(day, at, tz)
    year = next(
        y
        for y in (day.year - 1, day.year, day.year + 1)
        if _anniversary(y, birthday.month, birthday.day) + offset == day
    )
    # The firing of the year before was not after `after`: this is the first one.
    previous = _anniversary(year - 1, birthday.month, birthday.day) + offset
    assert gap_shifted(previous, at, tz) <= after
