"""Records on `herald.events` turned into the core's inputs.

Besides events (one per record from outside producers, packed by Herald's API), the topic
carries Herald's own control records, so that timers, schedules and profile imports re-enter
through the partition of the users they concern and the partition's owner stays the only
writer of those users:

    {"herald_control": "tick", "at": 1767225600.0, "users": ["u1", ...]}
    {"herald_control": "schedule", "journey": "weekly_digest", "at": ..., "users": [...]}
    {"herald_control": "profile", "at": ..., "profiles": [{"user_id": ..., "traits": {...}}]}
    {"herald_control": "clock", "at": ...}     (event-time mode: advance the partition clock)

Each input gets a sequence number `offset * SEQ_STRIDE + index`, which user states record so
a replayed record (at-least-once delivery) is recognised per user and skipped exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from engine.errors import InvalidEvent
from engine.events import PACK_KEY, Event, parse_event

SEQ_STRIDE = 1 << 16
CONTROL_KEY = "herald_control"
CONTROL_KINDS = ("tick", "schedule", "profile", "clock")


@dataclass(slots=True)  # not frozen: one is made per event, and a frozen init costs 3x
class Input:
    """One thing to apply to one user (user_id empty for partition-level clock inputs)."""

    seq: int
    user_id: str
    kind: str
    event: Event | None = None
    at: float = 0.0
    journey: str = ""
    traits: dict[str, Any] | None = None
    now: float = 0.0  # when it is applied (set by the processor, in record order)


@dataclass(frozen=True, slots=True)
class Rejected:
    """An unusable item: goes to the dead-letter topic with its reason."""

    seq: int
    reason: str
    detail: str
    raw: bytes


def decode(value: bytes | None, offset: int, received_at: datetime) -> list[Input | Rejected]:
    """All inputs of one record value, in order; a poison item never hides its neighbours."""
    base = offset * SEQ_STRIDE
    if not value:
        return [Rejected(base, "empty_record", "record has no value", b"")]
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return [Rejected(base, "malformed_json", str(exc), value)]
    if isinstance(doc, dict) and CONTROL_KEY in doc:
        return _control(doc, base, value)
    items = doc.get(PACK_KEY) if isinstance(doc, dict) and PACK_KEY in doc else [doc]
    if not isinstance(items, list) or len(items) >= SEQ_STRIDE:
        return [Rejected(base, "bad_type", f"{PACK_KEY} must be a list of < {SEQ_STRIDE}", value)]
    out: list[Input | Rejected] = []
    for index, item in enumerate(items):
        try:
            event = parse_event(item, received_at=received_at)
        except InvalidEvent as exc:
            out.append(Rejected(base + index, exc.reason, exc.detail, orjson.dumps(item)))
            continue
        out.append(Input(base + index, event.user_id, "event", event))
    return out


def _control(doc: dict[str, Any], base: int, raw: bytes) -> list[Input | Rejected]:
    kind = doc.get(CONTROL_KEY)
    at = doc.get("at")
    if kind not in CONTROL_KINDS or not isinstance(at, int | float):
        return [Rejected(base, "bad_control", f"unknown control record {kind!r}", raw)]
    if kind == "clock":
        return [Input(base, "", "clock", at=float(at))]
    if kind == "profile":
        profiles = doc.get("profiles")
        if not isinstance(profiles, list):
            return [Rejected(base, "bad_control", "profile record needs `profiles`", raw)]
        out: list[Input | Rejected] = []
        for index, item in enumerate(profiles):
            user = item.get("user_id") if isinstance(item, dict) else None
            traits = item.get("traits") if isinstance(item, dict) else None
            if not isinstance(user, str) or not user or not isinstance(traits, dict):
                out.append(
                    Rejected(base + index, "bad_control", "profile needs user_id, traits", raw)
                )
                continue
            out.append(Input(base + index, user, "profile", at=float(at), traits=traits))
        return out
    users = doc.get("users")
    if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
        return [Rejected(base, "bad_control", "control record needs a list of `users`", raw)]
    journey = str(doc.get("journey", ""))
    return [
        Input(base + index, user, kind, at=float(at), journey=journey)
        for index, user in enumerate(users)
    ]


def control(kind: str, at: float, **fields: Any) -> bytes:
    """Encode a control record."""
    return orjson.dumps({CONTROL_KEY: kind, "at": at, **fields})
