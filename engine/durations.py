"""Durations as marketers write them: `30m`, `2h`, `7d`, `1h30m`, or ISO 8601 (`PT30M`).

Months and years are refused on purpose: "wait 1 month" has no fixed length, and a journey's
timing must mean the same thing in `simulate` and in production. Rules loaders turn the
`ValueError`s raised here into `path:line:col: message` problems, so messages are written
for the person editing the YAML.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from functools import lru_cache

__all__ = ["format_duration", "parse_duration", "parse_offset"]

_HINT = "use a number and a unit (s, m, h, d, w), e.g. 30m, or ISO 8601 like PT30M"

_UNIT_SECONDS: dict[str, int] = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_UNIT_ORDER = "wdhms"

# One or more `<integer><unit>` parts, e.g. `30m`, `1h30m`, `1d 12h`.
_SHORT_PART = re.compile(r"\s*([0-9]+)\s*([A-Za-z]+)")
_SHORT_FULL = re.compile(r"(?:\s*[0-9]+\s*[A-Za-z]+)+\s*")

_NUM = r"([0-9]+(?:[.,][0-9]+)?)"
_ISO = re.compile(
    rf"P(?:{_NUM}Y)?(?:{_NUM}M)?(?:{_NUM}W)?(?:{_NUM}D)?"
    rf"(?:T(?:{_NUM}H)?(?:{_NUM}M)?(?:{_NUM}S)?)?",
    re.IGNORECASE,
)
# Seconds per ISO group, in match order; None marks the refused calendar units.
_ISO_SECONDS: tuple[int | None, ...] = (None, None, 604800, 86400, 3600, 60, 1)

_MAX = timedelta.max


def parse_duration(text: str) -> timedelta:
    """Parse a non-negative duration; raises ValueError with a message fit for a rules problem."""
    if not isinstance(text, str):
        raise ValueError(f"invalid duration '{text}': {_HINT}")
    return _parse_cached(text, signed=False)


def parse_offset(text: str) -> timedelta:
    """Parse a duration that may carry a sign, for offsets such as a date trigger's `-3d`."""
    if not isinstance(text, str):
        raise ValueError(f"invalid offset '{text}': {_HINT}")
    return _parse_cached(text, signed=True)


@lru_cache(maxsize=4096)
def _parse_cached(text: str, signed: bool) -> timedelta:
    # Cached because conditions like `within(ts, '30m')` parse the same literal on every event.
    body = text.strip()
    negative = body[:1] == "-"
    if negative and not signed:
        raise ValueError(f"invalid duration '{text}': a duration cannot be negative")
    if body[:1] in ("+", "-"):
        body = body[1:].lstrip()
    if not body:
        raise ValueError(f"invalid duration '{text}': {_HINT}")
    value = _parse_iso(text, body) if body[0] in "Pp" else _parse_short(text, body)
    return -value if negative else value


def _parse_short(text: str, body: str) -> timedelta:
    if not _SHORT_FULL.fullmatch(body):
        if body.isdigit():
            raise ValueError(f"invalid duration '{text}': missing unit; {_HINT}")
        if re.fullmatch(r"\s*[0-9]+[.,][0-9]+\s*[A-Za-z]+\s*", body):
            raise ValueError(
                f"invalid duration '{text}': the amount must be a whole number "
                "(write 90m rather than 1.5h)"
            )
        raise ValueError(f"invalid duration '{text}': {_HINT}")
    total = 0
    last_rank = -1
    for amount, unit in _SHORT_PART.findall(body):
        if unit not in _UNIT_SECONDS:
            if unit.lower() in ("mo", "mon", "month", "months", "y", "yr", "year", "years"):
                raise _calendar_unit_error(text)
            if unit.lower() in _UNIT_SECONDS:
                raise ValueError(
                    f"invalid duration '{text}': unknown unit '{unit}' "
                    "(units are lowercase: s, m, h, d, w)"
                )
            raise ValueError(f"invalid duration '{text}': unknown unit '{unit}'; {_HINT}")
        rank = _UNIT_ORDER.index(unit)
        if rank <= last_rank:
            raise ValueError(
                f"invalid duration '{text}': write the units from largest to smallest, "
                "each once, e.g. 1h30m"
            )
        last_rank = rank
        total += int(amount) * _UNIT_SECONDS[unit]
    return _seconds(text, Decimal(total))


def _parse_iso(text: str, body: str) -> timedelta:
    match = _ISO.fullmatch(body)
    groups = match.groups() if match else ()
    present = [g for g in groups if g is not None]
    # `P` alone, `PT`, or `P1DT` (a T with nothing after it) are not durations.
    if not match or not present or body.upper().endswith("T"):
        raise ValueError(f"invalid duration '{text}': {_HINT}")
    if groups[0] is not None or groups[1] is not None:
        raise _calendar_unit_error(text)
    if any(("." in g or "," in g) for g in present[:-1]):
        raise ValueError(
            f"invalid duration '{text}': only the last part of an ISO 8601 duration "
            "may have a fraction"
        )
    total = Decimal(0)
    for amount, unit_seconds in zip(groups, _ISO_SECONDS, strict=True):
        if amount is not None and unit_seconds is not None:
            total += Decimal(amount.replace(",", ".")) * unit_seconds
    return _seconds(text, total)


def _seconds(text: str, seconds: Decimal) -> timedelta:
    try:
        micros = int((seconds * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
        if micros > _MAX // timedelta(microseconds=1):
            raise OverflowError
        return timedelta(microseconds=micros)
    except (OverflowError, InvalidOperation):
        raise ValueError(f"invalid duration '{text}': too large") from None


def _calendar_unit_error(text: str) -> ValueError:
    return ValueError(
        f"invalid duration '{text}': months and years are not supported because their "
        "length varies; use days or weeks, e.g. 30d or P30D"
    )


def format_duration(td: timedelta) -> str:
    """The shortest form `parse_duration` (or `parse_offset`, when negative) reads back exactly.

    Whole seconds come out as `90m`, `2w`, `1d1s`; sub-second values as ISO 8601 (`PT0.5S`),
    since the short form has no fractions.
    """
    if td < timedelta(0):
        return "-" + format_duration(-td)
    if td.microseconds:
        return _format_iso(td)
    seconds = td.days * 86400 + td.seconds
    if seconds == 0:
        return "0s"
    single = next(
        f"{seconds // size}{unit}" for unit, size in _UNIT_SECONDS.items() if seconds % size == 0
    )
    parts: list[str] = []
    rest = seconds
    for unit, size in _UNIT_SECONDS.items():
        amount, rest = divmod(rest, size)
        if amount:
            parts.append(f"{amount}{unit}")
    compound = "".join(parts)
    return compound if len(compound) < len(single) else single


def _format_iso(td: timedelta) -> str:
    hours, rest = divmod(td.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    frac = f"{seconds}.{td.microseconds:06d}".rstrip("0")
    date_part = f"{td.days}D" if td.days else ""
    time_part = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "") + f"{frac}S"
    return f"P{date_part}T{time_part}"
