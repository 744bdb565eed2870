"""Scalar field types of the journey language.

Each type validates (and where useful converts) a YAML scalar the way a marketer writes it, so
that a bad value is reported at its own line and column by the loader, with a message that says
how to write it correctly. Validation compiles what can be compiled (durations, times, cron,
expressions), so nothing is parsed twice at run time.
"""

from __future__ import annotations

import re
from datetime import time, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, WithJsonSchema

from engine.durations import format_duration, parse_duration, parse_offset
from engine.errors import ExpressionError
from engine.expressions import compile_condition
from engine.localtime import parse_clock, validate_cron, validate_date_offset, zone

ID_PATTERN = r"^[a-z0-9_-]+$"
_ID_RE = re.compile(ID_PATTERN)
ARM_NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
_ARM_NAME_RE = re.compile(ARM_NAME_PATTERN)


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(
            f"invalid duration {value!r}: write a number and a unit (s, m, h, d, w), e.g. 30m, "
            "or ISO 8601 like PT30M"
        )
    return parse_duration(value)


def _offset(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"invalid offset {value!r}: write whole days with a sign, e.g. -3d")
    offset = parse_offset(value)
    problem = validate_date_offset(offset)
    if problem:
        raise ValueError(problem)
    return offset


def _clock(value: Any) -> time:
    if isinstance(value, time):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 09:00 as the sexagesimal integer 540.
        value = f"{value // 60:02d}:{value % 60:02d}"
    if not isinstance(value, str):
        raise ValueError(f'invalid time {value!r}: use HH:MM, e.g. "09:00"')
    return parse_clock(value)


def _timezone(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"invalid time zone {value!r}: use an IANA name such as Asia/Shanghai")
    zone(value)
    return value


def _cron(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f'invalid cron expression {value!r}: quote it, e.g. "0 9 * * 1"')
    error = validate_cron(value)
    if error:
        raise ValueError(error)
    return value


def _expression(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, str):
        raise ValueError(f"expected an expression string, got {type(value).__name__}")
    try:
        compile_condition(value)
    except ExpressionError as exc:
        raise ValueError(f"invalid expression: {exc.message}") from exc
    return value


def _identifier(value: str) -> str:
    if not _ID_RE.match(value):
        raise ValueError(f"invalid id {value!r}: use lower-case letters, digits, '_' and '-' only")
    return value


def _arm_name(value: str) -> str:
    if not _ARM_NAME_RE.match(value):
        raise ValueError(
            f"invalid split arm name {value!r}: use letters, digits, '_' and '-' only "
            "(A, B, control)"
        )
    return value


Duration = Annotated[
    timedelta,
    BeforeValidator(_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^(\d+[smhdw])+$|^P",
            "description": "30s, 30m, 2h, 7d, 2w or ISO 8601 (PT30M)",
        }
    ),
]
Offset = Annotated[
    timedelta,
    BeforeValidator(_offset),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^[-+]?(\d+[dw])+$|^[-+]?P",
            "description": "signed whole days: -3d, 1w, or ISO 8601 (-P3D)",
        }
    ),
]
Clock = Annotated[
    time,
    BeforeValidator(_clock),
    PlainSerializer(lambda t: t.strftime("%H:%M"), return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^\d{1,2}:\d{2}$", "description": "HH:MM"}),
]
TimeZoneName = Annotated[
    str,
    BeforeValidator(_timezone),
    WithJsonSchema({"type": "string", "description": "IANA time zone, e.g. Asia/Shanghai"}),
]
Cron = Annotated[
    str,
    BeforeValidator(_cron),
    WithJsonSchema({"type": "string", "description": "cron expression, e.g. '0 9 * * 1'"}),
]
Expr = Annotated[
    str,
    BeforeValidator(_expression),
    WithJsonSchema(
        {"type": "string", "description": "Jinja2 expression, e.g. profile.tier == 'vip'"}
    ),
]
Identifier = Annotated[
    str,
    AfterValidator(_identifier),
    WithJsonSchema({"type": "string", "pattern": ID_PATTERN}),
]
ArmName = Annotated[
    str,
    AfterValidator(_arm_name),
    WithJsonSchema({"type": "string", "pattern": ARM_NAME_PATTERN}),
]
EventName = Annotated[str, Field(min_length=1, max_length=200)]
