"""`herald bench`: measure the pipeline on this machine; the last line is one JSON object."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from pathlib import Path

import orjson
from rich.console import Console

from workers.bench import (
    BenchResult,
    end_to_end,
    latency,
    processor_drain,
    raw_loop,
    simulate_speed,
)
from workers.config import Settings
from workers.simulate_shards import default_jobs
from workers.stack import LocalStack

DEFAULT_EVENTS = 200_000
DEFAULT_USERS = 100_000
LATENCY_RATE = 2000.0
LATENCY_SECONDS = 10.0


def run(args: argparse.Namespace) -> int:
    """CLI handler."""
    console = Console(stderr=True)
    settings = Settings()
    events = args.events or DEFAULT_EVENTS
    users = args.users or DEFAULT_USERS
    state_dir = Path(settings.state_dir) / "bench"
    shutil.rmtree(state_dir, ignore_errors=True)
    rules = Path(settings.rules_dir)
    if args.journeys:
        from workers.bench_rules import write_generated_rules

        rules = write_generated_rules(state_dir / "rules", args.journeys)
    from engine.language.loader import load_rules

    journeys = len(load_rules(rules).journeys)
    if not getattr(args, "embedded", True):
        console.print("[yellow]--no-embedded: using HERALD_KAFKA_URL and HERALD_REDIS_URL[/]")
    result = BenchResult()
    begun = time.monotonic()

    def progress(text: str) -> None:
        console.print(f"[dim]{time.monotonic() - begun:6.1f}s[/] {text}")

    with LocalStack(
        state_dir,
        partitions=settings.partitions,
        rules=rules,
        quiet=True,
        external=None if getattr(args, "embedded", True) else settings,
    ) as stack:
        progress(f"broker {stack.broker_address}, redis {stack.redis_url}; {journeys} journeys")
        stack.start_roles()
        asyncio.run(stack.wait_ready())
        e2e_events = min(events, 50_000)
        with console.status("end-to-end: HTTP -> processor -> dispatcher -> outbox"):
            result.end_to_end_events_per_s = asyncio.run(
                end_to_end(stack, e2e_events, min(users, e2e_events), progress)
            )
        progress(f"end-to-end: {result.end_to_end_events_per_s:,.0f} events/s")
        with console.status(f"latency at {LATENCY_RATE:,.0f} events/s"):
            result.p50_ms, result.p99_ms, result.latency_samples = asyncio.run(
                latency(stack, LATENCY_RATE, LATENCY_SECONDS, 20_000, progress)
            )
        progress(
            f"latency: p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms "
            f"({result.latency_samples} messages)"
        )
        with console.status(f"processor: draining {events:,} events"):
            rate, ops, starts = asyncio.run(processor_drain(stack, events, users, progress))
        result.processor_events_per_s, result.redis_ops_per_event = rate, ops
        progress(f"processor: {rate:,.0f} events/s, {ops:.2f} Redis ops per event")
        with console.status("raw loop: aiokafka + decode + the same Redis ops"):
            result.raw_loop_per_s = asyncio.run(raw_loop(stack, starts, events, ops))
        progress(f"raw loop: {result.raw_loop_per_s:,.0f} events/s")
    # Last, with the services stopped: the simulator competes with nothing on the machine.
    result.simulate_jobs = default_jobs(events)
    with console.status(f"simulate: {events:,} events in memory"):
        alone, sharded = simulate_speed(rules, events, users, result.simulate_jobs)
    result.simulate_one_process_events_per_s = alone
    result.simulate_events_per_s = sharded if result.simulate_jobs > 1 else alone
    progress(
        f"simulate: {result.simulate_events_per_s:,.0f} events/s with {result.simulate_jobs} "
        f"process(es), {alone:,.0f} events/s in one"
    )
    summary = {
        "processor_events_per_s": round(result.processor_events_per_s, 1),
        "end_to_end_events_per_s": round(result.end_to_end_events_per_s, 1),
        "p50_ms": round(result.p50_ms, 2),
        "p99_ms": round(result.p99_ms, 2),
        "raw_loop_per_s": round(result.raw_loop_per_s, 1),
        "ratio": round(result.ratio, 3),
        "events": events,
        "journeys": journeys,
        "redis_ops_per_event": round(result.redis_ops_per_event, 3),
        "users": users,
        "latency_samples": result.latency_samples,
        "simulate_events_per_s": round(result.simulate_events_per_s, 1),
        "simulate_jobs": result.simulate_jobs,
        "simulate_one_process_events_per_s": round(result.simulate_one_process_events_per_s, 1),
    }
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    sys.stdout.flush()
    return 0
