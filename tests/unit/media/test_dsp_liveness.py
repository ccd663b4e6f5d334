"""FloorTracker.own_silence (sipbridge.media.liveness): a talkspurt that holds its own
digital silence while the line carries comfort noise around it is a clean prompt sent with
DTX (RFC 3389)."""

from __future__ import annotations

import numpy as np

from sipbridge.corpus.synth import codec, noise
from sipbridge.media.frames import scale_to_dbfs
from sipbridge.media.liveness import FloorTracker, band_tilt_db
from sipbridge.media.tones import ToneAnalyzer

SPEECH = -20.0


def tracker(frames: list[tuple[int, float, bool]], first_ms: int = 1000) -> FloorTracker:
    """20 ms frames (start ms, dBFS, pause?) after 1 s of -70 dBFS line before the first
    word at ``first_ms``."""
    ft = FloorTracker()
    for t in range(0, first_ms, 20):
        ft.update(t, -70.0, True)
    ft.greeting_started(first_ms)
    for t, lv, q in frames:
        ft.update(t, lv, q)
    return ft


def span(start: int, end: int, level: float, pause: bool = True) -> list[tuple[int, float, bool]]:
    return [(t, level, pause) for t in range(start, end, 20)]


WORD = span(1000, 1600, SPEECH, pause=False)


def test_digital_tail_then_comfort_noise_is_a_clean_prompt() -> None:
    ft = tracker(WORD + span(1600, 1700, -100.0, pause=False) + span(1700, 2400, -70.0))
    cn = ft.own_silence(1600)
    assert cn is not None and abs(cn + 70.0) < 1.0


def test_a_gap_inside_the_last_word_is_not() -> None:
    """A lost-packet run inside a live word: the word goes on after it."""
    words = WORD[:20] + span(1400, 1500, -100.0, pause=False) + span(1500, 1600, SPEECH, False)
    assert tracker(words + span(1600, 2400, -70.0)).own_silence(1600) is None


def test_off_with_recorded_line_dbfs_at_minus_120() -> None:
    ft = tracker(WORD + span(1600, 1700, -100.0, pause=False) + span(1700, 2400, -70.0))
    assert ft.own_silence(1600, digital_dbfs=-120.0) is None


def test_room_noise_tail_is_not() -> None:
    """A live phone's DTX hangover carries its room, then comfort noise."""
    ft = tracker(WORD + span(1600, 1760, -62.0) + span(1760, 2400, -70.0))
    assert ft.own_silence(1600) is None


def test_digital_silence_that_stays_is_not_this_rule() -> None:
    """No comfort noise after (the digital-silence rule and its limits apply instead)."""
    ft = tracker(WORD + span(1600, 2400, -100.0))
    assert ft.own_silence(1600) is None


def test_one_silent_frame_is_not_enough() -> None:
    ft = tracker(WORD + span(1600, 1620, -100.0) + span(1620, 2400, -70.0))
    assert ft.own_silence(1600) is None


def test_digital_silence_long_after_the_last_word_is_not_the_prompts() -> None:
    after = span(1600, 2000, -70.0) + span(2000, 2100, -100.0) + span(2100, 2600, -70.0)
    assert tracker(WORD + after).own_silence(1600) is None


def _tilts(kind: str, dbfs: float, seed: int) -> list[float]:
    """The tilt of every 20 ms frame of 1 s of ``kind`` noise at ``dbfs`` through µ-law."""
    x = codec(scale_to_dbfs(noise(8000, kind, np.random.default_rng(seed)), dbfs), "ulaw")
    ta = ToneAnalyzer()
    out = []
    for i in range(0, x.size, 160):
        ta.analyze(x[i : i + 160])
        t = band_tilt_db(ta.power)
        if i >= 320 and t is not None:  # the 40 ms block is full
            out.append(t)
    return out


def test_room_noise_tilts_and_line_hiss_does_not() -> None:
    """Pink (acoustic) noise puts 6 dB more per Hz at 300-1000 Hz than at 2000-3400 Hz (4-5
    dB where µ-law's last codes whiten it); white (a line's hiss, spectrum-less comfort
    noise) 0: the default threshold (3 dB) lies between them down to -76 dBFS."""
    for dbfs in (-76.0, -72.0, -60.0):
        assert np.median(_tilts("pink", dbfs, 1)) > 3.8
        assert abs(float(np.median(_tilts("white", dbfs, 2)))) < 1.0


def test_digital_silence_has_no_tilt() -> None:
    assert band_tilt_db(np.zeros(161)) is None


def _quiet_line(tilt_db: float, level: float = -72.0) -> FloorTracker:
    ft = FloorTracker()
    for t in range(0, 1000, 20):
        ft.update(t, level, True, tilt_db)
    ft.greeting_started(1000)
    for t, lv, q in WORD + span(1600, 2400, level):
        ft.update(t, lv, q)
    return ft


def test_a_quiet_tilted_floor_is_a_room() -> None:
    assert _quiet_line(7.0).verdict() == "live"
    assert _quiet_line(0.5).verdict() == "unknown"  # a flat floor proves nothing
    assert _quiet_line(7.0, level=-80.0).verdict() == "unknown"  # µ-law's last codes


def test_a_floor_drop_is_measured_from_the_line_s_quiet_moments() -> None:
    """A restless line before the first word (breath, handling: -58..-48 dBFS, with quiet
    moments at the room's -70 in one frame of ten) then -71 between the words: no drop.
    Steady noise at -58 then -71: a drop (a clean prompt replacing the line's comfort
    noise)."""
    for restless, want in ((True, "unknown"), (False, "recorded")):
        ft = FloorTracker()
        for i, t in enumerate(range(0, 1000, 20)):
            lv = -70.0 if i % 10 == 0 else -58.0 + (10.0 if i % 3 == 2 else 0.0)
            ft.update(t, lv if restless else -58.0, True)
        ft.greeting_started(1000)
        for t, lv, q in WORD + span(1600, 2400, -71.0):
            ft.update(t, lv, q)
        assert ft.verdict() == want
