"""The corpus scorer and a person who pauses inside a sentence (issue #12): a human decision
made in a real pause before the transcript's end is right, its latency counted from the
pause's start; one made while they still spoke (or after a mere click of silence) is not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sipbridge.corpus.score import check, speech_end_ms
from sipbridge.corpus.synth import noise, write_wav
from sipbridge.media.frames import scale_to_dbfs
from tests.doubles import detection


def _call(tmp_path: Path, click_at_ms: int | None = None) -> tuple[Path, dict[str, Any]]:
    """500 ms of line, 1 s of 'speech', a 1 s pause, 1 s of speech, 2 s of line (-70 dBFS);
    labelled like a transcript: speech ends at 3500 ms."""
    rng = np.random.default_rng(5)
    x = scale_to_dbfs(noise(6000 * 8, "pink", rng), -70)
    for a in (500, 2500):
        x[a * 8 : (a + 1000) * 8] += scale_to_dbfs(noise(8000, "white", rng), -20)
    if click_at_ms is not None:
        x[click_at_ms * 8 : (click_at_ms + 10) * 8] += 0.3
    p = tmp_path / "c.wav"
    write_wav(p, x)
    lab = {"answered_by": "human", "sit_code": None, "progress": None, "greeting_end_ms": 3500,
           "beep_ms": None, "sit_start_ms": None, "hint": None, "ivr_hint": False}  # fmt: skip
    return p, lab


def test_decision_in_a_real_pause_counts_from_its_start(tmp_path: Path) -> None:
    p, lab = _call(tmp_path, click_at_ms=1800)  # a 10 ms click in the pause is no speech
    det = detection("human", decided_at_ms=2300, greeting_end_ms=1500)
    assert speech_end_ms(p, lab, det) == 1500
    assert check(p, lab, det) == []


def test_decision_while_still_speaking_or_too_soon_is_a_miss(tmp_path: Path) -> None:
    p, lab = _call(tmp_path)
    for at in (1200, 1800):  # mid-word; 300 ms into the pause
        det = detection("human", decided_at_ms=at, greeting_end_ms=1000)
        assert speech_end_ms(p, lab, det) == 3500
        assert any("human decided" in e for e in check(p, lab, det)), at
    # after the labelled end: the label's end, as before
    det = detection("human", decided_at_ms=4300, greeting_end_ms=3500)
    assert speech_end_ms(p, lab, det) == 3500 and check(p, lab, det) == []
