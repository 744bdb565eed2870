"""Herald's exception tree.

    HeraldError                      root: catch this to catch anything Herald raises on purpose
    ├── RulesError                   the rules folder cannot be loaded; carries every problem found
    ├── ExpressionError              a condition or template failed to compile (bad syntax)
    ├── TemplateRenderError          a template failed at render time (undefined variable, ...)
    ├── InvalidEvent                 an incoming event failed validation; carries the reason
    ├── ConnectorError               a provider call failed; `retryable` says whether to try again
    └── ServiceError                 an embedded broker or store could not be started or reached

User errors (bad YAML, bad events) carry a location or a reason a person can act on.
"""

from __future__ import annotations

from dataclasses import dataclass


class HeraldError(Exception):
    """Root of every error Herald raises deliberately."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a rules file, printed as `path:line:col: message`."""

    path: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"


class RulesError(HeraldError):
    """Raised when rules cannot be loaded; keeps every problem so the user sees them at once."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.path, p.line, p.col, p.message))
        super().__init__("\n".join(str(p) for p in self.problems))


class ExpressionError(HeraldError):
    """A condition or template does not compile; `line`/`col` are relative to the expression."""

    def __init__(self, message: str, line: int = 1, col: int = 1) -> None:
        self.message = message
        self.line = line
        self.col = col
        super().__init__(message)


class TemplateRenderError(HeraldError):
    """Rendering failed; the send is recorded as failed, never half-rendered."""


class InvalidEvent(HeraldError):
    """An event failed validation; `reason` is short and countable, `detail` is for people."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail or reason
        super().__init__(f"{reason}: {self.detail}" if detail else reason)


class ConnectorError(HeraldError):
    """A provider refused or failed a delivery."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        self.retryable = retryable
        super().__init__(message)


class ServiceError(HeraldError):
    """An embedded or configured service (broker, Redis) is unavailable."""
