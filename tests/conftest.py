"""Shared fixtures: one real broker and one real Redis per test session, on free loopback ports.

They are session-scoped because starting them is cheap but not free (tens of ms each) and
group joins dominate test time anyway; isolation comes from `redis_client` flushing before
every test and from tests using their own topic / consumer-group names on the shared broker.
The machine's own Redis on 6379 is never used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from workers.config import Settings
from workers.services import EmbeddedBroker, EmbeddedRedis, free_port

_INTEGRATION_DIR = Path(__file__).parent / "integration"
_SERVICE_FIXTURES = {"broker", "redis_server", "redis_client", "herald_settings"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration, or using a service fixture, is `integration`."""
    for item in items:
        path = Path(str(item.fspath))
        uses_services = bool(_SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())))
        if _INTEGRATION_DIR in path.parents or uses_services:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """Tansu in memory on a free port; topics persist across tests of the session."""
    with EmbeddedBroker(tmp_path_factory.mktemp("broker")) as service:
        yield service


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """Redis with AOF (fsync always) on a free port; `restart()` keeps acknowledged writes."""
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as service:
        yield service


@pytest.fixture
async def redis_client(redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    """A fresh async client on an emptied Redis."""
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushall()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def herald_settings(
    broker: EmbeddedBroker, redis_server: EmbeddedRedis, tmp_path: Path
) -> Settings:
    """Settings aimed at the session's services, with state and outbox in the test's tmp dir.

    Provider credentials are blanked whatever the environment holds, so every channel goes
    to the outbox. The short session timeout makes faust group joins on Tansu take ~1 s
    instead of ~3 s.
    """
    values: dict[str, Any] = {
        name: None for name, field in Settings.model_fields.items() if field.validation_alias
    }
    values.update(
        kafka_url=broker.url,
        redis_url=redis_server.url,
        state_dir=tmp_path / "state",
        outbox=tmp_path / "outbox.jsonl",
        api_port=free_port(),
        metrics_port=0,
        partitions=4,
        session_timeout=2.0,
        _env_file=None,
    )
    return Settings(**values)
