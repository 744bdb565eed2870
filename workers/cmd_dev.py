"""`herald dev` and `herald demo`: the whole system on one machine with no setup.

Both start a Kafka-protocol broker (Tansu, in memory) and a real Redis (with AOF under
`.herald/`) on loopback, then one process per role. `dev` stays in the foreground until
Ctrl-C; `demo` replays `examples/` through the HTTP API in event time — so a week of journeys
plays out in seconds — prints each message as the outbox receives it, checks the result
against `herald simulate` on the same input, and exits with a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from workers.cmd_run import Supervisor
from workers.config import Settings
from workers.services import EmbeddedBroker, EmbeddedRedis, free_port
from workers.topics import EVENTS, ensure_topics, partition_for

DEMO_TIMEOUT_S = 55.0


@contextmanager
def embedded_services(state_dir: Path) -> Iterator[tuple[EmbeddedBroker, EmbeddedRedis]]:
    """Broker and Redis on free loopback ports, stopped on the way out."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker(state_dir) as broker, EmbeddedRedis(state_dir) as redis:
        yield broker, redis


def worker_env(
    broker: EmbeddedBroker, redis: EmbeddedRedis, state_dir: Path, **extra: str
) -> dict[str, str]:
    """Environment for the role processes: aimed at the embedded services."""
    env = dict(os.environ)
    env.update(
        HERALD_KAFKA_URL=broker.url,
        HERALD_REDIS_URL=redis.url,
        HERALD_STATE_DIR=str(state_dir),
        HERALD_SESSION_TIMEOUT=env.get("HERALD_SESSION_TIMEOUT", "2"),
    )
    env.update(extra)
    return env


def run(args: argparse.Namespace) -> int:
    """`herald dev`."""
    settings = Settings()
    state_dir = Path(settings.state_dir)
    partitions = int(getattr(args, "partitions", None) or settings.partitions)
    with embedded_services(state_dir / "dev") as (broker, redis):
        asyncio.run(ensure_topics(broker.bootstrap, partitions))
        env = worker_env(broker, redis, state_dir, HERALD_PARTITIONS=str(partitions))
        if getattr(args, "rules", None):
            env["HERALD_RULES_DIR"] = str(args.rules)
        print(f"herald dev: broker {broker.bootstrap}, redis {redis.url}", file=sys.stderr)
        print(
            f"API on http://{settings.api_host}:{settings.api_port}, outbox {settings.outbox}; "
            "Ctrl-C stops everything",
            file=sys.stderr,
        )
        supervisor = Supervisor(env)
        supervisor.start()
        try:
            while supervisor.poll() is None:
                time.sleep(0.5)
            print(f"role {supervisor.poll()} exited; stopping", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
        finally:
            supervisor.stop()


def run_demo(args: argparse.Namespace) -> int:
    """`herald demo`."""
    from workers.cmd_simulate import read_events, read_profiles, simulate_lines

    settings = Settings()
    examples = Path(getattr(args, "examples", None) or "examples")
    rules = Path(getattr(args, "rules", None) or settings.rules_dir)
    events_path, profiles_path = examples / "events.jsonl", examples / "profiles.jsonl"
    expected, _notes = simulate_lines(
        rules, events_path, profiles_path=profiles_path if profiles_path.exists() else None
    )
    events = read_events(events_path, None)
    profiles = read_profiles(profiles_path) if profiles_path.exists() else []
    start = min(e.timestamp for e in events)
    until = max(e.timestamp for e in events).timestamp() + 7 * 86400
    state_dir = Path(settings.state_dir) / "demo"
    shutil.rmtree(state_dir, ignore_errors=True)
    outbox = state_dir / "outbox.jsonl"
    partitions = 4
    api_port = free_port()
    begun = time.monotonic()
    with embedded_services(state_dir) as (broker, redis):
        asyncio.run(ensure_topics(broker.bootstrap, partitions))
        env = worker_env(
            broker,
            redis,
            state_dir,
            HERALD_CLOCK="event",
            HERALD_OUTBOX=str(outbox),
            HERALD_API_PORT=str(api_port),
            HERALD_PARTITIONS=str(partitions),
            HERALD_RULES_DIR=str(rules),
        )
        for name in ("SENDGRID_API_KEY", "TWILIO_ACCOUNT_SID", "WECHAT_APP_ID"):
            env.pop(name, None)
        supervisor = Supervisor(env)
        supervisor.start()
        try:
            print(
                f"herald demo: {len(events)} events, {len(profiles)} profiles, "
                f"{len(expected)} messages expected (from herald simulate)"
            )
            got = asyncio.run(
                _feed_and_watch(
                    broker.bootstrap,
                    api_port,
                    partitions,
                    profiles,
                    events,
                    start.timestamp(),
                    until,
                    outbox,
                    len(expected),
                    supervisor,
                )
            )
        finally:
            supervisor.stop()
    return _summary(expected, got, time.monotonic() - begun)


async def _feed_and_watch(
    bootstrap: str,
    api_port: int,
    partitions: int,
    profiles: list[tuple[str, dict[str, Any]]],
    events: list[Any],
    start: float,
    until: float,
    outbox: Path,
    expected: int,
    supervisor: Supervisor,
) -> list[dict[str, Any]]:
    from workers.kafka_sink import KafkaSink
    from workers.records import control

    sink = KafkaSink(bootstrap, client_id="herald-demo")
    await sink.start()
    try:
        for p in range(partitions):
            await sink.send_control(p, control("clock", start))
        by_partition: dict[int, list[dict[str, Any]]] = {}
        for user, traits in profiles:
            p = partition_for(user.encode(), partitions)
            by_partition.setdefault(p, []).append({"user_id": user, "traits": traits})
        for p, items in by_partition.items():
            await sink.send_control(p, control("profile", start, profiles=items))
        base = f"http://127.0.0.1:{api_port}"
        async with aiohttp.ClientSession() as http:
            await _wait_ready(http, base, supervisor)
            payload = {"batch": [e.to_json_dict() for e in events]}
            async with http.post(f"{base}/v1/events", json=payload) as response:
                body = await response.json()
                print(f"POST /v1/events -> {response.status} {body}")
        for p in range(partitions):
            await sink.send_control(p, control("clock", until))
    finally:
        await sink.stop()
    return await _tail(outbox, expected, supervisor)


async def _wait_ready(http: aiohttp.ClientSession, base: str, supervisor: Supervisor) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if supervisor.poll() is not None:
            raise SystemExit(f"role {supervisor.poll()} exited during start-up")
        try:
            async with http.get(f"{base}/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("the API did not become ready within 30 s")


async def _tail(outbox: Path, expected: int, supervisor: Supervisor) -> list[dict[str, Any]]:
    """Print outbox lines as they arrive until the expected count or the time limit."""
    lines: list[dict[str, Any]] = []
    position = 0
    deadline = time.monotonic() + DEMO_TIMEOUT_S
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        if outbox.exists():
            with outbox.open("rb") as handle:
                handle.seek(position)
                chunk = handle.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            position += len(complete)
            for raw in complete.splitlines():
                line = orjson.loads(raw)
                lines.append(line)
                quiet_since = time.monotonic()
                head = (line.get("subject") or line.get("body") or "").splitlines()[0][:60]
                print(
                    f"  {line['sent_at'][11:19]} {line['user_id']:>4} {line['journey']:<28} "
                    f"{line['channel']:<8} {head}"
                )
        if len(lines) >= expected and time.monotonic() - quiet_since > 1.0:
            break
        if supervisor.poll() is not None:
            print(f"role {supervisor.poll()} exited", file=sys.stderr)
            break
        await asyncio.sleep(0.1)
    return lines


def _summary(expected: list[dict[str, Any]], got: list[dict[str, Any]], seconds: float) -> int:
    want = {m["message_id"] for m in expected}
    have = Counter(m["message_id"] for m in got)
    per_journey = Counter(m["journey"] for m in got)
    print("\nsummary")
    for journey, n in sorted(per_journey.items()):
        print(f"  {journey:<30} {n}")
    duplicates = sum(n - 1 for n in have.values() if n > 1)
    missing = len(want - set(have))
    extra = len(set(have) - want)
    print(
        f"  messages: {len(got)} in the outbox, {len(want)} from simulate; "
        f"missing {missing}, unexpected {extra}, duplicates {duplicates}; {seconds:.1f} s"
    )
    ok = missing == 0 and extra == 0 and duplicates == 0
    print("  pipeline and simulate agree" if ok else "  MISMATCH between pipeline and simulate")
    return 0 if ok else 1


__all__ = ["EVENTS", "run", "run_demo"]
