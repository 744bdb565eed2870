"""CPU cost per event of the processor's batch step (decode -> Redis read -> core -> Redis write),
without Kafka: records are built the way the API packs them and handed to `BatchProcessor`
in faust-sized batches; actions go to a list.

Why: `herald bench` runs every role and the broker on the same two cores, so its figures move
with everything else on the machine. This isolates the processor's own main-thread work, the
part a faster hot path must shrink, and is quick enough to run after every change.

Usage: python benchmarks/processor_cpu.py [EVENTS] [USERS] [REDIS_URL]
(default: 200,000 events, 100,000 users, an embedded Redis started for the run).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from engine.events import pack_records
from engine.language.loader import load_rules
from engine.runtime.core import Engine
from engine.synthetic import synthetic_events, user_traits
from workers.gc_tuning import tune_gc
from workers.processor import BatchProcessor, DeadLetter, Record, WallClock
from workers.records import control
from workers.services import EmbeddedRedis
from workers.store import RedisStore
from workers.topics import partition_for

PARTITIONS = 8
RECORDS_PER_BATCH = 64  # what the processor's faust agent takes at most
EVENTS_PER_SEND = 2000  # what one API request / bench produce call packs


class ListSink:
    """Actions and dead letters kept in memory (the broker is not what is measured here)."""

    def __init__(self) -> None:
        self.actions = 0
        self.letters = 0

    async def send_actions(self, actions: Sequence[tuple[str, int, bytes]]) -> None:
        """Count them."""
        self.actions += len(actions)

    async def send_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Count them."""
        self.letters += len(letters)


def _records(count: int, users: int, offsets: list[int]) -> list[Record]:
    events = list(synthetic_events(count, users, seed=3))
    out: list[Record] = []
    for i in range(0, len(events), EVENTS_PER_SEND):
        by_partition: dict[int, list] = {}  # type: ignore[type-arg]
        for event in events[i : i + EVENTS_PER_SEND]:
            by_partition.setdefault(partition_for(event.user_id.encode(), PARTITIONS), []).append(
                event
            )
        for p, group in sorted(by_partition.items()):
            for _key, value in pack_records(group, 512 * 1024):
                out.append(Record(p, offsets[p], value))
                offsets[p] += 1
    return out


def _profile_records(users: int, at: float, offsets: list[int]) -> Iterator[Record]:
    by_partition: dict[int, list[dict[str, object]]] = {}
    for i in range(users):
        user = f"u{i}"
        by_partition.setdefault(partition_for(user.encode(), PARTITIONS), []).append(
            {"user_id": user, "traits": user_traits(i)}
        )
    for p, items in by_partition.items():
        for j in range(0, len(items), 2000):
            yield Record(p, offsets[p], control("profile", at, profiles=items[j : j + 2000]))
            offsets[p] += 1


async def measure(count: int, users: int, redis_url: str) -> None:
    """Load profiles (untimed), then time the batch step over `count` events."""
    store = RedisStore.from_url(redis_url)
    await store.client.flushdb()
    sink = ListSink()
    processor = BatchProcessor(Engine(load_rules("rules")), store, sink, WallClock())
    offsets = [0] * PARTITIONS
    for record in _profile_records(users, time.time(), offsets):
        await processor.process([record])
    records = _records(count, users, offsets)
    tune_gc()  # as `herald run` does
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(records), RECORDS_PER_BATCH):
        await processor.process(records[i : i + RECORDS_PER_BATCH])
    took, cpu = time.perf_counter() - started, time.process_time() - cpu
    # CPU time too: on a shared machine it moves far less than the wall clock does.
    print(
        f"{count} events, {users} users, {len(records)} records: {took:.2f} s = "
        f"{count / took:,.0f} events/s ({1e6 * took / count:.1f} µs/event, "
        f"{1e6 * cpu / count:.1f} µs CPU), {sink.actions} actions, {sink.letters} dead letters"
    )
    await store.close()


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    users = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    if len(sys.argv) > 3:
        asyncio.run(measure(count, users, sys.argv[3]))
        return
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        redis = stack.enter_context(EmbeddedRedis(Path(tmp)))
        asyncio.run(measure(count, users, redis.url))


if __name__ == "__main__":
    main()
