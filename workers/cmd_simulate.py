"""`herald simulate`: the offline contract of journeys.md, on the production core."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from engine.errors import InvalidEvent, RulesError
from engine.events import Event, parse_event
from engine.language.loader import load_rules
from engine.runtime.core import Engine, EngineOptions
from engine.runtime.effects import Failure, Message, Trace, iso
from engine.simulate import Simulation, default_window
from workers.gc_tuning import tune_gc
from workers.simulate_shards import default_jobs, simulate_sharded


class InputError(Exception):
    """A line of an input file is unusable; carries `path:line: reason`."""


def _parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def read_events(path: Path, fallback: datetime | None) -> list[Event]:
    """Read a JSONL events file; every bad line is an error naming its line."""
    events: list[Event] = []
    errors: list[str] = []
    received = fallback or datetime(1970, 1, 1, tzinfo=UTC)
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith(b"#"):
            continue
        try:
            raw = orjson.loads(line)
            event = parse_event(raw, received_at=received)
        except orjson.JSONDecodeError as exc:
            errors.append(f"{path}:{number}: malformed JSON: {exc}")
            continue
        except InvalidEvent as exc:
            errors.append(f"{path}:{number}: invalid event: {exc}")
            continue
        received = event.timestamp
        events.append(event)
    if errors:
        raise InputError("\n".join(errors))
    return events


def read_profiles(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Read `{"user_id", "traits"}` lines."""
    profiles: list[tuple[str, dict[str, Any]]] = []
    errors: list[str] = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            errors.append(f"{path}:{number}: malformed JSON: {exc}")
            continue
        user = raw.get("user_id") if isinstance(raw, dict) else None
        traits = raw.get("traits", {}) if isinstance(raw, dict) else None
        if (
            not isinstance(user, str | int)
            or isinstance(user, bool)
            or not isinstance(traits, dict)
        ):
            errors.append(f'{path}:{number}: expected {{"user_id": ..., "traits": {{...}}}}')
            continue
        profiles.append((str(user), traits))
    if errors:
        raise InputError("\n".join(errors))
    return profiles


def simulate_lines(
    rules_path: Path,
    events_path: Path,
    *,
    profiles_path: Path | None = None,
    start: datetime | None = None,
    until: datetime | None = None,
    trace: bool = False,
    jobs: int | None = 1,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Run a simulation; returns (message lines, diagnostic lines). Raises RulesError/InputError.

    `jobs`: processes to split the users over (None: as many as the input and the machine
    make worth it); the output is the same whatever the number."""
    rules = load_rules(rules_path)
    engine = Engine(rules, EngineOptions(trace=trace))
    events = read_events(events_path, start)
    profiles = read_profiles(profiles_path) if profiles_path else []
    start, until = default_window(events, start, until)
    lines: list[dict[str, Any]] = []
    notes: list[str] = []

    def collect(effect: object) -> None:
        if isinstance(effect, Message):
            lines.append(effect.to_simulation_line())
        elif isinstance(effect, Failure):
            where = f"{effect.user_id} {effect.journey} {effect.step}"
            notes.append(f"{iso(effect.at)} FAILED {where}: {effect.reason}")
        elif isinstance(effect, Trace):
            notes.append(
                f"{iso(effect.at)} {effect.user_id} {effect.journey} {effect.step}: {effect.what}"
            )

    jobs = default_jobs(len(events)) if jobs is None else jobs
    if jobs > 1:
        for effect in simulate_sharded(
            engine, events, profiles, start, until, jobs=jobs, keep=(Message, Failure, Trace)
        ):
            collect(effect)
        return lines, notes
    sim = Simulation(engine)
    for effect in sim.load_profiles(profiles, start):
        collect(effect)
    for _at, effect in sim.run(events, start, until):
        collect(effect)
    return lines, notes


def run(args: argparse.Namespace) -> int:
    """CLI handler; exit 0 when the run completed (even with failed sends), 1 on bad input."""
    tune_gc()
    try:
        lines, notes = simulate_lines(
            Path(args.path),
            Path(args.events),
            profiles_path=Path(args.profiles) if args.profiles else None,
            start=_parse_time(getattr(args, "start", None)),
            until=_parse_time(args.until),
            trace=bool(args.trace),
            jobs=getattr(args, "jobs", None),
        )
    except RulesError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except (InputError, OSError, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    out = sys.stdout.buffer
    for line in lines:
        out.write(orjson.dumps(line) + b"\n")
    out.flush()
    for note in notes:
        print(note, file=sys.stderr)
    return 0
