"""JSON Schemas of the rules files, for editors (`herald schema > journey.schema.json`).

Why post-process pydantic's output: the schema is consumed by yaml-language-server, which needs
each member of a step/trigger `oneOf` to be told apart by its kind key (`ExitStep` has no
required key of its own, so `{}` would match it) and default values written the way a person
writes them in YAML (`09:00`, not `09:00:00`).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from engine.language.base import Spec
from engine.language.journey import Journey, MetricsFile, Segment, Settings

__all__ = [
    "SCHEMA_DIALECT",
    "journey_json_schema",
    "metrics_json_schema",
    "rules_json_schema",
    "segment_json_schema",
    "settings_json_schema",
]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_SECONDS_CLOCK = re.compile(r"^(\d{2}:\d{2}):00$")


def journey_json_schema() -> dict[str, Any]:
    """Schema of one `rules/journeys/*.yaml` file."""
    return _schema(Journey, "Herald journey", "One journey file of a Herald rules folder.")


def segment_json_schema() -> dict[str, Any]:
    """Schema of one `rules/segments/*.yaml` file."""
    return _schema(Segment, "Herald segment", "A named audience: an expression over a profile.")


def metrics_json_schema() -> dict[str, Any]:
    """Schema of `rules/metrics.yaml`."""
    return _schema(MetricsFile, "Herald metrics", "Windowed per-user aggregates of events.")


def settings_json_schema() -> dict[str, Any]:
    """Schema of the optional `rules/settings.yaml`."""
    return _schema(Settings, "Herald settings", "Engine-wide rules of a marketing team.")


def rules_json_schema(kind: str) -> dict[str, Any]:
    """The schema for one kind of rules file: journey, segment, metrics or settings."""
    makers = {
        "journey": journey_json_schema,
        "segment": segment_json_schema,
        "metrics": metrics_json_schema,
        "settings": settings_json_schema,
    }
    if kind not in makers:
        raise ValueError(f"unknown rules file kind {kind!r}: use one of {', '.join(makers)}")
    return makers[kind]()


def _schema(model: type[BaseModel], title: str, description: str) -> dict[str, Any]:
    body = model.model_json_schema(mode="validation")
    _require_kind_keys(body.get("$defs", {}))
    _tidy_defaults(body)
    return {"$schema": SCHEMA_DIALECT, **body, "title": title, "description": description}


def _spec_models() -> list[type[Spec]]:
    found: list[type[Spec]] = []
    stack: list[type[Spec]] = [Spec]
    while stack:
        model = stack.pop()
        found.append(model)
        stack.extend(model.__subclasses__())
    return found


def _require_kind_keys(defs: dict[str, Any]) -> None:
    """Make every step/trigger member require its kind key, so exactly one `oneOf` arm matches."""
    for model in _spec_models():
        entry = defs.get(model.__name__)
        if not model.KIND or not isinstance(entry, dict):
            continue
        if model.KIND in entry.get("properties", {}):
            required = entry.setdefault("required", [])
            if model.KIND not in required:
                required.insert(0, model.KIND)


def _tidy_defaults(node: Any) -> None:
    """Write defaults as a person would: `09:00`, not pydantic's `09:00:00`."""
    if isinstance(node, dict):
        default = node.get("default")
        if isinstance(default, str):
            match = _SECONDS_CLOCK.match(default)
            if match:
                node["default"] = match.group(1)
            elif default == "PT0S":
                node["default"] = "0d"
        for value in node.values():
            _tidy_defaults(value)
    elif isinstance(node, list):
        for value in node:
            _tidy_defaults(value)
