"""Producing events and profile imports onto `herald.events`, packed per partition, and dead
letters onto `herald.dlq`.

The HTTP API may answer 202 only once everything accepted is acknowledged by the broker
(acks=all), so `send_events` and `send_profiles` return only then. To amortise the per-record
cost they write one packed record per partition (see `engine.events` for the event wire format,
`workers.records` for the `profile` control record), on the partition Kafka's default partitioner
gives the user id, so a packed record and a plain keyed record from any other producer land on
the same partition and the same worker owns the user's state either way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.codec import has_lz4
from aiokafka.errors import BrokerResponseError, KafkaError

from engine.errors import ServiceError
from engine.events import Event, pack_records
from workers.records import SEQ_STRIDE, control
from workers.topics import DLQ, EVENTS, partition_for

__all__ = ["MAX_PACK_BYTES", "EventProducer"]

log = logging.getLogger(__name__)

# Well under Kafka's default 1 MiB message.max.bytes, large enough that a 500-event batch of
# typical events is one record per partition.
MAX_PACK_BYTES: Final = 512 * 1024


class EventProducer:
    """One aiokafka producer shared by every request of a process."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_id: str = "herald-api",
        linger_ms: int = 0,  # aiokafka batches anyway while a partition has a request in flight
        request_timeout_ms: int = 10_000,
        max_pack_bytes: int = MAX_PACK_BYTES,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._client_id = client_id
        self._linger_ms = linger_ms
        self._request_timeout_ms = request_timeout_ms
        self._max_pack_bytes = max_pack_bytes
        self._producer: Any = None
        self.idempotent = False

    async def start(self) -> None:
        """Connect; use idempotence (no duplicates on internal retries) when the broker has it.

        Brokers without it (the embedded one) refuse InitProducerId; Herald still works there,
        since every consumer deduplicates by `event_id`.
        """
        try:
            try:
                with _quiet_probe():
                    self._producer = await self._started(idempotent=True)
                self.idempotent = True
            except BrokerResponseError as exc:
                log.info("broker refused an idempotent producer (%r); using one without", exc)
                self._producer = await self._started(idempotent=False)
            # Learn the partition count now, not on the first request; run `ensure_topics`
            # first, since Tansu auto-creates a topic it is asked about.
            await self._producer.partitions_for(EVENTS)
        except KafkaError as exc:
            await self.stop()
            raise ServiceError(f"cannot reach Kafka at {self._bootstrap}: {exc!r}") from exc

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def ready(self, timeout: float = 2.0) -> bool:
        """Started, the broker answers a metadata request, and `herald.events` exists."""
        producer = self._producer
        if producer is None:
            return False
        client = producer.client
        try:
            updated = await asyncio.wait_for(client.force_metadata_update(), timeout)
        except (TimeoutError, KafkaError):
            return False
        return bool(updated) and bool(client.cluster.partitions_for_topic(EVENTS))

    async def send_events(self, events: list[Event]) -> None:
        """Produce all events and wait for every acknowledgement; ServiceError if any failed.

        On failure some packs may already be stored: the caller reports nothing accepted and the
        client's retry is deduplicated downstream by `event_id`.
        """
        if not events:
            return
        by_partition: dict[int, list[Event]] = {}
        partitions = await self._partition_count()
        for event in events:
            by_partition.setdefault(_partition(event.user_id, partitions), []).append(event)
        await self._produce(
            [
                (p, key, value)
                for p, group in by_partition.items()
                for key, value in pack_records(group, self._max_pack_bytes)
            ]
        )

    async def send_profiles(self, profiles: list[tuple[str, dict[str, Any]]], at: float) -> None:
        """Produce `profile` control records (traits without an event) and wait for every ack.

        `at` (epoch seconds) is the records' time. The profiles of one partition go in as few
        records as `max_pack_bytes` allows, in order, so a user's later import wins. A retry
        after a failure applies the same traits again, which is harmless.
        """
        if not profiles:
            return
        by_partition: dict[int, list[dict[str, Any]]] = {}
        partitions = await self._partition_count()
        for user_id, traits in profiles:
            by_partition.setdefault(_partition(user_id, partitions), []).append(
                {"user_id": user_id, "traits": traits}
            )
        await self._produce(
            [
                (p, key, value)
                for p, group in by_partition.items()
                for key, value in _pack_profiles(group, at, self._max_pack_bytes)
            ]
        )

    async def send_dlq(self, raw: bytes, reason: str, detail: str, source: str) -> None:
        """Dead-letter something that could not be accepted, keeping its bytes for a replay."""
        try:
            text, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        value = orjson.dumps(
            {
                "reason": reason,
                "detail": detail,
                "source": source,
                "raw": text,
                "raw_encoding": encoding,
                "at": datetime.now(UTC).isoformat(),
            }
        )
        producer = self._require()
        try:
            future = await producer.send(DLQ, value)
        except KafkaError as exc:
            raise ServiceError(f"cannot produce to {DLQ}: {exc!r}") from exc
        await _all_acked([future])

    async def _started(self, *, idempotent: bool) -> Any:
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            acks="all",
            enable_idempotence=idempotent,
            linger_ms=self._linger_ms,
            request_timeout_ms=self._request_timeout_ms,
            max_batch_size=self._max_pack_bytes + 1024,
            compression_type="lz4" if has_lz4() else None,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def _partition_count(self) -> int:
        producer = self._require()
        try:
            return len(await producer.partitions_for(EVENTS))
        except KafkaError as exc:
            raise ServiceError(f"cannot produce to {EVENTS}: {exc!r}") from exc

    async def _produce(self, records: list[tuple[int, str, bytes]]) -> None:
        """Send `(partition, key, value)` records to `herald.events`; return once all are acked."""
        producer = self._require()
        futures: list[asyncio.Future[Any]] = []
        try:
            for partition, key, value in records:
                futures.append(
                    await producer.send(EVENTS, value, key=key.encode(), partition=partition)
                )
        except KafkaError as exc:
            await asyncio.gather(*futures, return_exceptions=True)  # leave none unobserved
            raise ServiceError(f"cannot produce to {EVENTS}: {exc!r}") from exc
        await _all_acked(futures)

    def _require(self) -> Any:
        if self._producer is None:
            raise ServiceError("EventProducer is not started")
        return self._producer


class _DropInitProducerIdError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Unexpected error during InitProducerId")


@contextlib.contextmanager
def _quiet_probe() -> Iterator[None]:
    """aiokafka logs a refused InitProducerId as an error; while probing it is an answer."""
    sender_log = logging.getLogger("aiokafka.producer.sender")
    quiet = _DropInitProducerIdError()
    sender_log.addFilter(quiet)
    try:
        yield
    finally:
        sender_log.removeFilter(quiet)


@functools.lru_cache(maxsize=1 << 17)
def _partition(user_id: str, partitions: int) -> int:
    """`partition_for`, remembered: murmur2 is pure Python, and active users come back often."""
    return partition_for(user_id.encode(), partitions)


def _pack_profiles(
    profiles: list[dict[str, Any]], at: float, max_bytes: int
) -> list[tuple[str, bytes]]:
    """Profiles of one partition as `(key, value)` control records, halved until each fits.

    A record also stays under `SEQ_STRIDE` items, the most one record can number for replays.
    """
    value = control("profile", at, profiles=profiles)
    if len(profiles) == 1 or (len(value) <= max_bytes and len(profiles) < SEQ_STRIDE):
        return [(profiles[0]["user_id"], value)]
    half = len(profiles) // 2
    return _pack_profiles(profiles[:half], at, max_bytes) + _pack_profiles(
        profiles[half:], at, max_bytes
    )


async def _all_acked(futures: list[asyncio.Future[Any]]) -> None:
    """Wait for every delivery (none left unobserved), then fail if any failed."""
    results = await asyncio.gather(*futures, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise ServiceError(f"the broker did not acknowledge: {result!r}") from result
