"""Thresholds of the hold-step listener (:class:`HoldConfig`), each default argued."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class HoldConfig:
    """Thresholds of :class:`HoldListener`. Times in ms; each comment says why."""

    # Stop listening after this long on hold: ``unknown`` / "max hold time" (the IVR escape
    # hatch of the call plan usually fires first). 30 min covers real queue times.
    max_hold_ms: int = 30 * 60 * 1000
    # A segment is judged once this much of it has been heard. Long enough to see whether
    # notes persist under it (music needs 200 ms to look tonal) and to fingerprint two or three
    # syllables against earlier prompts; short enough that a person who says "Hello, this is
    # Sam" hears the agent within ~1 s of starting.
    decide_after_ms: int = 800
    # Give up judging a segment (and keep it as "not a person") this long after its start;
    # a person who has talked for 2.5 s without being recognised will pause and be judged
    # again on the next segment.
    decide_until_ms: int = 2500
    # A person must start at least this long after music was last heard. Hold playlists join
    # music and prompts with no pause (or duck the music under the prompt); an agent's
    # speech follows the stream switch and the connect tone by ≥ 250 ms (reaction time).
    pre_gap_ms: int = 200
    # VAD words closer than this belong to one segment. Word gaps inside a sentence are
    # 50–250 ms; a turn boundary or a change of source is longer.
    segment_gap_ms: int = 200
    # A segment starting within this long after one judged to be a recorded prompt continues
    # that prompt (sentence pauses inside a recording are 0.3–0.8 s). An agent who picks up
    # right after a prompt still waits ~1 s for the connect tone and the line to settle.
    prompt_continue_ms: int = 900
    # A 25 Hz spectral bin is a *peak* when it is a local maximum this far above the frame's
    # mean log power in 300–3400 Hz (partials of notes stand 20–40 dB above the valleys
    # between them; noise "peaks" are ~5–10 dB above the mean).
    peak_db: float = 14.0
    # ... and within this range of the frame's strongest bin (ignore weak side peaks).
    peak_range_db: float = 35.0
    # A peak is *stable* once its bin has been a peak for this many frames (with misses
    # forgiven, see below): 200 ms. Notes and chords last 150 ms to several seconds; speech
    # harmonics leave a 25 Hz bin within ~100 ms (intonation moves F0 by 1–5 % per 100 ms).
    stable_frames: int = 10
    # A frame is tonal (music) with this many stable peaks. A chord gives 3–10, a melody note
    # 2–5 (its harmonics); a steady vowel rarely keeps even one for 200 ms.
    min_stable_peaks: int = 2
    # Share of tonal frames in a segment (onset to now) that makes it music / music under a
    # prompt. Music reaches 0.6–1.0 once its first 200 ms have passed; speech stays < 0.1.
    music_share: float = 0.3
    # Only a prompt with at most this share of tonal frames (speech, not a repeating piece
    # of music) makes the next segment "continue" it.
    continue_max_tonal: float = 0.1
    # Share of tonal frames over the last second that reports "music".
    music_report_share: float = 0.5
    # A fragment shorter than min_match_ms needs a word's worth of speech (200 ms) to count
    # as part of a prompt; less is a click or the tail of a note.
    min_word_ms: int = 200
    # A segment (not attached to music) must rise this far above the speech gate's noise
    # floor: VAD "words" made of line noise peak 4–8 dB above it; a quiet talker on a noisy
    # line (speech -34 dBFS, noise -46 dBFS) still peaks 12+ dB above it.
    min_snr_db: float = 10.0
    # A person has at least this much VAD speech in the judged part of the segment.
    min_speech_ms: int = 300
    # Syllabic modulation: the segment's frame levels span at least this much (90th minus
    # 10th percentile). Speech dips 15–30 dB between syllables and words; steady sounds
    # (noise, drones) a few dB.
    min_depth_db: float = 10.0
    # Share of tone frames (call-progress / single steady tone) above which a segment is a
    # tone, not speech.
    tone_share: float = 0.2
    # Fingerprint match (see :func:`best_match`): min of envelope and spectral-shape
    # correlations with earlier audio at the best shift. Replays of one recording score
    # 0.75–0.99 (0.75 when the earlier play had music ducked under it), other speech
    # (another voice, other words) 0.3–0.65.
    match_corr: float = 0.72
    # Only audio that started at least this long before a segment can match it: loops
    # repeat after the whole prompt plus music (≥ 8 s), while a person who says "Hello? …
    # Hello?" repeats within a few seconds and must not match themselves.
    min_repeat_ms: int = 5000
    # Shortest template compared (ms of the new segment): fewer frames give chance matches.
    min_match_ms: int = 400
    # Fingerprint floor: each frame's band levels are lifted to at most this far below its
    # strongest band, so line noise or a ducked music bed in weak bands does not decide the
    # correlation (formant structure spans ~25 dB in the telephone band).
    fp_floor_db: float = 25.0
    # Audio kept for matching: prompts in hold loops recur every 20–90 s; 3 minutes holds two
    # or more cycles of any loop (matching cost grows with it: ~1 ms per check per minute).
    history_ms: int = 180_000
    # After music, a frame is quiet (a real pause: the hold stream stopped) when it is this
    # far below the music's level (peak hold, decaying 1 dB/s), or below ``quiet_dbfs``.
    # Line noise sits 15–50 dB below hold music; the seam between music and a prompt that
    # follows it dips < 10 dB (a ducked bed is quiet too, but the prompt's speech started
    # before its first pause, so the prompt is already attached to the music).
    quiet_drop_db: float = 12.0
    quiet_dbfs: float = -55.0
    # This much quiet ends the music context (anything after it is a new source). Shorter
    # than the pause before a person speaks (≥ 250 ms), longer than dips between notes or
    # at the seam between music and a prompt (≤ 100 ms).
    quiet_gap_ms: int = 120
    # Steady tones: a frame is a tone when one tone holds this share of power (see
    # DetectionConfig.tone_purity), or a call-progress signature matches.
    tone_purity: float = 0.8
    tone_min_dbfs: float = -50.0
    # Before any music was heard on hold, a speech segment may be the IVR's one-off "Thank you,
    # please hold while we connect your call" (heard once, between the digits and the music):
    # its verdict waits until it ends and this long passes with no music, tone or more speech.
    # A person who answers then waits for a reply (silence); a one-off prompt is followed by
    # music or ringback within ~0.5 s. 900 ms costs a person who speaks first ~0.9 s.
    first_prompt_wait_ms: int = 900
    # ... for speech that starts this soon after the hold step began (the one-off prompt plays
    # right after the digits, after at most a short pause); later speech on a silent hold is
    # judged at once, as a person is then the likelier source.
    first_prompt_window_ms: int = 4000
    # No sound above the speech floor for this long → "silence" update.
    silence_report_ms: int = 3000


def config_from_overrides(overrides: dict[str, Any] | None) -> HoldConfig:
    """A :class:`HoldConfig` with the named fields replaced (cast to the field's type).
    Unknown names raise ``ValueError`` naming them and the valid ones."""
    base = HoldConfig()
    if not overrides:
        return base
    names = {f.name for f in fields(HoldConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(
            f"unknown hold listener setting(s) {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(sorted(names))}"
        )
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        typ = type(getattr(base, key))
        try:
            changes[key] = typ(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"hold listener setting {key!r}: bad value {value!r} ({e})") from e
    return replace(base, **changes)
