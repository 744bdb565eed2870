"""Named connector factories, and the channel -> connector table the dispatcher uses.

Modelled on kombu's transport table and mode's `FactoryMapping`: names map to
`"module:attribute"` strings and a module is imported only when its connector is asked
for, so an unused provider SDK is never imported. Packages add connectors through the
`herald.connectors` entry-point group:

    [project.entry-points."herald.connectors"]
    line = "herald_line:LineConnector"

The target is a class (or callable) with `from_settings(settings) -> Connector`, or that
is called as `target(settings)`. A plugin's name is also its channel (journeys.md: a send's
channel is `email`, `sms`, `wechat`, `webhook` or a plugin's name); a plugin named after a
built-in channel replaces the built-in provider for it. A mistyped name fails with
`UnknownConnector` and a "did you mean".

Channels (runtime.md): email -> SendGrid when `SENDGRID_API_KEY` is set, sms -> Twilio
when `TWILIO_ACCOUNT_SID` is, wechat -> WeChat when `WECHAT_APP_ID` is, wecom -> WeCom when
`WECOM_CORP_ID` is, webhook -> the webhook connector when `HERALD_WEBHOOKS_LIVE` is; every
other channel goes to one shared outbox connector. `wecom` is a built-in provider rather than
a plugin because plugins are always built, and WeCom must fall back to the outbox when it is
not configured, like every other provider.
"""

from __future__ import annotations

import asyncio
import difflib
import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from connectors.base import Connector
from connectors.errors import ConnectorConfigError, UnknownConnector

if TYPE_CHECKING:
    from workers.config import Settings

__all__ = [
    "BUILTIN_CONNECTORS",
    "ENTRY_POINT_GROUP",
    "ConnectorFactories",
    "Connectors",
    "build_connectors",
    "default_factories",
]

ENTRY_POINT_GROUP = "herald.connectors"
BUILTIN_CONNECTORS: Mapping[str, str] = {
    "outbox": "connectors.outbox:OutboxConnector",
    "webhook": "connectors.webhook:WebhookConnector",
    "sendgrid": "connectors.sendgrid:SendGridConnector",
    "twilio": "connectors.twilio:TwilioConnector",
    "wechat": "connectors.wechat:WeChatConnector",
    "wecom": "connectors.wecom:WeComConnector",
    "recording": "connectors.fake:RecordingConnector",
}
# channel -> (connector name, the setting that switches the provider on)
PROVIDER_CHANNELS: Mapping[str, tuple[str, str]] = {
    "email": ("sendgrid", "sendgrid_api_key"),
    "sms": ("twilio", "twilio_account_sid"),
    "wechat": ("wechat", "wechat_app_id"),
    "wecom": ("wecom", "wecom_corp_id"),
}


def _installed_plugins(group: str) -> list[tuple[str, str]]:
    return [(ep.name, ep.value) for ep in entry_points(group=group)]


class ConnectorFactories(Mapping[str, str]):
    """name -> "module:attribute", with entry-point plugins folded in on first use."""

    def __init__(
        self,
        builtins: Mapping[str, str] = BUILTIN_CONNECTORS,
        *,
        group: str | None = ENTRY_POINT_GROUP,
        discover: Callable[[str], Iterable[tuple[str, str]]] = _installed_plugins,
    ) -> None:
        self._targets = dict(builtins)
        self._group = group
        self._discover = discover
        self._plugins: list[str] | None = None

    @property
    def plugins(self) -> list[str]:
        """Names registered through the entry-point group (each is also a channel)."""
        if self._plugins is None:
            found = list(self._discover(self._group)) if self._group else []
            self._targets.update(found)
            self._plugins = [name for name, _ in found]
        return list(self._plugins)

    def __getitem__(self, name: str) -> str:
        _ = self.plugins
        return self._targets[name]

    def __iter__(self) -> Iterator[str]:
        _ = self.plugins
        return iter(self._targets)

    def __len__(self) -> int:
        _ = self.plugins
        return len(self._targets)

    def by_name(self, name: str) -> Any:
        """Import and return the factory registered as `name`."""
        try:
            target = self[name]
        except KeyError:
            raise UnknownConnector(name, did_you_mean(name, list(self))) from None
        module_name, _, attribute = target.partition(":")
        try:
            module = importlib.import_module(module_name)
            return getattr(module, attribute) if attribute else module
        except (ImportError, AttributeError) as exc:
            raise ConnectorConfigError(
                f"connector {name!r} ({target}) cannot be loaded: {exc}"
            ) from exc

    def create(self, name: str, settings: Settings) -> Connector:
        """Build the connector `name` from settings."""
        factory = self.by_name(name)
        build = getattr(factory, "from_settings", None)
        connector = build(settings) if build is not None else factory(settings)
        if not isinstance(connector, Connector):
            raise ConnectorConfigError(
                f"connector {name!r} built a {type(connector).__name__}, which lacks "
                "name/start/send/delivered/close"
            )
        return connector


def did_you_mean(name: str, choices: list[str]) -> str:
    """The hint of an UnknownConnector: close matches first, else every choice."""
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    if close:
        return "Did you mean " + " or ".join(repr(c) for c in close) + "?"
    return "Available: " + ", ".join(sorted(choices)) + "."


_default: ConnectorFactories | None = None


def default_factories() -> ConnectorFactories:
    """The process-wide table: built-ins plus installed `herald.connectors` plugins."""
    global _default
    if _default is None:
        _default = ConnectorFactories()
    return _default


class Connectors(Mapping[str, Connector]):
    """channel -> connector for configured channels; `connector_for` falls back to the outbox.

    Channels without a provider share one outbox connector (one file handle, one index).
    """

    def __init__(self, channels: Mapping[str, Connector], outbox: Connector) -> None:
        self._channels = dict(channels)
        self.outbox = outbox

    def __getitem__(self, channel: str) -> Connector:
        return self._channels[channel]

    def __iter__(self) -> Iterator[str]:
        return iter(self._channels)

    def __len__(self) -> int:
        return len(self._channels)

    def connector_for(self, channel: str) -> Connector:
        """The channel's provider, or the outbox (unknown channel, or none configured)."""
        return self._channels.get(channel, self.outbox)

    def describe(self) -> dict[str, str]:
        """channel -> connector name, for the start-up log line."""
        table = {channel: c.name for channel, c in self._channels.items()}
        table["*"] = self.outbox.name
        return table

    def distinct(self) -> list[Connector]:
        """Each connector once, the outbox first."""
        seen: dict[int, Connector] = {id(self.outbox): self.outbox}
        for connector in self._channels.values():
            seen.setdefault(id(connector), connector)
        return list(seen.values())

    async def start(self) -> None:
        """Start all; if one fails, close the ones already started and raise."""
        started: list[Connector] = []
        try:
            for connector in self.distinct():
                await connector.start()
                started.append(connector)
        except BaseException:
            await asyncio.gather(*(c.close() for c in started), return_exceptions=True)
            raise

    async def close(self) -> None:
        """Close all, even when some fail to close (the first error is raised afterwards)."""
        results = await asyncio.gather(
            *(c.close() for c in self.distinct()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result


def build_connectors(
    settings: Settings, *, factories: ConnectorFactories | None = None
) -> Connectors:
    """The channel table runtime.md describes, plus one channel per installed plugin."""
    table = factories or default_factories()
    outbox = table.create("outbox", settings)
    channels: dict[str, Connector] = {}
    for channel, (name, switch) in PROVIDER_CHANNELS.items():
        if getattr(settings, switch, None):
            channels[channel] = table.create(name, settings)
    if getattr(settings, "webhooks_live", False):
        # Off by default: a dev box or CI run must never call the URLs a journey names.
        channels["webhook"] = table.create("webhook", settings)
    for plugin in table.plugins:
        channels[plugin] = table.create(plugin, settings)
    return Connectors(channels, outbox)
