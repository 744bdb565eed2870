"""Routes the outside world calls instead of backends: unsubscribe links and provider webhooks.

None of them takes an API key. An end user clicks the unsubscribe link, so the link itself is
signed per user and channel (`engine.unsubscribe`); SendGrid and Twilio sign their callbacks,
checked here with their own SDKs' verifiers. Each call becomes an ordinary Herald event for the
user, produced like any other (acknowledged by the broker before the answer), so the processor
applies it in the user's partition order:

* `unsubscribe` carries `traits.consent.<channel> = false`; the core merges consent per channel,
  so this sets exactly that flag and later sends on that channel are suppressed.
* `message.delivered|opened|clicked|bounced|failed` carry `message_id, journey, step, channel,
  provider_event` in their properties, for goals, branches and metrics.

Event ids are derived from what the sender gives (the token; SendGrid's `sg_event_id`; Twilio's
`MessageSid` with the status), so provider retries, and a link clicked twice (or GET then the
RFC 8058 one-click POST), are deduplicated downstream. When the broker is unreachable the answer
is 503, which both providers retry.

A provider whose secret is not configured has its webhook disabled (404 with a hint): an
unverifiable webhook would let anyone unsubscribe anyone.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from hashlib import blake2b
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from sendgrid.helpers.eventwebhook import EventWebhook
from twilio.request_validator import RequestValidator

from engine.errors import InvalidEvent, ServiceError
from engine.events import Event, parse_event
from engine.unsubscribe import verify_token
from workers.config import Settings
from workers.producer import EventProducer

if TYPE_CHECKING:
    from workers.api import ApiMetrics

__all__ = [
    "SENDGRID_SIGNATURE_HEADER",
    "SENDGRID_TIMESTAMP_HEADER",
    "TWILIO_SIGNATURE_HEADER",
    "register_webhooks",
    "sendgrid_public_key",
    "unsubscribe_event",
]

log = logging.getLogger(__name__)

UNSUBSCRIBE_PATH: Final = "/v1/unsubscribe"
SENDGRID_PATH: Final = "/v1/webhooks/sendgrid"
TWILIO_PATH: Final = "/v1/webhooks/twilio"
SENDGRID_SIGNATURE_HEADER: Final = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP_HEADER: Final = "X-Twilio-Email-Event-Webhook-Timestamp"
TWILIO_SIGNATURE_HEADER: Final = "X-Twilio-Signature"

# SendGrid event -> Herald event type; events not listed (processed, deferred, ...) are ignored.
SENDGRID_EVENTS: Final = {
    "delivered": "message.delivered",
    "open": "message.opened",
    "click": "message.clicked",
    "bounce": "message.bounced",
    "dropped": "message.bounced",
    "spamreport": "unsubscribe",
    "unsubscribe": "unsubscribe",
    "group_unsubscribe": "unsubscribe",
}
# Twilio MessageStatus -> Herald event type; others (queued, sent, ...) are ignored.
TWILIO_STATUSES: Final = {
    "delivered": "message.delivered",
    "failed": "message.failed",
    "undelivered": "message.failed",
}
# The custom args Herald's SendGrid connector puts on every mail (connectors/sendgrid.py).
SENDGRID_ARGS: Final = {
    "user_id": "herald_user_id",
    "message_id": "herald_message_id",
    "journey": "herald_journey",
    "step": "herald_step",
}
# The query parameters of the status callback URL Herald's Twilio connector sets.
TWILIO_ARGS: Final = {"user_id": "u", "message_id": "m", "journey": "j", "step": "s"}

_JSON: Final = "application/json"
_PAGE_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the token must not leak to whatever the page links
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
}
_PAGE: Final = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>{title}</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 34rem; margin: 4rem auto; \
padding: 0 1rem; line-height: 1.5">
<h1 style="font-size: 1.4rem">{title}</h1>
<p>{text}</p>
</body>
</html>
"""


def register_webhooks(
    app: web.Application, settings: Settings, producer: EventProducer, metrics: ApiMetrics
) -> None:
    """Add the unsubscribe and provider webhook routes (called by `workers.api.create_app`).

    ValueError when `SENDGRID_WEBHOOK_PUBLIC_KEY` is set but is not a P-256 public key: a
    misconfigured secret stops the API at start rather than refusing every webhook later.
    """
    hooks = _Webhooks(settings, producer, metrics)
    # No HEAD: link checkers and mail scanners probe with it, and it must not unsubscribe.
    app.router.add_get(UNSUBSCRIBE_PATH, hooks.unsubscribe, allow_head=False)
    app.router.add_post(UNSUBSCRIBE_PATH, hooks.unsubscribe)
    app.router.add_post(SENDGRID_PATH, hooks.sendgrid)
    app.router.add_post(TWILIO_PATH, hooks.twilio)


def unsubscribe_event(
    user_id: str, channel: str, event_id: str, properties: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The native event that turns `profile.consent.<channel>` off for the user."""
    return {
        "event_id": event_id,
        "type": "unsubscribe",
        "user_id": user_id,
        "properties": {**(properties or {}), "channel": channel},
        "traits": {"consent": {channel: False}},
    }


def sendgrid_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """The Event Webhook verification key as SendGrid shows it (base64 DER), PEM accepted too."""
    body = "".join(
        line.strip() for line in text.strip().splitlines() if not line.startswith("-----")
    )
    try:
        key = EventWebhook().convert_public_key_to_ecdsa(body)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"SENDGRID_WEBHOOK_PUBLIC_KEY is not a public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("SENDGRID_WEBHOOK_PUBLIC_KEY must be an ECDSA (P-256) public key")
    return key


class _Webhooks:
    def __init__(self, settings: Settings, producer: EventProducer, metrics: ApiMetrics) -> None:
        self._secret = settings.unsubscribe_secret
        self._public_url = settings.public_url.rstrip("/")
        self._producer = producer
        self._metrics = metrics
        # Read with getattr: the field may not exist in every Settings version.
        key_text = getattr(settings, "sendgrid_webhook_public_key", None)
        self._sendgrid_key = sendgrid_public_key(key_text) if key_text else None
        token = settings.twilio_auth_token
        self._twilio = RequestValidator(token) if token else None

    # ------------------------------------------------------------------ unsubscribe

    async def unsubscribe(self, request: web.Request) -> web.StreamResponse:
        """GET from the link, or POST from a mail client's one-click button (RFC 8058)."""
        token: object = request.query.get("token")
        if token is None and request.method == "POST":
            token = (await request.post()).get("token")
        found = verify_token(self._secret, token) if isinstance(token, str) else None
        if found is None or not isinstance(token, str):  # (the second test is for mypy)
            return _page(
                400,
                "This unsubscribe link is not valid",
                "The link is incomplete or has been altered. Open it again from the message, "
                "or copy the whole link into your browser.",
            )
        user_id, channel = found
        event_id = "unsub-" + blake2b(token.encode(), digest_size=16).hexdigest()
        accepted = await self._produce(
            [unsubscribe_event(user_id, channel, event_id)], "unsubscribe"
        )
        if accepted is None:
            return _page(
                503,
                "Please try again",
                "We could not record your request just now. Please try again in a minute.",
            )
        if not accepted:
            return _page(400, "This unsubscribe link is not valid", "The link names no user.")
        return _page(
            200,
            "Unsubscribed",
            f"You are unsubscribed from {html.escape(channel)} messages.",
        )

    # ------------------------------------------------------------------ SendGrid

    async def sendgrid(self, request: web.Request) -> web.StreamResponse:
        """SendGrid's Event Webhook: a signed JSON array of events."""
        if self._sendgrid_key is None:
            return _disabled("SendGrid", "SENDGRID_WEBHOOK_PUBLIC_KEY")
        signature = request.headers.get(SENDGRID_SIGNATURE_HEADER)
        timestamp = request.headers.get(SENDGRID_TIMESTAMP_HEADER)
        if not signature or not timestamp:
            return _unauthorized(
                f"missing {SENDGRID_SIGNATURE_HEADER} / {SENDGRID_TIMESTAMP_HEADER}"
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _json(413, {"error": "too_large"})
        if not _sendgrid_signed(self._sendgrid_key, body, signature, timestamp):
            return _unauthorized("the signature does not match")
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _json(400, {"error": "malformed_json", "detail": str(exc)})
        if not isinstance(doc, list):
            return _json(400, {"error": "bad_type", "detail": "the body must be a JSON array"})
        raws = [raw for raw in map(_from_sendgrid, doc) if raw is not None]
        ignored = len(doc) - len(raws)
        accepted = await self._produce(raws, "webhook.sendgrid")
        if accepted is None:
            return _json(503, {"error": "unavailable"})
        self._metrics.webhook("sendgrid", "accepted", accepted)
        self._metrics.webhook("sendgrid", "ignored", ignored)
        return _json(200, {"accepted": accepted, "ignored": ignored})

    # ------------------------------------------------------------------ Twilio

    async def twilio(self, request: web.Request) -> web.StreamResponse:
        """Twilio's message status callback: a signed form post to the URL the connector set."""
        if self._twilio is None:
            return _disabled("Twilio", "TWILIO_AUTH_TOKEN")
        signature = request.headers.get(TWILIO_SIGNATURE_HEADER)
        if not signature:
            return _unauthorized(f"missing {TWILIO_SIGNATURE_HEADER}")
        try:
            form = await request.post()
        except web.HTTPRequestEntityTooLarge:
            return _json(413, {"error": "too_large"})
        # Twilio signs the URL it was given (the public one, query included) plus the form.
        url = self._public_url + request.raw_path
        if not self._twilio.validate(url, form, signature):
            return _unauthorized(f"the signature does not match (checked for {url})")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        raw = _from_twilio(fields, request.query)
        accepted = await self._produce([raw] if raw is not None else [], "webhook.twilio")
        if accepted is None:
            return _json(503, {"error": "unavailable"})
        self._metrics.webhook("twilio", "accepted", accepted)
        self._metrics.webhook("twilio", "ignored", 1 - accepted)
        return _json(200, {"accepted": accepted, "ignored": 1 - accepted})

    # ------------------------------------------------------------------ shared

    async def _produce(self, raws: list[dict[str, Any]], source: str) -> int | None:
        """Validate and produce events; how many were accepted, None if the broker is down.

        An item that fails validation (it should not: Herald builds them) is dead-lettered and
        counted like an invalid client event, never dropped silently.
        """
        received_at = datetime.now(UTC)
        events: list[Event] = []
        refused: list[tuple[dict[str, Any], InvalidEvent]] = []
        for raw in raws:
            try:
                events.append(parse_event(raw, received_at=received_at))
            except InvalidEvent as exc:
                refused.append((raw, exc))
        try:
            await self._producer.send_events(events)
            for raw, problem in refused:
                await self._producer.send_dlq(
                    orjson.dumps(raw), problem.reason, problem.detail, source
                )
        except ServiceError as exc:
            log.warning("%s: refusing %d events: %s", source, len(raws), exc)
            return None
        self._metrics.accepted(events)
        for _, problem in refused:
            self._metrics.invalid(problem.reason)
        return len(events)


# --------------------------------------------------------------------------- mapping


def _sendgrid_signed(
    key: ec.EllipticCurvePublicKey, body: bytes, signature: str, timestamp: str
) -> bool:
    """SendGrid's scheme: ECDSA P-256 / SHA-256 over timestamp + payload, base64 DER."""
    try:
        payload = body.decode("utf-8")
        return bool(EventWebhook().verify_signature(payload, signature, timestamp, key))
    except (UnicodeDecodeError, ValueError):  # binascii.Error is a ValueError
        return False


def _from_sendgrid(item: Any) -> dict[str, Any] | None:
    """One SendGrid event as a Herald event, or None when it is not Herald's or not mapped."""
    if not isinstance(item, dict):
        return None
    kind = SENDGRID_EVENTS.get(str(item.get("event")))
    args = _sendgrid_args(item)
    user_id = args.get("user_id")
    if kind is None or not user_id:
        return None
    properties: dict[str, Any] = {
        "message_id": args.get("message_id"),
        "journey": args.get("journey"),
        "step": args.get("step"),
        "channel": "email",
        "provider_event": item["event"],
    }
    if isinstance(item.get("url"), str):
        properties["url"] = item["url"]
    if item.get("sg_machine_open") is True:  # e.g. Apple Mail Privacy Protection, not a reader
        properties["machine_open"] = True
    if isinstance(item.get("type"), str) and item["event"] == "bounce":
        properties["bounce_type"] = item["type"]  # bounce | blocked
    sg_event_id = item.get("sg_event_id")
    # Without SendGrid's id, the id is derived from the content (which has the timestamp).
    event_id = f"sendgrid-{sg_event_id}" if isinstance(sg_event_id, str) and sg_event_id else None
    if kind == "unsubscribe":
        raw = unsubscribe_event(user_id, "email", event_id or "", properties)
    else:
        raw = {"type": kind, "user_id": user_id, "properties": properties, "emitted": True}
        if event_id:
            raw["event_id"] = event_id
    if not raw.get("event_id"):
        raw.pop("event_id", None)
    timestamp = item.get("timestamp")
    if isinstance(timestamp, int | float) and not isinstance(timestamp, bool):
        raw["timestamp"] = timestamp
    return raw


def _sendgrid_args(item: Mapping[str, Any]) -> dict[str, str]:
    """Herald's custom args: top-level in the event (how SendGrid echoes them), or nested."""
    out: dict[str, str] = {}
    nests = [n for n in (item.get("custom_args"), item.get("unique_args")) if isinstance(n, dict)]
    for name, arg in SENDGRID_ARGS.items():
        for source in (item, *nests):
            value = source.get(arg)
            if isinstance(value, str) and value:
                out[name] = value
                break
    return out


def _from_twilio(form: Mapping[str, str], query: Mapping[str, str]) -> dict[str, Any] | None:
    """A status callback as a Herald event, or None for statuses Herald does not track."""
    status = form.get("MessageStatus", "")
    kind = TWILIO_STATUSES.get(status)
    sid = form.get("MessageSid") or form.get("SmsSid")
    user_id = query.get(TWILIO_ARGS["user_id"])
    if kind is None or not sid or not user_id:
        return None
    properties: dict[str, Any] = {
        name: query.get(arg) for name, arg in TWILIO_ARGS.items() if name != "user_id"
    }
    properties.update(channel="sms", provider_event=status, provider_message_id=sid)
    if form.get("ErrorCode"):
        properties["error_code"] = form["ErrorCode"]
    return {
        "event_id": f"twilio-{sid}-{status}",
        "type": kind,
        "user_id": user_id,
        "properties": properties,
        "emitted": True,
    }


# --------------------------------------------------------------------------- answers


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type=_JSON)


def _unauthorized(detail: str) -> web.Response:
    return _json(401, {"error": "unauthorized", "detail": detail})


def _disabled(provider: str, setting: str) -> web.Response:
    detail = f"{provider} webhooks are disabled: set {setting} to verify and accept them"
    return _json(404, {"error": "not_found", "detail": detail})


def _page(status: int, title: str, text_html: str) -> web.Response:
    """A small page for a person; `text_html` must already be escaped."""
    body = _PAGE.format(title=html.escape(title), text=text_html)
    return web.Response(
        status=status,
        text=body,
        content_type="text/html",
        charset="utf-8",
        headers=_PAGE_HEADERS,
    )
