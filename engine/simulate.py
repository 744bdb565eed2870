"""The virtual-clock driver of the runtime core (`herald simulate`).

Production feeds the same `Engine` from Kafka and Redis; here users live in a dict and time
jumps from one due instant to the next. At equal instants the order is: events, then schedule
firings, then timers — the same order the core itself applies inside one input.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.events import Event
from engine.runtime.core import Engine
from engine.runtime.effects import Effect
from engine.runtime.state import UserState

DEFAULT_HORIZON = timedelta(days=7)

_EVENT, _SCHEDULE, _TIMER = 0, 1, 2
_NEVER = float("inf")


@dataclass
class Simulation:
    """In-memory users driven through the core on a virtual clock."""

    engine: Engine
    users: dict[str, UserState] = field(default_factory=dict)
    _wakes: list[tuple[float, str]] = field(default_factory=list)
    # The wake time each user has a live entry for in `_wakes` (its current `wake_at`): most
    # inputs leave it unchanged, and pushing it again would only grow the heap.
    _indexed: dict[str, float] = field(default_factory=dict)

    def user(self, user_id: str) -> UserState:
        """The state of a user, created empty on first sight."""
        state = self.users.get(user_id)
        if state is None:
            state = self.users[user_id] = UserState(user_id)
        return state

    def _track(self, state: UserState) -> None:
        wake = state.wake_at
        if wake is None:
            self._indexed.pop(state.user_id, None)
        elif self._indexed.get(state.user_id) != wake:
            heapq.heappush(self._wakes, (wake, state.user_id))
            self._indexed[state.user_id] = wake

    def load_profiles(
        self, profiles: Iterable[tuple[str, dict[str, Any]]], at: datetime
    ) -> Iterator[Effect]:
        """Load profile traits at the simulation's start."""
        for user_id, traits in profiles:
            outcome = self.engine.handle_profile(self.user(user_id), traits, at)
            self._track(outcome.state)
            yield from outcome.effects

    def run(
        self, events: Iterable[Event], start: datetime, until: datetime
    ) -> Iterator[tuple[datetime, Effect]]:
        """Process events in timestamp order and everything due up to `until`, inclusive."""
        ordered = sorted((e for e in events if e.timestamp <= until), key=lambda e: e.timestamp)
        schedules: list[tuple[float, int, str]] = []
        for program in self.engine.schedules:
            jid = program.journey.journey
            for when in self.engine.schedule_times(jid, start, until):
                schedules.append((when.timestamp(), 0, jid))
        schedules.sort()
        limit = until.timestamp()
        times = [e.timestamp.timestamp() for e in ordered]
        users = self.users
        engine = self.engine
        track = self._track
        wakes = self._wakes
        indexed = self._indexed
        apply = self._apply
        ei = si = 0
        n_events, n_schedules = len(times), len(schedules)
        while True:
            # The next input: the earliest of the three sources; at equal instants events
            # come first, then schedule firings, then timers.
            at = times[ei] if ei < n_events else _NEVER
            kind = _EVENT
            if si < n_schedules and schedules[si][0] < at:
                at, kind = schedules[si][0], _SCHEDULE
            # Live heap entries are never earlier than the top: when the top is not before
            # `at`, no timer is due first (the usual case for an event: skip the lookup).
            wake = self._next_wake() if wakes and wakes[0][0] < at else None
            if wake is not None and wake[0] <= limit and wake[0] < at:
                at, kind = wake[0], _TIMER
            if at == _NEVER:
                return
            if kind == _EVENT:
                effects = apply(ordered[ei])
                ei += 1
                if effects:
                    now = datetime.fromtimestamp(at, UTC)
                    for effect in effects:
                        yield now, effect
                continue
            now = datetime.fromtimestamp(at, UTC)
            if kind == _SCHEDULE:
                jid = schedules[si][2]
                si += 1
                for user_id in sorted(users):
                    outcome = engine.handle_schedule(users[user_id], jid, now, now)
                    track(outcome.state)
                    for effect in outcome.effects:
                        yield now, effect
            else:
                heapq.heappop(wakes)
                indexed.pop(wake[1], None)  # type: ignore[index]
                outcome = engine.handle_tick(users[wake[1]], now)  # type: ignore[index]
                track(outcome.state)
                for effect in outcome.effects:
                    yield now, effect

    def _apply(self, event: Event) -> list[Effect]:
        """One event; `_track`, inlined: this runs once per event."""
        user_id = event.user_id
        state = self.users.get(user_id) or self.user(user_id)
        outcome = self.engine.handle_event(state, event, event.timestamp)
        due = state.wake_at
        indexed = self._indexed
        if due is None:
            if indexed:
                indexed.pop(user_id, None)
        elif indexed.get(user_id) != due:
            heapq.heappush(self._wakes, (due, user_id))
            indexed[user_id] = due
        return outcome.effects

    def _next_wake(self) -> tuple[float, str] | None:
        """The earliest live timer; entries made stale by a later input are dropped lazily."""
        while self._wakes:
            at, user_id = self._wakes[0]
            if self.users[user_id].wake_at == at:
                return at, user_id
            heapq.heappop(self._wakes)
        return None


def default_window(
    events: list[Event], start: datetime | None, until: datetime | None
) -> tuple[datetime, datetime]:
    """The spec's defaults: start at the first event, stop 7 days after the last."""
    if start is None:
        start = min((e.timestamp for e in events), default=None) or datetime(1970, 1, 1, tzinfo=UTC)
    if until is None:
        last = max((e.timestamp for e in events), default=start)
        until = last + DEFAULT_HORIZON
    return start, until
