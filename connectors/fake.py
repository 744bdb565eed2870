"""An in-memory connector, so tests of the dispatcher (and anything else that sends) need no
patching and no provider: it records every call and can be told how the next ones fail.

It deliberately does NOT deduplicate: every successful `send` is recorded, so a test can
assert that its caller never delivered a message id twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from connectors.base import Delivery, Receipt
from engine.errors import ConnectorError

if TYPE_CHECKING:
    from workers.config import Settings

__all__ = ["RecordingConnector"]


@dataclass
class _Failure:
    retryable: bool
    message: str
    after_delivery: bool


class RecordingConnector:
    """Records deliveries; `fail_next` scripts failures; `delivered()` answers from the record.

    `after_delivery=True` failures model the unknown-outcome window: the provider took the
    message (it is recorded and `delivered()` says so) but the caller sees an error.
    """

    def __init__(
        self,
        name: str = "recording",
        *,
        latency: float = 0.0,
        idempotent: bool = True,
        already_delivered: Iterable[str] = (),
    ) -> None:
        """`idempotent=False` makes `delivered()` always False, like a provider with no lookup."""
        self.name = name
        self.latency = latency
        self.idempotent = idempotent
        self.attempts: list[Delivery] = []
        self.sent: list[Delivery] = []
        self.started = False
        self.closed = False
        self._delivered: set[str] = set(already_delivered)
        self._failures: list[_Failure] = []
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> RecordingConnector:
        return cls()

    def fail_next(
        self,
        count: int = 1,
        *,
        retryable: bool = True,
        message: str = "scripted failure",
        after_delivery: bool = False,
    ) -> None:
        """Make the next `count` sends raise `ConnectorError(message, retryable=...)`."""
        self._failures.extend(_Failure(retryable, message, after_delivery) for _ in range(count))

    @property
    def sent_ids(self) -> list[str]:
        return [d.message_id for d in self.sent]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Delivery]:
        """Wait until `count` deliveries are recorded (for tests driving a background worker)."""
        if len(self.sent) < count:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append((count, future))
            await asyncio.wait_for(future, timeout)
        return list(self.sent)

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    async def delivered(self, message_id: str) -> bool:
        return self.idempotent and message_id in self._delivered

    async def send(self, delivery: Delivery) -> Receipt:
        self.attempts.append(delivery)
        if self.latency:
            await asyncio.sleep(self.latency)
        failure = self._failures.pop(0) if self._failures else None
        if failure is not None and not failure.after_delivery:
            raise ConnectorError(failure.message, retryable=failure.retryable)
        self.sent.append(delivery)
        self._delivered.add(delivery.message_id)
        self._wake()
        if failure is not None:
            raise ConnectorError(failure.message, retryable=failure.retryable)
        return Receipt(f"{self.name}-{len(self.sent)}", "recorded")

    def _wake(self) -> None:
        still: list[tuple[int, asyncio.Future[None]]] = []
        for count, future in self._waiters:
            if len(self.sent) >= count:
                if not future.done():
                    future.set_result(None)
            else:
                still.append((count, future))
        self._waiters = still
