"""The HTTP API in-process against the session's real broker: what is answered, and what lands.

Each test tags its events with a fresh nonce in the user ids, then reads `herald.events` (and
`herald.dlq`) from the beginning and keeps only records holding that nonce, so tests sharing
the broker cannot see each other's events.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import gzip
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine.errors import ServiceError
from engine.events import PACK_KEY, Event
from tests.integration.conftest import API_PARTITIONS
from tests.integration.kafka_reading import Record, events_of, read_topic
from workers.api import create_app, post_event, run_api
from workers.config import Settings
from workers.producer import EventProducer
from workers.services import EmbeddedBroker, free_port
from workers.telemetry import Telemetry
from workers.topics import DLQ, EVENTS, ensure_topics, partition_for

PARTITIONS = API_PARTITIONS
KEY = "wk_test_123"
MAX_BODY = 64 * 1024


MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


def settings_for(broker: EmbeddedBroker, *, keys: list[str] | None = None) -> Settings:
    return Settings(
        kafka_url=broker.url,
        api_keys=keys or [],
        max_body_bytes=MAX_BODY,
        partitions=PARTITIONS,
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
async def make_client(broker: EmbeddedBroker, producer: EventProducer) -> AsyncIterator[MakeClient]:
    clients: list[TestClient[Any, Any]] = []

    async def make(
        *,
        keys: list[str] | None = None,
        host: str = "127.0.0.1",
        telemetry: Telemetry | None = None,
    ) -> TestClient[Any, Any]:
        app = create_app(settings_for(broker, keys=keys), producer, metrics=telemetry)
        client: TestClient[Any, Any] = TestClient(TestServer(app, host=host))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
def nonce() -> str:
    return uuid.uuid4().hex[:12]


Reader = Callable[..., Awaitable[list[Record]]]


@pytest.fixture
def read(broker: EmbeddedBroker) -> Reader:
    return functools.partial(read_topic, broker.bootstrap)


def assert_packed_on_predicted_partitions(records: list[Record], partitions: int) -> None:
    for record in records:
        doc = orjson.loads(record.value)
        assert list(doc) == [PACK_KEY]
        users = [item["user_id"] for item in doc[PACK_KEY]]
        assert record.key == users[0].encode()
        for user in users:
            assert partition_for(user.encode(), partitions) == record.partition


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


# --------------------------------------------------------------------------- native


async def test_single_event_is_acknowledged_and_lands_on_its_partition(
    make_client: MakeClient, read: Reader, nonce: str
) -> None:
    client = await make_client()
    event = {
        "type": "cart_add",
        "user_id": f"u-{nonce}",
        "timestamp": "2026-05-01T10:30:00Z",
        "properties": {"value": 80},
    }
    response = await client.post("/v1/events", json=event)
    assert response.status == 202
    assert await response.json() == {"accepted": 1}

    records = await read(EVENTS, nonce, expect=1)
    assert len(records) == 1
    assert_packed_on_predicted_partitions(records, PARTITIONS)
    [landed] = events_of(records)
    assert (landed.type, landed.user_id, landed.properties) == (
        "cart_add",
        f"u-{nonce}",
        {"value": 80},
    )
    assert landed.timestamp == datetime(2026, 5, 1, 10, 30, tzinfo=UTC)


async def test_batch_with_one_invalid_item(
    make_client: MakeClient, read: Reader, nonce: str
) -> None:
    client = await make_client()
    batch: list[Any] = [
        {"type": "page_view", "user_id": f"{nonce}-{i % 13}", "properties": {"i": i}}
        for i in range(60)
    ]
    batch[17] = {"type": "page_view", "properties": {"i": 17, "nonce": nonce}}  # no user
    response = await client.post("/v1/events", json={"batch": batch})
    assert response.status == 400
    body = await response.json()
    assert body["accepted"] == 59
    assert body["errors"] == [
        {
            "index": 17,
            "reason": "missing_user_id",
            "detail": "user_id: a non-empty user id is required",
        }
    ]

    records = await read(EVENTS, nonce, expect=1)
    events = events_of(records)
    assert sorted(e.properties["i"] for e in events) == [i for i in range(60) if i != 17]
    # one packed record per partition the request touched, each on the predicted partition
    touched = {partition_for(f"{nonce}-{i % 13}".encode(), PARTITIONS) for i in range(60)}
    assert sorted(r.partition for r in records) == sorted(touched)
    assert_packed_on_predicted_partitions(records, PARTITIONS)
    # per user, the order of the batch is kept
    for user in {e.user_id for e in events}:
        seq = [e.properties["i"] for e in events if e.user_id == user]
        assert seq == sorted(seq)

    dead = await read(DLQ, nonce, expect=1)
    assert len(dead) == 1
    letter = orjson.loads(dead[0].value)
    assert (letter["reason"], letter["source"]) == ("missing_user_id", "api")
    assert orjson.loads(letter["raw"]) == batch[17]


async def test_batch_of_500_for_one_user_is_one_record(
    make_client: MakeClient, read: Reader, nonce: str
) -> None:
    client = await make_client()
    batch = [{"type": "x", "user_id": f"one-{nonce}", "properties": {"i": i}} for i in range(500)]
    response = await client.post("/v1/events", json={"batch": batch})
    assert response.status == 202, await response.text()
    records = await read(EVENTS, nonce, expect=1)
    assert len(records) == 1
    assert [e.properties["i"] for e in events_of(records)] == list(range(500))


async def test_producer_splits_packs_over_the_size_limit(
    broker: EmbeddedBroker, producer: EventProducer, read: Reader, nonce: str
) -> None:
    small = EventProducer(broker.bootstrap, max_pack_bytes=2000)
    await small.start()
    try:
        now = datetime.now(UTC)
        events = [
            Event(f"{nonce}-{i}", "x", f"u-{nonce}-{i % 2}", now, {"i": i}, {}) for i in range(100)
        ]
        await small.send_events(events)
    finally:
        await small.stop()
    records = await read(EVENTS, nonce, expect=2)
    assert len(records) > 2
    assert all(len(r.value) <= 2000 for r in records)
    assert_packed_on_predicted_partitions(records, PARTITIONS)
    landed = events_of(records)
    assert sorted(landed, key=lambda e: e.properties["i"]) == events
    for user in (f"u-{nonce}-0", f"u-{nonce}-1"):  # per user, order is kept across packs
        seq = [e.properties["i"] for e in landed if e.user_id == user]
        assert seq == sorted(seq) and len(seq) == 50


@pytest.mark.parametrize(
    ("body", "reason", "in_detail"),
    [
        ({"type": "signup"}, "missing_user_id", "user_id"),
        ({"type": "signup", "user_id": ""}, "missing_user_id", "user_id"),
        ({"user_id": "u"}, "missing_type", "type"),
        ({"type": "signup", "user_id": "u", "properties": [1]}, "bad_type", "properties"),
        ({"type": 3, "user_id": "u"}, "bad_type", "type"),
        ({"type": "signup", "user_id": "u", "timestamp": "tomorrow"}, "bad_timestamp", "tomorrow"),
        ({"type": "signup", "user": "u"}, "unknown_field", "did you mean 'user_id'?"),
        ({"type": "signup", "user_id": "u", "timestmp": 1}, "unknown_field", "'timestamp'"),
        ([1, 2], "not_an_object", "array"),
    ],
)
async def test_invalid_single_event(
    make_client: MakeClient, body: Any, reason: str, in_detail: str
) -> None:
    telemetry = Telemetry()
    client = await make_client(telemetry=telemetry)
    response = await client.post("/v1/events", json=body)
    assert response.status == 400
    answer = await response.json()
    assert answer["accepted"] == 0
    [error] = answer["errors"]
    assert (error["index"], error["reason"]) == (0, reason)
    assert in_detail in error["detail"]
    sample = telemetry.registry.get_sample_value("herald_events_invalid_total", {"reason": reason})
    assert sample == 1


async def test_malformed_json(make_client: MakeClient, read: Reader, nonce: str) -> None:
    client = await make_client()
    raw = b'{"type": "x", "user_id": "' + nonce.encode() + b'"'
    response = await client.post("/v1/events", data=raw)
    assert response.status == 400
    answer = await response.json()
    assert answer["error"] == "malformed_json" and answer["detail"]
    dead = await read(DLQ, nonce, expect=1)
    assert [orjson.loads(d.value)["raw"].encode() for d in dead] == [raw]
    assert await read(EVENTS, nonce, expect=0, settle=0.3) == []


async def test_batch_must_be_an_array(make_client: MakeClient) -> None:
    client = await make_client()
    response = await client.post("/v1/events", json={"batch": {"type": "x"}})
    assert response.status == 400
    assert (await response.json())["error"] == "bad_type"


# --------------------------------------------------------------------------- size and auth


async def test_oversize_body_is_413(make_client: MakeClient, read: Reader, nonce: str) -> None:
    client = await make_client()
    big = {"type": "x", "user_id": nonce, "properties": {"blob": "x" * MAX_BODY}}
    response = await client.post("/v1/events", data=orjson.dumps(big))  # Content-Length
    assert response.status == 413
    assert (await response.json())["error"] == "too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: enforced while reading
        data = orjson.dumps(big)
        for i in range(0, len(data), 8192):
            yield data[i : i + 8192]

    response = await client.post("/v1/events", data=chunks())
    assert response.status == 413
    # a gzip body small on the wire but too large once inflated
    response = await client.post(
        "/v1/events", data=gzip.compress(orjson.dumps(big)), headers={"Content-Encoding": "gzip"}
    )
    assert response.status == 413
    assert await read(EVENTS, nonce, expect=0, settle=0.3) == []


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer nope"}, 401),
        ({"Authorization": f"Bearer {KEY}"}, 202),
        (basic(KEY), 202),
        (basic("nope"), 401),
        ({"Authorization": "Basic %%%"}, 401),
        ({"Authorization": f"Token {KEY}"}, 401),
    ],
)
async def test_api_keys(make_client: MakeClient, headers: dict[str, str], status: int) -> None:
    client = await make_client(keys=["other", KEY])
    response = await client.post(
        "/v1/events", json={"type": "x", "user_id": "auth-test"}, headers=headers
    )
    assert response.status == status
    if status == 401:
        assert (await response.json())["error"] == "unauthorized"


def _non_loopback_address() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("192.0.2.1", 9))  # no packet is sent; picks the outgoing interface
            address = str(sock.getsockname()[0])
    except OSError:
        return None
    return None if address.startswith("127.") else address


async def test_without_keys_only_loopback_is_served(make_client: MakeClient) -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    client = await make_client(host=address)
    response = await client.post("/v1/events", json={"type": "x", "user_id": "u"})
    assert response.status == 401
    assert "HERALD_API_KEYS" in (await response.json())["detail"]


# --------------------------------------------------------------------------- Segment


async def test_segment_python_batch_with_basic_auth_and_gzip(
    make_client: MakeClient, read: Reader, nonce: str
) -> None:
    # What analytics-python's `post()` sends: gzip body, Basic auth "writeKey:", sentAt.
    client = await make_client(keys=[KEY])
    body = {
        "batch": [
            {
                "integrations": {},
                "anonymousId": None,
                "properties": {"revenue": 39.95, "order_id": nonce},
                "timestamp": "2026-05-01T10:30:00.123456+00:00",
                "context": {"library": {"name": "analytics-python", "version": "2.3.3"}},
                "type": "track",
                "userId": f"py-{nonce}",
                "event": "Order Completed",
                "messageId": f"msg-1-{nonce}",
            },
            {
                "integrations": {},
                "anonymousId": None,
                "timestamp": "2026-05-01T10:29:00+00:00",
                "context": {"library": {"name": "analytics-python", "version": "2.3.3"}},
                "type": "identify",
                "userId": f"py-{nonce}",
                "traits": {"email": "peter@example.com", "plan": "premium"},
                "messageId": f"msg-2-{nonce}",
            },
            {
                "anonymousId": f"anon-{nonce}",
                "type": "page",
                "name": "Home",
                "properties": {"url": "https://example.com/"},
                "messageId": f"msg-3-{nonce}",
                "timestamp": "2026-05-01T10:31:00Z",
            },
        ],
        "sentAt": "2026-05-01T10:31:01.000000+00:00",
        "writeKey": KEY,
    }
    headers = {
        **basic(KEY),
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "User-Agent": "analytics-python/2.3.3",
    }
    response = await client.post(
        "/v1/batch", data=gzip.compress(orjson.dumps(body)), headers=headers
    )
    # Segment's answer: older analytics-python counts only a 200 as delivered
    assert response.status == 200, await response.text()
    assert await response.json() == {"success": True, "accepted": 3}

    events = {e.event_id: e for e in events_of(await read(EVENTS, nonce, expect=2))}
    assert set(events) == {f"msg-1-{nonce}", f"msg-2-{nonce}", f"msg-3-{nonce}"}
    assert events[f"msg-1-{nonce}"].type == "Order Completed"
    assert events[f"msg-2-{nonce}"].traits == {"email": "peter@example.com", "plan": "premium"}
    page = events[f"msg-3-{nonce}"]
    assert (page.type, page.user_id, page.properties["name"]) == (
        "page_view",
        f"anon-{nonce}",
        "Home",
    )


async def test_segment_single_endpoints(make_client: MakeClient, read: Reader, nonce: str) -> None:
    client = await make_client(keys=[KEY])
    # the HTTP tracking API: the endpoint names the call, `type` may be absent
    response = await client.post(
        "/v1/track",
        json={"userId": f"s-{nonce}", "event": "Signed Up", "properties": {"plan": "pro"}},
        headers=basic(KEY),
    )
    assert response.status == 200, await response.text()
    response = await client.post(
        "/v1/identify",
        json={"userId": f"s-{nonce}", "traits": {"email": "a@example.com"}},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert response.status == 200, await response.text()
    # analytics.js in a browser: short path, text/plain, the write key in the body
    response = await client.post(
        "/v1/p",
        data=orjson.dumps(
            {"anonymousId": f"s-{nonce}", "name": "Pricing", "writeKey": KEY, "properties": {}}
        ),
        headers={"Content-Type": "text/plain"},
    )
    assert response.status == 200, await response.text()
    response = await client.post(
        "/v1/t", data=orjson.dumps({"anonymousId": "x", "event": "E", "writeKey": "wrong"})
    )
    assert response.status == 401

    events = events_of(await read(EVENTS, nonce, expect=3))
    assert sorted(e.type for e in events) == ["Signed Up", "identify", "page_view"]


async def test_segment_errors_carry_code_and_message(make_client: MakeClient) -> None:
    # analytics-python raises APIError(status, payload["code"], payload["message"]) and retries
    # only 5xx and 429, so a 4xx must carry both fields to be reported and not retried.
    client = await make_client()
    response = await client.post("/v1/batch", json={"type": "track", "event": "x", "userId": "u"})
    assert response.status == 400
    answer = await response.json()
    assert (answer["error"], answer["code"]) == ("missing_batch", "missing_batch")
    assert answer["message"]
    response = await client.post(
        "/v1/batch", json={"batch": [{"type": "track", "userId": "u"}, {"type": "track"}]}
    )
    assert response.status == 400
    answer = await response.json()
    assert answer["accepted"] == 0 and len(answer["errors"]) == 2
    assert answer["code"] == "invalid_event" and "2 invalid" in answer["message"]


# --------------------------------------------------------------------------- ops endpoints


async def test_health_ready_metrics(make_client: MakeClient, nonce: str) -> None:
    client = await make_client(telemetry=Telemetry())
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    batch = [
        {"type": 'odd "type"\n', "user_id": nonce},
        {"type": "purchase", "user_id": nonce},
        {"type": "purchase", "user_id": nonce},
        {"type": "purchase"},
    ]
    assert (await client.post("/v1/events", json={"batch": batch})).status == 400
    response = await client.get("/metrics")
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    text = await response.text()
    assert 'herald_events_total{type="purchase"} 2.0\n' in text
    assert 'herald_events_total{type="odd \\"type\\"\\n"} 1.0\n' in text
    assert 'herald_events_invalid_total{reason="missing_user_id"} 1.0\n' in text
    assert "# TYPE herald_events_total counter\n" in text
    # the API's own request latency, by route template
    assert 'herald_api_request_seconds_count{route="/v1/events",status="400"} 1.0\n' in text
    assert 'herald_api_request_seconds_count{route="/healthz",status="200"} 1.0\n' in text


async def test_post_event_helper(make_client: MakeClient, nonce: str) -> None:
    client = await make_client(keys=[KEY])
    base = str(client.make_url("/"))
    event = {"type": "x", "user_id": f"emit-{nonce}"}
    assert await post_event(base, event, KEY) == (202, {"accepted": 1})
    status, answer = await post_event(base, event, None)
    assert (status, answer["error"]) == (401, "unauthorized")
    status, answer = await post_event(base, {"type": "x"}, KEY)
    assert status == 400 and answer["errors"][0]["reason"] == "missing_user_id"


async def test_broker_down_is_503_and_nothing_accepted(tmp_path: Path) -> None:
    own = EmbeddedBroker(tmp_path / "broker")
    await own.astart()
    try:
        await ensure_topics(own.bootstrap, PARTITIONS)
        producer = EventProducer(own.bootstrap, request_timeout_ms=1500)
        await producer.start()
        app = create_app(settings_for(own), producer)
        async with TestClient(TestServer(app)) as client:
            ok = await client.post("/v1/events", json={"type": "x", "user_id": "u"})
            assert ok.status == 202
            own.kill()
            down = await client.post("/v1/events", json={"type": "x", "user_id": "u"})
            assert down.status == 503
            assert await down.json() == {"error": "unavailable"}
            assert (await client.get("/readyz")).status == 503
            assert (await client.get("/healthz")).status == 200
        await producer.stop()
    finally:
        await own.astop()


async def test_concurrent_requests_all_land(
    make_client: MakeClient, read: Reader, nonce: str
) -> None:
    client = await make_client()

    async def post(n: int) -> int:
        batch = [
            {"type": "c", "user_id": f"{nonce}-{n}-{i % 5}", "properties": {"n": n}}
            for i in range(20)
        ]
        response = await client.post("/v1/events", json={"batch": batch})
        return response.status

    assert await asyncio.gather(*(post(n) for n in range(10))) == [202] * 10
    events = events_of(await read(EVENTS, nonce, expect=10))
    assert len(events) == 200


async def test_run_api_serves_until_cancelled(
    broker: EmbeddedBroker, read: Reader, nonce: str
) -> None:
    settings = settings_for(broker)
    settings.api_port = free_port()
    task = asyncio.create_task(run_api(settings))
    base = f"http://127.0.0.1:{settings.api_port}"
    try:
        for _ in range(100):
            with contextlib.suppress(ServiceError):
                status, _ = await post_event(base, {"type": "x", "user_id": f"run-{nonce}"}, None)
                break
            await asyncio.sleep(0.05)
        assert status == 202
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert len(events_of(await read(EVENTS, nonce, expect=1))) == 1
    with pytest.raises(ServiceError):  # the port is closed again
        await post_event(base, {"type": "x", "user_id": "u"}, None)
