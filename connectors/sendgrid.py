"""The `email` channel through SendGrid's v3 Mail Send API, with the official SDK.

The SDK is blocking (urllib underneath), so each call runs in a worker thread with a 10 s
socket timeout. The threads are the connector's own pool (`concurrency`, default 32), not
asyncio's default executor, which holds min(32, CPUs + 4) threads for the whole process:
with ~200 ms per call that would cap a small host at a few dozen mails a second.

Every mail carries custom args (`herald_message_id`, `herald_user_id`,
`herald_journey`, `herald_step`): SendGrid echoes them in its event webhook, which is how
delivery/open/click events find their way back to the user and message.

SendGrid has no idempotency key for Mail Send, so `delivered()` is False: a crash between
the call and the dispatcher's "sent" mark can send that one message twice.
"""

from __future__ import annotations

import asyncio
import functools
import re
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from python_http_client import exceptions as http_errors
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import CustomArg, Mail

from connectors.base import Delivery, Receipt
from connectors.errors import ConnectorConfigError
from connectors.webhook import retryable_status
from engine.errors import ConnectorError

if TYPE_CHECKING:
    from workers.config import Settings

__all__ = ["DEFAULT_BASE_URL", "SendGridConnector"]

DEFAULT_BASE_URL = "https://api.sendgrid.com"
_HTML = re.compile(r"<\s*(html|body|p|div|br|table|a|span|h[1-6]|strong|em|img)\b", re.IGNORECASE)


class SendGridConnector:
    """Sends `Delivery.subject` / `Delivery.body` to `Delivery.to` from a fixed sender."""

    name = "sendgrid"

    def __init__(
        self,
        api_key: str,
        sender: str,
        *,
        base_url: str | None = None,
        timeout: float = 10.0,
        concurrency: int = 32,
    ) -> None:
        if not api_key:
            raise ConnectorConfigError("SendGrid needs SENDGRID_API_KEY")
        if not sender:
            raise ConnectorConfigError("SendGrid needs HERALD_EMAIL_FROM (the sender address)")
        self.sender = sender
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.timeout = timeout
        self.concurrency = concurrency
        self._api_key = api_key
        self._client: Any = None
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> SendGridConnector:
        return cls(
            settings.sendgrid_api_key or "",
            settings.email_from or "",
            base_url=settings.sendgrid_base_url,
        )

    async def start(self) -> None:
        if self._client is None:
            client = SendGridAPIClient(api_key=self._api_key, host=self.base_url)
            # Read per request by python_http_client (and copied to the child clients it builds).
            client.client.timeout = self.timeout
            self._client = client
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="sendgrid")

    async def close(self) -> None:
        pool, self._pool, self._client = self._pool, None, None
        if pool is not None:
            # In-flight calls finish (each is bounded by the socket timeout).
            await asyncio.to_thread(pool.shutdown, wait=True)

    async def delivered(self, message_id: str) -> bool:
        return False

    async def send(self, delivery: Delivery) -> Receipt:
        if self._client is None:
            await self.start()
        mail = build_mail(delivery, self.sender)
        call = functools.partial(self._client.send, mail)
        try:
            response = await asyncio.get_running_loop().run_in_executor(self._pool, call)
        except http_errors.HTTPError as exc:
            status = int(exc.status_code)
            body = _text(exc.body)
            raise ConnectorError(
                f"sendgrid: HTTP {status} {body}".rstrip(), retryable=retryable_status(status)
            ) from exc
        except OSError as exc:  # URLError, socket timeouts, refused connections, TLS
            raise ConnectorError(f"sendgrid: {type(exc).__name__}: {exc}", retryable=True) from exc
        headers = getattr(response, "headers", None)
        provider_id = headers.get("X-Message-Id") if headers is not None else None
        return Receipt(provider_id, f"HTTP {response.status_code}")


def build_mail(delivery: Delivery, sender: str) -> Mail:
    """The Mail object for one delivery; HTML bodies go as html, anything else as text."""
    content: dict[str, str] = (
        {"html_content": delivery.body}
        if _HTML.search(delivery.body)
        else {"plain_text_content": delivery.body}
    )
    mail = Mail(
        from_email=sender,
        to_emails=delivery.to,
        subject=delivery.subject or "",
        **content,
    )
    for key, value in (
        ("herald_message_id", delivery.message_id),
        ("herald_user_id", delivery.user_id),
        ("herald_journey", delivery.journey),
        ("herald_step", delivery.step),
    ):
        mail.add_custom_arg(CustomArg(key, value))
    return mail


def _text(body: Any) -> str:
    if isinstance(body, bytes):
        return body.decode("utf-8", "replace")[:300]
    return str(body or "")[:300]
