"""Screening assistants against recorded prompts that end in a question (issue #12).

A call-screening assistant says, once, that the call is screened and asks for a name and a
reason (4.5–8 s), then waits in silence. A mailbox or IVR prompt that happens to end with a
rising pitch ("Mailbox?", "Password?") is short, or comes again after a pause (menu prompts):
those stay machine/IVR (the safe side). The last word's pitch rise must be a continuous voiced
contour: sporadic voiced frames in the breathy tail of a falling statement are no question.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sipbridge.media.detect import Detector
from sipbridge.media.frames import SAMPLE_RATE, scale_to_dbfs
from sipbridge.media.liveness import rises_at_end


def _glide(f0_from: float, f0_to: float, ms: int) -> np.ndarray:
    """A voiced stretch (harmonic series, first 8 harmonics) whose pitch glides linearly."""
    n = ms * SAMPLE_RATE // 1000
    f0 = np.linspace(f0_from, f0_to, n)
    ph = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    return sum(np.sin(k * ph) / k for k in range(1, 9))  # type: ignore[return-value]


def test_falling_statement_with_a_noisy_tail_is_no_question() -> None:
    rng = np.random.default_rng(3)
    fall = scale_to_dbfs(_glide(170.0, 110.0, 500), -18)
    tail = []
    for hz in (71.0, 143.0, 186.0, 78.0):  # breath with isolated voiced blips (40 ms each)
        tail += [
            rng.standard_normal(480) * 10 ** (-45 / 20),
            scale_to_dbfs(_glide(hz, hz, 40), -40),
        ]
    word = np.concatenate([fall, *tail])
    assert not rises_at_end(word)
    assert not rises_at_end(fall)


def test_continuous_rise_is_a_question() -> None:
    word = scale_to_dbfs(
        np.concatenate([_glide(180.0, 170.0, 300), _glide(170.0, 260.0, 300)]), -18
    )
    assert rises_at_end(word)


def _call(parts: list[np.ndarray]) -> Any:
    """Prompts with digital silence around them (a machine's line), analysed after answer."""
    d = Detector()
    d.feed(np.concatenate(parts))
    return d.finish()


def _sil(ms: int) -> np.ndarray:
    return np.zeros(ms * SAMPLE_RATE // 1000)


def test_short_prompt_ending_in_a_question_is_not_a_screener(speech: Any) -> None:
    for text in ("Password?", "Mailbox?"):
        w = scale_to_dbfs(speech(text, "en-us"), -18)
        assert rises_at_end(w), text  # the prompt does end in a rise: the length rule decides
        r = _call([_sil(500), w, _sil(5000)])
        assert r.answered_by == "machine" and r.hint is None, (text, r.reason)


def test_menu_prompts_ending_in_questions_stay_ivr(speech: Any) -> None:
    first = scale_to_dbfs(speech("Mailbox?", "en-us"), -18)
    second = scale_to_dbfs(
        speech("Please enter your mailbox number and then your password, are you ready?"), -18
    )
    r = _call([_sil(500), first, _sil(1500), second, _sil(5000)])
    assert r.answered_by == "ivr", r.reason


def test_screening_greeting_is_still_human(speech: Any) -> None:
    w = scale_to_dbfs(
        speech(
            "Hello, this call is being screened. Please say your name and the reason for your call?"
        ),
        -18,
    )
    rng = np.random.default_rng(5)
    x = np.concatenate([_sil(800), w, _sil(5000)])
    x = x + rng.standard_normal(x.size) * 10 ** (-77 / 20)  # comfort noise
    r = _call([x])
    assert r.answered_by == "human" and r.hint == "screening", r.reason


def test_a_greeting_the_library_names_a_mailbox_is_never_a_screener(speech: Any) -> None:
    """The README's advice for a mailbox greeting misread as a screener (it ends in a question
    and its beep comes late or never) is to put it in the prompt library: the library's
    ``voicemail`` label then holds. (The screening rule used to override it.)"""
    from sipbridge.corpus.synth import tone
    from sipbridge.media.promptlib import PromptLibrary

    text = "Hello, this call is being screened. Please say your name and the reason for your call?"
    w = scale_to_dbfs(speech(text), -18)
    lib = PromptLibrary()
    lib.add("acme-mailbox", "voicemail", w)
    rng = np.random.default_rng(5)
    beep = tone((1000.0,), 400, -18)
    for tail, beeps in (
        (_sil(7000), False),
        (np.concatenate([_sil(2600), beep, _sil(1000)]), True),
    ):
        x = np.concatenate([_sil(800), w, tail])
        x = x + rng.standard_normal(x.size) * 10 ** (-77 / 20)
        d = Detector(prompts=lib)
        d.feed(x)
        r = d.finish()
        assert (r.answered_by, r.hint, r.prompt, r.prompt_label) == (
            "machine",
            "prompt",
            "acme-mailbox",
            "voicemail",
        ), r.reason
        assert r.final and (r.beep_ms is not None) == beeps, r
