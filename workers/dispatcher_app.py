"""The dispatcher role as a faust-streaming app: consume herald.actions, deliver, dedupe."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis

from connectors.registry import build_connectors
from workers import stats
from workers.config import Settings, kafka_bootstrap, make_faust_app
from workers.dispatcher import Dispatcher, DispatchReport
from workers.kafka_sink import KafkaSink
from workers.periodic import logged
from workers.telemetry import Telemetry, serve_metrics
from workers.topics import ACTIONS, ensure_topics

log = logging.getLogger(__name__)

BATCH_RECORDS = 500
BATCH_WITHIN_S = 0.005
RETRY_MAX_S = 5.0


class DispatcherService:
    """Connectors, dedupe store, dead-letter producer and metrics of one dispatcher process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = aioredis.Redis.from_url(
            settings.redis_url, socket_timeout=60, socket_connect_timeout=5
        )
        self.sink = KafkaSink(kafka_bootstrap(settings), client_id="herald-dispatcher")
        self.telemetry = Telemetry()
        self.dispatcher: Dispatcher | None = None
        self._started = asyncio.Event()
        self._lock = asyncio.Lock()
        self._runner: Any = None
        self.metrics_port: int | None = None

    async def start(self) -> None:
        """Connect producer and connectors, serve /metrics (idempotent)."""
        async with self._lock:
            if self._started.is_set():
                return
            await self.sink.start()
            connectors = build_connectors(self.settings)
            await connectors.start()
            log.info("channels: %s", connectors.describe())
            self.dispatcher = Dispatcher(self.redis, connectors)
            self._runner, self.metrics_port = await serve_metrics(
                self.telemetry, "127.0.0.1", self.settings.metrics_port
            )
            self._started.set()

    async def stop(self) -> None:
        """Release everything."""
        if self.dispatcher is not None:
            await self.dispatcher.connectors.close()
        if self._started.is_set():
            await self.sink.stop()
            if self._runner is not None:
                await self._runner.cleanup()
        await self.redis.aclose()

    async def handle(self, values: list[bytes]) -> None:
        """Deliver a batch; infrastructure failures are retried, never skipped."""
        await self.start()
        assert self.dispatcher is not None
        delay = 0.05
        while True:
            try:
                report = await self.dispatcher.dispatch(values)
                await self.sink.send_raw_dead_letters(report.dead_letters)
                break
            except Exception:
                log.exception("dispatch batch failed; retrying in %.2fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        await self._observe(report)

    async def _observe(self, report: DispatchReport) -> None:
        for (channel, status), n in report.by_status.items():
            self.telemetry.messages.labels(channel=channel, status=status).inc(n)
        for seconds in report.latencies:
            self.telemetry.latency.observe(seconds)
        try:
            await stats.add(
                self.redis,
                {
                    stats.MESSAGES: {f"{c}|{s}": n for (c, s), n in report.by_status.items()},
                    stats.PROCESSOR: {"dispatched": report.handled},
                    stats.JOURNEYS: {f"{j}|sent": n for j, n in report.sent_by_journey.items()},
                },
            )
            await stats.add_latencies(self.redis, report.latencies)
        except Exception:  # best effort: deliveries are already marked
            log.warning("could not record stats", exc_info=True)


def create_dispatcher_app(settings: Settings, service: DispatcherService) -> Any:
    """The faust app of the dispatcher role."""
    app = make_faust_app(settings, role="dispatcher")
    topic = app.topic(
        ACTIONS, key_serializer="raw", value_serializer="raw", partitions=settings.partitions
    )

    @app.task  # type: ignore[untyped-decorator]
    async def _startup() -> None:
        await ensure_topics(kafka_bootstrap(settings), settings.partitions)
        await service.start()

    @app.agent(topic)  # type: ignore[untyped-decorator]
    async def deliver(stream: Any) -> None:
        async for batch in stream.take_events(BATCH_RECORDS, within=BATCH_WITHIN_S):
            await service.handle([e.message.value for e in batch])
            for e in batch:
                p, offset = e.message.partition, e.message.offset
                done[p] = max(done.get(p, -1), offset)

    done: dict[int, int] = {}

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def _lag() -> None:
        with logged("lag report"):
            service.telemetry.report_lag(app, ACTIONS, done)

    @app.on_before_shutdown.connect  # type: ignore[untyped-decorator]
    async def _shutdown(_app: Any, **_kwargs: Any) -> None:
        await service.stop()

    return app
