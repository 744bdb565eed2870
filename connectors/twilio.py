"""The `sms` channel through Twilio's Messages API, with the official SDK.

The SDK ships an asyncio transport (`AsyncTwilioHttpClient`, aiohttp underneath) and
`create_async` on every resource, so sends run on the event loop: no worker threads, no
thread-pool ceiling on concurrent sends, and a timeout that really cancels the request.

Pointing it elsewhere (`TWILIO_BASE_URL`, e.g. a local emulator): every resource builds its
URL from its domain's `base_url` (`twilio.base.domain.Domain.absolute_url`), so replacing
`client.api.base_url` moves every Messages call. The client is built with an empty
`environment` so a stray TWILIO_REGION / TWILIO_EDGE cannot rewrite that host.

`TWILIO_FROM` may be a phone number or a Messaging Service SID (`MG...`). Twilio has no
idempotency key for message creation, so `delivered()` is False (at-least-once in the
crash window between the call and the dispatcher's "sent" mark).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import aiohttp
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from connectors.base import Delivery, Receipt
from connectors.errors import ConnectorConfigError
from connectors.webhook import retryable_status
from engine.errors import ConnectorError

if TYPE_CHECKING:
    from workers.config import Settings

__all__ = ["TwilioConnector"]


class TwilioConnector:
    """Sends `Delivery.body` as an SMS to `Delivery.to` from `sender`."""

    name = "twilio"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        sender: str,
        *,
        base_url: str | None = None,
        timeout: float = 10.0,
        status_callback: str | None = None,
    ) -> None:
        missing = [
            name
            for name, value in (
                ("TWILIO_ACCOUNT_SID", account_sid),
                ("TWILIO_AUTH_TOKEN", auth_token),
                ("TWILIO_FROM", sender),
            )
            if not value
        ]
        if missing:
            raise ConnectorConfigError(f"Twilio needs {', '.join(missing)}")
        self.account_sid = account_sid
        self.sender = sender
        self.base_url = base_url.rstrip("/") if base_url else None
        self.timeout = timeout
        self.status_callback = status_callback
        self._auth_token = auth_token
        self._http: AsyncTwilioHttpClient | None = None
        self._client: Any = None

    @classmethod
    def from_settings(cls, settings: Settings) -> TwilioConnector:
        return cls(
            settings.twilio_account_sid or "",
            settings.twilio_auth_token or "",
            settings.twilio_from or "",
            base_url=settings.twilio_base_url,
            status_callback=f"{settings.public_url.rstrip('/')}/v1/webhooks/twilio",
        )

    async def start(self) -> None:
        if self._client is not None:
            return
        # Built here, not in __init__: the transport opens an aiohttp session on this loop.
        self._http = AsyncTwilioHttpClient(timeout=self.timeout)
        client = Client(self.account_sid, self._auth_token, http_client=self._http, environment={})
        if self.base_url:
            client.api.base_url = self.base_url
        self._client = client

    async def close(self) -> None:
        http, self._http, self._client = self._http, None, None
        if http is not None:
            await http.close()

    async def delivered(self, message_id: str) -> bool:
        return False

    async def send(self, delivery: Delivery) -> Receipt:
        if self._client is None:
            await self.start()
        params: dict[str, Any] = {"to": delivery.to, "body": delivery.body}
        if self.sender.startswith("MG") and len(self.sender) == 34:
            params["messaging_service_sid"] = self.sender
        else:
            params["from_"] = self.sender
        if self.status_callback:
            # The callback names user and message so the status becomes a message.* event.
            query = urlencode(
                {
                    "u": delivery.user_id,
                    "m": delivery.message_id,
                    "j": delivery.journey,
                    "s": delivery.step,
                }
            )
            sep = "&" if "?" in self.status_callback else "?"
            params["status_callback"] = f"{self.status_callback}{sep}{query}"
        try:
            async with asyncio.timeout(self.timeout):
                message = await self._client.messages.create_async(**params)
        except (TwilioRestException, TwilioServiceException) as exc:
            status = int(exc.status)
            raise ConnectorError(
                f"twilio: HTTP {status} code {exc.code}: {_message(exc)}",
                retryable=retryable_status(status),
            ) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            kind = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
            raise ConnectorError(f"twilio: {kind} {exc}".rstrip(), retryable=True) from exc
        except (TwilioException, ValueError) as exc:  # e.g. an unparsable answer
            raise ConnectorError(f"twilio: {type(exc).__name__}: {exc}", retryable=True) from exc
        return Receipt(getattr(message, "sid", None), f"status {getattr(message, 'status', '?')}")


def _message(exc: TwilioRestException | TwilioServiceException) -> str:
    text = getattr(exc, "msg", None) or getattr(exc, "detail", None) or getattr(exc, "title", "")
    return str(text)
