"""Detection results: what the detectors report (immutable dataclasses, JSON-friendly)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from sipbridge.media.tones import ProgressKind

AnsweredBy = Literal["human", "machine", "ivr", "fax", "silence", "unknown", "sit"]
ANSWERED_BY_VALUES: tuple[str, ...] = (
    "human",
    "machine",
    "ivr",
    "fax",
    "silence",
    "unknown",
    "sit",
)


@dataclass(frozen=True, slots=True)
class Detection:
    """A detection result (immutable). Times are ms from the start of analysis.

    ``answered_by`` is ``sit`` for special information tones (``sit_code`` set), ``unknown`` with
    ``progress`` set for call-progress results. ``final`` is False for provisional results
    (``machine`` before its beep, early-media ``ringback``).
    """

    answered_by: AnsweredBy
    decided_at_ms: int
    final: bool = True
    sit_code: str | None = None
    progress: ProgressKind | None = None
    progress_region: str | None = None
    greeting_end_ms: int | None = None
    beep_ms: int | None = None
    beep_hz: float | None = None
    # End of the beep (ms): set by an ``update`` that follows the beep decision once the tone
    # stops (a mailbox records from the beep's end; a message started during it is clipped).
    beep_end_ms: int | None = None
    ivr_hint: bool = False
    # What kind of human or machine, when the audio says more: "operator" (a live voice with a
    # long, scripted greeting, then waiting), "screening" (a recorded/synthetic greeting ending
    # in a question, then silence, no beep), or "prompt" (a prompt-library match). Operators and
    # screeners come as ``answered_by="human"``: both should be spoken to at once.
    hint: str | None = None
    # A prompt-library match: the prompt's name and the label its folder gives it.
    prompt: str | None = None
    prompt_label: str | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class DetectionEvent:
    """A new or updated detection, returned by :meth:`Detector.feed`."""

    kind: Literal["decision", "update", "progress"]
    t_ms: int
    detection: Detection


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """A feature event for the analyze tool: speech/tone starts and ends, SIT, decisions."""

    t_ms: int
    kind: str
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {"t_ms": self.t_ms, "kind": self.kind, **self.detail}
