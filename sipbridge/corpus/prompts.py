"""Many distinct spoken prompts for prompt-library tests and benchmarks (espeak-ng).

:func:`sentences` makes utterances of 8–15 words: pseudo-words of 2–3 random syllables (every
prompt different, as real prompts are) or real words from a small vocabulary (many words shared
between utterances: the harsh case for fingerprints). :func:`render_prompts` speaks them with
the corpus voices at slightly different rates, in parallel.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from sipbridge.corpus.detection import VOICES
from sipbridge.corpus.synth import Speech

WORDS = (
    "account",
    "balance",
    "payment",
    "service",
    "appointment",
    "message",
    "office",
    "number",
    "customer",
    "support",
    "morning",
    "evening",
    "weather",
    "tomorrow",
    "schedule",
    "delivery",
    "address",
    "order",
    "invoice",
    "question",
    "reservation",
    "pharmacy",
    "doctor",
    "school",
    "library",
    "station",
    "airport",
    "hotel",
    "manager",
    "team",
)
SYLLABLES = tuple(c + v for c in "bdfgklmnprstvz" for v in ("a", "e", "i", "o", "u", "ay", "oo"))


def sentences(n: int, seed: int, words: bool = False) -> list[str]:
    """``n`` utterances of 8–15 words (see the module docstring)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(8, 16))
        if words:
            ws = [str(w) for w in rng.choice(WORDS, size=k)]
        else:
            ws = ["".join(rng.choice(SYLLABLES, size=int(rng.integers(2, 4)))) for _ in range(k)]
        out.append(" ".join(ws) + ".")
    return out


def render_prompts(texts: list[str], base_speed: int = 150) -> list[np.ndarray]:
    """Speak ``texts`` (voice and rate cycling over the corpus voices), 8 kHz float clips."""
    reqs = [(t, VOICES[i % len(VOICES)], base_speed + 5 * (i % 7), 50) for i, t in enumerate(texts)]
    with tempfile.TemporaryDirectory() as td:
        sp = Speech(Path(td))
        sp.render_many(reqs)
        return [sp.get(*r) for r in reqs]
