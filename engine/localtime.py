"""Wall-clock time in a user's zone: `wait: {until}`, quiet hours, schedules and date triggers.

Everything here is pure: the current instant is always an argument and results are aware
UTC datetimes, so `simulate` and production compute the same instants.

DST policy (one rule, used by every function that turns a local wall time into an instant):

* A wall time that does not exist (the spring-forward gap) is read with the offset in force
  *before* the gap, which moves it forward by the gap's length: 02:30 on 2026-03-08 in
  America/New_York becomes 03:30 EDT (07:30 UTC). This is PEP 495's `fold=0` reading.
* A wall time that happens twice (the fall-back overlap) means its FIRST occurrence:
  01:30 on 2026-11-01 in America/New_York is 01:30 EDT (05:30 UTC), never 01:30 EST.

So each local day has exactly one instant for a given wall time, and a daily wait or
schedule fires once per day, never twice and never skipped. The one place that looks at
the second occurrence too is `QuietHours.defer`: a send due in the repeated hour must
not be pushed back a whole day because the window's end already happened once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

__all__ = [
    "QuietHours",
    "local_date",
    "next_cron",
    "next_date_trigger",
    "next_local_time",
    "parse_clock",
    "to_utc",
    "validate_cron",
    "validate_date_offset",
    "zone",
]

_DAY = timedelta(days=1)
_CLOCK = re.compile(r"([0-9]{1,2}):([0-9]{2})(?::([0-9]{2}))?")


def to_utc(dt: datetime) -> datetime:
    """Normalise to UTC, refusing naive datetimes: a naive time in a scheduler is a latent bug."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt.isoformat()}: Herald needs timezone-aware datetimes")
    return dt.astimezone(UTC)


def local_date(instant: datetime, tz: tzinfo) -> date:
    """The calendar day `instant` falls on for someone living in `tz`."""
    return to_utc(instant).astimezone(tz).date()


def parse_clock(text: str) -> time:
    """Parse `HH:MM` or `HH:MM:SS` (a one-digit hour is accepted) into a naive wall time."""
    if not isinstance(text, str):
        # YAML 1.1 reads an unquoted 22:00 as the base-60 integer 1320; say how to fix it.
        raise ValueError(f"invalid time '{text}': use HH:MM, 00:00–23:59, in quotes (\"22:00\")")
    return _parse_clock(text)


@lru_cache(maxsize=512)
def _parse_clock(text: str) -> time:
    match = _CLOCK.fullmatch(text.strip())
    if match:
        hour, minute, second = int(match[1]), int(match[2]), int(match[3] or 0)
        if hour < 24 and minute < 60 and second < 60:
            return time(hour, minute, second)
    raise ValueError(f"invalid time '{text}': use HH:MM, 00:00–23:59")


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    """Look up an IANA zone; cached because every profile carries its own `timezone`."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        raise ValueError(f"unknown time zone '{name}'") from None


@lru_cache(maxsize=8192)
def _resolve(day: date, at: time, tz: tzinfo) -> datetime:
    """The instant of wall time `at` on `day` under the module's DST policy (see docstring).

    Memoised: zone conversions cost microseconds, and a date trigger resolves the same few
    (day, time, zone) triples for every user sharing a birthday month-day and a zone."""
    if at.tzinfo is not None:
        raise ValueError(f"time {at.isoformat()} must be a wall-clock time without a zone")
    return datetime.combine(day, at.replace(fold=0), tzinfo=tz).astimezone(UTC)


def _wall(instant: datetime, tz: tzinfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def next_local_time(after: datetime, at: time, tz: tzinfo) -> datetime:
    """First instant >= `after` at wall time `at` in `tz` (one per local day; see DST policy)."""
    after = to_utc(after)
    today = local_date(after, tz)
    # The day before is included because a gap-shifted time can land on the next calendar day.
    candidates = (_resolve(today + k * _DAY, at, tz) for k in range(-1, 3))
    return min(c for c in candidates if c >= after)


@dataclass(frozen=True, slots=True)
class QuietHours:
    """Local-time window [start, end) in which nothing is sent; start > end wraps midnight."""

    start: time
    end: time

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("quiet hours are wall-clock times and carry no zone")

    @classmethod
    def parse(cls, start: str, end: str) -> QuietHours:
        """Build from the `{start: "22:00", end: "08:00"}` strings of a journey file."""
        return cls(parse_clock(start), parse_clock(end))

    def contains(self, wall: time) -> bool:
        """Whether the wall time lies inside the window; start == end means no quiet hours."""
        wall = wall.replace(tzinfo=None, fold=0)
        if self.start < self.end:
            return self.start <= wall < self.end
        if self.start > self.end:
            return wall >= self.start or wall < self.end
        return False

    def defer(self, at: datetime, tz: tzinfo) -> datetime:
        """When a send due at `at` may go out: `at` itself, or the end of the quiet window.

        The result is the earliest end-of-window instant >= `at` whose own wall time is
        outside the window. Both occurrences of a repeated wall time count here, so a send
        due in the second pass of a fall-back hour waits for that pass's end, not tomorrow's.
        An end that falls in a spring-forward gap is shifted forward like any other wall time.
        """
        at = to_utc(at)
        if not self.contains(_wall(at, tz).time()):
            return at
        best: datetime | None = None
        for k, ends in enumerate(self._window_ends(tz, local_date(at, tz)), start=-1):
            for instant in ends:
                if instant >= at:
                    best = instant if best is None else min(best, instant)
            if best is not None and k >= 1:
                return best
        if best is None:  # pragma: no cover - needs a zone that skips a whole week
            raise ValueError(f"quiet hours {self} never end near {at.isoformat()} in {tz}")
        return best

    @lru_cache(maxsize=1024)  # noqa: B019 - the instances are a handful of immutable values
    def _window_ends(self, tz: tzinfo, today: date) -> tuple[tuple[datetime, ...], ...]:
        """For the days `today - 1` to `today + 7`, the instants the window ends at whose own
        wall time is outside it: what `defer` chooses from. They depend on the local day
        only, and every send deferred in one zone on one day needs the same ones (~60 µs)."""
        days = []
        for k in range(-1, 8):
            day = today + k * _DAY
            ends = []
            for fold in (0, 1):
                local = datetime.combine(day, self.end.replace(fold=fold), tzinfo=tz)
                instant = local.astimezone(UTC)
                if fold and _wall(instant, tz) != local.replace(tzinfo=None, fold=0):
                    continue  # fold=1 of a non-existent time is before the gap: not an end
                if not self.contains(_wall(instant, tz).time()):
                    ends.append(instant)
            days.append(tuple(ends))
        return tuple(days)


@lru_cache(maxsize=256)
def validate_cron(expr: str) -> str | None:
    """Why a schedule expression is unusable, or None; used by `herald validate`."""
    if not isinstance(expr, str) or not expr.strip():
        return "empty cron expression: use 5 fields, e.g. '0 9 * * 1' (Mondays at 09:00)"
    text = expr.strip()
    if not text.startswith("@") and len(text.split()) != 5:
        return (
            f"invalid cron expression '{expr}': use 5 fields (minute hour day-of-month month "
            "day-of-week), e.g. '0 9 * * 1'"
        )
    try:
        it = croniter(text, datetime(2000, 1, 1))
    except Exception as exc:  # croniter raises several unrelated types for bad input
        detail = "a field is out of range" if "out of range" in str(exc) else "unreadable field"
        return f"invalid cron expression '{expr}': {detail}"
    try:
        it.get_next(datetime)
    except CroniterBadDateError:
        return f"cron expression '{expr}' never fires (no such date)"
    return None


def next_cron(expr: str, after: datetime, tz: tzinfo) -> datetime:
    """Next firing strictly after `after`, the expression read as wall time in `tz`.

    croniter only ever sees naive wall times; the DST policy is applied here, so a firing in
    the spring gap moves forward by the gap and a firing in the repeated hour happens once.
    """
    problem = validate_cron(expr)
    if problem:
        raise ValueError(problem)
    after = to_utc(after)
    wall_after = _wall(after, tz)
    # A wall time shortly *before* wall_after may sit in a gap that just closed, and be
    # shifted to after `after`; start the search that far back.
    offset_now = after.astimezone(tz).utcoffset() or timedelta(0)
    offset_before = (after - _DAY).astimezone(tz).utcoffset() or timedelta(0)
    lookback = max(timedelta(0), offset_now - offset_before)
    it = croniter(expr.strip(), wall_after - lookback)
    best: datetime | None = None
    best_wall = datetime.max
    while True:
        wall = it.get_next(datetime)
        # Once wall times pass the best one's wall time, no later one resolves earlier.
        if best is not None and wall > best_wall:
            return best
        instant = wall.replace(tzinfo=tz).astimezone(UTC)
        if instant > after and (best is None or instant < best):
            best, best_wall = instant, _wall(instant, tz)


def validate_date_offset(offset: timedelta) -> str | None:
    """Why a date trigger's offset is unusable, or None: it must be whole days."""
    if offset % _DAY:
        return "a date trigger's offset must be whole days, e.g. -3d"
    return None


def _month_day(value: Any) -> tuple[int, int] | None:
    if isinstance(value, date):  # datetime too: its own calendar fields, never converted
        return value.month, value.day
    if not isinstance(value, str):
        return None
    return _month_day_text(value)


@lru_cache(maxsize=4096)
def _month_day_text(value: str) -> tuple[int, int] | None:
    text = value.strip()
    try:
        full = re.fullmatch(r"([0-9]{4})-([0-9]{2})-([0-9]{2})(?:[T ].*)?", text)
        if full:
            parsed = date(int(full[1]), int(full[2]), int(full[3]))
            return parsed.month, parsed.day
        short = re.fullmatch(r"(?:--)?([0-9]{2})-([0-9]{2})", text)
        if short:
            parsed = date(2000, int(short[1]), int(short[2]))  # a leap year: 02-29 is valid
            return parsed.month, parsed.day
    except ValueError:
        return None
    return None


def _anniversary(year: int, month: int, day: int) -> date:
    if month == 2 and day == 29:
        try:
            return date(year, 2, 29)
        except ValueError:
            return date(year, 2, 28)
    return date(year, month, day)


def next_date_trigger(
    value: Any, offset: timedelta, at: time, tz: tzinfo, after: datetime
) -> datetime | None:
    """Next yearly firing strictly after `after` for a date attribute such as a birthday.

    The firing day is the attribute's month-day in each year (Feb 29 -> Feb 28 in common
    years) moved by `offset`, at wall time `at` in `tz`. `value` may be a date, a datetime
    (its calendar fields are used as they are) or 'YYYY-MM-DD', 'YYYY-MM-DDTHH:MM...',
    '--MM-DD', 'MM-DD'; anything else means the user has no such date: None.
    A non-whole-day offset is rejected (ValueError) rather than silently truncated.
    """
    problem = validate_date_offset(offset)
    if problem:
        raise ValueError(problem)
    month_day = _month_day(value)
    if month_day is None:
        return None
    after = to_utc(after)
    shift = offset // _DAY * _DAY
    first_year = (local_date(after, tz) - shift).year - 2
    for year in range(first_year, first_year + 5):
        instant = _resolve(_anniversary(year, *month_day) + shift, at, tz)
        if instant > after:
            return instant
    raise AssertionError("unreachable: a yearly date fires within any five-year span")
