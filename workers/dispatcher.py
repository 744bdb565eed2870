"""The dispatcher's batch step: actions in, deliveries out, each message at most once.

Exactly-once effect per message id, with at-least-once consumption:
  1. claim every message of the batch in ONE round trip: `SET msg "pending" NX GET`;
     a message already `sent` (or `failed` for good) is a duplicate and is dropped;
  2. a message found `pending` was being sent when a worker died: the connector is asked
     whether it went out (the outbox knows exactly; providers with idempotency keys can
     tell too) before it is sent again;
  3. deliver, retrying retryable errors with exponential backoff and jitter;
  4. mark outcomes in ONE round trip (`sent`, or `failed` + a dead letter).
Offsets are committed by the caller only after 4.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import redis.asyncio as aioredis

from connectors.base import Connector, Delivery, Receipt
from connectors.registry import Connectors
from engine.errors import ConnectorError
from workers import keys

log = logging.getLogger(__name__)

MARK_TTL_S = 30 * 24 * 3600
PENDING, SENT, FAILED = b"pending", b"sent", b"failed"


@dataclass
class RetryPolicy:
    """Backoff for retryable provider errors; after the last attempt the message is dead."""

    attempts: int = 4
    base_delay: float = 0.2
    factor: float = 4.0
    max_delay: float = 10.0

    def delay(self, attempt: int) -> float:
        """Full jitter: spreads a provider's recovery load."""
        ceiling = min(self.max_delay, self.base_delay * self.factor**attempt)
        return random.uniform(ceiling / 2, ceiling)


@dataclass
class DispatchReport:
    """What one batch did, for metrics."""

    sent: int = 0
    deduplicated: int = 0
    failed: int = 0
    retried: int = 0
    by_status: dict[tuple[str, str], int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    dead_letters: list[bytes] = field(default_factory=list)
    sent_by_journey: dict[str, int] = field(default_factory=dict)

    @property
    def handled(self) -> int:
        """Actions this batch finished with, whatever the outcome."""
        return self.sent + self.deduplicated + self.failed

    def note(self, channel: str, status: str) -> None:
        """Count a message outcome under herald_messages_total{channel,status}."""
        self.by_status[(channel, status)] = self.by_status.get((channel, status), 0) + 1


class Dispatcher:
    """Delivers actions through connectors with dedupe and retries."""

    def __init__(
        self,
        redis: aioredis.Redis,
        connectors: Connectors,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.redis = redis
        self.connectors = connectors
        self.retry = retry or RetryPolicy()

    def connector_for(self, channel: str) -> Connector:
        """The channel's provider, or the outbox when none is configured (runtime.md)."""
        return self.connectors.connector_for(channel)

    async def dispatch(self, values: Sequence[bytes]) -> DispatchReport:
        """Deliver one batch of `herald.actions` record values."""
        report = DispatchReport()
        actions: list[tuple[dict[str, Any], Delivery]] = []
        for value in values:
            try:
                action = orjson.loads(value)
                actions.append((action, Delivery.from_action(action)))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                report.dead_letters.append(_dead(value, "bad_action", str(exc)))
        # One claim per message id even if the batch holds a replayed duplicate.
        unique: dict[str, tuple[dict[str, Any], Delivery]] = {}
        for action, delivery in actions:
            if delivery.message_id in unique:
                report.deduplicated += 1
                report.note(delivery.channel, "deduplicated")
            else:
                unique[delivery.message_id] = (action, delivery)
        claims = await self._claim(list(unique.values()))
        todo: list[tuple[dict[str, Any], Delivery]] = []
        for (action, delivery), previous in zip(unique.values(), claims, strict=True):
            if previous in (SENT, FAILED):
                report.deduplicated += 1
                report.note(delivery.channel, "deduplicated")
            elif previous == PENDING and await self.connector_for(delivery.channel).delivered(
                delivery.message_id
            ):
                report.deduplicated += 1
                report.note(delivery.channel, "deduplicated")
                await self._mark([(action, delivery)], SENT)
            else:
                todo.append((action, delivery))
        outcomes = await self._deliver_all(todo, report)
        sent = [pair for pair, ok in zip(todo, outcomes, strict=True) if ok]
        failed = [pair for pair, ok in zip(todo, outcomes, strict=True) if not ok]
        await self._mark(sent, SENT)
        await self._mark(failed, FAILED)
        now = time.time()
        for action, delivery in sent:
            report.sent += 1
            report.note(delivery.channel, "sent")
            report.sent_by_journey[delivery.journey] = (
                report.sent_by_journey.get(delivery.journey, 0) + 1
            )
            at = action.get("at")
            if isinstance(at, str):
                report.latencies.append(max(0.0, now - datetime.fromisoformat(at).timestamp()))
        return report

    async def _claim(self, pairs: list[tuple[dict[str, Any], Delivery]]) -> list[bytes | None]:
        if not pairs:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for action, delivery in pairs:
            key = keys.sent(int(action.get("partition", 0)), delivery.message_id)
            pipe.set(key, PENDING, nx=True, get=True, ex=MARK_TTL_S)
        replies: list[bytes | None] = await pipe.execute()
        return replies

    async def _mark(self, pairs: list[tuple[dict[str, Any], Delivery]], status: bytes) -> None:
        if not pairs:
            return
        pipe = self.redis.pipeline(transaction=False)
        for action, delivery in pairs:
            key = keys.sent(int(action.get("partition", 0)), delivery.message_id)
            pipe.set(key, status, ex=MARK_TTL_S)
        await pipe.execute()

    async def _deliver_all(
        self, pairs: list[tuple[dict[str, Any], Delivery]], report: DispatchReport
    ) -> list[bool]:
        by_connector: dict[int, list[int]] = {}
        for index, (_action, delivery) in enumerate(pairs):
            by_connector.setdefault(id(self.connector_for(delivery.channel)), []).append(index)
        results: list[bool] = [False] * len(pairs)

        async def run_group(indexes: list[int]) -> None:
            connector = self.connector_for(pairs[indexes[0]][1].channel)
            send_many = getattr(connector, "send_many", None)
            if send_many is not None:
                outcomes = await send_many([pairs[i][1] for i in indexes])
                retry = []
                for i, outcome in zip(indexes, outcomes, strict=True):
                    if isinstance(outcome, ConnectorError) and not outcome.retryable:
                        self._give_up(pairs[i], outcome, report)
                    elif isinstance(outcome, Exception):
                        retry.append(i)
                    else:
                        results[i] = True
                await asyncio.gather(*(one(i, connector, first_error=True) for i in retry))
            else:
                await asyncio.gather(*(one(i, connector) for i in indexes))

        async def one(index: int, connector: Connector, *, first_error: bool = False) -> None:
            action, delivery = pairs[index]
            results[index] = await self._deliver(connector, action, delivery, report, first_error)

        await asyncio.gather(*(run_group(ix) for ix in by_connector.values()))
        return results

    async def _deliver(
        self,
        connector: Connector,
        action: dict[str, Any],
        delivery: Delivery,
        report: DispatchReport,
        already_failed: bool = False,
    ) -> bool:
        start = 1 if already_failed else 0
        last: Exception | None = None
        for attempt in range(start, self.retry.attempts):
            if attempt:
                report.retried += 1
                report.note(delivery.channel, "retried")
                await asyncio.sleep(self.retry.delay(attempt - 1))
            try:
                receipt: Receipt = await connector.send(delivery)
            except ConnectorError as exc:
                last = exc
                if not exc.retryable:
                    break
                continue
            except Exception as exc:  # a connector bug must not lose the message silently
                last = exc
                break
            log.debug("delivered %s via %s: %s", delivery.message_id, connector.name, receipt)
            return True
        self._give_up((action, delivery), last, report)
        return False

    @staticmethod
    def _give_up(
        pair: tuple[dict[str, Any], Delivery], error: Exception | None, report: DispatchReport
    ) -> None:
        """A message that will not be delivered: counted and dead-lettered, never dropped."""
        action, delivery = pair
        report.failed += 1
        report.note(delivery.channel, "failed")
        report.dead_letters.append(
            _dead(orjson.dumps(action), "delivery_failed", f"{type(error).__name__}: {error}")
        )


def _dead(raw: bytes, reason: str, detail: str) -> bytes:
    return orjson.dumps(
        {
            "reason": reason,
            "detail": detail,
            "source": "herald.actions",
            "raw": raw.decode("utf-8", "replace"),
            "at": datetime.now().astimezone().isoformat(),
        }
    )
