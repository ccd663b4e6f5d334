"""Framing shared by the streaming analysers (:class:`~sipbridge.media.detect.Detector`,
:class:`~sipbridge.media.hold.HoldListener`): audio in chunks of any size, 20 ms frames out.
Pure (numpy only).

``feed`` accepts PCM16 bytes or an int16/float array of any length, buffered into 160-sample
frames. ``t_ms`` is the time of the chunk's first sample relative to the start of analysis;
when omitted the clock continues. A forward gap (lost packets) is filled with silence. An
exact 20 ms PCM16 frame that continues the clock skips the buffering (the hot path: the
worker's tap delivers exactly that).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import numpy.typing as npt

from sipbridge.media.frames import (
    FRAME_BYTES,
    FRAME_MS,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    FloatArray,
    float_to_pcm16,
    pcm16_to_float,
)
from sipbridge.media.result import Detection, DetectionEvent


class FrameFeeder(ABC):
    """The clock, the frame buffer and the latest result of a streaming analyser;
    subclasses analyse one frame in :meth:`_process` (which advances ``_t``)."""

    def __init__(self) -> None:
        self._pending: FloatArray = np.zeros(0, dtype=np.float64)
        self._t = 0  # start time of the next frame (ms)
        self._result: Detection | None = None
        self._done = False

    @property
    def done(self) -> bool:
        """True once a final result exists; further audio is ignored."""
        return self._done

    @property
    def now_ms(self) -> int:
        """Time (ms) up to which audio has been analysed."""
        return self._t

    def result(self) -> Detection | None:
        """The latest result (possibly provisional), or None if nothing was decided yet."""
        return self._result

    def feed(
        self, frame: bytes | bytearray | npt.NDArray[np.generic], t_ms: int | None = None
    ) -> list[DetectionEvent]:
        """Analyse audio; returns the events (decisions, updates) it produced."""
        events: list[DetectionEvent] = []
        if self._done:
            return events
        if (
            (type(frame) is bytes or isinstance(frame, bytes | bytearray))
            and len(frame) == FRAME_BYTES
            and (t_ms is None or t_ms == self._t)
            and not self._pending.size
        ):
            self._process(frame if type(frame) is bytes else bytes(frame), None, events)
            return events
        x = pcm16_to_float(frame)
        pending_ms = self._pending.size * 1000 // SAMPLE_RATE
        if t_ms is not None and t_ms > self._t + pending_ms + FRAME_MS:
            gap = (t_ms - self._t) * SAMPLE_RATE // 1000 - self._pending.size
            x = np.concatenate([np.zeros(gap), x])
        buf = np.concatenate([self._pending, x]) if self._pending.size else x
        n = buf.size // FRAME_SAMPLES
        for i in range(n):
            if self._done:
                break
            f = buf[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]
            self._process(float_to_pcm16(f).tobytes(), f, events)
        self._pending = buf[n * FRAME_SAMPLES :].copy()
        return events

    @abstractmethod
    def _process(self, pcm: bytes, x: FloatArray | None, events: list[DetectionEvent]) -> None:
        """Analyse one 20 ms frame: ``pcm`` as PCM16 bytes, ``x`` the same as floats when
        already at hand (None: convert ``pcm`` if needed). Advances ``_t`` by FRAME_MS."""


__all__ = ["FrameFeeder"]
