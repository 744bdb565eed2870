"""`herald status`: read-only live view of a running cluster (Kafka offsets + Redis totals).

How it reads without disturbing anything:

* High watermarks come from fetch responses, never from ListOffsets: on Tansu, ListOffsets
  LATEST (what `end_offsets()` and `seek_to_end()` use) answers "base offset of the last batch
  + 1", which undercounts by up to a batch (see `workers.config`). A consumer with no group
  is assigned every partition of the three topics; per read it seeks to that approximate end
  (so the fetch carries at most the last batch, not the backlog), fetches once per partition
  and takes `consumer.highwater(tp)` from the answer. Between reads its partitions are
  paused, so it never tails the topics. On Apache Kafka the same steps give the same number.
* Committed offsets come from consumers created with the group ids `herald-processor` and
  `herald-dispatcher` that never subscribe: `committed(tp)` is an OffsetFetch, which needs no
  membership, so the groups are never joined and never rebalanced (the admin API's
  `list_consumer_group_offsets` cannot decode Tansu's answer).
* Partition counts come from the admin client's full topic listing, which creates nothing
  (Tansu auto-creates any topic a metadata request names).
* Committed offsets are read before high watermarks, so a snapshot never shows a commit ahead
  of the log it was committed on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rich.console import Console
from rich.live import Live
from rich.text import Text

from workers import keys, stats
from workers.config import Settings, kafka_bootstrap
from workers.status_view import LAG_GROUPS, Snapshot, TopicPartitionKey, render, snapshot_json
from workers.topics import ALL_TOPICS, EVENTS, topic_partition_counts

# Both services are tried side by side, so with start-up the command gives up within 5 s.
CONNECT_TIMEOUT_S = 4.0
READ_TIMEOUT_S = 5.0
REFRESH_S = 1.0
TOPICS_REFRESH_S = 30.0
CLIENT_ID = "herald-status"

T = TypeVar("T")


class Unreachable(Exception):
    """Redis or Kafka did not answer in time; the message names which and where."""


class StatusReader:
    """Reads snapshots from Kafka and Redis; holds its connections between reads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bootstrap = kafka_bootstrap(settings)
        self.redis: aioredis.Redis | None = None
        self.partitions: dict[str, int] = {}
        self._watermarks: AIOKafkaConsumer | None = None
        self._groups: dict[str, AIOKafkaConsumer] = {}
        self._tps: list[TopicPartition] = []
        self._topics_read_at = 0.0

    async def connect(self, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Reach both services, each within `timeout` (they are tried side by side)."""
        results = await asyncio.gather(
            self._connect_redis(timeout), self._connect_kafka(timeout), return_exceptions=True
        )
        down = [r for r in results if isinstance(r, Unreachable)]
        if down:
            raise Unreachable("\n".join(str(r) for r in down))
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _connect_redis(self, timeout: float) -> None:
        url = self.settings.redis_url
        self.redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        await _within(self.redis.ping(), timeout, f"Redis at {url}")

    async def _connect_kafka(self, timeout: float) -> None:
        await _within(self._start_kafka_clients(timeout), timeout, f"Kafka at {self.bootstrap}")

    async def _start_kafka_clients(self, timeout: float) -> None:
        request_timeout_ms = int(timeout * 1000)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=CLIENT_ID,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
            request_timeout_ms=request_timeout_ms,
        )
        self._watermarks = consumer
        await consumer.start()
        await self._read_topics()
        for _topic, group in LAG_GROUPS:
            # Never subscribed: OffsetFetch needs no membership, so the group is not joined.
            member = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                client_id=CLIENT_ID,
                group_id=group,
                enable_auto_commit=False,
                request_timeout_ms=request_timeout_ms,
            )
            self._groups[group] = member
            await member.start()

    async def _read_topics(self) -> None:
        """Partition counts, and the watermark consumer assigned to every partition (paused)."""
        self.partitions = await topic_partition_counts(self.bootstrap, ALL_TOPICS)
        self._topics_read_at = time.monotonic()
        tps = [
            TopicPartition(topic, p)
            for topic in ALL_TOPICS
            for p in range(self.partitions.get(topic, 0))
        ]
        if tps != self._tps and self._watermarks is not None:
            self._watermarks.assign(tps)
            self._watermarks.pause(*tps)
        self._tps = tps

    async def snapshot(self) -> Snapshot:
        """One consistent-enough read of totals, offsets and timers."""
        assert self.redis is not None, "connect() first"
        missing = len(self.partitions) < len(ALL_TOPICS)
        if missing or time.monotonic() - self._topics_read_at > TOPICS_REFRESH_S:
            # Topics created after `status` started, or given more partitions, are picked up.
            await _within(self._read_topics(), READ_TIMEOUT_S, f"Kafka at {self.bootstrap}")
        committed = await _within(self._committed(), READ_TIMEOUT_S, f"Kafka at {self.bootstrap}")
        highwater = await _within(self._highwaters(), READ_TIMEOUT_S, f"Kafka at {self.bootstrap}")
        where = f"Redis at {self.settings.redis_url}"
        totals = await _within(stats.read(self.redis), READ_TIMEOUT_S, where)
        pending, overdue = await _within(self._timers(time.time()), READ_TIMEOUT_S, where)
        return Snapshot(
            at=time.monotonic(),
            stats=totals,
            highwater=highwater,
            committed=committed,
            timers_pending=pending,
            timers_overdue=overdue,
        )

    async def _committed(self) -> dict[str, dict[TopicPartitionKey, int | None]]:
        out: dict[str, dict[TopicPartitionKey, int | None]] = {}
        for topic, group in LAG_GROUPS:
            member = self._groups[group]
            tps = [tp for tp in self._tps if tp.topic == topic]
            offsets = await asyncio.gather(*(member.committed(tp) for tp in tps))
            out[group] = {
                (tp.topic, tp.partition): None if off is None else int(off)
                for tp, off in zip(tps, offsets, strict=True)
            }
        return out

    async def _highwaters(self) -> dict[TopicPartitionKey, int]:
        consumer, tps = self._watermarks, self._tps
        if consumer is None or not tps:
            return {}
        asked_ms = time.time() * 1000.0
        consumer.resume(*tps)
        try:
            # Only to keep the fetch small: on Tansu this lands inside the last batch.
            await consumer.seek_to_end(*tps)
            while True:
                # Draining matters: aiokafka fetches no more for a partition with unread data.
                await consumer.getmany(*tps, timeout_ms=self.settings.fetch_max_wait_ms + 10)
                stamps = [consumer.last_poll_timestamp(tp) for tp in tps]
                if all(s is not None and s >= asked_ms for s in stamps):
                    break
        finally:
            consumer.pause(*tps)
        out: dict[TopicPartitionKey, int] = {}
        for tp in tps:
            highwater = consumer.highwater(tp)
            out[(tp.topic, tp.partition)] = int(highwater) if highwater is not None else 0
        return out

    async def _timers(self, now: float) -> tuple[dict[int, int], dict[int, int]]:
        assert self.redis is not None
        count = self.partitions.get(EVENTS) or self.settings.partitions
        pipe = self.redis.pipeline(transaction=False)
        for p in range(count):
            pipe.zcard(keys.timers(p))
            pipe.zcount(keys.timers(p), "-inf", now)
        answers = await pipe.execute()
        pending = {p: int(answers[2 * p]) for p in range(count)}
        overdue = {p: int(answers[2 * p + 1]) for p in range(count)}
        return pending, overdue

    async def close(self) -> None:
        """Stop every client; groups are left exactly as they were (never joined)."""
        consumers = [c for c in (self._watermarks, *self._groups.values()) if c is not None]
        for consumer in consumers:
            # Closing after a failure: nothing useful is left to report.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), READ_TIMEOUT_S)
        if self.redis is not None:
            await self.redis.aclose()


async def _within(awaitable: Awaitable[T], timeout: float, where: str) -> T:
    """`awaitable`'s result, or Unreachable naming `where` on timeout or connection failure."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise Unreachable(f"{where} did not answer within {timeout:g} s") from None
    except (OSError, ConnectionError) as exc:
        raise Unreachable(f"{where} is not reachable: {exc}") from exc
    except (KafkaConnectionError, RedisConnectionError, RedisTimeoutError) as exc:
        raise Unreachable(f"{where} is not reachable: {exc}") from exc
    except (KafkaError, RedisError) as exc:
        raise Unreachable(f"{where} failed: {exc!r}") from exc


# --------------------------------------------------------------------------- command


def run(args: argparse.Namespace) -> int:
    """`herald status [--once] [--json]`: 0 when done (Ctrl-C ends the live view), 2 if down."""
    settings = Settings()
    once = bool(getattr(args, "once", False))
    as_json = bool(getattr(args, "json", False))
    try:
        with _quiet_kafka_client():
            return asyncio.run(_main(settings, once=once, as_json=as_json))
    except KeyboardInterrupt:
        return 0
    except Unreachable as exc:
        for line in str(exc).splitlines():
            print(f"herald status: {line}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def _quiet_kafka_client() -> Iterator[None]:
    """aiokafka logs every failed connection attempt; `status` reports them once, itself."""
    log = logging.getLogger("aiokafka")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


async def _main(settings: Settings, *, once: bool, as_json: bool) -> int:
    reader = StatusReader(settings)
    try:
        await reader.connect()
        if once:
            before = await reader.snapshot()
            await asyncio.sleep(REFRESH_S)
            after = await reader.snapshot()
            if as_json:
                _print_json(snapshot_json(before, after))
            else:
                Console().print(render(before, after))
            return 0
        if as_json:
            await _stream_json(reader)
        else:
            await _live(reader)
        return 0
    finally:
        await reader.close()


async def _live(reader: StatusReader) -> None:
    previous: Snapshot | None = None
    with Live(Text("reading…"), auto_refresh=False, redirect_stderr=False) as live:
        while True:
            started = time.monotonic()
            current = await reader.snapshot()
            live.update(render(previous, current), refresh=True)
            previous = current
            await asyncio.sleep(max(0.0, REFRESH_S - (time.monotonic() - started)))


async def _stream_json(reader: StatusReader) -> None:
    """Without --once, --json prints one object per refresh (JSON lines), starting with rates."""
    previous = await reader.snapshot()
    while True:
        await asyncio.sleep(REFRESH_S)
        current = await reader.snapshot()
        _print_json(snapshot_json(previous, current))
        previous = current


def _print_json(facts: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(facts).decode() + "\n")
    sys.stdout.flush()
