"""Unsubscribe links, provider webhooks and profile imports, in-process against the real broker.

Signatures are made the way the providers make them: SendGrid with an ECDSA P-256 key pair
generated here (the test holds the private half, the API is given the public half as SendGrid
shows it), Twilio with the SDK's own `compute_signature` over the public URL and the form.
Like test_api.py, each test tags its users with a fresh nonce and reads back only its records.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twilio.request_validator import RequestValidator

from engine.unsubscribe import make_token, unsubscribe_url
from tests.integration.conftest import API_PARTITIONS
from tests.integration.kafka_reading import Record, events_of, read_topic
from workers.api import create_app
from workers.api_webhooks import (
    SENDGRID_SIGNATURE_HEADER,
    SENDGRID_TIMESTAMP_HEADER,
    TWILIO_SIGNATURE_HEADER,
    sendgrid_public_key,
)
from workers.config import Settings
from workers.producer import EventProducer
from workers.records import Input, decode
from workers.services import EmbeddedBroker
from workers.telemetry import Telemetry
from workers.topics import DLQ, EVENTS, partition_for

PARTITIONS = API_PARTITIONS
KEY = "wk_hooks_1"
SECRET = "unsubscribe-secret-for-tests"
PUBLIC_URL = "https://herald.example.com"
TWILIO_TOKEN = "twilio-auth-token-for-tests"


class HookSettings(Settings):
    """Settings with the SendGrid webhook key (until `Settings` has the field itself)."""

    sendgrid_webhook_public_key: str | None = None


MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]
Reader = Callable[..., Awaitable[list[Record]]]


def _private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _public_text(private: ec.EllipticCurvePrivateKey) -> str:
    """The verification key as SendGrid's settings page shows it: base64 DER, no PEM armour."""
    der = private.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


SENDGRID_KEY = _private_key()


def sendgrid_headers(
    body: bytes, private: ec.EllipticCurvePrivateKey = SENDGRID_KEY, timestamp: str | None = None
) -> dict[str, str]:
    """What SendGrid sends: ECDSA/SHA-256 over timestamp + payload, base64 DER signature."""
    stamp = timestamp or str(int(time.time()))
    signature = private.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "Content-Type": "application/json",
        SENDGRID_SIGNATURE_HEADER: base64.b64encode(signature).decode(),
        SENDGRID_TIMESTAMP_HEADER: stamp,
    }


def settings_for(broker: EmbeddedBroker, **overrides: Any) -> HookSettings:
    values: dict[str, Any] = {
        "kafka_url": broker.url,
        "partitions": PARTITIONS,
        "unsubscribe_secret": SECRET,
        "public_url": PUBLIC_URL,
        "sendgrid_webhook_public_key": _public_text(SENDGRID_KEY),
        "twilio_auth_token": TWILIO_TOKEN,
        "api_keys": [KEY],
        "_env_file": None,
    }
    values.update(overrides)
    return HookSettings(**values)


@pytest.fixture
async def make_client(broker: EmbeddedBroker, producer: EventProducer) -> AsyncIterator[MakeClient]:
    clients: list[TestClient[Any, Any]] = []

    async def make(telemetry: Telemetry | None = None, **overrides: Any) -> TestClient[Any, Any]:
        app = create_app(settings_for(broker, **overrides), producer, metrics=telemetry)
        client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
def nonce() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
def read(broker: EmbeddedBroker) -> Reader:
    async def reader(topic: str, nonce: str, *, expect: int, settle: float = 0.5) -> list[Record]:
        return await read_topic(broker.bootstrap, topic, nonce, expect=expect, settle=settle)

    return reader


# --------------------------------------------------------------------------- unsubscribe


async def test_unsubscribe_link_sets_consent_off_for_its_channel(
    make_client: MakeClient, read: Reader, nonce: str
) -> None:
    client = await make_client()  # API keys are configured: the link still needs none
    user = f"u-{nonce}"
    url = unsubscribe_url(PUBLIC_URL, SECRET, user, "email")
    path = url.removeprefix(PUBLIC_URL)

    response = await client.get(path)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.headers["Cache-Control"] == "no-store"
    assert "You are unsubscribed from email messages." in await response.text()
    # the RFC 8058 one-click POST (List-Unsubscribe-Post) to the same URL
    response = await client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert response.status == 200

    events = events_of(await read(EVENTS, nonce, expect=2))
    assert len(events) == 2
    first, second = events
    assert first.event_id == second.event_id  # a second click is deduplicated downstream
    assert (first.type, first.user_id) == ("unsubscribe", user)
    assert first.properties == {"channel": "email"}
    assert first.traits == {"consent": {"email": False}}


async def test_unsubscribe_token_in_a_one_click_form(
    make_client: MakeClient, read: Reader, nonce: str
) -> None:
    client = await make_client()
    token = make_token(SECRET, f"u-{nonce}", "sms")
    response = await client.post("/v1/unsubscribe", data={"token": token})
    assert response.status == 200
    assert "You are unsubscribed from sms messages." in await response.text()
    [event] = events_of(await read(EVENTS, nonce, expect=1))
    assert event.traits == {"consent": {"sms": False}}


@pytest.mark.parametrize("kind", ["none", "empty", "garbage", "other_secret", "swapped_user"])
async def test_forged_or_broken_unsubscribe_links_are_400(
    make_client: MakeClient, read: Reader, nonce: str, kind: str
) -> None:
    client = await make_client()
    victim = f"victim-{nonce}"
    genuine = make_token(SECRET, f"me-{nonce}", "email")
    query = {
        "none": "",
        "empty": "?token=",
        "garbage": "?token=garbage",
        # signed with another secret: a forged link for someone else
        "other_secret": "?token=" + make_token("not-the-secret", victim, "email"),
        # someone's genuine signature under another user's name
        "swapped_user": "?token="
        + make_token("x", victim, "email").split(".")[0]
        + "."
        + genuine.split(".")[1],
    }[kind]
    response = await client.get("/v1/unsubscribe" + query)
    assert response.status == 400
    assert "not valid" in await response.text()
    response = await client.post("/v1/unsubscribe" + query)
    assert response.status == 400
    # the events are read back by the (plain) user id, which a produced event would hold
    assert await read(EVENTS, nonce, expect=0, settle=0.3) == []


async def test_unsubscribe_ignores_head_and_keeps_auth_elsewhere(make_client: MakeClient) -> None:
    client = await make_client()
    token = make_token(SECRET, "head-user", "email")
    # link checkers probe with HEAD: it must not unsubscribe anyone
    assert (await client.head(f"/v1/unsubscribe?token={token}")).status == 405
    response = await client.post("/v1/events", json={"type": "x", "user_id": "u"})
    assert response.status == 401


# --------------------------------------------------------------------------- SendGrid


def _sendgrid_event(nonce: str, event: str, n: int, **extra: Any) -> dict[str, Any]:
    return {
        "email": "someone@example.com",
        "timestamp": 1777630000 + n,
        "event": event,
        "sg_event_id": f"sg-{nonce}-{n}",
        "sg_message_id": f"14c5d75ce93.{n}",
        "herald_user_id": f"u-{nonce}",
        "herald_message_id": f"m-{nonce}",
        "herald_journey": "cart_abandonment",
        "herald_step": "steps.1",
        **extra,
    }


async def test_sendgrid_events_become_herald_events(
    make_client: MakeClient, read: Reader, nonce: str
) -> None:
    telemetry = Telemetry()
    client = await make_client(telemetry)
    payload = [
        _sendgrid_event(nonce, "processed", 0),
        _sendgrid_event(nonce, "delivered", 1, response="250 OK"),
        _sendgrid_event(nonce, "open", 2, sg_machine_open=False),
        _sendgrid_event(nonce, "click", 3, url="https://shop.example.com/cart"),
        _sendgrid_event(nonce, "bounce", 4, type="blocked", reason="550 no"),
        _sendgrid_event(nonce, "dropped", 5, reason="Bounced Address"),
        _sendgrid_event(nonce, "deferred", 6, attempt="2"),
        _sendgrid_event(nonce, "spamreport", 7),
        # a mail sent through the same account by something other than Herald
        {"email": "x@example.com", "event": "delivered", "sg_event_id": f"other-{nonce}"},
        "not an object",
    ]
    body = orjson.dumps(payload)
    response = await client.post("/v1/webhooks/sendgrid", data=body, headers=sendgrid_headers(body))
    assert response.status == 200, await response.text()
    assert await response.json() == {"accepted": 6, "ignored": 4}

    events = {e.event_id: e for e in events_of(await read(EVENTS, nonce, expect=1))}
    assert {eid: e.type for eid, e in events.items()} == {
        f"sendgrid-sg-{nonce}-1": "message.delivered",
        f"sendgrid-sg-{nonce}-2": "message.opened",
        f"sendgrid-sg-{nonce}-3": "message.clicked",
        f"sendgrid-sg-{nonce}-4": "message.bounced",
        f"sendgrid-sg-{nonce}-5": "message.bounced",
        f"sendgrid-sg-{nonce}-7": "unsubscribe",
    }
    delivered = events[f"sendgrid-sg-{nonce}-1"]
    assert delivered.user_id == f"u-{nonce}"
    assert delivered.emitted
    assert delivered.timestamp == datetime.fromtimestamp(1777630001, UTC)
    assert delivered.properties == {
        "message_id": f"m-{nonce}",
        "journey": "cart_abandonment",
        "step": "steps.1",
        "channel": "email",
        "provider_event": "delivered",
    }
    click = events[f"sendgrid-sg-{nonce}-3"]
    assert click.properties["url"] == "https://shop.example.com/cart"
    assert events[f"sendgrid-sg-{nonce}-4"].properties["bounce_type"] == "blocked"
    spam = events[f"sendgrid-sg-{nonce}-7"]
    assert spam.traits == {"consent": {"email": False}}
    assert spam.properties["provider_event"] == "spamreport"
    assert "reason" not in events[f"sendgrid-sg-{nonce}-5"].properties  # may hold addresses

    value = telemetry.registry.get_sample_value
    assert value("herald_events_total", {"type": "message.bounced"}) == 2
    assert value("herald_webhook_items_total", {"provider": "sendgrid", "result": "ignored"}) == 4


async def test_sendgrid_custom_args_may_be_nested(
    make_client: MakeClient, read: Reader, nonce: str
) -> None:
    client = await make_client()
    item = {
        "event": "open",
        "timestamp": 1777630000,
        "sg_event_id": f"nested-{nonce}",
        "unique_args": {"herald_user_id": f"u-{nonce}", "herald_message_id": "m1"},
    }
    body = orjson.dumps([item])
    response = await client.post("/v1/webhooks/sendgrid", data=body, headers=sendgrid_headers(body))
    assert response.status == 200
    [event] = events_of(await read(EVENTS, nonce, expect=1))
    assert (event.type, event.user_id, event.properties["message_id"]) == (
        "message.opened",
        f"u-{nonce}",
        "m1",
    )


async def test_sendgrid_refuses_bad_signatures(
    make_client: MakeClient, read: Reader, nonce: str
) -> None:
    client = await make_client()
    body = orjson.dumps([_sendgrid_event(nonce, "delivered", 1)])
    good = sendgrid_headers(body)
    cases = [
        {},  # unsigned
        {**good, SENDGRID_SIGNATURE_HEADER: "%%% not base64"},
        sendgrid_headers(body, private=_private_key()),  # someone else's key
        {**good, SENDGRID_TIMESTAMP_HEADER: str(int(good[SENDGRID_TIMESTAMP_HEADER]) + 1)},
    ]
    for headers in cases:
        response = await client.post("/v1/webhooks/sendgrid", data=body, headers=headers)
        assert response.status == 401, headers
        assert (await response.json())["error"] == "unauthorized"
    tampered = body.replace(b"delivered", b"click")
    response = await client.post("/v1/webhooks/sendgrid", data=tampered, headers=good)
    assert response.status == 401
    assert await read(EVENTS, nonce, expect=0, settle=0.3) == []


async def test_sendgrid_malformed_but_signed_body_is_400(make_client: MakeClient) -> None:
    client = await make_client()
    for body in (b"{not json", b'{"event": "open"}'):
        response = await client.post(
            "/v1/webhooks/sendgrid", data=body, headers=sendgrid_headers(body)
        )
        assert response.status == 400


async def test_webhooks_without_their_secret_are_disabled(make_client: MakeClient) -> None:
    client = await make_client(sendgrid_webhook_public_key=None, twilio_auth_token=None)
    body = b"[]"
    response = await client.post("/v1/webhooks/sendgrid", data=body, headers=sendgrid_headers(body))
    assert response.status == 404
    assert "SENDGRID_WEBHOOK_PUBLIC_KEY" in (await response.json())["detail"]
    response = await client.post("/v1/webhooks/twilio", data={"MessageStatus": "delivered"})
    assert response.status == 404
    assert "TWILIO_AUTH_TOKEN" in (await response.json())["detail"]


def test_sendgrid_key_formats() -> None:
    private = _private_key()
    text = _public_text(private)
    pem = "-----BEGIN PUBLIC KEY-----\n" + text + "\n-----END PUBLIC KEY-----\n"
    expected = private.public_key().public_numbers()
    assert sendgrid_public_key(text).public_numbers() == expected
    assert sendgrid_public_key(pem).public_numbers() == expected
    with pytest.raises(ValueError, match="SENDGRID_WEBHOOK_PUBLIC_KEY"):
        sendgrid_public_key("bm90IGEga2V5")


# --------------------------------------------------------------------------- Twilio


def _twilio_post(
    nonce: str, status: str, **extra: str
) -> tuple[str, dict[str, str], dict[str, str]]:
    """Path, form and headers of a status callback, signed as Twilio signs it."""
    query = urlencode({"u": f"u-{nonce}", "m": f"m-{nonce}", "j": "welcome", "s": "steps.2 sms"})
    path = f"/v1/webhooks/twilio?{query}"
    form = {
        "MessageSid": f"SM{nonce}",
        "SmsSid": f"SM{nonce}",
        "AccountSid": "AC123",
        "From": "+15005550006",
        "To": "+15005550009",
        "MessageStatus": status,
        "ApiVersion": "2010-04-01",
        **extra,
    }
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC_URL + path, form)
    return path, form, {TWILIO_SIGNATURE_HEADER: signature}


async def test_twilio_status_callbacks(make_client: MakeClient, read: Reader, nonce: str) -> None:
    client = await make_client()
    for status, expected in (("queued", 0), ("sent", 0), ("delivered", 1)):
        path, form, headers = _twilio_post(nonce, status)
        response = await client.post(path, data=form, headers=headers)
        assert response.status == 200, await response.text()
        assert (await response.json())["accepted"] == expected
    path, form, headers = _twilio_post(nonce, "undelivered", ErrorCode="30003")
    response = await client.post(path, data=form, headers=headers)
    assert response.status == 200
    # Twilio retries: the same callback again is the same event
    response = await client.post(path, data=form, headers=headers)
    assert response.status == 200

    events = events_of(await read(EVENTS, nonce, expect=3))
    assert [e.type for e in events] == ["message.delivered", "message.failed", "message.failed"]
    delivered, failed, again = events
    assert delivered.user_id == f"u-{nonce}"
    assert delivered.properties == {
        "message_id": f"m-{nonce}",
        "journey": "welcome",
        "step": "steps.2 sms",
        "channel": "sms",
        "provider_event": "delivered",
        "provider_message_id": f"SM{nonce}",
    }
    assert failed.properties["error_code"] == "30003"
    assert failed.event_id == again.event_id != delivered.event_id


async def test_twilio_refuses_bad_signatures(
    make_client: MakeClient, read: Reader, nonce: str
) -> None:
    client = await make_client()
    path, form, headers = _twilio_post(nonce, "delivered")
    response = await client.post(path, data=form)  # unsigned
    assert response.status == 401
    response = await client.post(path, data={**form, "MessageStatus": "failed"}, headers=headers)
    assert response.status == 401
    other_user = path.replace(f"u=u-{nonce}", f"u=v-{nonce}")
    response = await client.post(other_user, data=form, headers=headers)
    assert response.status == 401
    # signed for another host than the configured public URL
    url = "https://elsewhere.example.com" + path
    forged = RequestValidator(TWILIO_TOKEN).compute_signature(url, form)
    response = await client.post(path, data=form, headers={TWILIO_SIGNATURE_HEADER: forged})
    assert response.status == 401
    assert await read(EVENTS, nonce, expect=0, settle=0.3) == []


# --------------------------------------------------------------------------- profiles


def _profile_inputs(records: list[Record]) -> list[tuple[Record, Input]]:
    out: list[tuple[Record, Input]] = []
    for record in records:
        for item in decode(record.value, 0, datetime.now(UTC)):
            assert isinstance(item, Input), item
            out.append((record, item))
    return out


async def test_profile_import_lands_as_control_records_per_partition(
    make_client: MakeClient, read: Reader, nonce: str
) -> None:
    client = await make_client()
    profiles: list[Any] = [
        {"user_id": f"{nonce}-{i}", "traits": {"email": f"p{i}@example.com", "i": i}}
        for i in range(40)
    ]
    profiles[7] = {"user_id": f"{nonce}-7"}  # no traits
    profiles[9] = {"userId": f"{nonce}-9", "traits": {}}
    before = time.time()
    response = await client.post(
        "/v1/profiles", json={"profiles": profiles}, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert response.status == 400, await response.text()
    answer = await response.json()
    assert answer["accepted"] == 38
    assert [(e["index"], e["reason"]) for e in answer["errors"]] == [
        (7, "bad_type"),
        (9, "unknown_field"),
    ]

    records = await read(EVENTS, nonce, expect=1)
    touched = {partition_for(f"{nonce}-{i}".encode(), PARTITIONS) for i in range(40)}
    assert sorted(r.partition for r in records) == sorted(touched)  # one record per partition
    inputs = _profile_inputs(records)
    assert sorted(int(i.user_id.rsplit("-", 1)[1]) for _, i in inputs) == [
        i for i in range(40) if i not in (7, 9)
    ]
    for record, item in inputs:
        assert item.kind == "profile"
        assert record.partition == partition_for(item.user_id.encode(), PARTITIONS)
        assert orjson.loads(record.value)["herald_control"] == "profile"
        assert before <= item.at <= time.time()
        i = int(item.user_id.rsplit("-", 1)[1])
        assert item.traits == {"email": f"p{i}@example.com", "i": i}
    for record in records:
        first = orjson.loads(record.value)["profiles"][0]["user_id"]
        assert record.key == first.encode()

    dead = [orjson.loads(d.value) for d in await read(DLQ, nonce, expect=2)]
    assert sorted(d["reason"] for d in dead) == ["bad_type", "unknown_field"]


async def test_profile_import_needs_the_key_and_the_shape(make_client: MakeClient) -> None:
    client = await make_client()
    auth = {"Authorization": f"Bearer {KEY}"}
    response = await client.post("/v1/profiles", json={"profiles": []})
    assert response.status == 401
    response = await client.post("/v1/profiles", json={"profiles": []}, headers=auth)
    assert (response.status, await response.json()) == (202, {"accepted": 0})
    response = await client.post("/v1/profiles", json=[{"user_id": "u"}], headers=auth)
    assert (response.status, (await response.json())["error"]) == (400, "missing_profiles")
    response = await client.post("/v1/profiles", json={"profiles": {}}, headers=auth)
    assert (response.status, (await response.json())["error"]) == (400, "bad_type")


async def test_producer_splits_profile_records(
    broker: EmbeddedBroker, producer: EventProducer, read: Reader, nonce: str
) -> None:
    small = EventProducer(broker.bootstrap, max_pack_bytes=1500)
    await small.start()
    try:
        profiles = [(f"p-{nonce}-{i % 3}", {"i": i, "pad": "x" * 40}) for i in range(90)]
        await small.send_profiles(profiles, 1777630000.0)
    finally:
        await small.stop()
    records = await read(EVENTS, nonce, expect=4)
    assert len(records) > 3
    assert all(len(r.value) <= 1500 for r in records)
    inputs = [item for _, item in _profile_inputs(records)]
    assert all(item.at == 1777630000.0 for item in inputs)
    for user in {item.user_id for item in inputs}:  # per user, order is kept across records
        seq = [item.traits["i"] for item in inputs if item.user_id == user and item.traits]
        assert seq == sorted(seq) and len(seq) == 30
