"""Horizontal scale: two processors split the partitions, each user has exactly one writer,
and the totals are exact."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from workers import keys, stats
from workers.stack import LocalStack

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

USERS = 1500
EVENTS = 9000
PARTITIONS = 6


async def _run(stack: LocalStack) -> tuple[dict[str, str], dict[str, int], float]:
    await stack.wait_ready()
    counts: Counter[str] = Counter()
    batch: list[dict[str, object]] = []
    async with aiohttp.ClientSession() as http:
        for i in range(EVENTS):
            user = f"s{(i * 7919) % USERS}"
            counts[user] += 1
            batch.append(
                {
                    "event_id": f"scale-{i}",
                    "type": "page_view",
                    "user_id": user,
                    "properties": {"path": "/blog"},
                }
            )
            if len(batch) == 300:
                await stack.post_events(http, batch)
                batch = []
        if batch:
            await stack.post_events(http, batch)
    client = aioredis.Redis.from_url(stack.redis_url)
    try:
        deadline = time.monotonic() + 120
        processed = 0.0
        while time.monotonic() < deadline:
            processed = (await stats.read(client))["processor"].get("events", 0.0)
            if processed >= EVENTS:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.5)  # a heartbeat after the last batch
        owners = {k.decode(): v.decode() for k, v in (await client.hgetall(keys.owners())).items()}
        views: dict[str, int] = {}
        for user in counts:
            doc = await client.get(keys.user(stack.partition_of(user), user))
            assert doc is not None, user
            metric = orjson.loads(doc)["m"]["page_views_30d"]
            views[user] = int(sum(v for _i, v in metric["b"]))
        return owners, views, processed
    finally:
        await client.aclose()


def test_two_processors_split_partitions_and_totals_are_exact(tmp_path: Path) -> None:
    with LocalStack(tmp_path, partitions=PARTITIONS, rules=ROOT / "rules", quiet=True) as stack:
        stack.start_roles(["api", "processor", "processor"])
        owners, views, processed = asyncio.run(_run(stack))
        pids = {str(p.pid) for p in stack.children["processor"]}
    assert processed == EVENTS
    assert sorted(owners) == [str(p) for p in range(PARTITIONS)]
    owning = {owner.rsplit(":", 1)[1] for owner in owners.values()}
    assert owning == pids, "both processors own partitions, and only they do"
    expected: Counter[str] = Counter(f"s{(i * 7919) % USERS}" for i in range(EVENTS))
    assert views == dict(expected)
