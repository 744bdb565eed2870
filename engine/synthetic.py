"""Deterministic synthetic traffic for benchmarks: a storefront's mix of events over many users.

The mix exercises the sample library's triggers (signups, cart adds over and under the
threshold, purchases feeding RFM metrics, pricing page views feeding lead scores) so a
benchmark measures real journey work, not a loop over ignored events.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.events import Event

# Shaped like a storefront's clickstream: browsing dominates, a few percent convert.
MIX: tuple[tuple[str, float], ...] = (
    ("page_view", 0.55),
    ("product_view", 0.25),
    ("cart_add", 0.07),
    ("purchase", 0.03),
    ("signup", 0.02),
    ("identify", 0.03),
    ("demo_request", 0.005),
    ("message.clicked", 0.02),
    ("app_open", 0.025),
)
PRODUCTS = ("Tea set", "Linen shirt", "Trail boots", "Candle", "Headphones", "Rice cooker")
PATHS = ("/", "/blog", "/docs", "/pricing", "/about", "/careers", "/p/1", "/p/2", "/p/3", "/cart")
LOCALES = ("en-US", "zh-CN", "en-GB")
ZONES = ("UTC", "Asia/Shanghai", "America/New_York", "Europe/London")


def user_traits(index: int) -> dict[str, Any]:
    """A plausible profile for synthetic user `index`."""
    rng = random.Random(index)
    return {
        "email": f"user{index}@example.com",
        "phone": f"+1555{index:07d}",
        "wechat_openid": f"o-{index}",
        "first_name": f"User{index}",
        "locale": LOCALES[index % len(LOCALES)],
        "timezone": ZONES[index % len(ZONES)],
        "tags": ["vip"] if index % 10 == 0 else [],
        "birthday": f"19{70 + index % 30}-{1 + index % 12:02d}-{1 + index % 28:02d}",
        "newsletter": index % 3 == 0,
        "plan": "trial" if rng.random() < 0.1 else "free",
    }


def synthetic_events(
    count: int, users: int, *, start: datetime | None = None, seed: int = 7, span_s: float = 3600.0
) -> Iterator[Event]:
    """`count` events over `users` users, timestamps spread evenly over `span_s` seconds."""
    rng = random.Random(seed)
    start = start or datetime(2026, 5, 1, tzinfo=UTC)
    types = [t for t, _w in MIX]
    weights = [w for _t, w in MIX]
    step = span_s / max(count, 1)
    for i in range(count):
        user = rng.randrange(users)
        kind = rng.choices(types, weights)[0]
        props: dict[str, Any] = {}
        traits: dict[str, Any] = {}
        if kind == "page_view":
            props = {"path": rng.choice(PATHS)}
        elif kind in ("cart_add", "product_view"):
            price = rng.randrange(5, 300)
            props = {
                "sku": f"SKU-{rng.randrange(500)}",
                "product_name": PRODUCTS[rng.randrange(len(PRODUCTS))],
                "value": price,
                "price": price,
                "currency": "USD",
            }
        elif kind == "purchase":
            props = {"order_id": f"o-{i}", "amount": rng.randrange(10, 900), "currency": "USD"}
        elif kind == "identify":
            traits = user_traits(user)
        yield Event(
            event_id=f"s-{seed}-{i}",
            type=kind,
            user_id=f"u{user}",
            timestamp=start + timedelta(seconds=i * step),
            properties=props,
            traits=traits,
        )
