"""Event parsing and the `herald.events` wire format, table-driven."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from hashlib import blake2b
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from engine.errors import InvalidEvent
from engine.events import (
    PACK_KEY,
    Event,
    decode_record,
    encode_events,
    format_instant,
    pack_records,
    parse_event,
    parse_event_line,
)

RECEIVED = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
T0 = datetime(2026, 5, 1, 10, 30, 0, tzinfo=UTC)

# What analytics.js sends for `analytics.track("Course Clicked", {...})` (Segment's spec page).
SEGMENT_TRACK: dict[str, Any] = {
    "anonymousId": "23adfd82-aa0f-45a7-a756-24f2a7a4c895",
    "context": {
        "library": {"name": "analytics.js", "version": "2.11.1"},
        "page": {
            "path": "/academy/",
            "referrer": "",
            "search": "",
            "title": "Analytics Academy",
            "url": "https://segment.com/academy/",
        },
        "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_10_5) AppleWebKit/537.36",
        "ip": "108.0.78.21",
        "traits": {"plan": "pro"},
    },
    "event": "Course Clicked",
    "integrations": {},
    "messageId": "ajs-f8ca1e4de5024d9430b3928bd8ac6b96",
    "properties": {"title": "Intro to Analytics"},
    "receivedAt": "2015-12-12T19:11:01.266Z",
    "sentAt": "2015-12-12T19:11:01.169Z",
    "timestamp": "2015-12-12T19:11:01.249Z",
    "type": "track",
    "userId": "AiUGstSDIg",
    "originalTimestamp": "2015-12-12T19:11:01.152Z",
    "_metadata": {"bundled": ["Segment.io"], "unbundled": []},
}

# What analytics.js sends for `analytics.identify("97980cfea0067", {...})`.
SEGMENT_IDENTIFY: dict[str, Any] = {
    "anonymousId": "507f191e810c19729de860ea",
    "channel": "browser",
    "context": {
        "ip": "8.8.8.8",
        "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_10_2) AppleWebKit/537.36",
        "traits": {"plan": "free", "locale": "zh-CN"},
    },
    "integrations": {"All": False, "Mixpanel": True, "Salesforce": True},
    "messageId": "022bb90c-bbac-11e4-8dfc-aa07a5b093db",
    "receivedAt": "2015-02-23T22:28:55.387Z",
    "sentAt": "2015-02-23T22:28:55.111Z",
    "timestamp": "2015-02-23T22:28:55.111Z",
    "traits": {
        "name": "Peter Gibbons",
        "email": "peter@example.com",
        "plan": "premium",
        "logins": 5,
        "address": {"street": "6th St", "city": "San Francisco", "state": "CA"},
    },
    "type": "identify",
    "userId": "97980cfea0067",
    "version": "1.1",
}

# What analytics.js sends for `analytics.page("Home", {...})`.
SEGMENT_PAGE: dict[str, Any] = {
    "anonymousId": "507f191e810c19729de860ea",
    "channel": "browser",
    "context": {"ip": "8.8.8.8", "userAgent": "Mozilla/5.0"},
    "integrations": {"All": True, "Mixpanel": False, "Salesforce": False},
    "messageId": "022bb90c-bbac-11e4-8dfc-aa07a5b093db",
    "name": "Home",
    "properties": {"title": "Welcome | Initech", "url": "http://www.example.com"},
    "receivedAt": "2015-02-23T22:28:55.387Z",
    "sentAt": "2015-02-23T22:28:55.111Z",
    "timestamp": "2015-02-23T22:28:55.111Z",
    "type": "page",
    "userId": "97980cfea0067",
    "version": "1.1",
}

# One item of the `/v1/batch` body analytics-python posts for `analytics.track(...)`.
SEGMENT_PYTHON_TRACK: dict[str, Any] = {
    "integrations": {},
    "anonymousId": None,
    "properties": {"revenue": 39.95, "shipping": "2-day"},
    "timestamp": "2026-05-01T18:30:00.123456+08:00",
    "context": {"library": {"name": "analytics-python", "version": "2.3.3"}},
    "type": "track",
    "userId": 1234,
    "event": "Order Completed",
    "messageId": "6a56c6fd-7c2e-4b8e-9f55-7a3c11a0d0c5",
}


def parse(raw: Any) -> Event:
    return parse_event(raw, received_at=RECEIVED)


# --------------------------------------------------------------------------- native form


def test_native_minimal_defaults() -> None:
    e = parse({"type": "signup", "user_id": "u1"})
    assert (e.type, e.user_id, e.timestamp, e.properties, e.traits, e.emitted) == (
        "signup",
        "u1",
        RECEIVED,
        {},
        {},
        False,
    )
    assert len(e.event_id) == 32 and int(e.event_id, 16) >= 0


def test_native_full() -> None:
    raw = {
        "event_id": "e-1",
        "type": "purchase",
        "user_id": "u1",
        "timestamp": "2026-05-01T10:30:00Z",
        "properties": {"amount": 12.5},
        "traits": {"country": "CN"},
    }
    assert parse(raw) == Event("e-1", "purchase", "u1", T0, {"amount": 12.5}, {"country": "CN"})


def test_native_identify_with_user_id_is_not_segment() -> None:
    e = parse({"type": "identify", "user_id": "u1", "traits": {"email": "a@example.com"}})
    assert (e.type, e.user_id, e.traits) == ("identify", "u1", {"email": "a@example.com"})


@pytest.mark.parametrize(
    ("user_id", "expected"),
    [("u1", "u1"), (42, "42"), (0, "0"), ("  spaced ", "  spaced ")],
)
def test_user_id_forms(user_id: Any, expected: str) -> None:
    assert parse({"type": "x", "user_id": user_id}).user_id == expected


# --------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-05-01T10:30:00Z", T0),
        ("2026-05-01T10:30:00+00:00", T0),
        ("2026-05-01T18:30:00+08:00", T0),
        ("2026-05-01T05:30:00-05:00", T0),
        ("2026-05-01T10:30:00", T0),  # naive: UTC
        ("2026-05-01 10:30:00", T0),
        ("2026-05-01T10:30:00.250Z", T0 + timedelta(milliseconds=250)),
        (1777631400, T0),  # epoch seconds
        (1777631400.5, T0 + timedelta(milliseconds=500)),
        (1777631400000, T0),  # epoch millis
        (1777631400250, T0 + timedelta(milliseconds=250)),
        (None, RECEIVED),  # null is "not given"
    ],
)
def test_timestamp_forms(value: Any, expected: datetime) -> None:
    ts = parse({"type": "x", "user_id": "u", "timestamp": value}).timestamp
    assert ts == expected
    assert ts.tzinfo is UTC


def test_missing_timestamp_is_received_at() -> None:
    assert parse({"type": "x", "user_id": "u"}).timestamp == RECEIVED


def test_received_at_in_other_zone_is_kept_as_given() -> None:
    other = RECEIVED.astimezone(timezone(timedelta(hours=8)))
    assert parse_event({"type": "x", "user_id": "u"}, received_at=other).timestamp == RECEIVED


# --------------------------------------------------------------------------- invalid events


@pytest.mark.parametrize(
    ("raw", "reason", "in_detail"),
    [
        ([1, 2], "not_an_object", "array"),
        ("purchase", "not_an_object", "string"),
        (None, "not_an_object", "null"),
        ({"user_id": "u"}, "missing_type", "type"),
        ({"type": "", "user_id": "u"}, "missing_type", "type"),
        ({"type": None, "user_id": "u"}, "missing_type", "type"),
        ({"type": "x"}, "missing_user_id", "user_id"),
        ({"type": "x", "user_id": ""}, "missing_user_id", "user_id"),
        ({"type": "x", "user_id": None}, "missing_user_id", "user_id"),
        ({"type": 5, "user_id": "u"}, "bad_type", "type"),
        ({"type": ["a"], "user_id": "u"}, "bad_type", "type"),
        ({"type": "x", "user_id": 1.5}, "bad_type", "user_id"),
        ({"type": "x", "user_id": True}, "bad_type", "user_id"),
        ({"type": "x", "user_id": {"id": 1}}, "bad_type", "user_id"),
        ({"type": "x", "user_id": "u", "properties": []}, "bad_type", "properties"),
        ({"type": "x", "user_id": "u", "properties": "a=1"}, "bad_type", "properties"),
        ({"type": "x", "user_id": "u", "traits": 3}, "bad_type", "traits"),
        ({"type": "x", "user_id": "u", "event_id": 7}, "bad_type", "event_id"),
        ({"type": "x", "user_id": "u", "emitted": "yes"}, "bad_type", "emitted"),
        ({"type": "x", "user_id": "u", "timestamp": True}, "bad_type", "timestamp"),
        ({"type": "x", "user_id": "u", "timestamp": [2026]}, "bad_type", "timestamp"),
        ({"type": "x" * 201, "user_id": "u"}, "bad_value", "200"),
        ({"type": "x", "user_id": "u", "event_id": ""}, "bad_value", "event_id"),
        ({"type": "x", "user_id": "u", "timestamp": "yesterday"}, "bad_timestamp", "yesterday"),
        ({"type": "x", "user_id": "u", "timestamp": "2026-13-01T00:00:00Z"}, "bad_timestamp", ""),
        ({"type": "x", "user_id": "u", "timestamp": "1777631400"}, "bad_timestamp", ""),
        ({"type": "x", "user_id": "u", "timestamp": 1e300}, "bad_timestamp", "range"),
        ({"type": "x", "user_id": "u", "timestamp": float("nan")}, "bad_timestamp", "range"),
        ({"type": "x", "user": "u"}, "unknown_field", "did you mean 'user_id'?"),
        ({"type": "x", "user_id": "u", "timestmp": 1}, "unknown_field", "mean 'timestamp'?"),
        ({"type": "x", "user_id": "u", "props": {}}, "unknown_field", "did you mean 'properties'"),
        ({"event": "x", "userId": "u"}, "unknown_field", "'userId' (did you mean 'user_id'?)"),
        ({"type": "x", "user_id": "u", "zzz": 1}, "unknown_field", "unknown field 'zzz'"),
        # Segment form: same reasons, Segment's field names in the detail
        ({"type": "track", "userId": "u"}, "missing_type", "event"),
        ({"type": "track", "userId": "u", "event": 3}, "bad_type", "event"),
        ({"type": "track", "event": "x"}, "missing_user_id", "anonymousId"),
        ({"type": "track", "event": "x", "userId": "", "anonymousId": ""}, "missing_user_id", ""),
        ({"type": "track", "event": "x", "userId": [1]}, "bad_type", "userId"),
        ({"type": "track", "event": "x", "userId": "u", "properties": 1}, "bad_type", "properties"),
        ({"type": "identify", "userId": "u", "traits": "vip"}, "bad_type", "traits"),
        (
            {"type": "identify", "userId": "u", "context": {"traits": []}},
            "bad_type",
            "context.traits",
        ),
        ({"type": "track", "event": "x", "userId": "u", "messageId": 9}, "bad_type", "messageId"),
        (
            {"type": "track", "event": "x", "userId": "u", "timestamp": "soon"},
            "bad_timestamp",
            "timestamp",
        ),
        (
            {"type": "track", "event": "x", "userId": "u", "originalTimestamp": "soon"},
            "bad_timestamp",
            "originalTimestamp",
        ),
    ],
)
def test_invalid(raw: Any, reason: str, in_detail: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse(raw)
    assert info.value.reason == reason
    assert in_detail in info.value.detail


def test_unknown_fields_are_all_named() -> None:
    with pytest.raises(InvalidEvent) as info:
        parse({"type": "x", "user_id": "u", "b": 1, "a": 2})
    assert info.value.detail == "unknown field 'a'; unknown field 'b'"


@pytest.mark.parametrize(
    ("line", "reason"),
    [(b"{", "malformed_json"), ("", "malformed_json"), (b"[]", "not_an_object")],
)
def test_parse_event_line_invalid(line: bytes | str, reason: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_event_line(line, received_at=RECEIVED)
    assert info.value.reason == reason


def test_parse_event_line() -> None:
    line = b'{"type":"x","user_id":7,"timestamp":"2026-05-01T10:30:00Z","event_id":"a"}'
    assert parse_event_line(line, received_at=RECEIVED) == Event("a", "x", "7", T0, {}, {})
    assert parse_event_line(line.decode(), received_at=RECEIVED).user_id == "7"


# --------------------------------------------------------------------------- Segment form


def test_segment_track() -> None:
    e = parse(SEGMENT_TRACK)
    assert e == Event(
        event_id="ajs-f8ca1e4de5024d9430b3928bd8ac6b96",
        type="Course Clicked",
        user_id="AiUGstSDIg",
        timestamp=datetime(2015, 12, 12, 19, 11, 1, 249000, tzinfo=UTC),
        properties={"title": "Intro to Analytics"},
        traits={},  # context.traits of a track describe the user, but only identify sets them
    )


def test_segment_track_from_analytics_python() -> None:
    e = parse(SEGMENT_PYTHON_TRACK)
    assert (e.type, e.user_id, e.event_id) == (
        "Order Completed",
        "1234",
        "6a56c6fd-7c2e-4b8e-9f55-7a3c11a0d0c5",
    )
    assert e.timestamp == datetime(2026, 5, 1, 10, 30, 0, 123456, tzinfo=UTC)
    assert e.properties == {"revenue": 39.95, "shipping": "2-day"}


def test_segment_anonymous_id_when_no_user_id() -> None:
    raw = {**SEGMENT_TRACK, "userId": None}
    assert parse(raw).user_id == "23adfd82-aa0f-45a7-a756-24f2a7a4c895"
    raw.pop("userId")
    assert parse(raw).user_id == "23adfd82-aa0f-45a7-a756-24f2a7a4c895"


def test_segment_identify_merges_context_traits() -> None:
    e = parse(SEGMENT_IDENTIFY)
    assert e.type == "identify"
    assert e.user_id == "97980cfea0067"
    assert e.event_id == "022bb90c-bbac-11e4-8dfc-aa07a5b093db"
    assert e.traits == {
        "name": "Peter Gibbons",
        "email": "peter@example.com",
        "plan": "premium",  # top-level traits win over context.traits
        "locale": "zh-CN",
        "logins": 5,
        "address": {"street": "6th St", "city": "San Francisco", "state": "CA"},
    }


def test_segment_page_and_screen() -> None:
    e = parse(SEGMENT_PAGE)
    assert e.type == "page_view"
    assert e.properties == {
        "title": "Welcome | Initech",
        "url": "http://www.example.com",
        "name": "Home",
    }
    screen = parse({**SEGMENT_PAGE, "type": "screen", "category": "Nav"})
    assert screen.type == "screen_view"
    assert screen.properties["category"] == "Nav"


def test_segment_group_and_alias() -> None:
    g = parse({"type": "group", "userId": "u", "groupId": "g1", "traits": {"plan": "x"}})
    assert (g.type, g.properties) == ("group", {"plan": "x", "group_id": "g1"})
    a = parse({"type": "alias", "userId": "u", "previousId": "anon-1"})
    assert (a.type, a.properties) == ("alias", {"previous_id": "anon-1"})


def test_segment_original_timestamp_when_no_timestamp() -> None:
    raw = {k: v for k, v in SEGMENT_TRACK.items() if k != "timestamp"}
    assert parse(raw).timestamp == datetime(2015, 12, 12, 19, 11, 1, 152000, tzinfo=UTC)


def test_segment_unknown_fields_are_ignored() -> None:
    # Segment clients add fields over time; they must keep working unchanged.
    assert parse({**SEGMENT_TRACK, "someFutureField": {"a": 1}}).type == "Course Clicked"


# --------------------------------------------------------------------------- event ids


def test_event_id_is_deterministic_with_timestamp() -> None:
    raw = {"type": "x", "user_id": "u", "timestamp": "2026-05-01T10:30:00Z", "properties": {}}
    reordered = dict(reversed(list(raw.items())))
    a = parse_event(raw, received_at=RECEIVED)
    b = parse_event(reordered, received_at=RECEIVED + timedelta(hours=1))
    assert a.event_id == b.event_id  # a retried post is the same event
    expected = blake2b(orjson.dumps(raw, option=orjson.OPT_SORT_KEYS), digest_size=16)
    assert a.event_id == expected.hexdigest()


def test_event_id_without_timestamp_includes_received_at() -> None:
    raw = {"type": "x", "user_id": "u"}
    a = parse_event(raw, received_at=RECEIVED)
    assert a.event_id == parse_event(raw, received_at=RECEIVED).event_id
    assert a.event_id != parse_event(raw, received_at=RECEIVED + timedelta(seconds=1)).event_id
    expected = blake2b(orjson.dumps(raw, option=orjson.OPT_SORT_KEYS), digest_size=16)
    expected.update(b"\n" + RECEIVED.isoformat().encode())
    assert a.event_id == expected.hexdigest()


def test_event_id_differs_with_content() -> None:
    base = {"type": "x", "user_id": "u", "timestamp": 1777631400}
    assert parse(base).event_id != parse({**base, "properties": {"a": 1}}).event_id


def test_segment_without_message_id_gets_deterministic_id() -> None:
    raw = {k: v for k, v in SEGMENT_TRACK.items() if k != "messageId"}
    assert parse(raw).event_id == parse(copy.deepcopy(raw)).event_id


def test_parse_does_not_mutate_input() -> None:
    raw = copy.deepcopy(SEGMENT_IDENTIFY)
    parse(raw)
    assert raw == SEGMENT_IDENTIFY


# --------------------------------------------------------------------------- Event methods


def test_to_json_dict_round_trips() -> None:
    e = Event("e1", "purchase", "u1", T0 + timedelta(microseconds=5), {"a": [1]}, {"b": None})
    d = e.to_json_dict()
    assert d == {
        "event_id": "e1",
        "type": "purchase",
        "user_id": "u1",
        "timestamp": "2026-05-01T10:30:00.000005+00:00",
        "properties": {"a": [1]},
        "traits": {"b": None},
    }
    assert parse(d) == e
    emitted = Event("e2", "message.delivered", "u1", T0, {}, {}, emitted=True)
    assert emitted.to_json_dict()["emitted"] is True
    assert parse(emitted.to_json_dict()) == emitted


def test_as_context() -> None:
    e = Event("e1", "purchase", "u1", T0, {"amount": 3}, {"x": 1})
    assert e.as_context() == {
        "type": "purchase",
        "user_id": "u1",
        "timestamp": "2026-05-01T10:30:00+00:00",
        "properties": {"amount": 3},
        "event_id": "e1",
    }


def test_event_is_frozen_and_slotted() -> None:
    e = Event("e1", "x", "u", T0, {}, {})
    with pytest.raises(AttributeError):
        e.type = "y"  # type: ignore[misc]
    assert not hasattr(e, "__dict__")


# --------------------------------------------------------------------------- wire format


def test_encode_decode_packed() -> None:
    events = [
        Event(f"e{i}", "x", f"u{i}", T0 + timedelta(seconds=i), {"i": i}, {}) for i in range(3)
    ]
    value = encode_events(events)
    assert list(orjson.loads(value)) == [PACK_KEY]
    assert decode_record(value, received_at=RECEIVED) == events


def test_decode_single_native_object() -> None:
    value = b'{"type":"x","user_id":"u","event_id":"a","timestamp":1777631400}'
    assert decode_record(value, received_at=RECEIVED) == [Event("a", "x", "u", T0, {}, {})]


def test_decode_mixed_good_and_bad_items() -> None:
    good = Event("e1", "x", "u1", T0, {}, {}).to_json_dict()
    value = orjson.dumps(
        {
            PACK_KEY: [
                good,
                {"type": "x"},
                "junk",
                {**good, "event_id": "e2", "timestamp": "nope"},
                {**good, "event_id": "e3"},
            ]
        }
    )
    out = decode_record(value, received_at=RECEIVED)
    assert [o.reason if isinstance(o, InvalidEvent) else o.event_id for o in out] == [
        "e1",
        "missing_user_id",
        "not_an_object",
        "bad_timestamp",
        "e3",
    ]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json", "malformed_json"),
        (b"", "malformed_json"),
        (b"[1]", "not_an_object"),
        (b'{"herald_batch": {"a": 1}}', "bad_type"),
        (b'{"herald_batch": [], "type": "x"}', "unknown_field"),  # not a pack: an odd event
    ],
)
def test_decode_whole_record_invalid(value: bytes, reason: str) -> None:
    out = decode_record(value, received_at=RECEIVED)
    assert len(out) == 1 and isinstance(out[0], InvalidEvent)
    assert out[0].reason == reason


def test_decode_empty_pack() -> None:
    assert decode_record(b'{"herald_batch": []}', received_at=RECEIVED) == []


def test_pack_records_splits_by_size_and_keeps_order() -> None:
    events = [Event(f"e{i:02}", "x", f"u{i:02}", T0, {"pad": "p" * 100}, {}) for i in range(50)]
    whole = encode_events(events)
    assert pack_records(events, len(whole)) == [("u00", whole)]
    for limit in (len(whole) - 1, len(encode_events(events[:10])), 1000):
        records = pack_records(events, limit)
        assert len(records) > 1
        assert all(len(v) <= limit for _, v in records)
        unpacked = [item for _, v in records for item in orjson.loads(v)[PACK_KEY]]
        assert unpacked == [e.to_json_dict() for e in events]
        for key, value in records:
            assert key == orjson.loads(value)[PACK_KEY][0]["user_id"]
    alone = pack_records(events, 1)  # each event is over the limit: one record each
    assert alone == [(e.user_id, encode_events([e])) for e in events]
    assert pack_records([], 100) == []


@pytest.mark.parametrize("micro", [0, 1, 123000, 999999])
def test_wire_timestamp_is_isoformat(micro: int) -> None:
    for zone in (UTC, ZoneInfo("UTC"), ZoneInfo("Asia/Shanghai"), timezone(timedelta(hours=-5))):
        ts = datetime(2026, 5, 1, 10, 30, 0, micro, tzinfo=zone)
        e = Event("e", "x", "u", ts, {}, {})
        [item] = orjson.loads(encode_events([e]))[PACK_KEY]
        assert item == e.to_json_dict()
        assert item["timestamp"] == ts.isoformat()


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 5, 1, 10, 30, tzinfo=UTC),
        datetime(2026, 5, 1, 10, 30, 0, 1, tzinfo=UTC),
        datetime(2026, 5, 1, 10, 30, 0, 999999, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime.fromtimestamp(-1.5, UTC),
        datetime(2026, 5, 1, 10, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2026, 5, 1, 10, 30, tzinfo=ZoneInfo("Asia/Shanghai")),
        datetime(2026, 5, 1, 10, 30),
    ],
)
def test_format_instant_is_isoformat(moment: datetime) -> None:
    assert format_instant(moment) == moment.isoformat()


def test_format_instant_is_isoformat_over_many_instants() -> None:
    step = 86400 * 365.25 * 300 / 20011 + 0.123457
    for i in range(20011):
        moment = datetime.fromtimestamp(-2e9 + i * step, UTC)
        assert format_instant(moment) == moment.isoformat()
