"""The processor's batch step against the in-memory store: replays, poison, failures, clocks."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from engine.events import Event
from engine.language.loader import load_rules
from engine.runtime.core import Engine
from engine.runtime.effects import Outcome
from engine.runtime.state import UserState
from workers.processor import BatchProcessor, DeadLetter, EventClock, Record, WallClock
from workers.records import control
from workers.store import MemoryStore

ROOT = Path(__file__).resolve().parents[2]
RULES = load_rules(ROOT / "rules")


class ListSink:
    def __init__(self) -> None:
        self.actions: list[dict[str, Any]] = []
        self.letters: list[DeadLetter] = []

    async def send_actions(self, actions: Sequence[tuple[str, int, bytes]]) -> None:
        self.actions += [orjson.loads(value) for _user, _p, value in actions]

    async def send_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        self.letters += letters


def _event(i: int, user: str, kind: str, ts: str, **props: Any) -> dict[str, Any]:
    return {
        "event_id": f"t-{i}",
        "type": kind,
        "user_id": user,
        "timestamp": ts,
        "properties": props,
    }


def _pack(*events: dict[str, Any]) -> bytes:
    return orjson.dumps({"herald_batch": list(events)})


def _doc(store: MemoryStore, user: str) -> dict[str, Any]:
    return orjson.loads(store.docs[(0, user)])  # type: ignore[no-any-return]


IDENTIFY = {
    "event_id": "id-1",
    "type": "identify",
    "user_id": "a",
    "timestamp": "2026-05-01T08:00:00Z",
    "traits": {"email": "a@example.com", "first_name": "Ann"},
}


def test_a_replayed_batch_changes_nothing_twice() -> None:
    store, sink = MemoryStore(), ListSink()
    bp = BatchProcessor(Engine(RULES), store, sink, WallClock())
    records = [
        Record(0, 0, _pack(IDENTIFY)),
        Record(
            0,
            1,
            _pack(
                _event(2, "a", "signup", "2026-05-01T08:01:00Z"),
                _event(3, "a", "page_view", "2026-05-01T08:02:00Z", path="/"),
            ),
        ),
    ]
    asyncio.run(bp.process(records))
    first = (len(sink.actions), _doc(store, "a"))
    report = asyncio.run(bp.process(records))  # at-least-once: the same records again
    assert report.skipped == 3 and report.events == 0
    assert (len(sink.actions), _doc(store, "a")) == first
    assert first[0] == 1 and sink.actions[0]["journey"] == "welcome_series"


def test_poison_items_are_dead_lettered_and_their_neighbours_applied() -> None:
    store, sink = MemoryStore(), ListSink()
    bp = BatchProcessor(Engine(RULES), store, sink, WallClock())
    records = [
        Record(0, 0, b"not json"),
        Record(0, 1, _pack({"type": "page_view"}, IDENTIFY, {"user_id": "b"})),
        Record(0, 2, control("nonsense", 1.0)),
    ]
    report = asyncio.run(bp.process(records))
    assert sorted(d.reason for d in sink.letters) == [
        "bad_control",
        "malformed_json",
        "missing_type",
        "missing_user_id",
    ]
    assert report.events == 1 and _doc(store, "a")["p"]["email"] == "a@example.com"


class FailingEngine(Engine):
    """The real engine, except that one event id raises (a bug in a rule or the core)."""

    def handle_event(self, state: UserState, event: Event, now: datetime) -> Outcome:
        if event.event_id == "t-boom":
            state.profile["corrupted"] = True  # a half-applied change the retry must not keep
            raise RuntimeError("boom")
        return super().handle_event(state, event, now)


def test_a_failing_input_is_dead_lettered_and_the_user_applied_once() -> None:
    store, sink = MemoryStore(), ListSink()
    bp = BatchProcessor(FailingEngine(RULES), store, sink, WallClock())
    views = [_event(i, "a", "page_view", "2026-05-01T08:05:00Z", path="/") for i in (10, 11)]
    boom = {**_event(0, "a", "page_view", "2026-05-01T08:06:00Z", path="/"), "event_id": "t-boom"}
    asyncio.run(bp.process([Record(0, 0, _pack(IDENTIFY, views[0], boom, views[1]))]))
    assert [d.reason for d in sink.letters] == ["processing_error"]
    assert "boom" in sink.letters[0].detail
    doc = _doc(store, "a")
    assert "corrupted" not in doc["p"]
    assert sum(v for _i, v in doc["m"]["page_views_30d"]["b"]) == 2


def test_event_time_clock_follows_record_order_across_users() -> None:
    store, sink = MemoryStore(), ListSink()
    bp = BatchProcessor(Engine(RULES), store, sink, EventClock())
    early = "2026-05-01T08:00:00Z"
    late = "2026-05-03T08:00:00Z"
    # Record order: user b's event two days later, then user a's earlier one. The partition's
    # clock is the newest time seen in record order, whichever user it came from, so a's
    # event arrives "late" against it — as it would in production.
    records = [
        Record(0, 0, _pack(_event(1, "b", "page_view", late, path="/"))),
        Record(0, 1, _pack({**IDENTIFY, "timestamp": early})),
    ]
    asyncio.run(bp.process(records))
    assert bp.watermarks[0] == datetime.fromisoformat(late).timestamp()
    assert store.first_clocks[0] == datetime.fromisoformat(late).timestamp()


class FlakyStore(MemoryStore):
    """Fails the first write of one partition, as a Redis restart mid-batch would."""

    def __init__(self, partition: int) -> None:
        super().__init__()
        self.partition = partition
        self.failed = False

    async def commit(self, writes: Sequence[Any]) -> None:
        if not self.failed and any(w.partition == self.partition for w in writes):
            self.failed = True
            await asyncio.sleep(0.01)  # the other partitions' writes land meanwhile
            raise ConnectionError("Redis went away")
        await super().commit(writes)


def test_a_failed_partition_write_fails_the_batch_and_its_retry_loses_and_doubles_nothing() -> None:
    store, sink = FlakyStore(partition=1), ListSink()
    bp = BatchProcessor(Engine(RULES), store, sink, WallClock())
    records = [
        Record(
            p,
            0,
            _pack(
                {**IDENTIFY, "user_id": f"u{p}", "event_id": f"id-{p}"},
                _event(p, f"u{p}", "signup", "2026-05-01T08:01:00Z"),
            ),
        )
        for p in range(3)
    ]
    try:
        asyncio.run(bp.process(records))
        raise AssertionError("the batch should have failed")
    except ConnectionError:
        pass
    assert (1, "u1") not in store.docs and {(0, "u0"), (2, "u2")} <= store.docs.keys()
    report = asyncio.run(bp.process(records))  # the shell retries the same records
    assert report.skipped == 4 and report.events == 2  # only partition 1's inputs re-applied
    ids = [a["message_id"] for a in sink.actions]
    # partition 1's welcome email was produced before its failed write and again on the retry:
    # the same id both times, which the dispatcher's claim drops.
    assert len(set(ids)) == 3 and len(ids) == 4
