"""`herald simulate --jobs N`: users split over processes, the output of one process exactly.

The runs compare whole outputs (messages, failures and traces, in order) of the same input
with 1 and with N processes, on the sample library over synthetic traffic dense enough that
equal timestamps, schedule firings over many users, timers at the same instant and
profile-started journeys all occur.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.language.loader import load_rules
from engine.runtime.core import Engine, EngineOptions
from engine.runtime.effects import Failure, Message, Trace
from engine.simulate import Simulation
from engine.synthetic import synthetic_events, user_traits
from workers.cli import main
from workers.cmd_simulate import simulate_lines
from workers.simulate_shards import default_jobs, shard_of, simulate_sharded

REPO = Path(__file__).resolve().parents[2]
KEEP = (Message, Failure, Trace)


def _one_process(
    engine: Engine, events: list[Any], profiles: list[Any], start: Any, until: Any
) -> list[Any]:
    sim = Simulation(engine)
    out = [e for e in sim.load_profiles(profiles, start) if isinstance(e, KEEP)]
    out += [e for _at, e in sim.run(events, start, until) if isinstance(e, KEEP)]
    return out


@pytest.mark.parametrize("jobs", [2, 3, 5])
def test_sharded_output_is_the_one_process_output(jobs: int) -> None:
    engine = Engine(load_rules(REPO / "rules"), EngineOptions(trace=True))
    # 400 users, 6,000 events in two hours, timestamps shared by neighbours (span / count is
    # not a whole number of microseconds), then four days of timers and
    # schedule firings (the weekly digest fires on Monday, 2026-05-04, for every subscriber).
    events = list(synthetic_events(6000, 400, span_s=7200.0, seed=3))
    events += [e for e in synthetic_events(300, 400, span_s=60.0, seed=4)]  # same instants
    profiles = [
        (f"u{i}", {**user_traits(i), "tags": ["newsletter"] if i % 4 == 0 else []})
        for i in range(0, 400, 2)
    ]
    start = min(e.timestamp for e in events)
    until = max(e.timestamp for e in events) + timedelta(days=4)
    expected = _one_process(engine, events, profiles, start, until)
    assert sum(isinstance(e, Message) for e in expected) > 100
    assert any(isinstance(e, Message) and e.journey == "weekly_digest" for e in expected)
    got = list(simulate_sharded(engine, events, profiles, start, until, jobs=jobs, keep=KEEP))
    assert got == expected


def test_cli_output_does_not_depend_on_jobs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    with events.open("wb") as out:
        for e in synthetic_events(3000, 300, span_s=3600.0, seed=9):
            line = {"event_id": e.event_id, "type": e.type, "user_id": e.user_id}
            line["timestamp"] = e.timestamp.isoformat()
            line["properties"], line["traits"] = e.properties, e.traits
            out.write(orjson.dumps(line) + b"\n")
    base = ["simulate", "rules", "--events", str(events), "--profiles"]
    base += [str(REPO / "examples" / "profiles.jsonl"), "--trace"]
    outputs = []
    for jobs in ("1", "4"):
        assert main([*base, "--jobs", jobs]) == 0
        outputs.append(capsys.readouterr())
    assert outputs[0].out.count("\n") > 50
    assert outputs[1] == outputs[0]


def test_simulate_lines_picks_the_number_of_processes() -> None:
    lines, notes = simulate_lines(REPO / "rules", REPO / "examples" / "events.jsonl", jobs=None)
    again, again_notes = simulate_lines(REPO / "rules", REPO / "examples" / "events.jsonl", jobs=2)
    assert (lines, notes) == (again, again_notes)
    assert len(lines) == 60


def test_default_jobs_leave_small_inputs_to_one_process() -> None:
    assert default_jobs(100) == 1
    assert 1 <= default_jobs(10_000_000) <= 8


def test_shards_are_stable_and_spread() -> None:
    counts = [0, 0, 0]
    for i in range(3000):
        counts[shard_of(f"user-{i}", 3)] += 1
    assert shard_of("user-1", 3) == shard_of("user-1", 3)
    assert min(counts) > 800


def test_jobs_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "rules", "--events", "examples/events.jsonl", "--jobs", "0"])
    assert "must be positive" in capsys.readouterr().err


def test_children_may_go_on_from_a_loaded_simulation() -> None:
    # `herald bench` loads profiles once, untimed, and times only the events.
    engine = Engine(load_rules(REPO / "rules"))
    events = list(synthetic_events(4000, 300, span_s=5400.0, seed=5))
    profiles = [(f"u{i}", user_traits(i)) for i in range(300)]
    start, until = events[0].timestamp, events[-1].timestamp + timedelta(hours=2)
    one = Simulation(engine)
    list(one.load_profiles(profiles, start))
    loaded = Simulation(engine)
    list(loaded.load_profiles(profiles, start))
    expected = [e for _at, e in one.run(events, start, until) if isinstance(e, KEEP)]
    got = list(simulate_sharded(engine, events, [], start, until, jobs=3, keep=KEEP, loaded=loaded))
    assert len(expected) > 100
    assert got == expected
    assert len(loaded.users) == 300  # the parent's copy is untouched


def test_restrict_keeps_a_shard_with_its_timers() -> None:
    engine = Engine(load_rules(REPO / "rules"))
    events = list(synthetic_events(2000, 100, span_s=1800.0, seed=6))
    start, until = events[0].timestamp, events[-1].timestamp + timedelta(days=1)
    whole = Simulation(engine)
    list(whole.run(events[:1000], start, events[999].timestamp))
    part = Simulation(engine)
    list(part.run(events[:1000], start, events[999].timestamp))
    part.restrict(lambda user_id: shard_of(user_id, 2) == 0)
    assert part.users and all(shard_of(u, 2) == 0 for u in part.users)
    rest = events[1000:]
    mine = [e for e in rest if shard_of(e.user_id, 2) == 0]
    expected = [
        e
        for _at, e in whole.run(rest, events[999].timestamp, until)
        if isinstance(e, Message) and shard_of(e.user_id, 2) == 0
    ]
    got = [e for _at, e in part.run(mine, events[999].timestamp, until) if isinstance(e, Message)]
    assert len(expected) > 20
    assert got == expected
