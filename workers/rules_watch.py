"""Hot reload of `rules/`: a running worker adopts valid edits and keeps its last good rules.

Why poll a fingerprint rather than use inotify: rules usually arrive by `git pull` or a config
volume remount, which emit bursts of events (or none, on some volume drivers); comparing
(path, size, mtime) of every file every couple of seconds is cheap and always right.
"""

from __future__ import annotations

import logging
from pathlib import Path

from engine.errors import RulesError
from engine.language.loader import load_rules
from engine.runtime.core import Engine, EngineOptions

log = logging.getLogger(__name__)


def fingerprint(root: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes whenever any rules file changes."""
    if root.is_file():
        stat = root.stat()
        return ((str(root), stat.st_size, stat.st_mtime_ns),)
    items = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            stat = path.stat()
            items.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(items)


class RulesWatcher:
    """Holds the current engine; `poll()` swaps in a new one when the rules changed and load."""

    def __init__(self, root: Path, options: EngineOptions | None = None) -> None:
        self.root = root
        self.options = options or EngineOptions()
        self._print = fingerprint(root)
        self.engine = Engine(load_rules(root), self.options)
        self.last_error: str | None = None

    def poll(self) -> Engine | None:
        """The new engine if the rules changed and are valid; None otherwise."""
        try:
            current = fingerprint(self.root)
        except OSError as exc:
            log.warning("cannot read rules at %s: %s", self.root, exc)
            return None
        if current == self._print:
            return None
        self._print = current
        try:
            engine = Engine(load_rules(self.root), self.options)
        except RulesError as exc:
            self.last_error = str(exc)
            log.error("rules changed but are invalid; keeping the last good rules:\n%s", exc)
            return None
        self.last_error = None
        self.engine = engine
        log.info("rules reloaded: %d journeys", len(engine.programs))
        return engine
