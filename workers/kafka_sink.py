"""Producing the workers' own records: actions, dead letters, control records.

Every method returns only after the broker acknowledged every record (acks=all): the caller
writes state or commits offsets next, and may do so only once its effects are durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from engine.errors import ServiceError
from workers.processor import DeadLetter
from workers.topics import ACTIONS, DLQ, EVENTS


class KafkaSink:
    """The processor's and dispatcher's producer (implements `workers.processor.Sink`)."""

    def __init__(self, bootstrap: str, *, client_id: str) -> None:
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._producer: Any = None
        self._partitions: dict[str, int] = {}

    async def start(self) -> None:
        """Connect (aiokafka objects must be made inside the running loop)."""
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            acks="all",
            linger_ms=1,
            max_batch_size=1024 * 1024,
            max_request_size=4 * 1024 * 1024,
            request_timeout_ms=15_000,
        )
        await self._producer.start()

    async def stop(self) -> None:
        """Flush and disconnect."""
        if self._producer is not None:
            await self._producer.stop()

    async def partitions(self, topic: str) -> int:
        """Partition count of a topic (cached: it only changes by an operator's decision)."""
        count = self._partitions.get(topic)
        if count is None:
            count = self._partitions[topic] = len(await self._producer.partitions_for(topic))
        return count

    async def send_records(
        self, topic: str, records: Sequence[tuple[bytes | None, int | None, bytes]]
    ) -> None:
        """Produce (key, partition, value) records and wait for every acknowledgement."""
        if not records:
            return
        futures: list[asyncio.Future[Any]] = []
        try:
            for key, partition, value in records:
                futures.append(
                    await self._producer.send(topic, value, key=key, partition=partition)
                )
        except KafkaError as exc:
            await asyncio.gather(*futures, return_exceptions=True)
            raise ServiceError(f"cannot produce to {topic}: {exc!r}") from exc
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise ServiceError(
                    f"{topic}: the broker did not acknowledge: {result!r}"
                ) from result

    async def send_actions(self, actions: Sequence[tuple[str, int, bytes]]) -> None:
        """Actions go to the same partition number as their user's events, modulo the count."""
        count = await self.partitions(ACTIONS)
        await self.send_records(
            ACTIONS, [(user.encode(), p % count, value) for user, p, value in actions]
        )

    async def send_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Dead letters, keyed by source partition for ordering."""
        await self.send_records(DLQ, [(None, None, letter.to_json()) for letter in letters])

    async def send_raw_dead_letters(self, values: Sequence[bytes]) -> None:
        """Already-encoded dead letters (from the dispatcher)."""
        await self.send_records(DLQ, [(None, None, value) for value in values])

    async def send_control(self, partition: int, value: bytes) -> None:
        """A control record onto one partition of herald.events (timers, schedules, clock)."""
        await self.send_records(EVENTS, [(None, partition, value)])
