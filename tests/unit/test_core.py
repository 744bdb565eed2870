"""The runtime core, one rule of journeys.md at a time: tiny rule sets, explicit `now`, no services.

Every test drives `engine.runtime.core.Engine` directly, through `Driver`, which keeps one
user's state between inputs. The `serialise` fixture runs each test twice: once handing the
state object from one input to the next, once turning it into its stored form
(`UserState.to_doc()` -> orjson -> `from_doc()`) between inputs, which is what the processor
does with Redis. A rule that only holds while the object stays in memory fails the second run.
"""

from __future__ import annotations

import ast
import itertools
import json
import re
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from string import Template
from typing import Any, Protocol

import orjson
import pytest

from engine.events import Event
from engine.language.loader import load_rules
from engine.runtime.core import Engine, EngineOptions
from engine.runtime.effects import Count, Effect, Emitted, Failure, Message, Outcome, iso
from engine.runtime.ids import emitted_event_id, message_id, split_point
from engine.runtime.state import UserState
from engine.unsubscribe import unsubscribe_url

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)  # a Monday, 12:00 UTC
DAY = timedelta(days=1)

PROFILE: dict[str, Any] = {
    "first_name": "Ann",
    "email": "ann@example.com",
    "phone": "+15550001",
    "wechat_openid": "wx-ann",
    "timezone": "UTC",
    "tags": [],
}
TEMPLATES = {
    "hello.email.j2": (
        "Subject: Hello {{ profile.first_name }}\n\n"
        "Hi {{ profile.first_name }} ({{ journey.id }})\n"
        "Unsubscribe: {{ unsubscribe_url }}\n"
    ),
    "hello.email.zh-CN.j2": (
        "Subject: 你好{{ profile.first_name }}\n\n{{ profile.first_name }}，你好\n"
    ),
    "hello.sms.j2": "Hi {{ profile.first_name }}, {{ event.type }}",
    "broken.email.j2": "Subject: Broken\n\n{{ profile.no_such_trait }}\n",
}


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def utc(text: str) -> datetime:
    """`"2026-05-04 12:00"` as an aware UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# ---------------------------------------------------------------------------- harness


def write_rules(
    root: Path,
    journeys: list[str],
    *,
    segments: dict[str, str] | None = None,
    metrics: str | None = None,
    settings: str | None = None,
) -> Path:
    """A rules folder: one file per journey (named after its id), segments, templates."""
    rules = root / "rules"
    (rules / "journeys").mkdir(parents=True)
    for text in journeys:
        match = re.search(r"^journey:\s*(\S+)", text, re.MULTILINE)
        assert match, text
        (rules / "journeys" / f"{match[1]}.yaml").write_text(text, encoding="utf-8")
    (rules / "segments").mkdir()
    for name, when in (segments or {}).items():
        body = f"segment: {name}\nwhen: {json.dumps(when)}\n"
        (rules / "segments" / f"{name}.yaml").write_text(body, encoding="utf-8")
    (rules / "templates").mkdir()
    for name, text in TEMPLATES.items():
        (rules / "templates" / name).write_text(text, encoding="utf-8")
    if metrics is not None:
        (rules / "metrics.yaml").write_text(metrics, encoding="utf-8")
    if settings is not None:
        (rules / "settings.yaml").write_text(settings, encoding="utf-8")
    return rules


def stored(state: UserState) -> UserState:
    """The state as the processor reads it back from Redis."""
    return UserState.from_doc(orjson.loads(orjson.dumps(state.to_doc())))


class Driver:
    """One user's inputs through the core; every effect is kept in `effects`."""

    def __init__(self, engine: Engine, user: str, *, serialise: bool) -> None:
        self.engine = engine
        self.serialise = serialise
        self.state = UserState(user)
        self.effects: list[Effect] = []
        self._ids = itertools.count(1)

    def other(self, user: str) -> Driver:
        """Another user on the same engine."""
        return Driver(self.engine, user, serialise=self.serialise)

    def _apply(self, call: Callable[[UserState], Outcome]) -> list[Effect]:
        state = stored(self.state) if self.serialise else self.state
        outcome = call(state)
        self.state = outcome.state
        self.effects.extend(outcome.effects)
        return outcome.effects

    def event(
        self,
        kind: str,
        ts: datetime,
        *,
        now: datetime | None = None,
        props: dict[str, Any] | None = None,
        traits: dict[str, Any] | None = None,
        event_id: str | None = None,
        emitted: bool = False,
    ) -> list[Effect]:
        event = Event(
            event_id=event_id or f"e-{next(self._ids)}",
            type=kind,
            user_id=self.state.user_id,
            timestamp=ts,
            properties=props or {},
            traits=traits or {},
            emitted=emitted,
        )
        return self._apply(lambda s: self.engine.handle_event(s, event, now or ts))

    def load(self, traits: dict[str, Any], now: datetime) -> list[Effect]:
        return self._apply(lambda s: self.engine.handle_profile(s, traits, now))

    def tick(self, now: datetime) -> list[Effect]:
        return self._apply(lambda s: self.engine.handle_tick(s, now))

    def schedule(self, journey: str, fire_at: datetime) -> list[Effect]:
        return self._apply(lambda s: self.engine.handle_schedule(s, journey, fire_at, fire_at))

    @property
    def messages(self) -> list[Message]:
        return messages(self.effects)

    def sent(self) -> list[tuple[datetime, str, str]]:
        """(virtual time, journey, step) of every message so far."""
        return [(at_of(m), m.journey, m.step) for m in self.messages]

    def counted(self, metric: str) -> list[dict[str, str]]:
        return counted(self.effects, metric)


class Make(Protocol):
    def __call__(
        self,
        journeys: str | list[str],
        *,
        segments: dict[str, str] | None = ...,
        metrics: str | None = ...,
        settings: str | None = ...,
        profile: dict[str, Any] | None = ...,
        loaded_at: datetime = ...,
        user: str = ...,
    ) -> Driver: ...


def messages(effects: list[Effect]) -> list[Message]:
    return [e for e in effects if isinstance(e, Message)]


def counted(effects: list[Effect], metric: str) -> list[dict[str, str]]:
    return [dict(e.labels) for e in effects if isinstance(e, Count) and e.metric == metric]


def at_of(message: Message) -> datetime:
    return datetime.fromtimestamp(message.at, UTC)


@pytest.fixture(params=["object", "serialised"])
def serialise(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "serialised")


@pytest.fixture
def make(tmp_path: Path, serialise: bool) -> Make:
    folders = itertools.count()

    def factory(
        journeys: str | list[str],
        *,
        segments: dict[str, str] | None = None,
        metrics: str | None = None,
        settings: str | None = None,
        profile: dict[str, Any] | None = PROFILE,
        loaded_at: datetime = T0 - DAY,
        user: str = "u1",
    ) -> Driver:
        texts = [journeys] if isinstance(journeys, str) else journeys
        folder = write_rules(
            tmp_path / f"r{next(folders)}",
            texts,
            segments=segments,
            metrics=metrics,
            settings=settings,
        )
        driver = Driver(Engine(load_rules(folder)), user, serialise=serialise)
        if profile is not None:
            driver.load(dict(profile), loaded_at)
        return driver

    return factory


def mid(driver: Driver, journey: str, entry: str, step: str, user: str = "u1") -> str:
    """The message id journeys.md promises for (journey, version, user, entry, step)."""
    return message_id(journey, driver.engine.rules.versions[journey], user, entry, step)


SEND = '{channel: email, subject: "s", body: "b"}'


# ---------------------------------------------------------------------------- triggers

EVENT_JOURNEY = """
journey: ev
trigger: {event: cart_add, when: "event.properties.value >= 50"}
reentry: always
steps:
  - send: {channel: email, subject: "Cart {{ event.properties.value }}", body: "b"}
"""


@pytest.mark.parametrize(
    ("kind", "props", "subject", "errors"),
    [
        ("cart_add", {"value": 50}, "Cart 50", 0),
        ("cart_add", {"value": 120.5}, "Cart 120.5", 0),
        ("cart_add", {"value": 49}, None, 0),
        ("cart_add", {}, None, 1),  # none >= 50: a type error, so false, and counted
        ("cart_add", {"value": "lots"}, None, 1),
        ("cart_remove", {"value": 99}, None, 0),
    ],
)
def test_event_trigger_when(
    make: Make, kind: str, props: dict[str, Any], subject: str | None, errors: int
) -> None:
    d = make(EVENT_JOURNEY)
    d.event(kind, T0, props=props)
    assert [m.subject for m in d.messages] == ([subject] if subject else [])
    assert len(d.counted("herald_condition_errors_total")) == errors
    assert len(d.counted("herald_journey_entries_total")) == (1 if subject else 0)
    if subject:
        assert d.messages[0].message_id == mid(d, "ev", "e-1", "steps.0")


SCHEDULE_JOURNEY = """
journey: sched
timezone: Europe/London
enabled: $enabled
trigger: {schedule: "0 9 * * 1", segment: members}
steps:
  - send: {channel: email, subject: "Weekly", body: "{{ event.type }} {{ event.timestamp }}"}
"""
MEMBERS = {"members": "'member' in profile.tags"}


def schedule_journey(enabled: bool = True) -> str:
    return Template(SCHEDULE_JOURNEY).substitute(enabled=str(enabled).lower())


@pytest.mark.parametrize(
    ("after", "until", "expected"),
    [
        (
            "2026-05-01 00:00",
            "2026-05-19 00:00",
            ["2026-05-04 08:00", "2026-05-11 08:00", "2026-05-18 08:00"],
        ),
        ("2026-05-04 08:00", "2026-05-11 08:00", ["2026-05-11 08:00"]),  # (after, until]
        ("2026-01-01 00:00", "2026-01-13 00:00", ["2026-01-05 09:00", "2026-01-12 09:00"]),
        ("2026-03-23 00:00", "2026-04-01 00:00", ["2026-03-23 09:00", "2026-03-30 08:00"]),
    ],
)
def test_schedule_times_in_journey_zone(
    make: Make, after: str, until: str, expected: list[str]
) -> None:
    d = make(schedule_journey(), segments=MEMBERS)
    got = list(d.engine.schedule_times("sched", utc(after), utc(until)))
    assert got == [utc(x) for x in expected]


@pytest.mark.parametrize(
    ("enabled", "tags", "sends"),
    [(True, ["member"], 1), (True, ["other"], 0), (True, [], 0), (False, ["member"], 0)],
)
def test_schedule_starts_segment_members(
    make: Make, enabled: bool, tags: list[str], sends: int
) -> None:
    d = make(schedule_journey(enabled), segments=MEMBERS, profile={**PROFILE, "tags": tags})
    fire = utc("2026-05-04 08:00")
    d.schedule("sched", fire)
    assert len(d.messages) == sends
    if sends:
        message = d.messages[0]
        assert at_of(message) == fire
        assert message.entry_id == "schedule:2026-05-04T08:00:00Z"
        assert message.message_id == mid(d, "sched", "schedule:2026-05-04T08:00:00Z", "steps.0")
        assert message.body == "schedule 2026-05-04T08:00:00+00:00"


def test_schedule_recurs_and_reads_membership_at_each_firing(make: Make) -> None:
    d = make(schedule_journey(), segments=MEMBERS)
    d.schedule("sched", utc("2026-05-04 08:00"))
    d.load({"tags": ["member"]}, utc("2026-05-10 12:00"))
    d.schedule("sched", utc("2026-05-11 08:00"))
    d.schedule("sched", utc("2026-05-18 08:00"))  # default reentry for schedules: always
    d.load({"tags": []}, utc("2026-05-20 12:00"))
    d.schedule("sched", utc("2026-05-25 08:00"))
    assert [at for at, _, _ in d.sent()] == [utc("2026-05-11 08:00"), utc("2026-05-18 08:00")]
    assert len({m.message_id for m in d.messages}) == 2


DATE_JOURNEY = """
journey: bday
timezone: $tz
trigger:
  date: {attribute: birthday, offset: $offset, at: "$at"}
steps:
  - send: {channel: sms, body: "Happy birthday {{ profile.first_name }}"}
"""


@pytest.mark.parametrize(
    ("birthday", "offset", "at", "tz", "profile_tz", "loaded", "fires"),
    [
        # -3d at 09:00 in the user's zone (profile.timezone overrides the journey's)
        ("1990-05-09", "-3d", "09:00", "UTC", "America/New_York", "2026-05-01", "2026-05-06 13:00"),
        ("1990-05-09", "-3d", "09:00", "Asia/Shanghai", None, "2026-05-01", "2026-05-06 01:00"),
        # Feb 29 falls on Feb 28 in common years, stays Feb 29 in leap years
        ("1988-02-29", "0d", "09:00", "UTC", None, "2026-05-01", "2027-02-28 09:00"),
        ("1988-02-29", "0d", "09:00", "UTC", None, "2027-03-01", "2028-02-29 09:00"),
        ("1988-02-29", "-1d", "10:00", "UTC", None, "2026-05-01", "2027-02-27 10:00"),
        ("1988-03-01", "-1d", "10:00", "UTC", None, "2027-05-01", "2028-02-29 10:00"),
        # a negative offset can cross into the previous year
        ("1990-01-02", "-3d", "09:00", "UTC", None, "2026-05-01", "2026-12-30 09:00"),
        ("05-09", "2d", "08:30", "UTC", None, "2026-05-01", "2026-05-11 08:30"),
    ],
)
def test_date_trigger(
    make: Make,
    birthday: str,
    offset: str,
    at: str,
    tz: str,
    profile_tz: str | None,
    loaded: str,
    fires: str,
) -> None:
    profile = {k: v for k, v in PROFILE.items() if k != "timezone"}
    profile["birthday"] = birthday
    if profile_tz:
        profile["timezone"] = profile_tz
    journey = Template(DATE_JOURNEY).substitute(tz=tz, offset=offset, at=at)
    d = make(journey, profile=profile, loaded_at=utc(f"{loaded} 00:00"))
    when = utc(fires)
    assert d.state.wake_at == when.timestamp()
    d.tick(when - timedelta(seconds=1))
    assert d.messages == []
    d.tick(when)
    entry = f"date:{when.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    assert [(at_of(m), m.entry_id) for m in d.messages] == [(when, entry)]
    assert d.messages[0].message_id == mid(d, "bday", entry, "steps.0")
    # armed again for next year, and it runs again (date journeys default to reentry: always)
    assert d.state.wake_at is not None
    next_year = datetime.fromtimestamp(d.state.wake_at, UTC)
    assert timedelta(days=364) <= next_year - when <= timedelta(days=367)
    d.tick(next_year)
    assert [at_of(m) for m in d.messages] == [when, next_year]


@pytest.mark.parametrize("birthday", [None, "", "not a date", "1990-13-40", 19900509])
def test_date_trigger_without_a_usable_date_never_fires(make: Make, birthday: Any) -> None:
    journey = Template(DATE_JOURNEY).substitute(tz="UTC", offset="0d", at="09:00")
    d = make(journey, profile={**PROFILE, "birthday": birthday})
    assert d.state.wake_at is None
    d.tick(T0 + timedelta(days=800))
    assert d.messages == []


def test_date_journey_deployed_after_the_profile_was_loaded_fires(tmp_path: Path) -> None:
    plain = f"journey: plain\ntrigger: {{event: go}}\nsteps:\n  - send: {SEND}\n"
    bday = Template(DATE_JOURNEY).substitute(tz="UTC", offset="0d", at="09:00")
    before = Engine(load_rules(write_rules(tmp_path / "before", [plain])))
    after = Engine(load_rules(write_rules(tmp_path / "after", [plain, bday])))
    d = Driver(before, "u1", serialise=True)
    d.load({**PROFILE, "birthday": "1990-05-10"}, T0)
    d.engine = after  # the processor reloads rules; user states stay in Redis
    d.event("page_view", h(1))
    d.tick(utc("2026-05-11 00:00"))
    assert d.sent() == [(utc("2026-05-10 09:00"), "bday", "steps.0")]


def test_date_trigger_follows_a_changed_date(make: Make) -> None:
    journey = Template(DATE_JOURNEY).substitute(tz="UTC", offset="0d", at="09:00")
    d = make(journey, profile={**PROFILE, "birthday": "1990-05-20"})
    d.event("identify", h(1), traits={"birthday": "1990-05-10"})
    d.tick(utc("2026-05-31 00:00"))
    assert [at for at, _, _ in d.sent()] == [utc("2026-05-10 09:00")]


IDLE_JOURNEY = """
journey: idle
trigger: {inactivity: {for: 30d}}
steps:
  - send: {channel: email, subject: "We miss you", body: "b"}
"""
IDLE_BUYERS = """
journey: idle_buyers
trigger: {inactivity: {for: 7d, events: [purchase]}}
steps:
  - send: {channel: email, subject: "Buy again", body: "b"}
"""


def feed(d: Driver, inputs: list[tuple[str, float]]) -> None:
    """Inputs by kind at a day offset from T0; `emitted` and `profile` are not activity."""
    for kind, day in inputs:
        ts = T0 + timedelta(days=day)
        if kind == "profile":
            d.load({"seen": day}, ts)
        elif kind == "identify":
            d.event("identify", ts, traits={"seen": day})
        elif kind == "emitted":
            d.event("ping", ts, emitted=True)
        else:
            d.event(kind, ts)


@pytest.mark.parametrize(
    ("journey", "inputs", "fire_days"),
    [
        (IDLE_JOURNEY, [("page_view", 0)], [30]),  # once, not again without activity
        (IDLE_JOURNEY, [("page_view", 0), ("page_view", 10)], [40]),
        (IDLE_JOURNEY, [("page_view", 0), ("page_view", 35)], [30, 65]),  # armed again
        (IDLE_JOURNEY, [("page_view", 0), ("message.opened", 10)], [30]),
        (IDLE_JOURNEY, [("page_view", 0), ("message.clicked", 29)], [30]),
        (IDLE_JOURNEY, [("page_view", 0), ("emitted", 10)], [30]),
        (IDLE_JOURNEY, [("identify", 0)], [30]),  # identify counts
        (IDLE_JOURNEY, [("profile", 0)], []),  # a profile import is not activity
        (IDLE_JOURNEY, [("message.delivered", 0)], []),  # no counted event: no clock
        (IDLE_BUYERS, [("purchase", 0), ("page_view", 3)], [7]),
        (IDLE_BUYERS, [("purchase", 0), ("purchase", 3)], [10]),
        (IDLE_BUYERS, [("page_view", 0)], []),
        (IDLE_BUYERS, [("purchase", 0), ("page_view", 9), ("purchase", 12)], [7, 19]),
    ],
)
def test_inactivity_trigger(
    make: Make, journey: str, inputs: list[tuple[str, float]], fire_days: list[int]
) -> None:
    d = make(journey)
    feed(d, inputs)
    d.tick(T0 + timedelta(days=100))
    fired = [T0 + timedelta(days=n) for n in fire_days]
    assert [at for at, _, _ in d.sent()] == fired
    kind = "inactivity"
    assert [m.entry_id for m in d.messages] == [
        f"{kind}:{t.strftime('%Y-%m-%dT%H:%M:%SZ')}" for t in fired
    ]


PINGER = """
journey: pinger
trigger: {segment: {enter: flagged}}
reentry: always
steps:
  - emit: {event: ping}
"""


def test_events_produced_by_emit_are_not_activity(make: Make) -> None:
    d = make([IDLE_JOURNEY, PINGER], segments={"flagged": "profile.flag == true"})
    d.event("page_view", T0)
    d.load({"flag": True}, T0 + timedelta(days=10))  # emits ping at day 10
    assert [e.event.type for e in d.effects if isinstance(e, Emitted)] == ["ping"]
    d.tick(T0 + timedelta(days=60))
    assert [at for at, _, _ in d.sent()] == [T0 + timedelta(days=30)]


HOT = {"hot": "(profile.score or 0) >= 10"}
ON_ENTER = """
journey: on_enter
trigger: {segment: {enter: hot}}
reentry: always
steps:
  - send: {channel: email, subject: "in", body: "{{ event.type }} {{ event.properties.segment }}"}
"""
ON_EXIT = """
journey: on_exit
trigger: {segment: {exit: hot}}
reentry: always
steps:
  - send: {channel: email, subject: "out", body: "{{ event.type }}"}
"""


@pytest.mark.parametrize("via", ["identify", "profile"])
def test_segment_enter_and_exit_edges(make: Make, via: str) -> None:
    d = make([ON_ENTER, ON_EXIT], segments=HOT)
    for hour, score in enumerate([5, 12, 15, 3, 20]):
        if via == "identify":
            d.event("identify", h(hour), traits={"score": score})
        else:
            d.load({"score": score}, h(hour))
    assert d.sent() == [
        (h(1), "on_enter", "steps.0"),
        (h(3), "on_exit", "steps.0"),
        (h(4), "on_enter", "steps.0"),
    ]
    assert [m.body for m in d.messages] == [
        "segment.enter hot",
        "segment.exit",
        "segment.enter hot",
    ]
    entry = f"segment:hot:enter:{iso(h(1).timestamp())}"
    assert d.messages[0].entry_id == entry
    assert d.messages[0].message_id == mid(d, "on_enter", entry, "steps.0")
    assert d.state.segments == ["hot"]


SCORER = """
journey: scorer
trigger: {event: like}
reentry: always
steps:
  - update_profile: {increment: {score: 4}}
"""


def test_segment_entered_through_update_profile(make: Make) -> None:
    d = make([SCORER, ON_ENTER], segments=HOT)
    for hour in range(4):
        d.event("like", h(hour))
    assert d.sent() == [(h(2), "on_enter", "steps.0")]  # 4, 8, 12: in at the third like


def test_segment_entered_through_a_metric(make: Make) -> None:
    metrics = "metrics:\n  buys_7d: {count: purchase, window: 7d}\n"
    segments = {"hot": "profile.metrics.buys_7d >= 2"}
    d = make([ON_ENTER, ON_EXIT], segments=segments, metrics=metrics)
    d.event("purchase", h(0))
    d.event("purchase", h(1))
    d.event("page_view", h(2))
    assert d.sent() == [(h(1), "on_enter", "steps.0")]


def test_segment_trigger_defaults_to_reentry_never(make: Make) -> None:
    once = ON_ENTER.replace("reentry: always\n", "")
    d = make(once, segments=HOT)
    for hour, score in enumerate([12, 3, 12]):
        d.load({"score": score}, h(hour))
    assert d.sent() == [(h(0), "on_enter", "steps.0")]
    assert d.counted("herald_triggers_ignored_total") == [
        {"journey": "on_enter", "reason": "reentry"}
    ]


# ---------------------------------------------------------------------------- steps

SEND_JOURNEY = """
journey: sendj
trigger: {event: signup}
steps:
  - send: {channel: $channel, $spec}
"""


@pytest.mark.parametrize(
    ("channel", "spec", "locale", "to", "subject", "body"),
    [
        ("email", "template: hello", None, "ann@example.com", "Hello Ann", "Hi Ann (sendj)"),
        ("email", "template: hello", "zh-CN", "ann@example.com", "你好Ann", "Ann，你好"),
        ("email", "template: hello", "zh_CN", "ann@example.com", "你好Ann", "Ann，你好"),
        ("email", "template: hello", "fr-FR", "ann@example.com", "Hello Ann", "Hi Ann (sendj)"),
        ("sms", "template: hello", None, "+15550001", None, "Hi Ann, signup"),
        (
            "email",
            'subject: "Hey {{ profile.first_name }}", body: "Plan {{ event.properties.plan }}"',
            None,
            "ann@example.com",
            "Hey Ann",
            "Plan pro",
        ),
        ("wechat", 'body: "WX {{ profile.first_name }}"', None, "wx-ann", None, "WX Ann"),
        ("sms", 'body: "{{ now.isoformat() }}"', None, "+15550001", None, T0.isoformat()),
    ],
)
def test_send(
    make: Make,
    channel: str,
    spec: str,
    locale: str | None,
    to: str,
    subject: str | None,
    body: str,
) -> None:
    journey = Template(SEND_JOURNEY).substitute(channel=channel, spec=spec)
    d = make(journey, profile={**PROFILE, "locale": locale})
    d.event("signup", T0, props={"plan": "pro"})
    [message] = d.messages
    assert (message.channel, message.to, message.subject) == (channel, to, subject)
    assert message.body.startswith(body)
    assert (at_of(message), message.step, message.variant) == (T0, "steps.0", None)
    assert d.counted("herald_messages_total") == []  # only failures and suppressions count here


def test_email_template_carries_the_unsubscribe_link(make: Make) -> None:
    journey = Template(SEND_JOURNEY).substitute(channel="email", spec="template: hello")
    d = make(journey)
    d.event("signup", T0)
    options = EngineOptions()
    link = unsubscribe_url(options.unsubscribe_base_url, options.unsubscribe_secret, "u1", "email")
    assert f"Unsubscribe: {link}" in d.messages[0].body


WAIT_JOURNEY = """
journey: waiter
trigger: {event: signup}
steps:
  - wait: $wait
  - send: {channel: sms, body: "done"}
"""


@pytest.mark.parametrize(
    ("wait", "delay"),
    [
        ("30s", timedelta(seconds=30)),
        ("90m", timedelta(minutes=90)),
        ("2h", timedelta(hours=2)),
        ("1d", DAY),
        ("2w", timedelta(days=14)),
        ("PT45M", timedelta(minutes=45)),
    ],
)
def test_wait_duration(make: Make, wait: str, delay: timedelta) -> None:
    d = make(Template(WAIT_JOURNEY).substitute(wait=wait))
    d.event("signup", T0)
    assert d.state.wake_at == (T0 + delay).timestamp()
    d.tick(T0 + delay - timedelta(seconds=1))
    assert d.messages == []
    d.tick(T0 + delay)
    assert d.sent() == [(T0 + delay, "waiter", "steps.1")]
    assert d.state.runs == {}


WAIT_UNTIL = """
journey: until
timezone: Asia/Shanghai
trigger: {event: signup}
steps:
  - wait: {until: "10:00"}
  - send: {channel: sms, body: "good morning"}
"""


@pytest.mark.parametrize(
    ("profile_tz", "event_at", "send_at"),
    [
        (None, "2026-05-04 03:00", "2026-05-05 02:00"),  # 11:00 Shanghai: tomorrow 10:00
        (None, "2026-05-04 01:00", "2026-05-04 02:00"),  # 09:00 Shanghai: today 10:00
        (None, "2026-05-04 02:00", "2026-05-04 02:00"),  # exactly 10:00: at once
        ("America/New_York", "2026-05-04 12:00", "2026-05-04 14:00"),  # 08:00 EDT
        ("Europe/London", "2026-05-04 10:00", "2026-05-05 09:00"),  # 11:00 BST
    ],
)
def test_wait_until_local_time(
    make: Make, profile_tz: str | None, event_at: str, send_at: str
) -> None:
    profile = {k: v for k, v in PROFILE.items() if k != "timezone"}
    if profile_tz:
        profile["timezone"] = profile_tz
    d = make(WAIT_UNTIL, profile=profile)
    first = d.event("signup", utc(event_at))
    if event_at == send_at:
        assert len(messages(first)) == 1  # a timer already due when set fires at once
    d.tick(utc(send_at) + DAY * 2)
    assert d.sent() == [(utc(send_at), "until", "steps.1")]


WAIT_FOR = """
journey: wf
trigger: {event: start}
steps:
  - wait_for: {event: purchase, when: "event.properties.amount > 0", within: 1d, then: $then}
  - send: {channel: email, subject: "after", body: "b"}
"""


@pytest.mark.parametrize(
    ("then", "events", "send_hours", "reason"),
    [
        ("exit", [("purchase", 5, 10)], [], "wait_for"),
        ("continue", [("purchase", 5, 10)], [5], "completed"),
        ("exit", [], [24], "completed"),  # timeout: go on
        ("continue", [], [24], "completed"),
        ("exit", [("purchase", 5, 0)], [24], "completed"),  # `when` false: still waiting
        ("exit", [("page_view", 5, 10)], [24], "completed"),
        ("exit", [("purchase", 24, 10)], [], "wait_for"),  # same instant: the event first
        ("exit", [("purchase", 25, 10)], [24], "completed"),
    ],
)
def test_wait_for(
    make: Make,
    then: str,
    events: list[tuple[str, float, int]],
    send_hours: list[float],
    reason: str,
) -> None:
    d = make(Template(WAIT_FOR).substitute(then=then))
    d.event("start", T0)
    for kind, hour, amount in events:
        d.event(kind, h(hour), props={"amount": amount})
    d.tick(h(48))
    assert d.sent() == [(h(x), "wf", "steps.1") for x in send_hours]
    assert d.counted("herald_journey_exits_total") == [{"journey": "wf", "reason": reason}]


BRANCH = """
journey: br
trigger: {event: go}
reentry: always
steps:
  - branch:
      - when: "profile.tier == 'gold'"
        steps: [{send: {channel: email, subject: "gold", body: "g"}}]
      - when: "profile.tier in ['gold', 'silver'] and event.properties.ok"
        steps: [{send: {channel: email, subject: "silver", body: "s"}}]
      $otherwise
  - send: {channel: sms, body: "after"}
"""
ELSE_ARM = '- else: {steps: [{send: {channel: email, subject: "other", body: "o"}}]}'


@pytest.mark.parametrize(
    ("has_else", "tier", "ok", "steps"),
    [
        (True, "gold", True, ["steps.0.branch.0.steps.0"]),  # the first true arm only
        (True, "silver", True, ["steps.0.branch.1.steps.0"]),
        (True, "silver", False, ["steps.0.branch.else.steps.0"]),  # arms see the entry event
        (True, None, True, ["steps.0.branch.else.steps.0"]),
        (False, "bronze", True, []),  # no arm and no else: fall through
        (False, "gold", True, ["steps.0.branch.0.steps.0"]),
    ],
)
def test_branch(make: Make, has_else: bool, tier: str | None, ok: bool, steps: list[str]) -> None:
    journey = Template(BRANCH).substitute(otherwise=ELSE_ARM if has_else else "")
    d = make(journey, profile={**PROFILE, "tier": tier})
    d.event("go", T0, props={"ok": ok})
    assert [m.step for m in d.messages] == [*steps, "steps.1"]


EXIT_JOURNEY = """
journey: ex
trigger: {event: go}
steps:
  - send: {channel: sms, body: "first"}
  - branch:
      - when: "profile.tier == 'gold'"
        steps: [{exit: {}}]
  - send: {channel: sms, body: "second"}
"""


@pytest.mark.parametrize(
    ("tier", "steps", "reason"),
    [("gold", ["steps.0"], "exit_step"), ("silver", ["steps.0", "steps.2"], "completed")],
)
def test_exit_step(make: Make, tier: str, steps: list[str], reason: str) -> None:
    d = make(EXIT_JOURNEY, profile={**PROFILE, "tier": tier})
    d.event("go", T0)
    assert [m.step for m in d.messages] == steps
    assert d.counted("herald_journey_exits_total") == [{"journey": "ex", "reason": reason}]
    assert d.state.runs == {}


SPLIT = """
journey: ab
trigger: {event: signup}
goal: {event: purchase, within: 1d}
steps:
  - split:
      - name: small
        weight: 1
        steps: [{send: {channel: email, subject: "S", body: "arm {{ journey.variant }}"}}]
      - name: big
        weight: 3
        steps: [{send: {channel: email, subject: "B", body: "arm {{ journey.variant }}"}}]
  - send: {channel: sms, body: "tail {{ journey.variant }}"}
"""


def expected_arm(user: str) -> str:
    return "small" if split_point("ab", user) < 1 / 4 else "big"


def test_split_is_deterministic_records_the_variant_and_counts_goals(make: Make) -> None:
    base = make(SPLIT)
    goals: Counter[str] = Counter()
    want: Counter[str] = Counter()
    for n in range(40):
        user = f"user-{n}"
        arm = expected_arm(user)
        want[arm] += 1
        d = base.other(user)
        d.load(dict(PROFILE), T0 - DAY)
        d.event("signup", T0)
        d.event("purchase", h(2))
        assert [(m.step, m.variant, m.body) for m in d.messages] == [
            (f"steps.0.split.{arm}.steps.0", arm, f"arm {arm}"),
            ("steps.1", arm, f"tail {arm}"),
        ]
        for labels in d.counted("herald_goals_total"):
            assert labels["journey"] == "ab"
            goals[labels["variant"]] += 1
        again = base.other(user)  # a fresh state: the same arm
        again.load(dict(PROFILE), T0 - DAY)
        again.event("signup", h(5))
        assert again.messages[0].variant == arm
    assert set(want) == {"small", "big"}  # both arms are exercised
    assert goals == want


UPDATE = """
journey: up
trigger: {event: go}
steps:
  - update_profile:
      set:
        coupon: "C-{{ profile.user_id | upper }}-{{ event.properties.n }}"
        level: 3
        seen_at: "{{ now.isoformat() }}"
      increment: {score: 2, balance: 0.5}
      add_tags: [new, vip]
      remove_tags: [old]
      unset: [temp]
  - send:
      channel: sms
      body: "{{ profile.coupon }} {{ profile.score }} {{ profile.tags | join(',') }}"
"""


def test_update_profile(make: Make) -> None:
    d = make(UPDATE, profile={**PROFILE, "score": 1, "tags": ["old", "keep", "vip"], "temp": "x"})
    d.event("go", T0, props={"n": 7})
    profile = d.state.profile
    assert profile["coupon"] == "C-U1-7"
    assert profile["level"] == 3
    assert profile["seen_at"] == T0.isoformat()
    assert profile["score"] == 3 and isinstance(profile["score"], int)
    assert profile["balance"] == 0.5
    assert profile["tags"] == ["keep", "vip", "new"]
    assert "temp" not in profile
    assert d.messages[0].body == "C-U1-7 3 keep,vip,new"  # later steps see the change


INCREMENT = """
journey: inc
trigger: {event: go}
reentry: always
steps:
  - update_profile: {increment: {points: $amount}}
"""


@pytest.mark.parametrize(
    ("start", "amount", "result"),
    [
        (None, "2", 2),
        (1, "2", 3),
        (1.5, "1", 2.5),
        (1, "0.5", 1.5),
        (5, "-5", 0),
        ("x", "2", 2),  # not a number: counts from 0
        (True, "2", 2),  # a bool is not a number either
    ],
)
def test_update_profile_increment(make: Make, start: Any, amount: str, result: float) -> None:
    profile = dict(PROFILE) if start is None else {**PROFILE, "points": start}
    d = make(Template(INCREMENT).substitute(amount=amount), profile=profile)
    d.event("go", T0)
    assert d.state.profile["points"] == result
    assert type(d.state.profile["points"]) is type(result)


EMITTER = """
journey: emitter
trigger: {event: signup}
steps:
  - emit:
      event: welcomed
      properties: {who: "{{ profile.first_name }}", plan: "{{ event.properties.plan }}", n: 1}
  - send: {channel: sms, body: "emitter done"}
"""
LISTENER = """
journey: listener
trigger: {event: welcomed, when: "event.properties.who == 'Ann'"}
steps:
  - send:
      channel: email
      subject: "Hi {{ event.properties.who }}"
      body: "{{ event.properties.plan }}"
"""


def test_emit_chains_into_another_journey(make: Make) -> None:
    d = make([EMITTER, LISTENER])
    d.event("signup", T0, props={"plan": "pro"}, event_id="sig-1")
    [emitted] = [e.event for e in d.effects if isinstance(e, Emitted)]
    expected_id = emitted_event_id(mid(d, "emitter", "sig-1", "steps.0"))
    assert emitted.event_id == expected_id
    assert (emitted.type, emitted.user_id, emitted.timestamp, emitted.emitted) == (
        "welcomed",
        "u1",
        T0,
        True,
    )
    assert emitted.properties == {"who": "Ann", "plan": "pro", "n": 1}
    listener = [m for m in d.messages if m.journey == "listener"]
    assert [(m.subject, m.body, m.entry_id) for m in listener] == [("Hi Ann", "pro", expected_id)]
    assert d.sent() == [(T0, "listener", "steps.0"), (T0, "emitter", "steps.1")]


def chain(n: int) -> list[str]:
    """Journey k starts on `c{k}` and emits `c{k+1}`."""
    return [
        f"journey: link{k}\ntrigger: {{event: c{k}}}\nsteps:\n"
        f"  - emit: {{event: c{k + 1}}}\n  - send: {{channel: sms, body: '{k}'}}\n"
        for k in range(n)
    ]


def test_emit_chains_stop_at_depth_eight(make: Make) -> None:
    d = make(chain(10))
    d.event("c0", T0)
    assert sorted(int(m.body) for m in d.messages) == list(range(9))
    [failure] = [e for e in d.effects if isinstance(e, Failure)]
    assert (failure.journey, failure.step) == ("link8", "steps.0")
    assert "deeper than 8" in failure.reason
    assert d.state.runs == {}


WEBHOOK = """
journey: hook
trigger: {event: go}
steps:
  - webhook:
      url: "https://hooks.example.com/leads/{{ profile.user_id }}"
      method: PUT
      headers: {X-Score: "{{ profile.score }}"}
      body:
        user: "{{ profile.user_id }}"
        score: "{{ profile.score }}"
        fixed: 1
        list: [a, "{{ event.type }}"]
  - webhook: {url: "https://hooks.example.com/ping"}
"""


def test_webhook(make: Make) -> None:
    d = make(WEBHOOK, profile={**PROFILE, "score": 5})
    d.event("go", T0)
    first, second = d.messages
    assert (first.channel, first.to, first.subject) == (
        "webhook",
        "https://hooks.example.com/leads/u1",
        None,
    )
    assert json.loads(first.body) == {"user": "u1", "score": "5", "fixed": 1, "list": ["a", "go"]}
    assert first.meta == {"method": "PUT", "headers": {"X-Score": "5"}}
    assert first.message_id == mid(d, "hook", "e-1", "steps.0")
    assert (second.to, second.body, second.meta["method"]) == (
        "https://hooks.example.com/ping",
        "",
        "POST",
    )


# ---------------------------------------------------------------------------- entry rules

AUDIENCE = f"""
journey: aud
trigger: {{event: go}}
audience: "'vip' not in profile.tags and event.properties.ok"
reentry: always
steps:
  - send: {SEND}
"""


@pytest.mark.parametrize(
    ("tags", "ok", "enters"),
    [([], True, True), (["vip"], True, False), (["other"], True, True), ([], False, False)],
)
def test_audience(make: Make, tags: list[str], ok: bool, enters: bool) -> None:
    d = make(AUDIENCE, profile={**PROFILE, "tags": tags})
    d.event("go", T0, props={"ok": ok})
    assert len(d.messages) == int(enters)
    ignored = [] if enters else [{"journey": "aud", "reason": "audience"}]
    assert d.counted("herald_triggers_ignored_total") == ignored


REENTRY = f"""
journey: re
trigger: {{event: go}}
$reentry
steps:
  - wait: 1h
  - send: {SEND}
"""


@pytest.mark.parametrize(
    ("reentry", "second", "runs", "reason"),
    [
        ("", 5, 1, "reentry"),  # event triggers default to never
        ("reentry: never", 100, 1, "reentry"),
        ("reentry: always", 1.5, 2, None),  # the first run ended at 1h
        ("reentry: always", 0.5, 1, "active"),  # one active run per journey
        ("reentry: after 2h", 2.5, 1, "reentry"),  # 1.5h after the end: too soon
        ("reentry: after 2h", 3, 2, None),  # exactly 2h after the run *ended*
        ("reentry: after 2h", 0.5, 1, "active"),
    ],
)
def test_reentry_and_one_active_run(
    make: Make, reentry: str, second: float, runs: int, reason: str | None
) -> None:
    d = make(Template(REENTRY).substitute(reentry=reentry))
    d.event("go", T0)
    d.event("go", h(second))
    d.tick(h(200))
    assert len(d.messages) == runs
    assert len({m.message_id for m in d.messages}) == runs
    ignored = [{"journey": "re", "reason": reason}] if reason else []
    assert d.counted("herald_triggers_ignored_total") == ignored


EXIT_ON = f"""
journey: eo
trigger: {{event: cart_add}}
exit_on:
  - event: purchase
    when: "event.properties.amount >= 10"
  - event: unsubscribe
steps:
  - wait: 1h
  - send: {SEND}
"""


@pytest.mark.parametrize(
    ("kind", "amount", "sends"),
    [("purchase", 5, 1), ("purchase", 10, 0), ("unsubscribe", 0, 0), ("page_view", 50, 1)],
)
def test_exit_on(make: Make, kind: str, amount: int, sends: int) -> None:
    d = make(EXIT_ON)
    d.event("cart_add", T0)
    d.event(kind, h(0.5), props={"amount": amount})
    d.tick(h(5))
    assert len(d.messages) == sends
    reason = "completed" if sends else "exit_on"
    assert d.counted("herald_journey_exits_total") == [{"journey": "eo", "reason": reason}]


GOAL = f"""
journey: gl
trigger: {{event: signup}}
goal: {{event: purchase, within: 3d, when: "event.properties.amount > 0"}}
steps:
  - send: {SEND}
"""


@pytest.mark.parametrize(
    ("purchases", "reached"),
    [
        ([(1, 5)], [1]),
        ([(72, 5)], [72]),  # the window is inclusive
        ([(73, 5)], []),
        ([(1, 0)], []),  # the goal's `when` is false
        ([(1, 0), (2, 5)], [2]),
        ([(1, 5), (2, 5)], [1]),  # counted once
    ],
)
def test_goal_within_window(
    make: Make, purchases: list[tuple[float, int]], reached: list[float]
) -> None:
    d = make(GOAL)
    d.event("signup", T0)
    counts = []
    for hour, amount in purchases:
        effects = d.event("purchase", h(hour), props={"amount": amount})
        if counted(effects, "herald_goals_total"):
            counts.append(hour)
    assert counts == reached
    labels = [{"journey": "gl", "variant": ""}] * len(reached)
    assert d.counted("herald_goals_total") == labels


def test_goal_is_not_reached_by_the_entry_event_itself(make: Make) -> None:
    journey = f"""
journey: again
trigger: {{event: purchase}}
reentry: always
goal: {{event: purchase, within: 3d}}
steps:
  - wait: 1d
  - send: {SEND}
"""
    d = make(journey)
    d.event("purchase", T0)
    assert d.counted("herald_goals_total") == []
    d.event("purchase", h(1))  # ignored as a trigger (run active), but it is a conversion
    assert d.counted("herald_goals_total") == [{"journey": "again", "variant": ""}]


SEGMENT_GOAL = f"""
journey: seg_goal
trigger: {{segment: {{enter: buyers}}}}
goal: {{event: purchase, within: 3d}}
steps:
  - wait: 1d
  - send: {SEND}
"""


def test_goal_is_not_reached_by_the_event_that_caused_a_segment_entry(make: Make) -> None:
    metrics = "metrics:\n  buys: {count: purchase}\n"
    d = make(SEGMENT_GOAL, segments={"buyers": "profile.metrics.buys >= 1"}, metrics=metrics)
    d.event("purchase", T0)
    assert [m for m in d.counted("herald_journey_entries_total")] == [{"journey": "seg_goal"}]
    assert d.counted("herald_goals_total") == []
    d.event("purchase", h(5))
    assert d.counted("herald_goals_total") == [{"journey": "seg_goal", "variant": ""}]


def test_late_event_from_before_the_entry_is_not_its_conversion(make: Make) -> None:
    d = make(GOAL)
    d.event("signup", T0)
    # a purchase made 10 minutes before the signup arrives 5 minutes after it
    d.event("purchase", h(-10 / 60), now=h(5 / 60), props={"amount": 5})
    assert d.counted("herald_goals_total") == []


# ---------------------------------------------------------------------------- time and caps

QUIET = """
journey: qh
timezone: Asia/Shanghai
trigger: {event: go}
reentry: always
quiet_hours: {start: "22:00", end: "08:00"}
steps:
  - send: {channel: email, subject: "s", body: "b"}
  - send: {channel: sms, body: "then"}
"""


@pytest.mark.parametrize(
    ("profile_tz", "event_at", "send_at"),
    [
        (None, "2026-05-04 15:00", "2026-05-05 00:00"),  # 23:00 Shanghai -> 08:00
        (None, "2026-05-04 12:00", "2026-05-04 12:00"),  # 20:00 Shanghai
        (None, "2026-05-04 14:00", "2026-05-05 00:00"),  # 22:00 exactly is quiet
        (None, "2026-05-05 00:00", "2026-05-05 00:00"),  # 08:00 exactly is not
        ("America/New_York", "2026-05-04 15:00", "2026-05-04 15:00"),  # 11:00 EDT
        ("America/New_York", "2026-05-05 03:00", "2026-05-05 12:00"),  # 23:00 EDT -> 08:00
        ("Europe/London", "2026-05-04 06:30", "2026-05-04 07:00"),  # 07:30 BST -> 08:00
    ],
)
def test_quiet_hours_in_the_users_zone(
    make: Make, profile_tz: str | None, event_at: str, send_at: str
) -> None:
    profile = {k: v for k, v in PROFILE.items() if k != "timezone"}
    if profile_tz:
        profile["timezone"] = profile_tz
    d = make(QUIET, profile=profile)
    d.event("go", utc(event_at))
    d.tick(utc(send_at) + DAY)
    assert d.sent() == [(utc(send_at), "qh", "steps.0"), (utc(send_at), "qh", "steps.1")]


def test_quiet_hours_from_settings_apply_to_every_journey(make: Make) -> None:
    journey = f"journey: plain\ntrigger: {{event: go}}\nsteps:\n  - send: {SEND}\n"
    settings = 'quiet_hours: {start: "21:00", end: "09:00"}\n'
    d = make(journey, settings=settings)
    d.event("go", utc("2026-05-04 23:30"))
    d.tick(utc("2026-05-06 00:00"))
    assert d.sent() == [(utc("2026-05-05 09:00"), "plain", "steps.0")]


CAPPED = """
journey: fc
trigger: {event: go}
reentry: always
frequency_cap: {max: $max, per: 1d, channel: $channel}
steps:
  - send: {channel: email, subject: "s", body: "b"}
  - send: {channel: sms, body: "b"}
"""


@pytest.mark.parametrize(
    ("cap", "hours", "sent"),
    [
        (  # any channel, 2 a day: the window slides (a send exactly a day old has left it)
            (2, "any"),
            [0, 25],
            [(0, "email"), (0, "sms"), (25, "email"), (25, "sms")],
        ),
        (
            (3, "any"),
            [0, 1, 24.5, 25],
            [(0, "email"), (0, "sms"), (1, "email"), (24.5, "email"), (24.5, "sms"), (25, "email")],
        ),
        (
            (1, "email"),
            [0, 1, 24],
            [(0, "email"), (0, "sms"), (1, "sms"), (24, "email"), (24, "sms")],
        ),
        ((1, "sms"), [0, 1], [(0, "email"), (0, "sms"), (1, "email")]),
    ],
)
def test_frequency_cap(
    make: Make, cap: tuple[int, str], hours: list[float], sent: list[tuple[float, str]]
) -> None:
    journey = Template(CAPPED).substitute(max=cap[0], channel=cap[1])
    d = make(journey)
    for hour in hours:
        d.event("go", h(hour))
    assert [(at_of(m), m.channel) for m in d.messages] == [(h(x), c) for x, c in sent]
    suppressed = [x for x in d.counted("herald_messages_total") if x["status"] == "suppressed"]
    assert len(suppressed) == 2 * len(hours) - len(sent)


def test_global_frequency_cap_spans_journeys(make: Make) -> None:
    one = f"journey: one\ntrigger: {{event: go}}\nreentry: always\nsteps:\n  - send: {SEND}\n"
    two = one.replace("journey: one", "journey: two")
    d = make([one, two], settings="global_frequency_cap: {max: 1, per: 1h}\n")
    d.event("go", T0)
    d.event("go", h(0.5))
    d.event("go", h(1.5))
    assert [at for at, _, _ in d.sent()] == [T0, h(1.5)]
    assert len(d.counted("herald_messages_total")) == 4  # all suppressed


CONSENT = """
journey: cs
trigger: {event: go}
steps:
  - send: {channel: $channel, body: "b"}
  - webhook: {url: "https://hooks.example.com/next"}
"""


@pytest.mark.parametrize(
    ("patch", "channel", "delivered"),
    [
        ({"consent": {"email": False}}, "email", False),
        ({"consent": {"sms": False}}, "email", True),
        ({"consent": {"email": True}}, "email", True),
        ({"email": None}, "email", False),
        ({"email": ""}, "email", False),
        ({"wechat_openid": None}, "wechat", False),
        ({"consent": {"wechat": False}}, "wechat", False),
        ({"phone": "+15550002"}, "sms", True),
    ],
)
def test_consent_and_missing_address_suppress(
    make: Make, patch: dict[str, Any], channel: str, delivered: bool
) -> None:
    profile = {**PROFILE, **{k: v for k, v in patch.items() if v is not None}}
    for key in [k for k, v in patch.items() if v is None]:
        profile.pop(key)
    d = make(Template(CONSENT).substitute(channel=channel), profile=profile)
    d.event("go", T0)
    assert [m.step for m in d.messages] == (["steps.0"] if delivered else []) + ["steps.1"]
    expected = [] if delivered else [{"channel": channel, "status": "suppressed"}]
    assert d.counted("herald_messages_total") == expected
    assert d.counted("herald_journey_exits_total") == [{"journey": "cs", "reason": "completed"}]


def test_unsubscribe_by_identify_suppresses_later_sends(make: Make) -> None:
    d = make(Template(CONSENT).substitute(channel="email"))
    d.event("identify", T0, traits={"consent": {"email": False}})
    d.event("go", h(1))
    assert [m.channel for m in d.messages] == ["webhook"]


TEMPLATE_ERRORS = """
journey: te
trigger: {event: go}
steps:
  - send: {channel: email, template: broken}
  - send: {channel: email, subject: "oops {{ profile.nothing.deeper }}", body: "b"}
  - webhook: {url: "https://hooks.example.com/{{ profile.missing.x }}"}
  - update_profile: {set: {code: "{{ profile.gone.y }}"}}
  - send: {channel: sms, body: "still here"}
"""


def test_template_error_is_a_failure_and_the_run_goes_on(make: Make) -> None:
    d = make(TEMPLATE_ERRORS)
    d.event("go", T0)
    failures = [e for e in d.effects if isinstance(e, Failure)]
    assert [(f.journey, f.step, f.at) for f in failures] == [
        ("te", f"steps.{n}", T0.timestamp()) for n in range(4)
    ]
    assert "no_such_trait" in failures[0].reason
    assert [(m.step, m.body) for m in d.messages] == [("steps.4", "still here")]
    assert d.counted("herald_messages_total") == [
        {"channel": "email", "status": "failed"},
        {"channel": "email", "status": "failed"},
        {"channel": "webhook", "status": "failed"},
    ]
    assert "code" not in d.state.profile


LATE = """
journey: late
trigger: {event: go}
reentry: always
steps:
  - send: {channel: sms, body: "{{ now.isoformat() }}"}
"""


@pytest.mark.parametrize(
    ("offset", "lateness", "start"),
    [
        (-3, None, -1),  # 3 h old: starts at now - 1 h (the default allowance)
        (-0.5, None, -0.5),
        (0, None, 0),
        (2, None, 0),  # future-dated: starts at arrival
        (-3, "2h", -2),
        (-3, "30m", -0.5),
    ],
)
def test_lateness_clamp(make: Make, offset: float, lateness: str | None, start: float) -> None:
    settings = f"lateness: {lateness}\n" if lateness else None
    d = make(LATE, settings=settings)
    d.event("go", h(offset), now=T0)
    [message] = d.messages
    assert at_of(message) == h(start)
    assert message.entry_at == h(start).timestamp()
    assert message.body == h(start).isoformat()


def test_timer_already_due_when_set_fires_at_once(make: Make) -> None:
    journey = """
journey: chain
trigger: {event: go}
steps:
  - wait: 30m
  - send: {channel: sms, body: "one"}
  - wait: 10m
  - send: {channel: sms, body: "two"}
  - wait: 1h
  - send: {channel: sms, body: "three"}
"""
    d = make(journey)
    effects = d.event("go", h(-50 / 60), now=T0)  # 50 minutes late, inside the allowance
    assert [(at_of(m), m.body) for m in messages(effects)] == [
        (h(-20 / 60), "one"),
        (h(-10 / 60), "two"),
    ]
    assert d.state.wake_at == h(50 / 60).timestamp()
    d.tick(h(1))
    assert [m.body for m in d.messages] == ["one", "two", "three"]


@pytest.mark.parametrize("same_payload", [True, False])
def test_duplicate_event_ids_are_applied_once(make: Make, same_payload: bool) -> None:
    d = make(LATE.replace("reentry: always", "reentry: always\ngoal: {event: go, within: 1d}"))
    d.event("go", T0, event_id="dup-1", props={"n": 1})
    props = {"n": 1} if same_payload else {"n": 2}
    again = d.event("go", T0 if same_payload else h(0.5), event_id="dup-1", props=props)
    assert messages(again) == []
    assert counted(again, "herald_events_duplicate_total") == [{}]
    assert len(d.messages) == 1
    d.event("go", h(1), event_id="dup-2")
    assert len(d.messages) == 2


# ---------------------------------------------------------------------------- message ids

IDS = """
journey: mids
name: $name
trigger: {event: go}
reentry: always
steps:
  - send: {channel: sms, body: "{{ event.properties.n }}"}
  - send: {channel: email, subject: "s", body: "b"}
"""


def ids_of(driver: Driver) -> list[str]:
    return [m.message_id for m in driver.messages]


def test_message_id_is_the_documented_function(make: Make) -> None:
    d = make(Template(IDS).substitute(name="v1"))
    d.event("go", T0, event_id="evt-9", props={"n": 9})
    assert ids_of(d) == [
        mid(d, "mids", "evt-9", "steps.0"),
        mid(d, "mids", "evt-9", "steps.1"),
    ]


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ("nothing", True),
        ("processing time", True),  # arrival 40 minutes later: the run starts elsewhere
        ("payload", True),  # same event id, other properties and timestamp
        ("reloaded rules", True),
        ("user", False),
        ("entry id", False),
        ("journey version", False),
    ],
)
def test_message_id_depends_only_on_its_inputs(make: Make, change: str, same: bool) -> None:
    base = make(Template(IDS).substitute(name="v1"))
    base.event("go", T0, event_id="evt-1", props={"n": 1})
    name = "v2" if change == "journey version" else "v1"
    other = make(Template(IDS).substitute(name=name), user="u2" if change == "user" else "u1")
    if change == "journey version":
        assert other.engine.rules.versions["mids"] != base.engine.rules.versions["mids"]
    other.event(
        "go",
        h(-0.5) if change == "payload" else T0,
        now=h(40 / 60) if change == "processing time" else None,
        event_id="evt-2" if change == "entry id" else "evt-1",
        props={"n": 2} if change == "payload" else {"n": 1},
    )
    assert len(ids_of(other)) == 2
    if same:
        assert ids_of(other) == ids_of(base)
    else:
        assert set(ids_of(other)).isdisjoint(ids_of(base))
    assert len(set(ids_of(base))) == 2  # the step id separates the two sends


# ---------------------------------------------------------------------------- state round trip


def rich_scenario(d: Driver) -> None:
    """Most of the core at once: segments, metrics, waits, deferral, caps, splits, goals, emit."""
    d.load({**PROFILE, "timezone": "Asia/Shanghai", "birthday": "1990-05-07"}, T0 - DAY)
    d.event("page_view", T0)
    d.event("cart_add", h(1), props={"value": 80, "product": "tea"})
    d.event("signup", h(2), props={"plan": "pro"})
    d.event("like", h(3))
    d.event("like", h(4))
    d.event("like", h(5))
    d.event("purchase", h(7), props={"amount": 30})
    d.tick(h(20))
    d.event("message.opened", h(21))
    d.event("cart_add", h(30), props={"value": 60, "product": "cup"})
    d.tick(T0 + timedelta(days=40))
    d.event("purchase", T0 + timedelta(days=41), props={"amount": 5})
    d.tick(T0 + timedelta(days=80))


RICH_JOURNEYS = [
    """
journey: cart
timezone: Asia/Shanghai
trigger: {event: cart_add, when: "event.properties.value >= 50"}
reentry: after 1d
exit_on: [{event: purchase, when: "event.properties.amount >= 100"}]
goal: {event: purchase, within: 3d}
quiet_hours: {start: "22:00", end: "08:00"}
frequency_cap: {max: 2, per: 1d, channel: any}
steps:
  - wait: 30m
  - send: {channel: email, template: hello}
  - wait_for: {event: purchase, within: 1d, then: continue}
  - branch:
      - when: "'vip' in profile.tags"
        steps: [{send: {channel: sms, body: "vip {{ event.properties.product }}"}}]
      - else:
          steps: [{send: {channel: wechat, body: "{{ event.properties.product }}"}}]
  - wait: {until: "10:00"}
  - send: {channel: sms, body: "morning"}
""",
    SPLIT,
    SCORER,
    ON_ENTER,
    ON_EXIT,
    EMITTER,
    LISTENER,
    IDLE_JOURNEY,
    Template(DATE_JOURNEY).substitute(tz="UTC", offset="-1d", at="09:00"),
    """
journey: vipper
trigger: {segment: {enter: hot}}
steps:
  - update_profile: {add_tags: [vip], set: {tier: "gold-{{ profile.score }}"}}
  - webhook: {url: "https://hooks.example.com/vip", body: {score: "{{ profile.score }}"}}
""",
]
RICH_METRICS = "metrics:\n  spend_30d: {sum: purchase.properties.amount, window: 30d}\n"


def run_rich(tmp_path: Path, serialise: bool) -> tuple[list[Effect], dict[str, Any]]:
    folder = write_rules(tmp_path, RICH_JOURNEYS, segments=HOT, metrics=RICH_METRICS)
    d = Driver(Engine(load_rules(folder), EngineOptions(trace=True)), "u1", serialise=serialise)
    rich_scenario(d)
    return d.effects, d.state.to_doc()


def test_serialising_state_between_inputs_changes_nothing(tmp_path: Path) -> None:
    kept_effects, kept_doc = run_rich(tmp_path / "kept", serialise=False)
    stored_effects, stored_doc = run_rich(tmp_path / "stored", serialise=True)
    assert len(messages(kept_effects)) >= 10  # the scenario really exercises the core
    assert {m.journey for m in messages(kept_effects)} >= {
        "cart",
        "ab",
        "on_enter",
        "listener",
        "emitter",
        "idle",
        "bday",
        "vipper",
    }
    assert stored_effects == kept_effects
    assert stored_doc == kept_doc


def test_state_document_round_trips_losslessly(tmp_path: Path) -> None:
    folder = write_rules(tmp_path, RICH_JOURNEYS, segments=HOT, metrics=RICH_METRICS)
    d = Driver(Engine(load_rules(folder)), "u1", serialise=False)
    d.load({**PROFILE, "birthday": "1990-05-07"}, T0 - DAY)
    d.event("cart_add", T0, props={"value": 80, "product": "tea"})
    d.event("signup", T0)
    doc = d.state.to_doc()
    assert {"p", "r", "g", "a", "d", "re", "w"} <= set(doc)  # profile, runs, goals, ...
    assert stored(d.state).to_doc() == doc
    assert stored(d.state) == d.state


# ---------------------------------------------------------------------------- purity

FORBIDDEN_MODULES = {"aiokafka", "faust", "redis", "aiohttp", "requests", "httpx"}
CLOCK_CALLS = {("datetime", "now"), ("datetime", "utcnow"), ("date", "today"), ("time", "time")}


def engine_modules() -> list[Path]:
    return sorted((REPO / "engine").rglob("*.py"))


def imported(node: ast.AST) -> list[str]:
    """Absolute module names an import statement brings in."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module]
    return []


def test_engine_imports_no_io_library() -> None:
    offenders = []
    for path in engine_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            for name in imported(node):
                if name.split(".")[0] in FORBIDDEN_MODULES:
                    offenders.append(f"{path.relative_to(REPO)}: {name}")
    assert len(engine_modules()) > 20
    assert offenders == []


def test_import_scan_would_catch_an_io_import() -> None:
    tree = ast.parse("import redis.asyncio\nfrom aiokafka import AIOKafkaProducer\nimport json\n")
    names = [name for node in ast.walk(tree) for name in imported(node)]
    assert [n for n in names if n.split(".")[0] in FORBIDDEN_MODULES] == [
        "redis.asyncio",
        "aiokafka",
    ]


def test_engine_never_reads_the_clock() -> None:
    offenders = []
    for path in engine_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", None)
            if (name, node.func.attr) in CLOCK_CALLS:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
            if (name, node.func.attr) in {("time", "monotonic"), ("time", "perf_counter")}:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


def test_clock_scan_would_catch_a_clock_read() -> None:
    tree = ast.parse("import datetime\nx = datetime.datetime.now()\ny = time.time()\n")
    calls = [
        (getattr(n.func.value, "attr", getattr(n.func.value, "id", None)), n.func.attr)
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
    ]
    assert set(calls) <= CLOCK_CALLS and len(calls) == 2
