"""Events per second of the pure core under `herald simulate`'s driver, in memory.

Usage: python benchmarks/simulate_speed.py [EVENTS] [USERS] [JOBS]
Synthetic storefront traffic over the sample library in rules/, profiles loaded first. The
window ends an hour after the last event (what `herald simulate` adds after that, 7 days of
timers by default, depends on the rules, not on the number of events).

JOBS (default 1): processes the users are split over, as `herald simulate --jobs` does; the
time then includes forking and merging the parts back into one ordered output.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta

from engine.language.loader import load_rules
from engine.runtime.core import Engine
from engine.runtime.effects import Message
from engine.simulate import Simulation
from engine.synthetic import synthetic_events, user_traits
from workers.gc_tuning import tune_gc
from workers.simulate_shards import simulate_sharded


def main() -> None:
    tune_gc()  # as `herald simulate` does
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    users = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    jobs = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    engine = Engine(load_rules("rules"))
    stream = list(synthetic_events(events, users))
    start, until = stream[0].timestamp, stream[-1].timestamp + timedelta(hours=1)
    profiles = [(f"u{i}", user_traits(i)) for i in range(users)]
    if jobs > 1:
        # Profiles are loaded inside the timed part here: the children load their own users.
        began = time.perf_counter()
        messages = sum(
            1
            for _ in simulate_sharded(
                engine, stream, profiles, start, until, jobs=jobs, keep=(Message,)
            )
        )
    else:
        sim = Simulation(engine)
        list(sim.load_profiles(profiles, start))
        began = time.perf_counter()
        messages = sum(isinstance(e, Message) for _at, e in sim.run(stream, start, until))
    took = time.perf_counter() - began
    print(
        f"{events} events, {users} users, {len(engine.programs)} journeys, {jobs} job(s): "
        f"{took:.2f} s = {events / took:,.0f} events/s, {messages} messages"
    )


if __name__ == "__main__":
    main()
