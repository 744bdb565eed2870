"""Delivery of rendered messages: one connector per provider, behind one Protocol.

    base        Delivery, Receipt, the Connector / BatchConnector protocols
    registry    name -> factory table (+ `herald.connectors` plugins), build_connectors()
    outbox      the sandbox file connector (exactly one line per message id)
    webhook     HTTP calls for the `webhook` channel
    sendgrid    email (official SDK)      twilio   sms (official SDK)
    wechat      WeChat Official Account messages
    wecom       WeCom (WeChat Work) application messages, the `wecom` channel
    fake        RecordingConnector, the in-memory fake for tests of callers
    errors      UnknownConnector, ConnectorConfigError

Only `base` and `errors` are imported here: provider SDKs load when their connector is built.
"""

from connectors.base import BatchConnector, Connector, Delivery, Receipt
from connectors.errors import ConnectorConfigError, UnknownConnector

__all__ = [
    "BatchConnector",
    "Connector",
    "ConnectorConfigError",
    "Delivery",
    "Receipt",
    "UnknownConnector",
]
