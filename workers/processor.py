"""The processor's batch step: records in, state and actions out — the imperative shell.

For one batch of records (any partitions this worker owns):
  1. decode every record into inputs (poison items become dead letters, never exceptions);
  2. read every touched user in ONE round trip;
  3. apply each user's inputs in order through the pure core, skipping inputs the user's
     state already recorded (a replay after a crash);
  4. produce the resulting actions and dead letters and wait for the broker's ack;
  5. write users, timer index and segment index back in ONE round trip (atomic per partition).
Only after 5 may the caller commit the records' offsets. A crash between 4 and 5 replays the
batch: states are re-derived identically and the same message ids are produced again, which
the dispatcher drops. A crash after 5 replays nothing the states have not recorded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import orjson

from engine.runtime.core import Engine
from engine.runtime.effects import Count, Failure, Message, Outcome
from engine.runtime.state import UserState
from workers.records import SEQ_STRIDE, Input, Rejected, decode
from workers.store import PartitionWrite, StateStore

log = logging.getLogger(__name__)

# Yield to the event loop every so many users, so the acks and writes of partitions already
# computed make progress while the rest of the batch is.
YIELD_EVERY_USERS = 256


@dataclass(frozen=True, slots=True)
class Record:
    """A consumed Kafka record (what faust or aiokafka handed us)."""

    partition: int
    offset: int
    value: bytes | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An input that could not be processed, with the reason (herald.dlq)."""

    reason: str
    detail: str
    raw: bytes
    source: str
    partition: int
    offset: int

    def to_json(self) -> bytes:
        """The herald.dlq record value."""
        return orjson.dumps(
            {
                "reason": self.reason,
                "detail": self.detail,
                "source": self.source,
                "partition": self.partition,
                "offset": self.offset,
                "raw": self.raw.decode("utf-8", "replace"),
                "at": datetime.now(UTC).isoformat(),
            }
        )


class Sink(Protocol):
    """Where actions and dead letters go (Kafka in production, lists in tests)."""

    async def send_actions(self, actions: Sequence[tuple[str, int, bytes]]) -> None:
        """Produce (user_id, partition, value) records to herald.actions; return after ack."""

    async def send_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Produce dead letters to herald.dlq; return after ack."""


class Clock(Protocol):
    """Where `now` comes from: the wall clock, or event time for replays and tests."""

    event_time: bool

    def now(self) -> float:
        """Current time, epoch seconds."""


class WallClock:
    """Production time."""

    event_time = False

    def now(self) -> float:
        """The wall clock."""
        return time.time()


class EventClock:
    """Event time: a partition's clock is the newest event time it has seen (a watermark).

    Why: a replay of historic events, or the "same answer as simulate" test, must see the
    same clock the events carry, whatever the wall clock says.
    """

    event_time = True

    def now(self) -> float:
        """Not used for decisions in event-time mode (each partition has its own clock)."""
        return 0.0


@dataclass
class BatchReport:
    """What one batch did (for metrics and the benchmark)."""

    inputs: int = 0
    events: int = 0
    skipped: int = 0
    actions: int = 0
    dead_letters: int = 0
    redis_ops: int = 0
    counts: Counter[tuple[str, tuple[tuple[str, str], ...]]] = field(default_factory=Counter)
    events_by_type: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    failures: Counter[tuple[str, str, str]] = field(default_factory=Counter)


class BatchProcessor:
    """Drives the pure core over batches of records against a state store."""

    def __init__(self, engine: Engine, store: StateStore, sink: Sink, clock: Clock) -> None:
        self.engine = engine
        self.store = store
        self.sink = sink
        self.clock = clock
        self.watermarks: dict[int, float] = {}
        # Clocks as of the last durable write: what timer and schedule loops may act on.
        self.committed_watermarks: dict[int, float] = {}
        self._last_instant = (0.0, datetime.fromtimestamp(0.0, UTC))

    def reload(self, engine: Engine) -> None:
        """Swap in new rules between batches (the running engine keeps its last good rules)."""
        self.engine = engine

    async def process(self, records: Sequence[Record]) -> BatchReport:
        """Process one batch; raises only on infrastructure failure (then nothing is acked)."""
        report = BatchReport()
        wall = self.clock.now()
        received = datetime.fromtimestamp(wall or time.time(), UTC)
        decoded, letters = self._decode(records, received)
        partitions = {p for p, _item in decoded}
        if self.clock.event_time:
            await self._load_watermarks(partitions)
        per_user, first_clock = self._order(decoded, wall, report)
        users_of: dict[int, list[str]] = {}
        for partition, user_id in per_user:
            users_of.setdefault(partition, []).append(user_id)
        report.redis_ops += len(per_user)
        letters_of: dict[int, list[DeadLetter]] = defaultdict(list)
        for letter in letters:
            letters_of[letter.partition].append(letter)
        # One read per partition, all sent at once: later partitions' documents arrive while
        # earlier ones are computed, and earlier ones' acks and writes are in flight meanwhile.
        loading = {
            p: asyncio.ensure_future(self.store.load([(p, u) for u in users]))
            for p, users in sorted(users_of.items())
        }
        persisting: list[asyncio.Task[None]] = []
        try:
            for partition in sorted(partitions | letters_of.keys()):
                write = PartitionWrite(partition)
                if self.clock.event_time and partition in partitions:
                    write.watermark = self.watermarks.get(partition)
                    write.first_watermark = first_clock.get(partition)
                users = users_of.get(partition, [])
                docs = await loading[partition] if users else []
                actions: list[tuple[str, int, bytes]] = []
                dead = letters_of[partition]
                for count, (user_id, doc) in enumerate(zip(users, docs, strict=True), 1):
                    inputs = per_user[(partition, user_id)]
                    self._run_user(partition, user_id, doc, inputs, write, actions, dead, report)
                    if count % YIELD_EVERY_USERS == 0:
                        await asyncio.sleep(0)
                persisting.append(asyncio.create_task(self._persist(actions, dead, write, report)))
                await asyncio.sleep(0)
        finally:
            # Everything in flight settles before this returns, failed or not: a retry of the
            # batch must not race a write still under way.
            settled = await asyncio.gather(*loading.values(), *persisting, return_exceptions=True)
        for result in settled:
            if isinstance(result, BaseException):
                raise result
        if self.clock.event_time:
            for partition in partitions:
                self.committed_watermarks[partition] = self.watermarks.get(partition, 0.0)
        for (journey, step, reason), n in report.failures.most_common(5):
            log.warning("%d step failure(s): journey=%s step=%s: %s", n, journey, step, reason)
        return report

    def _order(
        self, decoded: list[tuple[int, Input]], wall: float, report: BatchReport
    ) -> tuple[dict[tuple[int, str], list[Input]], dict[int, float]]:
        """Inputs grouped per user in record order, each with its `now`: in event time a
        partition's clock is the newest time among the records before it, whoever they are of."""
        per_user: dict[tuple[int, str], list[Input]] = {}
        first_clock: dict[int, float] = {}
        event_time = self.clock.event_time
        for partition, item in decoded:
            if event_time:
                item.now = now = self._now_for(partition, item, wall)
                first_clock.setdefault(partition, now)
            else:
                item.now = wall
            if item.kind != "clock":
                key = (partition, item.user_id)
                inputs = per_user.get(key)
                if inputs is None:
                    per_user[key] = [item]
                else:
                    inputs.append(item)
        report.inputs += sum(map(len, per_user.values()))
        return per_user, first_clock

    async def _persist(
        self,
        actions: list[tuple[str, int, bytes]],
        letters: list[DeadLetter],
        write: PartitionWrite,
        report: BatchReport,
    ) -> None:
        """One partition's effects in the order exactly-once needs: actions and dead letters
        acknowledged by the broker first, then the state that records them as done."""
        report.redis_ops += write.op_count()
        report.actions += len(actions)
        report.dead_letters += len(letters)
        if actions:
            await self.sink.send_actions(actions)
        if letters:
            await self.sink.send_dead_letters(letters)
        if write.op_count():
            await self.store.commit([write])

    @staticmethod
    def _decode(
        records: Sequence[Record], received: datetime
    ) -> tuple[list[tuple[int, Input]], list[DeadLetter]]:
        """Inputs in record order, and dead letters for what cannot be read."""
        decoded: list[tuple[int, Input]] = []
        letters: list[DeadLetter] = []
        for record in records:
            for item in decode(record.value, record.offset, received):
                if isinstance(item, Rejected):
                    letters.append(
                        DeadLetter(
                            item.reason,
                            item.detail,
                            item.raw,
                            "herald.events",
                            record.partition,
                            record.offset,
                        )
                    )
                else:
                    decoded.append((record.partition, item))
        return decoded, letters

    async def _load_watermarks(self, partitions: set[int]) -> None:
        missing = [p for p in partitions if p not in self.watermarks]
        if missing:
            stored = await self.store.watermarks(missing)
            self.watermarks.update(stored)
            for p, at in stored.items():
                self.committed_watermarks.setdefault(p, at)

    def _now_for(self, partition: int, item: Input, wall: float) -> float:
        if not self.clock.event_time:
            return wall
        current = self.watermarks.get(partition, 0.0)
        if item.event is not None:
            current = max(current, item.event.timestamp.timestamp())
        elif item.at:
            current = max(current, item.at)
        self.watermarks[partition] = current
        return current

    def _instant(self, now: float) -> datetime:
        """`now` as the core takes it; in wall-clock mode a whole batch shares one."""
        cached = self._last_instant
        if cached[0] != now:
            cached = self._last_instant = (now, datetime.fromtimestamp(now, UTC))
        return cached[1]

    def _run_user(
        self,
        partition: int,
        user_id: str,
        doc: bytes | None,
        inputs: list[Input],
        write: PartitionWrite,
        actions: list[tuple[str, int, bytes]],
        letters: list[DeadLetter],
        report: BatchReport,
    ) -> None:
        failed: dict[int, Exception] = {}
        while True:
            # Parsed afresh on every attempt: the core updates the state in place, so a retry
            # must not start from a document an earlier attempt already changed.
            state = UserState.decode(doc) if doc else UserState(user_id)
            old_segments = list(state.segments)
            outcomes: list[tuple[Input, Outcome]] = []
            try:
                for item in inputs:
                    if item.seq <= state.offset or item.seq in failed:
                        continue
                    current = item
                    outcome = self._apply(state, item, self._instant(item.now))
                    state = outcome.state
                    state.offset = item.seq
                    outcomes.append((item, outcome))
            except Exception as error:  # one user's bad input must not stop the partition
                # Start the user over from the stored document without the failing input:
                # the core is deterministic, so the inputs before it give the same result.
                log.exception("input failed for a user in partition %d", partition)
                failed[current.seq] = error
                continue
            break
        for seq, exc in failed.items():
            item = next(i for i in inputs if i.seq == seq)
            raw = orjson.dumps(item.event.to_json_dict()) if item.event else b""
            letters.append(
                DeadLetter(
                    "processing_error",
                    f"{type(exc).__name__}: {exc}",
                    raw,
                    "herald.events",
                    partition,
                    seq // SEQ_STRIDE,
                )
            )
            state.offset = max(state.offset, seq)
        report.skipped += len(inputs) - len(outcomes) - len(failed)
        if not outcomes and not failed:
            return
        ticked = False
        for item, outcome in outcomes:
            ticked = ticked or item.kind == "tick"
            if item.event is not None:
                report.events += 1
                report.events_by_type[item.event.type] += 1
            self._collect(outcome, partition, actions, report)
        if doc is None:
            write.new_users.append(user_id)
        indexed = state.indexed_wake
        wake = state.wake_at
        # The timer index may hold a time EARLIER than the real one (an early tick finds
        # nothing due and corrects it), never a later one. So a wake that moved later (the
        # usual case: activity pushes an inactivity timer out) costs no write.
        if ticked or (wake is not None and (indexed is None or wake < indexed)):
            write.wakes[user_id] = wake
            state.indexed_wake = wake
        write.docs[user_id] = state.encode()
        if state.segments != old_segments:
            for name in set(state.segments).difference(old_segments):
                write.segments_added.setdefault(name, []).append(user_id)
            for name in set(old_segments).difference(state.segments):
                write.segments_removed.setdefault(name, []).append(user_id)

    def _apply(self, state: UserState, item: Input, now: datetime) -> Outcome:
        engine = self.engine
        if item.kind == "event":
            assert item.event is not None
            return engine.handle_event(state, item.event, now)
        if item.kind == "tick":
            return engine.handle_tick(state, now)
        if item.kind == "schedule":
            at = datetime.fromtimestamp(item.at, UTC)
            return engine.handle_schedule(state, item.journey, at, max(now, at))
        if item.kind == "profile":
            return engine.handle_profile(state, item.traits or {}, now)
        raise ValueError(f"unknown input kind {item.kind!r}")

    def _collect(
        self,
        outcome: Outcome,
        partition: int,
        actions: list[tuple[str, int, bytes]],
        report: BatchReport,
    ) -> None:
        for effect in outcome.effects:
            if isinstance(effect, Message):
                action = effect.to_action()
                action["partition"] = partition
                actions.append((effect.user_id, partition, orjson.dumps(action)))
            elif isinstance(effect, Count):
                report.counts[(effect.metric, effect.labels)] += 1
            elif isinstance(effect, Failure):
                # Logged per batch (below), not per failure: a broken template would otherwise
                # flood the log at event rate.
                report.failures[(effect.journey, effect.step, effect.reason[:200])] += 1
                report.counts[("herald_step_failures_total", (("journey", effect.journey),))] += 1
