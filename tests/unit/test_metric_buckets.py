"""Windowed metrics kept as time buckets (`engine.runtime.metrics`).

`fold` has a fast path for the usual case (an event landing in the newest bucket); these
tests hold it to the general algorithm, bucket for bucket, on in-order and late events and on
windows that are and are not a whole number of buckets wide.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from engine.language.journey import MetricSpec
from engine.runtime.metrics import CompiledMetric, _combine

DAY = 86400.0


def _reference_fold(metric: CompiledMetric, state: dict[str, Any], value: float, at: float) -> None:
    """The general algorithm: find the bucket anywhere, keep them sorted, trim the old."""
    index = int(at // metric.width)
    buckets: list[list[Any]] = state.setdefault("b", [])
    for bucket in buckets:
        if bucket[0] == index:
            bucket[1] = _combine(metric.aggregate, bucket[1], value)
            break
    else:
        buckets.append([index, _combine(metric.aggregate, None, value)])
        buckets.sort(key=lambda b: b[0])
    oldest = int((at - metric.window) // metric.width)  # type: ignore[operator]
    while buckets and buckets[0][0] < oldest:
        buckets.pop(0)


@pytest.mark.parametrize("window", ["30d", "90m", "36h", "45s", "7d", "100s"])
@pytest.mark.parametrize("aggregate", ["sum", "count", "max", "avg"])
def test_fold_matches_the_general_algorithm(window: str, aggregate: str) -> None:
    source = "purchase" if aggregate == "count" else "purchase.properties.amount"
    metric = CompiledMetric("m", MetricSpec.model_validate({aggregate: source, "window": window}))
    rng = random.Random(f"{window}-{aggregate}")
    fast: dict[str, Any] = {}
    reference: dict[str, Any] = {}
    at = 1_700_000_000.0
    for _ in range(3000):
        at += rng.choice([0.5, 7.0, 61.0, 3599.0, DAY / 3, 2 * DAY])
        when = at - rng.choice([0.0, 0.0, 0.0, 30.0, 4000.0, DAY])  # some arrive late
        amount = rng.randrange(1, 500)
        assert metric.fold(fast, {"amount": amount}, when)
        value = 1 if aggregate == "count" else amount
        _reference_fold(metric, reference, value, when)
        assert fast == reference
        assert metric.value(fast, at) == metric.value(reference, at)


def test_sum_over_a_sliding_window() -> None:
    metric = CompiledMetric(
        "spend", MetricSpec.model_validate({"sum": "purchase.properties.amount", "window": "2d"})
    )
    state: dict[str, Any] = {}
    start = 100 * DAY
    metric.fold(state, {"amount": 10}, start)
    metric.fold(state, {"amount": 5}, start + 3600)
    metric.fold(state, {"amount": 7}, start + DAY)
    assert metric.value(state, start + DAY) == 22
    assert metric.value(state, start + 3 * DAY) == 7  # the first day slid out (whole buckets)
    assert metric.value(state, start + 4 * DAY) == 0
    assert not metric.fold(state, {"amount": "ten"}, start + DAY)  # not a number: ignored
