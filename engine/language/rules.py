"""A loaded, validated rules folder: what the runtime core is compiled from."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.language.journey import Journey, MetricSpec, Segment, Settings
from engine.templates import TemplateStore


@dataclass(frozen=True)
class RuleSet:
    """Everything under `rules/`, validated and cross-checked.

    `versions` holds a short content hash per journey: it goes into every message id, so an
    edited journey never collides with messages of its previous version, while an unchanged
    reload keeps ids stable.
    """

    journeys: dict[str, Journey]
    versions: dict[str, str]
    segments: dict[str, Segment] = field(default_factory=dict)
    metrics: dict[str, MetricSpec] = field(default_factory=dict)
    templates: TemplateStore = field(default_factory=TemplateStore.empty)
    settings: Settings = field(default_factory=Settings)
    sources: dict[str, str] = field(default_factory=dict)
