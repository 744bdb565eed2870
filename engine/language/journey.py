"""The three kinds of rules file: a journey, a segment, and the metrics table."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PositiveInt, WithJsonSchema, model_validator

from engine.durations import parse_duration
from engine.language.base import Spec
from engine.language.fields import Clock, Duration, EventName, Expr, Identifier, TimeZoneName
from engine.language.steps import Step
from engine.language.triggers import Trigger


@dataclass(frozen=True, slots=True)
class Reentry:
    """When a user may start a new run after the previous one ended."""

    mode: Literal["never", "always", "after"]
    after: timedelta = timedelta(0)


_AFTER = re.compile(r"^after\s+(\S+)$")


def _reentry(value: Any) -> Reentry:
    if isinstance(value, Reentry):
        return value
    text = value.strip() if isinstance(value, str) else value
    if text == "never":
        return Reentry("never")
    if text == "always":
        return Reentry("always")
    match = _AFTER.match(text) if isinstance(text, str) else None
    if match:
        return Reentry("after", parse_duration(match.group(1)))
    raise ValueError(
        f"invalid reentry {value!r}: use never, always or 'after <duration>' (after 7d)"
    )


ReentryPolicy = Annotated[
    Reentry,
    BeforeValidator(_reentry),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^(never|always|after \S+)$",
            "description": "never | always | after 7d",
        }
    ),
]


class ExitOn(Spec):
    event: EventName
    when: Expr | None = None


class Goal(Spec):
    event: EventName
    when: Expr | None = None
    within: Duration


class QuietHoursSpec(Spec):
    start: Clock
    end: Clock


class FrequencyCap(Spec):
    max: PositiveInt
    per: Duration
    channel: str = "any"


class Journey(Spec):
    """One journey file: a trigger, optional entry rules, and the steps of a run."""

    journey: Identifier
    name: str | None = None
    description: str | None = None
    enabled: Annotated[bool, Field(strict=True)] = True
    timezone: TimeZoneName = "UTC"
    trigger: Trigger
    audience: Expr | None = None
    reentry: ReentryPolicy | None = None
    exit_on: list[ExitOn] = Field(default_factory=list)
    goal: Goal | None = None
    quiet_hours: QuietHoursSpec | None = None
    frequency_cap: FrequencyCap | None = None
    tags: list[str] = Field(default_factory=list)
    steps: list[Step] = Field(min_length=1)

    @property
    def trigger_kind(self) -> str:
        """The trigger's kind key (`event`, `schedule`, `date`, `inactivity`, `segment`)."""
        return type(self.trigger).KIND

    def reentry_policy(self) -> Reentry:
        """The spec's default: never for event and segment triggers, always for recurring ones."""
        if self.reentry is not None:
            return self.reentry
        if self.trigger_kind in ("schedule", "date", "inactivity"):
            return Reentry("always")
        return Reentry("never")


class Segment(Spec):
    """A named audience: users whose profile satisfies `when`."""

    segment: Identifier
    description: str | None = None
    when: Expr


METRIC_AGGREGATES = ("count", "sum", "min", "max", "avg", "first", "last")


class MetricSpec(Spec):
    """A windowed per-user aggregate; `sum: purchase.properties.amount` reads a property."""

    count: str | None = None
    sum: str | None = None
    min: str | None = None
    max: str | None = None
    avg: str | None = None
    first: str | None = None
    last: str | None = None
    window: Duration | None = None
    when: Expr | None = None

    @model_validator(mode="after")
    def _one_aggregate(self) -> MetricSpec:
        chosen = [a for a in METRIC_AGGREGATES if getattr(self, a) is not None]
        if len(chosen) != 1:
            raise ValueError(f"a metric needs exactly one of: {', '.join(METRIC_AGGREGATES)}")
        agg, source = chosen[0], getattr(self, chosen[0])
        if agg in ("sum", "min", "max", "avg") and ".properties." not in source:
            raise ValueError(
                f"`{agg}` needs an event property, e.g. {agg}: purchase.properties.amount"
            )
        return self

    @property
    def aggregate(self) -> str:
        """Which aggregate this metric computes."""
        return next(a for a in METRIC_AGGREGATES if getattr(self, a) is not None)

    @property
    def source(self) -> str:
        """The aggregate's argument: `EVENT` or `EVENT.properties.PATH`."""
        value = getattr(self, self.aggregate)
        assert isinstance(value, str)
        return value

    @property
    def event_type(self) -> str:
        """The event type this metric listens to."""
        return self.source.split(".properties.", 1)[0]

    @property
    def property_path(self) -> tuple[str, ...]:
        """The property read from the event; empty for count and timestamp-valued first/last."""
        parts = self.source.split(".properties.", 1)
        return tuple(parts[1].split(".")) if len(parts) == 2 else ()


class MetricsFile(Spec):
    metrics: dict[Identifier, MetricSpec] = Field(default_factory=dict)


class Settings(Spec):
    """Optional `rules/settings.yaml`: engine-wide rules a marketing team owns."""

    global_frequency_cap: FrequencyCap | None = None
    lateness: Duration = timedelta(hours=1)
    quiet_hours: QuietHoursSpec | None = None
