"""Events per second of the pure core under `herald simulate`'s driver, in memory.

Usage: python benchmarks/simulate_speed.py [EVENTS] [USERS]
Synthetic storefront traffic over the sample library in rules/, profiles loaded first.
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


def main() -> None:
    tune_gc()  # as `herald simulate` does
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    users = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    engine = Engine(load_rules("rules"))
    stream = list(synthetic_events(events, users))
    sim = Simulation(engine)
    start = stream[0].timestamp
    list(sim.load_profiles(((f"u{i}", user_traits(i)) for i in range(users)), start))
    began = time.perf_counter()
    messages = sum(
        isinstance(effect, Message)
        for _at, effect in sim.run(stream, start, stream[-1].timestamp + timedelta(hours=1))
    )
    took = time.perf_counter() - began
    print(
        f"{events} events, {users} users, {len(engine.programs)} journeys: {took:.2f} s = "
        f"{events / took:,.0f} events/s, {messages} messages"
    )


if __name__ == "__main__":
    main()
