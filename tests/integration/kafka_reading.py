"""Reading what Herald's API produced, for the integration tests of the API."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition

from engine.events import Event, decode_record


@dataclass
class Record:
    """One consumed record."""

    partition: int
    key: bytes | None
    value: bytes


async def read_topic(
    bootstrap: str, topic: str, nonce: str, *, expect: int, settle: float = 0.5
) -> list[Record]:
    """Records of `topic` that mention `nonce`: waits for `expect` of them, then `settle` more."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        await consumer.topics()  # loads the metadata partitions_for_topic reads
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        await consumer.seek_to_beginning()
        found: list[Record] = []
        deadline = time.monotonic() + 15
        quiet_until: float | None = None
        needle = nonce.encode()
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=100)
            for tp, messages in batches.items():
                found += [
                    Record(tp.partition, m.key, m.value) for m in messages if needle in m.value
                ]
            if len(found) >= expect and quiet_until is None:
                quiet_until = time.monotonic() + settle
            if quiet_until is not None and time.monotonic() >= quiet_until:
                break
        return found
    finally:
        await consumer.stop()


def events_of(records: list[Record]) -> list[Event]:
    """Every event packed in the records (all must be valid)."""
    out: list[Event] = []
    for record in records:
        for item in decode_record(record.value, received_at=datetime.now(UTC)):
            assert isinstance(item, Event), item
            out.append(item)
    return out
