"""The processor role as a faust-streaming app: consume herald.events, drive the core.

One agent takes batches of records from the partitions this worker owns and hands them to
`BatchProcessor`. Three timers run beside it, all only for owned partitions:
  - due timers: users whose next due time has come get a `tick` control record on their own
    partition, so the timer is applied by the partition's owner, in order with its events;
  - schedules: at each cron firing, members of the journey's segment get a `schedule` record;
  - rules: a changed, valid rules folder replaces the engine between batches.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

from engine.runtime.core import EngineOptions
from engine.runtime.steps import utc
from workers import keys, stats
from workers.config import Settings, kafka_bootstrap, make_faust_app
from workers.kafka_sink import KafkaSink
from workers.periodic import logged
from workers.processor import BatchProcessor, BatchReport, Clock, EventClock, Record, WallClock
from workers.records import control
from workers.rules_watch import RulesWatcher
from workers.store import RedisStore
from workers.telemetry import Telemetry, serve_metrics
from workers.topics import EVENTS, ensure_topics

log = logging.getLogger(__name__)

BATCH_RECORDS = 64
BATCH_WITHIN_S = 0.005
TICK_CHUNK = 500
TICK_RETRY_S = 30.0
RETRY_MAX_S = 5.0


class ProcessorService:
    """Everything the processor owns besides faust: engine, store, producer, metrics."""

    def __init__(self, settings: Settings, *, event_time: bool = False) -> None:
        self.settings = settings
        self.watcher = RulesWatcher(
            settings.rules_dir,
            EngineOptions(
                unsubscribe_base_url=settings.public_url,
                unsubscribe_secret=settings.unsubscribe_secret,
            ),
        )
        self.store = RedisStore.from_url(settings.redis_url)
        self.sink = KafkaSink(kafka_bootstrap(settings), client_id="herald-processor")
        self.clock: Clock = EventClock() if event_time else WallClock()
        self.processor = BatchProcessor(self.watcher.engine, self.store, self.sink, self.clock)
        self.telemetry = Telemetry()
        self._started = asyncio.Event()
        self._start_lock = asyncio.Lock()
        self.metrics_port: int | None = None
        self._metrics_runner: Any = None
        self._in_flight: dict[tuple[int, str], tuple[float, float]] = {}
        self.done_offsets: dict[int, int] = {}

    async def start(self) -> None:
        """Connect the producer and serve /metrics (idempotent)."""
        async with self._start_lock:
            if self._started.is_set():
                return
            await self.sink.start()
            self._metrics_runner, self.metrics_port = await serve_metrics(
                self.telemetry, "127.0.0.1", self.settings.metrics_port
            )
            log.info("processor metrics on 127.0.0.1:%s", self.metrics_port)
            self._started.set()

    async def stop(self) -> None:
        """Release everything."""
        if self._started.is_set():
            await self.sink.stop()
            await self.store.close()
            if self._metrics_runner is not None:
                await self._metrics_runner.cleanup()

    async def handle(self, records: list[Record]) -> None:
        """Process a batch; infrastructure failures are retried until they pass, never skipped."""
        await self.start()
        for record in records:
            if record.offset > self.done_offsets.get(record.partition, -1):
                self.done_offsets[record.partition] = record.offset
        delay = 0.05
        while True:
            try:
                report = await self.processor.process(records)
                break
            except Exception:
                log.exception("batch failed; retrying in %.2fs (offsets are not committed)", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        for event_type, n in report.events_by_type.items():
            self.telemetry.events.labels(type=event_type).inc(n)
        self.telemetry.add_counts(report.counts)
        await self._record(report)

    async def _record(self, report: BatchReport) -> None:
        journeys: dict[str, float] = {}
        for (name, labels), n in report.counts.items():
            label = dict(labels)
            if name == "herald_journey_entries_total":
                journeys[f"{label['journey']}|entries"] = (
                    journeys.get(f"{label['journey']}|entries", 0) + n
                )
            elif name == "herald_journey_exits_total":
                key = f"{label['journey']}|exits"
                journeys[key] = journeys.get(key, 0) + n
            elif name == "herald_goals_total":
                key = f"{label['journey']}|goals"
                journeys[key] = journeys.get(key, 0) + n
            elif name == "herald_messages_total":
                key = f"{label.get('channel', '')}|{label.get('status', '')}"
                journeys[f"*{key}"] = journeys.get(f"*{key}", 0) + n
        try:
            await stats.add(
                self.store.client,
                {
                    stats.PROCESSOR: {
                        "events": report.events,
                        "inputs": report.inputs,
                        "skipped": report.skipped,
                        "actions": report.actions,
                        "dead_letters": report.dead_letters,
                        "redis_ops": report.redis_ops,
                        "batches": 1,
                    },
                    stats.EVENT_TYPES: dict(report.events_by_type),
                    stats.JOURNEYS: {k: v for k, v in journeys.items() if not k.startswith("*")},
                    stats.MESSAGES: {k[1:]: v for k, v in journeys.items() if k.startswith("*")},
                },
            )
        except Exception:  # stats are best effort; the batch itself is durable already
            log.warning("could not record stats", exc_info=True)

    def now_for(self, partition: int) -> float:
        """The clock timers compare against (event time per partition, or the wall clock)."""
        if self.clock.event_time:
            return self.processor.committed_watermarks.get(partition, 0.0)
        return time.time()

    async def fire_timers(self, partitions: list[int]) -> None:
        """Hand due users of owned partitions a tick through their own partition."""
        if not self._started.is_set():
            return
        if self.clock.event_time:
            await self.processor._load_watermarks(set(partitions))
        pending = 0
        wall = time.monotonic()
        for p in partitions:
            now = self.now_for(p)
            if now <= 0:
                continue
            due = await self.store.due(p, now, 5000)
            # A tick already on its way for the same due time is not sent again for a while;
            # the in-flight memory is per process, so after a restart ticks may repeat, which
            # is harmless (a tick with nothing due changes nothing).
            users = [
                u
                for u, at in due
                if self._in_flight.get((p, u), (None, 0.0))[0] != at
                or wall - self._in_flight[(p, u)][1] > TICK_RETRY_S
            ]
            for i in range(0, len(users), TICK_CHUNK):
                chunk = users[i : i + TICK_CHUNK]
                await self.sink.send_control(p, control("tick", now, users=chunk))
            due_at = dict(due)
            for u in users:
                self._in_flight[(p, u)] = (due_at[u], wall)
            pending += await self.store.client.zcard(keys.timers(p))
        if len(self._in_flight) > 100_000:
            self._in_flight = {
                k: v for k, v in self._in_flight.items() if wall - v[1] < TICK_RETRY_S
            }
        self.telemetry.timers_pending.set(pending)

    async def heartbeat(self, partitions: list[int]) -> None:
        """Record which partitions this process owns (for `herald status` and the tests)."""
        if not self._started.is_set() or not partitions:
            return
        me = f"{socket.gethostname()}:{os.getpid()}"
        await self.store.client.hset(keys.owners(), mapping=dict.fromkeys(map(str, partitions), me))

    async def fire_schedules(self, partitions: list[int]) -> None:
        """Hand each schedule firing to the segment's members, once per partition."""
        if not self._started.is_set():
            return
        await self.heartbeat(partitions)
        engine = self.processor.engine
        for program in engine.schedules:
            jid = program.journey.journey
            segment = str(program.journey.trigger.segment)  # type: ignore[union-attr]
            for p in partitions:
                now = self.now_for(p)
                if now <= 0:
                    continue
                mark = await self.store.schedule_mark(p, jid)
                if mark is None and self.clock.event_time:
                    # A replay's schedules start where its clock started (as in simulate);
                    # until that first clock is committed there is nothing to fire.
                    mark = await self.store.first_watermark(p)
                    if mark is None:
                        continue
                if mark is None:
                    # A new schedule starts from now: it never replays past firings.
                    await self.store.set_schedule_mark(p, jid, now)
                    continue
                for fire in engine.schedule_times(jid, utc(mark), utc(now)):
                    if engine.segment_reads_time(segment):
                        # Time alone can move users into it: every user is a candidate.
                        users = await self.store.all_users(p)
                    else:
                        users = await self.store.segment_members(p, segment)
                    at = fire.timestamp()
                    log.info(
                        "schedule %s fires %s on partition %d for %d users",
                        jid,
                        fire.isoformat(),
                        p,
                        len(users),
                    )
                    for i in range(0, len(users), TICK_CHUNK):
                        value = control(
                            "schedule", at, journey=jid, users=users[i : i + TICK_CHUNK]
                        )
                        await self.sink.send_control(p, value)
                    await self.store.set_schedule_mark(p, jid, at)

    def reload(self) -> None:
        """Adopt changed rules if they are valid."""
        engine = self.watcher.poll()
        if engine is not None:
            self.processor.reload(engine)
        elif self.watcher.last_error:
            self.telemetry.rules_reload_failures.inc()
            self.watcher.last_error = None


def owned_partitions(app: Any, topic: str) -> list[int]:
    """Partitions of `topic` assigned to this worker right now."""
    try:
        assignment = app.consumer.assignment()
    except Exception:  # not yet started, or rebalancing
        return []
    return sorted(tp.partition for tp in assignment if tp.topic == topic)


def create_processor_app(settings: Settings, service: ProcessorService) -> Any:
    """The faust app of the processor role."""
    app = make_faust_app(settings, role="processor")
    topic = app.topic(
        EVENTS,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )

    @app.task  # type: ignore[untyped-decorator]
    async def _startup() -> None:
        await ensure_topics(kafka_bootstrap(settings), settings.partitions)
        await service.start()

    @app.agent(topic)  # type: ignore[untyped-decorator]
    async def process(stream: Any) -> None:
        async for batch in stream.take_events(BATCH_RECORDS, within=BATCH_WITHIN_S):
            records = [
                Record(e.message.partition, e.message.offset, e.message.value) for e in batch
            ]
            await service.handle(records)

    # An exception escaping a faust timer crashes the whole worker: each loop logs and waits
    # for its next round instead (Redis restarting, the broker rebalancing, ...).
    @app.timer(interval=0.1)  # type: ignore[untyped-decorator]
    async def _timers() -> None:
        with logged("timer loop"):
            await service.fire_timers(owned_partitions(app, EVENTS))

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def _schedules() -> None:
        with logged("schedule loop"):
            await service.fire_schedules(owned_partitions(app, EVENTS))
            service.telemetry.report_lag(app, EVENTS, service.done_offsets)

    @app.timer(interval=2.0)  # type: ignore[untyped-decorator]
    async def _rules() -> None:
        with logged("rules reload"):
            service.reload()

    @app.on_before_shutdown.connect  # type: ignore[untyped-decorator]
    async def _shutdown(_app: Any, **_kwargs: Any) -> None:
        await service.stop()

    return app
