"""Deterministic identities: message ids, emitted event ids, split variants.

Why deterministic: the stream is consumed at least once, so any input may be replayed after a
crash. Ids derived only from the input make a replay produce byte-identical effects, which the
dispatcher then recognises and drops — that is how at-least-once in becomes exactly-once out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from hashlib import blake2b


def message_id(journey: str, version: str, user_id: str, entry_id: str, step_id: str) -> str:
    """The id of a dispatched message: a function of (journey, version, user, entry, step) only."""
    key = f"{journey}\x1f{version}\x1f{user_id}\x1f{entry_id}\x1f{step_id}".encode()
    return blake2b(key, digest_size=16).hexdigest()


def emitted_event_id(message: str) -> str:
    """An `emit` step's event id, derived from the step's message id so replays agree."""
    return "emit-" + message[:24]


def split_point(journey: str, user_id: str) -> float:
    """A stable number in [0, 1) for (journey, user): the same user always lands in the same arm."""
    digest = blake2b(f"{journey}\x1f{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def firing_entry_id(kind: str, at: float) -> str:
    """Entry id of a run started by time rather than by an event: `date:2026-05-07T01:00:00Z`."""
    stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{kind}:{stamp}"
