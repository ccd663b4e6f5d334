"""Detector API behaviour: chunking, bytes vs arrays, gaps, config, events."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from sipbridge.media.detect import Detection, DetectionConfig, Detector
from sipbridge.media.frames import float_to_pcm16, scale_to_dbfs


def greeting(speech: Callable[..., np.ndarray]) -> np.ndarray:
    """A live "Hello?": the phone's comfort noise (-72 dBFS) on the line around it."""
    g = scale_to_dbfs(speech("Hello?", "en-us", 160), -20)
    x = np.concatenate([np.zeros(4000), g, np.zeros(16000)])
    return x + np.random.default_rng(1).standard_normal(x.size) * 10 ** (-75 / 20)


def test_bytes_frames_and_arrays_agree(speech: Callable[..., np.ndarray]) -> None:
    x = greeting(speech)
    pcm = float_to_pcm16(x)
    a = Detector()
    for i in range(0, pcm.size - 159, 160):
        a.feed(pcm[i : i + 160].tobytes())
    b = Detector()
    for i in range(0, x.size, 777):  # odd chunk sizes
        b.feed(x[i : i + 777])
    ra, rb = a.result(), b.result()
    assert ra is not None and rb is not None
    assert ra == rb and ra.answered_by == "human"
    assert a.done and a.feed(b"\x00" * 320) == []


def test_events_and_provisional_machine(speech: Callable[..., np.ndarray]) -> None:
    g = scale_to_dbfs(
        speech(
            "You have reached the voicemail of Alex Smith. Please leave a message after the tone.",
            "en-gb",
            160,
        ),
        -18,
    )
    t = np.arange(4000) / 8000
    x = np.concatenate(
        [np.zeros(2000), g, np.zeros(3000), 0.1 * np.sin(2 * np.pi * 1000 * t), np.zeros(8000)]
    )
    det = Detector()
    events = det.feed(x)
    kinds = [(e.kind, e.detection.answered_by, e.detection.final) for e in events]
    assert kinds[0] == ("decision", "machine", False)
    assert kinds[-1] == ("update", "machine", True)
    final = events[-1].detection
    assert final.beep_ms is not None and final.greeting_end_ms is not None
    assert final.greeting_end_ms < final.beep_ms
    assert final.decided_at_ms > events[0].detection.decided_at_ms


def test_gap_in_timestamps_is_filled() -> None:
    det = Detector()
    det.feed(b"\x00" * 320, t_ms=0)
    det.feed(b"\x00" * 320, t_ms=1000)
    assert det.now_ms == 1020


def test_config_changes_behaviour() -> None:
    quick = DetectionConfig(initial_silence_ms=1000)
    det = Detector(quick)
    det.feed(np.zeros(8000 * 2))
    r = det.result()
    assert isinstance(r, Detection) and r.answered_by == "silence" and r.decided_at_ms == 1000


def test_early_mode_never_says_silence() -> None:
    det = Detector(mode="early")
    det.feed(np.zeros(8000 * 6))
    assert det.result() is None
    assert det.finish().answered_by == "unknown"


def test_bad_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        Detector(mode="later")  # type: ignore[arg-type]


def test_to_dict_roundtrip() -> None:
    d = Detection(answered_by="sit", decided_at_ms=480, sit_code="IC")
    assert Detection(**d.to_dict()) == d
