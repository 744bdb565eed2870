"""The webhook connector against a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from connectors.base import Delivery
from connectors.webhook import WebhookConnector
from engine.errors import ConnectorError


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    seen: list[Seen] = field(default_factory=list)


RECEIVER = web.AppKey("receiver", Receiver)


async def _record(request: web.Request) -> web.Response:
    receiver = request.app[RECEIVER]
    receiver.seen.append(
        Seen(request.method, request.path, dict(request.headers), await request.read())
    )
    name = request.match_info["status"]
    if name == "slow":
        await asyncio.sleep(2)
        return web.Response(status=200)
    return web.Response(status=int(name), text=f"answer {name}")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    box = Receiver("")
    app = web.Application()
    app[RECEIVER] = box
    app.router.add_route("*", "/hook/{status}", _record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    box.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield box
    finally:
        await runner.cleanup()


@pytest.fixture
async def connector() -> AsyncIterator[WebhookConnector]:
    webhook = WebhookConnector(timeout=0.5)
    await webhook.start()
    try:
        yield webhook
    finally:
        await webhook.close()


def hook(url: str, *, body: str = '{"user": "u-1", "n": 2}', **meta: Any) -> Delivery:
    return Delivery(
        message_id="msg-123",
        user_id="u-1",
        journey="cart",
        step="steps.2",
        channel="webhook",
        to=url,
        subject=None,
        body=body,
        variant=None,
        meta=meta,
    )


async def test_2xx_is_delivered_with_idempotency_headers(
    receiver: Receiver, connector: WebhookConnector
) -> None:
    receipt = await connector.send(
        hook(f"{receiver.url}/hook/200", method="PUT", headers={"X-Token": "abc"})
    )
    assert receipt.detail == "HTTP 200"
    [seen] = receiver.seen
    assert seen.method == "PUT"
    assert seen.headers["Idempotency-Key"] == "msg-123"
    assert seen.headers["X-Herald-Message-Id"] == "msg-123"
    assert seen.headers["X-Token"] == "abc"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.body == b'{"user": "u-1", "n": 2}'
    assert not await connector.delivered("msg-123")


async def test_text_body_and_default_method(
    receiver: Receiver, connector: WebhookConnector
) -> None:
    await connector.send(hook(f"{receiver.url}/hook/204", body="plain words"))
    [seen] = receiver.seen
    assert seen.method == "POST"
    assert seen.headers["Content-Type"].startswith("text/plain")
    assert seen.body == b"plain words"


async def test_user_content_type_is_kept(receiver: Receiver, connector: WebhookConnector) -> None:
    await connector.send(
        hook(
            f"{receiver.url}/hook/200",
            body="a=1",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    )
    assert receiver.seen[0].headers["Content-Type"] == "application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        ("500", True),
        ("503", True),
        ("429", True),
        ("408", True),
        ("400", False),
        ("404", False),
        ("410", False),
    ],
)
async def test_error_statuses(
    receiver: Receiver, connector: WebhookConnector, status: str, retryable: bool
) -> None:
    with pytest.raises(ConnectorError) as caught:
        await connector.send(hook(f"{receiver.url}/hook/{status}"))
    assert caught.value.retryable is retryable
    assert f"HTTP {status}" in str(caught.value)
    assert receiver.seen[0].headers["Idempotency-Key"] == "msg-123"


async def test_timeout_is_retryable(receiver: Receiver, connector: WebhookConnector) -> None:
    with pytest.raises(ConnectorError, match="timed out") as caught:
        await connector.send(hook(f"{receiver.url}/hook/slow"))
    assert caught.value.retryable


async def test_refused_connection_is_retryable(connector: WebhookConnector) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectorError) as caught:
        await connector.send(hook(f"http://127.0.0.1:{port}/hook/200"))
    assert caught.value.retryable
    assert isinstance(caught.value.__cause__, Exception)


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "file:///etc/passwd", "javascript:alert(1)", "127.0.0.1/x"]
)
async def test_only_http_urls(connector: WebhookConnector, url: str) -> None:
    with pytest.raises(ConnectorError, match="only http") as caught:
        await connector.send(hook(url))
    assert not caught.value.retryable


async def test_bad_meta_is_permanent(receiver: Receiver, connector: WebhookConnector) -> None:
    with pytest.raises(ConnectorError) as caught:
        await connector.send(hook(f"{receiver.url}/hook/200", method="BREW"))
    assert not caught.value.retryable
    with pytest.raises(ConnectorError) as caught:
        await connector.send(hook(f"{receiver.url}/hook/200", headers={"X-A": "1\r\nX-B: 2"}))
    assert not caught.value.retryable
    assert receiver.seen == []
