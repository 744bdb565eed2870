"""One user's whole state as one compact document.

Why one document: the processor reads every user a batch touches in one pipelined round trip
and writes them back in one; a user whose state lives in one key also moves atomically. Times
are epoch seconds (floats): cheap to compare, cheap to serialise.

The classes are msgspec Structs, so the processor decodes a stored JSON document straight
into them and encodes them straight back (about half the cost of parsing to dicts and
converting), and a document of the wrong shape fails at the read, not somewhere in the core.
"""

from __future__ import annotations

from typing import Any

import msgspec

RECENT_EVENT_IDS = 32


# Stored names: short, because millions of these documents sit in Redis.
_RUN_KEYS = {
    "journey": "j",
    "version": "v",
    "entry_id": "e",
    "entered_at": "t",
    "step": "s",
    "variant": "x",
    "wake_at": "w",
    "waiting": "f",
    "entry_event": "ev",
}
_USER_KEYS = {
    "user_id": "u",
    "profile": "p",
    "metrics": "m",
    "segments": "sg",
    "runs": "r",
    "ended": "x",
    "goals": "g",
    "sends": "sn",
    "activity": "a",
    "idle_fired": "i",
    "dates": "d",
    "recent": "re",
    "offset": "o",
    "wake_at": "w",
    "swept_at": "sw",
    "dates_version": "dv",
    "indexed_wake": "iw",
}


class Run(msgspec.Struct, omit_defaults=True, rename=_RUN_KEYS):
    """A user's active run of one journey."""

    journey: str
    version: str
    entry_id: str
    entered_at: float
    step: str
    variant: str | None = None
    wake_at: float | None = None
    waiting: bool = False
    entry_event: dict[str, Any] = msgspec.field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        """The stored form, as plain JSON values."""
        doc: dict[str, Any] = msgspec.to_builtins(self)
        return doc

    @classmethod
    def from_doc(cls, journey: str, doc: dict[str, Any]) -> Run:
        """Inverse of `to_doc` (documents written before runs stored their journey too)."""
        return msgspec.convert({"j": journey, **doc}, cls, strict=False)


class UserState(msgspec.Struct, omit_defaults=True, rename=_USER_KEYS):
    """Everything Herald keeps about one user.

    - `profile`: traits and `update_profile` results (tags live in `profile["tags"]`);
    - `metrics`: per metric, its aggregate state (see `engine.runtime.metrics`);
    - `segments`: current memberships, so entering and leaving are edges, not levels;
    - `runs`: active runs by journey; `ended`: when each journey's last run ended (reentry);
    - `goals`: open conversion windows, journey -> [deadline, variant];
    - `sends`: recent send times per journey (and "*" for the global cap), [time, channel];
    - `activity`: last counted activity per inactivity journey; `idle_fired`: those fired;
    - `dates`: per date journey, [next firing, the attribute value it was computed from];
    - `recent`: the last event ids applied (a replayed event is recognised and skipped);
    - `offset`: the last input offset applied, kept by the shell to skip replays exactly;
    - `swept_at`: when segments that read the clock were last re-checked for this user;
    - `indexed_wake`: the time the shell's timer index holds for this user (it may be earlier
      than `wake_at`, never later; the core does not read it).
    """

    user_id: str
    profile: dict[str, Any] = msgspec.field(default_factory=dict)
    metrics: dict[str, Any] = msgspec.field(default_factory=dict)
    segments: list[str] = msgspec.field(default_factory=list)
    runs: dict[str, Run] = msgspec.field(default_factory=dict)
    ended: dict[str, float] = msgspec.field(default_factory=dict)
    goals: dict[str, list[Any]] = msgspec.field(default_factory=dict)
    sends: dict[str, list[list[Any]]] = msgspec.field(default_factory=dict)
    activity: dict[str, float] = msgspec.field(default_factory=dict)
    idle_fired: list[str] = msgspec.field(default_factory=list)
    dates: dict[str, list[Any]] = msgspec.field(default_factory=dict)
    recent: list[str] = msgspec.field(default_factory=list)
    offset: int = -1
    wake_at: float | None = None
    swept_at: float | None = None
    dates_version: str = ""
    indexed_wake: float | None = None

    def to_doc(self) -> dict[str, Any]:
        """A JSON-ready dict with empty parts left out (most users have no runs at all)."""
        doc: dict[str, Any] = msgspec.to_builtins(self)
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> UserState:
        """Inverse of `to_doc`."""
        return msgspec.convert(_with_run_keys(doc), cls, strict=False)

    def encode(self) -> bytes:
        """The stored document, straight from the object (no intermediate dicts)."""
        return _ENCODER.encode(self)

    @staticmethod
    def decode(data: bytes) -> UserState:
        """Inverse of `encode`: the document straight into objects, validated as it goes."""
        try:
            return _DECODER.decode(data)
        except msgspec.ValidationError:
            # A document from before runs carried their journey id: the slow, forgiving way.
            return UserState.from_doc(msgspec.json.decode(data))

    def remember_event(self, event_id: str) -> bool:
        """Record an applied event id; False when it was already applied (a duplicate)."""
        if event_id in self.recent:
            return False
        self.recent.append(event_id)
        if len(self.recent) > RECENT_EVENT_IDS:
            del self.recent[0]
        return True


def _with_run_keys(doc: dict[str, Any]) -> dict[str, Any]:
    runs = doc.get("r")
    if not runs:
        return doc
    return {**doc, "r": {j: {"j": j, **r} for j, r in runs.items()}}


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(UserState, strict=False)
