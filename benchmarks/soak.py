"""Processor memory under a steady load: its resident size must stay flat, not grow per user.

Usage: python benchmarks/soak.py [MINUTES] [EVENTS_PER_S]
Starts an embedded broker and Redis and all roles, offers a steady stream of synthetic
events from ever-new users, and prints the processor's RSS every 30 s.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from engine.synthetic import synthetic_events
from workers.stack import LocalStack


def rss_mib(pid: int) -> float:
    """Resident set size of a process, MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def soak(stack: LocalStack, minutes: float, rate: float) -> list[tuple[float, float]]:
    """Offer `rate` events/s for `minutes`; sample the processor's RSS every 30 s."""
    await stack.wait_ready()
    pid = stack.children["processor"][0].pid
    samples: list[tuple[float, float]] = []
    begun = time.monotonic()
    next_sample = begun
    sent = 0
    async with aiohttp.ClientSession() as http:
        while time.monotonic() - begun < minutes * 60:
            second = int(time.monotonic() - begun)
            events = list(synthetic_events(int(rate), 10**9, seed=second))
            batch = []
            for e in events:
                doc = e.to_json_dict()
                doc["user_id"] = f"soak-{sent}"  # a new user every event: growth would show
                doc["event_id"] = f"soak-{sent}"
                del doc["timestamp"]
                batch.append(doc)
                sent += 1
            await stack.post_events(http, batch)
            if time.monotonic() >= next_sample:
                samples.append((time.monotonic() - begun, rss_mib(pid)))
                print(
                    f"{samples[-1][0]:6.0f} s  {sent:9d} events  processor RSS "
                    f"{samples[-1][1]:7.1f} MiB",
                    flush=True,
                )
                next_sample += 30
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - begun - second)))
    return samples


def main() -> None:
    minutes = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    rate = float(sys.argv[2]) if len(sys.argv) > 2 else 1000.0
    with tempfile.TemporaryDirectory() as tmp, LocalStack(Path(tmp), quiet=True) as stack:
        stack.start_roles()
        samples = asyncio.run(soak(stack, minutes, rate))
    steady = [rss for at, rss in samples if at >= 60]
    if steady:
        print(
            f"after warm-up: min {min(steady):.1f} MiB, max {max(steady):.1f} MiB, "
            f"last {steady[-1]:.1f} MiB over {len(steady)} samples"
        )


if __name__ == "__main__":
    main()
