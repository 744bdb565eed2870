"""`herald status` against the session's real broker and Redis.

The lag asserted here is only right if high watermarks come from fetches: five records
produced in one batch make Tansu's ListOffsets(LATEST) answer one past the batch's *first*
offset, so an `end_offsets()`-based lag would show 1 where there are 5.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from workers import cli, cmd_status, keys, stats
from workers.services import EmbeddedBroker, EmbeddedRedis, free_port
from workers.topics import ACTIONS, DLQ, EVENTS, ensure_topics, topic_partition_counts

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


class _Counting(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.assigned: list[set[TopicPartition]] = []

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assigned.append(set(assigned))


async def _produce(bootstrap: str, counts: dict[str, int]) -> dict[tuple[str, int], int]:
    """Five records in one batch on events p0, one on every other partition: high watermarks."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=100)
    await producer.start()
    try:
        batch = [await producer.send(EVENTS, b"status-test-%d" % i, partition=0) for i in range(5)]
        await producer.flush()
        last = {(EVENTS, 0): (await batch[-1]).offset}
        for topic in (EVENTS, ACTIONS, DLQ):
            for p in range(counts[topic]):
                if (topic, p) not in last:
                    sent = await producer.send_and_wait(topic, b"status-test", partition=p)
                    last[(topic, p)] = sent.offset
    finally:
        await producer.stop()
    return {tp: offset + 1 for tp, offset in last.items()}


async def _commit_as_processor(bootstrap: str, offsets: dict[tuple[str, int], int]) -> None:
    """Commit for `herald-processor` by manual assignment: a commit without joining the group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id="herald-processor", enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = {TopicPartition(t, p): off for (t, p), off in offsets.items()}
        consumer.assign(list(tps))
        await consumer.commit(tps)
    finally:
        await consumer.stop()


async def _write_stats(client: aioredis.Redis, partitions: int) -> None:
    await stats.add(
        client,
        {
            stats.PROCESSOR: {
                "events": 4321,
                "actions": 987,
                "dispatched": 950,
                "dead_letters": 7,
                "redis_ops": 17284,
            },
            stats.JOURNEYS: {
                "welcome_series|entries": 400,
                "welcome_series|goals": 100,
                "welcome_series|sent": 800,
                "abandoned_cart|entries": 900,
                "abandoned_cart|exits": 30,
                "abandoned_cart|goals": 90,
            },
            stats.MESSAGES: {"email|sent": 800, "sms|failed": 6, "email|deduplicated": 2},
        },
    )
    await stats.add_latencies(client, [i / 1000.0 for i in range(1, 101)])
    now = time.time()
    await client.zadd(keys.timers(0), {"u1": now - 60, "u2": now + 3600, "u3": now + 7200})
    await client.zadd(keys.timers(partitions - 1), {"u4": now - 1})


@pytest.fixture
def status_env(
    broker: EmbeddedBroker, redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    monkeypatch.setenv("HERALD_KAFKA_URL", broker.url)
    monkeypatch.setenv("HERALD_REDIS_URL", redis_server.url)
    monkeypatch.setenv("COLUMNS", "200")
    yield


@pytest.mark.usefixtures("status_env")
async def test_once_shows_lag_from_high_watermarks_timers_and_totals(
    broker: EmbeddedBroker, redis_client: aioredis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    await ensure_topics(broker.bootstrap, 4)
    counts = await topic_partition_counts(broker.bootstrap, [EVENTS, ACTIONS, DLQ])
    highwater = await _produce(broker.bootstrap, counts)
    events_hw = {p: highwater[(EVENTS, p)] for p in range(counts[EVENTS])}
    # Lag 5 on p0 (the batch), 0 everywhere else.
    await _commit_as_processor(
        broker.bootstrap,
        {(EVENTS, p): hw - 5 if p == 0 else hw for p, hw in events_hw.items()},
    )
    await _write_stats(redis_client, counts[EVENTS])

    # A live member of herald-dispatcher: status must read its offsets without a rebalance.
    listener = _Counting()
    member = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        group_id="herald-dispatcher",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=2000,
        heartbeat_interval_ms=300,
    )
    await member.start()
    try:
        member.subscribe([ACTIONS], listener=listener)
        deadline = time.monotonic() + 20
        while not listener.assigned and time.monotonic() < deadline:
            await member.getmany(timeout_ms=100)
        assert listener.assigned, "the dispatcher stand-in never joined"
        dispatcher_committed = {
            p: await member.committed(TopicPartition(ACTIONS, p)) for p in range(counts[ACTIONS])
        }

        polling = asyncio.create_task(_keep_polling(member))
        try:
            code = await asyncio.to_thread(cli.main, ["status", "--once"])
            text = capsys.readouterr().out
            json_code = await asyncio.to_thread(
                cmd_status.run, argparse.Namespace(once=True, json=True)
            )
            facts = orjson.loads(capsys.readouterr().out)
            await asyncio.sleep(1.0)
        finally:
            polling.cancel()
        assert len(listener.assigned) == 1, listener.assigned
        assert member.assignment() == {TopicPartition(ACTIONS, p) for p in range(counts[ACTIONS])}
    finally:
        await member.stop()

    assert code == 0 and json_code == 0
    events_row = _row(text, "herald.events")
    assert events_row[:3] == ["herald.events", "herald-processor", str(counts[EVENTS])]
    assert events_row[3:7] == [
        f"{sum(events_hw.values()) - 5:,}",
        f"{sum(events_hw.values()):,}",
        "5",
        "5 (p0)",
    ]
    assert "events/s 0.0" in text and "dead letters 7" in text
    assert "redis ops/event 4.00" in text
    assert "event→dispatch p50 50 ms" in text and "p99 99 ms" in text
    assert "4,321 events, 987 actions, 950 dispatched" in text
    assert "timers: 4 pending, 2 overdue" in text
    assert _row(text, "email")[1:] == ["800", "0", "0", "0", "2"]
    assert _row(text, "abandoned_cart")[1:] == ["900", "30", "90", "0", "10.0%"]
    assert text.index("│ abandoned_cart") < text.index("│ welcome_series")
    assert _row(text, "welcome_series")[-1] == "25.0%"

    events, actions = facts["lag"]
    assert (events["lag"], events["max_lag"], events["max_lag_partition"]) == (5, 5, 0)
    assert {r["partition"]: r["highwater"] for r in events["per_partition"]} == events_hw
    expected_actions_lag = {
        p: highwater[(ACTIONS, p)] - (dispatcher_committed[p] or 0) for p in range(counts[ACTIONS])
    }
    assert {r["partition"]: r["lag"] for r in actions["per_partition"]} == expected_actions_lag
    assert actions["group"] == "herald-dispatcher"
    assert facts["dead_letter_topic"]["records"] == sum(
        highwater[(DLQ, p)] for p in range(counts[DLQ])
    )
    assert facts["timers"]["pending"] == 4 and facts["timers"]["overdue"] == 2
    assert facts["totals"]["events"] == 4321
    assert facts["journeys"][0]["journey"] == "abandoned_cart"
    assert facts["journeys"][0]["conversion"] == 0.1


async def _keep_polling(consumer: AIOKafkaConsumer) -> None:
    while True:
        await consumer.getmany(timeout_ms=100)


def _row(text: str, first_cell: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"│ {first_cell} "))
    return [cell.strip() for cell in line.split("│")[1:-1]]


@pytest.mark.parametrize("down", ["redis", "kafka"])
def test_unreachable_service_exits_2_quickly_naming_it(
    down: str,
    broker: EmbeddedBroker,
    redis_server: EmbeddedRedis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    kafka = f"kafka://{dead}" if down == "kafka" else broker.url
    redis = f"redis://{dead}/0" if down == "redis" else redis_server.url
    monkeypatch.setenv("HERALD_KAFKA_URL", kafka)
    monkeypatch.setenv("HERALD_REDIS_URL", redis)
    started = time.monotonic()
    code = cli.main(["status", "--once"])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2
    assert elapsed < 5.0
    name = "Redis" if down == "redis" else "Kafka"
    other = "Kafka" if down == "redis" else "Redis"
    assert f"herald status: {name} at " in err and dead in err
    assert other not in err


def test_live_view_refreshes_until_ctrl_c(
    broker: EmbeddedBroker, redis_server: EmbeddedRedis
) -> None:
    env = dict(os.environ, HERALD_KAFKA_URL=broker.url, HERALD_REDIS_URL=redis_server.url)
    env["COLUMNS"] = "200"
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "status"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(4.0)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    # Not a terminal: the live view prints its last frame when stopped; by then rates exist.
    assert "consumer lag" in text and "│ herald.events" in text
    assert "rates over 1.0 s" in text
    assert "Traceback" not in err.decode()
