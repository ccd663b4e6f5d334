"""Thresholds of the recipient detector (:class:`DetectionConfig`), each default argued."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from sipbridge.media.vad import VadConfig


@dataclass(frozen=True, slots=True)
class DetectionConfig:
    """Detection thresholds. Defaults are chosen for latency with a safety margin; each comment
    says why. Times are in milliseconds from the start of analysis (answer or 183)."""

    # No speech and no tone for this long after answer (or after the last ringback burst: some
    # networks answer while the far end still rings) → ``silence``. People answering speak
    # within ~1–2 s. Voicemail platforms usually start within 2.5 s, but real greetings start
    # after 3–6 s of silence or comfort noise (a slow mailbox, a carrier's voicemail behind a
    # forwarded call): a machine that waits is still a machine, and deciding ``silence`` at
    # 3 s hangs up on it (with ``connect_on: human``) before ``leave_message`` or ``retry``
    # can run. We do not guess "machine" from the silence itself (Asterisk does): a person who
    # picks up and waits for us is as likely, and a dead line too. 6.5 s lets a greeting that
    # starts within 6 s be heard and judged by its timing; only a line silent for longer is
    # ``silence``.
    initial_silence_ms: int = 6500
    # Longest greeting (speech from its first word, pauses included) still counted as a person.
    # "Hello?" is 0.4–0.8 s, "Hi, this is Sam" ~1.2 s; voicemail greetings run 3–10 s.
    # Asterisk uses 1500 ms; 1800 ms tolerates slow talkers without delaying machine decisions.
    max_greeting_ms: int = 1800
    # Silence after a short greeting that means a person is waiting for us. Sentence pauses in
    # recorded greetings are mostly 0.2–0.6 s; Asterisk uses 800 ms. 700 ms plus the word-end
    # hangover keeps the human decision within 1 s of the greeting's end.
    after_greeting_silence_ms: int = 700
    # More words than this before the greeting ends → machine (Asterisk maximum_number_of_words).
    # A person's greeting is at most 3–4 words-as-seen-by-VAD; a fast machine can pack 6 in 1.8 s.
    max_words: int = 6
    # Hard stop for the human/machine decision: speech still undecided this long after the
    # greeting started → machine; tones or noise but no speech this long after answer →
    # unknown. Asterisk's total_analysis_time default.
    total_analysis_ms: int = 5000
    # Voicemail beep: a steady single tone in 400–2000 Hz of at least 150 ms after speech.
    # Real beeps are 0.2–1 s; 150 ms is above any steady vowel harmonic we see in speech.
    # The band edges carry ~5 % slack so a nominal 400 Hz or 2000 Hz beep is never lost to
    # estimation error or line drift (CED at 2100 Hz stays outside).
    beep_min_ms: int = 150
    beep_min_hz: float = 380.0
    beep_max_hz: float = 2050.0
    # After the greeting ends, wait this long for a beep before settling on "machine, no beep".
    # Most beeps follow the greeting within 0.2–1.5 s, but carrier mailboxes leave 2–5 s of
    # silence before theirs (the recorder starts late); 6 s catches those. A beep-less mailbox
    # is settled 6 s after its greeting (it records meanwhile: leave_message loses nothing
    # worse than leading silence).
    beep_timeout_ms: int = 6000
    # A long greeting in a live voice (the line's noise floor unchanged under it, see
    # sipbridge.media.liveness) followed by this much silence is a person — an operator or
    # receptionist ("Thank you for calling …, how can I help you?") or someone who simply
    # talks for longer — waiting for an answer: ``human`` with ``hint="operator"``. A live
    # speaker pauses for a reply within a second, and a person is decided within 1 s of their
    # last word (short greetings: 700 ms). The cost is a recording that merely looks live (a
    # prompt played into a noisy line, whose noise hides its own bed) with its beep later than
    # the wait: bench/opwait.py measures it. No machine greeting of the real corpus looks live
    # (0/44; their beeps come 0.3–0.53 s after the greeting). Mixed into noisy lines (-64..-48
    # dBFS), 114/132 of them look live and none loses its beep at any wait from 0.7 to 1.5 s
    # (61 go on after a pause of 1.5 s or more: human at any of these waits). The generated
    # corpora's greetings on noisy lines (beeps set 0.6–1.2 s after, some later): called
    # human at 0.7 / 0.9 / 1.0 / 1.2 / 1.5 s for their beep: 30 / 26 / 24 / 20 / 13 of 106
    # that look live. 900 ms keeps an operator decided within 1 s of the last word (VAD word
    # end ±50 ms) at 13 more of those 106 than 1.5 s, and the same on real greetings.
    operator_silence_ms: int = 900
    # ... but when the line's floor is within ``operator_clear_db`` of the speech (its loud
    # frames, the vowels), the floor test proves nothing: a recording's bed sits 25–45 dB
    # under the speech and such a floor hides it (a 10–15 dB SNR line). Then the wait is this
    # long (past the time most mailbox beeps come, 0.2–1.5 s), unless the greeting ends in a
    # question (then ``operator_silence_ms``): on such lines a beep 0.8–1.2 s after the greeting
    # (the generated 10 dB SNR machines) must still win.
    operator_masked_silence_ms: int = 1500
    operator_clear_db: float = 20.0
    # ... and a live voice talking longer than this (first word to last) is not waiting for
    # anyone: a person who answers lets the caller speak within ~5 s (scripted greetings run
    # 2–5 s), voicemail greetings run 3–15 s. A recording on a noisy line can look live: past
    # this it is a machine again.
    operator_max_greeting_ms: int = 6000
    # A recorded or synthetic greeting whose last word rises (a question) followed by this much
    # silence and no beep is a call-screening assistant (Android Call Screen, iOS Live
    # Voicemail): ``human`` with ``hint="screening"`` (state your name and purpose to it). Most
    # mailbox beeps come within 1.5 s; a mailbox whose greeting ends in a question and beeps
    # later is misread (rare: greetings end "…after the tone.").
    screening_silence_ms: int = 2000
    # ... and the greeting (first word to last) lasts at least this long. An assistant says
    # that the call is screened and asks for the caller's name and reason: two clauses, 12+
    # words, 4.5–8 s at a TTS voice's pace (Pixel Call Screen ~7 s, iOS and Samsung ~5 s).
    # A shorter recorded prompt ending in a question is an IVR's ("Mailbox?", "Password?")
    # or a mailbox's; calling it a machine is the safe side.
    screening_min_greeting_ms: int = 3000
    # A short greeting followed by a line this quiet (dBFS; the level nearly all frames of the
    # pause after it stay under) is a recording: a live person speaks into an open microphone
    # whose room (-65..-40 dBFS) or whose network's comfort noise (-80..-65) stays on the line
    # after "Hello?"; digital silence (-100) after speech is a prompt played by a machine whose
    # line carries nothing else (measured: bench/dsp.py). -120 turns the rule off (endpoints
    # that suppress silence without comfort noise: their callers would be called machines).
    recorded_line_dbfs: float = -85.0
    # A live microphone's room is told from the line's own noise by its level (-68 dBFS and
    # up: ``LivenessConfig.live_floor_dbfs``) or, on a quieter line (-76..-68 dBFS: a quiet
    # room through a landline or cell phone, the same levels as network comfort noise and a
    # line's hiss), by its spectrum (``liveness.band_tilt_db``: 300–1000 Hz against
    # 2000–3400 Hz, dB per Hz, median over the pauses before the first word). Acoustic noise
    # reaching a microphone falls with frequency (rooms, ventilation, traffic, breath): pink
    # noise measures 6 dB, and through µ-law at -76..-70 dBFS, whose coarse last codes whiten
    # it, still 4–5 dB; the real corpus's quiet landline and cell-phone rooms measure 7–13 dB.
    # What a line or network adds without a microphone (thermal hiss, quantisation, comfort
    # noise generated without a spectrum) is flat: white noise measures 0 ± 0.5 dB at these
    # levels, every generated machine's line -1.4..+0.7 dB. A long greeting over a tilted
    # floor, unchanged under its words, is a live voice (then the operator rules apply, as
    # for louder rooms). 3 dB lies between flat and pink-through-µ-law with ~1–1.5 dB to
    # each. Below -76 dBFS µ-law carries only its last codes (0, ±8) and no tilt is trusted.
    # The cost is the one louder rooms already have: a studio prompt played into a quiet
    # line whose noise is tilted (crosstalk, hum on an analog loop) reads live too
    # (bench/noisyline.py measures that trade-off on noisy lines). 120 turns the rule off.
    room_tilt_db: float = 3.0
    # Follow a beep to its end (for ``beep_end_ms``) at most this long; real beeps are 0.1–1 s.
    beep_end_max_ms: int = 2500
    # Stop waiting for the beep altogether this long after the start (greetings up to ~25 s).
    max_beep_wait_ms: int = 30000
    # A machine that talks again after this pause is an IVR menu (options are separate prompts;
    # a voicemail does not speak again once it has finished its greeting). Longer than sentence
    # pauses inside a greeting (≤ ~0.8 s).
    ivr_resume_gap_ms: int = 1200
    # A frame is a tone frame when the dominant tone holds this share of its power (clean tones
    # ~0.95–1.0; tone + noise at 10 dB SNR ~0.85; voiced speech rarely > 0.6 and never for long).
    tone_purity: float = 0.8
    # Tones quieter than this are ignored (digital silence / comfort noise at -60..-70 dBFS).
    tone_min_dbfs: float = -50.0
    # Call progress: a signature's components hold this share of power; dual-tone twist limit.
    # Both components are sent at the same nominal level (e.g. -13 dBm0 each for US tones);
    # 6 dB twist allows for line tilt yet rejects a single tone near one component (a 448 Hz
    # beep leaks 9 dB down into the 480 Hz bin of 440+480).
    cp_purity: float = 0.7
    cp_max_twist_db: float = 6.0
    # SIT: decided once segment 2 held its frequency this long (first two segments suffice).
    # 60 ms is three frames at the exact frequency (±1.5 %) right after a 200–460 ms segment 1
    # at its own exact frequency: nothing but a SIT does that; a longer wait only delays it.
    # After a solid segment (>= 200 ms, exact) one frame less is enough, and less still right
    # after it when a dropout cut the rest (sipbridge.media.sit._held).
    sit_confirm_ms: int = 60
    # CED (2100 Hz) this long → fax; the real tone lasts 2.6–4 s.
    ced_min_ms: int = 400
    vad: VadConfig = field(default_factory=VadConfig)


def config_from_overrides(overrides: dict[str, Any] | None) -> DetectionConfig:
    """A :class:`DetectionConfig` with some thresholds replaced (values cast to the
    field's type); unknown names raise ``ValueError`` naming them."""
    base = DetectionConfig()
    if not overrides:
        return base
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key == "vad" or not hasattr(base, key):
            raise ValueError(f"unknown detection threshold {key!r}")
        changes[key] = type(getattr(base, key))(value)
    return replace(base, **changes)
