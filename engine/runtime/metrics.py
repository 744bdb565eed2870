"""Windowed per-user aggregates (`rules/metrics.yaml`), kept as time buckets.

Why buckets: a sliding window over raw events would grow with every purchase; fixed buckets
(a day for long windows, an hour or a minute for short ones) keep a user's state bounded while
staying accurate to one bucket at the window's far edge.
"""

from __future__ import annotations

from typing import Any

from engine.expressions import Condition, compile_condition
from engine.language.journey import MetricSpec
from engine.runtime.effects import iso

_DAY = 86400.0


def bucket_width(window_s: float) -> float:
    """Bucket size for a window: fine enough for short windows, bounded count for long ones."""
    if window_s >= 2 * _DAY:
        return _DAY
    if window_s >= 2 * 3600:
        return 3600.0
    return 60.0


class CompiledMetric:
    """A metric ready to fold events in and read its value at a time."""

    __slots__ = (
        "aggregate",
        "event_type",
        "field",
        "name",
        "path",
        "when",
        "width",
        "window",
    )

    def __init__(self, name: str, spec: MetricSpec) -> None:
        self.name = name
        self.field = f"metrics.{name}"  # the profile field a fold changes (see runtime.deps)
        self.aggregate = spec.aggregate
        self.event_type = spec.event_type
        self.path = spec.property_path
        self.window = spec.window.total_seconds() if spec.window else None
        self.width = bucket_width(self.window) if self.window else 0.0
        self.when: Condition | None = compile_condition(spec.when) if spec.when else None

    def _value_of(self, properties: dict[str, Any], at: float) -> Any:
        if not self.path:
            return iso(at) if self.aggregate in ("first", "last") else 1
        value: Any = properties
        for part in self.path:
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        return value

    def fold(self, state: dict[str, Any], properties: dict[str, Any], at: float) -> bool:
        """Add one event to the metric's state; False when the event carried no usable value."""
        agg = self.aggregate
        # A count ignores the event's value (reading it has no effect): page views are counted
        # on every event, so skip the lookup.
        value = 1 if agg == "count" else self._value_of(properties, at)
        if agg in ("first", "last"):
            if value is None:
                return False
            if agg == "last" or "v" not in state:
                state["v"] = value
                state["t"] = at
            return True
        if agg != "count" and (isinstance(value, bool) or not isinstance(value, int | float)):
            return False
        if self.window is None:
            state["v"] = _combine(agg, state.get("v"), value)
            return True
        width = self.width
        index = int(at // width)
        oldest = int((at - self.window) // width)
        buckets: list[list[Any]] = state.setdefault("b", [])
        if buckets:
            last = buckets[-1]
            if last[0] == index and buckets[0][0] >= oldest:
                # The usual case (events arrive in time order): the newest bucket, and
                # nothing to trim.
                last[1] = _combine(agg, last[1], value)
                return True
            if last[0] < index:
                buckets.append([index, _combine(agg, None, value)])
            else:  # a late event (or the newest bucket, with old ones to trim)
                for bucket in buckets:
                    if bucket[0] == index:
                        bucket[1] = _combine(agg, bucket[1], value)
                        break
                else:
                    buckets.append([index, _combine(agg, None, value)])
                    buckets.sort(key=lambda b: b[0])
        else:
            buckets.append([index, _combine(agg, None, value)])
        while buckets and buckets[0][0] < oldest:
            buckets.pop(0)
        return True

    def value(self, state: dict[str, Any] | None, now: float) -> Any:
        """The aggregate at `now`; counts and sums of nothing are 0, the rest None."""
        agg = self.aggregate
        if not state:
            return 0 if agg in ("count", "sum") else None
        if agg in ("first", "last"):
            return state.get("v")
        if self.window is None:
            return _finish(agg, state.get("v"))
        edge = now - self.window
        acc: Any = None
        for index, part in state.get("b", ()):
            if (index + 1) * self.width > edge and index * self.width <= now:
                acc = _merge(agg, acc, part)
        return _finish(agg, acc)


def _combine(agg: str, acc: Any, value: float) -> Any:
    if agg in ("count", "sum"):
        return (acc or 0) + value
    if agg == "avg":
        total, n = acc or (0.0, 0)
        return [total + value, n + 1]
    if agg == "min":
        return value if acc is None else min(acc, value)
    return value if acc is None else max(acc, value)


def _merge(agg: str, acc: Any, part: Any) -> Any:
    if acc is None:
        return list(part) if agg == "avg" else part
    if agg in ("count", "sum"):
        return acc + part
    if agg == "avg":
        return [acc[0] + part[0], acc[1] + part[1]]
    return min(acc, part) if agg == "min" else max(acc, part)


def _finish(agg: str, acc: Any) -> Any:
    if acc is None:
        return 0 if agg in ("count", "sum") else None
    if agg == "avg":
        return acc[0] / acc[1] if acc[1] else None
    return acc
