"""The base every language model shares: unknown keys are errors, parsed rules are immutable."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Discriminator, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError


class Spec(BaseModel):
    """A node of a rules file. `extra='forbid'` is what turns a typo into a located error."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    KIND: ClassVar[str] = ""


def one_of_keys(
    kinds: tuple[str, ...], what: str, *, companions: dict[str, tuple[str, ...]] | None = None
) -> Discriminator:
    """Discriminate a union by which single kind key a mapping holds (`send:`, `wait:`, ...).

    Why: YAML steps and triggers are written as `{kind: ...}`; telling pydantic which model to
    try makes errors point into the right model instead of listing every member's complaint.
    `companions` names keys that belong to a kind (a schedule trigger also carries `segment:`).
    """
    companions = companions or {}

    def pick(value: Any) -> str | None:
        if isinstance(value, Spec):
            return type(value).KIND or None
        if not isinstance(value, dict):
            return None
        present = [k for k in kinds if k in value]
        for kind in list(present):
            present = [k for k in present if k not in companions.get(kind, ())]
        return present[0] if len(present) == 1 else None

    return Discriminator(
        pick,
        custom_error_type=f"{what}_kind",
        custom_error_message=f"a {what} needs exactly one of: {', '.join(kinds)}",
        custom_error_context={"kinds": ", ".join(kinds)},
    )


def error_at(loc: tuple[str | int, ...], message: str, value: Any) -> ValidationError:
    """An error located below the field being validated (e.g. at one item of a list).

    Why: a validator that checks a whole list (`else` is last, arm names are unique) would
    otherwise be reported at the list; raising this inside a field validator makes pydantic
    extend `loc`, so the loader points at the offending item.
    """
    detail = InitErrorDetails(
        type=PydanticCustomError("value_error", "{reason}", {"reason": message}),
        loc=loc,
        input=value,
    )
    return ValidationError.from_exception_data("rules", [detail])
