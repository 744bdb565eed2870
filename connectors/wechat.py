"""The `wechat` channel: WeChat Official Account messages over HTTPS (aiohttp).

Access token: `GET /cgi-bin/token?grant_type=client_credential&appid=&secret=`, cached until
five minutes before its `expires_in`, fetched by one coroutine at a time. When WeChat says
the token is invalid or expired (40001, 40014, 42001) it is dropped and the send retried once
with a fresh one (another server holding the same app id may have rotated it).

What is sent, by what the delivery carries:

* a template message, `POST /cgi-bin/message/template/send`, when a template id is known
  (`meta.template_id`, else the connector's `template_id`): `{"touser": openid,
  "template_id", "data"}`. `data` is `meta.data` when given (values wrapped as
  `{"value": v}`); otherwise the rendered text fills the classic fields: `first` = the
  subject (or the body when there is none) and `remark` = the body when there is a subject.
  `meta.url` becomes the template's link.
* otherwise a customer-service text message, `POST /cgi-bin/message/custom/send` with
  `{"touser", "msgtype": "text", "text": {"content": body}}` (WeChat only allows these
  within 48 h of the user's last interaction; outside it answers 45015, permanent).

WeChat answers HTTP 200 with `errcode`; -1 (busy) and the rate limits are retryable,
everything else (invalid openid, template, not subscribed, ...) is permanent. It has no
idempotency key, so `delivered()` is False.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from connectors.base import Delivery, Receipt
from connectors.errors import ConnectorConfigError
from connectors.webhook import retryable_status
from engine.errors import ConnectorError

if TYPE_CHECKING:
    from workers.config import Settings

__all__ = ["DEFAULT_BASE_URL", "WeChatConnector"]

DEFAULT_BASE_URL = "https://api.weixin.qq.com"
TOKEN_ERRORS = frozenset({40001, 40014, 42001})
RETRYABLE_ERRORS = frozenset({-1, 45009, 45011})  # busy, daily quota, per-minute quota
_REFRESH_MARGIN_S = 300.0


class WeChatConnector:
    """Sends to `Delivery.to` (an Official Account openid)."""

    name = "wechat"

    def __init__(
        self,
        app_id: str,
        app_secret: str,
        *,
        base_url: str | None = None,
        template_id: str | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not app_id or not app_secret:
            raise ConnectorConfigError("WeChat needs WECHAT_APP_ID and WECHAT_APP_SECRET")
        self.app_id = app_id
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.template_id = template_id
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._secret = app_secret
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> WeChatConnector:
        # WECHAT_TEMPLATE_ID is not (yet) a Settings field; read it if the lead adds one.
        return cls(
            settings.wechat_app_id or "",
            settings.wechat_app_secret or "",
            base_url=settings.wechat_base_url,
            template_id=getattr(settings, "wechat_template_id", None),
        )

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def delivered(self, message_id: str) -> bool:
        return False

    async def send(self, delivery: Delivery) -> Receipt:
        path, payload = build_request(delivery, self.template_id)
        for attempt in (1, 2):
            token = await self._access_token()
            answer = await self._call("POST", path, params={"access_token": token}, json=payload)
            code = _errcode(answer)
            if code == 0:
                msgid = answer.get("msgid")
                return Receipt(str(msgid) if msgid is not None else None, "ok")
            if code in TOKEN_ERRORS:
                self._forget_token(token)
                if attempt == 1:
                    continue
                # Rejected twice with fresh tokens: someone keeps rotating it; try again later.
                raise _error("send", answer, retryable=True)
            raise _error("send", answer)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _access_token(self) -> str:
        if self._token is not None and self._clock() < self._token_expires:
            return self._token
        async with self._token_lock:
            if self._token is not None and self._clock() < self._token_expires:
                return self._token
            answer = await self._call(
                "GET",
                "/cgi-bin/token",
                params={
                    "grant_type": "client_credential",
                    "appid": self.app_id,
                    "secret": self._secret,
                },
            )
            token = answer.get("access_token")
            if _errcode(answer) != 0 or not isinstance(token, str) or not token:
                raise _error("token", answer)
            expires_in = float(answer.get("expires_in") or 7200)
            self._token = token
            self._token_expires = self._clock() + max(expires_in - _REFRESH_MARGIN_S, 0.0)
            return token

    def _forget_token(self, token: str) -> None:
        if self._token == token:
            self._token = None

    async def _call(
        self, method: str, path: str, *, params: Mapping[str, str], json: Any = None
    ) -> dict[str, Any]:
        if self._session is None:
            await self.start()
        assert self._session is not None
        url = f"{self.base_url}{path}"
        data = orjson.dumps(json) if json is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            async with self._session.request(
                method, url, params=params, data=data, headers=headers
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            kind = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
            raise ConnectorError(f"wechat {path}: {kind} {exc}".rstrip(), retryable=True) from exc
        if not 200 <= status < 300:
            raise ConnectorError(
                f"wechat {path}: HTTP {status}", retryable=retryable_status(status)
            )
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ConnectorError(f"wechat {path}: answer is not JSON", retryable=True) from exc
        if not isinstance(answer, dict):
            raise ConnectorError(f"wechat {path}: answer is not an object", retryable=True)
        return answer


def build_request(delivery: Delivery, default_template: str | None) -> tuple[str, dict[str, Any]]:
    """The API path and JSON body for one delivery (see the module docstring)."""
    meta = delivery.meta
    template_id = meta.get("template_id") or default_template
    if not template_id:
        return "/cgi-bin/message/custom/send", {
            "touser": delivery.to,
            "msgtype": "text",
            "text": {"content": delivery.body},
        }
    given = meta.get("data")
    data: dict[str, Any]
    if isinstance(given, Mapping) and given:
        data = {
            str(k): dict(v) if isinstance(v, Mapping) else {"value": str(v)}
            for k, v in given.items()
        }
    elif delivery.subject:
        data = {"first": {"value": delivery.subject}, "remark": {"value": delivery.body}}
    else:
        data = {"first": {"value": delivery.body}}
    payload: dict[str, Any] = {"touser": delivery.to, "template_id": str(template_id), "data": data}
    if isinstance(meta.get("url"), str):
        payload["url"] = meta["url"]
    return "/cgi-bin/message/template/send", payload


def _errcode(answer: Mapping[str, Any]) -> int:
    try:
        return int(answer.get("errcode") or 0)
    except (TypeError, ValueError):
        return -1


def _error(what: str, answer: Mapping[str, Any], *, retryable: bool = False) -> ConnectorError:
    code = _errcode(answer)
    message = answer.get("errmsg") or "no access_token in the answer"
    return ConnectorError(
        f"wechat {what}: errcode {code} {message}",
        retryable=retryable or code in RETRYABLE_ERRORS,
    )
