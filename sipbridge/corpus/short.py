"""Short answers against short prompts, on the lines they come over (issue #12).

A person who answers says a word or two ("Hello?") and waits; so does a short recorded prompt
(0.5–2 s: "Goodbye.", "Please hold.", "All circuits are busy now.") followed by silence. The
words and their timing are alike; what differs is the line around them (see
:mod:`sipbridge.media.liveness`):

* ``live_room`` — a live microphone in a room: its noise (pink, -58..-46 dBFS) is on the line
  before, under and after the words;
* ``live_cn`` — a live phone with noise suppression on a network that sends comfort noise
  instead of the room (-80..-66 dBFS, steady);
* ``live_gated`` — a live endpoint that suppresses silence *without* comfort noise: the room is
  heard only while the talker speaks (150 ms before to 250 ms after), digital silence otherwise;
* ``rec_silent`` — a recording with its own bed (recorded on a phone: room noise from 100–400 ms
  before the words to 100–500 ms after) played on a line that carries nothing else;
* ``clean_silent`` — a clean (studio or TTS) prompt on a digitally silent line;
* ``clean_cn`` / ``rec_cn`` — the same two on a line with comfort noise (-80..-66 dBFS) mixed
  in everywhere, under the words too;
* ``clean_dtx`` — a clean prompt sent with silence suppression (RFC 3389): the talkspurt (the
  prompt, from 20 ms before its first word to a 140–200 ms VAD hangover after its last, with
  the prompt's own digital silence) on a line whose comfort noise (-78..-50 dBFS) fills
  everything else;
* ``live_dtx`` — a live phone with noise suppression and DTX on the same kind of line: its
  talkspurts carry the room's residual noise (-75..-50 dBFS), the comfort noise between them
  matches that level (± 3 dB, which is what a SID frame describes).

:func:`cases` yields them through G.711 (µ-law and A-law in turn) with labels; the regression corpus
(:mod:`sipbridge.corpus.regress`) writes a few of each, ``bench/dsp.py`` measures many.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from sipbridge.corpus.detection import VOICES
from sipbridge.corpus.synth import FS, Speech, codec, ms_of, noise, speech_end
from sipbridge.media.frames import scale_to_dbfs

LIVE_TEXTS = [
    "Hello?",
    "Yeah?",
    "Hi, who is this?",
    "Hello, Sam speaking.",
    "Hello, this is Maria.",
    "Good morning?",
    "Speaking.",
    "Yes, hello?",
]
PROMPT_TEXTS = [
    "Please hold.",
    "All circuits are busy now.",
    "Welcome.",
    "Please leave a message.",
    "Goodbye.",
    "Thank you.",
    "Your call is important to us.",
    "Please try again later.",
]
LIVE_CONDITIONS = ("live_room", "live_cn", "live_gated", "live_dtx")
MACHINE_CONDITIONS = ("rec_silent", "clean_silent", "clean_cn", "rec_cn", "clean_dtx")
SPEED = 160


@dataclass(frozen=True, slots=True)
class ShortCase:
    """One generated call: µ-law decoded audio and its label (corpus label format)."""

    name: str
    condition: str
    audio: np.ndarray
    label: dict[str, object]


def speech_requests() -> list[tuple[str, str, int, int]]:
    """Every (text, voice, speed, pitch) :func:`cases` may use (render them first)."""
    return [(t, v, SPEED, 50) for t in LIVE_TEXTS + PROMPT_TEXTS for v in VOICES]


def _pink(n: int, rng: np.random.Generator, level: float) -> np.ndarray:
    return noise(n, "pink", rng) * 10 ** ((level - 3.0) / 20)


def _white(n: int, rng: np.random.Generator, level: float) -> np.ndarray:
    return noise(n, "white", rng) * 10 ** ((level - 3.0) / 20)


def one(sp: Speech, condition: str, k: int, seed: int) -> ShortCase:
    """The ``k``-th case of ``condition`` (text and voice cycle with ``k``)."""
    r = random.Random(f"{seed}:{condition}:{k}")
    rng = np.random.default_rng(r.randrange(2**32))
    live = condition in LIVE_CONDITIONS
    texts = LIVE_TEXTS if live else PROMPT_TEXTS
    text = texts[k % len(texts)]
    voice = VOICES[(k // len(texts) + k) % len(VOICES)]
    s = scale_to_dbfs(sp.get(text, voice, SPEED), r.uniform(-30, -14))
    lead, tail = round(r.uniform(200, 1200) * FS / 1000), round(4000 * FS / 1000)
    x = np.concatenate([np.zeros(lead), s, np.zeros(tail)])
    end = lead + speech_end(s)
    n = x.size
    if condition == "live_room":
        x += _pink(n, rng, r.uniform(-58, -46))
    elif condition in ("live_cn", "clean_cn"):
        x += _white(n, rng, r.uniform(-80, -66))
    elif condition == "live_gated":
        a, b = max(0, lead - round(0.15 * FS)), min(n, end + round(0.25 * FS))
        x[a:b] += _pink(b - a, rng, r.uniform(-58, -46))
    elif condition in ("rec_silent", "rec_cn"):
        a = max(0, lead - round(r.uniform(100, 400) * FS / 1000))
        b = min(n, lead + s.size + round(r.uniform(100, 500) * FS / 1000))
        x[a:b] += _pink(b - a, rng, r.uniform(-60, -46))
        if condition == "rec_cn":
            x += _white(n, rng, r.uniform(-80, -66))
    elif condition in ("clean_dtx", "live_dtx"):
        # one talkspurt: VAD onset 20 ms early, 140–200 ms hangover (AMR DTX: 7 frames)
        a, b = max(0, lead - round(0.02 * FS)), min(n, end + round(r.uniform(140, 200) * FS / 1000))
        floor = r.uniform(-75, -50) if condition == "live_dtx" else r.uniform(-78, -50)
        cn = _pink(n, rng, floor + (r.uniform(-3, 3) if condition == "live_dtx" else 0.0))
        cn[a:b] = 0.0
        if condition == "live_dtx":
            cn[a:b] = _pink(b - a, rng, floor)
        x += cn
    elif condition != "clean_silent":
        raise ValueError(f"unknown condition {condition!r}")
    label: dict[str, object] = {
        "answered_by": "human" if live else "machine",
        "greeting_end_ms": ms_of(end),
        "hint": None,
        "desc": f"{condition}: {text!r} ({voice}, {s.size / FS:.1f} s)",
    }
    if not live:
        label["ivr_hint"] = True
    law = ("ulaw", "alaw")[k % 2]  # A-law's idle pattern is not zero: both are tried
    label["desc"] = f"{label['desc']}, {law}"
    return ShortCase(f"short_{condition}_{k}", condition, codec(x, law), label)


def cases(sp: Speech, per_condition: int, seed: int) -> Iterator[ShortCase]:
    """``per_condition`` cases of every condition."""
    for condition in LIVE_CONDITIONS + MACHINE_CONDITIONS:
        for k in range(per_condition):
            yield one(sp, condition, k, seed)


__all__ = [
    "LIVE_CONDITIONS",
    "MACHINE_CONDITIONS",
    "ShortCase",
    "cases",
    "one",
    "speech_requests",
]
