"""Running journeys: entry rules, each step kind, segment edges and date triggers.

`Turn` is the scratchpad of one input (the state being changed, the effects so far, a cached
view of the profile); `StepRunner` holds the step semantics of journeys.md.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any

import orjson

from engine.errors import TemplateRenderError
from engine.events import Event
from engine.expressions import Condition, clock_context, to_moment
from engine.localtime import QuietHours, next_date_trigger, next_local_time, zone
from engine.runtime.deps import ALL, TIME_NAMES, affected
from engine.runtime.effects import Count, Effect, Emitted, Failure, Message, Trace, iso
from engine.runtime.ids import emitted_event_id, firing_entry_id, message_id, split_point
from engine.runtime.metrics import CompiledMetric
from engine.runtime.program import Node, Program
from engine.runtime.state import Run, UserState
from engine.templates import compile_inline, render_value
from engine.unsubscribe import unsubscribe_url

if TYPE_CHECKING:
    from engine.runtime.core import Engine

# Segments that read the clock are re-checked when a field they read changes, at schedule
# firings, and otherwise at most this often as a user's inputs move time on.
SWEEP_INTERVAL_S = 3600.0
ADDRESS_FIELDS = {"email": "email", "sms": "phone", "wechat": "wechat_openid"}
MAX_DEPTH = 8
RENDER_NAMES = frozenset({"profile", "event", "journey", "now", "unsubscribe_url"})


def utc(ts: float) -> datetime:
    """Epoch seconds to an aware UTC datetime."""
    return datetime.fromtimestamp(ts, UTC)


def user_zone(state: UserState, program: Program) -> tzinfo:
    """User local time: `profile.timezone`, else the journey's zone (journeys.md)."""
    name = state.profile.get("timezone")
    if isinstance(name, str) and name:
        try:
            return zone(name)
        except ValueError:
            pass
    return zone(program.journey.timezone)


# Counts are immutable values and most inputs emit a few of the same ones: built once each.
_COUNTS: dict[tuple[Any, ...], Count] = {}
# `journey` as a condition sees it, or a function that makes it when a condition reads it.
JourneyArg = dict[str, Any] | Callable[[], dict[str, Any]] | None


class MetricsView(dict[str, Any]):
    """`profile.metrics`, computed on first read: most inputs read none or one of them."""

    __slots__ = ("_at", "_metrics", "_state")

    def __init__(
        self, metrics: dict[str, CompiledMetric], state: dict[str, Any], at: float
    ) -> None:
        # No dict.__init__ call: the (empty) dict is made by dict.__new__ already.
        self._metrics = metrics
        self._state = state
        self._at = at

    def __missing__(self, name: str) -> Any:
        metric = self._metrics.get(name)
        if metric is None:
            raise KeyError(name)
        value = self[name] = metric.value(self._state.get(name), self._at)
        return value

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        """dict.get does not consult __missing__; conditions read metrics through get."""
        try:
            return self[name]
        except KeyError:
            return default

    def materialise(self) -> dict[str, Any]:
        """Every metric (for templates that iterate, and for serialisation)."""
        return {name: self[name] for name in self._metrics}


class Turn:
    """The working set of one input."""

    __slots__ = (
        "_clock",
        "_clock_at",
        "_event_ctx",
        "_view",
        "_view_at",
        "depth",
        "effects",
        "engine",
        "now",
        "state",
        "tracing",
        "trust_wake",
    )

    def __init__(self, engine: Engine, state: UserState, now: float) -> None:
        self.engine = engine
        self.state = state
        self.now = now
        self.effects: list[Effect] = []
        self.depth = 0
        self.trust_wake = True
        self.tracing = engine.options.trace
        self._view: dict[str, Any] | None = None
        self._view_at = 0.0
        self._clock: dict[str, Any] | None = None
        self._clock_at = 0.0
        self._event_ctx: tuple[Event | None, dict[str, Any] | None] = (None, None)

    def touch(self) -> None:
        """The profile changed: the cached view must be rebuilt."""
        self._view = None

    def profile_view(self, at: float) -> dict[str, Any]:
        """`profile` as conditions and templates see it: traits, tags, metrics, segments."""
        if self._view is None or self._view_at != at:
            state = self.state
            view = dict(state.profile)
            view["user_id"] = state.user_id
            view.setdefault("tags", [])
            view["metrics"] = MetricsView(self.engine.metrics_by_name, state.metrics, at)
            view["segments"] = list(state.segments)
            self._view, self._view_at = view, at
        return self._view

    def clock(self, at: float, *, moment: bool) -> dict[str, Any]:
        """The time helpers, and `now` if `moment` (a `Moment` costs ~1.5 µs): built once per
        instant."""
        clock = self._clock
        if clock is None or self._clock_at != at:
            clock = self._clock = clock_context(utc(at), moment=False)
            self._clock_at = at
        if moment and "now" not in clock:
            clock["now"] = to_moment(clock["_now"])
        return clock

    def event_context(self, event: Event | dict[str, Any] | None) -> dict[str, Any] | None:
        """The `event` name: an Event's context dict is built once per input."""
        return self.event_dict(event) if isinstance(event, Event) else event

    def event_fields(self, event: Event) -> dict[str, Any]:
        """`event` for a condition that reads neither its timestamp nor the event as a whole:
        the context without the formatted instant (most of its cost)."""
        cached_event, cached_ctx = self._event_ctx
        if cached_event is event and cached_ctx is not None:
            return cached_ctx
        return {
            "type": event.type,
            "user_id": event.user_id,
            "properties": event.properties,
            "event_id": event.event_id,
        }

    def event_dict(self, event: Event) -> dict[str, Any]:
        """`event.as_context()`, made once per input and shared (nobody mutates it)."""
        cached_event, cached_ctx = self._event_ctx
        if cached_event is not event or cached_ctx is None:
            cached_ctx = event.as_context()
            self._event_ctx = (event, cached_ctx)
        return cached_ctx

    def context(
        self,
        condition: Condition,
        at: float,
        event: Event | dict[str, Any] | None,
        journey: JourneyArg,
    ) -> dict[str, Any]:
        """The names `condition` reads, and only those: most conditions read one of `event`
        or `profile`, and building the others (a profile copy, a `Moment`) costs more than
        evaluating the condition."""
        names = condition.names
        ctx: dict[str, Any] = {}
        if "profile" in names:
            ctx["profile"] = self.profile_view(at)
        if "event" in names:
            if condition.event_time or not isinstance(event, Event):
                ctx["event"] = self.event_context(event)
            else:
                ctx["event"] = self.event_fields(event)
        if "journey" in names:
            ctx["journey"] = journey() if callable(journey) else journey
        if not names.isdisjoint(TIME_NAMES):
            ctx.update(self.clock(at, moment="now" in names))
        return ctx

    def check(
        self,
        condition: Condition,
        at: float,
        *,
        event: Event | dict[str, Any] | None = None,
        journey: JourneyArg = None,
        owner: str = "",
    ) -> bool:
        """Evaluate a condition; a run-time error makes it false and is counted (under
        `owner`, or the journey's id). `journey` may be a function making the dict: it is
        called only if the condition reads `journey`."""
        ok, error = condition.test(self.context(condition, at, event, journey))
        if error is not None:
            if callable(journey):
                journey = journey()
            jid = owner or (journey or {}).get("id", "")
            self.count("herald_condition_errors_total", journey=jid)
            self.trace(at, jid, "", f"condition {condition.source!r} failed: {error}")
        return ok

    def count(self, metric: str, **labels: str) -> None:
        """Increment a counter (the shell aggregates them)."""
        key = (metric, *labels.items())
        found = _COUNTS.get(key)
        if found is None:
            if len(_COUNTS) >= 4096:  # label values come from the rules; this only bounds misuse
                _COUNTS.clear()
            found = _COUNTS[key] = Count(metric, tuple(sorted(labels.items())))
        self.effects.append(found)

    def trace(self, at: float, journey: str, step: str, what: str) -> None:
        """Record a step taken, when tracing is on (callers test `tracing` first when making
        the text costs more than a format of plain strings)."""
        if self.tracing:
            self.effects.append(Trace(at, self.state.user_id, journey, step, what))

    def failure(self, at: float, journey: str, step: str, reason: str) -> None:
        """Record a failed step; failures are always reported."""
        self.effects.append(Failure(at, self.state.user_id, journey, step, reason))


def _journey_ctx(program: Program, run: Run) -> dict[str, Any]:
    return {
        "id": program.journey.journey,
        "name": program.journey.name,
        "entered_at": iso(run.entered_at),
        "variant": run.variant,
    }


class StepRunner:
    """The semantics of entries, steps, exits, segments and date triggers."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._quiet = lru_cache(maxsize=64)(QuietHours)  # immutable: one per window in the rules

    # ------------------------------------------------------------ profile

    def merge_traits(self, turn: Turn, traits: dict[str, Any]) -> set[str]:
        """Apply identify traits; returns the keys that changed."""
        profile = turn.state.profile
        changed: set[str] = set()
        for key, value in traits.items():
            if key == "consent" and isinstance(value, dict):
                # Consent is per channel: unsubscribing from SMS must not reset email.
                current = profile.get("consent")
                value = {**current, **value} if isinstance(current, dict) else dict(value)
            if profile.get(key, _MISSING) != value:
                profile[key] = value
                changed.add(key)
        if changed:
            turn.touch()
        return changed

    def profile_changed(self, turn: Turn, at: float, changed: set[str]) -> None:
        """Re-evaluate what depends on the changed fields: date triggers and segment edges."""
        turn.touch()
        if self.engine.watches_none_of(changed):
            self.maybe_sweep(turn, at)  # all a refresh would do: see `refresh_segments`
            return
        if self.engine.date_deps and affected(self.engine.date_deps, changed):
            self.sync_dates(turn, at)
        self.refresh_segments(turn, at, changed)

    def maybe_sweep(self, turn: Turn, at: float) -> None:
        """Re-check clock-reading segments if the user's time moved on enough since last time."""
        swept = turn.state.swept_at
        if self.engine.time_segments and (swept is None or at - swept >= SWEEP_INTERVAL_S):
            self.refresh_segments(turn, at, set())

    def refresh_segments(self, turn: Turn, at: float, changed: set[str] | None = None) -> None:
        """Recompute memberships the change can affect; entering or leaving fires triggers."""
        engine = self.engine
        if not engine.segments:
            return
        state = turn.state
        sweep = changed is None or (
            engine.time_segments
            and (state.swept_at is None or at - state.swept_at >= SWEEP_INTERVAL_S)
        )
        if sweep:
            state.swept_at = at
        if changed is None or ALL in changed:
            check = None  # everything
        else:
            check = engine.segments_affected(changed, sweep)
            if not check:
                return
        before = set(state.segments)
        now_in: list[str] = []
        for name, condition, _deps, _clock in engine.segments:
            if check is not None and name not in check:
                if name in before:
                    now_in.append(name)
            elif turn.check(condition, at, owner=f"segment:{name}"):
                now_in.append(name)
        if set(now_in) == before:
            return
        state.segments = now_in
        turn.touch()
        edges = [(n, "enter") for n in now_in if n not in before]
        edges += [(n, "exit") for n in sorted(before) if n not in now_in]
        for name, direction in edges:
            turn.count("herald_segment_changes_total", segment=name, direction=direction)
            turn.trace(at, "", "", f"segment {name}: {direction}")
            for program in engine.by_segment.get((name, direction), ()):
                entry = {
                    "type": f"segment.{direction}",
                    "timestamp": iso(at),
                    "properties": {"segment": name},
                }
                entry_id = f"segment:{name}:{direction}:{iso(at)}"
                self.try_start(turn, program, entry_id, at, entry)

    def sync_dates(self, turn: Turn, at: float) -> None:
        """Keep each date journey's next firing in step with the attribute it reads."""
        state = turn.state
        for program in self.engine.dated:
            jid = program.journey.journey
            spec = program.journey.trigger.date  # type: ignore[union-attr]
            tz = user_zone(state, program)
            key = f"{_date_signature(program)}|{state.profile.get(spec.attribute)!r}|{tz}"
            current = state.dates.get(jid)
            if current is not None and current[1] == key:
                continue
            when = next_date_trigger(
                state.profile.get(spec.attribute), spec.offset, spec.at, tz, utc(at)
            )
            state.dates[jid] = [when.timestamp() if when else None, key]

    def fire_date(self, turn: Turn, jid: str, at: float) -> None:
        """A date trigger is due: start the run and arm next year's firing."""
        state = turn.state
        program = self.engine.programs.get(jid)
        if program is None:
            del state.dates[jid]
            return
        spec = program.journey.trigger.date  # type: ignore[union-attr]
        tz = user_zone(state, program)
        nxt = next_date_trigger(
            state.profile.get(spec.attribute), spec.offset, spec.at, tz, utc(at)
        )
        state.dates[jid][0] = nxt.timestamp() if nxt else None
        if program.journey.enabled:
            entry = {
                "type": "date",
                "timestamp": iso(at),
                "properties": {"attribute": spec.attribute},
            }
            self.try_start(turn, program, firing_entry_id("date", at), at, entry)

    # ------------------------------------------------------------ entries and exits

    def try_start(
        self,
        turn: Turn,
        program: Program,
        entry_id: str,
        at: float,
        entry: dict[str, Any],
        event: Event | None = None,
    ) -> None:
        """Start a run if the journey's entry rules allow it."""
        state = turn.state
        journey = program.journey
        jid = journey.journey
        if jid in state.runs:
            turn.count("herald_triggers_ignored_total", journey=jid, reason="active")
            turn.trace(at, jid, "", "trigger ignored: a run is active")
            return
        policy = journey.reentry_policy()
        ended = state.ended.get(jid)
        if ended is not None and (
            policy.mode == "never"
            or (policy.mode == "after" and at < ended + policy.after.total_seconds())
        ):
            turn.count("herald_triggers_ignored_total", journey=jid, reason="reentry")
            turn.trace(at, jid, "", f"trigger ignored: reentry {policy.mode}")
            return
        if program.audience is not None and not turn.check(
            program.audience, at, event=event or entry, journey={"id": jid}
        ):
            turn.count("herald_triggers_ignored_total", journey=jid, reason="audience")
            turn.trace(at, jid, "", "not in audience")
            return
        run = Run(
            journey=jid,
            version=program.version,
            entry_id=entry_id,
            entered_at=at,
            step=program.first,
            entry_event=entry,
        )
        state.runs[jid] = run
        if journey.goal is not None:
            state.goals[jid] = [at + journey.goal.within.total_seconds(), None, at]
        turn.count("herald_journey_entries_total", journey=jid)
        if turn.tracing:
            turn.trace(at, jid, program.first, f"entered ({entry_id})")
        self.execute(turn, program, run, at)

    def end_run(self, turn: Turn, run: Run, at: float, reason: str) -> None:
        """Finish a run; `ended` feeds the reentry rule."""
        state = turn.state
        state.runs.pop(run.journey, None)
        state.ended[run.journey] = at
        turn.count("herald_journey_exits_total", journey=run.journey, reason=reason)
        if turn.tracing:
            turn.trace(at, run.journey, run.step, f"exit ({reason})")

    def on_event(self, turn: Turn, run: Run, event: Event, at: float) -> None:
        """An event reaches an active run: `exit_on` first, then a waiting `wait_for`."""
        program = self.engine.programs.get(run.journey)
        if program is None or turn.state.runs.get(run.journey) is not run:
            return
        if at < run.entered_at:
            return  # a late event from before the run began cannot exit or resume it
        exits = program.exit_on.get(event.type)
        if exits is None and not run.waiting:
            return  # the usual case: nothing of this run listens to this event
        jctx = partial(_journey_ctx, program, run)  # built only if a condition reads it
        for condition in exits or ():
            if condition is None or turn.check(condition, at, event=event, journey=jctx):
                self.end_run(turn, run, at, "exit_on")
                return
        if not run.waiting:
            return
        node = program.nodes.get(run.step)
        if node is None or node.kind != "wait_for" or node.spec.event != event.type:
            return
        if node.when is not None and not turn.check(node.when, at, event=event, journey=jctx):
            return
        run.waiting = False
        run.wake_at = None
        if node.spec.then == "exit":
            self.end_run(turn, run, at, "wait_for")
            return
        turn.trace(at, run.journey, node.id, f"{event.type} arrived: continue")
        self._advance_to(turn, program, run, node.next, at)

    def wake(self, turn: Turn, program: Program, run: Run, at: float) -> None:
        """A run's timer is due: a wait ended, a wait_for timed out, or a deferred send."""
        run.wake_at = None
        node = program.nodes.get(run.step)
        if node is None:
            self.end_run(turn, run, at, "removed")
            return
        if node.kind in ("wait", "wait_for"):
            if run.waiting:
                turn.trace(at, run.journey, node.id, "wait_for timed out: go on")
            run.waiting = False
            self._advance_to(turn, program, run, node.next, at)
        else:
            self.execute(turn, program, run, at, resumed=True)

    def _advance_to(
        self, turn: Turn, program: Program, run: Run, step: str | None, at: float
    ) -> None:
        if step is None:
            self.end_run(turn, run, at, "completed")
            return
        run.step = step
        self.execute(turn, program, run, at)

    # ------------------------------------------------------------ steps

    def execute(
        self, turn: Turn, program: Program, run: Run, at: float, *, resumed: bool = False
    ) -> None:
        """Run steps from `run.step` until the run waits or ends."""
        state = turn.state
        while True:
            if state.runs.get(run.journey) is not run:
                return
            node = program.nodes.get(run.step)
            if node is None:
                self.end_run(turn, run, at, "removed")
                return
            outcome = self._step(turn, program, run, node, at, resumed)
            resumed = False
            if outcome is BLOCK:
                return
            if outcome is EXIT:
                self.end_run(turn, run, at, "exit_step")
                return
            target = outcome.step if isinstance(outcome, Jump) else node.next
            if target is None:
                self.end_run(turn, run, at, "completed")
                return
            run.step = target

    def _step(
        self, turn: Turn, program: Program, run: Run, node: Node, at: float, resumed: bool
    ) -> object:
        """One step. Returns NEXT, BLOCK, EXIT or a Jump to another step."""
        kind = node.kind
        if kind == "send":
            return self._send(turn, program, run, node, at, resumed)
        if kind == "wait":
            return self._wait(turn, program, run, node, at)
        if kind == "wait_for":
            run.waiting = True
            run.wake_at = at + node.spec.within.total_seconds()
            if turn.tracing:
                what = f"wait for {node.spec.event} until {iso(run.wake_at)}"
                turn.trace(at, run.journey, node.id, what)
            return BLOCK
        if kind == "branch":
            return self._branch(turn, program, run, node, at)
        if kind == "split":
            return self._split(turn, run, node, at)
        if kind == "update_profile":
            self._update_profile(turn, program, run, node, at)
        elif kind == "emit":
            self._emit(turn, program, run, node, at)
        elif kind == "webhook":
            self._webhook(turn, program, run, node, at)
        elif kind == "exit":
            return EXIT
        return NEXT

    def _wait(self, turn: Turn, program: Program, run: Run, node: Node, at: float) -> object:
        spec = node.spec
        if isinstance(spec, timedelta):
            when = at + spec.total_seconds()
        else:  # {until: "10:00"}
            when = next_local_time(utc(at), spec.until, user_zone(turn.state, program)).timestamp()
        if when <= at:
            return NEXT
        run.wake_at = when
        if turn.tracing:
            turn.trace(at, run.journey, node.id, f"wait until {iso(when)}")
        return BLOCK

    def _branch(self, turn: Turn, program: Program, run: Run, node: Node, at: float) -> object:
        jctx = partial(_journey_ctx, program, run)  # built only if a condition reads it
        for condition, first in node.arms:
            if condition is None or turn.check(condition, at, event=run.entry_event, journey=jctx):
                taken = condition.source if condition else "else"
                turn.trace(at, run.journey, node.id, f"branch taken: {taken}")
                return Jump(first)
        return NEXT

    def _split(self, turn: Turn, run: Run, node: Node, at: float) -> object:
        point = split_point(run.journey, turn.state.user_id)
        for name, cumulative, first in node.split:
            if point < cumulative or name == node.split[-1][0]:
                run.variant = name
                if run.journey in turn.state.goals:
                    turn.state.goals[run.journey][1] = name
                turn.trace(at, run.journey, node.id, f"variant {name}")
                return Jump(first)
        return NEXT

    def _render_ctx(
        self,
        turn: Turn,
        program: Program,
        run: Run,
        at: float,
        channel: str,
        names: frozenset[str] | None,
    ) -> dict[str, Any]:
        """What templates see; only the `names` they read are built (None: all of them)."""
        wanted = RENDER_NAMES if names is None else names
        ctx: dict[str, Any] = {}
        if "profile" in wanted:
            ctx["profile"] = turn.profile_view(at)
        if "event" in wanted:
            ctx["event"] = run.entry_event
        if "journey" in wanted:
            ctx["journey"] = _journey_ctx(program, run)
        if "now" in wanted:
            ctx["now"] = utc(at)
        if "unsubscribe_url" in wanted:
            options = self.engine.options
            ctx["unsubscribe_url"] = unsubscribe_url(
                options.unsubscribe_base_url,
                options.unsubscribe_secret,
                turn.state.user_id,
                channel,
            )
        return ctx

    def _send(
        self, turn: Turn, program: Program, run: Run, node: Node, at: float, resumed: bool
    ) -> object:
        state = turn.state
        spec = node.spec
        channel: str = spec.channel
        jid = run.journey
        profile = state.profile
        field = ADDRESS_FIELDS.get(
            channel, f"{channel}_address" if channel != "webhook" else "webhook_url"
        )
        to = profile.get(field)
        consent = profile.get("consent")
        if isinstance(consent, dict) and consent.get(channel) is False:
            return self._suppress(turn, run, node, at, channel, "no consent")
        if not to:
            return self._suppress(turn, run, node, at, channel, f"no {field}")
        quiet = program.journey.quiet_hours or self.engine.rules.settings.quiet_hours
        if quiet is not None and not resumed:
            deferred = self._quiet(quiet.start, quiet.end).defer(utc(at), user_zone(state, program))
            if deferred.timestamp() > at:
                run.wake_at = deferred.timestamp()
                if turn.tracing:
                    turn.trace(at, jid, node.id, f"quiet hours: deferred to {iso(run.wake_at)}")
                return BLOCK
        if self._capped(turn, program, at, channel):
            return self._suppress(turn, run, node, at, channel, "frequency cap")
        try:
            if spec.template is not None:
                template = self.engine.rules.templates.resolve(
                    spec.template, channel, profile.get("locale")
                )
            else:
                template = compile_inline(spec.subject, spec.body, origin=f"{jid}:{node.id}")
            ctx = self._render_ctx(turn, program, run, at, channel, template.names)
            rendered = template.render(ctx)
        except TemplateRenderError as exc:
            turn.count("herald_messages_total", channel=channel, status="failed")
            turn.failure(at, jid, node.id, f"template: {exc}")
            return NEXT
        mid = message_id(jid, run.version, state.user_id, run.entry_id, node.id)
        turn.effects.append(
            Message(
                message_id=mid,
                user_id=state.user_id,
                journey=jid,
                step=node.id,
                channel=channel,
                to=str(to),
                subject=rendered.subject,
                body=rendered.body,
                variant=run.variant,
                at=at,
                entry_id=run.entry_id,
                entry_at=run.entered_at,
            )
        )
        self._record_send(turn, program, at, channel)
        if turn.tracing:
            turn.trace(at, jid, node.id, f"send {channel} to {to}")
        return NEXT

    def _suppress(
        self, turn: Turn, run: Run, node: Node, at: float, channel: str, why: str
    ) -> object:
        turn.count("herald_messages_total", channel=channel, status="suppressed")
        turn.trace(at, run.journey, node.id, f"suppressed {channel}: {why}")
        return NEXT

    def _capped(self, turn: Turn, program: Program, at: float, channel: str) -> bool:
        sends = turn.state.sends
        caps = [(program.journey.journey, program.journey.frequency_cap)]
        caps.append(("*", self.engine.rules.settings.global_frequency_cap))
        for key, cap in caps:
            if cap is None:
                continue
            window = [s for s in sends.get(key, ()) if s[0] > at - cap.per.total_seconds()]
            sends[key] = window
            relevant = [s for s in window if cap.channel in ("any", s[1])]
            if (cap.channel in ("any", channel)) and len(relevant) >= cap.max:
                return True
        return False

    def _record_send(self, turn: Turn, program: Program, at: float, channel: str) -> None:
        sends = turn.state.sends
        if program.journey.frequency_cap is not None:
            sends.setdefault(program.journey.journey, []).append([at, channel])
        if self.engine.rules.settings.global_frequency_cap is not None:
            sends.setdefault("*", []).append([at, channel])

    def _update_profile(
        self, turn: Turn, program: Program, run: Run, node: Node, at: float
    ) -> None:
        spec = node.spec
        profile = turn.state.profile
        ctx = self._render_ctx(turn, program, run, at, "profile", node.names)
        try:
            values = {key: _render(value, ctx) for key, value in spec.set.items()}
        except TemplateRenderError as exc:
            turn.failure(at, run.journey, node.id, f"update_profile: {exc}")
            return
        profile.update(values)
        for key, amount in spec.increment.items():
            current = profile.get(key)
            base = (
                current if isinstance(current, int | float) and not isinstance(current, bool) else 0
            )
            total = base + amount
            profile[key] = int(total) if float(total).is_integer() else total
        if spec.add_tags or spec.remove_tags:
            tags = [t for t in profile.get("tags") or [] if t not in spec.remove_tags]
            tags += [t for t in spec.add_tags if t not in tags]
            profile["tags"] = tags
        for key in spec.unset:
            profile.pop(key, None)
        turn.trace(at, run.journey, node.id, "profile updated")
        changed = {*spec.set, *spec.increment, *spec.unset}
        if spec.add_tags or spec.remove_tags:
            changed.add("tags")
        self.profile_changed(turn, at, changed)

    def _emit(self, turn: Turn, program: Program, run: Run, node: Node, at: float) -> None:
        state = turn.state
        ctx = self._render_ctx(turn, program, run, at, "emit", node.names)
        try:
            properties = _render(node.spec.properties, ctx)
        except TemplateRenderError as exc:
            turn.failure(at, run.journey, node.id, f"emit: {exc}")
            return
        mid = message_id(run.journey, run.version, state.user_id, run.entry_id, node.id)
        event = Event(
            event_id=emitted_event_id(mid),
            type=node.spec.event,
            user_id=state.user_id,
            timestamp=utc(at),
            properties=properties,
            emitted=True,
        )
        turn.effects.append(Emitted(event))
        turn.trace(at, run.journey, node.id, f"emit {event.type}")
        if turn.depth >= MAX_DEPTH:
            turn.failure(at, run.journey, node.id, "emit chain deeper than 8: not applied")
            return
        if state.remember_event(event.event_id):
            turn.depth += 1
            try:
                self.engine.apply_event(turn, event, at)
            finally:
                turn.depth -= 1

    def _webhook(self, turn: Turn, program: Program, run: Run, node: Node, at: float) -> None:
        spec = node.spec
        ctx = self._render_ctx(turn, program, run, at, "webhook", node.names)
        try:
            url = str(_render(spec.url, ctx))
            body = _render(spec.body, ctx)
            headers = {k: str(_render(v, ctx)) for k, v in spec.headers.items()}
        except TemplateRenderError as exc:
            turn.count("herald_messages_total", channel="webhook", status="failed")
            turn.failure(at, run.journey, node.id, f"webhook: {exc}")
            return
        text = (
            body
            if isinstance(body, str)
            else orjson.dumps(body).decode()
            if body is not None
            else ""
        )
        turn.effects.append(
            Message(
                message_id=message_id(
                    run.journey, run.version, turn.state.user_id, run.entry_id, node.id
                ),
                user_id=turn.state.user_id,
                journey=run.journey,
                step=node.id,
                channel="webhook",
                to=url,
                subject=None,
                body=text,
                variant=run.variant,
                at=at,
                entry_id=run.entry_id,
                entry_at=run.entered_at,
                meta={"method": spec.method, "headers": headers},
            )
        )
        turn.trace(at, run.journey, node.id, f"webhook {spec.method} {url}")


_MISSING = object()


def _date_signature(program: Program) -> str:
    """What a date journey's firings depend on besides the profile: its version."""
    return program.version


NEXT = object()
BLOCK = object()
EXIT = object()


class Jump:
    """Continue at another step (a branch or split arm); None means the journey is done."""

    __slots__ = ("step",)

    def __init__(self, step: str | None) -> None:
        self.step = step


def _render(value: Any, ctx: dict[str, Any]) -> Any:
    """Render templated strings anywhere inside a value (dicts and lists included)."""
    if isinstance(value, str):
        return render_value(value, ctx)
    if isinstance(value, dict):
        return {k: _render(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, ctx) for v in value]
    return value


__all__ = ["Failure", "StepRunner", "Trace", "Turn", "user_zone"]
