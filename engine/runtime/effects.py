"""What the core asks the outside world to do. The core only describes; workers perform.

Effects are frozen msgspec Structs: a core input makes several, and a frozen dataclass's
`__init__` (one `object.__setattr__` per field) costs ~3 µs for a Message, a Struct's ~0.3."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import msgspec

from engine.events import Event, format_instant
from engine.runtime.state import UserState


@lru_cache(maxsize=8192)
def iso(ts: float) -> str:
    """The spec's time format: ISO 8601 with an explicit +00:00 (cached: one input formats
    the same instant for its entry context, ids and journey context several times)."""
    return format_instant(datetime.fromtimestamp(ts, UTC))


class Message(msgspec.Struct, frozen=True):
    """A rendered message to dispatch. `message_id` is the dedupe key end to end."""

    message_id: str
    user_id: str
    journey: str
    step: str
    channel: str
    to: str
    subject: str | None
    body: str
    variant: str | None
    at: float
    entry_id: str = ""
    entry_at: float | None = None
    meta: dict[str, Any] = msgspec.field(default_factory=dict)

    def to_simulation_line(self) -> dict[str, Any]:
        """Exactly the fields `herald simulate` prints (journeys.md, Simulation)."""
        return {
            "at": iso(self.at),
            "user_id": self.user_id,
            "journey": self.journey,
            "step": self.step,
            "channel": self.channel,
            "to": self.to,
            "message_id": self.message_id,
            "variant": self.variant,
            "subject": self.subject,
            "body": self.body,
        }

    def to_action(self) -> dict[str, Any]:
        """The record on `herald.actions` the dispatcher consumes."""
        doc = self.to_simulation_line()
        doc["entry_id"] = self.entry_id
        if self.entry_at is not None:
            doc["entry_at"] = self.entry_at
        if self.meta:
            doc["meta"] = self.meta
        return doc


class Emitted(msgspec.Struct, frozen=True):
    """An event produced by an `emit` step (already applied to this user by the core)."""

    event: Event


class Count(msgspec.Struct, frozen=True):
    """One increment of a Prometheus counter named in runtime.md (or a Herald-specific one)."""

    metric: str
    labels: tuple[tuple[str, str], ...]


class Failure(msgspec.Struct, frozen=True):
    """A step that failed (template error, webhook body error): recorded, never half-sent."""

    at: float
    user_id: str
    journey: str
    step: str
    reason: str


class Trace(msgspec.Struct, frozen=True):
    """One step taken, for `herald simulate --trace` (only produced when tracing is on)."""

    at: float
    user_id: str
    journey: str
    step: str
    what: str


Effect = Message | Emitted | Count | Failure | Trace


@dataclass(slots=True)
class Outcome:
    """The result of one input: the new state and what to do about it."""

    state: UserState
    effects: list[Effect]

    @property
    def messages(self) -> list[Message]:
        """The dispatchable part of the effects."""
        return [e for e in self.effects if isinstance(e, Message)]
