"""Tone analysis: per-frame spectral features, tone-run tracking, SIT / call-progress / fax / beep.

Per 20 ms frame we analyse a 40 ms Hann-windowed block (previous + current frame):

* ``np.fft.rfft`` of the 320-sample block gives 25 Hz bins. The strongest bin in 300–2200 Hz
  with its two neighbours, divided by the total spectral power, is the *purity* of the dominant
  single tone (≈1 for a clean sine whatever its frequency; voiced speech, whose power is spread
  over many harmonics, stays well below). Parabolic interpolation of the log power around the
  peak estimates the frequency to ~1 Hz, which is what lets us apply the standards' tolerances
  (SIT ±1.5 %, CED 2100 ± 15 Hz, CNG 1100 ± 38 Hz) instead of wide bands.
* A Goertzel bank — all call-progress frequencies at once, as a single matrix product of an
  80 ms Hann block with precomputed cos/sin tables — gives the normalised power of each
  call-progress component, so dual tones 40–50 Hz apart (440+480, 400+450) are separated from
  each other and from a single tone between them.

Tone *runs* (consecutive frames with the same steady tone) are the unit the decoders work on:
SIT segment sequences, CNG bursts, CED, voicemail beeps; call-progress cadences are tracked per
signature by :class:`CadenceTracker`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from sipbridge.media.frames import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE, FloatArray

BLOCK = 2 * FRAME_SAMPLES  # 40 ms analysis block
BIN_HZ = SAMPLE_RATE / BLOCK  # 25 Hz
CP_BLOCK = 4 * FRAME_SAMPLES  # 80 ms block for call-progress components
TONE_BAND_HZ = (300.0, 2200.0)
"""Band searched for the dominant single tone (covers SIT, beeps, CNG and CED)."""

# --- SIT: Telcordia GR-1162 / ANSI T1.401 (North America) and ITU-T E.180 ------------------------
# Segment frequencies (Hz). Segment 3 is always 1776.7 Hz, 380 ms.
SIT_SEG1 = {"L": 913.8, "H": 985.2}
SIT_SEG2 = {"L": 1370.6, "H": 1428.5}
SIT_SEG3 = 1776.7
SIT_SHORT_MS = 274
SIT_LONG_MS = 380
# Code table (Telcordia SR-2275 / GR-1162; also the AT&T announcement-system manuals):
#   key = (seg1 freq, seg1 duration, seg2 freq), value = (code, seg2 duration, meaning).
# Segment 1's frequency and duration plus segment 2's frequency already make the eight keys
# unique, so a code is decided ~100 ms into segment 2 (seg2's duration only confirms it).
SIT_CODES: dict[tuple[str, str, str], tuple[str, str, str]] = {
    ("L", "S", "L"): ("IC", "S", "intercept: vacant number / number changed"),
    ("H", "L", "L"): ("VC", "S", "vacant code"),
    ("L", "S", "H"): ("RO", "L", "reorder, intra-LATA (equipment irregularity)"),
    ("H", "S", "L"): ("RO'", "L", "reorder, inter-LATA"),
    ("H", "L", "H"): ("NC", "L", "no circuit, intra-LATA (all trunks busy)"),
    ("L", "L", "L"): ("NC'", "L", "no circuit, inter-LATA"),
    ("H", "S", "H"): ("IO", "S", "ineffective other"),
    ("L", "L", "H"): ("FU", "S", "reserved for future use"),
}
SIT_BELL_TOL = 0.015  # ±1.5 % (generation tolerance is ±0.2 %; allow for line/codec drift)
# ITU-T E.180 SIT: 950/1400/1800 Hz ± 50 Hz, each segment 330 ± 70 ms, gaps ≤ 30 ms.
SIT_ITU = (950.0, 1400.0, 1800.0)
SIT_ITU_TOL_HZ = 50.0

# --- Fax (ITU-T T.30) ----------
CNG_HZ, CNG_TOL_HZ = 1100.0, 38.0  # calling tone: 0.5 s on / 3 s off
CED_HZ, CED_TOL_HZ = 2100.0, 15.0  # called-station identification: 2.6–4 s steady

# --- Call-progress signatures (frequencies in Hz) ----------
# Sources: ANSI T1.401 / Bell precise tone plan (US), BT SIN 350 (UK), ETSI EG 201 188 (425 Hz).
CP_SIGNATURES: dict[str, tuple[float, ...]] = {
    "us_ring": (440.0, 480.0),  # US ringback 2 s on / 4 s off
    "us_busy": (480.0, 620.0),  # US busy 0.5/0.5, reorder 0.25/0.25 (0.3/0.2 on some switches)
    "us_dial": (350.0, 440.0),  # US dial tone (recognised so it is not mistaken; no result)
    "uk_ring": (400.0, 450.0),  # UK ringing 0.4 on 0.2 off 0.4 on 2.0 off
    "uk_400": (400.0,),  # UK busy 0.375/0.375, congestion 0.4/0.35/0.225/0.525
    "eu_425": (425.0,),  # CEPT: ring 1/4 (DE, IT…), busy 0.5/0.5, congestion 0.25/0.25
    "eu_440": (440.0,),  # FR and others: ring 1.5/3.5, busy 0.5/0.5
}
CP_REGION = {
    "us_ring": "us", "us_busy": "us", "us_dial": "us",
    "uk_ring": "uk", "uk_400": "uk", "eu_425": "425", "eu_440": "440",
}
CP_FREQS: tuple[float, ...] = tuple(sorted({f for sig in CP_SIGNATURES.values() for f in sig}))

ProgressKind = Literal["ringback", "busy", "reorder"]


def _hann(n: int) -> FloatArray:
    return np.asarray(0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n), dtype=np.float64)


class GoertzelBank:
    """Power at arbitrary frequencies for a block, computed as one matrix product.

    Equivalent to running a Goertzel filter per frequency (same DFT values), but vectorised:
    ``block @ table`` with a ``(n, 2K)`` table of windowed cos/sin rows.
    """

    def __init__(self, freqs: tuple[float, ...] | list[float], n: int = BLOCK,
                 window: FloatArray | None = None, rate: int = SAMPLE_RATE) -> None:
        self.freqs = np.asarray(freqs, dtype=np.float64)
        w = np.ones(n) if window is None else window
        t = np.arange(n)[:, None] / rate
        ang = 2.0 * np.pi * self.freqs[None, :] * t
        self._table = np.ascontiguousarray(
            np.hstack([np.cos(ang) * w[:, None], -np.sin(ang) * w[:, None]]))
        self._k = len(self.freqs)

    def power(self, block: FloatArray) -> FloatArray:
        """Squared DFT magnitude |X(f)|² of ``block`` at each bank frequency."""
        y = block @ self._table
        re = y[: self._k]
        im = y[self._k:]
        return np.asarray(re * re + im * im, dtype=np.float64)


class ToneAnalyzer:
    """Per-frame spectral features on a 40 ms Hann block (previous frame + current frame).

    After :meth:`analyze`, the attributes ``peak_hz`` (interpolated frequency of the dominant
    tone in :data:`TONE_BAND_HZ`), ``purity`` (share of the block's power in that tone, 0..1),
    ``cp_power`` (normalised power per :data:`CP_FREQS` over the last 80 ms, ≈1 for a clean
    tone at that frequency) hold the frame's features. No allocation-heavy objects per frame.
    """

    def __init__(self) -> None:
        self._win = _hann(BLOCK)
        self._block = np.zeros(BLOCK, dtype=np.float64)
        self._kmin = math.ceil(TONE_BAND_HZ[0] / BIN_HZ)
        self._kmax = math.floor(TONE_BAND_HZ[1] / BIN_HZ)
        # call progress: 80 ms Hann block (12.5 Hz bins) so 440+480 is resolved from a single
        # tone between them (a 460 Hz beep must not read as ringback)
        self._cp_win = _hann(CP_BLOCK)
        self._cp_block = np.zeros(CP_BLOCK, dtype=np.float64)
        self._bank = GoertzelBank(CP_FREQS, CP_BLOCK, self._cp_win)
        self._cp_norm = 2.0 * float(np.dot(self._cp_win, self._cp_win)) / float(
            self._cp_win.sum()) ** 2
        # |X|² of a bin-centred unit-amplitude sine through the window, and the total one-sided
        # power such a sine puts into the spectrum: both used to normalise to "1 = pure tone".
        s = float(self._win.sum())
        self._tone_peak = (s / 2.0) ** 2
        self._tone_total = self._tone_peak * 1.5  # Hann: main bin + two half-amplitude neighbours
        self.peak_hz = 0.0
        self.purity = 0.0
        self.cp_power: FloatArray = np.zeros(len(CP_FREQS))
        self.total = 0.0

    def reset(self) -> None:
        """Forget the previous frame (e.g. after a discontinuity)."""
        self._block[:] = 0.0

    def analyze(self, frame: FloatArray) -> None:
        """Analyse one 160-sample frame (float, [-1, 1)); results in the attributes."""
        blk = self._block
        blk[:FRAME_SAMPLES] = blk[FRAME_SAMPLES:]
        blk[FRAME_SAMPLES:] = frame
        xw = blk * self._win
        spec = np.fft.rfft(xw)
        p = spec.real * spec.real + spec.imag * spec.imag
        total = float(p[1:-1].sum()) + 1e-20
        self.total = total
        band = p[self._kmin : self._kmax + 1]
        i = int(band.argmax())
        k = i + self._kmin
        a, b, c = float(p[k - 1]), float(p[k]), float(p[k + 1])
        self.purity = (a + b + c) / total
        if b > 0.0 and a > 0.0 and c > 0.0:
            la, lb, lc = math.log(a), math.log(b), math.log(c)
            den = la - 2.0 * lb + lc
            delta = 0.5 * (la - lc) / den if den < 0.0 else 0.0
            delta = max(-0.5, min(0.5, delta))
        else:
            delta = 0.0
        self.peak_hz = (k + delta) * BIN_HZ
        cb = self._cp_block
        cb[:-FRAME_SAMPLES] = cb[FRAME_SAMPLES:]
        cb[-FRAME_SAMPLES:] = frame
        cw = cb * self._cp_win
        e = float(np.dot(cw, cw)) + 1e-20
        self.cp_power = self._bank.power(cb) * (self._cp_norm / e)


@dataclass(slots=True)
class ToneRun:
    """A run of consecutive frames dominated by one steady tone."""

    start_ms: int
    end_ms: int
    hz_sum: float
    frames: int
    purity_sum: float

    @property
    def hz(self) -> float:
        """Mean estimated frequency of the run."""
        return self.hz_sum / self.frames

    @property
    def duration_ms(self) -> int:
        """Run length (ms)."""
        return self.end_ms - self.start_ms

    @property
    def purity(self) -> float:
        """Mean purity of the run's frames."""
        return self.purity_sum / self.frames


class ToneRunTracker:
    """Groups tone frames into runs of a steady frequency.

    A frame belongs to the current run when its frequency is within ``max(tol_hz, tol_rel*f)``
    of the run's mean. One missing frame (a codec glitch, a noise burst) is bridged.
    """

    def __init__(self, tol_rel: float = 0.012, tol_hz: float = 8.0,
                 max_gap_frames: int = 1) -> None:
        self.tol_rel = tol_rel
        self.tol_hz = tol_hz
        self.max_gap = max_gap_frames
        self.current: ToneRun | None = None
        self._gap = 0

    def update(self, is_tone: bool, hz: float, purity: float, t_ms: int) -> ToneRun | None:
        """Feed one frame starting at ``t_ms``; returns a run that just ended, if any."""
        cur = self.current
        if is_tone:
            if cur is not None:
                m = cur.hz_sum / cur.frames
                if abs(hz - m) <= max(self.tol_hz, self.tol_rel * m):
                    cur.end_ms = t_ms + FRAME_MS
                    cur.hz_sum += hz
                    cur.frames += 1
                    cur.purity_sum += purity
                    self._gap = 0
                    return None
            self.current = ToneRun(t_ms, t_ms + FRAME_MS, hz, 1, purity)
            self._gap = 0
            return cur
        if cur is None:
            return None
        self._gap += 1
        if self._gap > self.max_gap:
            self.current = None
            self._gap = 0
            return cur
        return None

    def flush(self) -> ToneRun | None:
        """End the current run (end of stream)."""
        cur, self.current = self.current, None
        return cur


def classify_sit_freq(seg: int, hz: float) -> tuple[str | None, bool]:
    """Classify a SIT segment frequency: ``("L"|"H"|None, itu_match)`` for segment 1 or 2.

    Bell/Telcordia low/high are matched within ±1.5 %; the ITU-T E.180 band is 950/1400 ± 50 Hz.
    """
    table = SIT_SEG1 if seg == 1 else SIT_SEG2
    bell = None
    for name, nominal in table.items():
        if abs(hz - nominal) <= SIT_BELL_TOL * nominal:
            bell = name
    itu = abs(hz - SIT_ITU[seg - 1]) <= SIT_ITU_TOL_HZ
    return bell, itu


@dataclass(frozen=True, slots=True)
class SitResult:
    """A decoded SIT: ``code`` is a Telcordia code (IC, VC, RO, RO', NC, NC', IO, FU) or ITU."""

    code: str
    meaning: str
    start_ms: int
    decided_ms: int
    seg1_hz: float
    seg1_ms: int
    seg2_hz: float


class SitDecoder:
    """Decodes SIT from the first two segments (segment 1 complete, segment 2 confirmed).

    Segment 1 must last 200–460 ms (Telcordia 274/380 ms ± 5 %, ITU 330 ± 70 ms, plus frame
    quantisation); segment 2 must start within ``max_gap_ms`` of segment 1's end and hold its
    frequency for ``confirm_ms``.
    """

    def __init__(self, confirm_ms: int = 100, max_gap_ms: int = 60) -> None:
        self.confirm_ms = confirm_ms
        self.max_gap_ms = max_gap_ms
        self._seg1: ToneRun | None = None

    def on_run_end(self, run: ToneRun) -> None:
        """Offer a completed tone run as a candidate segment 1."""
        bell, itu = classify_sit_freq(1, run.hz)
        if (bell or itu) and 200 <= run.duration_ms <= 460:
            self._seg1 = run
        elif self._seg1 is not None and run.start_ms > self._seg1.end_ms:
            self._seg1 = None

    def check(self, current: ToneRun | None) -> SitResult | None:
        """Check the run in progress as segment 2; returns the decoded SIT once confirmed."""
        s1 = self._seg1
        if s1 is None or current is None or current is s1:
            return None
        if current.start_ms - s1.end_ms > self.max_gap_ms:
            self._seg1 = None
            return None
        if current.duration_ms < self.confirm_ms:
            return None
        bell2, itu2 = classify_sit_freq(2, current.hz)
        bell1, _ = classify_sit_freq(1, s1.hz)
        self._seg1 = None
        if bell1 and bell2:
            dur1 = "S" if s1.duration_ms < (SIT_SHORT_MS + SIT_LONG_MS) / 2 else "L"
            code, _, meaning = SIT_CODES[(bell1, dur1, bell2)]
        elif itu2 or bell2:
            code, meaning = "ITU", "ITU-T E.180 special information tone (no code)"
        else:
            return None
        return SitResult(code, meaning, s1.start_ms, current.end_ms, s1.hz, s1.duration_ms,
                         current.hz)


def is_cng(run: ToneRun) -> bool:
    """T.30 CNG burst: 1100 ± 38 Hz lasting 0.5 s (± 15 %, widened for frame quantisation)."""
    return abs(run.hz - CNG_HZ) <= CNG_TOL_HZ and 380 <= run.duration_ms <= 680


def is_ced(run: ToneRun, min_ms: int) -> bool:
    """T.30 CED / V.25 answer tone: 2100 ± 15 Hz held for at least ``min_ms``."""
    return abs(run.hz - CED_HZ) <= CED_TOL_HZ + 5.0 and run.duration_ms >= min_ms


@dataclass(slots=True)
class _CpSeg:
    start_ms: int
    end_ms: int


# Frames (20 ms each) of missing or different signature bridged inside one burst: one or
# two lost packets seen through the 80 ms analysis window spoil up to 5 frames. Real
# off-times are 200 ms or more (Spain's 0.2/0.2 busy is the shortest), so 100 ms is safe.
CP_MAX_GAP_FRAMES = 5


@dataclass(slots=True)
class CadenceTracker:
    """Tracks on/off cadence per call-progress signature and classifies it.

    Cadence rules (on-times; off-times are only used to close a segment):

    * ``us_ring`` / ``uk_ring`` dual tones exist only as ringback: ringback after 300 ms on.
    * ``us_busy`` (480+620): mean on-time of two bursts ≥ 375 ms → busy (0.5 s), else reorder
      (0.25 s, or 0.3/0.2 on some switches).
    * ``uk_400``: any burst < 300 ms → reorder (congestion 0.4/0.35/0.225/0.525); two bursts of
      300–450 ms → busy (0.375/0.375).
    * ``eu_425`` / ``eu_440``: a burst ≥ 800 ms → ringback (1–1.5 s on); two bursts with mean
      375–700 ms → busy; mean 120–375 ms → reorder (congestion). Spain's 0.2/0.2 busy therefore
      reads as reorder — both mean the call failed.
    """

    segs: dict[str, list[_CpSeg]] = field(default_factory=dict)
    current: str | None = None
    cur_start: int = 0
    cur_end: int = 0
    gap: int = 0

    def update(self, sig: str | None, t_ms: int) -> tuple[str, ProgressKind] | None:
        """Feed the frame's best signature (or None); returns (signature, kind) when decided."""
        if sig is not None and sig == self.current:
            self.cur_end = t_ms + FRAME_MS
            self.gap = 0
        elif self.current is not None and self.gap < CP_MAX_GAP_FRAMES:
            # A short dropout or a transient inside a burst (packet loss concealment, a
            # jitter-buffer discontinuity seen by the 80 ms analysis window) does not end
            # the burst; real off-times are 200 ms or more.
            self.gap += 1
        else:
            if self.current is not None:
                self.segs.setdefault(self.current, []).append(_CpSeg(self.cur_start, self.cur_end))
                res = self._classify(self.current, ongoing=False)
                if res is not None:
                    self.current = sig
                    self.cur_start, self.cur_end, self.gap = t_ms, t_ms + FRAME_MS, 0
                    return res
            self.current = sig
            self.cur_start, self.cur_end, self.gap = t_ms, t_ms + FRAME_MS, 0
        if self.current is not None:
            return self._classify(self.current, ongoing=True)
        return None

    def _classify(self, sig: str, ongoing: bool) -> tuple[str, ProgressKind] | None:
        on_now = self.cur_end - self.cur_start
        if sig in ("us_ring", "uk_ring"):
            return (sig, "ringback") if ongoing and on_now >= 300 else None
        if sig in ("eu_425", "eu_440") and ongoing and on_now >= 800:
            return (sig, "ringback")
        if ongoing:
            return None
        done = [s.end_ms - s.start_ms for s in self.segs.get(sig, [])][-2:]
        # drop a leading partial burst (analysis can start mid-burst)
        if len(done) < 2:
            return None
        mean = sum(done) / len(done)
        if sig == "us_busy":
            return (sig, "busy") if mean >= 375 else (sig, "reorder")
        if sig == "uk_400":
            if min(done) < 300:
                return (sig, "reorder")
            if max(done) <= 450:
                return (sig, "busy")
            return None
        if sig in ("eu_425", "eu_440"):
            if 375 <= mean <= 700:
                return (sig, "busy")
            if 120 <= mean < 375:
                return (sig, "reorder")
        return None


def best_cp_signature(cp_power: FloatArray, min_purity: float, max_twist_db: float) -> str | None:
    """Best-matching call-progress signature for a frame, or None.

    A signature matches when its components hold ``min_purity`` of the block's power and, for
    dual tones, the weaker component is within ``max_twist_db`` of the stronger.
    """
    best: str | None = None
    best_p = min_purity
    for name, idx in _CP_INDEX.items():
        if len(idx) == 1:
            p = float(cp_power[idx[0]])
        else:
            a, b = float(cp_power[idx[0]]), float(cp_power[idx[1]])
            lo, hi = (a, b) if a < b else (b, a)
            if hi <= 0.0 or lo < hi * 10.0 ** (-max_twist_db / 10.0):
                continue
            p = a + b
        if p > best_p:
            best, best_p = name, p
    return best


_CP_INDEX: dict[str, tuple[int, ...]] = {
    name: tuple(CP_FREQS.index(f) for f in sig) for name, sig in CP_SIGNATURES.items()
}
