"""What Tencent's `cgi-bin` APIs share — WeChat Official Accounts and WeCom alike.

Both hand out an access token that expires (7200 s), answer HTTP 200 with an `errcode`, and
invalidate a token when another server holding the same secret fetches a new one. So both
connectors cache the token until five minutes before it expires, fetch it with one coroutine
at a time (a burst of sends must not rotate it under each other), and retry a send once
with a fresh token when the answer says it is invalid or expired (40001, 40014, 42001).
Neither API can be asked whether a message went out, so `delivered()` is False.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import aiohttp
import orjson

from connectors.webhook import retryable_status
from engine.errors import ConnectorError

__all__ = ["TOKEN_ERRORS", "TencentApi", "errcode"]

TOKEN_ERRORS = frozenset({40001, 40014, 42001})
_REFRESH_MARGIN_S = 300.0


class TencentApi:
    """The HTTP session, token cache and error mapping; subclasses say what to send."""

    name: ClassVar[str]
    token_path: ClassVar[str]
    retryable_errors: ClassVar[frozenset[int]]

    def __init__(
        self, base_url: str, *, timeout: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = asyncio.Lock()

    def token_params(self) -> dict[str, str]:
        """The query of the token request (the app's id and secret)."""
        raise NotImplementedError

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def delivered(self, message_id: str) -> bool:
        return False

    async def post_with_token(self, path: str, payload: Any) -> dict[str, Any]:
        """POST `payload` with the current token; the answer when its errcode is 0."""
        for attempt in (1, 2):
            token = await self._access_token()
            answer = await self._call("POST", path, params={"access_token": token}, json=payload)
            code = errcode(answer)
            if code == 0:
                return answer
            if code in TOKEN_ERRORS:
                if self._token == token:
                    self._token = None
                if attempt == 1:
                    continue
                # Rejected twice with fresh tokens: someone keeps rotating it; try again later.
                raise self.error("send", answer, retryable=True)
            raise self.error("send", answer)
        raise AssertionError("unreachable")  # pragma: no cover

    def error(
        self, what: str, answer: Mapping[str, Any], *, retryable: bool = False
    ) -> ConnectorError:
        """The connector error for an answer with a non-zero errcode."""
        code = errcode(answer)
        message = answer.get("errmsg") or "no access_token in the answer"
        return ConnectorError(
            f"{self.name} {what}: errcode {code} {message}",
            retryable=retryable or code in self.retryable_errors,
        )

    async def _access_token(self) -> str:
        if self._token is not None and self._clock() < self._token_expires:
            return self._token
        async with self._token_lock:
            if self._token is not None and self._clock() < self._token_expires:
                return self._token
            answer = await self._call("GET", self.token_path, params=self.token_params())
            token = answer.get("access_token")
            if errcode(answer) != 0 or not isinstance(token, str) or not token:
                raise self.error(self.token_path.rsplit("/", 1)[-1], answer)
            expires_in = float(answer.get("expires_in") or 7200)
            self._token = token
            self._token_expires = self._clock() + max(expires_in - _REFRESH_MARGIN_S, 0.0)
            return token

    async def _call(
        self, method: str, path: str, *, params: Mapping[str, str], json: Any = None
    ) -> dict[str, Any]:
        if self._session is None:
            await self.start()
        assert self._session is not None
        name = self.name
        data = orjson.dumps(json) if json is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            async with self._session.request(
                method, f"{self.base_url}{path}", params=params, data=data, headers=headers
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            kind = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
            raise ConnectorError(f"{name} {path}: {kind} {exc}".rstrip(), retryable=True) from exc
        if not 200 <= status < 300:
            retryable = retryable_status(status)
            raise ConnectorError(f"{name} {path}: HTTP {status}", retryable=retryable)
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ConnectorError(f"{name} {path}: answer is not JSON", retryable=True) from exc
        if not isinstance(answer, dict):
            raise ConnectorError(f"{name} {path}: answer is not an object", retryable=True)
        return answer


def errcode(answer: Mapping[str, Any]) -> int:
    """The answer's errcode (absent means 0; garbage counts as "busy", -1)."""
    try:
        return int(answer.get("errcode") or 0)
    except (TypeError, ValueError):
        return -1
