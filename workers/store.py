"""Where user state lives between inputs: Redis in production, a dict in unit tests.

The processor needs exactly two round trips per batch — one to read every user the batch
touches, one to write them back with their timer and segment index entries — so the store's
interface is batch-shaped. `MemoryStore` implements the same contract for tests of callers;
the contract tests in tests/ run against both.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import hiredis
import redis.asyncio as aioredis
from redis.typing import EncodableT

from workers import keys


class HiredisPackingConnection(aioredis.Connection):
    """redis-py's asyncio connection encodes commands in Python, ~1.5 µs per argument: an MSET
    of a batch's user documents spent more time there than Redis spent on it. hiredis (C,
    already the reply parser) packs the same bytes; this uses it for plain TCP connections
    (a TLS or socket URL picks redis-py's own connection class)."""

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]  # type: ignore[arg-type]  # its stub: 1-tuple
        except TypeError:  # a type hiredis does not pack (bytearray): redis-py's own way
            return super().pack_command(*args)


@dataclass
class PartitionWrite:
    """Everything a batch changes in one partition; applied atomically."""

    partition: int
    docs: dict[str, bytes] = field(default_factory=dict)
    wakes: dict[str, float | None] = field(default_factory=dict)
    segments_added: dict[str, list[str]] = field(default_factory=dict)
    segments_removed: dict[str, list[str]] = field(default_factory=dict)
    new_users: list[str] = field(default_factory=list)
    watermark: float | None = None
    first_watermark: float | None = None

    def op_count(self) -> int:
        """Key-level operations this write costs (reported by the benchmark)."""
        return (
            len(self.docs)
            + len(self.wakes)
            + sum(len(v) for v in self.segments_added.values())
            + sum(len(v) for v in self.segments_removed.values())
            + len(self.new_users)
            + (1 if self.watermark is not None else 0)
        )


class StateStore(Protocol):
    """The state store contract (Redis, or memory for tests)."""

    async def load(self, users: Sequence[tuple[int, str]]) -> list[bytes | None]:
        """Documents of the given (partition, user) pairs, in order; one round trip."""

    async def commit(self, writes: Sequence[PartitionWrite]) -> None:
        """Apply writes; each partition's write is atomic."""

    async def due(self, partition: int, now: float, limit: int) -> list[tuple[str, float]]:
        """(user, due time) of a partition's users with something due at or before `now`."""

    async def segment_members(self, partition: int, segment: str) -> list[str]:
        """Current members of a segment in one partition."""

    async def all_users(self, partition: int) -> list[str]:
        """Every user of one partition."""

    async def schedule_mark(self, partition: int, journey: str) -> float | None:
        """The last schedule firing handed to this partition."""

    async def set_schedule_mark(self, partition: int, journey: str, at: float) -> None:
        """Record that firings up to `at` were handed out."""

    async def first_watermark(self, partition: int) -> float | None:
        """The first event-time clock a partition had (where a replay's schedules start)."""

    async def watermarks(self, partitions: Sequence[int]) -> dict[int, float]:
        """Event-time clocks of partitions (event-time mode)."""


class RedisStore:
    """State in Redis; every key built by `workers.keys`."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """A store with its own connection pool."""
        # A generous read timeout: a large batch's MULTI under `appendfsync always` can keep a
        # busy Redis for a while, and a timeout there is retried, not lost, but costs a batch.
        return cls(
            aioredis.Redis.from_url(
                url,
                decode_responses=False,
                socket_timeout=60,
                socket_connect_timeout=5,
                connection_class=HiredisPackingConnection,
            )
        )

    async def close(self) -> None:
        """Release connections."""
        await self.client.aclose()

    async def load(self, users: Sequence[tuple[int, str]]) -> list[bytes | None]:
        """One MGET per partition, all in one pipeline."""
        if not users:
            return []
        by_partition: dict[int, list[int]] = defaultdict(list)
        for index, (partition, _user) in enumerate(users):
            by_partition[partition].append(index)
        pipe = self.client.pipeline(transaction=False)
        order = list(by_partition.items())
        for partition, indexes in order:
            pipe.mget([keys.user(partition, users[i][1]) for i in indexes])
        replies = await pipe.execute()
        out: list[bytes | None] = [None] * len(users)
        for (_partition, indexes), values in zip(order, replies, strict=True):
            for i, value in zip(indexes, values, strict=True):
                out[i] = value
        return out

    async def commit(self, writes: Sequence[PartitionWrite]) -> None:
        """One MULTI per partition (one hash slot each), sent concurrently."""
        await asyncio.gather(*(self._commit_one(w) for w in writes if w.op_count()))

    async def _commit_one(self, write: PartitionWrite) -> None:
        p = write.partition
        pipe = self.client.pipeline(transaction=True)
        if write.docs:
            pipe.mset({keys.user(p, u): doc for u, doc in write.docs.items()})
        due = {u: w for u, w in write.wakes.items() if w is not None}
        gone = [u for u, w in write.wakes.items() if w is None]
        if due:
            pipe.zadd(keys.timers(p), due)
        if gone:
            pipe.zrem(keys.timers(p), *gone)
        for name, members in write.segments_added.items():
            if members:
                pipe.sadd(keys.segment(p, name), *members)
        for name, members in write.segments_removed.items():
            if members:
                pipe.srem(keys.segment(p, name), *members)
        if write.new_users:
            pipe.sadd(keys.users(p), *write.new_users)
        if write.watermark is not None:
            pipe.set(keys.watermark(p), repr(write.watermark))
            first = write.first_watermark if write.first_watermark is not None else write.watermark
            pipe.set(keys.first_watermark(p), repr(first), nx=True)
        await pipe.execute()

    async def due(self, partition: int, now: float, limit: int) -> list[tuple[str, float]]:
        """One ZRANGEBYSCORE: O(log n + due), never a scan of every user."""
        members: Any = await self.client.zrangebyscore(
            keys.timers(partition), "-inf", now, start=0, num=limit, withscores=True
        )
        return [(bytes(member).decode(), float(score)) for member, score in members]

    async def segment_members(self, partition: int, segment: str) -> list[str]:
        """SSCAN so a large segment never blocks Redis."""
        return await self._scan(keys.segment(partition, segment))

    async def all_users(self, partition: int) -> list[str]:
        """SSCAN of the partition's user set."""
        return await self._scan(keys.users(partition))

    async def _scan(self, key: str) -> list[str]:
        members: list[str] = []
        async for member in self.client.sscan_iter(key, count=1000):
            members.append(member.decode() if isinstance(member, bytes) else member)
        return sorted(members)

    async def schedule_mark(self, partition: int, journey: str) -> float | None:
        """Last firing handed out, if any."""
        value = await self.client.hget(keys.schedules(partition), journey)
        return float(value) if value is not None else None

    async def set_schedule_mark(self, partition: int, journey: str, at: float) -> None:
        """Remember the firing."""
        await self.client.hset(keys.schedules(partition), journey, repr(at))

    async def first_watermark(self, partition: int) -> float | None:
        """The partition's first event-time clock."""
        value = await self.client.get(keys.first_watermark(partition))
        return float(value) if value is not None else None

    async def watermarks(self, partitions: Sequence[int]) -> dict[int, float]:
        """Event-time clocks, one round trip."""
        if not partitions:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for p in partitions:
            pipe.get(keys.watermark(p))
        values = await pipe.execute()
        return {p: float(v) for p, v in zip(partitions, values, strict=True) if v is not None}


class MemoryStore:
    """The same contract in a dict: for unit tests of the processor and the timer loop."""

    def __init__(self) -> None:
        self.docs: dict[tuple[int, str], bytes] = {}
        self.timers: dict[int, dict[str, float]] = defaultdict(dict)
        self.segments: dict[tuple[int, str], set[str]] = defaultdict(set)
        self.marks: dict[tuple[int, str], float] = {}
        self.clocks: dict[int, float] = {}
        self.first_clocks: dict[int, float] = {}
        self.users: dict[int, set[str]] = defaultdict(set)

    async def load(self, users: Sequence[tuple[int, str]]) -> list[bytes | None]:
        """Documents in order."""
        return [self.docs.get(u) for u in users]

    async def commit(self, writes: Sequence[PartitionWrite]) -> None:
        """Apply in order."""
        for w in writes:
            p = w.partition
            for user, doc in w.docs.items():
                self.docs[(p, user)] = doc
            for user, wake in w.wakes.items():
                if wake is None:
                    self.timers[p].pop(user, None)
                else:
                    self.timers[p][user] = wake
            self.users[p].update(w.new_users)
            for name, members in w.segments_added.items():
                self.segments[(p, name)].update(members)
            for name, members in w.segments_removed.items():
                self.segments[(p, name)].difference_update(members)
            if w.watermark is not None:
                self.clocks[p] = w.watermark
                first = w.first_watermark if w.first_watermark is not None else w.watermark
                self.first_clocks.setdefault(p, first)

    async def due(self, partition: int, now: float, limit: int) -> list[tuple[str, float]]:
        """Due users, earliest first."""
        timers = self.timers[partition]
        return sorted(((u, t) for u, t in timers.items() if t <= now), key=lambda x: x[1])[:limit]

    async def segment_members(self, partition: int, segment: str) -> list[str]:
        """Members, sorted."""
        return sorted(self.segments[(partition, segment)])

    async def all_users(self, partition: int) -> list[str]:
        """Users, sorted."""
        return sorted(self.users[partition])

    async def schedule_mark(self, partition: int, journey: str) -> float | None:
        """Last firing."""
        return self.marks.get((partition, journey))

    async def set_schedule_mark(self, partition: int, journey: str, at: float) -> None:
        """Record a firing."""
        self.marks[(partition, journey)] = at

    async def first_watermark(self, partition: int) -> float | None:
        """First clock."""
        return self.first_clocks.get(partition)

    async def watermarks(self, partitions: Sequence[int]) -> dict[int, float]:
        """Clocks."""
        return {p: self.clocks[p] for p in partitions if p in self.clocks}
