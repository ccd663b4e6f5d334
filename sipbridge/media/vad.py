"""Speech activity: webrtcvad + an adaptive energy gate + a hysteresis state machine.

A frame counts as speech when all of these hold:

* webrtcvad says speech (its GMM looks at the spectral shape, so it is level-independent);
* the frame is ``margin_db`` above the noise floor — the minimum frame level over the last
  1.6 s — (rejects steady line noise, which the GMM often accepts, at any level) and above an
  absolute floor (rejects comfort noise / idle codecs);
* the frame is not dominated by a single tone (tones are handled by the tone detectors).

Speech frames then drive a state machine QUIET → STARTING → SPEAKING → STOPPING → QUIET:
a *word* starts once ``min_word_ms`` of speech accumulates (blips are dropped) and ends once
``word_gap_ms`` of non-speech follows it (shorter gaps are inside the word).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import webrtcvad

from sipbridge.media.frames import FRAME_MS, SAMPLE_RATE


class VadState(IntEnum):
    """Hysteresis states of :class:`SpeechTracker`."""

    QUIET = 0
    STARTING = 1
    SPEAKING = 2
    STOPPING = 3


@dataclass(frozen=True, slots=True)
class VadConfig:
    """Parameters of the speech gate and hysteresis (see :class:`SpeechTracker`)."""

    # webrtcvad aggressiveness 0..3. 2 rejects most line noise yet keeps soft speech onsets;
    # 3 starts clipping quiet consonants of distant/soft talkers.
    mode: int = 2
    # Speech must stand this far above the noise floor (a minimum, ~1-2 dB under the noise's
    # mean). 6 dB: steady noise never gets there; lower values let noisy word tails run on and
    # push the human decision past 1 s; higher ones fragment greetings on noisy lines.
    margin_db: float = 6.0
    # Absolute floor: telephone speech is rarely below -50 dBFS; comfort noise sits at -60..-70.
    min_speech_dbfs: float = -50.0
    # A word needs 100 ms of speech (Asterisk AMD's min_word_length): shorter blips are clicks.
    min_word_ms: int = 100
    # Silence that separates words (Asterisk's between_words_silence is 50 ms; 100 ms at 20 ms
    # frames avoids splitting words at stop consonants).
    word_gap_ms: int = 100
    # Noise floor = minimum frame level over the last ``floor_window_ms`` (minimum statistics).
    # Speech always dips to the floor between syllables/words within ~1 s; steady noise never
    # rises 6 dB above its own minimum, so it is never speech however loud it is.
    floor_window_ms: int = 1600


class SpeechTracker:
    """Per-frame speech gate and word segmentation with hysteresis.

    Call :meth:`update` once per 20 ms frame. It returns ``1`` when a word has just been
    confirmed (its start is :attr:`word_start_ms`), ``2`` when a word has just ended (its end is
    :attr:`word_end_ms`), else ``0``.
    """

    WORD_START = 1
    WORD_END = 2

    def __init__(self, config: VadConfig | None = None) -> None:
        self.cfg = config or VadConfig()
        self._vad = webrtcvad.Vad(self.cfg.mode)
        self.state = VadState.QUIET
        self.floor_dbfs: float | None = None
        self.word_start_ms = 0
        self.word_end_ms = 0
        self.last_speech = False
        self._cand_start = 0
        self._cand_end = 0
        self._run = 0
        self._gap = 0
        self._min_word_frames = max(1, self.cfg.min_word_ms // FRAME_MS)
        self._mins: list[float] = []
        self._mins_min = 1000.0  # min(self._mins), kept as they change (every 10 frames)
        self._n_blocks = max(1, self.cfg.floor_window_ms // (10 * FRAME_MS) - 1)
        self._blk_min = 1000.0
        self._blk_n = 0

    def is_speech(self, pcm16: bytes, level_dbfs: float, is_tone: bool) -> bool:
        """The speech gate for one frame (also updates the noise floor)."""
        cfg = self.cfg
        # minimum statistics in blocks of 10 frames: O(1) per frame
        if level_dbfs < self._blk_min:
            self._blk_min = level_dbfs
        self._blk_n += 1
        floor = self._blk_min if self._blk_min < self._mins_min else self._mins_min
        if self._blk_n >= 10:
            self._mins.append(self._blk_min)
            if len(self._mins) > self._n_blocks:
                self._mins.pop(0)
            self._mins_min = min(self._mins)
            self._blk_min = 1000.0
            self._blk_n = 0
        floor = max(floor, -90.0)
        self.floor_dbfs = floor
        speech = (
            not is_tone
            and level_dbfs >= cfg.min_speech_dbfs
            and level_dbfs >= floor + cfg.margin_db
            and self._vad.is_speech(pcm16, SAMPLE_RATE)
        )
        self.last_speech = speech
        return speech

    def update(self, pcm16: bytes, level_dbfs: float, is_tone: bool, t_ms: int) -> int:
        """Process one frame starting at ``t_ms``; returns 0, WORD_START or WORD_END."""
        speech = self.is_speech(pcm16, level_dbfs, is_tone)
        st = self.state
        if st == VadState.QUIET:
            if speech:
                self.state = VadState.STARTING
                self._cand_start = t_ms
                self._run = 1
                self._gap = 0
                if self._run >= self._min_word_frames:
                    self.state = VadState.SPEAKING
                    self.word_start_ms = t_ms
                    return self.WORD_START
            return 0
        if st == VadState.STARTING:
            if speech:
                self._run += 1
                self._gap = 0
                if self._run >= self._min_word_frames:
                    self.state = VadState.SPEAKING
                    self.word_start_ms = self._cand_start
                    return self.WORD_START
            else:
                self._gap += 1
                if self._gap > 1:
                    self.state = VadState.QUIET
            return 0
        if st == VadState.SPEAKING:
            if not speech:
                self.state = VadState.STOPPING
                self._cand_end = t_ms
                if self.cfg.word_gap_ms <= FRAME_MS:
                    self.state = VadState.QUIET
                    self.word_end_ms = t_ms
                    return self.WORD_END
            return 0
        # STOPPING
        if speech:
            self.state = VadState.SPEAKING
            return 0
        if t_ms + FRAME_MS - self._cand_end >= self.cfg.word_gap_ms:
            self.state = VadState.QUIET
            self.word_end_ms = self._cand_end
            return self.WORD_END
        return 0

    @property
    def in_word(self) -> bool:
        """True while a confirmed word is in progress (SPEAKING or STOPPING)."""
        return self.state in (VadState.SPEAKING, VadState.STOPPING)
