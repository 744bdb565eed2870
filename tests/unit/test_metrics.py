"""The API's metrics on the prometheus_client registry of `Telemetry`."""

from __future__ import annotations

from datetime import UTC, datetime

from engine.events import Event
from workers.api import OTHER_TYPE, ApiMetrics
from workers.telemetry import Telemetry


def test_accepted_events_are_counted_by_type() -> None:
    telemetry = Telemetry()
    metrics = ApiMetrics(telemetry)
    now = datetime.now(UTC)
    metrics.accepted([Event("1", "purchase", "u", now), Event("2", "purchase", "v", now)])
    metrics.invalid("missing_user_id", 3)
    value = telemetry.registry.get_sample_value
    assert value("herald_events_total", {"type": "purchase"}) == 2
    assert value("herald_events_invalid_total", {"reason": "missing_user_id"}) == 3
    text = telemetry.render().decode()
    assert 'herald_events_total{type="purchase"} 2.0\n' in text


def test_event_type_series_are_capped() -> None:
    telemetry = Telemetry()
    metrics = ApiMetrics(telemetry, max_types=2)
    now = datetime.now(UTC)
    metrics.accepted(Event(str(i), t, "u", now) for i, t in enumerate("abcda"))
    value = telemetry.registry.get_sample_value
    assert value("herald_events_total", {"type": "a"}) == 2
    assert value("herald_events_total", {"type": "b"}) == 1
    assert value("herald_events_total", {"type": OTHER_TYPE}) == 2
    assert value("herald_events_total", {"type": "c"}) is None


def test_webhook_outcomes_skip_zero() -> None:
    telemetry = Telemetry()
    metrics = ApiMetrics(telemetry)
    metrics.webhook("sendgrid", "accepted", 2)
    metrics.webhook("sendgrid", "ignored", 0)
    value = telemetry.registry.get_sample_value
    labels = {"provider": "sendgrid", "result": "accepted"}
    assert value("herald_webhook_items_total", labels) == 2
    assert value("herald_webhook_items_total", {**labels, "result": "ignored"}) is None


def test_api_metrics_are_registered_once_per_telemetry() -> None:
    telemetry = Telemetry()
    assert ApiMetrics.of(telemetry) is ApiMetrics.of(telemetry)
    assert ApiMetrics.of(Telemetry()) is not ApiMetrics.of(telemetry)
