"""FloorTracker.own_silence (sipbridge.media.liveness): a talkspurt that holds its own
digital silence while the line carries comfort noise around it is a clean prompt sent with
DTX (RFC 3389)."""

from __future__ import annotations

from sipbridge.media.liveness import FloorTracker

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
