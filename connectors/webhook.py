"""The `webhook` channel: one HTTP request per message, to the URL the journey rendered.

The receiver sees the message id twice, as `Idempotency-Key` (the de-facto convention
Stripe-style APIs honour) and as `X-Herald-Message-Id`: the dispatcher may resend after a
timeout or a crash, and only the receiver can then drop the duplicate. Herald itself cannot
ask a URL whether it already got a message, so `delivered()` is False (at-least-once in
that window, as for other providers without a lookup).

Retryable: 408, 429, 5xx, timeouts, connection errors. Every other 4xx, a non-http(s) URL,
or a redirect loop is permanent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from multidict import CIMultiDict

from connectors.base import Delivery, Receipt
from engine.errors import ConnectorError

if TYPE_CHECKING:
    from workers.config import Settings

__all__ = ["DEFAULT_TIMEOUT_S", "WebhookConnector", "retryable_status"]

DEFAULT_TIMEOUT_S = 10.0
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_EXCERPT = 300


def retryable_status(status: int) -> bool:
    """The HTTP answers worth trying again: the provider may accept the same request later."""
    return status in (408, 425, 429) or status >= 500


class WebhookConnector:
    """Calls `delivery.to` with `meta.method` / `meta.headers` and the rendered body."""

    name = "webhook"

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        user_agent: str = "Herald-Webhook/1",
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        """`session`: share one (tests, or an app that pools connections); it is not closed."""
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.user_agent = user_agent
        self._session = session
        self._owns_session = session is None

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookConnector:
        return cls()

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
            self._owns_session = True

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    async def delivered(self, message_id: str) -> bool:
        return False

    async def send(self, delivery: Delivery) -> Receipt:
        url = _checked_url(delivery.to)
        method, headers = _method_and_headers(delivery)
        headers.setdefault("User-Agent", self.user_agent)
        headers["Idempotency-Key"] = delivery.message_id
        headers["X-Herald-Message-Id"] = delivery.message_id
        data: bytes | None = None
        if delivery.body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            data = delivery.body.encode("utf-8")
            headers.setdefault("Content-Type", _content_type(delivery.body))
        if self._session is None:
            await self.start()
        assert self._session is not None
        try:
            async with self._session.request(
                method, url, data=data, headers=headers, timeout=self.timeout
            ) as response:
                excerpt = await response.content.read(_EXCERPT)
                status = response.status
        except aiohttp.InvalidURL as exc:
            raise ConnectorError(f"webhook: invalid URL {url!r}: {exc}", retryable=False) from exc
        except aiohttp.TooManyRedirects as exc:
            raise ConnectorError(f"webhook: redirect loop at {url}", retryable=False) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            kind = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
            raise ConnectorError(f"webhook {method} {url}: {kind} {exc}", retryable=True) from exc
        if 200 <= status < 300:
            return Receipt(None, f"HTTP {status}")
        text = excerpt.decode("utf-8", "replace").strip()
        raise ConnectorError(
            f"webhook {method} {url}: HTTP {status} {text}".rstrip(),
            retryable=retryable_status(status),
        )


def _checked_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ConnectorError(f"webhook: only http(s) URLs are called, not {url!r}", retryable=False)
    return url


def _method_and_headers(delivery: Delivery) -> tuple[str, CIMultiDict[str]]:
    meta: Mapping[str, Any] = delivery.meta
    method = str(meta.get("method") or "POST").upper()
    if method not in _METHODS:
        raise ConnectorError(f"webhook: unsupported method {method!r}", retryable=False)
    raw = meta.get("headers") or {}
    if not isinstance(raw, Mapping):
        raise ConnectorError("webhook: meta.headers must be an object", retryable=False)
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in raw.items():
        if "\r" in str(key) or "\n" in str(key) or "\r" in str(value) or "\n" in str(value):
            raise ConnectorError(f"webhook: header {key!r} has a line break", retryable=False)
        headers[str(key)] = str(value)
    return method, headers


def _content_type(body: str) -> str:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return "text/plain; charset=utf-8"
    return "application/json"
