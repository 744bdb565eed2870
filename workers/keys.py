"""Every Redis key Herald uses, built in one place.

Each per-user key carries the user's Kafka partition as a Redis Cluster hash tag (`{7}`), so
all keys of one partition live in one slot: a batch's multi-key write for a partition is one
atomic MULTI even on a cluster, and moving a partition between workers moves nothing in Redis.
"""

from __future__ import annotations

PREFIX = "herald"


def user(partition: int, user_id: str) -> str:
    """A user's state document."""
    return f"{PREFIX}:{{{partition}}}:u:{user_id}"


def timers(partition: int) -> str:
    """Sorted set: user id -> epoch seconds of the user's next due item (O(due) timer scans)."""
    return f"{PREFIX}:{{{partition}}}:timers"


def segment(partition: int, name: str) -> str:
    """Set of the partition's users currently in a segment (schedule triggers read it)."""
    return f"{PREFIX}:{{{partition}}}:seg:{name}"


def users(partition: int) -> str:
    """Set of every user of a partition: schedule candidates for time-dependent segments."""
    return f"{PREFIX}:{{{partition}}}:users"


def schedules(partition: int) -> str:
    """Hash: schedule journey id -> last cron firing handed to this partition (epoch seconds)."""
    return f"{PREFIX}:{{{partition}}}:sched"


def watermark(partition: int) -> str:
    """Event-time clock of a partition (only in event-time mode)."""
    return f"{PREFIX}:{{{partition}}}:wm"


def first_watermark(partition: int) -> str:
    """The first event-time clock a partition had: where schedules of a replay start."""
    return f"{PREFIX}:{{{partition}}}:wm0"


def sent(partition: int, message_id: str) -> str:
    """Dispatcher's dedupe marker of one message: `pending` while sending, then `sent`."""
    return f"{PREFIX}:{{{partition}}}:msg:{message_id}"


def owners() -> str:
    """Hash: partition -> the processor (host:pid) that owned it at its last heartbeat."""
    return f"{PREFIX}:owners"


def stats(name: str) -> str:
    """Cluster-wide counters for `herald status` (not on the hot path's critical slot)."""
    return f"{PREFIX}:stats:{name}"
