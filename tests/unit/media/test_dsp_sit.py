"""SIT decoder (sipbridge.media.sit) against dropouts anywhere in the sequence: decided within
700 ms of the SIT's start wherever the second SIT frequency is visible in time, the code
exact unless the dropout hid what tells two codes apart (then a congestion code)."""

from __future__ import annotations

import numpy as np
import pytest

from sipbridge.corpus.detection import SIT_TABLE
from sipbridge.corpus.synth import dropout, sil, tone
from sipbridge.media.detect import Detector
from sipbridge.media.sit import SitDecoder
from sipbridge.media.tones import ToneRun

LEAD_MS = 500
CONGESTION = {"RO", "RO'", "NC", "NC'"}


def sit_signal(code: str) -> np.ndarray:
    f1, d1, f2, d2 = SIT_TABLE[code]
    return np.concatenate(
        [
            sil(LEAD_MS),
            tone((f1,), d1, -20, 2),
            tone((f2,), d2, -20, 2),
            tone((1776.7,), 380, -20, 2),
            sil(1000),
        ]
    )


def second_frequency_visible_ms(code: str, at: float, drop: float) -> float:
    """When the second SIT frequency first shows for 60 ms or more (the 40 ms analysis
    block straddling an edge needs that), given a dropout of ``drop`` ms from ``at`` (ms
    after the start)."""
    _, d1, _, d2 = SIT_TABLE[code]
    bounds = [(0.0, d1), (d1, d1 + d2), (d1 + d2, d1 + d2 + 380.0)]
    pieces = []
    for k, (a, b) in enumerate(bounds):
        for lo, hi in ((a, min(b, at)), (max(a, at + drop), b)):
            if hi - lo >= 60:
                pieces.append((lo, k))
    pieces.sort()
    first_kind = pieces[0][1]
    return next(lo for lo, k in pieces if k != first_kind)


@pytest.mark.parametrize("code", list(SIT_TABLE))
def test_sit_decided_within_700ms_with_a_dropout_anywhere(code: str) -> None:
    """Every 100–300 ms dropout position, 40 ms apart (the bench's sweep)."""
    _, d1, _, d2 = SIT_TABLE[code]
    x0 = sit_signal(code)
    wrong = []
    for drop in (100, 200, 300):
        for at in range(-100, int(d1 + d2 + 380 - 50), 40):
            det = Detector(mode="early", keep_timeline=False)
            det.feed(dropout(x0, LEAD_MS + at, drop))
            r = det.finish()
            assert r.answered_by == "sit", (drop, at, r)
            lat = r.decided_at_ms - LEAD_MS
            visible = second_frequency_visible_ms(code, at, drop)
            # out of reach only when the second frequency shows after ~640 ms: seen, then
            # held (60 ms for segment 2, 40 ms for segment 3)
            assert lat <= (700 if visible < 640 else visible + 120), (drop, at, lat, visible)
            if r.sit_code != code:
                wrong.append((drop, at, r.sit_code))
                assert r.sit_code in CONGESTION, (drop, at, r)  # the best guess's bias
                assert r.reason is not None and "best guess" in r.reason
    assert len(wrong) <= 16, wrong


@pytest.mark.parametrize("code", list(SIT_TABLE))
def test_clean_sit_exact_and_fast(code: str) -> None:
    for lead in (500, 507, 513):
        det = Detector(mode="early", keep_timeline=False)
        det.feed(np.concatenate([sil(lead - LEAD_MS), sit_signal(code)]))
        r = det.finish()
        assert r.answered_by == "sit" and r.sit_code == code, r
        assert r.decided_at_ms - lead <= 640, r
        assert r.reason is not None and "best guess" not in r.reason


@pytest.mark.parametrize(
    ("code", "at", "drop", "why"),
    [
        # segment 2 hidden entirely: segment 3 starting 548 ms after segment 1 says both
        # were short (NC' and FU, with the same segment 1, would start it at 760 / 654 ms)
        ("IC", 260, 300, "segment 2 inferred"),
        ("IO", 260, 300, "segment 2 inferred"),
        # segment 1's first 100 ms lost: segment 2 outlasting the short reading (IO) says
        # segment 1 was long, decided before segment 3 (the old rule waited to 740 ms)
        ("NC", -100, 200, "segment 2 outlasts"),
        ("NC'", -100, 200, "segment 2 outlasts"),
    ],
)
def test_hidden_part_inferred_from_the_segments_around_it(
    code: str, at: int, drop: int, why: str
) -> None:
    det = Detector(mode="early", keep_timeline=False)
    det.feed(dropout(sit_signal(code), LEAD_MS + at, drop))
    r = det.finish()
    assert r.answered_by == "sit" and r.sit_code == code, (why, r)
    assert r.decided_at_ms - LEAD_MS <= 700, (why, r)
    assert r.reason is not None and "best guess" not in r.reason, (why, r)


def run(start: int, end: int, hz: float) -> ToneRun:
    return ToneRun(start, end, hz * (end - start) / 20, (end - start) // 20, 0.99)


def test_one_sit_frequency_alone_is_never_a_sit() -> None:
    """A 1000 Hz beep (within 1.5 % of segment 1's 985.2 Hz), then silence."""
    dec = SitDecoder(confirm_ms=60)
    dec.on_run_end(run(0, 400, 985.2))
    assert all(dec.check(None, t) is None for t in range(400, 2000, 20))


def test_two_sit_frequencies_that_fit_no_code_are_not_a_sit() -> None:
    """Segment 1's and 2's frequencies, but 120 ms each with 200 ms between (no code has
    that shape with one dropout), then nothing: no decision."""
    dec = SitDecoder(confirm_ms=60)
    dec.on_run_end(run(0, 120, 913.8))
    res = [dec.check(run(320, t, 1370.6), t) for t in range(340, 460, 20)]
    dec.on_run_end(run(320, 440, 1370.6))
    res += [dec.check(None, t) for t in range(460, 1500, 20)]
    assert res == [None] * len(res)
