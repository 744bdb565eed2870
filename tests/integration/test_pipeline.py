"""End to end on real parts: HTTP -> Kafka -> processor -> Redis -> dispatcher -> outbox.

Every test here runs the role processes exactly as `herald run` does, against an embedded
broker and Redis, and compares what reaches the outbox with `herald simulate` on the same
input (the two share the core; only the clock source differs: event time here).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from engine.events import Event
from engine.language.loader import load_rules
from engine.runtime.core import Engine
from engine.runtime.effects import Message
from engine.simulate import Simulation
from engine.synthetic import synthetic_events, user_traits
from workers.cmd_dev import compare, replay
from workers.cmd_simulate import read_events, read_profiles, simulate_lines
from workers.stack import LocalStack
from workers.topics import DLQ, EVENTS

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_sample_library_through_the_pipeline_equals_simulate(tmp_path: Path) -> None:
    events_path = ROOT / "examples" / "events.jsonl"
    expected, _ = simulate_lines(ROOT / "rules", events_path)
    events = read_events(events_path, None)
    with LocalStack(tmp_path, clock="event", rules=ROOT / "rules", quiet=True) as stack:
        stack.start_roles()
        got = asyncio.run(replay(stack, events, [], expected_count=len(expected), echo=False))
    assert len(expected) >= 50
    assert compare(expected, got) == {
        "missing": [],
        "unexpected": [],
        "duplicates": [],
        "different": [],
    }
    fields = {"message_id", "user_id", "journey", "step", "channel", "to", "subject", "body"}
    assert all(fields | {"variant", "sent_at"} == set(line) for line in got)


def _expected(
    events: list[Event], profiles: list[tuple[str, dict[str, Any]]]
) -> dict[str, Message]:
    engine = Engine(load_rules(ROOT / "rules"))
    sim = Simulation(engine)
    start = min(e.timestamp for e in events)
    until = max(e.timestamp for e in events) + timedelta(days=7)
    list(sim.load_profiles(profiles, start))
    return {e.message_id: e for _at, e in sim.run(events, start, until) if isinstance(e, Message)}


async def _feed_with_crashes(
    stack: LocalStack,
    events: list[Event],
    profiles: list[tuple[str, dict[str, Any]]],
    crashes: list[str],
) -> None:
    start = min(e.timestamp for e in events).timestamp()
    until = max(e.timestamp for e in events).timestamp() + 7 * 86400
    await stack.wait_ready()
    await stack.start_replay(start, profiles)
    rng = random.Random(20261122)
    batches = [events[i : i + 200] for i in range(0, len(events), 200)]
    next_crash = time.monotonic() + rng.uniform(2, 4)
    redis_restarted = False
    async with aiohttp.ClientSession() as http:
        for index, batch in enumerate(batches):
            await stack.post_events(http, [e.to_json_dict() for e in batch])
            await asyncio.sleep(0.15)
            dead = stack.dead_role()
            if dead is not None:  # a role that died on its own (not by our SIGKILL) is a bug
                crashes.append(f"died:{dead}")
                stack.kill(dead)
                stack.spawn(dead)
            if time.monotonic() >= next_crash:
                role = rng.choice(["processor", "dispatcher"])
                await asyncio.sleep(rng.uniform(0, 0.3))  # a random moment mid-batch
                stack.kill(role)
                stack.spawn(role)
                crashes.append(role)
                next_crash = time.monotonic() + rng.uniform(2, 5)
            if not redis_restarted and index >= len(batches) // 2:
                stack.redis.restart(hard=True)
                crashes.append("redis")
                redis_restarted = True
    await stack.advance_clock(until)


@pytest.mark.slow
def test_crashes_lose_nothing_and_send_nothing_twice(tmp_path: Path) -> None:
    users = 2000
    events = list(synthetic_events(20_000, users, span_s=2 * 86400.0, seed=11))
    profiles = [(f"u{i}", user_traits(i)) for i in range(users)]
    expected = _expected(events, profiles)
    assert len(expected) > 500
    crashes: list[str] = []
    with LocalStack(tmp_path, clock="event", rules=ROOT / "rules", quiet=True) as stack:
        stack.start_roles()
        asyncio.run(_feed_with_crashes(stack, events, profiles, crashes))
        # One more of each, while the final timers drain.
        assert stack.dead_role() is None, "a role died on its own"
        for role in ("processor", "dispatcher"):
            time.sleep(1.0)
            stack.kill(role)
            stack.spawn(role)
            crashes.append(role)
        deadline = time.monotonic() + 120
        quiet_since, seen = time.monotonic(), 0
        while time.monotonic() < deadline:
            lines = stack.outbox_lines()
            if len(lines) != seen:
                seen, quiet_since = len(lines), time.monotonic()
            if seen >= len(expected) and time.monotonic() - quiet_since > 5:
                break
            time.sleep(0.5)
        lines = stack.outbox_lines()
    ids = Counter(line["message_id"] for line in lines)
    assert crashes.count("processor") >= 2 and crashes.count("dispatcher") >= 2, crashes
    assert crashes.count("redis") == 1
    assert [c for c in crashes if c.startswith("died:")] == []
    duplicates = [mid for mid, n in ids.items() if n > 1]
    by_id = {line["message_id"]: line for line in lines}
    unexpected = [
        (by_id[m]["user_id"], by_id[m]["journey"], by_id[m]["step"])
        for m in set(ids) - set(expected)
    ]
    missing = [
        (expected[m].user_id, expected[m].journey, expected[m].step, expected[m].at)
        for m in set(expected) - set(ids)
    ]
    assert (duplicates, unexpected, missing) == ([], [], [])


def test_poison_records_go_to_the_dlq_and_the_worker_keeps_going(tmp_path: Path) -> None:
    rules = ROOT / "rules"
    with LocalStack(tmp_path, clock="wall", rules=rules, quiet=True) as stack:
        stack.start_roles(["processor"])
        asyncio.run(_poison(stack))


async def _poison(stack: LocalStack) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.broker.bootstrap)
    await producer.start()
    user = "poison-user"
    partition = stack.partition_of(user)
    good = {"event_id": "ok-1", "type": "identify", "user_id": user, "traits": {"email": "p@x"}}
    pack = {
        "herald_batch": [
            {"type": "page_view"},  # no user id
            good,
            {"type": "page_view", "user_id": user, "timestamp": "yesterday"},
        ]
    }
    try:
        for value in (b"{not json", orjson.dumps(pack), b'{"herald_control": "nope", "at": 1}'):
            await producer.send_and_wait(EVENTS, value, partition=partition)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        DLQ, bootstrap_servers=stack.broker.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    reasons: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while len(reasons) < 4 and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                reasons += [orjson.loads(r.value)["reason"] for r in records]
    finally:
        await consumer.stop()
    assert sorted(reasons) == ["bad_control", "bad_timestamp", "malformed_json", "missing_user_id"]
    import redis.asyncio as aioredis

    from workers import keys

    client = aioredis.Redis.from_url(stack.redis.url)
    try:
        deadline = time.monotonic() + 30
        doc = None
        while doc is None and time.monotonic() < deadline:
            doc = await client.get(keys.user(partition, user))
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()
    assert doc is not None and orjson.loads(doc)["p"]["email"] == "p@x"
    assert stack.dead_role() is None
    assert signal.SIGKILL  # the worker is still the one we started: nothing crashed it


def test_profiles_file_is_read_like_the_demo(tmp_path: Path) -> None:
    profiles = read_profiles(ROOT / "examples" / "profiles.jsonl")
    assert len(profiles) >= 10
