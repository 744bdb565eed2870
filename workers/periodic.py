"""Periodic tasks of a worker (timers, schedules, reloads, reports).

faust treats an exception escaping a timer as a crash of the whole worker; a periodic task
that fails (Redis restarting, a rebalance in progress) should instead log and try again next
round, while the stream keeps flowing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def logged(what: str) -> Iterator[None]:
    """Log and swallow an exception of a periodic task; it runs again next round."""
    try:
        yield
    except Exception:
        log.warning("%s failed; retrying next round", what, exc_info=True)
