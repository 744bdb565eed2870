"""Trigger kinds: what may start a run of a journey (exactly one per journey)."""

from __future__ import annotations

from datetime import time, timedelta
from typing import Annotated, Literal

from pydantic import Field, Tag, model_validator

from engine.language.base import Spec, one_of_keys
from engine.language.fields import Clock, Cron, Duration, EventName, Expr, Identifier, Offset


class EventTrigger(Spec):
    """Each matching event may start a run."""

    KIND = "event"
    event: EventName
    when: Expr | None = None


class ScheduleTrigger(Spec):
    """At each cron time (journey timezone) every member of the segment may start a run."""

    KIND = "schedule"
    schedule: Cron
    segment: Identifier


class DateSpec(Spec):
    attribute: str = Field(min_length=1)
    offset: Offset = timedelta(0)
    at: Clock = time(9, 0)


class DateTrigger(Spec):
    """Yearly, from a date attribute of the profile (a birthday, a renewal date)."""

    KIND = "date"
    date: DateSpec


class InactivitySpec(Spec):
    for_: Duration = Field(alias="for")
    events: list[EventName] | None = None


class InactivityTrigger(Spec):
    """Once when a user has been quiet for the duration; armed again by the next activity."""

    KIND = "inactivity"
    inactivity: InactivitySpec


class SegmentEdge(Spec):
    enter: Identifier | None = None
    exit: Identifier | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SegmentEdge:
        if (self.enter is None) == (self.exit is None):
            raise ValueError("a segment trigger needs exactly one of: enter, exit")
        return self

    @property
    def name(self) -> str:
        """The segment whose edge fires the trigger."""
        return self.enter or self.exit or ""

    @property
    def direction(self) -> Literal["enter", "exit"]:
        """Whether joining or leaving the segment fires."""
        return "enter" if self.enter else "exit"


class SegmentTrigger(Spec):
    """When a profile change makes the user enter or leave a segment."""

    KIND = "segment"
    segment: SegmentEdge


TRIGGER_KINDS = ("schedule", "event", "date", "inactivity", "segment")
RECURRING_KINDS = frozenset({"schedule", "date", "inactivity"})

Trigger = Annotated[
    Annotated[EventTrigger, Tag("event")]
    | Annotated[ScheduleTrigger, Tag("schedule")]
    | Annotated[DateTrigger, Tag("date")]
    | Annotated[InactivityTrigger, Tag("inactivity")]
    | Annotated[SegmentTrigger, Tag("segment")],
    one_of_keys(TRIGGER_KINDS, "trigger", companions={"schedule": ("segment",)}),
]
