"""A small in-process metrics registry rendered in the Prometheus text format (version 0.0.4).

Each worker process owns one `Registry` and serves `registry.render()` at `/metrics`. It is
deliberately tiny: counters, gauges and histograms with fixed label names, no threads, no
global state, so tests create their own registry and read values back with `value()`.

Label values often come from clients (an event type): a metric keeps at most `max_series`
label combinations and folds any further ones into the value `_other`, so a client cannot grow
a worker's memory or a scrape without bound.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, TypeVar

__all__ = ["DEFAULT_BUCKETS", "OTHER", "Counter", "Gauge", "Histogram", "Registry"]

OTHER: Final = "_other"
DEFAULT_MAX_SERIES: Final = 1000
DEFAULT_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


class _Metric:
    kind = "untyped"

    def __init__(
        self, name: str, help: str, labels: Sequence[str], max_series: int = DEFAULT_MAX_SERIES
    ) -> None:
        self.name = name
        self.help = help
        self.labels = tuple(labels)
        self.max_series = max_series

    def _key(
        self, values: tuple[str, ...], series: Mapping[tuple[str, ...], object]
    ) -> tuple[str, ...]:
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {values}")
        if values in series or len(series) < self.max_series:
            return values
        return (OTHER,) * len(values)

    def _label_text(self, values: tuple[str, ...], extra: str = "") -> str:
        pairs = [f'{k}="{_escape_label(v)}"' for k, v in zip(self.labels, values, strict=True)]
        if extra:
            pairs.append(extra)
        return "{" + ",".join(pairs) + "}" if pairs else ""

    def samples(self) -> Iterable[str]:
        raise NotImplementedError

    def render(self) -> str:
        head = f"# HELP {self.name} {_escape_help(self.help)}\n# TYPE {self.name} {self.kind}\n"
        return head + "".join(line + "\n" for line in self.samples())


class _Values(_Metric):
    """One number per label values."""

    def __init__(
        self, name: str, help: str, labels: Sequence[str], max_series: int = DEFAULT_MAX_SERIES
    ) -> None:
        super().__init__(name, help, labels, max_series)
        self._values: dict[tuple[str, ...], float] = {}

    def _add(self, label_values: tuple[str, ...], amount: float) -> None:
        key = self._key(label_values, self._values)
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *label_values: str) -> float:
        return self._values.get(label_values, 0.0)

    def samples(self) -> Iterable[str]:
        for values, v in sorted(self._values.items()):
            yield f"{self.name}{self._label_text(values)} {_number(v)}"


class Counter(_Values):
    """A monotonically increasing count."""

    kind = "counter"

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self._add(label_values, amount)


class Gauge(_Values):
    """A value that goes up and down (a backlog, a lag)."""

    kind = "gauge"

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        self._add(label_values, amount)

    def set(self, value: float, *label_values: str) -> None:
        self._values[self._key(label_values, self._values)] = value


class Histogram(_Metric):
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labels: Sequence[str],
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        max_series: int = DEFAULT_MAX_SERIES,
    ) -> None:
        super().__init__(name, help, labels, max_series)
        self.buckets = tuple(sorted(buckets))
        # per series: the count in each bucket (the last one is +Inf), and the sum
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *label_values: str) -> None:
        key = self._key(label_values, self._series)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = ([0] * (len(self.buckets) + 1), [0.0])
        series[0][bisect_left(self.buckets, value)] += 1
        series[1][0] += value

    def count(self, *label_values: str) -> int:
        series = self._series.get(label_values)
        return sum(series[0]) if series else 0

    def samples(self) -> Iterable[str]:
        for values, (counts, total) in sorted(self._series.items()):
            running = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                running += n
                le = f'le="{_number(bound)}"'
                yield f"{self.name}_bucket{self._label_text(values, le)} {running}"
            yield f"{self.name}_sum{self._label_text(values)} {_number(total[0])}"
            yield f"{self.name}_count{self._label_text(values)} {running}"


M = TypeVar("M", bound=_Metric)


class Registry:
    """The metrics of one process; asking twice for the same name returns the same metric."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        return self._register(Counter(name, help, labels))

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        return self._register(Gauge(name, help, labels))

    def histogram(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        return self._register(Histogram(name, help, labels, buckets))

    def render(self) -> str:
        return "".join(m.render() for _, m in sorted(self._metrics.items()))

    def _register(self, metric: M) -> M:
        existing = self._metrics.setdefault(metric.name, metric)
        if type(existing) is not type(metric) or existing.labels != metric.labels:
            raise ValueError(
                f"metric {metric.name} is already a {existing.kind} with labels {existing.labels}"
            )
        return existing


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:
        return "NaN"
    return str(int(value)) if value == int(value) else repr(value)
