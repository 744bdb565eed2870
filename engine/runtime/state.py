"""One user's whole state as one compact document.

Why one document: the processor reads every user a batch touches in one pipelined round trip
and writes them back in one; a user whose state lives in one key also moves atomically. Times
are epoch seconds (floats): cheap to compare, cheap to serialise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RECENT_EVENT_IDS = 32
# Attributes stored only when non-empty, and their short keys in the stored document.
_DOC_KEYS = (
    ("profile", "p"),
    ("metrics", "m"),
    ("segments", "sg"),
    ("ended", "x"),
    ("goals", "g"),
    ("sends", "sn"),
    ("activity", "a"),
    ("idle_fired", "i"),
    ("dates", "d"),
    ("recent", "re"),
    ("dates_version", "dv"),
)


@dataclass(slots=True)
class Run:
    """A user's active run of one journey."""

    journey: str
    version: str
    entry_id: str
    entered_at: float
    step: str
    variant: str | None = None
    wake_at: float | None = None
    waiting: bool = False
    entry_event: dict[str, Any] = field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        """Compact form; keys are short because millions of these sit in Redis."""
        doc: dict[str, Any] = {
            "v": self.version,
            "e": self.entry_id,
            "t": self.entered_at,
            "s": self.step,
        }
        if self.variant is not None:
            doc["x"] = self.variant
        if self.wake_at is not None:
            doc["w"] = self.wake_at
        if self.waiting:
            doc["f"] = 1
        if self.entry_event:
            doc["ev"] = self.entry_event
        return doc

    @classmethod
    def from_doc(cls, journey: str, doc: dict[str, Any]) -> Run:
        """Inverse of `to_doc`."""
        return cls(
            journey=journey,
            version=doc["v"],
            entry_id=doc["e"],
            entered_at=doc["t"],
            step=doc["s"],
            variant=doc.get("x"),
            wake_at=doc.get("w"),
            waiting=bool(doc.get("f")),
            entry_event=doc.get("ev") or {},
        )


@dataclass(slots=True)
class UserState:
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
    profile: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    segments: list[str] = field(default_factory=list)
    runs: dict[str, Run] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)
    goals: dict[str, list[Any]] = field(default_factory=dict)
    sends: dict[str, list[list[Any]]] = field(default_factory=dict)
    activity: dict[str, float] = field(default_factory=dict)
    idle_fired: list[str] = field(default_factory=list)
    dates: dict[str, list[Any]] = field(default_factory=dict)
    recent: list[str] = field(default_factory=list)
    offset: int = -1
    wake_at: float | None = None
    swept_at: float | None = None
    dates_version: str = ""
    indexed_wake: float | None = None

    def to_doc(self) -> dict[str, Any]:
        """A JSON-ready dict with empty parts left out (most users have no runs at all)."""
        doc: dict[str, Any] = {"u": self.user_id}
        for attr, key in _DOC_KEYS:
            value = getattr(self, attr)
            if value:
                doc[key] = value
        if self.runs:
            doc["r"] = {j: run.to_doc() for j, run in self.runs.items()}
        if self.offset >= 0:
            doc["o"] = self.offset
        if self.wake_at is not None:
            doc["w"] = self.wake_at
        if self.swept_at is not None:
            doc["sw"] = self.swept_at
        if self.indexed_wake is not None:
            doc["iw"] = self.indexed_wake
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> UserState:
        """Inverse of `to_doc`."""
        return cls(
            user_id=doc["u"],
            profile=doc.get("p") or {},
            metrics=doc.get("m") or {},
            segments=doc.get("sg") or [],
            runs={j: Run.from_doc(j, r) for j, r in (doc.get("r") or {}).items()},
            ended=doc.get("x") or {},
            goals=doc.get("g") or {},
            sends=doc.get("sn") or {},
            activity=doc.get("a") or {},
            idle_fired=doc.get("i") or [],
            dates=doc.get("d") or {},
            recent=doc.get("re") or [],
            offset=doc.get("o", -1),
            wake_at=doc.get("w"),
            swept_at=doc.get("sw"),
            dates_version=doc.get("dv", ""),
            indexed_wake=doc.get("iw"),
        )

    def remember_event(self, event_id: str) -> bool:
        """Record an applied event id; False when it was already applied (a duplicate)."""
        if event_id in self.recent:
            return False
        self.recent.append(event_id)
        if len(self.recent) > RECENT_EVENT_IDS:
            del self.recent[0]
        return True
