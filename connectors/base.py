"""The contract between the dispatcher and anything that delivers a message.

A connector turns one `Delivery` into one provider call. The dispatcher owns dedupe,
retries and dead-lettering; a connector only says how a call went: a `Receipt`, or a
`ConnectorError` whose `retryable` flag is the connector's judgement of the provider's
answer (5xx, 429, timeouts and connection errors are worth retrying; other 4xx are not).

`delivered()` exists for the one window the dispatcher cannot close on its own: a worker
that died after the provider call but before recording "sent". A connector that can look a
message id up (the outbox) answers exactly; providers without idempotency answer False,
which makes that window at-least-once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["BatchConnector", "Connector", "Delivery", "Receipt"]

_REQUIRED = ("message_id", "user_id", "journey", "step", "channel", "to", "body")
_OPTIONAL = ("subject", "variant")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One rendered message, as a connector needs it (a `herald.actions` record, checked)."""

    message_id: str
    user_id: str
    journey: str
    step: str
    channel: str
    to: str
    subject: str | None
    body: str
    variant: str | None
    meta: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_action(cls, action: Mapping[str, Any]) -> Delivery:
        """Build from an action dict; KeyError/TypeError on a malformed record (dead-lettered)."""
        if not isinstance(action, Mapping):
            raise TypeError(f"action must be an object, not {type(action).__name__}")
        values: dict[str, Any] = {}
        for name in _REQUIRED:
            value = action[name]
            if not isinstance(value, str):
                raise TypeError(f"action field {name!r} must be a string")
            values[name] = value
        for name in _OPTIONAL:
            value = action.get(name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"action field {name!r} must be a string or null")
            values[name] = value
        meta = action.get("meta") or {}
        if not isinstance(meta, Mapping):
            raise TypeError("action field 'meta' must be an object")
        if not values["message_id"]:
            raise ValueError("action field 'message_id' is empty")
        return cls(meta=dict(meta), **values)


@dataclass(frozen=True, slots=True)
class Receipt:
    """A provider accepted the message.

    `provider_id` is the provider's own id when it gives one (SendGrid X-Message-Id, Twilio
    SID, WeChat msgid). `duplicate` is True when the connector knew the message id already
    and did not send it again (the outbox does), so callers can count it as deduplicated.
    """

    provider_id: str | None
    detail: str = ""
    duplicate: bool = False


@runtime_checkable
class Connector(Protocol):
    """What the dispatcher calls; `connectors.fake.RecordingConnector` is the in-memory fake."""

    name: str

    async def start(self) -> None:
        """Open sessions/files; called once before the first send."""

    async def send(self, delivery: Delivery) -> Receipt:
        """Deliver once; raise `engine.errors.ConnectorError` on failure."""
        ...

    async def delivered(self, message_id: str) -> bool:
        """Whether this message id certainly went out before; False when unknowable."""
        ...

    async def close(self) -> None:
        """Release sessions/files; the connector is not used afterwards."""


@runtime_checkable
class BatchConnector(Connector, Protocol):
    """A connector that is cheaper per batch; the dispatcher uses `send_many` when present."""

    async def send_many(self, deliveries: Sequence[Delivery]) -> list[Receipt | Exception]:
        """One outcome per delivery, in order; failures are returned, not raised."""
        ...
