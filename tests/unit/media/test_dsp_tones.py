"""Tone bank correctness, frequency estimation, SIT decoding, cadences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.media.cadence import CadenceTracker
from sipbridge.media.detect import Detector
from sipbridge.media.frames import FRAME_SAMPLES
from sipbridge.media.sit import SIT_CODES, SIT_SEG1, SIT_SEG2, classify_sit_freq
from sipbridge.media.tones import GoertzelBank, ToneAnalyzer, ToneRun

FS = 8000


def sine(f: float, ms: float, dbfs: float = -20.0, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(ms * 8)) / FS
    return 10 ** (dbfs / 20) * np.sin(2 * np.pi * f * t + phase)


def test_goertzel_matches_fft_at_bins() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(320)
    bins = [12, 17, 40, 73]
    bank = GoertzelBank([k * 25.0 for k in bins], n=320)
    spec = np.fft.rfft(x)
    np.testing.assert_allclose(bank.power(x), np.abs(spec[bins]) ** 2, rtol=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.floats(100, 3900))
def test_goertzel_matches_direct_dft(f: float) -> None:
    x = np.random.default_rng(int(f)).standard_normal(320)
    n = np.arange(320)
    direct = abs(np.sum(x * np.exp(-2j * np.pi * f * n / FS))) ** 2
    assert GoertzelBank([f]).power(x)[0] == pytest.approx(direct, rel=1e-9)


def analyze_tone(f: float, level: float, frames: int = 4) -> ToneAnalyzer:
    a = ToneAnalyzer()
    x = sine(f, frames * 20, level, phase=0.7)
    for i in range(frames):
        a.analyze(x[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES])
    return a


@settings(max_examples=80, deadline=None)
@given(st.floats(320, 2180), st.floats(-45, -3))
def test_tone_frequency_and_purity_level_independent(f: float, level: float) -> None:
    a = analyze_tone(f, level)
    assert abs(a.peak_hz - f) <= 2.0
    assert a.purity > 0.97


def test_noise_has_low_purity() -> None:
    a = ToneAnalyzer()
    x = np.random.default_rng(3).standard_normal(160 * 50) * 0.05
    pur = []
    for i in range(50):
        a.analyze(x[i * 160 : (i + 1) * 160])
        pur.append(a.purity)
    assert max(pur[1:]) < 0.3


def test_sit_frequency_tolerances() -> None:
    assert classify_sit_freq(1, 913.8 * 1.014) == ("L", True)
    assert classify_sit_freq(1, 985.2 * 0.986) == ("H", True)
    assert classify_sit_freq(1, 950.0) == (None, True)
    assert classify_sit_freq(1, 1100.0) == (None, False)
    assert classify_sit_freq(2, 1370.6) == ("L", True)
    assert classify_sit_freq(2, 1428.5 * 1.014) == ("H", True)
    assert classify_sit_freq(2, 1500.0) == (None, False)


def sit_signal(f1: float, d1: float, f2: float, d2: float, level: float = -20.0) -> np.ndarray:
    return np.concatenate(
        [
            np.zeros(2400),
            sine(f1, d1, level),
            sine(f2, d2, level),
            sine(1776.7, 380, level),
            np.zeros(4000),
        ]
    )


def run_early(x: np.ndarray) -> Detector:
    det = Detector(mode="early")
    det.feed(x)
    det.finish()
    return det


@pytest.mark.parametrize("key", list(SIT_CODES))
@pytest.mark.parametrize("offset", [-0.012, 0.0, 0.012])
def test_sit_codes_decoded(key: tuple[str, str, str], offset: float) -> None:
    code, d2, _ = SIT_CODES[key]
    f1 = SIT_SEG1[key[0]] * (1 + offset)
    f2 = SIT_SEG2[key[2]] * (1 + offset)
    dur = {"S": 274, "L": 380}
    det = run_early(sit_signal(f1, dur[key[1]], f2, dur[d2]))
    r = det.result()
    assert r is not None and r.answered_by == "sit" and r.sit_code == code
    assert r.decided_at_ms - 300 <= 700  # SIT starts at 300 ms


@pytest.mark.parametrize("level", [-10.0, -25.0, -40.0])
def test_itu_sit_any_level(level: float) -> None:
    x = np.concatenate(
        [
            np.zeros(800),
            sine(950, 330, level),
            np.zeros(160),
            sine(1400, 330, level),
            np.zeros(160),
            sine(1800, 330, level),
            np.zeros(4000),
        ]
    )
    r = run_early(x).result()
    assert r is not None and r.sit_code == "ITU"


def test_single_tone_is_not_sit() -> None:
    r = run_early(np.concatenate([np.zeros(800), sine(913.8, 1000), np.zeros(8000)])).result()
    assert r is None or r.answered_by != "sit"


def test_sit_with_wrong_segment_two_is_not_sit() -> None:
    x = np.concatenate([np.zeros(800), sine(913.8, 274), sine(1600, 380), np.zeros(4000)])
    r = run_early(x).result()
    assert r is None or r.answered_by != "sit"


def test_tone_run_properties() -> None:
    r = ToneRun(100, 400, 3000.0, 3, 2.7)
    assert r.hz == 1000.0 and r.duration_ms == 300 and r.purity == pytest.approx(0.9)


def feed_cadence(sig: str, pattern: list[int], total: int = 6000) -> list[tuple[str, str]]:
    c = CadenceTracker()
    out: list[tuple[str, str]] = []
    t = 0
    i = 0
    while t < total:
        on = i % 2 == 0
        for _ in range(pattern[i % len(pattern)] // 20):
            r = c.update(sig if on else None, t)
            if r:
                out.append(r)
            t += 20
        i += 1
    return out


@pytest.mark.parametrize(
    "sig,pattern,kind",
    [
        ("us_busy", [500, 500], "busy"),
        ("us_busy", [240, 260], "reorder"),
        ("uk_400", [380, 380], "busy"),
        ("uk_400", [400, 340, 220, 520], "reorder"),
        ("eu_425", [1000, 4000], "ringback"),
        ("eu_425", [500, 500], "busy"),
        ("eu_425", [240, 240], "reorder"),
        ("us_ring", [2000, 4000], "ringback"),
    ],
)
def test_cadences(sig: str, pattern: list[int], kind: str) -> None:
    res = feed_cadence(sig, pattern)
    assert res and res[0] == (sig, kind)


@pytest.mark.parametrize("f", [float(f) for f in range(380, 700, 6)])
def test_single_tone_never_reads_as_dual_call_progress(f: float) -> None:
    det = Detector(mode="early")
    det.feed(np.concatenate([np.zeros(800), sine(f, 500, -20)]))
    duals = {"us_ring", "uk_ring", "us_busy", "us_dial"}
    assert not [e for e in det.timeline if e.kind == "cp_on" and e.detail["signature"] in duals]


@pytest.mark.parametrize(
    "ring_hz,ring_db",
    [((425.0,), -13.0), ((440.0, 480.0), -16.0), ((400.0, 450.0), -15.0)],
)
def test_cng_heard_over_ringback_is_fax(ring_hz: tuple[float, ...], ring_db: float) -> None:
    """A calling fax's line: ringback, and the fax's own 1100 Hz CNG burst (0.5 s) over its
    tail, a few dB louder; neither tone alone holds the single-tone purity. Fax, from the first
    burst; never a 'greeting' (issue #12: real fax call read as a 440 ms greeting)."""
    rng = np.random.default_rng(7)
    ring = sum(sine(f, 1000, ring_db) for f in ring_hz)
    x = np.concatenate([np.zeros(800), ring, np.zeros(16000)])
    at = 800 + 500 * 8  # CNG starts 0.5 s into the ringback burst
    x[at : at + 4000] += sine(1100.0, 500, -9.0)
    x += rng.standard_normal(x.size) * 10 ** (-60 / 20)
    d = Detector()
    d.feed(x)
    r = d.finish()
    assert r.answered_by == "fax" and "CNG" in (r.reason or ""), r.reason
    assert r.decided_at_ms <= 1300


def test_two_vowel_harmonics_at_1100_hz_are_not_cng() -> None:
    """A steady sung note whose harmonics sit at 550 and 1100 Hz (not a call-progress
    frequency under the 1100 Hz line): no fax."""
    note = sine(550.0, 500, -14.0) + sine(1100.0, 500, -12.0) + sine(1650.0, 500, -16.0)
    x = np.concatenate([np.zeros(4000), note, np.zeros(16000)])
    d = Detector()
    d.feed(x)
    assert d.finish().answered_by != "fax"
