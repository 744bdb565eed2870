"""The outbox: the sandbox channel every dev and test run can read (runtime.md).

Contract: one JSON line per dispatched message with exactly `OUTBOX_FIELDS`, and exactly
one line per message id whatever crashes, restarts or extra dispatcher processes happen.

How that holds:

* Every check-then-append runs under an exclusive `flock` on the file, so processes
  appending to the same file take turns; a `threading.Lock` does the same for threads of
  one process (flock is per open file, which those threads share).
* Each connector keeps the set of ids already in the file and the byte offset it has read
  up to. Under the lock it first reads whatever other processes appended since, then skips
  ids it knows and appends the rest.
* Writers only write while holding the lock, so a line without its newline seen *under the
  lock* is a writer that died mid-write: it is cut off before anything is appended (and on
  `start`). A failed write or fsync is cut off the same way, so the file never holds a line
  whose send was reported as failed.
* A receipt is returned only after the batch's bytes are written and fsync'd: a line the
  dispatcher marks sent is on disk. A crash after the write but before the mark makes the
  dispatcher ask `delivered()` or resend; both find the id and nothing is appended twice.

The lock is taken inline on the event loop when it is free (a batch of 500 costs well
under a millisecond plus one fsync); when another process or thread holds it, or the batch
is large, the work moves to a thread so the loop is never stuck behind someone else.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import orjson

from connectors.base import Delivery, Receipt
from connectors.errors import ConnectorConfigError
from engine.errors import ConnectorError

if TYPE_CHECKING:
    from workers.config import Settings

__all__ = ["DEFAULT_PATH", "OUTBOX_FIELDS", "OutboxConnector"]

DEFAULT_PATH = Path(".herald/outbox.jsonl")
OUTBOX_FIELDS = (
    "message_id",
    "user_id",
    "journey",
    "step",
    "channel",
    "to",
    "subject",
    "body",
    "variant",
    "sent_at",
)
_READ_CHUNK = 4 * 1024 * 1024
_NEWLINE = orjson.OPT_APPEND_NEWLINE
_ID_PREFIX = b'{"message_id":"'
_DUPLICATE = Receipt(None, "already in the outbox", duplicate=True)
_T = TypeVar("_T")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class OutboxConnector:
    """Appends deliveries to a JSON-lines file, each message id exactly once."""

    name = "outbox"

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_PATH,
        *,
        fsync: bool = True,
        inline_limit: int = 1000,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        """`inline_limit`: batches up to this size run on the loop when the lock is free."""
        self.path = Path(path)
        self.fsync = fsync
        self.inline_limit = inline_limit
        self._clock = clock
        self._fd: int | None = None
        self._ids: set[str] = set()
        self._pos = 0  # bytes of the file already folded into _ids; always a line boundary
        self._mutex = threading.Lock()
        self._appended_detail = f"appended to {self.path}"

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboxConnector:
        return cls(settings.outbox)

    # -- Connector protocol -------------------------------------------------------------

    async def start(self) -> None:
        """Create the directory, cut a torn last line, index the ids already in the file."""
        try:
            await asyncio.to_thread(self._locked_blocking, self._catch_up)
        except OSError as exc:
            raise ConnectorConfigError(f"cannot open outbox {self.path}: {exc}") from exc

    async def send(self, delivery: Delivery) -> Receipt:
        outcome = (await self.send_many([delivery]))[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def send_many(self, deliveries: Sequence[Delivery]) -> list[Receipt | Exception]:
        """Append a batch under one lock and one fsync; one outcome per delivery, in order."""
        if not deliveries:
            return []
        batch = list(deliveries)
        try:
            return await self._run(lambda: self._append(batch), inline=len(batch))
        except OSError as exc:
            return [_failed(f"outbox {self.path}: {exc}", exc) for _ in batch]

    async def delivered(self, message_id: str) -> bool:
        """Exact: whether any process has already appended this id to the file."""
        try:
            return await self._run(lambda: self._knows(message_id), inline=1)
        except OSError as exc:
            raise ConnectorError(f"outbox {self.path}: {exc}", retryable=True) from exc

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    # -- what runs under the lock ---------------------------------------------------------

    def _knows(self, message_id: str) -> bool:
        self._catch_up()
        return message_id in self._ids

    def _append(self, deliveries: list[Delivery]) -> list[Receipt | Exception]:
        fd = self._catch_up()
        sent_at = self._clock().astimezone(UTC).isoformat()
        appended = Receipt(None, self._appended_detail)  # immutable: one per batch is enough
        outcomes: list[Receipt | Exception] = []
        fresh: set[str] = set()
        lines: list[bytes] = []
        for delivery in deliveries:
            if delivery.message_id in self._ids or delivery.message_id in fresh:
                outcomes.append(_DUPLICATE)
                continue
            try:
                lines.append(orjson.dumps(_line(delivery, sent_at), option=_NEWLINE))
            except orjson.JSONEncodeError as exc:  # e.g. a lone surrogate in the body
                outcomes.append(ConnectorError(f"not encodable as JSON: {exc}", retryable=False))
                continue
            fresh.add(delivery.message_id)
            outcomes.append(appended)
        buffer = b"".join(lines)
        if not buffer:
            return outcomes
        try:
            _write_all(fd, buffer)
            if self.fsync:
                os.fsync(fd)
        except OSError as exc:
            # Leave no line behind whose send we report as failed.
            os.ftruncate(fd, self._pos)
            message = f"outbox write failed: {exc}"
            return [_failed(message, exc) if o is appended else o for o in outcomes]
        self._pos += len(buffer)
        self._ids |= fresh
        return outcomes

    def _catch_up(self) -> int:
        """Fold lines other writers appended into the index; cut a torn tail. Lock held."""
        fd = self._require_fd()
        size = os.fstat(fd).st_size
        if size < self._pos:  # someone truncated the file: start over from what is there
            self._ids.clear()
            self._pos = 0
        carry = b""
        offset = self._pos
        while offset < size:
            chunk = os.pread(fd, min(_READ_CHUNK, size - offset), offset)
            if not chunk:
                break
            offset += len(chunk)
            data = carry + chunk if carry else chunk
            end = data.rfind(b"\n") + 1
            if end:
                self._index(data[:end])
                self._pos += end
            carry = data[end:]
        if self._pos < size:
            # Under the lock nobody is writing: these bytes are a writer that died mid-line.
            os.ftruncate(fd, self._pos)
        return fd

    def _index(self, data: bytes) -> None:
        ids = self._ids
        skip = len(_ID_PREFIX)
        for raw in data.split(b"\n"):
            # Fast path for our own lines, which start with the id (no JSON parse needed).
            if raw.startswith(_ID_PREFIX):
                end = raw.find(b'"', skip)
                if end > 0 and b"\\" not in raw[skip:end]:
                    ids.add(raw[skip:end].decode("utf-8", "replace"))
                    continue
            if not raw.strip():
                continue
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # not ours to judge; it cannot hold an id we would match
            if isinstance(doc, dict) and isinstance(doc.get("message_id"), str):
                ids.add(doc["message_id"])

    # -- locking and the file --------------------------------------------------------------

    async def _run(self, work: Callable[[], _T], *, inline: int) -> _T:
        if inline <= self.inline_limit and self._acquire(blocking=False):
            try:
                return work()
            finally:
                self._release()
        return await asyncio.to_thread(self._locked_blocking, work)

    def _locked_blocking(self, work: Callable[[], _T]) -> _T:
        self._acquire(blocking=True)
        try:
            return work()
        finally:
            self._release()

    def _acquire(self, *, blocking: bool) -> bool:
        if not self._mutex.acquire(blocking=blocking):
            return False
        try:
            while True:
                fd = self._open()
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    self._mutex.release()
                    return False
                if self._still_at_path(fd):
                    return True
                # The file was deleted or replaced under us: follow the path, forget the old.
                fcntl.flock(fd, fcntl.LOCK_UN)
                self._close_fd()
        except BaseException:
            self._mutex.release()
            raise

    def _release(self) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._mutex.release()

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            self._fd = os.open(self.path, flags, 0o644)
            self._ids.clear()
            self._pos = 0
        return self._fd

    def _require_fd(self) -> int:
        if self._fd is None:
            raise OSError("outbox is closed")
        return self._fd

    def _still_at_path(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)

    def _close(self) -> None:
        with self._mutex:
            self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _line(delivery: Delivery, sent_at: str) -> dict[str, str | None]:
    return {
        "message_id": delivery.message_id,
        "user_id": delivery.user_id,
        "journey": delivery.journey,
        "step": delivery.step,
        "channel": delivery.channel,
        "to": delivery.to,
        "subject": delivery.subject,
        "body": delivery.body,
        "variant": delivery.variant,
        "sent_at": sent_at,
    }


def _failed(message: str, cause: OSError) -> ConnectorError:
    # One instance per message: callers may raise them from different tasks.
    error = ConnectorError(message, retryable=True)
    error.__cause__ = cause
    return error


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
