"""Live voice or recording? What the line's noise floor and the last word's pitch say.

A live person speaks into an open microphone: the room's noise is on the line from the moment
the call is answered, and it is the same noise in the pauses between their words. A recording
(voicemail greeting, IVR or carrier prompt, screening assistant) is played into the call by a
machine: its own noise bed (the room it was recorded in, or the digital silence of a
text-to-speech prompt) starts and stops with it, so the floor *changes under the speech*:

* a recorded bed louder than the line before it (a greeting recorded on a phone, played from a
  mailbox whose line is digitally silent): the floor rises by 10–40 dB;
* a clean (TTS, studio) prompt on a line that carried comfort noise or line noise before it: the
  floor in its pauses drops.

:class:`FloorTracker` measures the floor before the first word (``pre_db``: the quietest
frames of the 600 ms before it) and in the pauses of the greeting (``gap_db``), and calls the
voice ``recorded`` when the pauses' floor rises ``step_db`` or more above it, or drops as far
below the line's quiet moments (``pre_low_db``: a room lifted by breath and handling before
the first word still has them; a line's steady hiss or comfort noise is all quiet moments),
``live`` when a room's floor stays within ``same_db``, else ``unknown``. A room's floor is
audible (≥ ``live_floor_dbfs``), or quieter but tilted like acoustic noise
(:func:`band_tilt_db` ≥ ``room_tilt_db``: a microphone's room falls with frequency, a line's
own hiss is flat).

Limits (measured on the generated corpus only; see the README): a recording played into a
noisy line whose noise masks its own bed looks live (a PBX auto-attendant behind an analog
line); a live caller on a mobile network with noise suppression and digitally silent
comfort noise gives no evidence either way; so does any greeting on a line that was
digitally silent before it (the floor before it is not known: media that starts with the
speech, silence suppression), which includes every mailbox whose line is digitally silent.

:func:`rises_at_end` tells a question's final pitch rise (screening assistants and operators end
their greeting with a question, voicemail greetings with a statement) from the pitch track of
the last word.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

from sipbridge.media.frames import FRAME_MS, SAMPLE_RATE, FloatArray

Verdict = Literal["live", "recorded", "unknown"]
# Frames at or below this are digital silence (no media, or a codec's idle pattern).
DIGITAL_SILENCE_DBFS = -85.0


@dataclass(frozen=True, slots=True)
class LivenessConfig:
    """Thresholds of :class:`FloorTracker` (dB)."""

    # The floor under the speech differs from the floor before it by this much: a recording.
    # Steady room noise measured over a few hundred ms varies by ±1–2 dB.
    step_db: float = 6.0
    # ... and one of the two floors is audible (a change between digital silence and the
    # -80 dBFS tail of a TTS clip or a codec's idle pattern means nothing).
    audible_dbfs: float = -76.0
    # Same floor within this → consistent with a live microphone.
    same_db: float = 3.0
    # A live microphone's room noise is audible: ≥ -68 dBFS (a quiet room through a handset is
    # -60..-50 dBFS; comfort noise of a digital line -70..-80; digital silence -100).
    live_floor_dbfs: float = -68.0
    # Pause frames needed to measure the floor in the greeting (100 ms): a short prompt has
    # only the 100–300 ms after its last word.
    min_gap_frames: int = 5
    # A quieter floor (down to ``audible_dbfs``) is still a live microphone's room when its
    # spectrum tilts like acoustic noise: 300–1000 Hz this many dB above 2000–3400 Hz (see
    # ``DetectionConfig.room_tilt_db``, which sets it).
    room_tilt_db: float = 3.0


class FloorTracker:
    """Per-frame noise-floor bookkeeping around a greeting (see the module docstring)."""

    def __init__(self, config: LivenessConfig | None = None) -> None:
        self.cfg = config or LivenessConfig()
        self._recent: deque[tuple[int, float, bool]] = deque(maxlen=40)  # 800 ms
        # the spectral tilt (dB) of the quiet frames in ``_recent``, by start
        self._tilts: deque[tuple[int, float]] = deque(maxlen=40)
        self.pre_db: float | None = None
        self.pre_low_db: float | None = None
        self.pre_tilt_db: float | None = None
        self._gaps: list[tuple[int, float]] = []
        self._started = False
        # every frame since the first word (3 s): (start, level, pause?)
        self._since: deque[tuple[int, float, bool]] = deque(maxlen=150)

    @property
    def started(self) -> bool:
        """The first word has started (the floor before it is fixed)."""
        return self._started

    def update(self, t_ms: int, level_db: float, quiet: bool, tilt_db: float | None = None) -> None:
        """One frame: its start, level, whether it is a pause (no speech, no tone), and for a
        pause before the first word its spectral tilt (:func:`band_tilt_db`)."""
        if self._started:
            self._since.append((t_ms, level_db, quiet))
            if quiet and len(self._gaps) < 3000:
                self._gaps.append((t_ms, level_db))
        else:
            self._recent.append((t_ms, level_db, quiet))
            if quiet and tilt_db is not None:
                self._tilts.append((t_ms, tilt_db))

    def greeting_started(self, start_ms: int) -> None:
        """The first word started at ``start_ms``: fix the floor before it."""
        if self._started:
            return
        self._started = True
        # the line before the greeting, not the first 300 ms before its first word, where a
        # recording's own bed (or a live talker's breath) already plays
        # Digital silence is no floor: it is what a receiver plays before the far end's media
        # arrives, or while the far end suppresses silence (DTX) — a live caller's room noise
        # then "starts" with their first packets. Only a line heard carrying something counts.
        cut_ms = start_ms - 15 * FRAME_MS
        before = [lv for t, lv, q in self._recent if q and t < cut_ms and lv > DIGITAL_SILENCE_DBFS]
        heard_before = sum(1 for t, _, _ in self._recent if t < cut_ms)
        if len(before) < 5 and heard_before < 10:  # it started early: take what there is
            # (after 200 ms or more of digital silence the frames just before the first word
            # are a recording's own bed, not the line's floor)
            cut_ms = start_ms - 2 * FRAME_MS
            before = [
                lv for t, lv, q in self._recent if q and t < cut_ms and lv > DIGITAL_SILENCE_DBFS
            ]
        self.pre_db = float(np.percentile(before, 20)) if len(before) >= 5 else None
        # the line's quiet moments: what a floor that drops under the greeting must drop below
        self.pre_low_db = float(np.percentile(before, 5)) if len(before) >= 5 else None
        # the spectral tilt of the same stretch of line
        tilts = [d for t, d in self._tilts if t < cut_ms]
        self.pre_tilt_db = float(np.median(tilts)) if len(tilts) >= 5 else None
        # the frames just before the first word belong to the greeting's floor: a recording's
        # bed starts 0.1–0.5 s before its first word (a live room was there all along)
        self._gaps = [
            (t, lv)
            for t, lv, q in self._recent
            if q and start_ms - 15 * FRAME_MS <= t < start_ms - 2 * FRAME_MS
        ]

    def gap_db(self, until_ms: int | None = None, pct: float = 50.0) -> float | None:
        """Floor in the greeting's pauses up to ``until_ms`` (the last word's end plus a
        little: a recording's bed runs on briefly after its last word, then the line's floor
        is back): the ``pct`` percentile of the pause frames' levels (the median by default);
        None until enough pause frames."""
        g = [lv for t, lv in self._gaps if until_ms is None or t < until_ms]
        if len(g) < self.cfg.min_gap_frames:
            return None
        return float(np.percentile(g, pct))

    def after_db(self, from_ms: int, run: int = 6) -> float | None:
        """The quietest the line got in the pause from ``from_ms`` on: the lowest, over every
        ``run`` consecutive pause frames (120 ms), of their loudest frame. A recording's bed
        may run on 100–500 ms after its last word; a live microphone's room never drops to
        digital silence for 120 ms. None until ``run`` frames."""
        g = [(t, lv) for t, lv in self._gaps[-50:] if t >= from_ms]
        best: float | None = None
        for k in range(len(g) - run + 1):
            if g[k + run - 1][0] - g[k][0] != (run - 1) * FRAME_MS:
                continue  # not consecutive (a speech or tone frame in between)
            top = max(lv for _, lv in g[k : k + run])
            if best is None or top < best:
                best = top
        return best

    def own_silence(
        self, last_word_end: int, digital_dbfs: float = DIGITAL_SILENCE_DBFS, run: int = 2
    ) -> float | None:
        """A clean prompt sent with silence suppression (RFC 3389): its talkspurt ends in
        the prompt's own digital silence (the rest of the sender's 140–200 ms VAD hangover),
        then the line's comfort noise resumes and nothing more is said. Returns that comfort
        noise's level (dBFS: the median of the last 5 pause frames, audible) when ``run``
        (40 ms) or more frames at or below ``digital_dbfs`` start within 100 ms before to
        200 ms after the last word's end and only the line's floor follows them; None
        otherwise.

        A live phone's talkspurt ends in its room's noise (DTX hangover), and a live
        endpoint that sends digital silence has no comfort noise after it. A packet-loss gap
        that swallows the end of a live word looks the same, and is taken for a prompt
        (measured in bench/dsp.py; see the README's limits)."""
        pauses = [lv for _, lv, q in self._since if q][-5:]
        if len(pauses) < 5 or float(np.median(pauses)) <= digital_dbfs + 5.0:
            return None
        cn = float(np.median(pauses))
        frames = list(self._since)
        for i in range(len(frames) - run + 1):
            t = frames[i][0]
            if t > last_word_end + 10 * FRAME_MS:
                break
            if t < last_word_end - 5 * FRAME_MS or (i and frames[i - 1][1] <= digital_dbfs):
                continue
            j = i
            while j < len(frames) and frames[j][1] <= digital_dbfs:
                j += 1
            # the digital stretch, then only the line's floor: nothing of a word after it
            if j - i >= run and all(lv <= cn + 10.0 for _, lv, _ in frames[j:]):
                return cn
        return None

    def speech_db(self) -> float | None:
        """The greeting's loud frames (its vowels): the 90th percentile of the levels of the
        frames that are not pauses in the last 3 s; None before 10 such frames."""
        lv = [lv for _, lv, q in self._since if not q]
        return float(np.percentile(lv, 90)) if len(lv) >= 10 else None

    @property
    def gap_frames(self) -> int:
        """Pause frames measured so far."""
        return len(self._gaps)

    def room_heard(self) -> bool:
        """The floor before the first word is a live microphone's room: audible enough
        (``live_floor_dbfs``), or quieter but tilted like acoustic noise (``room_tilt_db``)
        and still above the level where µ-law's last codes whiten any noise
        (``audible_dbfs``)."""
        pre, cfg = self.pre_db, self.cfg
        if pre is None:
            return False
        if pre >= cfg.live_floor_dbfs:
            return True
        tilt = self.pre_tilt_db
        return pre >= cfg.audible_dbfs and tilt is not None and tilt >= cfg.room_tilt_db

    def verdict(self, until_ms: int | None = None, pct: float = 50.0) -> Verdict:
        """``recorded`` / ``live`` / ``unknown`` from the floors measured so far (the pauses'
        floor taken at the ``pct`` percentile, see :meth:`gap_db`)."""
        pre, gap = self.pre_db, self.gap_db(until_ms, pct)
        if pre is None or gap is None:
            return "unknown"
        # A floor that drops under the greeting drops below the line's quiet moments too: a
        # line's hiss or comfort noise is steady (its frames within ±1–2 dB, so its 5th
        # percentile is within ~1 dB of its 20th), and a clean prompt's pauses replace it. A
        # room before a live talker's first word is lifted by breath, handling and their
        # phone settling in, and its quiet moments are the room's floor, still there between
        # their words.
        low = pre if self.pre_low_db is None else self.pre_low_db
        step = max(gap - pre, low - gap)
        if step >= self.cfg.step_db and max(gap, pre) >= self.cfg.audible_dbfs:
            return "recorded"
        if abs(gap - pre) <= self.cfg.same_db and self.room_heard():
            return "live"
        return "unknown"


# Bands of the floor's spectral tilt (25 Hz bins of a 40 ms block): 300–1000 Hz against
# 2000–3400 Hz, both inside the telephone band, where a handset's filter passes them alike.
_TILT_LOW_BINS = (12, 40)
_TILT_HIGH_BINS = (80, 136)


def band_tilt_db(power: FloatArray) -> float | None:
    """The spectral tilt of a quiet frame: the mean power of its 300–1000 Hz bins over that
    of its 2000–3400 Hz bins, in dB (``power``: the 40 ms block's 161-bin power spectrum);
    None when there is no power to compare (digital silence).

    Acoustic noise picked up by a microphone (a room, traffic, ventilation, the talker's
    breath) falls with frequency — pink noise puts 6 dB more per Hz in the low band than the
    high one (4–5 dB through µ-law at -76..-70 dBFS), rooms more — while the noise a line or
    a network adds by itself (thermal hiss, quantisation, comfort noise with no spectrum of
    its own) is flat (0 ± 0.5 dB). One frame's figure varies by ±2 dB: take the median of
    several."""
    lo = float(np.add.reduce(power[_TILT_LOW_BINS[0] : _TILT_LOW_BINS[1]]))
    hi = float(np.add.reduce(power[_TILT_HIGH_BINS[0] : _TILT_HIGH_BINS[1]]))
    if lo <= 0.0 or hi <= 0.0:
        return None
    n_lo = _TILT_LOW_BINS[1] - _TILT_LOW_BINS[0]
    n_hi = _TILT_HIGH_BINS[1] - _TILT_HIGH_BINS[0]
    return 10.0 * math.log10((lo / n_lo) / (hi / n_hi))


def pitch_track(
    x: FloatArray,
    step: int = 160,
    win: int = 320,
    fmin: float = 70.0,
    fmax: float = 400.0,
    min_corr: float = 0.5,
) -> FloatArray:
    """F0 (Hz) every ``step`` samples by normalised autocorrelation; NaN where unvoiced."""
    lo, hi = int(SAMPLE_RATE / fmax), int(SAMPLE_RATE / fmin)
    out = []
    for i in range(0, max(0, x.size - win - hi), step):
        seg = x[i : i + win + hi]
        a = seg[:win] - seg[:win].mean()
        e0 = float(np.dot(a, a))
        if e0 <= 1e-9:
            out.append(np.nan)
            continue
        best, lag = 0.0, 0
        for k in range(lo, hi):
            b = seg[k : k + win]
            c = float(np.dot(a, b)) / (np.sqrt(e0 * float(np.dot(b, b))) + 1e-12)
            if c > best:
                best, lag = c, k
        out.append(SAMPLE_RATE / lag if best >= min_corr and lag else np.nan)
    return np.asarray(out, dtype=np.float64)


# Shortest run of consecutive voiced pitch frames (20 ms steps) kept as pitch evidence: 60 ms.
_MIN_VOICED_RUN = 3


def rises_at_end(word: FloatArray, min_rise: float = 0.12) -> bool:
    """Does the pitch at the end of ``word`` (the greeting's last stretch of speech, 8 kHz)
    rise? The last 120 ms of voiced frames against the lowest point (3-frame median) of the
    240 ms of voiced frames before them: a question's final rise is 15–60 % above that valley;
    a statement ends at or below it. Octave errors (a frame read at half pitch) are folded."""
    f0 = pitch_track(word)
    # A question's rise is a continuous voiced contour: a voiced frame that stands alone or in
    # a pair among unvoiced ones (the breathy or noisy tail after a falling statement, where
    # the autocorrelation locks onto a harmonic or a sub-octave) is no pitch evidence.
    voiced = ~np.isnan(f0)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], voiced.astype(np.int8), [0]))))
    for a, b in zip(edges[::2], edges[1::2], strict=True):
        if b - a < _MIN_VOICED_RUN:
            voiced[a:b] = False
    v = f0[voiced]
    if v.size < 12:
        return False
    med = float(np.median(v))
    v = np.where(v < 0.6 * med, 2.0 * v, v)
    v = np.where(v > 1.7 * med, 0.5 * v, v)
    tail, prev = v[-6:], v[-18:-6]
    valley = min(float(np.median(prev[i : i + 3])) for i in range(prev.size - 2))
    return bool(np.median(tail) >= (1.0 + min_rise) * valley and tail[-1] >= tail[0])
