"""Journeys compiled for execution: steps flattened into nodes addressed by step id.

Why flatten: a run's position must survive being written to Redis and read back by another
worker, so it is a step id (`steps.2.branch.0.steps.1`), and "what comes next" must be a
lookup, not a walk of the YAML tree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.errors import Problem, RulesError
from engine.expressions import Condition, compile_condition
from engine.language.journey import Journey
from engine.language.steps import (
    BranchArm,
    BranchStep,
    SplitStep,
    Step,
)
from engine.templates import value_names


@dataclass(slots=True)
class Node:
    """One executable step. `next` is where the run goes when this step is done (None = end)."""

    id: str
    kind: str
    spec: Any
    next: str | None = None
    arms: list[tuple[Condition | None, str | None]] = field(default_factory=list)
    split: list[tuple[str, float, str | None]] = field(default_factory=list)
    when: Condition | None = None
    # update_profile, emit, webhook: the render context names the step's templates read
    # (None: all of them, e.g. for a `send`, whose template is chosen at send time).
    names: frozenset[str] | None = None


@dataclass(slots=True)
class Program:
    """A compiled journey: its nodes, its first step, and its compiled conditions."""

    journey: Journey
    version: str
    first: str
    nodes: dict[str, Node]
    trigger_when: Condition | None
    audience: Condition | None
    exit_on: dict[str, list[Condition | None]]
    goal_when: Condition | None


# What each step kind renders (see `StepRunner`): its template strings' names are known here.
_RENDERED: dict[str, Callable[[Any], Any]] = {
    "update_profile": lambda spec: spec.set,
    "emit": lambda spec: spec.properties,
    "webhook": lambda spec: [spec.url, spec.body, spec.headers],
}


def _step_payload(step: Step) -> Any:
    return getattr(step, type(step).KIND)


def _compile_list(
    steps: list[Step], prefix: str, cont: str | None, nodes: dict[str, Node]
) -> str | None:
    """Compile `steps` so that the last one continues at `cont`; returns the first step's id."""
    next_id = cont
    for index in range(len(steps) - 1, -1, -1):
        step = steps[index]
        node_id = step.id or f"{prefix}.{index}"
        if node_id in nodes:
            raise ValueError(f"duplicate step id {node_id!r}")
        kind = type(step).KIND
        node = Node(id=node_id, kind=kind, spec=_step_payload(step), next=next_id)
        if isinstance(step, BranchStep):
            for arm_index, arm in enumerate(step.branch):
                if isinstance(arm, BranchArm):
                    first = _compile_list(
                        arm.steps, f"{node_id}.branch.{arm_index}.steps", next_id, nodes
                    )
                    node.arms.append((compile_condition(arm.when), first))
                else:
                    first = _compile_list(
                        arm.else_.steps, f"{node_id}.branch.else.steps", next_id, nodes
                    )
                    node.arms.append((None, first))
        elif isinstance(step, SplitStep):
            total = sum(arm.weight for arm in step.split)
            cumulative = 0.0
            for split_arm in step.split:
                cumulative += split_arm.weight / total
                first = _compile_list(
                    split_arm.steps, f"{node_id}.split.{split_arm.name}.steps", next_id, nodes
                )
                node.split.append((split_arm.name, cumulative, first))
        elif kind == "wait_for" and step.wait_for.when:  # type: ignore[union-attr]
            node.when = compile_condition(step.wait_for.when)  # type: ignore[union-attr]
        elif kind in _RENDERED:
            node.names = value_names(_RENDERED[kind](node.spec))
        nodes[node_id] = node
        next_id = node_id
    return next_id


def compile_journey(journey: Journey, version: str) -> Program:
    """Compile a validated journey; conditions were syntax-checked at load, so this cannot fail
    except for duplicate custom step ids, reported as a rules error."""
    nodes: dict[str, Node] = {}
    try:
        first = _compile_list(journey.steps, "steps", None, nodes)
    except ValueError as exc:
        raise RulesError([Problem(journey.journey, 1, 1, str(exc))]) from exc
    assert first is not None
    trigger_when = getattr(journey.trigger, "when", None)
    exit_on: dict[str, list[Condition | None]] = {}
    for rule in journey.exit_on:
        exit_on.setdefault(rule.event, []).append(
            compile_condition(rule.when) if rule.when else None
        )
    return Program(
        journey=journey,
        version=version,
        first=first,
        nodes=nodes,
        trigger_when=compile_condition(trigger_when) if trigger_when else None,
        audience=compile_condition(journey.audience) if journey.audience else None,
        exit_on=exit_on,
        goal_when=compile_condition(journey.goal.when)
        if journey.goal and journey.goal.when
        else None,
    )
