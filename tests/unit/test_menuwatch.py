"""The looping-menu watch of a worker's IVR phase (sipbridge.sip.menuwatch): one menu per
watch, and a re-armed watch recognises the next replay as early as the first one."""

from __future__ import annotations

import numpy as np

from sipbridge.sip.menuwatch import MenuWatch


def _voice(seconds: float, seed: int) -> np.ndarray:
    """A speech-like menu: a gliding harmonic voice in syllables, 8 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(8000 * seconds)) / 8000
    f0 = 140 * (1 + 0.2 * np.sin(2 * np.pi * 0.7 * t)) + 30 * np.sin(2 * np.pi * 2.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 8000
    voice = sum(np.sin(k * phase) * rng.uniform(0.3, 1) / k for k in range(1, 14))
    syll = np.clip(np.sin(2 * np.pi * 3.7 * t), 0, None) * (1 + 0.5 * np.sin(2 * np.pi * 0.9 * t))
    return np.asarray(0.15 * voice * syll + 0.002 * rng.standard_normal(t.size))


def _frames(x: np.ndarray) -> list[bytes]:
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    return [pcm[i : i + 160].tobytes() for i in range(0, pcm.size - 159, 160)]


def _until_hit(w: MenuWatch, frames: list[bytes]) -> int | None:
    """Frames fed until the watch recognised the menu (None: never)."""
    for n, f in enumerate(frames, 1):
        if w.feed(f) is not None:
            return n
    return None


def test_rearmed_watch_recognises_the_next_replay_as_early_as_the_first() -> None:
    menu = _frames(_voice(4.0, 1))
    pause = _frames(np.zeros(8000 * 2))
    first = MenuWatch()
    for f in menu + pause[:25]:
        first.feed(f)
    assert first.mark() and not first.mark()  # only the first digits mark
    n1 = _until_hit(first, pause[25:] + menu)
    assert n1 is not None and first.done is not None
    first_latency = n1 - len(pause[25:])
    # the next string goes out in the pause after the replay: a re-armed watch hears the
    # rest of the replay, is marked, and must recognise the following replay as early
    second = first.rearmed()
    assert not second.marked and second.done is None
    for f in menu[first_latency:] + pause[:25]:
        second.feed(f)
    assert second.mark()
    n2 = _until_hit(second, pause[25:] + menu)
    assert n2 is not None
    assert abs((n2 - len(pause[25:])) - first_latency) <= 10, (first_latency, n2)


def test_other_audio_after_the_digits_is_not_a_repeat() -> None:
    w = MenuWatch()
    for f in _frames(_voice(4.0, 1)):
        w.feed(f)
    w.mark()
    assert _until_hit(w, _frames(np.zeros(8000)) + _frames(_voice(4.0, 9) * 0.5)) is None
