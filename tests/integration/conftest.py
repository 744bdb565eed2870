"""Fixtures shared by the API's integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from workers.producer import EventProducer
from workers.services import EmbeddedBroker
from workers.topics import ensure_topics

API_PARTITIONS = 4


@pytest.fixture
async def producer(broker: EmbeddedBroker) -> AsyncIterator[EventProducer]:
    """A started producer on the session broker, with Herald's topics created."""
    await ensure_topics(broker.bootstrap, API_PARTITIONS)
    p = EventProducer(broker.bootstrap)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()
