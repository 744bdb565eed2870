"""`herald status` arithmetic and drawing, from fabricated snapshots (no services)."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

from workers.status_view import (
    Snapshot,
    consumer_lag,
    percentile,
    render,
    render_facts,
    snapshot_json,
)

EVENTS, ACTIONS, DLQ = "herald.events", "herald.actions", "herald.dlq"


def _stats(**processor: float) -> dict[str, Any]:
    return {
        "processor": dict(processor),
        "journeys": {},
        "messages": {},
        "event_types": {},
        "latency_ms": [],
    }


def _text(renderable: Any, width: int = 160) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_rates_are_deltas_over_the_interval() -> None:
    before = Snapshot(
        at=100.0, stats=_stats(events=1000, actions=300, dispatched=250, redis_ops=4000)
    )
    after = Snapshot(
        at=102.0, stats=_stats(events=1500, actions=400, dispatched=290, redis_ops=5500)
    )
    facts = snapshot_json(before, after)
    assert facts["interval_s"] == 2.0
    assert facts["rates"] == {
        "events_per_s": 250.0,
        "actions_per_s": 50.0,
        "dispatched_per_s": 20.0,
        "dead_letters_per_s": 0.0,
    }
    # Over the interval: 1500 ops for 500 events, not the 5500/1500 of all time.
    assert facts["redis_ops_per_event"] == 3.0
    assert facts["totals"]["events"] == 1500
    assert json.loads(json.dumps(facts)) == facts


def test_first_read_has_no_rates_and_idle_interval_falls_back_to_all_time_ops() -> None:
    only = Snapshot(at=5.0, stats=_stats(events=200, redis_ops=900))
    first = snapshot_json(None, only)
    assert first["interval_s"] is None
    assert set(first["rates"].values()) == {None}
    assert first["redis_ops_per_event"] == 4.5
    idle = snapshot_json(Snapshot(at=4.0, stats=_stats(events=200, redis_ops=900)), only)
    assert idle["rates"]["events_per_s"] == 0.0
    assert idle["redis_ops_per_event"] == 4.5
    assert snapshot_json(None, Snapshot(at=0.0, stats=_stats()))["redis_ops_per_event"] is None


def test_reset_totals_give_zero_rates_not_negative_ones() -> None:
    before = Snapshot(at=0.0, stats=_stats(events=900))
    after = Snapshot(at=1.0, stats=_stats(events=10))
    assert snapshot_json(before, after)["rates"]["events_per_s"] == 0.0


def test_percentiles_are_nearest_rank_over_the_latency_sample() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    assert percentile([5.0, 1.0, 4.0, 2.0, 3.0], 50) == 3.0  # the median, not a neighbour
    sample = [float(v) for v in range(100, 0, -1)]  # newest first, as LPUSH keeps them
    assert percentile(sample, 50) == 50.0
    assert percentile(sample, 99) == 99.0
    assert percentile(sample, 100) == 100.0
    stats = _stats()
    stats["latency_ms"] = [*([10.0] * 98), 500.0, 900.0]
    facts = snapshot_json(None, Snapshot(at=0.0, stats=stats))
    assert facts["latency_ms"] == {"samples": 100, "p50": 10.0, "p99": 500.0}


def test_lag_is_high_watermark_minus_commit_summed_and_maxed_per_topic() -> None:
    highwater = {(EVENTS, 0): 120, (EVENTS, 1): 80, (EVENTS, 2): 5, (ACTIONS, 0): 40, (DLQ, 0): 3}
    committed_before: dict[str, dict[tuple[str, int], int | None]] = {
        "herald-processor": {(EVENTS, 0): 50, (EVENTS, 1): 60, (EVENTS, 2): None},
        "herald-dispatcher": {(ACTIONS, 0): None},
    }
    committed_after: dict[str, dict[tuple[str, int], int | None]] = {
        # p2 was never committed: its consumer starts at `earliest`, so all 5 are lag;
        # p1's commit was read a moment after the high watermark and is ahead of it.
        "herald-processor": {(EVENTS, 0): 100, (EVENTS, 1): 81, (EVENTS, 2): None},
        "herald-dispatcher": {(ACTIONS, 0): None},
    }
    before = Snapshot(at=0.0, stats=_stats(), highwater=highwater, committed=committed_before)
    after = Snapshot(at=0.5, stats=_stats(), highwater=highwater, committed=committed_after)
    events, actions = snapshot_json(before, after)["lag"]
    assert events["topic"] == EVENTS and events["group"] == "herald-processor"
    assert events["partitions"] == 3
    assert [p["lag"] for p in events["per_partition"]] == [20, 0, 5]
    assert (events["lag"], events["max_lag"], events["max_lag_partition"]) == (25, 20, 0)
    assert (events["committed"], events["highwater"]) == (181, 205)
    assert events["consumed_per_s"] == (50 + 21) / 0.5
    assert actions["committed"] is None
    assert (actions["lag"], actions["max_lag"], actions["max_lag_partition"]) == (40, 40, 0)
    assert snapshot_json(before, after)["dead_letter_topic"] == {"topic": DLQ, "records": 3}


def test_no_lag_names_no_partition() -> None:
    snap = Snapshot(
        at=0.0,
        stats=_stats(),
        highwater={(EVENTS, 0): 10, (EVENTS, 1): 10},
        committed={"herald-processor": {(EVENTS, 0): 10, (EVENTS, 1): 10}},
    )
    row = consumer_lag(EVENTS, "herald-processor", before=None, after=snap, dt=0.0)
    assert (row["lag"], row["max_lag"], row["max_lag_partition"]) == (0, 0, None)
    assert row["consumed_per_s"] is None


def test_timer_backlog_counts_pending_and_overdue() -> None:
    snap = Snapshot(
        at=0.0,
        stats=_stats(),
        timers_pending={0: 10, 1: 0, 2: 35, 3: 4},
        timers_overdue={0: 2, 1: 0, 2: 0, 3: 4},
    )
    timers = snapshot_json(None, snap)["timers"]
    assert (timers["pending"], timers["overdue"], timers["busiest_partition"]) == (49, 6, 2)
    assert timers["per_partition"][3] == {"partition": 3, "pending": 4, "overdue": 4}
    text = _text(render(None, snap))
    assert "timers: 49 pending, 6 overdue over 4 partitions; most on p2 (35)" in text


def test_dispatch_results_per_channel_and_status() -> None:
    stats = _stats()
    stats["messages"] = {
        "email|sent": 40.0,
        "email|deduplicated": 2.0,
        "sms|failed": 3.0,
        "sms|retried": 5.0,
        "push|bounced": 1.0,
    }
    messages = snapshot_json(None, Snapshot(at=0.0, stats=stats))["messages"]
    assert list(messages) == ["email", "push", "sms"]
    assert messages["email"] == {
        "sent": 40,
        "suppressed": 0,
        "failed": 0,
        "retried": 0,
        "deduplicated": 2,
    }
    assert messages["sms"]["failed"] == 3 and messages["sms"]["retried"] == 5
    assert messages["push"]["bounced"] == 1
    lines = _text(render(None, Snapshot(at=0.0, stats=stats))).splitlines()
    header = next(line for line in lines if "deduplicated" in line)
    assert header.split("┃")[1:-1][-1].strip() == "bounced"
    email = next(line for line in lines if line.startswith("│ email"))
    assert [c.strip() for c in email.split("│")[1:-1]] == ["email", "40", "0", "0", "0", "2", "0"]


def test_journeys_sorted_by_entries_with_conversion() -> None:
    stats = _stats()
    stats["journeys"] = {
        "welcome|entries": 50.0,
        "welcome|goals": 10.0,
        "welcome|sent": 45.0,
        "cart|entries": 200.0,
        "cart|exits": 20.0,
        "cart|goals": 30.0,
        "winback|sent": 3.0,  # messages of runs entered before the totals began
        "a|b|entries": 7.0,  # journey ids are split at the last bar only
    }
    rows = snapshot_json(None, Snapshot(at=0.0, stats=stats))["journeys"]
    assert [r["journey"] for r in rows] == ["cart", "welcome", "a|b", "winback"]
    assert rows[0] == {
        "journey": "cart",
        "entries": 200,
        "exits": 20,
        "goals": 30,
        "sent": 0,
        "conversion": 0.15,
    }
    assert rows[1]["conversion"] == 0.2
    assert rows[3]["conversion"] is None
    text = _text(render(None, Snapshot(at=0.0, stats=stats)))
    cart = next(line for line in text.splitlines() if line.startswith("│ cart"))
    assert [c.strip() for c in cart.split("│")[1:-1]] == ["cart", "200", "20", "30", "0", "15.0%"]
    winback = next(line for line in text.splitlines() if line.startswith("│ winback"))
    assert winback.split("│")[-2].strip() == "—"


def test_long_journey_lists_are_cut_in_the_view_but_not_in_the_json() -> None:
    stats = _stats()
    stats["journeys"] = {f"j{i:02d}|entries": float(100 - i) for i in range(30)}
    facts = snapshot_json(None, Snapshot(at=0.0, stats=stats))
    assert len(facts["journeys"]) == 30
    text = _text(render_facts(facts, journey_rows_shown=5))
    assert "│ j04" in text and "│ j05" not in text
    assert "… and 25 more journeys" in text


def test_header_line_names_rates_latency_and_totals() -> None:
    before = Snapshot(at=0.0, stats=_stats(events=0, actions=0, dispatched=0, dead_letters=2))
    stats = _stats(events=1234, actions=600, dispatched=590, dead_letters=3, redis_ops=4936)
    stats["latency_ms"] = [12.0, 15.0, 80.0]
    after = Snapshot(at=1.0, stats=stats, highwater={(DLQ, 0): 3, (DLQ, 1): 1})
    text = _text(render(before, after))
    assert "(rates over 1.0 s)" in text
    assert "events/s 1,234.0" in text
    assert "actions/s 600.0" in text
    assert "dispatched/s 590.0" in text
    assert "dead letters 3" in text
    assert "redis ops/event 4.00" in text
    assert "event→dispatch p50 15 ms" in text and "p99 80 ms" in text
    assert "4 records in herald.dlq" in text
    first = _text(render(None, after))
    assert "events/s —" in first and "(rates after the next read)" in first


def test_lag_table_shows_sum_max_and_missing_commits() -> None:
    snap = Snapshot(
        at=0.0,
        stats=_stats(),
        highwater={(EVENTS, 0): 7, (EVENTS, 1): 2, (ACTIONS, 0): 4},
        committed={"herald-processor": {(EVENTS, 0): 2, (EVENTS, 1): 2}},
    )
    lines = _text(render(None, snap)).splitlines()
    events = next(line for line in lines if line.startswith("│ herald.events"))
    cells = [c.strip() for c in events.split("│")[1:-1]]
    assert cells == ["herald.events", "herald-processor", "2", "4", "9", "5", "5 (p0)", "—"]
    actions = next(line for line in lines if line.startswith("│ herald.actions"))
    cells = [c.strip() for c in actions.split("│")[1:-1]]
    assert cells[:7] == ["herald.actions", "herald-dispatcher", "1", "—", "4", "4", "4 (p0)"]
