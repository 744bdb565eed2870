"""The HTTP ingest API: native and Segment-compatible event endpoints, health and metrics.

An answer of 202 means every accepted event is acknowledged by the broker (acks=all): nothing
accepted is lost. Invalid items are answered with their reasons, counted, and dead-lettered, while
the valid items of the same batch still go through. If the broker cannot be reached nothing is
accepted (503) and the client retries; retried events keep their `event_id` (given, Segment's
`messageId`, or derived from the content) so the processor deduplicates them.

Segment clients work unchanged: they post to `/v1/batch` (or `/v1/track`, ..., or analytics.js's
short `/v1/t`, `/v1/b`, ...) with the write key as the Basic-auth user name or, from browsers, as
`writeKey` in the body, possibly gzip-encoded, and are answered the way Segment answers (200).

`/v1/profiles` imports traits without any activity: they travel as `profile` control records
(see `workers.records`), so no journey sees an event, while segments and date triggers do see
the new traits. Unsubscribe links and provider webhooks take no API key (they are signed
instead) and live in `workers.api_webhooks`.

Metrics go through `workers.telemetry.Telemetry` (prometheus_client), the registry every worker
uses; `/metrics` serves it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import ipaddress
import logging
import time
import weakref
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from engine.errors import InvalidEvent, ServiceError
from engine.events import Event, parse_event
from workers.api_webhooks import register_webhooks
from workers.config import Settings, kafka_bootstrap
from workers.producer import EventProducer
from workers.telemetry import Telemetry
from workers.topics import ensure_topics

__all__ = ["ApiMetrics", "create_app", "post_event", "run_api"]

log = logging.getLogger(__name__)

SOURCE: Final = "api"
NO_KEYS_HINT: Final = (
    "no API keys are configured, so only loopback clients are accepted; "
    "set HERALD_API_KEYS to accept others"
)
# Segment message types by endpoint, including analytics.js's one-letter paths.
SEGMENT_ROUTES: Final = {
    "track": "track",
    "identify": "identify",
    "page": "page",
    "screen": "screen",
    "group": "group",
    "alias": "alias",
    "t": "track",
    "i": "identify",
    "p": "page",
    "s": "screen",
    "g": "group",
    "a": "alias",
}
_JSON: Final = "application/json"
# Event types come from clients: past this many distinct ones, further types are counted as
# OTHER_TYPE, so a client cannot grow the API's memory or a scrape without bound.
MAX_TYPE_SERIES: Final = 1000
OTHER_TYPE: Final = "_other"
REQUEST_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
PROFILE_FIELDS: Final = frozenset({"user_id", "traits"})


class ApiMetrics:
    """The API's metrics on a `Telemetry` registry: the contract's event counters, plus request
    latency and webhook outcomes, which only the API has."""

    def __init__(self, telemetry: Telemetry, *, max_types: int = MAX_TYPE_SERIES) -> None:
        self.telemetry = telemetry
        self._max_types = max_types
        self._types: set[str] = set()
        registry = telemetry.registry
        self.request_seconds = Histogram(
            "herald_api_request_seconds",
            "HTTP API requests, by route template and status",
            ["route", "status"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.webhook_items = Counter(
            "herald_webhook_items",
            "Provider webhook items: accepted as events, or ignored (not Herald's, not mapped)",
            ["provider", "result"],
            registry=registry,
        )

    @classmethod
    def of(cls, telemetry: Telemetry) -> ApiMetrics:
        """One per Telemetry: the API's families can be registered only once per registry."""
        metrics = _API_METRICS.get(telemetry)
        if metrics is None:
            metrics = _API_METRICS[telemetry] = cls(telemetry)
        return metrics

    def accepted(self, events: Iterable[Event]) -> None:
        for kind, n in Tally(e.type for e in events).items():
            self.telemetry.events.labels(self._type_label(kind)).inc(n)

    def invalid(self, reason: str, amount: int = 1) -> None:
        self.telemetry.invalid.labels(reason).inc(amount)

    def webhook(self, provider: str, result: str, amount: int = 1) -> None:
        if amount:
            self.webhook_items.labels(provider, result).inc(amount)

    def _type_label(self, kind: str) -> str:
        if kind in self._types:
            return kind
        if len(self._types) < self._max_types:
            self._types.add(kind)
            return kind
        return OTHER_TYPE


_API_METRICS: weakref.WeakKeyDictionary[Telemetry, ApiMetrics] = weakref.WeakKeyDictionary()


def create_app(
    settings: Settings, producer: EventProducer, *, metrics: Telemetry | None = None
) -> web.Application:
    """The aiohttp application; other workers may add routes before it starts."""
    api_metrics = ApiMetrics.of(metrics if metrics is not None else Telemetry())
    ingest = _Ingest(settings, producer, api_metrics)
    app = web.Application(
        client_max_size=settings.max_body_bytes, middlewares=[_timed(api_metrics)]
    )
    app.router.add_post("/v1/events", ingest.events)
    app.router.add_post("/v1/batch", ingest.segment_batch)
    app.router.add_post("/v1/b", ingest.segment_batch)
    for path, kind in SEGMENT_ROUTES.items():
        app.router.add_post(f"/v1/{path}", ingest.segment_single(kind))
    app.router.add_post("/v1/profiles", ingest.profiles)
    register_webhooks(app, settings, producer, api_metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", ingest.readyz)
    app.router.add_get("/metrics", ingest.metrics_text)
    return app


async def run_api(settings: Settings, *, metrics: Telemetry | None = None) -> None:
    """Serve until cancelled; in-flight requests finish (and are acknowledged) before exit."""
    bootstrap = kafka_bootstrap(settings)
    await ensure_topics(bootstrap, settings.partitions)
    producer = EventProducer(bootstrap)
    await producer.start()
    runner = web.AppRunner(create_app(settings, producer, metrics=metrics), access_log=None)
    try:
        await runner.setup()
        await web.TCPSite(runner, settings.api_host, settings.api_port).start()
        log.info("HTTP API on http://%s:%d", settings.api_host, settings.api_port)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await producer.stop()


async def post_event(
    base_url: str, event: dict[str, Any], api_key: str | None
) -> tuple[int, dict[str, Any]]:
    """POST one event to `/v1/events` (for `herald emit`); the status and the JSON answer."""
    headers = {"Content-Type": _JSON}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    url = base_url.rstrip("/") + "/v1/events"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            session.post(url, data=orjson.dumps(event), headers=headers) as response,
        ):
            body = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ServiceError(f"cannot reach the Herald API at {base_url}: {exc}") from exc
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        answer = {"error": "unexpected_answer", "detail": body[:500].decode(errors="replace")}
    return status, answer


# --------------------------------------------------------------------------- handlers


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Answer = tuple[int, dict[str, Any]]  # status and JSON body, before the route shapes it

UNAUTHORIZED: Final[Answer] = (401, {"error": "unauthorized"})
UNAVAILABLE: Final[Answer] = (503, {"error": "unavailable"})


class _Ingest:
    def __init__(self, settings: Settings, producer: EventProducer, metrics: ApiMetrics) -> None:
        self._keys = [k.encode() for k in settings.api_keys]
        self._max_body = settings.max_body_bytes
        self._producer = producer
        self._metrics = metrics

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Native: one event, or `{"batch": [...]}`; 202 once all accepted ones are stored."""
        return _json(*await self._ingest(request, segment_type=None, batch_only=False))

    async def segment_batch(self, request: web.Request) -> web.StreamResponse:
        return _segment_json(*await self._ingest(request, segment_type=None, batch_only=True))

    def segment_single(self, kind: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            return _segment_json(*await self._ingest(request, segment_type=kind, batch_only=False))

        return handler

    async def profiles(self, request: web.Request) -> web.StreamResponse:
        """`{"profiles": [{"user_id", "traits"}, ...]}`: 202 once all valid ones are stored."""
        refused, body, doc = await self._read(request)
        if refused is not None:
            return _json(*refused)
        if not isinstance(doc, dict) or "profiles" not in doc:
            problem = InvalidEvent("missing_profiles", 'the body must be {"profiles": [...]}')
            return _json(*await self._refuse_body(body, problem))
        items = doc["profiles"]
        if not isinstance(items, list):
            problem = InvalidEvent("bad_type", "profiles: must be an array")
            return _json(*await self._refuse_body(body, problem))
        return _json(*await self._accept_profiles(items))

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        if await self._producer.ready():
            return _json(200, {"status": "ready"})
        return _json(503, {"status": "unavailable"})

    async def metrics_text(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=self._metrics.telemetry.render(),
            headers={"Content-Type": CONTENT_TYPE_LATEST, "X-Content-Type-Options": "nosniff"},
        )

    async def _ingest(
        self, request: web.Request, *, segment_type: str | None, batch_only: bool
    ) -> Answer:
        refused, body, doc = await self._read(request)
        if refused is not None:
            return refused
        items, problem = _items(doc, segment_type=segment_type, batch_only=batch_only)
        if problem is not None:
            return await self._refuse_body(body, problem)
        return await self._accept(items)

    async def _read(self, request: web.Request) -> tuple[Answer | None, bytes, Any]:
        """An authorised request's body and its JSON, or the answer refusing it."""
        header_key = _request_key(request)
        if self._keys:
            # Browsers (analytics.js) send the key in the body: only those requests are read
            # before being authorised.
            if header_key is not None and not self._known(header_key):
                return UNAUTHORIZED, b"", None
        elif not _is_loopback(request.remote):
            return (401, {"error": "unauthorized", "detail": NO_KEYS_HINT}), b"", None
        if request.content_length is not None and request.content_length > self._max_body:
            return self._too_large(), b"", None
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(), b"", None
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if self._keys and header_key is None:
                return UNAUTHORIZED, body, None
            problem = InvalidEvent("malformed_json", str(exc))
            return await self._refuse_body(body, problem), body, None
        if self._keys and header_key is None and not self._known(_body_key(doc)):
            return UNAUTHORIZED, body, doc
        return None, body, doc

    async def _accept(self, items: list[Any]) -> Answer:
        received_at = datetime.now(UTC)
        events: list[Event] = []
        errors: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                events.append(parse_event(item, received_at=received_at))
            except InvalidEvent as exc:
                errors.append({"index": index, "reason": exc.reason, "detail": exc.detail})
        try:
            await asyncio.gather(
                self._producer.send_events(events),
                *(self._dead_letter(orjson.dumps(items[e["index"]]), e) for e in errors),
            )
        except ServiceError as exc:
            log.warning("refusing %d events: %s", len(items), exc)
            return UNAVAILABLE
        self._metrics.accepted(events)
        self._count_invalid(errors)
        if errors:
            return 400, {"accepted": len(events), "errors": errors}
        return 202, {"accepted": len(events)}

    async def _accept_profiles(self, items: list[Any]) -> Answer:
        """Like `_accept`: invalid items are answered, counted and dead-lettered."""
        profiles: list[tuple[str, dict[str, Any]]] = []
        errors: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                profiles.append(_profile(item))
            except InvalidEvent as exc:
                errors.append({"index": index, "reason": exc.reason, "detail": exc.detail})
        try:
            await asyncio.gather(
                self._producer.send_profiles(profiles, time.time()),
                *(self._dead_letter(orjson.dumps(items[e["index"]]), e) for e in errors),
            )
        except ServiceError as exc:
            log.warning("refusing %d profiles: %s", len(items), exc)
            return UNAVAILABLE
        self._count_invalid(errors)
        if errors:
            return 400, {"accepted": len(profiles), "errors": errors}
        return 202, {"accepted": len(profiles)}

    def _count_invalid(self, errors: list[dict[str, Any]]) -> None:
        for reason, n in Tally(e["reason"] for e in errors).items():
            self._metrics.invalid(reason, n)

    async def _dead_letter(self, raw: bytes, error: dict[str, Any]) -> None:
        await self._producer.send_dlq(raw, error["reason"], error["detail"], SOURCE)

    async def _refuse_body(self, body: bytes, problem: InvalidEvent) -> Answer:
        """A body that holds no usable event at all: dead-lettered whole, answered 400."""
        try:
            await self._producer.send_dlq(body, problem.reason, problem.detail, SOURCE)
        except ServiceError as exc:
            log.warning("cannot dead-letter a refused body: %s", exc)
            return UNAVAILABLE
        self._metrics.invalid(problem.reason)
        return 400, {"error": problem.reason, "detail": problem.detail}

    def _too_large(self) -> Answer:
        self._metrics.invalid("too_large")
        detail = f"the body is larger than {self._max_body} bytes (HERALD_MAX_BODY_BYTES)"
        return 413, {"error": "too_large", "detail": detail}

    def _known(self, key: object) -> bool:
        if not isinstance(key, str) or not key:
            return False
        candidate = key.encode()
        # compare against every key so the time taken says nothing about which one matched
        return sum(hmac.compare_digest(candidate, k) for k in self._keys) > 0


async def _healthz(request: web.Request) -> web.StreamResponse:
    return _json(200, {"status": "ok"})


def _timed(metrics: ApiMetrics) -> Middleware:
    """Middleware observing every request's latency by route template (not raw path: bounded)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away (nginx's code for it), not a server error
            raise
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            elapsed = time.perf_counter() - started
            metrics.request_seconds.labels(route, str(status)).observe(elapsed)

    return middleware


# --------------------------------------------------------------------------- helpers


def _items(
    doc: Any, *, segment_type: str | None, batch_only: bool
) -> tuple[list[Any], InvalidEvent | None]:
    """The raw items of a body, or the reason the whole body is unusable."""
    if isinstance(doc, dict) and "batch" in doc and segment_type is None:
        batch = doc["batch"]
        if not isinstance(batch, list):
            return [], InvalidEvent("bad_type", "batch: must be an array")
        return batch, None
    if batch_only:
        return [], InvalidEvent("missing_batch", 'the body must be {"batch": [...]}')
    if segment_type is not None and isinstance(doc, dict):
        doc["type"] = segment_type  # the endpoint names the Segment call
    return [doc], None


def _profile(item: Any) -> tuple[str, dict[str, Any]]:
    """One profile import item checked: (user_id, traits), or the reason it is refused."""
    if not isinstance(item, dict):
        raise InvalidEvent("not_an_object", "a profile must be a JSON object")
    unknown = sorted(k for k in item if k not in PROFILE_FIELDS)
    if unknown:
        hint = ' (a profile is {"user_id", "traits"})'
        raise InvalidEvent("unknown_field", f"unknown field '{unknown[0]}'" + hint)
    user_id = item.get("user_id")
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        user_id = str(user_id)
    if user_id is None or user_id == "":
        raise InvalidEvent("missing_user_id", "user_id: a non-empty user id is required")
    if not isinstance(user_id, str):
        raise InvalidEvent("bad_type", "user_id: must be a string or integer")
    traits = item.get("traits")
    if not isinstance(traits, dict):
        raise InvalidEvent("bad_type", "traits: must be an object")
    return user_id, traits


def _request_key(request: web.Request) -> str | None:
    """The key from `Authorization: Bearer KEY` or Basic `KEY:` (Segment's form); None if absent."""
    header = request.headers.get("Authorization")
    if not header:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return credentials.strip()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return decoded.partition(":")[0]
    return ""


def _body_key(doc: Any) -> object:
    """analytics.js puts the write key in the body: in the envelope or in each message."""
    if not isinstance(doc, dict):
        return None
    if "writeKey" in doc:
        return doc["writeKey"]
    batch = doc.get("batch")
    if isinstance(batch, list) and batch and isinstance(batch[0], dict):
        return batch[0].get("writeKey")
    return None


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    return False


def _json(status: int, body: dict[str, Any]) -> web.Response:
    response = web.Response(status=status, body=orjson.dumps(body), content_type=_JSON)
    if status == 413:  # the rest of the body was not read: do not reuse the connection
        response.force_close()
    return response


def _segment_json(status: int, body: dict[str, Any]) -> web.Response:
    """Answer as Segment's API does: older Segment libraries count only a 200 as delivered,
    and read `code` and `message` from an error (4xx: not retried; 5xx: retried)."""
    if status == 202:
        return _json(200, {"success": True, **body})
    if status >= 400:
        errors = body.get("errors", ())
        message = body.get("detail") or f"{len(errors)} invalid event(s), see errors"
        body = {**body, "code": body.get("error", "invalid_event"), "message": message}
    return _json(status, body)
