"""Cadence classification survives what real RTP does to tones: short dropouts (packet
loss, concealment) and phase discontinuities (jitter-buffer repairs) inside bursts."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.media.detect import Detector
from sipbridge.media.frames import float_to_pcm16

RATE = 8000
FRAME = 160


def cadence(on_ms: int, off_ms: int, total_ms: int, level_dbfs: float) -> np.ndarray:
    n = total_ms * RATE // 1000
    t = np.arange(n) / RATE
    amp = 10 ** (level_dbfs / 20) / 2
    x = amp * (np.sin(2 * np.pi * 480 * t) + np.sin(2 * np.pi * 620 * t))
    period = (on_ms + off_ms) * RATE // 1000
    on = (np.arange(n) % period) < on_ms * RATE // 1000
    return x * on


def damage(x: np.ndarray, on_ms: int, off_ms: int, hits: list[tuple[int, int, bool]]) -> None:
    """Per hit (burst index, frame within the burst, dropout?), damage one 20 ms frame."""
    period = (on_ms + off_ms) * RATE // 1000
    for burst, frame, dropout in hits:
        start = burst * period + frame * FRAME
        if start + FRAME > len(x):
            continue
        if dropout:
            x[start : start + FRAME] = 0.0
        else:  # a phase jump: the frame's audio replaced by a time-shifted copy
            x[start : start + FRAME] = np.roll(x[start : start + 2 * FRAME], 37)[:FRAME]


def classify(x: np.ndarray) -> str | None:
    det = Detector(mode="early", keep_timeline=False)
    pcm = float_to_pcm16(x).tobytes()
    for i in range(0, len(pcm) - 2 * FRAME + 1, 2 * FRAME):
        det.feed(pcm[i : i + 2 * FRAME])
        if det.done:
            break
    res = det.result() or det.finish()
    return res.progress


hit = st.tuples(st.integers(0, 3), st.integers(2, 9), st.booleans())


@settings(max_examples=40, deadline=None)
@given(hits=st.lists(hit, max_size=3, unique_by=lambda h: h[0]), level=st.floats(-35, -12))
def test_busy_with_dropouts_stays_busy(hits: list[tuple[int, int, bool]], level: float) -> None:
    x = cadence(500, 500, 4000, level)
    damage(x, 500, 500, hits)
    assert classify(x) == "busy"


@settings(max_examples=40, deadline=None)
@given(
    hits=st.lists(
        st.tuples(st.integers(0, 6), st.integers(2, 4), st.booleans()),
        max_size=3,
        unique_by=lambda h: h[0],
    ),
    level=st.floats(-35, -12),
)
def test_reorder_with_dropouts_stays_reorder(
    hits: list[tuple[int, int, bool]], level: float
) -> None:
    x = cadence(250, 250, 3000, level)
    damage(x, 250, 250, hits)
    assert classify(x) == "reorder"


def test_two_consecutive_lost_packets_in_a_burst() -> None:
    x = cadence(500, 500, 4000, -20)
    damage(x, 500, 500, [(1, 4, True), (1, 5, True)])
    assert classify(x) == "busy"
