"""Looping IVR menus in a worker: the ``Listen "repeat"`` phase of a leg.

Wraps :class:`sipbridge.media.promptlib.RepeatDetector` (what was heard before the first
digits of a script is the menu; is it heard again after them?) with what the IVR walk
needs on top of it:

- one menu per watch: only the first mark counts (a script of several steps sends several
  digit strings, and what the IVR says between them is not the menu);
- re-arming after a repeat (``on_menu_repeat: next_digits``): the new watch starts from the
  ORIGINAL menu (its audio is kept, at most :data:`MAX_MENU_S`, and fed to the new
  detector first), then hears the replay until the next string is marked. A watch that
  only knew the replay's remainder would match the next replay seconds later (it starts
  matching where the remainder began), so the next string would drift later in every
  cycle; from the original menu the repeat is recognised as early as the first one.

Loop thread only; no pjsua2.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from sipbridge.media.promptlib import RepeatDetector, RepeatMatch

FRAME_MS = 20
MAX_MENU_S = 30.0  # audio kept for a re-arm: 30 s of 16-bit 8 kHz frames, 480 kB


class MenuWatch:
    """The repeat watch of one leg's IVR phase."""

    def __init__(self, menu: list[bytes] | None = None) -> None:
        self.detector = RepeatDetector()
        self.marked = False
        # the menu as heard before the first mark (kept for a re-arm)
        self.menu: deque[bytes] = deque(maxlen=int(MAX_MENU_S * 1000 / FRAME_MS))
        for frame in menu or ():
            self.menu.append(frame)
            self.detector.feed(_floats(frame))

    @property
    def done(self) -> RepeatMatch | None:
        return self.detector.done

    def feed(self, frame: bytes) -> RepeatMatch | None:
        if not self.marked:
            self.menu.append(frame)
        return self.detector.feed(_floats(frame))

    def mark(self) -> bool:
        """The first digits of a script went out: what was heard so far is the menu."""
        if self.marked:
            return False
        self.marked = True
        return self.detector.mark()

    def rearmed(self) -> MenuWatch:
        """A new watch for the next digit string, primed with this one's menu."""
        return MenuWatch(list(self.menu))


def _floats(frame: bytes) -> np.ndarray:
    return np.frombuffer(frame, dtype="<i2").astype(np.float64) / 32768.0


__all__ = ["MAX_MENU_S", "MenuWatch"]
