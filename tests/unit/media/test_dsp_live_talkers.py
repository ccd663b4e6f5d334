"""Live people who talk for longer than a short answer (issue #12: real callers reading a
sentence were called machines): the room heard before the first word is back between their
words even when their breath lifts some pauses, and the time they wait for us after their last
word does not count as "talking too long"."""

from __future__ import annotations

from typing import Any

import numpy as np

from sipbridge.corpus.synth import noise
from sipbridge.media.detect import Detector
from sipbridge.media.frames import SAMPLE_RATE, scale_to_dbfs

PHRASES = [
    "Thanks for calling me back",
    "I was looking at the invoice",
    "and I have a question",
]


def _ms(ms: float) -> int:
    return int(ms * SAMPLE_RATE / 1000)


def _breath(rng: np.random.Generator, ms: float, dbfs: float) -> np.ndarray:
    """An inhalation: broadband noise swelling and fading (Hann envelope)."""
    n = _ms(ms)
    return scale_to_dbfs(noise(n, "white", rng) * np.hanning(n), dbfs)


def _talker(speech: Any, rng: np.random.Generator, breath_db: float | None) -> tuple[Any, int]:
    """Phrases with 450 ms pauses in a room at -60 dBFS, a breath before each later phrase;
    returns (audio, end of speech in ms)."""
    parts = [np.zeros(_ms(700))]
    for i, text in enumerate(PHRASES):
        if i:
            pause = np.zeros(_ms(450))
            if breath_db is not None:
                pause[_ms(120) : _ms(120) + _ms(300)] += _breath(rng, 300, breath_db)
            parts.append(pause)
        parts.append(scale_to_dbfs(speech(text, "en-us", 175), -20))
    end_ms = sum(p.size for p in parts) * 1000 // SAMPLE_RATE
    parts.append(np.zeros(_ms(4000)))
    x = np.concatenate(parts)
    x = x + scale_to_dbfs(noise(x.size, "pink", rng), -60)
    return x, end_ms


def _run(x: np.ndarray) -> Any:
    d = Detector()
    d.feed(x)
    return d.finish()


def test_live_talker_with_breath_between_phrases_is_a_person(speech: Any) -> None:
    rng = np.random.default_rng(21)
    x, end_ms = _talker(speech, rng, breath_db=-48.0)
    r = _run(x)
    assert r.answered_by == "human" and r.hint == "operator", r.reason
    assert 0 < r.decided_at_ms - end_ms <= 1700, (r.decided_at_ms, end_ms)


def test_live_talker_waiting_after_a_long_sentence_is_not_too_long(speech: Any) -> None:
    """5+ s of talk, then silence: the 6 s limit is on the talk, not on the wait after it."""
    rng = np.random.default_rng(22)
    x, end_ms = _talker(speech, rng, breath_db=None)
    r = _run(x)
    assert 4000 < end_ms - 700 < 6000  # long, within operator_max_greeting_ms
    assert r.answered_by == "human" and r.hint == "operator", r.reason


def test_recorded_bed_in_every_pause_stays_machine(speech: Any) -> None:
    """The safe side: a greeting that brings its own room (every pause lifted, not a fifth of
    them) on a comfort-noise line is a recording."""
    rng = np.random.default_rng(23)
    x, _ = _talker(speech, rng, breath_db=None)
    x = x - scale_to_dbfs(noise(x.size, "pink", np.random.default_rng(23)), -60)  # no room
    start, stop = _ms(500), _ms(700) + (x.size - _ms(4700))
    x[start:stop] += scale_to_dbfs(noise(stop - start, "pink", rng), -50)  # the greeting's bed
    x += scale_to_dbfs(noise(x.size, "white", rng), -72)  # the line's comfort noise
    r = _run(x)
    assert r.answered_by == "machine", r.reason


# A studio prompt on a noisy line (it reads live) beeping soon after: test_dsp_operator_wait.py
