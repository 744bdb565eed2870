"""The metrics registry and its Prometheus text rendering."""

from __future__ import annotations

import pytest

from workers.metrics import OTHER, Counter, Registry


def test_counter_renders_with_escaped_labels() -> None:
    registry = Registry()
    events = registry.counter("herald_events_total", "Events accepted,\nby type.", ["type"])
    events.inc("purchase")
    events.inc("purchase", amount=2)
    events.inc('a "quoted"\\path\nline')
    assert events.value("purchase") == 3
    assert registry.render() == (
        "# HELP herald_events_total Events accepted,\\nby type.\n"
        "# TYPE herald_events_total counter\n"
        'herald_events_total{type="a \\"quoted\\"\\\\path\\nline"} 1\n'
        'herald_events_total{type="purchase"} 3\n'
    )


def test_counter_rejects_decrease_and_wrong_labels() -> None:
    counter = Registry().counter("c_total", "c", ["a", "b"])
    with pytest.raises(ValueError):
        counter.inc("x", "y", amount=-1)
    with pytest.raises(ValueError):
        counter.inc("only-one")


def test_series_are_capped() -> None:
    counter = Counter("c_total", "c", ["type"], max_series=2)
    for name in ("a", "b", "c", "d", "a"):
        counter.inc(name)
    assert (counter.value("a"), counter.value("b"), counter.value(OTHER)) == (2, 1, 2)


def test_gauge_and_unlabelled() -> None:
    registry = Registry()
    pending = registry.gauge("herald_timers_pending", "Timers waiting.")
    pending.set(5)
    pending.inc(amount=-2)
    assert "herald_timers_pending 3\n" in registry.render()
    assert "# TYPE herald_timers_pending gauge\n" in registry.render()


def test_histogram_buckets_are_cumulative() -> None:
    registry = Registry()
    latency = registry.histogram("lat_seconds", "Latency.", ["channel"], buckets=[0.1, 1.0])
    for value in (0.05, 0.1, 0.5, 3.0):
        latency.observe(value, "email")
    assert latency.count("email") == 4
    assert registry.render().splitlines()[2:] == [
        'lat_seconds_bucket{channel="email",le="0.1"} 2',
        'lat_seconds_bucket{channel="email",le="1"} 3',
        'lat_seconds_bucket{channel="email",le="+Inf"} 4',
        'lat_seconds_sum{channel="email"} 3.65',
        'lat_seconds_count{channel="email"} 4',
    ]


def test_registry_returns_the_same_metric_and_refuses_a_clash() -> None:
    registry = Registry()
    first = registry.counter("x_total", "x", ["a"])
    assert registry.counter("x_total", "x", ["a"]) is first
    with pytest.raises(ValueError):
        registry.counter("x_total", "x", ["b"])
    with pytest.raises(ValueError):
        registry.gauge("x_total", "x", ["a"])
