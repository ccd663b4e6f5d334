"""The operator wait (issue #12): a live voice that talks for longer is decided within 1 s of
its last word when the line's floor lies far enough under the speech to have shown a
recording's bed; on a line whose noise could hide one the wait stays long enough for a late
beep; a live-looking greeting after which the line drops to digital silence is a recording."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sipbridge.corpus.synth import noise, tone
from sipbridge.media.detect import DetectionConfig, Detector
from sipbridge.media.frames import scale_to_dbfs
from tests.unit.media.test_dsp_live_talkers import PHRASES, _ms, _talker

CFG = DetectionConfig()


def _run(x: np.ndarray) -> Any:
    d = Detector()
    d.feed(x)
    return d.finish()


def _prompt(speech: Any, pause_ms: int = 400) -> tuple[list[np.ndarray], int]:
    """A studio prompt of three phrases at -20 dBFS after 700 ms; (parts, end of speech ms)."""
    parts = [np.zeros(_ms(700))]
    for i, t in enumerate(PHRASES):
        parts += ([np.zeros(_ms(pause_ms))] if i else []) + [
            scale_to_dbfs(speech(t, "en-us", 175), -20)
        ]
    return parts, sum(p.size for p in parts) // 8


def test_live_talker_in_a_quiet_room_is_an_operator_within_a_second(speech: Any) -> None:
    rng = np.random.default_rng(31)
    x, end_ms = _talker(speech, rng, breath_db=None)  # room at -60 dBFS, speech at -20
    r = _run(x)
    assert r.answered_by == "human" and r.hint == "operator", r.reason
    assert f"then {CFG.operator_silence_ms} ms silence" in r.reason, r.reason
    assert CFG.operator_silence_ms - 100 <= r.decided_at_ms - end_ms <= 1000, (r, end_ms)


def test_live_talker_on_a_noisy_line_waits_for_a_late_beep(speech: Any) -> None:
    """A floor about 17 dB under the speech's loud frames would hide a recorded bed: the long
    wait applies (the reason says which)."""
    rng = np.random.default_rng(32)
    x, end_ms = _talker(speech, rng, breath_db=None)
    x = x + scale_to_dbfs(noise(x.size, "pink", rng), -30)
    r = _run(x)
    assert r.answered_by == "human" and r.hint == "operator", r.reason
    assert f"then {CFG.operator_masked_silence_ms} ms silence" in r.reason, r.reason
    assert r.decided_at_ms - end_ms >= CFG.operator_masked_silence_ms - 100, (r, end_ms)


@pytest.mark.parametrize(
    ("floor_db", "beep_after_ms"),
    # 700-820 ms: the beep starts as the 900 ms wait runs out (counted from the VAD's end
    # of the last word, which comes before the label's): it must still win (it once lost
    # to "human" in the frame that found it, and while it was shorter than a beep)
    [
        (-60.0, 500),
        (-56.0, 600),
        (-60.0, 700),
        (-60.0, 760),
        (-60.0, 820),
        (-34.0, 800),
        (-34.0, 1200),
    ],
)
def test_live_looking_prompt_with_its_beep_soon_after_stays_machine(
    speech: Any, floor_db: float, beep_after_ms: int
) -> None:
    """A studio prompt played into a noisy line reads live (floor unchanged under it). Its beep
    wins when it comes within the wait that line gets: 0.5–0.6 s after the last word on a line
    whose floor is far under the speech, up to 1.2 s on one whose noise masks a bed."""
    rng = np.random.default_rng(33)
    parts, end_ms = _prompt(speech)
    parts += [np.zeros(_ms(beep_after_ms)), tone((1000.0,), 400, -20), np.zeros(_ms(2000))]
    x = np.concatenate(parts)
    x = x + scale_to_dbfs(noise(x.size, "white", rng), floor_db)
    r = _run(x)
    assert r.answered_by == "machine", r.reason
    assert r.beep_ms is not None and abs(r.beep_ms - (end_ms + beep_after_ms)) <= 100, r


def test_live_looking_greeting_then_digital_silence_is_a_recording(speech: Any) -> None:
    """A recorded greeting whose bed starts well before its first word on a digitally silent
    line: the floor is the same before and under the words (it reads live), but after them
    the line drops to digital silence, which no live microphone's room does."""
    rng = np.random.default_rng(34)
    parts, end_ms = _prompt(speech)
    x = np.concatenate([np.zeros(_ms(2000)), *parts, np.zeros(_ms(4000))])
    a, b = _ms(2000 + 700 - 600), _ms(2000 + end_ms + 150)
    x[a:b] += scale_to_dbfs(noise(b - a, "pink", rng), -58)  # the greeting's own bed
    d = Detector()
    d.feed(x)
    r = d.finish()
    assert r.answered_by == "machine", r.reason
    first = next(e for e in d.timeline if e.kind == "decision")
    assert "then digital silence" in first.detail["reason"], first
    assert first.t_ms - (2000 + end_ms) <= CFG.operator_silence_ms + 100, first
