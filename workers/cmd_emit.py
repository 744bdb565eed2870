"""`herald emit TYPE --user ID [--prop k=v ...] [--trait k=v ...]`: one event through the API.

It goes through the HTTP API (not straight to Kafka) so it exercises exactly what a backend's
call does: authentication, validation, the broker acknowledgement. The API's JSON answer is
printed as it is; the exit status says whether the event was accepted (0), refused (1) or the
API could not be reached at all (2).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import sys
from typing import Any

import orjson

from engine.errors import ServiceError
from workers.api import post_event
from workers.config import Settings

__all__ = ["default_api_url", "run"]


def default_api_url(settings: Settings) -> str:
    """`http://HERALD_API_HOST:HERALD_API_PORT`, a wildcard bind address read as loopback."""
    host = settings.api_host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"http://{host}:{settings.api_port}"
    if address.is_unspecified:  # 0.0.0.0 / :: is where the API listens, not where to call it
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    shown = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{shown}:{settings.api_port}"


def run(args: argparse.Namespace) -> int:
    """CLI handler."""
    settings = Settings()
    base_url: str = getattr(args, "api_url", None) or default_api_url(settings)
    # The first configured key lets `herald emit` work next to the API it configures.
    api_key: str | None = getattr(args, "api_key", None) or next(iter(settings.api_keys), None)
    event: dict[str, Any] = {
        "type": args.type,
        "user_id": args.user,
        "properties": dict(getattr(args, "prop", None) or []),
    }
    traits = dict(getattr(args, "trait", None) or [])
    if traits:
        event["traits"] = traits
    try:
        status, answer = asyncio.run(post_event(base_url, event, api_key))
    except ServiceError as exc:
        print(f"herald emit: {exc}", file=sys.stderr)
        print(
            "hint: is `herald dev` running? (or pass --api-url, or set HERALD_API_HOST/PORT)",
            file=sys.stderr,
        )
        return 2
    print(orjson.dumps(answer).decode())
    if status == 202:
        return 0
    print(f"herald emit: the API answered HTTP {status}", file=sys.stderr)
    return 1
