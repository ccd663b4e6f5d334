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
SIT segment sequences (:mod:`~sipbridge.media.sit`), CNG bursts, CED, voicemail beeps;
call-progress cadences are tracked per signature by
:class:`~sipbridge.media.cadence.CadenceTracker`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from sipbridge.media.frames import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE, FloatArray, rfft_into

BLOCK = 2 * FRAME_SAMPLES  # 40 ms analysis block
BIN_HZ = SAMPLE_RATE / BLOCK  # 25 Hz
CP_BLOCK = 4 * FRAME_SAMPLES  # 80 ms block for call-progress components
TONE_BAND_HZ = (300.0, 2200.0)
"""Band searched for the dominant single tone (covers SIT, beeps, CNG and CED)."""

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
    "us_ring": "us",
    "us_busy": "us",
    "us_dial": "us",
    "uk_ring": "uk",
    "uk_400": "uk",
    "eu_425": "425",
    "eu_440": "440",
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

    def __init__(
        self,
        freqs: tuple[float, ...] | list[float],
        n: int = BLOCK,
        window: FloatArray | None = None,
        rate: int = SAMPLE_RATE,
    ) -> None:
        self.freqs = np.asarray(freqs, dtype=np.float64)
        w = np.ones(n) if window is None else window
        t = np.arange(n)[:, None] / rate
        ang = 2.0 * np.pi * self.freqs[None, :] * t
        self._table = np.ascontiguousarray(
            np.hstack([np.cos(ang) * w[:, None], -np.sin(ang) * w[:, None]])
        )
        self._k = len(self.freqs)

    def power(self, block: FloatArray) -> FloatArray:
        """Squared DFT magnitude |X(f)|² of ``block`` at each bank frequency."""
        y = block @ self._table
        re = y[: self._k]
        im = y[self._k :]
        return np.asarray(re * re + im * im, dtype=np.float64)


class ToneAnalyzer:
    """Per-frame spectral features on a 40 ms Hann block (previous frame + current frame).

    After :meth:`analyze`, the attributes ``peak_hz`` (interpolated frequency of the dominant
    tone in :data:`TONE_BAND_HZ`), ``purity`` (share of the block's power in that tone, 0..1),
    ``cp_power`` (normalised power per :data:`CP_FREQS` over the last 80 ms, ≈1 for a clean
    tone at that frequency) hold the frame's features.

    The frames live in one preallocated buffer (the 40 and 80 ms blocks are views of its end:
    one copy per frame, no shifting); ``history_frames`` of them stay readable with
    :meth:`recent` (the detector's last-word audio). Per-frame cost is mostly numpy's call
    overhead on small arrays, so scalars are taken out as Python floats.
    """

    def __init__(self, history_frames: int = 4) -> None:
        self._win = _hann(BLOCK)
        self._keep = max(4, history_frames) * FRAME_SAMPLES
        # wrapped (the kept history copied to the front) every 200 frames
        self._buf = np.zeros(self._keep + 200 * FRAME_SAMPLES, dtype=np.float64)
        self._end = self._keep  # index after the newest sample (zeros before: silence)
        self.frames = 0  # frames pushed
        self._kmin = math.ceil(TONE_BAND_HZ[0] / BIN_HZ)
        self._kmax = math.floor(TONE_BAND_HZ[1] / BIN_HZ)
        # call progress: 80 ms Hann block (12.5 Hz bins) so 440+480 is resolved from a single
        # tone between them (a 460 Hz beep must not read as ringback)
        self._cp_win = _hann(CP_BLOCK)
        self._bank = GoertzelBank(CP_FREQS, CP_BLOCK, self._cp_win)
        self._cp_k = len(CP_FREQS)
        self._cp_norm = (
            2.0 * float(np.dot(self._cp_win, self._cp_win)) / float(self._cp_win.sum()) ** 2
        )
        # |X|² of a bin-centred unit-amplitude sine through the window, and the total one-sided
        # power such a sine puts into the spectrum: both used to normalise to "1 = pure tone".
        s = float(self._win.sum())
        self._tone_peak = (s / 2.0) ** 2
        self._tone_total = self._tone_peak * 1.5  # Hann: main bin + two half-amplitude neighbours
        self.peak_hz = 0.0
        self.purity = 0.0
        self.cp_power: list[float] = [0.0] * len(CP_FREQS)
        self.power: FloatArray = np.zeros(BLOCK // 2 + 1)
        self._spec = np.zeros(BLOCK // 2 + 1, dtype=np.complex128)  # reused every frame
        self.total = 0.0

    def reset(self) -> None:
        """Forget the audio heard so far (e.g. after a discontinuity)."""
        self._buf[:] = 0.0
        self.frames = 0

    def _slot(self) -> int:
        e = self._end
        if e + FRAME_SAMPLES > self._buf.size:
            keep = self._keep
            self._buf[:keep] = self._buf[e - keep : e]
            e = keep
        self._end = e + FRAME_SAMPLES
        self.frames += 1
        return e

    def push(self, frame: FloatArray) -> FloatArray:
        """Store one 160-sample frame (float, [-1, 1)); returns it as a view of the buffer
        (valid for this frame)."""
        e = self._slot()
        x = self._buf[e : e + FRAME_SAMPLES]
        x[:] = frame
        return x

    def push_pcm(self, pcm: bytes) -> FloatArray:
        """:meth:`push` for a frame of PCM16 (320 bytes, little-endian), scaled to [-1, 1)."""
        e = self._slot()
        x = self._buf[e : e + FRAME_SAMPLES]
        np.multiply(np.frombuffer(pcm, dtype="<i2"), 1.0 / 32768.0, out=x)
        return x

    def recent(self, frames: int) -> FloatArray:
        """The last ``frames`` frames pushed (at most ``history_frames``, at most as many as
        were pushed), oldest first: a view, valid until the next push."""
        n = min(frames, self.frames, self._keep // FRAME_SAMPLES) * FRAME_SAMPLES
        return self._buf[self._end - n : self._end]

    def analyze(self, frame: FloatArray, cp: bool = True) -> None:
        """Analyse one 160-sample frame (float, [-1, 1)); results in the attributes.
        ``cp=False``: skip the call-progress bank (``cp_power`` is left as it was) for a frame
        too quiet to be a tone; the 80 ms block is still kept up to date."""
        self.push(frame)
        self.analyze_last(cp)

    def analyze_last(self, cp: bool = True) -> None:
        """:meth:`analyze` for the frame just stored with :meth:`push` / :meth:`push_pcm`."""
        e = self._end
        spec = rfft_into(self._buf[e - BLOCK : e] * self._win, self._spec)
        sq = spec.view(np.float64)
        sq = sq * sq
        p = sq[0::2] + sq[1::2]  # re² + im²
        self.power = p  # for other per-frame features (prompt fingerprints)
        total = float(np.add.reduce(p[1:-1])) + 1e-20
        self.total = total
        k = int(p[self._kmin : self._kmax + 1].argmax()) + self._kmin
        a, b, c = p[k - 1 : k + 2].tolist()
        self.purity = (a + b + c) / total
        if b > 0.0 and a > 0.0 and c > 0.0:
            la, lb, lc = math.log(a), math.log(b), math.log(c)
            den = la - 2.0 * lb + lc
            delta = 0.5 * (la - lc) / den if den < 0.0 else 0.0
            if delta > 0.5:
                delta = 0.5
            elif delta < -0.5:
                delta = -0.5
        else:
            delta = 0.0
        self.peak_hz = (k + delta) * BIN_HZ
        if not cp:
            return
        cb = self._buf[e - CP_BLOCK : e]
        cw = cb * self._cp_win
        scale = self._cp_norm / (float(np.dot(cw, cw)) + 1e-20)
        y = (cb @ self._bank._table).tolist()  # [re..., im...] per CP_FREQS
        k = self._cp_k
        self.cp_power = [(re * re + im * im) * scale for re, im in zip(y[:k], y[k:], strict=True)]


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

    def __init__(
        self, tol_rel: float = 0.012, tol_hz: float = 8.0, max_gap_frames: int = 1
    ) -> None:
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


# FFT bins (±1) of every call-progress component: what a calling fax hears under its own CNG
_CP_BINS = np.unique(
    np.concatenate([np.arange(round(f / BIN_HZ) - 1, round(f / BIN_HZ) + 2) for f in CP_FREQS])
)


def cng_over_progress(ta: ToneAnalyzer, min_share: float = 0.9) -> bool:
    """Is this frame a CNG burst mixed with call-progress tone? A calling fax sends CNG while
    it still hears ringback (the line carries both, the ringback a few dB under), so neither
    tone holds the single-tone purity; but together the 1100 Hz line and the call-progress
    components hold nearly all the power (speech spreads it over harmonics and formants)."""
    if abs(ta.peak_hz - CNG_HZ) > CNG_TOL_HZ:
        return False
    p = ta.power
    k = round(ta.peak_hz / BIN_HZ)
    share = (float(p[k - 1 : k + 2].sum()) + float(p[_CP_BINS].sum())) / ta.total
    return share >= min_share


def is_cng(run: ToneRun) -> bool:
    """T.30 CNG burst: 1100 ± 38 Hz lasting 0.5 s (± 15 %, widened for frame quantisation)."""
    return abs(run.hz - CNG_HZ) <= CNG_TOL_HZ and 380 <= run.duration_ms <= 680


def is_ced(run: ToneRun, min_ms: int) -> bool:
    """T.30 CED / V.25 answer tone: 2100 ± 15 Hz held for at least ``min_ms``."""
    return abs(run.hz - CED_HZ) <= CED_TOL_HZ + 5.0 and run.duration_ms >= min_ms
