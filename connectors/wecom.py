"""The `wecom` channel: WeCom (WeChat Work, 企业微信) application messages over HTTPS (aiohttp).

Routing: `wecom` is a channel of its own, switched on by `WECOM_CORP_ID` like the other
providers (registry.PROVIDER_CHANNELS), and delivered to the outbox when it is not set. Its
address is the member's WeCom userid in `profile.wecom_address`: the core's rule for any
channel beyond email/sms/wechat is `profile.<channel>_address`. A WeCom userid is not a
WeChat openid (different id spaces, consent and templates), so WeCom never takes over the
`wechat` channel.

API (https://developer.work.weixin.qq.com/document/path/91039 gettoken,
/document/path/90236 message/send, /document/path/90313 error codes):

* `GET /cgi-bin/gettoken?corpid=&corpsecret=` -> `access_token`, `expires_in` (7200 s). The
  token is cached until five minutes before it expires and fetched by one coroutine at a
  time; when a send says it is invalid or expired (40001, 40014, 42001) it is dropped and the
  send retried once (another server with the same secret may have rotated it).
* `POST /cgi-bin/message/send?access_token=` with `touser` (one userid), `agentid`
  (`WECOM_AGENT_ID`) and either
  - `textcard` `{title: subject, description: body, url: meta.url, btntxt: meta.btntxt?}`
    when the delivery has a subject and a `meta.url` (a card needs a link), or
  - `text` `{content}`: the body, preceded by the subject and a blank line when there is one.
  Today's `send` steps carry no `meta`, so journeys send text; cards are for producers of
  actions that add `meta.url`. WeCom cuts text beyond 2048 bytes and a card's title and
  description beyond 128 and 512 (bytes in older docs, characters in newer ones).

Retries and duplicates: every send asks for WeCom's duplicate check
(`enable_duplicate_check: 1, duplicate_check_interval: 1800`): WeCom does not deliver a
request whose JSON is identical to one it accepted from the same app in the last 30 minutes.
The body is built only from the delivery, so a dispatcher retry after a timeout (its retries
span seconds), or the resend after a worker died between the call and its "sent" mark,
reaches the member once, as WeCom documents it (the emulator cannot prove WeCom honours it).
It does not cover a resend more than 30 minutes later (that one is delivered again), it is
keyed on content and not on the message id (two different Herald messages with the same
text to the same member within 30 minutes: the second is silently dropped), and there is no
way to ask WeCom whether a message went out, so `delivered()` is False.

Answers are HTTP 200 with `errcode`. errcode 0 with the recipient in `invaliduser` (or
`unlicenseduser`: in the app's visible range but without an interface licence) was not
delivered: permanent, as are 81013 (no valid recipient) and every other code except -1
(busy) and the rate limits 45009/45033, which are retryable. WeCom also drops, without an
error, messages beyond 30 per minute / 1000 per hour to one member from one app.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from connectors.base import Delivery, Receipt
from connectors.errors import ConnectorConfigError
from connectors.tencent import TencentApi
from engine.errors import ConnectorError

if TYPE_CHECKING:
    from workers.config import Settings

__all__ = ["DEFAULT_BASE_URL", "DUPLICATE_CHECK_S", "WeComConnector", "build_message"]

DEFAULT_BASE_URL = "https://qyapi.weixin.qq.com"
SEND_PATH = "/cgi-bin/message/send"
# busy, API call frequency limit, concurrent call limit
RETRYABLE_ERRORS = frozenset({-1, 45009, 45033})
DUPLICATE_CHECK_S = 1800


class WeComConnector(TencentApi):
    """Sends to `Delivery.to` (one WeCom member userid) as application `agent_id`."""

    name = "wecom"
    token_path = "/cgi-bin/gettoken"
    retryable_errors = RETRYABLE_ERRORS

    def __init__(
        self,
        corp_id: str,
        corp_secret: str,
        agent_id: int | str | None,
        *,
        base_url: str | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        agent = "" if agent_id is None else str(agent_id).strip()
        missing = [
            name
            for name, value in (
                ("WECOM_CORP_ID", corp_id),
                ("WECOM_CORP_SECRET", corp_secret),
                ("WECOM_AGENT_ID", agent),
            )
            if not value
        ]
        if missing:
            raise ConnectorConfigError(f"WeCom needs {', '.join(missing)}")
        try:
            # message/send wants agentid as a JSON integer; a typo should fail at start-up.
            self.agent_id = int(agent)
        except ValueError:
            raise ConnectorConfigError(
                f"WECOM_AGENT_ID must be the application's integer id, not {agent_id!r}"
            ) from None
        super().__init__(base_url or DEFAULT_BASE_URL, timeout=timeout, clock=clock)
        self.corp_id = corp_id
        self._secret = corp_secret

    @classmethod
    def from_settings(cls, settings: Settings) -> WeComConnector:
        return cls(
            settings.wecom_corp_id or "",
            settings.wecom_corp_secret or "",
            settings.wecom_agent_id,
            base_url=settings.wecom_base_url,
        )

    def token_params(self) -> dict[str, str]:
        return {"corpid": self.corp_id, "corpsecret": self._secret}

    async def send(self, delivery: Delivery) -> Receipt:
        answer = await self.post_with_token(SEND_PATH, build_message(delivery, self.agent_id))
        refused = _refused(answer, delivery.to)
        if refused:
            raise ConnectorError(f"wecom send: {delivery.to!r} is in {refused}", retryable=False)
        msgid = answer.get("msgid")
        return Receipt(str(msgid) if msgid else None, "ok")


def build_message(delivery: Delivery, agent_id: int) -> dict[str, Any]:
    """The message/send body for one delivery (see the module docstring).

    Deterministic on purpose: WeCom's duplicate check compares request bodies, so a retry
    must send the very same JSON.
    """
    to = delivery.to
    if not to or "|" in to or to.strip().lower() == "@all":
        # touser is a '|'-list and "@all" is the whole company: one address, one member.
        raise ConnectorError(f"wecom: {to!r} is not a single member userid", retryable=False)
    url = delivery.meta.get("url")
    payload: dict[str, Any] = {"touser": to, "agentid": agent_id}
    if delivery.subject and isinstance(url, str) and url:
        card = {"title": delivery.subject, "description": delivery.body, "url": url}
        btntxt = delivery.meta.get("btntxt")
        if isinstance(btntxt, str) and btntxt:
            card["btntxt"] = btntxt
        payload.update(msgtype="textcard", textcard=card)
    else:
        content = f"{delivery.subject}\n\n{delivery.body}" if delivery.subject else delivery.body
        payload.update(msgtype="text", text={"content": content})
    payload.update(enable_duplicate_check=1, duplicate_check_interval=DUPLICATE_CHECK_S)
    return payload


def _refused(answer: Mapping[str, Any], userid: str) -> str | None:
    """The answer field listing `userid` as not delivered to (WeCom lower-cases userids)."""
    for name in ("invaliduser", "unlicenseduser"):
        listed = answer.get(name)
        if isinstance(listed, str) and userid.lower() in listed.lower().split("|"):
            return name
    return None
