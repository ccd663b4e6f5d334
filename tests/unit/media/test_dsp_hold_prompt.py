"""Hold step: the IVR's one-off "please hold" prompt between the digits and the music is not
the person (issue #12: the agent was dialled 0.84 s into such a prompt)."""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable

import numpy as np
import pytest

from sipbridge.corpus.hold import random_music
from sipbridge.corpus.synth import codec, noise, sil
from sipbridge.media.frames import float_to_pcm16, scale_to_dbfs
from sipbridge.media.hold import HoldListener

PROMPT = "Thank you. Please hold while we connect your call."
PERSON = "Hello, this is Dana in billing, how can I help?"


def run(x: np.ndarray) -> HoldListener:
    hl = HoldListener()
    pcm = float_to_pcm16(x).tobytes()
    for i in range(0, len(pcm), 320):
        hl.feed(pcm[i : i + 320])
        if hl.done:
            break
    return hl


def line(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return codec(x + noise(x.size, "white", rng) * 10 ** ((-62 - 3) / 20), "ulaw")


@pytest.mark.parametrize("voice", ["en-us", "en-gb", "en+f3", "en+m7"])
@pytest.mark.parametrize("pause_ms", [0, 1200])
def test_one_off_prompt_before_music_is_not_the_person(
    speech: Callable[..., np.ndarray], voice: str, pause_ms: int
) -> None:
    seed = zlib.crc32(f"{voice}/{pause_ms}".encode())  # (hash() of a str varies per run)
    rng, r = np.random.default_rng(seed), random.Random(seed)
    prompt = scale_to_dbfs(speech(PROMPT, voice, 165), -18)
    music, _ = random_music(rng, r, 8.0, -22)
    person = scale_to_dbfs(speech(PERSON, "en-us" if voice != "en-us" else "en-gb", 170), -20)
    parts = [sil(pause_ms + 100), prompt, sil(300), music, sil(700)]
    onset = sum(p.size for p in parts) // 8
    x = line(np.concatenate([*parts, person, sil(3000)]), rng)
    r_ = run(x).result()
    assert r_ is not None and r_.answered_by == "human", r_
    assert onset <= r_.decided_at_ms <= onset + 1500, (onset, r_)


def test_person_answering_at_once_is_decided_after_a_short_wait(
    speech: Callable[..., np.ndarray],
) -> None:
    rng = np.random.default_rng(3)
    person = scale_to_dbfs(speech(PERSON, "en-gb", 170), -20)
    x = line(np.concatenate([sil(400), person, sil(4000)]), rng)
    end = 400 + person.size // 8
    r_ = run(x).result()
    assert r_ is not None and r_.answered_by == "human"
    assert end <= r_.decided_at_ms <= end + 1400  # first_prompt_wait_ms after the words


def test_prompt_then_ringback_is_not_the_person(speech: Callable[..., np.ndarray]) -> None:
    from sipbridge.corpus.synth import cadence

    rng = np.random.default_rng(5)
    prompt = scale_to_dbfs(speech(PROMPT, "en+f3", 165), -18)
    x = line(
        np.concatenate(
            [sil(300), prompt, sil(400), cadence((440.0, 480.0), [2000, 4000], 12000, -22)]
        ),
        rng,
    )
    hl = run(x)
    r_ = hl.result()
    assert r_ is None or r_.answered_by != "human"


@pytest.mark.parametrize("voice", ["en-us", "en+f3"])
@pytest.mark.parametrize("overlap_ms", [300, 800])
def test_person_speaking_over_the_music_end_is_decided_at_their_next_words(
    speech: Callable[..., np.ndarray], voice: str, overlap_ms: int
) -> None:
    """A person who starts talking while the music still plays is taken for a prompt for that
    utterance (the README's limit): never dialled during it, and decided at their next one."""
    rng, r = np.random.default_rng(overlap_ms), random.Random(voice)
    music, _ = random_music(rng, r, 6.0, -22)
    first = scale_to_dbfs(speech("Hello, this is Dana in billing.", voice, 170), -20)
    again = scale_to_dbfs(speech("Hello? Is anyone there?", voice, 170), -20)
    head = np.concatenate([sil(100), music])
    start = head.size - overlap_ms * 8  # the person's first word, under the music's last notes
    x = np.concatenate([head, np.zeros(start + first.size - head.size)])
    x[start:] += first
    onset = (x.size + 1500 * 8) // 8  # their next words, after a 1.5 s wait for an answer
    x = line(np.concatenate([x, sil(1500), again, sil(3000)]), rng)
    r_ = run(x).result()
    assert r_ is not None and r_.answered_by == "human", r_
    assert onset <= r_.decided_at_ms <= onset + 1500, (onset, r_)
