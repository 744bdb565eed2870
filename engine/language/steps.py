"""Step kinds: what a run does, in order. Every step is a mapping with one kind key (+ `id`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, PositiveFloat, Tag, field_validator, model_validator

from engine.language.base import Spec, error_at, one_of_keys
from engine.language.fields import ArmName, Clock, Duration, EventName, Expr, Identifier

STEP_KINDS = (
    "send",
    "wait",
    "wait_for",
    "branch",
    "split",
    "update_profile",
    "emit",
    "webhook",
    "exit",
)


class StepBase(Spec):
    id: Identifier | None = None


class SendSpec(Spec):
    channel: str = Field(min_length=1)
    template: str | None = None
    subject: str | None = None
    body: str | None = None

    @model_validator(mode="after")
    def _template_or_body(self) -> SendSpec:
        if (self.template is None) == (self.body is None):
            raise ValueError("a send needs either `template` or an inline `body`")
        if self.template is not None and self.subject is not None:
            raise ValueError("`subject` goes in the template file's `Subject:` line")
        return self


class SendStep(StepBase):
    KIND = "send"
    send: SendSpec


class WaitUntil(Spec):
    until: Clock


class WaitStep(StepBase):
    KIND = "wait"
    wait: Duration | WaitUntil


class WaitForSpec(Spec):
    event: EventName
    when: Expr | None = None
    within: Duration
    then: Literal["exit", "continue"] = "continue"


class WaitForStep(StepBase):
    KIND = "wait_for"
    wait_for: WaitForSpec


class BranchArm(Spec):
    when: Expr
    steps: list[Step] = Field(min_length=1)


class ElseBody(Spec):
    steps: list[Step] = Field(min_length=1)


class ElseArm(Spec):
    else_: ElseBody = Field(alias="else")


def _arm_kind(value: Any) -> str | None:
    if isinstance(value, ElseArm) or (isinstance(value, dict) and "else" in value):
        return "else"
    if isinstance(value, BranchArm) or (isinstance(value, dict) and "when" in value):
        return "when"
    return None


class BranchStep(StepBase):
    KIND = "branch"
    branch: list[
        Annotated[
            Annotated[BranchArm, Tag("when")] | Annotated[ElseArm, Tag("else")],
            one_of_keys(("when", "else"), "branch arm"),
        ]
    ] = Field(min_length=1)

    @field_validator("branch")
    @classmethod
    def _else_last(cls, arms: list[BranchArm | ElseArm]) -> list[BranchArm | ElseArm]:
        for i, arm in enumerate(arms):
            if isinstance(arm, ElseArm) and i != len(arms) - 1:
                raise error_at((i,), "`else` must be the last arm of a branch", arm)
        return arms


class SplitArm(Spec):
    name: ArmName
    weight: PositiveFloat
    steps: list[Step] = Field(default_factory=list)


class SplitStep(StepBase):
    KIND = "split"
    split: list[SplitArm] = Field(min_length=1)

    @field_validator("split")
    @classmethod
    def _unique_names(cls, arms: list[SplitArm]) -> list[SplitArm]:
        seen: set[str] = set()
        for i, arm in enumerate(arms):
            if arm.name in seen:
                raise error_at((i, "name"), f"split arm name '{arm.name}' is used twice", arm.name)
            seen.add(arm.name)
        return arms


class UpdateProfileSpec(Spec):
    set: dict[str, Any] = Field(default_factory=dict)
    increment: dict[str, float] = Field(default_factory=dict)
    add_tags: list[str] = Field(default_factory=list)
    remove_tags: list[str] = Field(default_factory=list)
    unset: list[str] = Field(default_factory=list)


class UpdateProfileStep(StepBase):
    KIND = "update_profile"
    update_profile: UpdateProfileSpec


class EmitSpec(Spec):
    event: EventName
    properties: dict[str, Any] = Field(default_factory=dict)


class EmitStep(StepBase):
    KIND = "emit"
    emit: EmitSpec


class WebhookSpec(Spec):
    url: str = Field(min_length=1)
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None


class WebhookStep(StepBase):
    KIND = "webhook"
    webhook: WebhookSpec


class ExitSpec(Spec):
    pass


class ExitStep(StepBase):
    KIND = "exit"
    exit: ExitSpec | None = None


Step = Annotated[
    Annotated[SendStep, Tag("send")]
    | Annotated[WaitStep, Tag("wait")]
    | Annotated[WaitForStep, Tag("wait_for")]
    | Annotated[BranchStep, Tag("branch")]
    | Annotated[SplitStep, Tag("split")]
    | Annotated[UpdateProfileStep, Tag("update_profile")]
    | Annotated[EmitStep, Tag("emit")]
    | Annotated[WebhookStep, Tag("webhook")]
    | Annotated[ExitStep, Tag("exit")],
    one_of_keys(STEP_KINDS, "step"),
]

for _model in (BranchArm, ElseBody, BranchStep, SplitArm, SplitStep):
    _model.model_rebuild()
