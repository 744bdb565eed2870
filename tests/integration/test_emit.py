"""`herald emit` end to end: the real CLI entry point against the API served in-process.

The CLI runs its own event loop (`asyncio.run`), so it is called from a worker thread while the
API keeps serving on the test's loop, and the event is read back from the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer
from aiokafka import AIOKafkaConsumer, TopicPartition

from engine.events import Event, decode_record
from workers import cmd_emit
from workers.api import create_app
from workers.cli import main
from workers.config import Settings
from workers.producer import EventProducer
from workers.services import EmbeddedBroker, free_port
from workers.topics import EVENTS, ensure_topics

PARTITIONS = 4
KEY = "wk_emit_1"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """`herald emit` reads Settings from the environment: start each test from none of it."""
    for name in ("HERALD_API_KEYS", "HERALD_API_HOST", "HERALD_API_PORT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def api(broker: EmbeddedBroker) -> AsyncIterator[str]:
    """The API with one key, on a free loopback port; yields its base URL."""
    await ensure_topics(broker.bootstrap, PARTITIONS)
    producer = EventProducer(broker.bootstrap)
    await producer.start()
    settings = Settings(
        kafka_url=broker.url,
        partitions=PARTITIONS,
        api_keys=[KEY],
        _env_file=None,  # type: ignore[call-arg]
    )
    server = TestServer(create_app(settings, producer), host="127.0.0.1", port=free_port())
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()
        await producer.stop()


@pytest.fixture
def nonce() -> str:
    return uuid.uuid4().hex[:12]


async def emit(*argv: str) -> int:
    return await asyncio.to_thread(main, ["emit", *argv])


async def landed(broker: EmbeddedBroker, nonce: str, expect: int = 1) -> list[Event]:
    """Events on `herald.events` mentioning `nonce`, once `expect` of them arrived (or 15 s)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        await consumer.topics()
        partitions = sorted(consumer.partitions_for_topic(EVENTS) or ())
        consumer.assign([TopicPartition(EVENTS, p) for p in partitions])
        await consumer.seek_to_beginning()
        found: list[Event] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(found) < expect:
            for messages in (await consumer.getmany(timeout_ms=100)).values():
                for m in messages:
                    if nonce.encode() in m.value:
                        items = decode_record(m.value, received_at=datetime.now(UTC))
                        found += [i for i in items if isinstance(i, Event)]
        return found
    finally:
        await consumer.stop()


async def test_emit_sends_one_event_through_the_api(
    api: str,
    broker: EmbeddedBroker,
    nonce: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # no --api-key: the first of HERALD_API_KEYS, as next to the API it configures
    monkeypatch.setenv("HERALD_API_KEYS", f"{KEY},another")
    status = await emit(
        "cart_add",
        "--user",
        f"u-{nonce}",
        "--prop",
        "value=80",
        "--prop",
        "sku=A1",
        "--prop",
        'tags=["x"]',
        "--api-url",
        api,
    )
    out = capsys.readouterr()
    assert status == 0, out.err
    assert orjson.loads(out.out) == {"accepted": 1}

    [event] = await landed(broker, nonce)
    assert (event.type, event.user_id) == ("cart_add", f"u-{nonce}")
    assert event.properties == {"value": 80, "sku": "A1", "tags": ["x"]}


async def test_emit_default_url_comes_from_the_api_settings(
    api: str, broker: EmbeddedBroker, nonce: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, port = api.removeprefix("http://").split(":")
    monkeypatch.setenv("HERALD_API_HOST", "0.0.0.0")  # a wildcard bind: called on loopback
    monkeypatch.setenv("HERALD_API_PORT", port)
    monkeypatch.setenv("HERALD_API_KEYS", KEY)
    assert host == "127.0.0.1"
    assert await emit("signup", "--user", f"d-{nonce}") == 0
    [event] = await landed(broker, nonce)
    assert event.type == "signup"


async def test_emit_traits_and_explicit_key(
    api: str, broker: EmbeddedBroker, nonce: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # `--trait` and `--api-key` as the parser will pass them (the handler reads them if present)
    args = argparse.Namespace(
        type="identify",
        user=f"t-{nonce}",
        prop=[],
        trait=[("email", "a@example.com"), ("vip", True)],
        api_url=api,
        api_key=KEY,
    )
    assert await asyncio.to_thread(cmd_emit.run, args) == 0
    capsys.readouterr()
    [event] = await landed(broker, nonce)
    assert event.traits == {"email": "a@example.com", "vip": True}


async def test_emit_refused_is_exit_1(api: str, capsys: pytest.CaptureFixture[str]) -> None:
    status = await emit("x", "--user", "u", "--api-url", api)  # no key anywhere
    out = capsys.readouterr()
    assert status == 1
    assert orjson.loads(out.out)["error"] == "unauthorized"
    assert "HTTP 401" in out.err

    args: dict[str, Any] = {"api_url": api, "api_key": KEY, "prop": [], "trait": []}
    status = await asyncio.to_thread(cmd_emit.run, argparse.Namespace(type="x", user="", **args))
    out = capsys.readouterr()
    assert status == 1
    assert orjson.loads(out.out)["errors"][0]["reason"] == "missing_user_id"


async def test_emit_without_an_api_is_exit_2_with_a_hint(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = await emit("x", "--user", "u", "--api-url", f"http://127.0.0.1:{free_port()}")
    out = capsys.readouterr()
    assert status == 2
    assert "cannot reach the Herald API" in out.err
    assert "herald dev" in out.err
    assert out.out == ""


def test_default_api_url() -> None:
    def url(host: str) -> str:
        settings = Settings(api_host=host, api_port=8081, _env_file=None)  # type: ignore[call-arg]
        return cmd_emit.default_api_url(settings)

    assert url("127.0.0.1") == "http://127.0.0.1:8081"
    assert url("0.0.0.0") == "http://127.0.0.1:8081"
    assert url("::") == "http://[::1]:8081"
    assert url("api.internal") == "http://api.internal:8081"
