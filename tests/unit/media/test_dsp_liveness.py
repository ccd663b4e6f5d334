"""FloorTracker.own_silence (sipbridge.media.liveness): a talkspurt that ends in its own
digital silence before the line's comfort noise resumes is a clean prompt sent with DTX."""

from __future__ import annotations

from sipbridge.media.liveness import FloorTracker


def tracker(levels: list[tuple[int, float]], first_ms: int = 1000) -> FloorTracker:
    """Frames of 20 ms: (start ms, dBFS) pause frames, the greeting starting at first_ms."""
    ft = FloorTracker()
    for t in range(0, first_ms, 20):
        ft.update(t, -70.0, True)
    ft.greeting_started(first_ms)
    for t, lv in levels:
        ft.update(t, lv, True)
    return ft


def frames(start: int, end: int, level: float) -> list[tuple[int, float]]:
    return [(t, level) for t in range(start, end, 20)]


def test_digital_tail_then_comfort_noise_is_a_clean_prompt() -> None:
    ft = tracker(frames(1600, 1700, -100.0) + frames(1700, 2400, -70.0))
    cn = ft.own_silence(1000, 1600)
    assert cn is not None and abs(cn + 70.0) < 1.0


def test_room_noise_tail_is_not() -> None:
    """A live phone's DTX hangover carries its room, then comfort noise."""
    ft = tracker(frames(1600, 1760, -62.0) + frames(1760, 2400, -70.0))
    assert ft.own_silence(1000, 1600) is None


def test_digital_silence_that_stays_is_not_this_rule() -> None:
    """No comfort noise after (the digital-silence rule and its limits apply instead)."""
    ft = tracker(frames(1600, 2400, -100.0))
    assert ft.own_silence(1000, 1600) is None


def test_one_silent_frame_is_not_enough() -> None:
    ft = tracker(frames(1600, 1620, -100.0) + frames(1620, 2400, -70.0))
    assert ft.own_silence(1000, 1600) is None


def test_digital_silence_long_after_the_last_word_is_not_the_prompts() -> None:
    ft = tracker(frames(1600, 2000, -70.0) + frames(2000, 2100, -100.0) + frames(2100, 2600, -70.0))
    assert ft.own_silence(1000, 1600) is None
