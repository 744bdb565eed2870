"""Prometheus metrics of a worker process (names fixed in runtime.md), and their /metrics page.

Each process has its own registry and its own port (`HERALD_METRICS_PORT`, 0 = a free one), so
any number of workers side by side are scraped separately; Prometheus sums them.
"""

from __future__ import annotations

import logging
from collections import Counter as TallyCounter
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Telemetry:
    """The metric families every role may touch."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("herald_events", "Valid events processed", ["type"], registry=r)
        self.invalid = Counter(
            "herald_events_invalid", "Invalid events dead-lettered", ["reason"], registry=r
        )
        self.entries = Counter("herald_journey_entries", "Runs started", ["journey"], registry=r)
        self.exits = Counter(
            "herald_journey_exits", "Runs ended", ["journey", "reason"], registry=r
        )
        self.goals = Counter(
            "herald_goals", "Conversion goals reached", ["journey", "variant"], registry=r
        )
        self.messages = Counter(
            "herald_messages", "Message outcomes", ["channel", "status"], registry=r
        )
        self.ignored = Counter(
            "herald_triggers_ignored",
            "Triggers that started no run",
            ["journey", "reason"],
            registry=r,
        )
        self.condition_errors = Counter(
            "herald_condition_errors",
            "Conditions that failed at run time",
            ["journey"],
            registry=r,
        )
        self.step_failures = Counter(
            "herald_step_failures", "Steps that failed (template errors)", ["journey"], registry=r
        )
        self.latency = Histogram(
            "herald_event_to_dispatch_seconds",
            "From the event (or due time) to the provider's acceptance",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.timers_pending = Gauge(
            "herald_timers_pending", "Users with a timer in owned partitions", registry=r
        )
        self.lag = Gauge(
            "herald_consumer_lag", "Records not yet consumed", ["topic", "partition"], registry=r
        )
        self.rules_reload_failures = Counter(
            "herald_rules_reload_failures", "Rule reloads rejected (last good kept)", registry=r
        )
        self._by_name = {
            "herald_journey_entries_total": self.entries,
            "herald_journey_exits_total": self.exits,
            "herald_goals_total": self.goals,
            "herald_messages_total": self.messages,
            "herald_triggers_ignored_total": self.ignored,
            "herald_condition_errors_total": self.condition_errors,
            "herald_step_failures_total": self.step_failures,
        }

    def add_counts(self, counts: TallyCounter[tuple[str, tuple[tuple[str, str], ...]]]) -> None:
        """Fold the core's Count effects of a batch into the counters."""
        for (name, labels), amount in counts.items():
            metric = self._by_name.get(name)
            if metric is None:
                continue
            try:
                metric.labels(**dict(labels)).inc(amount)
            except ValueError:
                log.debug("metric %s got unexpected labels %s", name, labels)

    def report_lag(self, app: Any, topic: str, done: dict[int, int]) -> None:
        """herald_consumer_lag per owned partition: the fetch high watermark minus the next
        offset to process (Tansu's ListOffsets is unreliable; the fetch watermark is not)."""
        try:
            assignment = app.consumer.assignment()
        except Exception:  # not started, or rebalancing
            return
        for tp in assignment:
            if tp.topic != topic:
                continue
            high = app.consumer.highwater(tp)
            if high is None:
                continue
            next_offset = done.get(tp.partition, -1) + 1
            self.lag.labels(topic=topic, partition=str(tp.partition)).set(
                max(0, high - next_offset)
            )

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return bytes(generate_latest(self.registry))


async def serve_metrics(telemetry: Telemetry, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve /metrics (and /healthz) on its own port; returns the runner and the bound port."""

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=telemetry.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    bound = port
    if server is not None and server.sockets:  # type: ignore[attr-defined]
        bound = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, bound
