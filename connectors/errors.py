"""Errors of the connector layer that are not about one delivery.

    HeraldError (engine.errors)
    ├── ConnectorError           one delivery failed; `retryable` says whether to try again
    ├── UnknownConnector         a connector name that no registry entry or plugin provides
    └── ConnectorConfigError     a connector cannot be built: missing setting, broken plugin

Both of ours surface at start-up, never per message, so an operator sees them at once.
"""

from __future__ import annotations

from engine.errors import HeraldError

__all__ = ["ConnectorConfigError", "UnknownConnector"]


class UnknownConnector(HeraldError, LookupError):
    """Raised for a name no built-in or `herald.connectors` plugin provides; carries a hint."""

    def __init__(self, name: str, hint: str) -> None:
        self.name = name
        self.hint = hint
        super().__init__(f"unknown connector {name!r}. {hint}".rstrip())


class ConnectorConfigError(HeraldError):
    """A connector was asked for but cannot be built as configured."""
