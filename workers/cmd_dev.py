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

from engine.events import Event
from workers.cmd_run import Supervisor
from workers.config import Settings
from workers.services import EmbeddedBroker, EmbeddedRedis, sigterm_as_interrupt
from workers.stack import LocalStack
from workers.topics import ensure_topics

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
    sigterm_as_interrupt()
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
    has_profiles = profiles_path.exists()
    expected, _notes = simulate_lines(
        rules, events_path, profiles_path=profiles_path if has_profiles else None
    )
    events = read_events(events_path, None)
    profiles = read_profiles(profiles_path) if has_profiles else []
    sigterm_as_interrupt()
    state_dir = Path(settings.state_dir) / "demo"
    shutil.rmtree(state_dir, ignore_errors=True)
    begun = time.monotonic()
    print(
        f"herald demo: {len(events)} events and {len(profiles)} profiles from {examples}/, "
        f"rules from {rules}/; {len(expected)} messages expected (herald simulate)"
    )
    with LocalStack(state_dir, clock="event", rules=rules, quiet=True) as stack:
        stack.start_roles()
        got = asyncio.run(replay(stack, events, profiles, expected_count=len(expected)))
    return _summary(expected, got, time.monotonic() - begun)


async def replay(
    stack: LocalStack,
    events: list[Event],
    profiles: list[tuple[str, dict[str, Any]]],
    *,
    expected_count: int,
    timeout: float = DEMO_TIMEOUT_S,
    echo: bool = True,
) -> list[dict[str, Any]]:
    """Feed a recorded stream in event time and collect the outbox (demo and tests)."""
    start = min(e.timestamp for e in events).timestamp()
    until = max(e.timestamp for e in events).timestamp() + 7 * 86400
    await stack.wait_ready()
    await stack.start_replay(start, profiles)
    async with aiohttp.ClientSession() as http:
        answer = await stack.post_events(http, [e.to_json_dict() for e in events])
        if echo:
            print(f"POST /v1/events -> {answer}")
    await stack.advance_clock(until)
    return await _tail(stack, expected_count, timeout, echo)


async def _tail(
    stack: LocalStack, expected: int, timeout: float, echo: bool
) -> list[dict[str, Any]]:
    """Print outbox lines as they arrive until the expected count or the time limit."""
    shown = 0
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    lines: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        lines = stack.outbox_lines()
        for line in lines[shown:]:
            quiet_since = time.monotonic()
            if echo:
                head = (line.get("subject") or line.get("body") or "").splitlines()[0][:56]
                print(f"  {line['user_id']:>4} {line['journey']:<28} {line['channel']:<8} {head}")
        shown = len(lines)
        if len(lines) >= expected and time.monotonic() - quiet_since > 1.0:
            break
        dead = stack.dead_role()
        if dead is not None:
            print(f"role {dead} exited; see {stack.state_dir}/{dead}.log", file=sys.stderr)
            break
        await asyncio.sleep(0.1)
    return lines


COMPARED = ("user_id", "journey", "step", "channel", "to", "subject", "body", "variant")


def compare(expected: list[dict[str, Any]], got: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Differences between simulate's lines and outbox lines, by message id."""
    want = {m["message_id"]: m for m in expected}
    have = Counter(m["message_id"] for m in got)
    by_id = {m["message_id"]: m for m in got}
    return {
        "missing": sorted(set(want) - set(have)),
        "unexpected": sorted(set(have) - set(want)),
        "duplicates": sorted(mid for mid, n in have.items() if n > 1),
        "different": sorted(
            mid
            for mid in set(want) & set(have)
            if any(want[mid].get(k) != by_id[mid].get(k) for k in COMPARED)
        ),
    }


def _summary(expected: list[dict[str, Any]], got: list[dict[str, Any]], seconds: float) -> int:
    diff = compare(expected, got)
    per_journey = Counter(m["journey"] for m in got)
    print("\nsummary: messages per journey")
    for journey, n in sorted(per_journey.items()):
        print(f"  {journey:<30} {n}")
    print(
        f"  {len(got)} messages in the outbox, {len(expected)} from simulate; "
        + ", ".join(f"{k} {len(v)}" for k, v in diff.items())
        + f"; {seconds:.1f} s"
    )
    ok = not any(diff.values())
    print(
        "  the pipeline and herald simulate agree on every message id and content"
        if ok
        else "  MISMATCH between the pipeline and herald simulate"
    )
    return 0 if ok else 1
