"""Live people who talk for longer than a short answer (issue #12: real callers reading a
sentence were called machines): the room heard before the first word is back between their
words even when their breath lifts some pauses, and the time they wait for us after their last
word does not count as "talking too long"."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sipbridge.corpus.synth import codec, noise
from sipbridge.media.detect import DetectionConfig, Detector
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


def _talker(
    speech: Any,
    rng: np.random.Generator,
    breath_db: float | None,
    room_dbfs: float = -60.0,
    room: str = "pink",
) -> tuple[Any, int]:
    """Phrases with 450 ms pauses in a room (``room`` noise at ``room_dbfs``), a breath
    before each later phrase; returns (audio, end of speech in ms)."""
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
    x = x + scale_to_dbfs(noise(x.size, room, rng), room_dbfs)
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


@pytest.mark.parametrize(("room_dbfs", "seed"), [(-74.0, 31), (-71.0, 32)])
def test_live_talker_on_a_quiet_line_is_a_person(speech: Any, room_dbfs: float, seed: int) -> None:
    """A quiet room (-76..-68 dBFS, where a line's hiss and comfort noise also lie) through
    µ-law: its level says nothing, its spectrum (falling with frequency, like any acoustic
    noise) says "a microphone"."""
    rng = np.random.default_rng(seed)
    x, end_ms = _talker(speech, rng, breath_db=None, room_dbfs=room_dbfs)
    r = _run(codec(x, "ulaw"))
    assert r.answered_by == "human" and r.hint == "operator", r.reason
    assert 0 < r.decided_at_ms - end_ms <= 1200, (r.decided_at_ms, end_ms)


@pytest.mark.parametrize("room_dbfs", [-74.0, -71.0])
def test_the_same_talk_over_a_flat_quiet_floor_stays_machine(speech: Any, room_dbfs: float) -> None:
    """The safe side: the same words over a flat floor at that level (a line's hiss, comfort
    noise generated without a spectrum: a clean prompt on such a line is the same signal)."""
    rng = np.random.default_rng(33)
    x, _ = _talker(speech, rng, breath_db=None, room_dbfs=room_dbfs, room="white")
    r = _run(codec(x, "ulaw"))
    assert r.answered_by == "machine", r.reason


def test_no_tilt_rule_with_room_tilt_db_off(speech: Any) -> None:
    rng = np.random.default_rng(31)
    x, _ = _talker(speech, rng, breath_db=None, room_dbfs=-74.0)
    d = Detector(DetectionConfig(room_tilt_db=120.0))
    d.feed(codec(x, "ulaw"))
    assert d.finish().answered_by == "machine"


def test_restless_line_before_a_short_answer_is_not_a_floor_drop(speech: Any) -> None:
    """Breath and handling noise through most of the second before the first word (a caller
    bringing the phone up), the room's quiet floor showing between the bursts and then
    between the words: the floor did not drop under a prompt."""
    rng = np.random.default_rng(34)
    lead = np.zeros(_ms(1000))
    for at in range(0, 1000, 200):  # 170 ms rustles, 30 ms apart
        rustle = noise(_ms(170), "pink", rng)
        lead[_ms(at) : _ms(at) + _ms(170)] += scale_to_dbfs(rustle, rng.uniform(-54.0, -46.0))
    words = scale_to_dbfs(speech("Sam Jones", "en-us", 175), -20)
    x = np.concatenate([lead, words, np.zeros(_ms(2000))])
    x += scale_to_dbfs(noise(x.size, "pink", rng), -72.0)
    r = _run(codec(x, "ulaw"))
    assert r.answered_by == "human", r.reason


def test_steady_line_noise_that_drops_under_a_prompt_is_a_recording(speech: Any) -> None:
    """Comfort noise at -58 dBFS (steady) until a short prompt's talkspurt replaces it: the
    prompt's own quieter bed (-70) from 200 ms before its word to 400 ms after, then the
    comfort noise again. The floor changed under it."""
    rng = np.random.default_rng(35)
    words = scale_to_dbfs(speech("Goodbye", "en-us", 165), -20)
    spurt = np.concatenate([np.zeros(_ms(200)), words, np.zeros(_ms(400))])
    spurt += scale_to_dbfs(noise(spurt.size, "pink", rng), -70.0)
    cn = [scale_to_dbfs(noise(_ms(ms), "white", rng), -58.0) for ms in (800, 2000)]
    d = Detector()
    d.feed(codec(np.concatenate([cn[0], spurt, cn[1]]), "ulaw"))
    assert d.finish().answered_by == "machine"
    first = next(e for e in d.timeline if e.kind == "decision")
    assert "changed under it" in first.detail["reason"], first.detail


# A studio prompt on a noisy line (it reads live) beeping soon after: test_dsp_operator_wait.py
