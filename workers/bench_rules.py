"""Generated journeys for `herald bench --journeys J`: many small, realistic journeys.

Each reacts to one of the synthetic event types, checks a property, and sends at once or
after a short wait, so J scales the trigger index and the per-event journey work.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from engine.synthetic import MIX

TEMPLATE = """journey: gen_{i}
name: Generated journey {i}
trigger:
  event: {event}
  when: "{when}"
reentry: always
steps:
  - send:
      channel: email
      subject: "Hello {{{{ profile.first_name | default('there') }}}}"
      body: "Journey {i} saw {{{{ event.type }}}}."
"""

WHEN = {
    "page_view": "event.properties.path == '/p/{n}'",
    "product_view": "event.properties.price >= {price}",
    "cart_add": "event.properties.value >= {price}",
    "purchase": "event.properties.amount >= {price}",
}


def write_generated_rules(directory: Path, count: int) -> Path:
    """Write `count` journeys into a fresh rules folder and return it."""
    shutil.rmtree(directory, ignore_errors=True)
    (directory / "journeys").mkdir(parents=True)
    types = [t for t, _w in MIX]
    for i in range(count):
        event = types[i % len(types)]
        when = WHEN.get(event, "true").format(n=1 + i % 3, price=50 + (i * 37) % 200)
        text = TEMPLATE.format(i=i, event=event, when=when)
        (directory / "journeys" / f"gen_{i}.yaml").write_text(text, encoding="utf-8")
    return directory
