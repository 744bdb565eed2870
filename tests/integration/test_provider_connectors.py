"""SendGrid, Twilio, WeChat and WeCom connectors against tiny local emulators of their HTTP APIs.

Each emulator records the request the official SDK (or our client) really sent, so these
tests check the wire format, the auth, the base-URL override and the error mapping.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson
import pytest
from aiohttp import web

from connectors.base import Delivery
from connectors.registry import ConnectorFactories, build_connectors
from connectors.sendgrid import SendGridConnector
from connectors.twilio import TwilioConnector
from connectors.wechat import WeChatConnector
from connectors.wecom import WeComConnector
from engine.errors import ConnectorError
from workers.config import Settings

ACCOUNT = "AC" + "0" * 32


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Emulator:
    """Answers each path from a script (first in, first out), else from its default."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    defaults: dict[str, Answer] = field(default_factory=dict)
    scripts: dict[str, list[Answer]] = field(default_factory=dict)

    def script(self, path: str, *answers: Answer) -> None:
        self.scripts.setdefault(path, []).extend(answers)

    def on(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]


EMULATOR = web.AppKey("emulator", Emulator)


async def _answer(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR]
    emulator.seen.append(
        Seen(
            request.method,
            request.path,
            dict(request.query),
            dict(request.headers),
            await request.read(),
        )
    )
    queue = emulator.scripts.get(request.path)
    answer = queue.pop(0) if queue else emulator.defaults.get(request.path)
    if answer is None:
        return web.json_response({"error": "no such route"}, status=404)
    if answer.delay:
        await asyncio.sleep(answer.delay)
    body = answer.body if isinstance(answer.body, str) else orjson.dumps(answer.body).decode()
    return web.Response(
        status=answer.status, text=body, content_type="application/json", headers=answer.headers
    )


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    box = Emulator()
    app = web.Application()
    app[EMULATOR] = box
    app.router.add_route("*", "/{tail:.*}", _answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    box.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield box
    finally:
        await runner.cleanup()


def free_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def delivery(
    channel: str,
    to: str,
    *,
    subject: str | None = "Hi",
    body: str = "Hello Ada",
    meta: dict[str, Any] | None = None,
) -> Delivery:
    return Delivery(
        message_id="msg-42",
        user_id="u-7",
        journey="welcome",
        step="steps.0",
        channel=channel,
        to=to,
        subject=subject,
        body=body,
        variant="A",
        meta=meta or {},
    )


# -- SendGrid ------------------------------------------------------------------------------------

SG_PATH = "/v3/mail/send"


@pytest.fixture
async def sendgrid(emulator: Emulator) -> AsyncIterator[SendGridConnector]:
    emulator.defaults[SG_PATH] = Answer(202, "", {"X-Message-Id": "sg-abc"})
    connector = SendGridConnector("SG.key", "Herald <herald@example.com>", base_url=emulator.url)
    await connector.start()
    yield connector
    await connector.close()


async def test_sendgrid_sends_the_mail_the_api_expects(
    emulator: Emulator, sendgrid: SendGridConnector
) -> None:
    receipt = await sendgrid.send(delivery("email", "ada@example.com"))
    assert receipt.provider_id == "sg-abc"
    [seen] = emulator.on(SG_PATH)
    assert seen.method == "POST"
    assert seen.headers["Authorization"] == "Bearer SG.key"
    mail = seen.json()
    assert mail["from"] == {"email": "herald@example.com", "name": "Herald"}
    assert mail["personalizations"][0]["to"] == [{"email": "ada@example.com"}]
    assert mail["subject"] == "Hi"
    assert mail["content"] == [{"type": "text/plain", "value": "Hello Ada"}]
    assert mail["custom_args"]["herald_message_id"] == "msg-42"
    assert mail["custom_args"]["herald_user_id"] == "u-7"


async def test_sendgrid_html_body_goes_as_html(
    emulator: Emulator, sendgrid: SendGridConnector
) -> None:
    await sendgrid.send(delivery("email", "ada@example.com", body="<p>Hello <b>Ada</b></p>"))
    assert emulator.on(SG_PATH)[0].json()["content"][0]["type"] == "text/html"


@pytest.mark.parametrize(
    ("status", "retryable"), [(500, True), (503, True), (429, True), (400, False), (401, False)]
)
async def test_sendgrid_errors(
    emulator: Emulator, sendgrid: SendGridConnector, status: int, retryable: bool
) -> None:
    emulator.script(SG_PATH, Answer(status, {"errors": [{"message": "nope"}]}))
    with pytest.raises(ConnectorError) as caught:
        await sendgrid.send(delivery("email", "ada@example.com"))
    assert caught.value.retryable is retryable
    assert f"HTTP {status}" in str(caught.value) and "nope" in str(caught.value)


async def test_sendgrid_unreachable_is_retryable() -> None:
    connector = SendGridConnector("SG.key", "herald@example.com", base_url=free_url())
    try:
        with pytest.raises(ConnectorError) as caught:
            await connector.send(delivery("email", "ada@example.com"))
    finally:
        await connector.close()
    assert caught.value.retryable
    assert not await connector.delivered("msg-42")


async def test_sendgrid_calls_run_concurrently(
    emulator: Emulator, sendgrid: SendGridConnector
) -> None:
    emulator.defaults[SG_PATH] = Answer(202, "", {"X-Message-Id": "sg"}, delay=0.3)
    started = time.monotonic()
    await asyncio.gather(*(sendgrid.send(delivery("email", f"{i}@example.com")) for i in range(24)))
    assert len(emulator.on(SG_PATH)) == 24
    assert time.monotonic() - started < 0.9  # 6 threads (the default executor here) take 1.2 s


# -- Twilio --------------------------------------------------------------------------------------

TW_PATH = f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"


@pytest.fixture
async def twilio(emulator: Emulator) -> AsyncIterator[TwilioConnector]:
    emulator.defaults[TW_PATH] = Answer(
        201, {"sid": "SM123", "status": "queued", "account_sid": ACCOUNT, "to": "+15551234567"}
    )
    connector = TwilioConnector(ACCOUNT, "secret", "+15550000000", base_url=emulator.url)
    await connector.start()
    yield connector
    await connector.close()


async def test_twilio_creates_a_message_on_the_configured_host(
    emulator: Emulator, twilio: TwilioConnector
) -> None:
    receipt = await twilio.send(delivery("sms", "+15551234567"))
    assert receipt.provider_id == "SM123"
    [seen] = emulator.on(TW_PATH)
    assert seen.method == "POST"
    expected = base64.b64encode(f"{ACCOUNT}:secret".encode()).decode()
    assert seen.headers["Authorization"] == f"Basic {expected}"
    form = {k: v[0] for k, v in parse_qs(seen.body.decode()).items()}
    assert form == {"To": "+15551234567", "From": "+15550000000", "Body": "Hello Ada"}


async def test_twilio_messaging_service_sender(emulator: Emulator) -> None:
    emulator.defaults[TW_PATH] = Answer(201, {"sid": "SM9", "status": "accepted"})
    service = "MG" + "1" * 32
    connector = TwilioConnector(ACCOUNT, "secret", service, base_url=emulator.url)
    try:
        await connector.send(delivery("sms", "+15551234567"))
    finally:
        await connector.close()
    assert f"MessagingServiceSid={service}" in emulator.on(TW_PATH)[0].body.decode()


@pytest.mark.parametrize(
    ("status", "retryable"), [(500, True), (503, True), (429, True), (400, False), (404, False)]
)
async def test_twilio_errors(
    emulator: Emulator, twilio: TwilioConnector, status: int, retryable: bool
) -> None:
    emulator.script(
        TW_PATH, Answer(status, {"code": 21211, "message": "Invalid 'To'", "status": status})
    )
    with pytest.raises(ConnectorError) as caught:
        await twilio.send(delivery("sms", "+1"))
    assert caught.value.retryable is retryable
    assert f"HTTP {status}" in str(caught.value)


async def test_twilio_problem_details_errors(emulator: Emulator, twilio: TwilioConnector) -> None:
    emulator.script(
        TW_PATH,
        Answer(
            429,
            {
                "type": "https://www.twilio.com/docs/errors/20429",
                "title": "Too many",
                "status": 429,
                "code": 20429,
            },
        ),
        Answer(
            422,
            {
                "type": "https://www.twilio.com/docs/errors/21211",
                "title": "Bad To",
                "status": 422,
                "code": 21211,
            },
        ),
    )
    for retryable in (True, False):
        with pytest.raises(ConnectorError) as caught:
            await twilio.send(delivery("sms", "+1"))
        assert caught.value.retryable is retryable


async def test_twilio_unreachable_is_retryable() -> None:
    connector = TwilioConnector(ACCOUNT, "secret", "+15550000000", base_url=free_url())
    try:
        with pytest.raises(ConnectorError) as caught:
            await connector.send(delivery("sms", "+15551234567"))
    finally:
        await connector.close()
    assert caught.value.retryable


# -- WeChat --------------------------------------------------------------------------------------

TOKEN = "/cgi-bin/token"
TEMPLATE = "/cgi-bin/message/template/send"
CUSTOM = "/cgi-bin/message/custom/send"


@pytest.fixture
async def wechat(emulator: Emulator) -> AsyncIterator[WeChatConnector]:
    emulator.defaults[TOKEN] = Answer(200, {"access_token": "tok-1", "expires_in": 7200})
    emulator.defaults[TEMPLATE] = Answer(200, {"errcode": 0, "errmsg": "ok", "msgid": 200228332})
    emulator.defaults[CUSTOM] = Answer(200, {"errcode": 0, "errmsg": "ok"})
    connector = WeChatConnector("wx-app", "wx-secret", base_url=emulator.url, template_id="TPL")
    await connector.start()
    yield connector
    await connector.close()


async def test_wechat_template_message_with_a_cached_token(
    emulator: Emulator, wechat: WeChatConnector
) -> None:
    receipt = await wechat.send(delivery("wechat", "openid-1"))
    await wechat.send(delivery("wechat", "openid-2", subject=None))
    assert receipt.provider_id == "200228332"
    [token] = emulator.on(TOKEN)  # fetched once, then cached
    assert token.query == {
        "grant_type": "client_credential",
        "appid": "wx-app",
        "secret": "wx-secret",
    }
    first, second = emulator.on(TEMPLATE)
    assert first.query == {"access_token": "tok-1"}
    assert first.json() == {
        "touser": "openid-1",
        "template_id": "TPL",
        "data": {"first": {"value": "Hi"}, "remark": {"value": "Hello Ada"}},
    }
    assert second.json()["data"] == {"first": {"value": "Hello Ada"}}


async def test_wechat_meta_template_data_and_url(
    emulator: Emulator, wechat: WeChatConnector
) -> None:
    meta = {
        "template_id": "T2",
        "data": {"keyword1": "Ada", "keyword2": {"value": "9", "color": "#f00"}},
        "url": "https://example.com/cart",
    }
    await wechat.send(delivery("wechat", "openid-1", meta=meta))
    assert emulator.on(TEMPLATE)[0].json() == {
        "touser": "openid-1",
        "template_id": "T2",
        "data": {"keyword1": {"value": "Ada"}, "keyword2": {"value": "9", "color": "#f00"}},
        "url": "https://example.com/cart",
    }


async def test_wechat_without_template_sends_a_text_message(emulator: Emulator) -> None:
    emulator.defaults[TOKEN] = Answer(200, {"access_token": "tok-1", "expires_in": 7200})
    emulator.defaults[CUSTOM] = Answer(200, {"errcode": 0, "errmsg": "ok"})
    connector = WeChatConnector("wx-app", "wx-secret", base_url=emulator.url)
    try:
        await connector.send(delivery("wechat", "openid-1"))
    finally:
        await connector.close()
    assert emulator.on(CUSTOM)[0].json() == {
        "touser": "openid-1",
        "msgtype": "text",
        "text": {"content": "Hello Ada"},
    }


async def test_wechat_refreshes_a_rejected_token_once(
    emulator: Emulator, wechat: WeChatConnector
) -> None:
    emulator.script(TOKEN, Answer(200, {"access_token": "tok-old", "expires_in": 7200}))
    emulator.script(TEMPLATE, Answer(200, {"errcode": 40001, "errmsg": "invalid credential"}))
    await wechat.send(delivery("wechat", "openid-1"))
    assert [s.query["access_token"] for s in emulator.on(TEMPLATE)] == ["tok-old", "tok-1"]
    assert len(emulator.on(TOKEN)) == 2


async def test_wechat_token_expiry_is_honoured(emulator: Emulator) -> None:
    now = [1000.0]
    emulator.defaults[TOKEN] = Answer(200, {"access_token": "tok", "expires_in": 7200})
    emulator.defaults[TEMPLATE] = Answer(200, {"errcode": 0, "msgid": 1})
    connector = WeChatConnector(
        "wx-app", "wx-secret", base_url=emulator.url, template_id="T", clock=lambda: now[0]
    )
    try:
        await connector.send(delivery("wechat", "o"))
        now[0] += 7200 - 301  # still inside the refresh margin of five minutes
        await connector.send(delivery("wechat", "o"))
        assert len(emulator.on(TOKEN)) == 1
        now[0] += 2
        await connector.send(delivery("wechat", "o"))
        assert len(emulator.on(TOKEN)) == 2
    finally:
        await connector.close()


@pytest.mark.parametrize(
    ("answer", "retryable"),
    [
        (Answer(200, {"errcode": -1, "errmsg": "system error"}), True),
        (Answer(200, {"errcode": 45009, "errmsg": "api freq out of limit"}), True),
        (Answer(200, {"errcode": 43004, "errmsg": "require subscribe"}), False),
        (Answer(200, {"errcode": 40003, "errmsg": "invalid openid"}), False),
        (Answer(502, "bad gateway"), True),
        (Answer(200, "<html>not json</html>"), True),
    ],
)
async def test_wechat_errors(
    emulator: Emulator, wechat: WeChatConnector, answer: Answer, retryable: bool
) -> None:
    emulator.script(TEMPLATE, answer)
    with pytest.raises(ConnectorError) as caught:
        await wechat.send(delivery("wechat", "openid-1"))
    assert caught.value.retryable is retryable


async def test_wechat_bad_credentials_are_permanent(emulator: Emulator) -> None:
    emulator.defaults[TOKEN] = Answer(200, {"errcode": 40125, "errmsg": "invalid appsecret"})
    connector = WeChatConnector("wx-app", "wrong", base_url=emulator.url, template_id="T")
    try:
        with pytest.raises(ConnectorError, match="40125") as caught:
            await connector.send(delivery("wechat", "openid-1"))
    finally:
        await connector.close()
    assert not caught.value.retryable
    assert emulator.on(TEMPLATE) == []


async def test_wechat_unreachable_is_retryable() -> None:
    connector = WeChatConnector("wx-app", "s", base_url=free_url(), template_id="T")
    try:
        with pytest.raises(ConnectorError) as caught:
            await connector.send(delivery("wechat", "openid-1"))
    finally:
        await connector.close()
    assert caught.value.retryable


# -- WeCom ---------------------------------------------------------------------------------------

GETTOKEN = "/cgi-bin/gettoken"
WECOM_SEND = "/cgi-bin/message/send"
WECOM_OK = {"errcode": 0, "errmsg": "ok", "invaliduser": "", "msgid": "wc-msg-1"}


def wecom_connector(url: str, **kwargs: Any) -> WeComConnector:
    return WeComConnector("ww-corp", "corp-secret", "1000002", base_url=url, **kwargs)


@pytest.fixture
async def wecom(emulator: Emulator) -> AsyncIterator[WeComConnector]:
    emulator.defaults[GETTOKEN] = Answer(
        200, {"errcode": 0, "errmsg": "ok", "access_token": "tok-1", "expires_in": 7200}
    )
    emulator.defaults[WECOM_SEND] = Answer(200, WECOM_OK)
    connector = wecom_connector(emulator.url)
    await connector.start()
    yield connector
    await connector.close()


async def test_wecom_text_message_with_a_cached_token(
    emulator: Emulator, wecom: WeComConnector
) -> None:
    receipt = await wecom.send(delivery("wecom", "ZhangSan", subject=None))
    await wecom.send(delivery("wecom", "LiSi"))
    assert receipt.provider_id == "wc-msg-1"
    [token] = emulator.on(GETTOKEN)  # fetched once, then cached
    assert token.method == "GET"
    assert token.query == {"corpid": "ww-corp", "corpsecret": "corp-secret"}
    first, second = emulator.on(WECOM_SEND)
    assert first.method == "POST" and first.query == {"access_token": "tok-1"}
    assert first.headers["Content-Type"] == "application/json"
    assert first.json() == {
        "touser": "ZhangSan",
        "agentid": 1000002,
        "msgtype": "text",
        "text": {"content": "Hello Ada"},
        "enable_duplicate_check": 1,
        "duplicate_check_interval": 1800,
    }
    assert second.json()["text"] == {"content": "Hi\n\nHello Ada"}


async def test_wecom_textcard_when_there_is_a_subject_and_a_link(
    emulator: Emulator, wecom: WeComConnector
) -> None:
    meta = {"url": "https://shop.example.com/cart", "btntxt": "去看看"}
    await wecom.send(delivery("wecom", "ZhangSan", meta=meta))
    sent = emulator.on(WECOM_SEND)[0].json()
    assert sent["msgtype"] == "textcard" and "text" not in sent
    assert sent["textcard"] == {
        "title": "Hi",
        "description": "Hello Ada",
        "url": "https://shop.example.com/cart",
        "btntxt": "去看看",
    }
    assert (sent["enable_duplicate_check"], sent["duplicate_check_interval"]) == (1, 1800)


async def test_wecom_a_retry_sends_the_same_body(emulator: Emulator, wecom: WeComConnector) -> None:
    # WeCom's duplicate check compares request JSON, so a retried delivery must match byte
    # for byte: the first attempt timed out after WeCom may have accepted it.
    emulator.script(WECOM_SEND, Answer(502, "bad gateway"))
    with pytest.raises(ConnectorError) as caught:
        await wecom.send(delivery("wecom", "ZhangSan"))
    assert caught.value.retryable
    await wecom.send(delivery("wecom", "ZhangSan"))
    first, second = emulator.on(WECOM_SEND)
    assert first.body == second.body


@pytest.mark.parametrize("code", [42001, 40014, 40001])
async def test_wecom_refreshes_a_rejected_token_once(
    emulator: Emulator, wecom: WeComConnector, code: int
) -> None:
    emulator.script(GETTOKEN, Answer(200, {"errcode": 0, "access_token": "tok-old"}))
    emulator.script(WECOM_SEND, Answer(200, {"errcode": code, "errmsg": "access_token expired"}))
    receipt = await wecom.send(delivery("wecom", "ZhangSan"))
    assert receipt.provider_id == "wc-msg-1"
    assert [s.query["access_token"] for s in emulator.on(WECOM_SEND)] == ["tok-old", "tok-1"]
    assert len(emulator.on(GETTOKEN)) == 2


async def test_wecom_token_rejected_twice_is_retryable(
    emulator: Emulator, wecom: WeComConnector
) -> None:
    expired = Answer(200, {"errcode": 42001, "errmsg": "access_token expired"})
    emulator.script(WECOM_SEND, expired, expired)
    with pytest.raises(ConnectorError, match="42001") as caught:
        await wecom.send(delivery("wecom", "ZhangSan"))
    assert caught.value.retryable
    assert len(emulator.on(WECOM_SEND)) == 2 and len(emulator.on(GETTOKEN)) == 2


async def test_wecom_token_expiry_is_honoured(emulator: Emulator) -> None:
    now = [1000.0]
    emulator.defaults[GETTOKEN] = Answer(
        200, {"errcode": 0, "access_token": "t", "expires_in": 7200}
    )
    emulator.defaults[WECOM_SEND] = Answer(200, WECOM_OK)
    connector = wecom_connector(emulator.url, clock=lambda: now[0])
    try:
        await connector.send(delivery("wecom", "u"))
        now[0] += 7200 - 301  # still outside the five-minute refresh margin
        await connector.send(delivery("wecom", "u"))
        assert len(emulator.on(GETTOKEN)) == 1
        now[0] += 2
        await connector.send(delivery("wecom", "u"))
        assert len(emulator.on(GETTOKEN)) == 2
    finally:
        await connector.close()


async def test_wecom_concurrent_sends_fetch_one_token(emulator: Emulator) -> None:
    emulator.defaults[GETTOKEN] = Answer(
        200, {"errcode": 0, "access_token": "tok", "expires_in": 7200}, delay=0.2
    )
    emulator.defaults[WECOM_SEND] = Answer(200, WECOM_OK)
    connector = wecom_connector(emulator.url)
    try:
        await asyncio.gather(*(connector.send(delivery("wecom", f"u{i}")) for i in range(8)))
    finally:
        await connector.close()
    assert len(emulator.on(GETTOKEN)) == 1 and len(emulator.on(WECOM_SEND)) == 8


@pytest.mark.parametrize(
    ("answer", "field"),
    [
        ({"errcode": 0, "errmsg": "ok", "invaliduser": "zhangsan", "msgid": "m"}, "invaliduser"),
        ({"errcode": 0, "invaliduser": "", "unlicenseduser": "zhangsan"}, "unlicenseduser"),
    ],
)
async def test_wecom_recipient_refused_in_an_ok_answer_is_permanent(
    emulator: Emulator, wecom: WeComConnector, answer: dict[str, Any], field: str
) -> None:
    # WeCom lower-cases the userids it lists; ours is ZhangSan.
    emulator.script(WECOM_SEND, Answer(200, answer))
    with pytest.raises(ConnectorError, match=field) as caught:
        await wecom.send(delivery("wecom", "ZhangSan"))
    assert not caught.value.retryable


@pytest.mark.parametrize(
    ("answer", "retryable"),
    [
        (Answer(200, {"errcode": -1, "errmsg": "system busy"}), True),
        (Answer(200, {"errcode": 45009, "errmsg": "api freq out of limit"}), True),
        (Answer(200, {"errcode": 45033, "errmsg": "api concurrent out of limit"}), True),
        (Answer(200, {"errcode": 81013, "errmsg": "user & party & tag all invalid"}), False),
        (Answer(200, {"errcode": 60020, "errmsg": "not allow to access from your ip"}), False),
        (Answer(200, {"errcode": 301002, "errmsg": "not allow operate another agent"}), False),
        (Answer(503, "unavailable"), True),
        (Answer(400, "bad request"), False),
        (Answer(200, "<html>not json</html>"), True),
    ],
)
async def test_wecom_errors(
    emulator: Emulator, wecom: WeComConnector, answer: Answer, retryable: bool
) -> None:
    emulator.script(WECOM_SEND, answer)
    with pytest.raises(ConnectorError) as caught:
        await wecom.send(delivery("wecom", "ZhangSan"))
    assert caught.value.retryable is retryable
    assert len(emulator.on(WECOM_SEND)) == 1  # the dispatcher, not the connector, retries


@pytest.mark.parametrize(
    ("answer", "retryable"),
    [
        (Answer(200, {"errcode": 40001, "errmsg": "invalid secret"}), False),
        (Answer(200, {"errcode": 40013, "errmsg": "invalid corpid"}), False),
        (Answer(200, {"errcode": -1, "errmsg": "system busy"}), True),
        (Answer(200, {"errcode": 0, "errmsg": "ok"}), False),  # no token in it
    ],
)
async def test_wecom_gettoken_failures(emulator: Emulator, answer: Answer, retryable: bool) -> None:
    emulator.defaults[GETTOKEN] = answer
    connector = wecom_connector(emulator.url)
    try:
        with pytest.raises(ConnectorError, match="gettoken") as caught:
            await connector.send(delivery("wecom", "ZhangSan"))
    finally:
        await connector.close()
    assert caught.value.retryable is retryable
    assert emulator.on(WECOM_SEND) == []


async def test_wecom_unreachable_is_retryable() -> None:
    connector = wecom_connector(free_url())
    try:
        with pytest.raises(ConnectorError) as caught:
            await connector.send(delivery("wecom", "ZhangSan"))
    finally:
        await connector.close()
    assert caught.value.retryable


async def test_wecom_settings_route_the_wecom_channel_to_the_emulator(
    emulator: Emulator, tmp_path: Path
) -> None:
    emulator.defaults[GETTOKEN] = Answer(200, {"errcode": 0, "access_token": "tok-s"})
    emulator.defaults[WECOM_SEND] = Answer(200, WECOM_OK)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        outbox=tmp_path / "outbox.jsonl",
        WECOM_CORP_ID="ww-env",
        WECOM_CORP_SECRET="env-secret",
        WECOM_AGENT_ID="42",
        WECOM_BASE_URL=emulator.url,
    )
    connectors = build_connectors(settings, factories=ConnectorFactories(discover=lambda g: []))
    await connectors.start()
    try:
        receipt = await connectors.connector_for("wecom").send(delivery("wecom", "ZhangSan"))
    finally:
        await connectors.close()
    assert receipt.provider_id == "wc-msg-1"
    assert emulator.on(GETTOKEN)[0].query == {"corpid": "ww-env", "corpsecret": "env-secret"}
    assert emulator.on(WECOM_SEND)[0].json()["agentid"] == 42
