"""`herald run --role all|api|processor|dispatcher`: the production entry point.

One role per process is the unit of scaling: start more processors to split partitions, more
dispatchers to split delivery, more API processes behind a load balancer. `--role all` starts
one process per role and supervises them (used by `herald dev` and small deployments).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from workers.config import Settings
from workers.gc_tuning import tune_gc
from workers.services import sigterm_as_interrupt, terminate_with_parent

log = logging.getLogger(__name__)

ROLES = ("processor", "dispatcher", "api")


def configure_logging(role: str) -> None:
    """One line per record, role-tagged; PII never appears in Herald's own log lines."""
    logging.basicConfig(
        level=os.environ.get("HERALD_LOG_LEVEL", "INFO").upper(),
        format=f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("aiokafka", "faust", "mode", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_role(role: str, settings: Settings) -> int:
    """Run one role in this process until stopped (SIGTERM/SIGINT)."""
    configure_logging(role)
    event_time = settings.clock == "event"
    if role == "processor":
        import faust

        from workers.processor_app import ProcessorService, create_processor_app

        service = ProcessorService(settings, event_time=event_time)
        app = create_processor_app(settings, service)
        tune_gc()
        faust.Worker(
            app, loglevel="WARNING", quiet=True, redirect_stdouts=False
        ).execute_from_commandline()
        return 0
    if role == "dispatcher":
        import faust

        from workers.dispatcher_app import DispatcherService, create_dispatcher_app

        dispatcher = DispatcherService(settings)
        dapp = create_dispatcher_app(settings, dispatcher)
        tune_gc()
        faust.Worker(
            dapp, loglevel="WARNING", quiet=True, redirect_stdouts=False
        ).execute_from_commandline()
        return 0
    if role == "api":
        from workers.api import run_api

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_api(settings))
        return 0
    raise SystemExit(f"unknown role {role!r}: use one of all, {', '.join(ROLES)}")


class Supervisor:
    """Child processes of `--role all`: started together, stopped together."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = dict(env or os.environ)
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, role: str) -> subprocess.Popen[bytes]:
        """Start one role as `python -m workers.cli run --role ROLE`."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "run", "--role", role],
            env=self.env,
            preexec_fn=terminate_with_parent,
        )
        self.children[role] = proc
        return proc

    def start(self, roles: Sequence[str] = ROLES) -> None:
        """Start every role."""
        for role in roles:
            self.spawn(role)

    def poll(self) -> str | None:
        """The role of a child that exited, if any."""
        for role, proc in self.children.items():
            if proc.poll() is not None:
                return role
        return None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every child, then SIGKILL what is left after `timeout`."""
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.children.values():
            remaining = max(0.1, deadline - time.monotonic())
            try:
                proc.wait(remaining)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_all(env: Mapping[str, str] | None = None) -> int:
    """Supervise one process per role until Ctrl-C or a child dies."""
    sigterm_as_interrupt()
    supervisor = Supervisor(env)
    supervisor.start()
    try:
        while True:
            dead = supervisor.poll()
            if dead is not None:
                log.error("role %s exited; stopping the others", dead)
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        supervisor.stop()


def run(args: argparse.Namespace) -> int:
    """CLI handler."""
    settings = Settings()
    if args.role == "all":
        configure_logging("supervisor")
        return run_all()
    return run_role(args.role, settings)
