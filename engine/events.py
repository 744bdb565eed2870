"""Events: the one shape every input is turned into, and the wire format of `herald.events`.

Everything that enters Herald (HTTP API, Segment clients, any Kafka producer, the simulator)
goes through `parse_event`, so validation and normalisation happen in exactly one place and
the runtime only ever sees a well-formed `Event`. This module is on the processor's hot path:
it is pure (no I/O, no clock reads; `received_at` is an argument) and avoids per-event
allocations it does not need.

Accepted forms
    native   {"event_id"?, "type", "user_id", "timestamp"?, "properties"?, "traits"?}
             (plus "emitted"?, set by Herald on events it produces itself). Unknown top-level
             fields are rejected, with a "did you mean" when close.
    Segment  {"type": "track"|"identify"|"page"|"screen"|"group"|"alias", "event"?,
             "userId"|"anonymousId", "messageId"?, "properties"?, "traits"?, "timestamp"?, ...};
             Segment's other fields (context, integrations, sentAt, ...) are accepted and ignored.
             track -> type = its `event`; identify -> "identify" with traits (context.traits
             merged under them); page/screen -> "page_view"/"screen_view" with `name` and
             `category` added to properties; group/alias -> "group"/"alias". The user id is
             `userId`, else `anonymousId`; `originalTimestamp` stands in for a missing timestamp.

Wire format (a Kafka record value on `herald.events`)
    either one native event object (what any outside producer sends), or a packed record
    {"herald_batch": [native event, ...]} written by Herald's API, all for one partition.

`InvalidEvent.reason` values (the `reason` label of `herald_events_invalid_total`):
    malformed_json, not_an_object, unknown_field, missing_type, missing_user_id,
    bad_type (a field has the wrong JSON type; the detail names it), bad_value (right JSON
    type, unacceptable value: an over-long type name, an empty event_id), bad_timestamp.
    (The HTTP API adds too_large and missing_batch for whole bodies.)
"""

from __future__ import annotations

import difflib
from datetime import UTC, datetime
from hashlib import blake2b
from typing import Any, Final

import msgspec
import orjson

from engine.errors import InvalidEvent

__all__ = [
    "MAX_TYPE_LENGTH",
    "PACK_KEY",
    "Event",
    "decode_record",
    "encode_events",
    "format_instant",
    "pack_records",
    "parse_event",
    "parse_event_line",
]

MAX_TYPE_LENGTH: Final = 200
PACK_KEY: Final = "herald_batch"

NATIVE_FIELDS: Final = frozenset(
    {"event_id", "type", "user_id", "timestamp", "properties", "traits", "emitted"}
)
SEGMENT_TYPES: Final = frozenset({"track", "identify", "page", "screen", "group", "alias"})
# Segment's camelCase names for native fields: a hint difflib alone would not find.
_NATIVE_HINTS: Final = {
    "userId": "user_id",
    "anonymousId": "user_id",
    "messageId": "event_id",
    "event": "type",
    "name": "type",
}
# Epoch numbers at or above this are milliseconds (1e11 s is the year 5138; 1e11 ms is 1973).
_MILLIS_THRESHOLD: Final = 100_000_000_000


def format_instant(moment: datetime) -> str:
    """`moment.isoformat()`, several times faster for the usual UTC datetime.

    `datetime.isoformat` costs ~2 µs on an aware value and the core formats an instant or two
    per input; orjson writes exactly the same text (checked against isoformat over millions of
    instants, microseconds and years < 1000 included) in a fraction of that. Anything but a
    plain UTC datetime keeps `isoformat`.
    """
    if type(moment) is datetime and moment.tzinfo is UTC:
        return orjson.dumps(moment).decode()[1:-1]
    return moment.isoformat()


class Event(msgspec.Struct, frozen=True):
    """A validated, normalised event; immutable so it can be shared by every journey it feeds.

    A frozen msgspec Struct rather than a frozen dataclass: one is made per event on the hot
    path, and a frozen dataclass pays ~1.3 µs in `object.__setattr__` calls to build it.
    """

    event_id: str
    type: str
    user_id: str
    timestamp: datetime  # aware, UTC
    properties: dict[str, Any] = msgspec.field(default_factory=dict)
    traits: dict[str, Any] = msgspec.field(default_factory=dict)
    emitted: bool = False  # produced by Herald itself (e.g. message.delivered), not by a client

    def to_json_dict(self) -> dict[str, Any]:
        """The native form; `parse_event(e.to_json_dict())` gives back an equal event."""
        out = _wire_dict(self)
        out["timestamp"] = self.timestamp.isoformat()
        return out

    def as_context(self) -> dict[str, Any]:
        """The `event` name seen by conditions and templates (plain values, no methods)."""
        return {
            "type": self.type,
            "user_id": self.user_id,
            "timestamp": format_instant(self.timestamp),
            "properties": self.properties,
            "event_id": self.event_id,
        }


def parse_event(raw: Any, *, received_at: datetime) -> Event:
    """Validate and normalise one decoded JSON value (native or Segment form).

    `received_at` (aware) stands in for a missing timestamp and salts the generated id of an
    event that has none, so two identical timestamp-less posts are two events, while a retried
    post of an event with a timestamp gets the same id and is deduplicated downstream.
    """
    if not isinstance(raw, dict):
        raise InvalidEvent("not_an_object", f"an event must be a JSON object, got {_kind(raw)}")
    kind = raw.get("type")
    if isinstance(kind, str) and kind in SEGMENT_TYPES and "user_id" not in raw:
        return _parse_segment(raw, kind, received_at)
    return _parse_native(raw, received_at)


def parse_event_line(line: bytes | str, *, received_at: datetime) -> Event:
    """Parse one JSON text (a JSONL line, an HTTP body, a Kafka value holding one event)."""
    return parse_event(_loads(line), received_at=received_at)


def encode_events(events: list[Event]) -> bytes:
    """One packed record value for events that all go to the same partition."""
    # orjson writes an aware datetime exactly as isoformat() does, several times faster
    return orjson.dumps({PACK_KEY: [_wire_dict(e) for e in events]})


def pack_records(events: list[Event], max_bytes: int) -> list[tuple[str, bytes]]:
    """Events of one partition as `(key, value)` records of at most `max_bytes` each, in order.

    The key is the user id of a record's first event. The usual case (everything fits) costs
    one encoding; a larger group is halved until each half fits. A lone event larger than
    `max_bytes` still gets a record of its own.
    """
    if not events:
        return []
    value = encode_events(events)
    if len(value) <= max_bytes or len(events) == 1:
        return [(events[0].user_id, value)]
    half = len(events) // 2
    return pack_records(events[:half], max_bytes) + pack_records(events[half:], max_bytes)


def _wire_dict(event: Event) -> dict[str, Any]:
    out: dict[str, Any] = {
        "event_id": event.event_id,
        "type": event.type,
        "user_id": event.user_id,
        "timestamp": event.timestamp,
        "properties": event.properties,
        "traits": event.traits,
    }
    if event.emitted:
        out["emitted"] = True
    return out


def decode_record(value: bytes, *, received_at: datetime) -> list[Event | InvalidEvent]:
    """Every event of a record value, or the reason it is invalid, in order.

    A bad item never hides the good ones beside it: each is parsed on its own, so the caller
    can process the valid events and dead-letter the rest individually.
    """
    try:
        doc = _loads(value)
    except InvalidEvent as exc:
        return [exc]
    if isinstance(doc, dict) and PACK_KEY in doc and len(doc) == 1:
        items = doc[PACK_KEY]
        if not isinstance(items, list):
            return [InvalidEvent("bad_type", f"{PACK_KEY}: must be an array, got {_kind(items)}")]
    else:
        items = [doc]
    out: list[Event | InvalidEvent] = []
    append = out.append
    for item in items:
        try:
            append(parse_event(item, received_at=received_at))
        except InvalidEvent as exc:
            append(exc)
    return out


# --------------------------------------------------------------------------- native form


def _parse_native(raw: dict[str, Any], received_at: datetime) -> Event:
    if not raw.keys() <= NATIVE_FIELDS:
        raise _unknown_fields(raw)
    kind = _event_type(raw.get("type"), "type")
    user_id = _user_id(raw.get("user_id"), "user_id")
    properties = _object(raw.get("properties"), "properties")
    traits = _object(raw.get("traits"), "traits")
    emitted = raw.get("emitted", False)
    if emitted is not True and emitted is not False:
        raise InvalidEvent("bad_type", f"emitted: must be a boolean, got {_kind(emitted)}")
    ts_raw = raw.get("timestamp")
    timestamp = received_at if ts_raw is None else _timestamp(ts_raw, "timestamp")
    event_id = _event_id(raw, raw.get("event_id"), "event_id", ts_raw is None, received_at)
    return Event(event_id, kind, user_id, timestamp, properties, traits, emitted)


def _unknown_fields(raw: dict[str, Any]) -> InvalidEvent:
    parts = []
    for name in sorted(k for k in raw if k not in NATIVE_FIELDS):
        hint = _NATIVE_HINTS.get(name)
        if hint is None:
            close = difflib.get_close_matches(name, sorted(NATIVE_FIELDS), n=1, cutoff=0.6)
            hint = close[0] if close else None
        parts.append(f"unknown field '{name}'" + (f" (did you mean '{hint}'?)" if hint else ""))
    return InvalidEvent("unknown_field", "; ".join(parts))


# --------------------------------------------------------------------------- Segment form


def _parse_segment(raw: dict[str, Any], kind: str, received_at: datetime) -> Event:
    user_raw = raw.get("userId")
    if user_raw is None or user_raw == "":
        user_id = _user_id(raw.get("anonymousId"), "anonymousId")
    else:
        user_id = _user_id(user_raw, "userId")
    properties = _object(raw.get("properties"), "properties")
    traits: dict[str, Any] = {}
    if kind == "track":
        event_type = _event_type(raw.get("event"), "event")
    elif kind == "identify":
        event_type = "identify"
        context = raw.get("context")
        if isinstance(context, dict):  # context is Segment's; only its traits matter here
            traits.update(_object(context.get("traits"), "context.traits"))
        traits.update(_object(raw.get("traits"), "traits"))
    elif kind in ("page", "screen"):
        event_type = f"{kind}_view"
        properties = _named_properties(raw, properties)
    elif kind == "group":
        event_type = "group"
        properties = {**_object(raw.get("traits"), "traits"), **properties}
        properties["group_id"] = raw.get("groupId")
    else:  # alias
        event_type = "alias"
        properties = {**properties, "previous_id": raw.get("previousId")}
    ts_name = "timestamp"
    ts_raw = raw.get(ts_name)
    if ts_raw is None:  # clients that leave timestamp to the server still send when it happened
        ts_name = "originalTimestamp"
        ts_raw = raw.get(ts_name)
    timestamp = received_at if ts_raw is None else _timestamp(ts_raw, ts_name)
    event_id = _event_id(raw, raw.get("messageId"), "messageId", ts_raw is None, received_at)
    return Event(event_id, event_type, user_id, timestamp, properties, traits)


def _named_properties(raw: dict[str, Any], properties: dict[str, Any]) -> dict[str, Any]:
    """Segment puts a page's or screen's name and category beside its properties."""
    named = dict(properties)
    for key in ("name", "category"):
        value = raw.get(key)
        if value is not None:
            named.setdefault(key, value)
    return named


# --------------------------------------------------------------------------- fields


def _event_type(value: Any, name: str) -> str:
    if value is None or value == "":
        raise InvalidEvent("missing_type", f"{name}: an event type is required")
    if not isinstance(value, str):
        raise InvalidEvent("bad_type", f"{name}: must be a string, got {_kind(value)}")
    if len(value) > MAX_TYPE_LENGTH:
        raise InvalidEvent(
            "bad_value", f"{name}: longer than {MAX_TYPE_LENGTH} characters ({len(value)})"
        )
    return value


def _user_id(value: Any, name: str) -> str:
    if isinstance(value, str):
        if value:
            return value
    elif isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    elif value is not None:
        raise InvalidEvent("bad_type", f"{name}: must be a string or integer, got {_kind(value)}")
    raise InvalidEvent("missing_user_id", f"{name}: a non-empty user id is required")


def _object(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidEvent("bad_type", f"{name}: must be an object, got {_kind(value)}")
    return value


def _timestamp(value: Any, name: str) -> datetime:
    if isinstance(value, str):
        try:
            ts = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidEvent(
                "bad_timestamp", f"{name}: {value[:64]!r} is not an ISO 8601 date-time"
            ) from None
        if ts.tzinfo is None:  # naive: taken as UTC, the only zone a client can assume we use
            return ts.replace(tzinfo=UTC)
        return ts if ts.tzinfo is UTC else ts.astimezone(UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000 if abs(value) >= _MILLIS_THRESHOLD else value
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidEvent(
                "bad_timestamp", f"{name}: {value!r} is out of range for epoch seconds/millis"
            ) from None
    raise InvalidEvent(
        "bad_type", f"{name}: must be an ISO 8601 string or epoch number, got {_kind(value)}"
    )


def _event_id(
    raw: dict[str, Any], value: Any, name: str, no_timestamp: bool, received_at: datetime
) -> str:
    if isinstance(value, str):
        if value:
            return value
        raise InvalidEvent("bad_value", f"{name}: must not be empty")
    if value is not None:
        raise InvalidEvent("bad_type", f"{name}: must be a string, got {_kind(value)}")
    digest = blake2b(orjson.dumps(raw, option=orjson.OPT_SORT_KEYS), digest_size=16)
    if no_timestamp:
        digest.update(b"\n" + received_at.isoformat().encode())
    return digest.hexdigest()


def _loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("malformed_json", str(exc)) from None


def _kind(value: Any) -> str:
    """The JSON name of a value's type, for messages a person reads."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
