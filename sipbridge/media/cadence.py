"""Call-progress cadences: which signature is sounding, and does its on/off rhythm hold?

Per 20 ms frame the detector gives :class:`CadenceTracker` the best-matching call-progress
signature (:func:`best_cp_signature`, from the Goertzel bank of
:class:`~sipbridge.media.tones.ToneAnalyzer`), whether the frame was speech, and the single
tone's frequency. Bursts are the runs of one signature (short misses bridged).

A busy or reorder decision needs the cadence to hold over whole cycles (**template match**):
at the end of a burst, the last ``bursts`` bursts and the silences between them are compared
frame by frame with each standard pattern of that signature (on/off times from the standards),
allowing for

* edge smear: the 80 ms analysis block blurs each on/off edge by a few frames;
* one dropout: a single run of up to :data:`MAX_DROPOUT_MS` where the pattern says "on" but
  nothing was heard (jitter-buffer gaps, lost packets under load: 100–300 ms are normal);

and refusing

* any tone where the pattern says "off" (beyond the edge smear): a different cadence;
* any speech frame inside the window: voiced speech whose pitch sits near 400/425/440 Hz
  (a sung note, a sustained vowel, a high voice) makes short "tone" runs of 40–140 ms between
  consonants; a real tone cadence has nothing but silence or line noise between its bursts;
* a single-frequency burst whose pitch wanders: a tone generator is crystal-exact (its
  frequency is stable to well under 1 Hz), while a held vowel or sung note drifts and carries
  vibrato/jitter of several Hz. A burst whose frequency spread exceeds
  :data:`MAX_HZ_SPREAD` is not a tone.

Ringback (dual 440+480 / 400+450, or a single 425/440 Hz burst of ≥ 800 ms) is reported while
it sounds (early media only; never a failure).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sipbridge.media.frames import FRAME_MS, FloatArray
from sipbridge.media.tones import CP_FREQS, CP_SIGNATURES, ProgressKind

# Frames (20 ms each) of missing or different signature bridged inside one burst: one or
# two lost packets seen through the 80 ms analysis window spoil up to 5 frames. Real
# off-times are 200 ms or more (Spain's 0.2/0.2 busy is the shortest), so 100 ms is safe.
CP_MAX_GAP_FRAMES = 5
# One dropout per template window: up to 300 ms of "on" heard as nothing. Longer gaps are
# not repaired by any jitter buffer we know of; 300 ms is also the shortest off-time that
# separates bursts of the slowest reorder cadences from busy ones.
MAX_DROPOUT_MS = 320
# Frames of tolerance around each on/off edge of the template (cadences are generated within
# ±10 %, ±25–50 ms), and of shifts tried for the whole template (the 80 ms block delays both
# edges of a burst by 1–3 frames).
EDGE_FRAMES = 2
SHIFT_FRAMES = 3
# Speech frames tolerated in a template window (outside the edges): lost packets inside a
# burst leave one or two click-like frames each; any word of speech is five or more.
MAX_SPEECH_FRAMES = 4
# Frequency spread (standard deviation, Hz) above which a single-frequency burst is not a tone.
# Generated tones measure < 1 Hz even through G.711 and 10 dB SNR noise; held vowels and
# sung notes at 300–450 Hz show 3–15 Hz (jitter, vibrato, intonation).
MAX_HZ_SPREAD = 2.5
# Bursts of one generator repeat at one level and one frequency; voiced syllables differ from
# each other by several dB and a few per cent of pitch. Limits for the bursts of a window
# (level: median of each burst, 10 dB SNR noise and G.711 move it < 1 dB; frequency: a
# generator is exact, 0.6 % allows for estimation error on short bursts).
MAX_BURST_LEVEL_SPREAD_DB = 2.0
MAX_BURST_HZ_SPREAD_REL = 0.006
# Within a burst, a generated tone is flat (level std < 0.5 dB); a sung or spoken vowel
# swells and fades.
MAX_LEVEL_STD_DB = 1.5
# Off-times must be this far below the bursts (a switched-off tone leaves line noise: 10 dB
# below the tone on a 10 dB SNR line).
OFF_DROP_DB = 6.0
# Frequency tolerance of a single-frequency signature (ETSI ES 201 970: ±1.5 % for 425 Hz).
SINGLE_HZ_TOL = 0.02

# Standard on/off patterns (ms, starting with an on-time) per signature and kind.
# US: ANSI T1.401 (busy 0.5/0.5, reorder 0.25/0.25, 0.3/0.2 on some switches); UK: BT SIN 350
# (busy 0.375/0.375, congestion 0.4/0.35/0.225/0.525); CEPT 425 Hz and 440 Hz regions
# (busy 0.5/0.5 or 0.48/0.48, congestion 0.25/0.25 or 0.2/0.2 — Spain's 0.2/0.2 busy reads as
# reorder: both mean the call failed).
PATTERNS: dict[str, list[tuple[ProgressKind, tuple[int, ...]]]] = {
    "us_busy": [("busy", (500, 500)), ("reorder", (250, 250)), ("reorder", (300, 200))],
    "uk_400": [("busy", (375, 375)), ("reorder", (400, 350, 225, 525))],
    "eu_425": [
        ("busy", (500, 500)),
        ("busy", (480, 480)),
        ("reorder", (250, 250)),
        ("reorder", (200, 200)),
    ],
    "eu_440": [("busy", (500, 500)), ("reorder", (250, 250))],
}
RINGBACK_DUAL = ("us_ring", "uk_ring")
RINGBACK_SINGLE = ("eu_425", "eu_440")
HISTORY_FRAMES = 250  # 5 s: three bursts of the slowest busy/reorder cadence and their gaps


def best_cp_signature(
    cp_power: Sequence[float] | FloatArray, min_purity: float, max_twist_db: float
) -> str | None:
    """Best-matching call-progress signature for a frame, or None.

    A signature matches when its components hold ``min_purity`` of the block's power and, for
    dual tones, the weaker component is within ``max_twist_db`` of the stronger.
    """
    # plain floats: indexing a numpy array per component costs more than the whole loop
    cp = cp_power.tolist() if isinstance(cp_power, np.ndarray) else cp_power
    twist = 10.0 ** (-max_twist_db / 10.0)
    best: str | None = None
    best_p = min_purity
    for name, i, j in _CP_PAIRS:
        if j < 0:
            p = cp[i]
        else:
            a, b = cp[i], cp[j]
            lo, hi = (a, b) if a < b else (b, a)
            if hi <= 0.0 or lo < hi * twist:
                continue
            p = a + b
        if p > best_p:
            best, best_p = name, p
    return best


_CP_INDEX: dict[str, tuple[int, ...]] = {
    name: tuple(CP_FREQS.index(f) for f in sig) for name, sig in CP_SIGNATURES.items()
}
# (signature, component index, second component index or -1), in CP_SIGNATURES order
_CP_PAIRS: tuple[tuple[str, int, int], ...] = tuple(
    (name, idx[0], idx[1] if len(idx) > 1 else -1) for name, idx in _CP_INDEX.items()
)


def _template(pattern: tuple[int, ...], end_index: int, bursts: int) -> list[tuple[int, int]]:
    """On-intervals (ms, relative to the end of the aligned burst, negative = earlier) of the
    last ``bursts`` bursts of ``pattern`` when its burst ``end_index`` (0-based among the
    pattern's on-times) has just ended, plus the off-time before the first of them."""
    ons = pattern[0::2]
    offs = pattern[1::2]
    k = len(ons)
    out: list[tuple[int, int]] = []
    t = 0
    i = end_index
    for _ in range(bursts):
        out.append((t - ons[i], t))
        t -= ons[i] + offs[(i - 1) % k]
        i = (i - 1) % k
    return out


def match_cadence(
    on: np.ndarray,
    speech: np.ndarray,
    pattern: tuple[int, ...],
    bursts: int,
    end_frame: int | None = None,
    dropout: bool = True,
    loud: np.ndarray | None = None,
) -> bool:
    """Do the frames of ``on`` (bool per frame, oldest first) up to ``end_frame`` (the first
    frame after a burst ended; default: the last frame) follow ``pattern`` for ``bursts``
    bursts, with at most one dropout and no speech? Tries every burst of the pattern as the one
    that just ended and small shifts of the alignment (edge smear). Frames before the history
    count as silence (analysis may start with the first burst)."""
    end = on.size - 1 if end_frame is None else end_frame
    busy = on if loud is None else on | loud
    for end_index in range(len(pattern) // 2):
        ivals = _template(pattern, end_index, bursts)
        span_frames = -ivals[-1][0] // FRAME_MS + SHIFT_FRAMES + 10
        pad = max(0, span_frames + SHIFT_FRAMES + 1 - end)
        z = np.zeros(pad, dtype=bool)
        o, sp, b = (
            (np.concatenate([z, a]) for a in (on, speech, busy)) if pad else (on, speech, busy)
        )
        for shift in range(-SHIFT_FRAMES, SHIFT_FRAMES + 1):
            if _fits(o, sp, b, ivals, end + pad + shift, span_frames, dropout):
                return True
    return False


def _fits(
    on: np.ndarray,
    speech: np.ndarray,
    busy: np.ndarray,
    ivals: list[tuple[int, int]],
    end_frame: int,
    span_frames: int,
    dropout: bool,
) -> bool:
    n = on.size
    first = max(0, end_frame - span_frames)
    last = min(n, end_frame + 1)
    want = np.zeros(last - first, dtype=np.int8)  # 1 on, 0 off, -1 don't care (edge)
    seg = on[first:last]
    for a_ms, b_ms in ivals:
        a = end_frame + a_ms // FRAME_MS - first
        b = end_frame + b_ms // FRAME_MS - first
        want[max(0, a) : max(0, b)] = 1
        # every burst must have been heard: a dropout shortens a burst, never removes it
        if np.count_nonzero(seg[max(0, a) : max(0, b)]) < 2:
            return False
    edges = np.flatnonzero(np.diff(want.astype(np.int16)) != 0) + 1
    for e in edges:
        want[max(0, e - EDGE_FRAMES) : e + EDGE_FRAMES] = -1
    # speech frames at the edges are the tone's own transients (a partly filled block), and a
    # damaged frame (a lost packet) looks like a click: a word is 100 ms of speech or more
    if np.count_nonzero(speech[first:last] & (want != -1)) > MAX_SPEECH_FRAMES:
        return False
    if np.count_nonzero(busy[first:last] & (want == 0)) > 1:
        return False  # tone (or another sound as loud) where the pattern is silent
    if np.count_nonzero(busy[first:last] & ~seg & (want == 1)) > 1:
        return False  # another sound inside a burst: a dropout is silence
    missing = ~seg & (want == 1)
    if not missing.any():
        return True
    runs = np.flatnonzero(np.diff(np.concatenate([[0], missing.astype(np.int8), [0]])))
    lengths = runs[1::2] - runs[0::2]
    big = lengths[lengths > 1]
    if not dropout:
        return big.size == 0
    return big.size <= 1 and int(big.sum()) * FRAME_MS <= MAX_DROPOUT_MS


@dataclass(frozen=True, slots=True)
class _Burst:
    end_ms: int
    hz: float | None
    level_db: float


@dataclass(slots=True)
class CadenceTracker:
    """Tracks call-progress bursts and classifies their cadence (see the module docstring).

    ``bursts``: how many bursts a busy/reorder decision needs (2 in early media, where nothing
    but network tones is expected; 3 after answer, where speech and music are common).
    """

    bursts: int = 2
    current: str | None = None
    cur_start: int = 0
    cur_end: int = 0
    gap: int = 0
    _sig: list[str | None] = field(default_factory=list)
    _level: list[float] = field(default_factory=list)
    _speech: list[bool] = field(default_factory=list)
    _bad_until: dict[str, int] = field(default_factory=dict)
    _hz: list[float] = field(default_factory=list)
    _lv: list[float] = field(default_factory=list)
    _bursts: list[_Burst] = field(default_factory=list)
    _speech_in_burst: bool = False

    def reset(self) -> None:
        """Forget all bursts (e.g. after a discontinuity)."""
        self.current = None
        self.gap = 0
        self._sig.clear()
        self._speech.clear()
        self._level.clear()
        self._bad_until.clear()
        self._hz.clear()
        self._lv.clear()
        self._bursts.clear()

    def update(
        self,
        sig: str | None,
        t_ms: int,
        speech: bool = False,
        hz: float | None = None,
        level_db: float | None = None,
    ) -> tuple[str, ProgressKind] | None:
        """Feed one frame: its best signature (or None), whether it was speech, the single
        tone's frequency and the frame's level; returns (signature, kind) when a cadence is
        recognised."""
        self._sig.append(sig)
        self._speech.append(speech)
        self._level.append(float("nan") if level_db is None else level_db)
        if len(self._sig) > HISTORY_FRAMES:
            del self._sig[0]
            del self._speech[0]
            del self._level[0]
        if sig is None and self.current is None:
            return None  # nothing sounding (a burst's state is set afresh when one starts)
        if sig is not None and sig == self.current:
            self.cur_end = t_ms + FRAME_MS
            for i in range(2, min(self.gap + 2, len(self._sig) + 1)):
                self._sig[-i] = sig  # the bridged misses were part of the burst
            self.gap = 0
            if hz is not None:
                self._hz.append(hz)
            if level_db is not None:
                self._lv.append(level_db)
            self._speech_in_burst = self._speech_in_burst or speech
        elif self.current is not None and self.gap < CP_MAX_GAP_FRAMES:
            # A short dropout or a transient inside a burst (packet loss concealment, a
            # jitter-buffer discontinuity seen by the 80 ms analysis window) does not end
            # the burst; real off-times are 200 ms or more.
            self.gap += 1
            self._speech_in_burst = self._speech_in_burst or speech
        else:
            res = None
            if self.current is not None:
                self._check_burst(self.current, t_ms)
                res = self._classify(self.current, ongoing=False, t_ms=t_ms)
            self.current = sig
            self.cur_start, self.cur_end, self.gap = t_ms, t_ms + FRAME_MS, 0
            self._hz = [hz] if (sig is not None and hz is not None) else []
            self._lv = [level_db] if (sig is not None and level_db is not None) else []
            self._speech_in_burst = speech
            if res is not None:
                return res
        if self.current is not None:
            return self._classify(self.current, ongoing=True, t_ms=t_ms)
        return None

    def _steady(self, sig: str) -> bool:
        """Single-frequency bursts must hold the signature's frequency, without wandering."""
        nominal = CP_SIGNATURES[sig]
        if len(nominal) != 1:
            return True
        hz = self._hz[2:-2] if len(self._hz) > 6 else self._hz
        if len(hz) < 3:
            return True
        a = np.asarray(hz)
        return (
            abs(float(np.median(a)) - nominal[0]) <= SINGLE_HZ_TOL * nominal[0]
            and float(a.std()) <= MAX_HZ_SPREAD
        )

    def _check_burst(self, sig: str, t_ms: int) -> None:
        lv = self._lv[2:-2] if len(self._lv) > 6 else self._lv
        flat = len(lv) < 3 or float(np.std(lv)) <= MAX_LEVEL_STD_DB
        if not self._steady(sig) or not flat:
            # a voice, not a tone: nothing before this point may count for this signature
            self._bad_until[sig] = t_ms
            return
        hz = float(np.median(self._hz)) if self._hz and len(CP_SIGNATURES[sig]) == 1 else None
        self._bursts.append(_Burst(self.cur_end, hz, float(np.median(lv)) if lv else 0.0))
        del self._bursts[:-8]

    def _consistent(self, since_ms: int) -> bool:
        """The bursts since ``since_ms`` share one level and one frequency (one generator)."""
        bs = [b for b in self._bursts if b.end_ms > since_ms]
        if len(bs) < 2:
            return True
        lv = [b.level_db for b in bs]
        if max(lv) - min(lv) > MAX_BURST_LEVEL_SPREAD_DB:
            return False
        hz = [b.hz for b in bs if b.hz is not None]
        return not hz or max(hz) - min(hz) <= MAX_BURST_HZ_SPREAD_REL * max(hz)

    def _classify(self, sig: str, ongoing: bool, t_ms: int) -> tuple[str, ProgressKind] | None:
        on_now = self.cur_end - self.cur_start
        if sig in RINGBACK_DUAL:
            return (sig, "ringback") if ongoing and on_now >= 300 else None
        if sig in RINGBACK_SINGLE and ongoing:
            if on_now >= 800 and not self._speech_in_burst and self._steady(sig):
                return (sig, "ringback")
            return None
        if ongoing or sig not in PATTERNS:
            return None
        # the burst ended at cur_end; the frames since (bridged misses) are ignored
        n = len(self._sig)
        end_frame = n - 1 - (t_ms - self.cur_end) // FRAME_MS
        bad_frames = (t_ms - self._bad_until.get(sig, -(10**9))) // FRAME_MS
        usable = min(n, max(0, bad_frames))
        if usable < 10:
            return None
        on = np.fromiter((s == sig for s in self._sig[n - usable :]), dtype=bool, count=usable)
        sp = np.fromiter(self._speech[n - usable :], dtype=bool, count=usable)
        end_frame -= n - usable
        if end_frame < 0:
            return None
        # a cadence switches its tone off: off-times are quiet (line noise), not a sound as loud
        # as the bursts that merely left the signature's band (vibrato, a gliding vowel)
        lv = np.asarray(self._level[n - usable :])
        ref = float(np.median(lv[on])) if on.any() else float("nan")
        with np.errstate(invalid="ignore"):
            loud = lv > ref - OFF_DROP_DB  # (no level given: never loud)
        # a cadence that fits as heard wins over one that needs a dropout to fit (UK
        # congestion is UK busy with one burst cut short)
        for dropout in (False, True):
            for kind, pattern in PATTERNS[sig]:
                if match_cadence(on, sp, pattern, self.bursts, end_frame, dropout, loud) and (
                    self._consistent(self.cur_end - 2 * sum(pattern) * self.bursts)
                ):
                    return (sig, kind)
        return None
