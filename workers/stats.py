"""Cluster-wide running totals in Redis, for `herald status` and `herald bench`.

Prometheus is the operator's long-term view (each process exposes its own /metrics); these
hashes are the quick, whole-cluster answer to "what is happening right now" that a CLI can read
with one round trip and no scrape configuration. One pipelined write per batch, off the
critical path (after the batch's state is durable).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis

from workers import keys

PROCESSOR = keys.stats("processor")
JOURNEYS = keys.stats("journeys")
MESSAGES = keys.stats("messages")
EVENT_TYPES = keys.stats("event_types")
LATENCY = keys.stats("latency_ms")


async def add(client: aioredis.Redis, totals: Mapping[str, Mapping[str, float]]) -> None:
    """HINCRBYFLOAT every (hash, field) by its amount, in one round trip."""
    pipe = client.pipeline(transaction=False)
    queued = False
    for key, fields in totals.items():
        for name, amount in fields.items():
            if amount:
                pipe.hincrbyfloat(key, name, amount)
                queued = True
    if queued:
        await pipe.execute()


async def add_latencies(client: aioredis.Redis, seconds: list[float], keep: int = 2000) -> None:
    """Keep the most recent event-to-dispatch latencies (ms) for percentiles in `status`."""
    if not seconds:
        return
    pipe = client.pipeline(transaction=False)
    pipe.lpush(LATENCY, *[round(s * 1000.0, 2) for s in seconds])
    pipe.ltrim(LATENCY, 0, keep - 1)
    await pipe.execute()


async def read(client: aioredis.Redis) -> dict[str, Any]:
    """Every stats hash and the latency sample, in one round trip."""
    pipe = client.pipeline(transaction=False)
    for key in (PROCESSOR, JOURNEYS, MESSAGES, EVENT_TYPES):
        pipe.hgetall(key)
    pipe.lrange(LATENCY, 0, -1)
    processor, journeys, messages, types, latency = await pipe.execute()

    def floats(raw: dict[Any, Any]) -> dict[str, float]:
        return {_text(k): float(v) for k, v in raw.items()}

    return {
        "processor": floats(processor),
        "journeys": floats(journeys),
        "messages": floats(messages),
        "event_types": floats(types),
        "latency_ms": [float(v) for v in latency],
    }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
