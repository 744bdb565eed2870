"""`herald simulate` on several cores: users split by a stable hash, outputs merged in order.

Why this is exact, not an approximation: every input changes one user's state and users share
nothing (the same fact lets production split users over Kafka partitions), so each process
runs the one-process simulation restricted to its users, input by input in the same order.
`engine.simulate.InputOutcome` says where each input falls in the whole run; merging the
parts by it (and each effect's index within its input) gives the one-process output, byte for
byte.

Processes are forked after the rules are compiled and the input is read, so the children
inherit both and only their results travel back.
"""

from __future__ import annotations

import heapq
import multiprocessing
import os
import zlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any

from engine.events import Event
from engine.runtime.core import Engine
from engine.runtime.effects import Effect
from engine.simulate import Simulation

# Below this many events per process, forking and merging cost more than they save.
MIN_EVENTS_PER_JOB = 20_000
MAX_JOBS = 8
_BEFORE_START = float("-inf")

OrderedEffect = tuple[tuple[float, int, int, str, int], Effect]


def available_cpus() -> int:
    """CPUs this process may run on (a container's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def can_fork() -> bool:
    """Whether the platform offers fork (the children must inherit the compiled rules)."""
    return "fork" in multiprocessing.get_all_start_methods()


def default_jobs(events: int) -> int:
    """Processes worth using for `events` events on this machine."""
    if not can_fork():
        return 1
    return max(1, min(available_cpus(), MAX_JOBS, events // MIN_EVENTS_PER_JOB))


def shard_of(user_id: str, shards: int) -> int:
    """A user's process: stable across processes and runs (unlike the salted `hash`)."""
    return zlib.crc32(user_id.encode()) % shards


class _Work:
    """What every child needs; set in the parent just before the fork, never pickled."""

    def __init__(
        self,
        engine: Engine,
        events: list[Event],
        profiles: Sequence[tuple[str, dict[str, Any]]],
        start: datetime,
        until: datetime,
        shards: int,
        keep: tuple[type, ...],
        loaded: Simulation | None,
    ) -> None:
        self.engine = engine
        self.events = events
        self.profiles = profiles
        self.start = start
        self.until = until
        self.shards = shards
        self.keep = keep
        self.loaded = loaded


_WORK: _Work | None = None


def _run_shard(shard: int) -> list[OrderedEffect]:
    """One child's part: the simulation of its users, each kept effect with its order key."""
    work = _WORK
    assert work is not None, "called outside simulate_sharded"
    shards, keep = work.shards, work.keep
    if work.loaded is not None:
        sim = work.loaded  # the child's copy of the parent's: keep this shard's users
        sim.restrict(lambda user_id: shard_of(user_id, shards) == shard)
    else:
        sim = Simulation(work.engine)
    out: list[OrderedEffect] = []
    for index, (user_id, traits) in enumerate(work.profiles):
        if shard_of(user_id, shards) == shard:
            effects = sim.load_profile(user_id, traits, work.start)
            for i, effect in enumerate(effects):
                if isinstance(effect, keep):
                    out.append(((_BEFORE_START, 0, index, "", i), effect))
    mine = [
        (rank, event)
        for rank, event in enumerate(work.events)
        if shard_of(event.user_id, shards) == shard
    ]
    for at, source, rank, user, effects in sim.inputs(mine, work.start, work.until):
        for i, effect in enumerate(effects):
            if isinstance(effect, keep):
                out.append(((at, source, rank, user, i), effect))
    return out


def simulate_sharded(
    engine: Engine,
    events: list[Event],
    profiles: Sequence[tuple[str, dict[str, Any]]],
    start: datetime,
    until: datetime,
    *,
    jobs: int,
    keep: tuple[type, ...],
    loaded: Simulation | None = None,
) -> Iterator[Effect]:
    """The effects of `keep` types a one-process simulation (profiles loaded at `start`,
    then the events) yields, in the same order, computed by `jobs` forked processes.

    `loaded`: a simulation whose users are already loaded (profiles, earlier events); each
    child goes on from its copy of it, restricted to its users. The parent's is unchanged."""
    global _WORK
    ordered = sorted(events, key=lambda e: e.timestamp)  # the one-process order of events
    _WORK = _Work(engine, ordered, profiles, start, until, jobs, keep, loaded)
    try:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            parts = pool.map(_run_shard, range(jobs), chunksize=1)
    finally:
        _WORK = None
    for _key, effect in heapq.merge(*parts, key=itemgetter(0)):
        yield effect
