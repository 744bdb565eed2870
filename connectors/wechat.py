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

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from connectors.base import Delivery, Receipt
from connectors.errors import ConnectorConfigError
from connectors.tencent import TencentApi

if TYPE_CHECKING:
    from workers.config import Settings

__all__ = ["DEFAULT_BASE_URL", "WeChatConnector"]

DEFAULT_BASE_URL = "https://api.weixin.qq.com"
RETRYABLE_ERRORS = frozenset({-1, 45009, 45011})  # busy, daily quota, per-minute quota


class WeChatConnector(TencentApi):
    """Sends to `Delivery.to` (an Official Account openid)."""

    name = "wechat"
    token_path = "/cgi-bin/token"
    retryable_errors = RETRYABLE_ERRORS

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
        super().__init__(base_url or DEFAULT_BASE_URL, timeout=timeout, clock=clock)
        self.app_id = app_id
        self.template_id = template_id
        self._secret = app_secret

    @classmethod
    def from_settings(cls, settings: Settings) -> WeChatConnector:
        # WECHAT_TEMPLATE_ID is not (yet) a Settings field; read it if the lead adds one.
        return cls(
            settings.wechat_app_id or "",
            settings.wechat_app_secret or "",
            base_url=settings.wechat_base_url,
            template_id=getattr(settings, "wechat_template_id", None),
        )

    def token_params(self) -> dict[str, str]:
        return {"grant_type": "client_credential", "appid": self.app_id, "secret": self._secret}

    async def send(self, delivery: Delivery) -> Receipt:
        path, payload = build_request(delivery, self.template_id)
        msgid = (await self.post_with_token(path, payload)).get("msgid")
        return Receipt(str(msgid) if msgid is not None else None, "ok")


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
