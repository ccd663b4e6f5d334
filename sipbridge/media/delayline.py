"""The delay line that gives the agent the speech that woke the bridge from hold, then
catches up with the live carrier audio (pure: no pjsua2, no asyncio).

When the hold listener decides a live person is speaking, ~0.8 s of their speech has
already gone by. Those frames (from the speech onset) are queued here and played to the
agent first, so the agent hears the person's first words; the agent is then that far
behind the carrier. The line catches up by skipping *pause* frames while more than
``target_ms`` is queued: a frame below ``silence_dbfs`` after at least ``keep_pause_ms`` of
such frames (the quiet instants inside words, stop closures and short gaps, are kept): the
person's words are all played, only the pauses between them get shorter. Once the backlog
is down to ``target_ms`` the caller switches the agent back to the direct (undelayed) audio
path, at a pause.

Threads: :meth:`push` runs on the worker's loop thread, :meth:`pop` on pjmedia's clock
thread (the port that plays to the agent). ``deque.append`` / ``popleft`` are atomic; only
:meth:`pop` removes frames.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

FRAME_MS = 20
# Kept before the first word of the buffered speech (its soft start: "h", "s").
LEAD_IN_MS = 40


def frame_dbfs(frame: bytes) -> float:
    """RMS level of a 16-bit little-endian PCM frame, dBFS (-120 for digital silence)."""
    x = np.frombuffer(frame, dtype="<i2").astype(np.float64)
    if x.size == 0:
        return -120.0
    rms = math.sqrt(float(np.mean(x * x))) / 32768.0
    return 20 * math.log10(rms) if rms > 1e-6 else -120.0


class DelayLine:
    """A FIFO of 20 ms frames that shrinks by dropping pauses until it is nearly empty."""

    def __init__(
        self,
        frames: list[bytes],
        target_ms: int = 60,
        silence_dbfs: float = -45.0,
        keep_pause_ms: int = 60,
    ) -> None:
        self.target_frames = max(1, target_ms // FRAME_MS)
        self.silence_dbfs = silence_dbfs
        self.keep_pause_frames = max(0, keep_pause_ms // FRAME_MS)
        self._quiet_run = 0  # pause frames pushed in a row
        self._q: deque[tuple[bytes, bool]] = deque()
        self.played = 0  # frames handed to the agent
        self.skipped = 0  # pause frames dropped to catch up
        self.underruns = 0  # pop() found nothing queued
        self.last_silent = False
        # The pre-roll before the first word protects nothing but that word's soft start:
        # all of it may be skipped except its last LEAD_IN_MS.
        quiet = [frame_dbfs(f) < silence_dbfs for f in frames]
        first_word = quiet.index(False) if False in quiet else len(frames)
        lead_in = first_word - LEAD_IN_MS // FRAME_MS
        for i, f in enumerate(frames):
            self.push(f)
            if i < first_word:
                self._q[-1] = (f, i < lead_in)
        self.initial_ms = self.backlog_ms

    def push(self, frame: bytes) -> None:
        silent = frame_dbfs(frame) < self.silence_dbfs
        self.last_silent = silent
        self._quiet_run = self._quiet_run + 1 if silent else 0
        self._q.append((frame, self._quiet_run > self.keep_pause_frames))

    def pop(self) -> bytes | None:
        """The next frame to play (None: nothing queued). Pause frames are skipped while
        the backlog is above the target."""
        q = self._q
        try:
            while True:
                frame, skippable = q.popleft()
                if skippable and len(q) >= self.target_frames:
                    self.skipped += 1
                    continue
                self.played += 1
                return frame
        except IndexError:
            self.underruns += 1
            return None

    @property
    def backlog_ms(self) -> int:
        return len(self._q) * FRAME_MS

    @property
    def caught_up(self) -> bool:
        """Down to the target, at a pause: time to switch to the direct path."""
        return len(self._q) <= self.target_frames and self.last_silent

    def clear(self) -> None:
        self._q.clear()


__all__ = ["FRAME_MS", "LEAD_IN_MS", "DelayLine", "frame_dbfs"]
