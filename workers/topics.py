"""Herald's Kafka topics, and creating them before anything else touches them.

Creation is explicit because brokers that auto-create topics (Tansu does, on any metadata
request naming the topic) would otherwise pick their own partition count, and partition count
decides which worker owns which user's state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2

from engine.errors import ServiceError

log = logging.getLogger(__name__)

EVENTS = "herald.events"
ACTIONS = "herald.actions"
DLQ = "herald.dlq"
ALL_TOPICS: tuple[str, ...] = (EVENTS, ACTIONS, DLQ)

_TOPIC_ALREADY_EXISTS = 36


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java and aiokafka alike) gives a keyed record."""
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    return (int(murmur2(key)) & 0x7FFFFFFF) % partitions


async def ensure_topics(
    bootstrap: str,
    partitions: int,
    *,
    topics: Iterable[str] = ALL_TOPICS,
    replication_factor: int = 1,
    timeout: float = 30.0,
) -> None:
    """Create the topics that are missing and return once metadata shows all of them led.

    An existing topic is left as it is (a warning is logged if its partition count differs:
    changing it would move users between partitions, so that is an operator's decision).
    """
    wanted = list(dict.fromkeys(topics))
    deadline = time.monotonic() + timeout
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        await _start_admin(admin, bootstrap, deadline)
        # list_topics asks for every topic, so unlike describe_topics it creates nothing.
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if missing:
            response = await admin.create_topics(
                [NewTopic(t, partitions, replication_factor) for t in missing]
            )
            for topic, code, message in _topic_errors(response):
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    raise ServiceError(f"cannot create topic {topic}: [{code}] {message}")
            log.info("created topics %s with %d partitions", missing, partitions)
        await _wait_for_metadata(admin, wanted, deadline)
        for topic, count in (await _partition_counts(admin, wanted)).items():
            if count != partitions:
                log.warning("topic %s has %d partitions, configured %d", topic, count, partitions)
    finally:
        await admin.close()


async def topic_partition_counts(bootstrap: str, topics: Iterable[str]) -> dict[str, int]:
    """Partition count of each existing topic (missing ones are left out, never created)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        await admin.start()
        wanted = list(topics)
        existing = set(await admin.list_topics())
        return await _partition_counts(admin, [t for t in wanted if t in existing])
    finally:
        await admin.close()


async def _start_admin(admin: AIOKafkaAdminClient, bootstrap: str, deadline: float) -> None:
    while True:
        try:
            await admin.start()
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise ServiceError(f"Kafka at {bootstrap} is not reachable: {exc}") from exc
            await asyncio.sleep(0.2)


def _topic_errors(response: object) -> list[tuple[str, int, str | None]]:
    out: list[tuple[str, int, str | None]] = []
    for entry in getattr(response, "topic_errors", []):
        topic, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        out.append((str(topic), int(code), message))
    return out


async def _partition_counts(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, int]:
    if not topics:
        return {}
    described = await admin.describe_topics(topics)
    return {str(t["topic"]): len(t["partitions"]) for t in described if t["error_code"] == 0}


async def _wait_for_metadata(
    admin: AIOKafkaAdminClient, topics: list[str], deadline: float
) -> None:
    while True:
        ready: set[str] = set()
        if set(topics) <= set(await admin.list_topics()):
            for t in await admin.describe_topics(topics):
                parts = t["partitions"]
                if t["error_code"] == 0 and parts and all(p["leader"] >= 0 for p in parts):
                    ready.add(str(t["topic"]))
        if ready >= set(topics):
            return
        if time.monotonic() > deadline:
            raise ServiceError(f"topics not ready in time: {sorted(set(topics) - ready)}")
        await asyncio.sleep(0.1)
