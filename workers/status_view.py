"""What `herald status` shows, computed from two snapshots: the pure half of the command.

Everything here is a function of data already read (no clock, no I/O), so rates, lag and
percentiles are unit-tested with fabricated snapshots, and the live view, `--once` and
`--json` cannot disagree: the table is drawn from the very dict `snapshot_json` returns.

Rates are deltas of the cluster-wide running totals (`workers.stats`) over the time between
the two snapshots. The totals are floats in Redis (HINCRBYFLOAT) but count whole things, so
they are shown and returned as integers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from workers.topics import ACTIONS, DLQ, EVENTS

TopicPartitionKey = tuple[str, int]

PROCESSOR_GROUP = "herald-processor"
DISPATCHER_GROUP = "herald-dispatcher"
# Which consumer group's lag is measured on which topic (the DLQ has no Herald consumer).
LAG_GROUPS: tuple[tuple[str, str], ...] = ((EVENTS, PROCESSOR_GROUP), (ACTIONS, DISPATCHER_GROUP))
# herald_messages_total{status} values, in the order they are shown; others follow, sorted.
STATUSES: tuple[str, ...] = ("sent", "suppressed", "failed", "retried", "deduplicated")
JOURNEY_FIELDS: tuple[str, ...] = ("entries", "exits", "goals", "sent")
DEFAULT_JOURNEY_ROWS = 25


@dataclass(frozen=True)
class Snapshot:
    """One read of everything `status` shows; two of them give rates.

    `at` is a monotonic reading (seconds) used only for the interval between two snapshots.
    `committed` is keyed by consumer group; a partition the group never committed is None.
    """

    at: float
    stats: Mapping[str, Any]
    highwater: Mapping[TopicPartitionKey, int] = field(default_factory=dict)
    committed: Mapping[str, Mapping[TopicPartitionKey, int | None]] = field(default_factory=dict)
    timers_pending: Mapping[int, int] = field(default_factory=dict)
    timers_overdue: Mapping[int, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- facts


def snapshot_json(
    before: Snapshot | None, after: Snapshot, *, lag_groups: Sequence[tuple[str, str]] = LAG_GROUPS
) -> dict[str, Any]:
    """Every fact the view shows, JSON-ready. `before=None` (first read) gives no rates."""
    dt = (after.at - before.at) if before is not None else 0.0
    prev = before if before is not None and dt > 0 else None
    processor_now = _section(after.stats, "processor")
    processor_then = _section(prev.stats, "processor") if prev else None

    def rate(name: str) -> float | None:
        if processor_then is None:
            return None
        return _per_second(processor_now.get(name, 0.0) - processor_then.get(name, 0.0), dt)

    totals = {
        name: _count(processor_now.get(name, 0.0))
        for name in (
            "events",
            "inputs",
            "skipped",
            "actions",
            "dispatched",
            "dead_letters",
            "batches",
            "redis_ops",
        )
    }
    return {
        "interval_s": round(dt, 3) if prev else None,
        "rates": {
            "events_per_s": rate("events"),
            "actions_per_s": rate("actions"),
            "dispatched_per_s": rate("dispatched"),
            "dead_letters_per_s": rate("dead_letters"),
        },
        "totals": totals,
        "redis_ops_per_event": redis_ops_per_event(processor_then, processor_now),
        "latency_ms": latency_summary(_latencies(after.stats)),
        "lag": [
            consumer_lag(topic, group, before=prev, after=after, dt=dt)
            for topic, group in lag_groups
        ],
        "dead_letter_topic": {
            "topic": DLQ,
            "records": sum(hw for (t, _p), hw in after.highwater.items() if t == DLQ),
        },
        "timers": timer_backlog(after.timers_pending, after.timers_overdue),
        "messages": dispatch_results(_section(after.stats, "messages")),
        "journeys": journey_rows(_section(after.stats, "journeys")),
        "event_types": {
            name: _count(n) for name, n in sorted(_section(after.stats, "event_types").items())
        },
    }


def redis_ops_per_event(then: Mapping[str, float] | None, now: Mapping[str, float]) -> float | None:
    """Over the interval when events flowed in it, else over everything so far; None if none."""
    if then is not None:
        events = now.get("events", 0.0) - then.get("events", 0.0)
        if events > 0:
            return round((now.get("redis_ops", 0.0) - then.get("redis_ops", 0.0)) / events, 2)
    events = now.get("events", 0.0)
    if events > 0:
        return round(now.get("redis_ops", 0.0) / events, 2)
    return None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (a value that was observed, never an interpolation)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(samples: Sequence[float]) -> dict[str, Any]:
    """p50/p99 of the most recent event→dispatch latencies the dispatchers kept."""
    return {
        "samples": len(samples),
        "p50": percentile(samples, 50),
        "p99": percentile(samples, 99),
    }


def consumer_lag(
    topic: str, group: str, *, before: Snapshot | None, after: Snapshot, dt: float
) -> dict[str, Any]:
    """Committed offset vs high watermark per partition of `topic`, summed and maxed.

    A partition the group never committed counts from offset 0 (Herald's consumers start at
    `earliest`), and a commit read a moment after the high watermark can be ahead of it, so
    lag is clamped at 0.
    """
    committed_now = after.committed.get(group, {})
    rows: list[dict[str, Any]] = []
    for (t, partition), highwater in sorted(after.highwater.items()):
        if t != topic:
            continue
        committed = committed_now.get((t, partition))
        rows.append(
            {
                "partition": partition,
                "committed": committed,
                "highwater": highwater,
                "lag": max(0, highwater - (committed or 0)),
            }
        )
    committed_rows = [r for r in rows if r["committed"] is not None]
    worst = max(rows, key=lambda r: (r["lag"], -r["partition"]), default=None)
    consumed_per_s: float | None = None
    if before is not None and dt > 0:
        then = before.committed.get(group, {})
        moved = sum(
            (committed_now.get(key) or 0) - (then.get(key) or 0)
            for key in committed_now
            if key[0] == topic
        )
        consumed_per_s = _per_second(moved, dt)
    return {
        "topic": topic,
        "group": group,
        "partitions": len(rows),
        # None when the group has committed nothing on this topic (never ran, or unknown group).
        "committed": sum(r["committed"] for r in committed_rows) if committed_rows else None,
        "highwater": sum(r["highwater"] for r in rows),
        "lag": sum(r["lag"] for r in rows),
        "max_lag": worst["lag"] if worst else 0,
        "max_lag_partition": worst["partition"] if worst and worst["lag"] else None,
        "consumed_per_s": consumed_per_s,
        "per_partition": rows,
    }


def timer_backlog(pending: Mapping[int, int], overdue: Mapping[int, int]) -> dict[str, Any]:
    """Users with a timer per partition, and how many of them are already due."""
    partitions = sorted(set(pending) | set(overdue))
    busiest = max(partitions, key=lambda p: (pending.get(p, 0), -p), default=None)
    return {
        "pending": sum(pending.values()),
        "overdue": sum(overdue.values()),
        "busiest_partition": busiest if busiest is not None and pending.get(busiest) else None,
        "per_partition": [
            {"partition": p, "pending": pending.get(p, 0), "overdue": overdue.get(p, 0)}
            for p in partitions
        ],
    }


def dispatch_results(messages: Mapping[str, float]) -> dict[str, dict[str, int]]:
    """`channel|status` totals -> {channel: {status: n}} with every known status present."""
    out: dict[str, dict[str, int]] = {}
    for key, n in messages.items():
        channel, _, status = key.rpartition("|")
        row = out.setdefault(channel or "?", dict.fromkeys(STATUSES, 0))
        row[status] = row.get(status, 0) + _count(n)
    return {channel: out[channel] for channel in sorted(out)}


def journey_rows(journeys: Mapping[str, float]) -> list[dict[str, Any]]:
    """Per journey totals and conversion (goals / entries), most entered first."""
    table: dict[str, dict[str, int]] = {}
    for key, n in journeys.items():
        name, _, what = key.rpartition("|")
        if not name or what not in JOURNEY_FIELDS:
            continue
        table.setdefault(name, dict.fromkeys(JOURNEY_FIELDS, 0))[what] += _count(n)
    rows: list[dict[str, Any]] = [
        {
            "journey": name,
            **counts,
            "conversion": round(counts["goals"] / counts["entries"], 4)
            if counts["entries"]
            else None,
        }
        for name, counts in table.items()
    ]
    rows.sort(key=lambda r: (-r["entries"], r["journey"]))
    return rows


# --------------------------------------------------------------------------- view


def render(
    before: Snapshot | None, after: Snapshot, *, journey_rows_shown: int = DEFAULT_JOURNEY_ROWS
) -> RenderableType:
    """The whole screen for two snapshots (see `render_facts`)."""
    return render_facts(snapshot_json(before, after), journey_rows_shown=journey_rows_shown)


def render_facts(
    facts: Mapping[str, Any], *, journey_rows_shown: int = DEFAULT_JOURNEY_ROWS
) -> RenderableType:
    """Header, consumer lag, timer backlog, dispatch results and journeys, top to bottom."""
    return Group(
        _header(facts),
        Text(),
        _lag_table(facts["lag"]),
        _timers_line(facts["timers"]),
        Text(),
        _messages_table(facts["messages"]),
        Text(),
        _journeys_table(facts["journeys"], journey_rows_shown),
    )


def _header(facts: Mapping[str, Any]) -> Text:
    rates, totals, latency = facts["rates"], facts["totals"], facts["latency_ms"]
    interval = facts["interval_s"]
    text = Text("herald status", style="bold")
    text.append(
        f"  (rates over {interval:.1f} s)" if interval else "  (rates after the next read)",
        style="dim",
    )
    text.append("\n")
    parts = [
        ("events/s", _rate(rates["events_per_s"])),
        ("actions/s", _rate(rates["actions_per_s"])),
        ("dispatched/s", _rate(rates["dispatched_per_s"])),
        ("dead letters", f"{totals['dead_letters']:,}"),
        ("redis ops/event", _number(facts["redis_ops_per_event"])),
        ("event→dispatch p50", _ms(latency["p50"])),
        ("p99", _ms(latency["p99"])),
    ]
    for i, (label, value) in enumerate(parts):
        if i:
            text.append("   ")
        text.append(f"{label} ")
        text.append(value, style="bold cyan")
    dlq = facts["dead_letter_topic"]
    text.append(
        f"\ntotals: {_plural(totals['events'], 'event')}, "
        f"{_plural(totals['actions'], 'action')}, {totals['dispatched']:,} dispatched, "
        f"{_plural(dlq['records'], 'record')} in {dlq['topic']}, "
        f"{_plural(latency['samples'], 'latency sample')}",
        style="dim",
    )
    return text


def _lag_table(rows: Iterable[Mapping[str, Any]]) -> Table:
    table = Table(title="consumer lag", title_justify="left", expand=False)
    for name, justify in (
        ("topic", "left"),
        ("group", "left"),
        ("partitions", "right"),
        ("committed", "right"),
        ("high watermark", "right"),
        ("lag", "right"),
        ("max lag", "right"),
        ("consumed/s", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        worst = row["max_lag_partition"]
        table.add_row(
            row["topic"],
            row["group"],
            str(row["partitions"]) if row["partitions"] else "missing",
            "—" if row["committed"] is None else f"{row['committed']:,}",
            f"{row['highwater']:,}",
            Text(f"{row['lag']:,}", style="bold red" if row["lag"] else "green"),
            f"{row['max_lag']:,}" + (f" (p{worst})" if worst is not None else ""),
            _rate(row["consumed_per_s"]),
        )
    return table


def _timers_line(timers: Mapping[str, Any]) -> Text:
    text = Text("timers: ")
    text.append(f"{timers['pending']:,} pending", style="bold")
    text.append(", ")
    text.append(f"{timers['overdue']:,} overdue", style="bold red" if timers["overdue"] else "")
    partitions = len(timers["per_partition"])
    busiest = timers["busiest_partition"]
    detail = f" over {partitions} partition{'s' if partitions != 1 else ''}"
    if busiest is not None:
        most = next(p for p in timers["per_partition"] if p["partition"] == busiest)
        detail += f"; most on p{busiest} ({most['pending']:,})"
    text.append(detail, style="dim")
    return text


def _messages_table(messages: Mapping[str, Mapping[str, int]]) -> Table:
    statuses = list(STATUSES)
    for row in messages.values():
        statuses.extend(sorted(s for s in row if s not in statuses))
    table = Table(title="dispatch results", title_justify="left")
    table.add_column("channel")
    for status in statuses:
        table.add_column(status, justify="right")
    if not messages:
        table.add_row("(none yet)", *["" for _ in statuses])
    for channel, row in messages.items():
        table.add_row(channel, *[f"{row.get(s, 0):,}" for s in statuses])
    return table


def _journeys_table(rows: Sequence[Mapping[str, Any]], shown: int) -> Table:
    table = Table(title="journeys (by entries)", title_justify="left")
    table.add_column("journey")
    for name in (*JOURNEY_FIELDS, "conversion"):
        table.add_column(name, justify="right")
    if not rows:
        table.add_row("(none yet)", "", "", "", "", "")
    for row in rows[:shown]:
        conversion = row["conversion"]
        table.add_row(
            row["journey"],
            *[f"{row[name]:,}" for name in JOURNEY_FIELDS],
            "—" if conversion is None else f"{conversion:.1%}",
        )
    if len(rows) > shown:
        table.caption = f"… and {len(rows) - shown} more journeys (all in --json)"
    return table


# --------------------------------------------------------------------------- helpers


def _section(stats: Mapping[str, Any], name: str) -> dict[str, float]:
    raw = stats.get(name) or {}
    return {str(k): float(v) for k, v in raw.items()}


def _latencies(stats: Mapping[str, Any]) -> list[float]:
    return [float(v) for v in stats.get("latency_ms") or []]


def _count(value: float) -> int:
    return round(value)


def _per_second(delta: float, dt: float) -> float:
    # A negative delta means the totals were reset (Redis flushed); that is no throughput.
    return round(max(0.0, delta) / dt, 2)


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f} ms"
