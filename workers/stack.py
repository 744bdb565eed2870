"""A whole Herald on one machine: embedded broker and Redis, one process per role.

`herald dev`, `herald demo`, `herald bench` and the end-to-end tests all drive the system
through this one class, so what the tests exercise is exactly what an operator runs: real
processes, real sockets, real SIGKILLs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from workers.config import Settings, kafka_bootstrap
from workers.services import EmbeddedBroker, EmbeddedRedis, free_port, terminate_with_parent
from workers.topics import ensure_topics, partition_for

ROLES = ("processor", "dispatcher", "api")
PROVIDER_VARIABLES = ("SENDGRID_API_KEY", "TWILIO_ACCOUNT_SID", "WECHAT_APP_ID")


class LocalStack:
    """Services plus role processes, with helpers to feed events and read the outbox."""

    def __init__(
        self,
        state_dir: Path,
        *,
        partitions: int = 4,
        clock: str = "wall",
        rules: Path | None = None,
        extra_env: dict[str, str] | None = None,
        quiet: bool = False,
        external: Settings | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.external = external
        self.partitions = partitions
        self.outbox = state_dir / "outbox.jsonl"
        self.api_port = free_port()
        self.broker = EmbeddedBroker(state_dir)
        self.redis = EmbeddedRedis(state_dir)
        self.children: dict[str, list[subprocess.Popen[bytes]]] = {}
        self.quiet = quiet
        self._env_extra = {
            "HERALD_CLOCK": clock,
            "HERALD_OUTBOX": str(self.outbox),
            "HERALD_API_PORT": str(self.api_port),
            "HERALD_PARTITIONS": str(partitions),
            "HERALD_STATE_DIR": str(state_dir),
            "HERALD_SESSION_TIMEOUT": os.environ.get("HERALD_SESSION_TIMEOUT", "2"),
            **({"HERALD_RULES_DIR": str(rules)} if rules else {}),
            **(extra_env or {}),
        }

    # ------------------------------------------------------------------ lifecycle

    def start_services(self) -> None:
        """Broker and Redis (unless external ones are configured), and Herald's topics."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.external is None:
            self.broker.start()
            self.redis.start()
        asyncio.run(ensure_topics(self.bootstrap, self.partitions))

    @property
    def bootstrap(self) -> str:
        """Kafka bootstrap servers (`host:port,...`)."""
        if self.external is not None:
            return kafka_bootstrap(self.external)
        return self.broker.bootstrap

    @property
    def kafka_url(self) -> str:
        """Kafka URL for HERALD_KAFKA_URL."""
        return self.external.kafka_url if self.external is not None else self.broker.url

    @property
    def redis_url(self) -> str:
        """Redis URL for HERALD_REDIS_URL."""
        return self.external.redis_url if self.external is not None else self.redis.url

    @property
    def broker_address(self) -> str:
        """For messages to people."""
        return self.bootstrap

    @property
    def env(self) -> dict[str, str]:
        """Environment of the role processes."""
        env = {k: v for k, v in os.environ.items() if k not in PROVIDER_VARIABLES}
        env.update(self._env_extra)
        env["HERALD_KAFKA_URL"] = self.kafka_url
        env["HERALD_REDIS_URL"] = self.redis_url
        return env

    def spawn(self, role: str) -> subprocess.Popen[bytes]:
        """Start one more process of a role."""
        out = subprocess.DEVNULL if self.quiet else None
        log = (self.state_dir / f"{role}.log").open("ab") if self.quiet else None
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "run", "--role", role],
            env=self.env,
            stdout=log or out,
            stderr=log or out,
            preexec_fn=terminate_with_parent,
        )
        self.children.setdefault(role, []).append(proc)
        return proc

    def start_roles(self, roles: Sequence[str] = ROLES) -> None:
        """One process per role."""
        for role in roles:
            self.spawn(role)

    def kill(self, role: str) -> None:
        """SIGKILL every process of a role (a crash, not a shutdown)."""
        for proc in self.children.get(role, []):
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        self.children[role] = []

    def stop_role(self, role: str, timeout: float = 10.0) -> None:
        """SIGTERM a role's processes and wait (a clean stop)."""
        procs = self.children.get(role, [])
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.children[role] = []

    def dead_role(self) -> str | None:
        """A role whose process exited on its own."""
        for role, procs in self.children.items():
            if any(p.poll() is not None for p in procs):
                return role
        return None

    def stop(self) -> None:
        """Everything, roles first."""
        for role in list(self.children):
            self.stop_role(role)
        if self.external is None:
            self.redis.stop()
            self.broker.stop()

    def __enter__(self) -> LocalStack:
        self.start_services()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ feeding

    @property
    def api_url(self) -> str:
        """Base URL of the API role."""
        return f"http://127.0.0.1:{self.api_port}"

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the API answers /readyz (which means it reaches the broker)."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                dead = self.dead_role()
                if dead is not None:
                    raise RuntimeError(f"role {dead} exited during start-up")
                try:
                    async with http.get(f"{self.api_url}/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError(f"the API did not become ready within {timeout:.0f} s")

    async def post_events(
        self, http: aiohttp.ClientSession, events: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """POST one batch to /v1/events; retries while the API restarts."""
        for _attempt in range(100):
            try:
                async with http.post(f"{self.api_url}/v1/events", json={"batch": events}) as r:
                    body: dict[str, Any] = await r.json()
                    if r.status in (202, 400):
                        return body
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError("the API refused the batch 100 times")

    async def send_controls(self, records: Iterable[tuple[int, bytes]]) -> None:
        """Produce control records (clock, profile) straight onto herald.events."""
        from workers.kafka_sink import KafkaSink

        sink = KafkaSink(self.bootstrap, client_id="herald-stack")
        await sink.start()
        try:
            for partition, value in records:
                await sink.send_control(partition, value)
        finally:
            await sink.stop()

    async def start_replay(
        self, start: float, profiles: Iterable[tuple[str, dict[str, Any]]] = ()
    ) -> None:
        """Event-time replays begin here: every partition's clock at `start`, then the
        profiles imported (without activity), each on its user's partition."""
        from workers.records import control

        controls = [(p, control("clock", start)) for p in range(self.partitions)]
        by_partition: dict[int, list[dict[str, Any]]] = {}
        for user, traits in profiles:
            by_partition.setdefault(self.partition_of(user), []).append(
                {"user_id": user, "traits": traits}
            )
        controls += [(p, control("profile", start, profiles=v)) for p, v in by_partition.items()]
        await self.send_controls(controls)

    async def advance_clock(self, until: float) -> None:
        """Move every partition's event-time clock to `until` (timers up to it fire)."""
        from workers.records import control

        await self.send_controls([(p, control("clock", until)) for p in range(self.partitions)])

    def partition_of(self, user_id: str) -> int:
        """The partition Kafka's default partitioner gives a user."""
        return partition_for(user_id.encode(), self.partitions)

    # ------------------------------------------------------------------ reading

    def outbox_lines(self) -> list[dict[str, Any]]:
        """Every complete outbox line so far."""
        if not self.outbox.exists():
            return []
        data = self.outbox.read_bytes()
        return [orjson.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]
