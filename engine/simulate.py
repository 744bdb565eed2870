"""The virtual-clock driver of the runtime core (`herald simulate`).

Production feeds the same `Engine` from Kafka and Redis; here users live in a dict and time
jumps from one due instant to the next. At equal instants the order is: events, then schedule
firings, then timers — the same order the core itself applies inside one input.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
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

# Where an input falls in a whole simulation: (instant, source: 0 event, 1 schedule firing,
# 2 timer; the event's rank in the input or the firing's index; the user of a firing or timer).
# Users share no state, so runs over disjoint sets of users (`herald simulate --jobs`) merge
# back into exactly the order of one run by this key plus each effect's index in its input.
InputOutcome = tuple[float, int, int, str, list[Effect]]


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

    def restrict(self, keep: Callable[[str], bool]) -> None:
        """Drop every user `keep` rejects, with their timers: what is left is exactly the
        simulation of the kept users (users share no state)."""
        self.users = {u: s for u, s in self.users.items() if keep(u)}
        self._indexed = {u: w for u, w in self._indexed.items() if u in self.users}
        self._wakes = [(w, u) for u, w in self._indexed.items()]
        heapq.heapify(self._wakes)

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
            yield from self.load_profile(user_id, traits, at)

    def load_profile(self, user_id: str, traits: dict[str, Any], at: datetime) -> list[Effect]:
        """Load one user's traits; the effects (segment entries may start journeys)."""
        outcome = self.engine.handle_profile(self.user(user_id), traits, at)
        self._track(outcome.state)
        return outcome.effects

    def run(
        self, events: Iterable[Event], start: datetime, until: datetime
    ) -> Iterator[tuple[datetime, Effect]]:
        """Process events in timestamp order and everything due up to `until`, inclusive."""
        ordered = sorted((e for e in events if e.timestamp <= until), key=lambda e: e.timestamp)
        for at, _source, _rank, _user, effects in self.inputs(enumerate(ordered), start, until):
            now = datetime.fromtimestamp(at, UTC)
            for effect in effects:
                yield now, effect

    def inputs(
        self, ranked: Iterable[tuple[int, Event]], start: datetime, until: datetime
    ) -> Iterator[InputOutcome]:
        """Apply every input in order; one `(at, source, rank, user, effects)` per input that
        had effects. `ranked`: (rank, event) in timestamp order, the rank being the event's
        place in the whole input (see `OrderKey`); events after `until` are ignored."""
        ordered = [(rank, e) for rank, e in ranked if e.timestamp <= until]
        schedules: list[tuple[float, int, str]] = []
        for program in self.engine.schedules:
            jid = program.journey.journey
            for when in self.engine.schedule_times(jid, start, until):
                schedules.append((when.timestamp(), 0, jid))
        schedules.sort()
        limit = until.timestamp()
        times = [e.timestamp.timestamp() for _rank, e in ordered]
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
                rank, event = ordered[ei]
                ei += 1
                effects = apply(event)
                if effects:
                    yield at, _EVENT, rank, "", effects
                continue
            now = datetime.fromtimestamp(at, UTC)
            if kind == _SCHEDULE:
                jid = schedules[si][2]
                for user_id in sorted(users):
                    outcome = engine.handle_schedule(users[user_id], jid, now, now)
                    track(outcome.state)
                    if outcome.effects:
                        yield at, _SCHEDULE, si, user_id, outcome.effects
                si += 1
            else:
                heapq.heappop(wakes)
                user_id = wake[1]  # type: ignore[index]
                indexed.pop(user_id, None)
                outcome = engine.handle_tick(users[user_id], now)
                track(outcome.state)
                if outcome.effects:
                    yield at, _TIMER, 0, user_id, outcome.effects

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
