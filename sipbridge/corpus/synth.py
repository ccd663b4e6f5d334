"""Signal building blocks for the generated detection corpora: espeak-ng speech (cached),
tones and cadences from the standards' frequencies, noise, G.711 round trips, WAV output.

A development tool (needs the ``espeak-ng`` program for speech); used by
:mod:`sipbridge.corpus.detection`, :mod:`sipbridge.corpus.hold`, the tests and ``bench/``.
"""

from __future__ import annotations

import os
import subprocess
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from sipbridge.media.analyze import load_audio
from sipbridge.media.frames import (
    SAMPLE_RATE,
    alaw_decode,
    alaw_encode,
    float_to_pcm16,
    scale_to_dbfs,
    ulaw_decode,
    ulaw_encode,
)

FS = SAMPLE_RATE


class Speech:
    """espeak-ng rendering with a cache; clips are float arrays at 8 kHz, trimmed."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.cache: dict[tuple[str, str, int, int], np.ndarray] = {}

    def render_many(self, reqs: list[tuple[str, str, int, int]]) -> None:
        todo = sorted({r for r in reqs if r not in self.cache})

        def one(i_req: tuple[int, tuple[str, str, int, int]]) -> None:
            i, (text, voice, speed, pitch) = i_req
            out = self.tmp / f"s{i}.wav"
            subprocess.run(
                [
                    "espeak-ng",
                    "-v",
                    voice,
                    "-s",
                    str(speed),
                    "-p",
                    str(pitch),
                    "-w",
                    str(out),
                    text,
                ],
                check=True,
                capture_output=True,
            )
            x = load_audio(out)
            self.cache[(text, voice, speed, pitch)] = trim(x)

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
            list(ex.map(one, enumerate(todo)))

    def get(self, text: str, voice: str, speed: int, pitch: int = 50) -> np.ndarray:
        return self.cache[(text, voice, speed, pitch)]


def trim(x: np.ndarray) -> np.ndarray:
    """Trim leading/trailing near-silence (10 ms windows 45 dB below the loudest)."""
    n = x.size // 80
    e = np.array([np.mean(x[i * 80 : (i + 1) * 80] ** 2) for i in range(n)]) + 1e-12
    act = np.nonzero(10 * np.log10(e / e.max()) > -45)[0]
    if act.size == 0:
        return x
    return x[act[0] * 80 : (act[-1] + 1) * 80].copy()


def speech_end(
    x: np.ndarray, rel_db: float = -35.0, until: int | None = None, min_windows: int = 1
) -> int:
    """Ground-truth end of speech in a clip (samples): the last 10 ms window within 35 dB of the
    loudest one. Quieter tails (a fading fricative) are inaudible on a phone line. With
    ``until`` (samples): the last such window ending by then (0 if none). With
    ``min_windows``: only runs of that many such windows count (a 10 ms click is no speech)."""
    n = x.size // 80
    e = np.array([np.mean(x[i * 80 : (i + 1) * 80] ** 2) for i in range(n)]) + 1e-12
    on = (10 * np.log10(e / e.max()) > rel_db).astype(np.int64)
    # the last window of every run of min_windows active windows
    act = np.flatnonzero(np.convolve(on, np.ones(min_windows, np.int64), "valid") == min_windows)
    act = act + min_windows - 1
    if until is not None:
        act = act[(act + 1) * 80 <= until]
        return int((act[-1] + 1) * 80) if act.size else 0
    return int((act[-1] + 1) * 80) if act.size else x.size


def sil(ms: float) -> np.ndarray:
    return np.zeros(round(ms * FS / 1000))


def tone(
    freqs: tuple[float, ...] | list[float],
    ms: float,
    level_dbfs: float,
    ramp_ms: float = 4.0,
    phase: float = 0.0,
) -> np.ndarray:
    """Sum of equal-level sines; ``level_dbfs`` is per component (telephony convention)."""
    n = round(ms * FS / 1000)
    t = np.arange(n) / FS
    a = 10 ** (level_dbfs / 20)
    y = sum(a * np.sin(2 * np.pi * f * t + phase * (i + 1)) for i, f in enumerate(freqs))
    y = np.asarray(y, dtype=np.float64)
    r = min(n // 2, int(ramp_ms * FS / 1000))
    if r > 0:
        w = 0.5 - 0.5 * np.cos(np.pi * np.arange(r) / r)
        y[:r] *= w
        y[-r:] *= w[::-1]
    return y


def cadence(
    freqs: tuple[float, ...], pattern_ms: list[float], total_ms: float, level: float
) -> np.ndarray:
    """Repeat an on/off pattern (on, off, on, off, ...) for ``total_ms``."""
    out: list[np.ndarray] = []
    t = 0.0
    i = 0
    while t < total_ms:
        d = pattern_ms[i % len(pattern_ms)]
        out.append(tone(freqs, d, level) if i % 2 == 0 else sil(d))
        t += d
        i += 1
    return np.concatenate(out)[: int(total_ms * FS / 1000)]


def noise(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    w = rng.standard_normal(n)
    if kind == "pink":
        spec = np.fft.rfft(w)
        f = np.arange(spec.size)
        f[0] = 1
        w = np.fft.irfft(spec / np.sqrt(f), n)
    return np.asarray(w / (np.std(w) + 1e-12), dtype=np.float64)


def codec(x: np.ndarray, kind: str | None) -> np.ndarray:
    pcm = float_to_pcm16(x)
    if kind == "ulaw":
        pcm = ulaw_decode(ulaw_encode(pcm))
    elif kind == "alaw":
        pcm = alaw_decode(alaw_encode(pcm))
    return pcm.astype(np.float64) / 32768.0


def write_wav(path: Path, x: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(FS)
        w.writeframes(float_to_pcm16(x).tobytes())


def ms_of(n_samples: int) -> int:
    return round(n_samples * 1000 / FS)


# Formants (Hz, bandwidth Hz) of a few vowels (adult averages, Peterson & Barney style values).
VOWELS: dict[str, tuple[tuple[float, float], ...]] = {
    "u": ((320.0, 80.0), (870.0, 100.0), (2250.0, 150.0)),
    "o": ((480.0, 80.0), (900.0, 100.0), (2500.0, 150.0)),
    "a": ((730.0, 90.0), (1100.0, 110.0), (2450.0, 160.0)),
    "i": ((300.0, 70.0), (2300.0, 120.0), (3000.0, 180.0)),
    "e": ((530.0, 80.0), (1850.0, 120.0), (2500.0, 160.0)),
}


def voiced(
    f0: float,
    ms: float,
    level_dbfs: float,
    rng: np.random.Generator,
    *,
    vowel: str = "u",
    vibrato_hz: float = 0.0,
    vibrato_rel: float = 0.0,
    jitter_rel: float = 0.004,
    drift_rel: float = 0.0,
    ramp_ms: float = 30.0,
) -> np.ndarray:
    """A voiced sound (held vowel, hum or sung note) by additive synthesis.

    Harmonics of a pitch contour ``f0 * (1 + drift + vibrato + jitter)`` (jitter: random
    cycle-to-cycle pitch perturbation, smoothed over ~10 ms; natural voices 0.2–1 %), each
    weighted by a -12 dB/octave glottal source and the vowel's formant resonances. At a pitch
    of 300–450 Hz a close vowel (u, i) puts most of its power in the fundamental: the
    talk-off case of tone detectors.
    """
    n = round(ms * FS / 1000)
    t = np.arange(n) / FS
    jit = rng.standard_normal(n // 80 + 2)
    jit = np.interp(np.arange(n) / 80.0, np.arange(jit.size), jit) * jitter_rel
    contour = f0 * (
        1.0
        + drift_rel * t / max(t[-1], 1e-3)
        + jit
        + vibrato_rel * np.sin(2 * np.pi * vibrato_hz * t + rng.uniform(0, 6.3))
    )
    phase = 2 * np.pi * np.cumsum(contour) / FS
    y = np.zeros(n)
    for h in range(1, int(3600 // f0) + 1):
        fh = h * f0
        gain = h**-2.0  # -12 dB/octave source
        for fc, bw in VOWELS[vowel]:
            gain *= 1.0 / np.sqrt(1.0 + ((fh - fc) / (bw / 2)) ** 2) + 0.05
        y += gain * np.sin(h * phase)
    r = min(n // 2, int(ramp_ms * FS / 1000))
    if r > 0:
        w = 0.5 - 0.5 * np.cos(np.pi * np.arange(r) / r)
        y[:r] *= w
        y[-r:] *= w[::-1]
    return scale_to_dbfs(y, level_dbfs)


def dropout(x: np.ndarray, start_ms: float, ms: float) -> np.ndarray:
    """A copy of ``x`` with ``ms`` of audio from ``start_ms`` replaced by silence (lost
    packets / a jitter-buffer gap)."""
    y = x.copy()
    a = round(start_ms * FS / 1000)
    y[a : a + round(ms * FS / 1000)] = 0.0
    return y


def plc_dropout(x: np.ndarray, start_ms: float, ms: float) -> np.ndarray:
    """A copy of ``x`` with ``ms`` of audio from ``start_ms`` lost and concealed the way
    ITU-T G.711 Appendix I does (the jitter buffer's packet-loss concealment): the last
    pitch period (5–15 ms, the autocorrelation's best lag) repeated, at full level for
    10 ms, then 20 % weaker every 10 ms, silent after 60 ms."""
    y = x.copy()
    a = round(start_ms * FS / 1000)
    n = min(round(ms * FS / 1000), y.size - a)
    lo, hi = 5 * FS // 1000, 15 * FS // 1000
    h = x[max(0, a - 2 * hi) : a]
    if a < 2 * hi or n <= 0:
        return dropout(x, start_ms, ms)
    p = max(range(lo, hi + 1), key=lambda q: float(np.dot(h[hi:], h[hi - q : 2 * hi - q])))
    fade = np.clip(1.2 - np.arange(n) / (50 * FS / 1000), 0.0, 1.0)
    y[a : a + n] = np.resize(x[a - p : a], n) * fade
    return y
