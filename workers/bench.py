"""The benchmark's phases (runtime.md, Benchmark), each against the same broker and Redis.

  end_to_end   HTTP ingest -> processor -> dispatcher -> outbox, all roles, as fast as it goes
  latency      a steady offered load (2,000 events/s): event accepted -> message in the outbox
  processor    one processor process draining N pre-produced events
  raw_loop     the bare ceiling for the same I/O: aiokafka batches, decoding, and per event
               the same number of Redis operations the processor issued, pipelined per batch
  simulate     the processor phase's events through `herald simulate`'s driver, in memory
               (no services): one process, and as many as `herald simulate` would use

Events are synthetic storefront traffic (`engine.synthetic`), without timestamps so the API
stamps them on acceptance: latency is measured from that stamp to the outbox write.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from engine.events import Event, parse_event
from engine.language.loader import load_rules
from engine.runtime.core import Engine
from engine.runtime.effects import Message
from engine.simulate import Simulation
from engine.synthetic import synthetic_events, user_traits
from workers import stats
from workers.gc_tuning import tune_gc
from workers.producer import EventProducer
from workers.records import control
from workers.simulate_shards import simulate_sharded
from workers.stack import LocalStack
from workers.topics import EVENTS

Progress = Callable[[str], None]


@dataclass
class BenchResult:
    """The figures of one run."""

    processor_events_per_s: float = 0.0
    end_to_end_events_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    raw_loop_per_s: float = 0.0
    redis_ops_per_event: float = 0.0
    latency_samples: int = 0
    simulate_events_per_s: float = 0.0
    simulate_jobs: int = 1
    simulate_one_process_events_per_s: float = 0.0

    @property
    def ratio(self) -> float:
        """processor_events_per_s / raw_loop_per_s."""
        return self.processor_events_per_s / self.raw_loop_per_s if self.raw_loop_per_s else 0.0


def _wire(events: list[Event], *, stamp: bool) -> list[dict[str, Any]]:
    docs = []
    for event in events:
        doc = event.to_json_dict()
        if not stamp:
            del doc["timestamp"]
        if not doc["traits"]:
            del doc["traits"]
        docs.append(doc)
    return docs


async def _stats(client: aioredis.Redis) -> dict[str, float]:
    snapshot: dict[str, float] = (await stats.read(client))["processor"]
    return snapshot


async def _wait_until(
    check: Callable[[], Any], timeout: float, what: str, stack: LocalStack
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        dead = stack.dead_role()
        if dead is not None:
            raise RuntimeError(f"role {dead} died during {what}; see {stack.state_dir}")
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{what} did not finish within {timeout:.0f} s")


async def load_profiles(stack: LocalStack, users: int, prefix: str, *, wait: bool = True) -> None:
    """Give every benchmark user a profile (addresses, locale) before traffic starts; with
    `wait`, return only once the processor applied them, so no phase times that work."""
    client = aioredis.Redis.from_url(stack.redis_url)
    before = (await _stats(client)).get("inputs", 0)
    now = time.time()
    by_partition: dict[int, list[dict[str, Any]]] = {}
    for i in range(users):
        user = f"{prefix}{i}"
        by_partition.setdefault(stack.partition_of(user), []).append(
            {"user_id": user, "traits": user_traits(i)}
        )
    records = []
    for p, items in by_partition.items():
        for j in range(0, len(items), 2000):
            records.append((p, control("profile", now, profiles=items[j : j + 2000])))
    await stack.send_controls(records)

    async def applied() -> bool:
        return (await _stats(client)).get("inputs", 0) - before >= users

    if wait:
        await _wait_until(applied, 600, "loading profiles", stack)
    await client.aclose()


def _renamed(events: list[Event], prefix: str) -> list[Event]:
    return [
        Event(
            f"{prefix}{e.event_id}",
            e.type,
            prefix + e.user_id[1:],
            e.timestamp,
            e.properties,
            e.traits,
        )
        for e in events
    ]


async def end_to_end(
    stack: LocalStack, count: int, users: int, progress: Progress, concurrency: int = 4
) -> float:
    """All roles: events/s from the first POST until every resulting action is delivered."""
    client = aioredis.Redis.from_url(stack.redis_url)
    events = _renamed(list(synthetic_events(count, users, seed=1)), "e2e-u")
    await load_profiles(stack, users, "e2e-u")
    before = await _stats(client)
    batches = [_wire(events[i : i + 500], stamp=False) for i in range(0, len(events), 500)]
    started = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        queue = list(reversed(batches))

        async def worker() -> None:
            while queue:
                await stack.post_events(http, queue.pop())

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    progress(f"end-to-end: {count} events accepted in {time.perf_counter() - started:.1f} s")

    async def drained() -> bool:
        now = await _stats(client)
        events_done = now.get("events", 0) - before.get("events", 0) >= count
        actions = now.get("actions", 0) - before.get("actions", 0)
        dispatched = now.get("dispatched", 0) - before.get("dispatched", 0)
        return events_done and dispatched >= actions

    await _wait_until(drained, 600, "the end-to-end phase", stack)
    elapsed = time.perf_counter() - started
    await client.aclose()
    return count / elapsed


async def latency(
    stack: LocalStack, rate: float, seconds: float, users: int, progress: Progress
) -> tuple[float, float, int]:
    """p50/p99 ms from acceptance to the outbox at a steady offered load."""
    client = aioredis.Redis.from_url(stack.redis_url)
    await client.delete(stats.LATENCY)
    await load_profiles(stack, users, "lat-u")
    total = int(rate * seconds)
    events = _renamed(list(synthetic_events(total, users, seed=2)), "lat-u")
    tick = 0.05
    per_tick = max(1, int(rate * tick))
    started = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        pending: set[asyncio.Task[Any]] = set()
        for index, start in enumerate(range(0, total, per_tick)):
            due = started + index * tick
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            batch = _wire(events[start : start + per_tick], stamp=False)
            task = asyncio.create_task(stack.post_events(http, batch))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
    offered = total / (time.perf_counter() - started)
    progress(f"latency: offered {offered:.0f} events/s for {seconds:.0f} s")
    await asyncio.sleep(2.0)
    samples = sorted(float(v) for v in await client.lrange(stats.LATENCY, 0, -1))
    await client.aclose()
    if not samples:
        return 0.0, 0.0, 0
    p50 = statistics.median(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return p50, p99, len(samples)


async def produce(bootstrap: str, events: list[Event]) -> None:
    """Pre-produce events the way the API does (packed per partition)."""
    producer = EventProducer(bootstrap, client_id="herald-bench")
    await producer.start()
    try:
        for i in range(0, len(events), 2000):
            await producer.send_events(events[i : i + 2000])
    finally:
        await producer.stop()


async def end_offsets(bootstrap: str, partitions: int) -> dict[int, int]:
    """High watermarks of herald.events (Tansu's ListOffsets is wrong: fetch to learn them)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(EVENTS, p) for p in range(partitions)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        ends: dict[int, int] = {}
        deadline = time.monotonic() + 60
        while len(ends) < partitions and time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=200, max_records=1)
            for tp in tps:
                hw = consumer.highwater(tp)
                if hw is not None:
                    ends[tp.partition] = hw
        return ends
    finally:
        await consumer.stop()


async def processor_drain(
    stack: LocalStack, count: int, users: int, progress: Progress
) -> tuple[float, float, dict[int, int]]:
    """One processor draining `count` pre-produced events; (events/s, redis ops/event, starts)."""
    stack.stop_role("api")
    stack.stop_role("dispatcher")
    # Profiles first, through a processor that is then stopped: the timed drain (and the
    # Redis operations it is charged with) is events only.
    await load_profiles(stack, users, "u", wait=True)
    stack.stop_role("processor")
    starts = await end_offsets(stack.bootstrap, stack.partitions)
    events = list(synthetic_events(count, users, seed=3))
    produced = time.perf_counter()
    await produce(stack.bootstrap, events)
    progress(f"processor: {count} events pre-produced in {time.perf_counter() - produced:.1f} s")
    client = aioredis.Redis.from_url(stack.redis_url)
    before = await _stats(client)
    stack.spawn("processor")
    first: list[float] = []

    async def done() -> bool:
        now = await _stats(client)
        processed = now.get("events", 0) - before.get("events", 0)
        if processed > 0 and not first:
            first.append(time.perf_counter())
            first.append(processed)
        return processed >= count

    await _wait_until(done, 900, "the processor phase", stack)
    finished = time.perf_counter()
    after = await _stats(client)
    await client.aclose()
    # From the first batch seen to the last: faust's start-up and group join are not counted,
    # the first batch's events are (measured from when it was reported) — a slight undercount.
    elapsed = max(finished - first[0], 1e-6)
    rate = (count - first[1]) / elapsed if count > first[1] else count / elapsed
    ops = (after.get("redis_ops", 0) - before.get("redis_ops", 0)) / count
    return rate, ops, starts


async def raw_loop(
    stack: LocalStack, starts: dict[int, int], count: int, ops_per_event: float
) -> float:
    """Plain aiokafka + orjson + the same Redis ops per event, pipelined per batch."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    client = aioredis.Redis.from_url(stack.redis_url)
    received = datetime.now(UTC)
    try:
        tps = [TopicPartition(EVENTS, p) for p in range(stack.partitions)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, starts.get(tp.partition, 0))
        done = 0
        owed = 0.0
        issued = 0
        started = time.perf_counter()
        while done < count:
            batch = await consumer.getmany(timeout_ms=500, max_records=500)
            pipe = client.pipeline(transaction=False)
            for records in batch.values():
                for record in records:
                    doc = orjson.loads(record.value)
                    items = doc.get("herald_batch", [doc]) if isinstance(doc, dict) else [doc]
                    for item in items:
                        if "herald_control" in item:
                            continue
                        event = parse_event(item, received_at=received)
                        done += 1
                        owed += ops_per_event
                        key = f"bench:raw:{event.user_id}"
                        while owed >= 1:
                            owed -= 1
                            issued += 1
                            if issued % 2:
                                pipe.get(key)
                            else:
                                pipe.set(key, record.value[:64])
            if len(pipe):
                await pipe.execute()
        return count / (time.perf_counter() - started)
    finally:
        await consumer.stop()
        await client.aclose()


def simulate_speed(rules: Path, count: int, users: int, jobs: int) -> tuple[float, float]:
    """`herald simulate`'s driver over the processor phase's events, in memory: events/s with
    one process (the core alone) and with `jobs` processes (what `herald simulate` uses for
    an input this size). Profiles are loaded first and not timed, as in the processor phase;
    the window ends at the last event (timers due by then fire, later ones are not counted)."""
    engine = Engine(load_rules(rules))
    events = list(synthetic_events(count, users, seed=3))
    start, until = events[0].timestamp, events[-1].timestamp
    loaded = Simulation(engine)
    for _effect in loaded.load_profiles(((f"u{i}", user_traits(i)) for i in range(users)), start):
        pass
    tune_gc()  # what start-up built, profiles included, is frozen, as `herald simulate` does
    began = time.perf_counter()
    for _ in simulate_sharded(
        engine, events, [], start, until, jobs=jobs, keep=(Message,), loaded=loaded
    ):
        pass
    sharded = count / (time.perf_counter() - began)
    began = time.perf_counter()
    for _ in loaded.run(events, start, until):
        pass
    alone = count / (time.perf_counter() - began)
    return alone, sharded
