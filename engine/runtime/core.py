"""The pure runtime core: (user state, one input, now) -> (new state, effects).

No I/O and no clock reads happen here; `herald simulate` and the stream processor both drive
this class, so what a marketer simulates is what production does.

Time. A run's clock is event time where it can be: an event takes effect at its timestamp,
clamped to [now - lateness, now]. Before an input takes effect, everything of the user due
strictly before that instant fires first, in time order (a timer due at the same instant as an
event fires after it). Each due item runs at its own due time, so waits count from when the run
reached them, and a timer that is already due when it is set fires at once.

Ownership. The state passed in is updated in place and returned in the outcome: the caller
hands it over (the processor keeps the serialised original until the write succeeds).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.events import Event
from engine.expressions import compile_condition
from engine.language.rules import RuleSet
from engine.localtime import next_cron, zone
from engine.runtime.deps import ALL, profile_dependencies, reads_time
from engine.runtime.effects import Count, Effect, Emitted, Failure, Outcome, Trace, iso
from engine.runtime.ids import firing_entry_id
from engine.runtime.metrics import CompiledMetric
from engine.runtime.program import Program, compile_journey
from engine.runtime.state import Run, UserState
from engine.runtime.steps import StepRunner, Turn

MAX_DUE_PER_INPUT = 10_000
_NEVER = float("inf")


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Knobs of the core that are deployment settings rather than rules."""

    trace: bool = False
    unsubscribe_base_url: str = "http://127.0.0.1:8080"
    unsubscribe_secret: str = "herald-dev-unsubscribe-secret"


class Engine:
    """Compiled rules plus the functions that apply inputs to a user's state."""

    def __init__(self, rules: RuleSet, options: EngineOptions | None = None) -> None:
        self.rules = rules
        self.options = options or EngineOptions()
        self.lateness = rules.settings.lateness.total_seconds()
        self.programs: dict[str, Program] = {
            jid: compile_journey(journey, rules.versions.get(jid, "0"))
            for jid, journey in rules.journeys.items()
        }
        self.metrics = [CompiledMetric(name, spec) for name, spec in rules.metrics.items()]
        self.metrics_by_event: dict[str, list[CompiledMetric]] = {}
        for metric in self.metrics:
            self.metrics_by_event.setdefault(metric.event_type, []).append(metric)
        self.segments = [
            (
                name,
                compile_condition(seg.when),
                profile_dependencies(seg.when),
                reads_time(seg.when),
            )
            for name, seg in rules.segments.items()
        ]
        self.time_segments = any(t for _n, _c, _d, t in self.segments)
        self.metrics_by_name = {metric.name: metric for metric in self.metrics}
        self.segments_reading_all = {n for n, _c, d, _t in self.segments if ALL in d}
        self.segments_reading_time = {n for n, _c, _d, t in self.segments if t}
        self._affected: dict[tuple[frozenset[str], bool], frozenset[str]] = {}
        self.segments_by_field: dict[str, set[str]] = {}
        for name, _c, segment_deps, _t in self.segments:
            for dep in segment_deps:
                self.segments_by_field.setdefault(dep, set()).add(name)
        self.by_event: dict[str, list[Program]] = {}
        self.by_segment: dict[tuple[str, str], list[Program]] = {}
        self.schedules: list[Program] = []
        self.dated: list[Program] = []
        self.idle: list[Program] = []
        for program in self.programs.values():
            journey = program.journey
            if not journey.enabled:
                continue
            trigger: Any = journey.trigger
            kind = journey.trigger_kind
            if kind == "event":
                self.by_event.setdefault(trigger.event, []).append(program)
            elif kind == "segment":
                edge = (trigger.segment.name, trigger.segment.direction)
                self.by_segment.setdefault(edge, []).append(program)
            elif kind == "schedule":
                self.schedules.append(program)
            elif kind == "date":
                self.dated.append(program)
            elif kind == "inactivity":
                self.idle.append(program)
        deps: set[str] = set()
        for program in self.dated:
            deps |= {program.journey.trigger.date.attribute, "timezone"}  # type: ignore[union-attr]
        self.date_deps = frozenset(deps)
        self.dates_version = "|".join(
            sorted(f"{p.journey.journey}:{p.version}" for p in self.dated)
        )
        self._index_hot_paths()
        self.steps = StepRunner(self)

    def _index_hot_paths(self) -> None:
        """Lookups the per-input path uses so it can skip what cannot concern an input."""
        # (journey, seconds of inactivity) for `next_due`, which runs on every input.
        self.idle_spans = [
            (p.journey.journey, p.journey.trigger.inactivity.for_.total_seconds())  # type: ignore[union-attr]
            for p in self.idle
        ]
        # Per event type, the journeys whose runs it can move (an exit_on or a wait_for
        # naming it): for any other run `StepRunner.on_event` does nothing.
        self.listeners: dict[str, set[str]] = {}
        for jid, program in self.programs.items():
            types = set(program.exit_on)
            types.update(n.spec.event for n in program.nodes.values() if n.kind == "wait_for")
            for event_type in types:
                self.listeners.setdefault(event_type, set()).add(jid)
        # (journey, the event types that count as activity; None: all of them).
        self.idle_counted = [
            (p.journey.journey, _frozen(p.journey.trigger.inactivity.events))  # type: ignore[union-attr]
            for p in self.idle
        ]
        # Every field a segment or a date trigger reads; None when one reads the whole profile.
        watched = set(self.date_deps)
        for _n, _c, segment_deps, _t in self.segments:
            watched |= segment_deps
        self.watched: frozenset[str] | None = None if ALL in watched else frozenset(watched)

    # ------------------------------------------------------------------ inputs

    def _begin(self, state: UserState, now: datetime) -> Turn:
        turn = Turn(self, state, now.timestamp())
        if self.dated and state.dates_version != self.dates_version:
            # A date journey was added or changed since this user's firings were computed.
            self.steps.sync_dates(turn, turn.now)
            state.dates_version = self.dates_version
            turn.trust_wake = False
        return turn

    def handle_event(self, state: UserState, event: Event, now: datetime) -> Outcome:
        """Apply one event arriving at `now`."""
        turn = self._begin(state, now)
        if not state.remember_event(event.event_id):
            turn.count("herald_events_duplicate_total")
            return self._finish(turn)
        # The simulator passes the event's own timestamp as `now`: already converted.
        ts = turn.now if now is event.timestamp else event.timestamp.timestamp()
        at = min(max(ts, turn.now - self.lateness), turn.now)
        self._advance(turn, at, inclusive=False, cached=True)
        self.apply_event(turn, event, at)
        return self._finish(turn)

    def handle_tick(self, state: UserState, now: datetime) -> Outcome:
        """Fire everything of this user that is due at or before `now`."""
        turn = self._begin(state, now)
        return self._finish(turn)

    def handle_schedule(
        self, state: UserState, journey_id: str, fire_at: datetime, now: datetime
    ) -> Outcome:
        """A schedule journey's cron time came: a member of its segment may start a run."""
        turn = self._begin(state, now)
        at = fire_at.timestamp()
        if not state.remember_event(f"schedule:{journey_id}:{at}"):
            return self._finish(turn)  # this firing was already applied (a replayed record)
        self._advance(turn, at, inclusive=False)
        program = self.programs.get(journey_id)
        if program is not None and program.journey.enabled:
            self.steps.refresh_segments(turn, at)
            segment = program.journey.trigger.segment  # type: ignore[union-attr]
            if segment in state.segments:
                entry = {"type": "schedule", "timestamp": iso(at), "properties": {}}
                self.steps.try_start(turn, program, firing_entry_id("schedule", at), at, entry)
        return self._finish(turn)

    def handle_profile(self, state: UserState, traits: dict[str, Any], now: datetime) -> Outcome:
        """Load profile traits (an import, not activity): segments and date triggers follow."""
        turn = self._begin(state, now)
        self._advance(turn, turn.now, inclusive=False)
        changed = self.steps.merge_traits(turn, traits)
        if changed:
            self.steps.profile_changed(turn, turn.now, changed)
        return self._finish(turn)

    def schedule_times(
        self, journey_id: str, after: datetime, until: datetime
    ) -> Iterator[datetime]:
        """Cron firings of a schedule journey in (after, until], in its time zone."""
        program = self.programs[journey_id]
        expr: str = program.journey.trigger.schedule  # type: ignore[union-attr]
        tz = zone(program.journey.timezone)
        current = next_cron(expr, after, tz)
        while current <= until:
            yield current
            current = next_cron(expr, current, tz)

    # ------------------------------------------------------------------ events

    def apply_event(self, turn: Turn, event: Event, at: float, depth: int = 0) -> None:
        """Everything one event does to a user, at effective time `at`."""
        state = turn.state
        changed = self.steps.merge_traits(turn, event.traits) if event.traits else set()
        for metric in self.metrics_by_event.get(event.type, ()):
            if metric.when is not None and not turn.check(metric.when, at, event=event):
                continue
            if metric.fold(state.metrics.setdefault(metric.name, {}), event.properties, at):
                changed.add(metric.field)
        if self.idle_counted and not event.emitted and not event.type.startswith("message."):
            self._note_activity(turn, event.type, at)
        # Runs and goals that existed before this event see it first; runs the event itself
        # starts (through a segment edge or its trigger) must not count it as their own goal.
        listening = self.listeners.get(event.type)
        if listening and state.runs:
            for run in list(state.runs.values()):
                if run.journey in listening:
                    self.steps.on_event(turn, run, event, at)
        if state.goals:
            self._check_goals(turn, event, at)
        if changed:
            self.steps.profile_changed(turn, at, changed)
        else:
            self.steps.maybe_sweep(turn, at)
        for program in self.by_event.get(event.type, ()):
            if program.trigger_when is not None and not turn.check(
                program.trigger_when, at, event=event, journey={"id": program.journey.journey}
            ):
                continue
            entry = turn.event_dict(event)  # what the trigger check read; never mutated
            self.steps.try_start(turn, program, event.event_id, at, entry, event)

    def _note_activity(self, turn: Turn, event_type: str, at: float) -> None:
        state = turn.state
        for jid, counted in self.idle_counted:
            if counted is not None and event_type not in counted:
                continue
            if state.activity.get(jid, float("-inf")) <= at:
                state.activity[jid] = at
            if jid in state.idle_fired:
                state.idle_fired.remove(jid)

    def _check_goals(self, turn: Turn, event: Event, at: float) -> None:
        goals = turn.state.goals
        if not goals:
            return
        for jid in list(goals):
            entry = goals[jid]  # [deadline, variant] or [deadline, variant, entered_at]
            if at > entry[0]:
                del goals[jid]
                continue
            if len(entry) > 2 and at < entry[2]:
                continue  # a late event from before the entry is not this run's conversion
            variant = entry[1]
            program = self.programs.get(jid)
            goal = program.journey.goal if program else None
            if goal is None or program is None or goal.event != event.type:
                continue
            if program.goal_when is not None and not turn.check(program.goal_when, at, event=event):
                continue
            del goals[jid]
            turn.count("herald_goals_total", journey=jid, variant=variant or "")
            turn.trace(at, jid, "goal", f"goal {goal.event} reached")

    # ------------------------------------------------------------------ time

    def next_due(self, state: UserState) -> tuple[float, str, str] | None:
        """The earliest thing due for this user: (time, kind, journey); ties go to the smaller
        (kind, journey). Runs on every input, so candidates later than the best so far are
        skipped before any tuple is built."""
        best: tuple[float, str, str] | None = None
        bound = _NEVER
        for jid, run in state.runs.items():
            when = run.wake_at
            if when is not None and when <= bound:
                candidate = (when, "run", jid)
                if best is None or candidate < best:
                    best, bound = candidate, when
        for jid, entry in state.dates.items():  # [next firing, key]
            when = entry[0]
            if when is not None and when <= bound:
                candidate = (when, "date", jid)
                if best is None or candidate < best:
                    best, bound = candidate, when
        activity = state.activity
        for jid, span in self.idle_spans:
            last = activity.get(jid)
            if last is None or jid in state.idle_fired:
                continue
            when = last + span
            if when <= bound:
                candidate = (when, "idle", jid)
                if best is None or candidate < best:
                    best, bound = candidate, when
        return best

    def _advance(self, turn: Turn, until: float, *, inclusive: bool, cached: bool = False) -> None:
        """Fire due items up to `until`. `cached`: trust the wake time the last input stored
        (valid when nothing changed since: the start of an input whose dates are current)."""
        if cached and turn.trust_wake:
            wake = turn.state.wake_at
            if wake is None or wake > until or (wake == until and not inclusive):
                return
        for _ in range(MAX_DUE_PER_INPUT):
            due = self.next_due(turn.state)
            if due is None or due[0] > until or (due[0] == until and not inclusive):
                return
            self._fire(turn, *due)
        turn.failure(until, "", "", "too many due items in one input; the rest wait for the next")

    def _fire(self, turn: Turn, at: float, kind: str, jid: str) -> None:
        state = turn.state
        self.steps.maybe_sweep(turn, at)
        program = self.programs.get(jid)
        if kind == "run":
            run = state.runs[jid]
            if program is None:
                self.steps.end_run(turn, run, at, "removed")
                return
            self.steps.wake(turn, program, run, at)
        elif kind == "date":
            self.steps.fire_date(turn, jid, at)
        else:
            state.idle_fired.append(jid)
            if program is not None and program.journey.enabled:
                entry = {"type": "inactivity", "timestamp": iso(at), "properties": {}}
                self.steps.try_start(turn, program, firing_entry_id("inactivity", at), at, entry)

    def _finish(self, turn: Turn) -> Outcome:
        """Fire what became due by `now` (a timer set in the past fires at once), then store
        the next wake time."""
        for _ in range(MAX_DUE_PER_INPUT):
            due = self.next_due(turn.state)
            if due is None or due[0] > turn.now:
                turn.state.wake_at = due[0] if due else None
                return Outcome(turn.state, turn.effects)
            self._fire(turn, *due)
        turn.failure(turn.now, "", "", "too many due items in one input; the rest wait")
        return Outcome(turn.state, turn.effects)

    def watches_none_of(self, changed: set[str]) -> bool:
        """Whether no segment and no date trigger reads any of the `changed` fields (the
        usual case: a page view moves a metric nothing reads)."""
        return self.watched is not None and ALL not in changed and changed.isdisjoint(self.watched)

    def segments_affected(self, changed: set[str], sweep: bool) -> frozenset[str]:
        """The segments a change to the `changed` fields (plus, on a sweep, the passing of
        time) can move. Memoised: most inputs change the same one or two fields (a metric,
        `lead_score`), usually read by no segment at all."""
        key = (frozenset(changed), sweep)
        found = self._affected.get(key)
        if found is None:
            names = set(self.segments_reading_all)
            for name in changed:
                names.update(self.segments_by_field.get(name, ()))
            if sweep:
                names.update(self.segments_reading_time)
            if len(self._affected) >= 4096:  # field names come from data: stay bounded
                self._affected.clear()
            found = self._affected[key] = frozenset(names)
        return found

    def segment_reads_time(self, name: str) -> bool:
        """Whether a segment's membership can change with time alone (it reads the clock)."""
        return any(n == name and (ALL in deps or t) for n, _c, deps, t in self.segments)


def _frozen(items: list[str] | None) -> frozenset[str] | None:
    return None if items is None else frozenset(items)


__all__ = [
    "Count",
    "Effect",
    "Emitted",
    "Engine",
    "EngineOptions",
    "Failure",
    "Outcome",
    "Run",
    "Trace",
]
