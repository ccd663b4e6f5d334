"""Noise bursts are not words (issue #12: a real speakerphone caller said their name, and a
300 ms burst of switching/breath noise 600 ms later, which the speech gate let through, made
the "greeting" 2.1 s long: called a machine). Every spoken word has a voiced nucleus, periodic
at the pitch; breath, clicks and handling noise are not (:func:`periodicity`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sipbridge.corpus.synth import codec, noise
from sipbridge.media.detect import Detector
from sipbridge.media.frames import SAMPLE_RATE, scale_to_dbfs
from sipbridge.media.tones import ToneAnalyzer
from sipbridge.media.vad import periodicity


def _ms(ms: float) -> int:
    return int(ms * SAMPLE_RATE / 1000)


def _burst(rng: np.random.Generator, ms: float, dbfs: float) -> np.ndarray:
    """A click and its decaying rustle: broadband noise with a sharp onset."""
    n = _ms(ms)
    env = np.exp(-np.arange(n) / _ms(ms / 4))
    return scale_to_dbfs(noise(n, "white", rng) * env, dbfs)


def _frames_periodicity(x: np.ndarray) -> list[float]:
    ta = ToneAnalyzer()
    out = []
    for k in range(0, x.size - 159, 160):
        ta.analyze(x[k : k + 160])
        out.append(periodicity(ta.power))
    return out


def test_periodicity_reads_voice_high_noise_low_silence_zero() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(_ms(400)) / SAMPLE_RATE
    for f0 in (85.0, 120.0, 210.0, 380.0):  # a vowel: harmonics of f0 through the phone band
        harmonics = [np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, int(3400 / f0))]
        vowel = np.sum(harmonics, axis=0)
        assert min(_frames_periodicity(0.1 * vowel)[2:]) >= 0.8, f0
    for kind in ("white", "pink"):
        # through the telephone band (300-3400 Hz), as on every line
        n = noise(_ms(2000), kind, rng)
        spec = np.fft.rfft(n)
        f = np.fft.rfftfreq(n.size, 1 / SAMPLE_RATE)
        spec[(f < 300) | (f > 3400)] = 0
        assert max(_frames_periodicity(0.1 * np.fft.irfft(spec, n.size))) < 0.5, kind
    assert max(_frames_periodicity(np.zeros(_ms(200)))) == 0.0


def _hello_then_burst(
    speech: Any, burst_gap_ms: float, seed: int, line: tuple[str, float] = ("pink", -62.0)
) -> tuple[np.ndarray, int]:
    """A short answer, then a burst ``burst_gap_ms`` after it, on a line carrying ``line``
    (a room's pink noise, or a speakerphone's flat quiet floor)."""
    rng = np.random.default_rng(seed)
    hello = scale_to_dbfs(speech("Yes, this is Sam", "en-us", 170), -18)
    lead = np.zeros(_ms(500))
    end_ms = (lead.size + hello.size) * 1000 // SAMPLE_RATE
    parts = [lead, hello, np.zeros(_ms(burst_gap_ms)), _burst(rng, 320, -28), np.zeros(_ms(3000))]
    x = np.concatenate(parts)
    x += scale_to_dbfs(noise(x.size, line[0], rng), line[1])
    return codec(x, "ulaw"), end_ms


@pytest.mark.parametrize(
    ("gap_ms", "seed", "line"),
    [(500, 1, ("pink", -62.0)), (600, 2, ("pink", -62.0)), (650, 3, ("white", -74.0))],
)
def test_short_answer_then_a_noise_burst_is_a_person(
    speech: Any, gap_ms: float, seed: int, line: tuple[str, float]
) -> None:
    x, end_ms = _hello_then_burst(speech, gap_ms, seed, line)
    d = Detector()
    d.feed(x)
    r = d.finish()
    # the burst reached the word tracker (else this test proves nothing) ...
    ends = [e for e in d.timeline if e.kind == "speech_end"]
    assert any(e.detail.get("unvoiced") for e in ends), d.timeline
    # ... and a greeting counting it would run past max_greeting_ms
    assert end_ms + gap_ms + 320 - 500 > d.cfg.max_greeting_ms
    assert r.answered_by == "human", r.reason
    assert r.greeting_end_ms is not None and abs(r.greeting_end_ms - end_ms) <= 150
    # decided once the burst is over (its 100 ms word gap), within a second of the words
    assert 0 < r.decided_at_ms - end_ms <= 1000 + 150, (r.decided_at_ms, end_ms)


def test_noise_bursts_alone_are_no_greeting() -> None:
    """Handling noise on an answered line with nobody speaking: no greeting, so no "human"
    from a burst's timing (silence, as with nothing at all)."""
    rng = np.random.default_rng(7)
    x = np.zeros(_ms(8000))
    for at in (900, 2500, 4200):
        b = _burst(rng, 320, -26)
        x[_ms(at) : _ms(at) + b.size] += b
    x += scale_to_dbfs(noise(x.size, "pink", rng), -62)
    d = Detector()
    d.feed(codec(x, "ulaw"))
    r = d.finish()
    assert sum(1 for e in d.timeline if e.detail.get("unvoiced")) >= 2, d.timeline
    assert r.answered_by == "silence", r.reason


def test_a_long_greeting_with_a_click_in_it_stays_a_machine(speech: Any) -> None:
    """The safe side: words after the burst are voiced, and the greeting's length counts
    them (a recording with a click in it is still long)."""
    rng = np.random.default_rng(9)
    a = scale_to_dbfs(speech("Hi, you have reached", "en-us", 170), -18)
    b = scale_to_dbfs(speech("the voicemail of Sam Jones", "en-us", 170), -18)
    x = np.concatenate(
        [np.zeros(_ms(400)), a, np.zeros(_ms(150)), _burst(rng, 200, -30), b, np.zeros(_ms(3000))]
    )
    d = Detector()
    d.feed(codec(x + scale_to_dbfs(noise(x.size, "white", rng), -72), "ulaw"))
    assert d.finish().answered_by == "machine"
