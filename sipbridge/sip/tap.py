"""Media tap: a pjsua2 audio port that copies a leg's decoded audio out of the media
clock thread, and the per-leg analysis that feeds it to recipient detection.

The conference bridge calls :meth:`FrameTap.onFrameReceived` on pjmedia's clock thread
every 20 ms. That callback only copies the frame into a deque (thread-safe append); the
worker's main thread drains the deque between ``libHandleEvents`` calls and runs the
detector (:class:`LegAnalysis`), so the media thread never waits on Python analysis.

Copying a frame: ``bytes(frame.buf)`` converts the SWIG ``ByteVector`` element by
element (about 110 µs per 320-byte frame here, ~0.6 % of a core per call at 50 frames/s).
A ``ByteVector`` is a ``std::vector<unsigned char>`` whose first two words are its begin
and end pointers (libstdc++, which the manylinux wheel uses), so :func:`copy_vector`
reads the bytes with one ``ctypes.string_at`` (about 1 µs). :func:`_vector_layout_ok`
checks that layout at import on a vector with a known pattern; if it does not hold, the
slow but safe conversion is used.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import wave
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pjsua2 as pj

from sipbridge.media.detect import DetectionEvent, Detector, config_from_overrides
from sipbridge.media.frames import FRAME_BYTES
from sipbridge.media.promptfiles import PROMPT_MAX_BYTES, PROMPT_MAX_S
from sipbridge.media.promptlib import PromptLibrary

CLOCK_RATE_HZ = 8000
FRAME_MS = 20
# At most this much audio waits in a tap between two drains (the main loop drains every
# ~10 ms; 5 s covers a stall without growing without bound).
_MAX_QUEUED_FRAMES = 250
_SILENCE = bytes(FRAME_BYTES)


def _copy_vector_ctypes(vec: Any) -> bytes:
    ptrs = (ctypes.c_void_p * 2).from_address(int(vec.this))
    begin, end = ptrs[0] or 0, ptrs[1] or 0
    return ctypes.string_at(begin, end - begin) if end > begin else b""


def _copy_vector_slow(vec: Any) -> bytes:
    return bytes(vec)


def _vector_layout_ok() -> bool:
    try:
        for n in (1, 7, 320, 641):
            v = pj.ByteVector(n)
            for i in range(n):
                v[i] = (i * 37 + n) % 256
            if _copy_vector_ctypes(v) != bytes(v):
                return False
        return True
    except Exception:
        return False


FAST_COPY = _vector_layout_ok()
copy_vector: Callable[[Any], bytes] = _copy_vector_ctypes if FAST_COPY else _copy_vector_slow


def pcm_port_format() -> Any:
    """The format of sipbridge's own conference-bridge ports: 8 kHz, 16-bit mono,
    20 ms frames (what the detectors read and the delay line plays)."""
    fmt = pj.MediaFormatAudio()
    fmt.type = pj.PJMEDIA_TYPE_AUDIO
    fmt.clockRate = CLOCK_RATE_HZ
    fmt.channelCount = 1
    fmt.bitsPerSample = 16
    fmt.frameTimeUsec = FRAME_MS * 1000
    return fmt


class FrameTap(pj.AudioMediaPort):
    """A sink port on the conference bridge: 8 kHz, 16-bit mono, 20 ms frames."""

    def __init__(self, name: str) -> None:
        pj.AudioMediaPort.__init__(self)
        self.frames: deque[bytes] = deque(maxlen=_MAX_QUEUED_FRAMES)
        self.dropped = 0
        self.createPort(name, pcm_port_format())

    def onFrameReceived(self, frame: Any) -> None:
        # Media clock thread: copy out and return. A frame with no audio (nothing was
        # transmitted to us this tick) still marks 20 ms passing.
        # pjsua2 pitfall: this can run while the main thread tears the object down (its
        # __dict__ already cleared, the C++ port not yet unregistered from the bridge);
        # an exception leaving a director callback crosses pjmedia's C code and crashes
        # the process, so nothing here may raise, the error path included.
        try:
            frames = self.frames
            if frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO and frame.size:
                data = copy_vector(frame.buf)
            else:
                data = _SILENCE
            if len(frames) == frames.maxlen:
                self.dropped += 1
            frames.append(data)
        except BaseException:
            pass

    def onFrameRequested(self, frame: Any) -> None:
        # We never produce audio into the bridge.
        with contextlib.suppress(BaseException):
            frame.type = pj.PJMEDIA_FRAME_TYPE_NONE
            frame.size = 0


_PROMPT_LIBRARIES: dict[tuple[str, float, int], PromptLibrary | None] = {}


def prompt_library(folder: Any, limits: Any = None) -> PromptLibrary | None:
    """The prompt library of ``folder`` (media.prompt_dir) loaded with ``limits`` ([max_s,
    max_bytes] per WAV: media.prompt_max_s / prompt_max_bytes; None: the defaults), once per
    worker process (checked at the bridge's start-up; a folder broken since then is left
    out)."""
    if not isinstance(folder, str) or not folder:
        return None
    max_s, max_bytes = PROMPT_MAX_S, PROMPT_MAX_BYTES
    if (
        isinstance(limits, list | tuple)
        and len(limits) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in limits)
    ):
        max_s, max_bytes = float(limits[0]), int(limits[1])
    key = (folder, max_s, max_bytes)
    if key not in _PROMPT_LIBRARIES:
        try:
            _PROMPT_LIBRARIES[key] = PromptLibrary.from_folder(folder, max_s, max_bytes)
        except ValueError:
            _PROMPT_LIBRARIES[key] = None
    return _PROMPT_LIBRARIES[key]


class LegAnalysis:
    """Recipient detection for one leg: an early-media phase, then an answer phase.

    ``settings`` is :attr:`sipbridge.plan.DialPlan.detection`:
    ``{"early": bool, "answer": bool, "config": {threshold: value}}``.
    """

    def __init__(self, settings: dict[str, Any], name: str = "leg") -> None:
        self.settings = settings
        self.config = config_from_overrides(settings.get("config"))
        self.phase: str | None = None
        self.detector: Detector | None = None
        self.frames_fed = 0
        # Troubleshooting: SIPBRIDGE_TAP_DUMP_DIR keeps what each phase heard as a WAV.
        self.dump_dir = os.environ.get("SIPBRIDGE_TAP_DUMP_DIR")
        self.name = name.replace("/", "_")
        self._dump: list[bytes] = []

    def _write_dump(self) -> None:
        if not self.dump_dir or not self._dump or self.phase is None:
            return
        path = Path(self.dump_dir) / f"{self.name}-{self.phase}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(CLOCK_RATE_HZ)
            w.writeframes(b"".join(self._dump))
        self._dump = []

    def close(self) -> None:
        self._write_dump()

    def start_phase(self, phase: str) -> bool:
        """Begin ``early`` or ``answer`` analysis; False if that phase is not wanted."""
        self._write_dump()
        if not self.settings.get(phase):
            self.phase, self.detector = None, None
            return False
        self.phase = phase
        self.detector = Detector(
            self.config,
            mode="early" if phase == "early" else "answer",
            keep_timeline=False,
            prompts=prompt_library(
                self.settings.get("prompts"), self.settings.get("prompt_limits")
            ),
        )
        self.frames_fed = 0
        return True

    @property
    def active(self) -> bool:
        return self.detector is not None and not self.detector.done

    def feed(self, frames: list[bytes]) -> list[DetectionEvent]:
        det = self.detector
        if det is None or det.done:
            return []
        events: list[DetectionEvent] = []
        for data in frames:
            if self.dump_dir:
                self._dump.append(data)
            events.extend(det.feed(data, self.frames_fed * FRAME_MS))
            self.frames_fed += 1
            if det.done:
                break
        return events


class PhaseListener:
    """A later analysis phase on a live leg (``Listen``), e.g. "hold": wait for a live
    person after IVR navigation.

    "hold" uses ``sipbridge.media.hold.HoldListener(config)`` (``.feed(frame, t_ms) ->
    list[DetectionEvent]``, ``.done``). Until that module exists, a
    :class:`~sipbridge.media.detect.Detector` in "answer" mode stands in: only its
    ``human`` decisions are reported (anything else restarts it, so hold music or a
    looping prompt keeps the listener waiting). Other phase names ("answer", "early")
    run the Detector in that mode and report everything.
    """

    def __init__(self, phase: str, config: dict[str, Any] | None = None) -> None:
        self.phase = phase
        self.config = dict(config or {})
        self.frames_fed = 0
        self.fallback = False
        self.impl: Any = None
        if phase == "hold":
            try:
                from sipbridge.media.hold import HoldListener  # type: ignore[import-not-found,unused-ignore]
            except ImportError:
                self.fallback = True
                self.impl = self._detector("answer")
            else:
                self.impl = HoldListener(self.config)
        else:
            self.impl = self._detector("early" if phase == "early" else "answer")

    def _detector(self, mode: str) -> Detector:
        try:
            cfg = config_from_overrides(self.config.get("config", self.config) or None)
        except (ValueError, TypeError):
            cfg = config_from_overrides(None)
        return Detector(cfg, mode="early" if mode == "early" else "answer", keep_timeline=False)

    @property
    def active(self) -> bool:
        return self.impl is not None and not self.impl.done

    def feed(self, frames: list[bytes]) -> list[DetectionEvent]:
        out: list[DetectionEvent] = []
        for data in frames:
            if not self.active:
                break
            t_ms = self.frames_fed * FRAME_MS
            self.frames_fed += 1
            events = self.impl.feed(data, t_ms)
            if not self.fallback:
                out.extend(events)
                continue
            for ev in events:
                if ev.kind == "decision" and ev.detection.answered_by == "human":
                    out.append(ev)
            if self.impl.done and not out:
                # Not a person (music, a prompt, silence): keep listening from here.
                self.impl = self._detector("answer")
                self.frames_fed = 0
            elif out:
                self.impl = None  # a person: done
                break
        return out


__all__ = ["FAST_COPY", "FrameTap", "LegAnalysis", "PhaseListener", "copy_vector"]
