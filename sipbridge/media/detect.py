"""Recipient detection: turns per-frame features into a :class:`Detection`.

Two modes:

* ``"early"`` — early media (183 Session Progress, before answer): SIT (with code), call
  progress (ringback / busy / reorder, by region) and fax tones. Never decides human/machine.
* ``"answer"`` — the first seconds after 200 OK: ``human``, ``machine`` (then the beep),
  ``ivr``, ``fax``, ``silence``, ``unknown``; SIT and busy/reorder are still recognised
  (some networks answer before playing them).

Human vs machine follows the timing of speech (the approach of Asterisk AMD, tuned for
latency): a person says a short greeting ("Hello?") and waits for an answer; a voicemail or IVR
plays a long continuous greeting. A machine decision is provisional (``final=False``) until the
beep is found, the greeting ends with no beep, or the IVR starts a new prompt.

IVR vs voicemail: the audio alone cannot always separate them. Rules used:
  * a beep after the greeting → ``machine``;
  * the machine starts talking again after a pause of ``ivr_resume_gap_ms`` (menus are several
    prompts; a voicemail records after its greeting) → ``ivr``;
  * the greeting ends and no beep comes within ``beep_timeout_ms`` → ``machine`` with
    ``ivr_hint=True`` (a beep-less voicemail and an IVR waiting for DTMF sound the same).

This module holds the detector and its tone handling (SIT, call progress, fax, beep, known
prompts); the answer-mode rules on the greeting's words are in
:mod:`~sipbridge.media.answer_rules`.

Usage::

    det = Detector(DetectionConfig(), mode="answer")
    for i, frame in enumerate(frames):          # 160 int16 samples (320 bytes) each
        for ev in det.feed(frame):
            ...                                  # ev.kind, ev.detection
        if det.done:
            break
    print(det.result())
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np

from sipbridge.media.answer_rules import AnswerRules
from sipbridge.media.cadence import CadenceTracker, best_cp_signature
from sipbridge.media.frames import (
    FRAME_MS,
    FloatArray,
    dbfs,
)
from sipbridge.media.liveness import (
    DIGITAL_SILENCE_DBFS,
    FloorTracker,
    LivenessConfig,
    band_tilt_db,
)
from sipbridge.media.promptlib import PromptLibrary, PromptMatch, label_result
from sipbridge.media.result import (
    ANSWERED_BY_VALUES,
    AnsweredBy,
    Detection,
    DetectionEvent,
    TimelineEntry,
)
from sipbridge.media.sit import SitDecoder, SitResult
from sipbridge.media.thresholds import DetectionConfig, config_from_overrides
from sipbridge.media.tones import (
    CP_REGION,
    CP_SIGNATURES,
    ToneAnalyzer,
    ToneRun,
    ToneRunTracker,
    cng_over_progress,
    is_ced,
    is_cng,
)
from sipbridge.media.vad import SpeechTracker

__all__ = [
    "ANSWERED_BY_VALUES",
    "AnsweredBy",
    "Detection",
    "DetectionConfig",
    "DetectionEvent",
    "Detector",
    "Mode",
    "TimelineEntry",
    "config_from_overrides",
]

Mode = Literal["answer", "early"]
# audio kept for the last word's pitch (1.6 s)
_WORD_AUDIO_FRAMES = 80


class Detector(AnswerRules):
    """Streaming recipient detector; feed it 20 ms frames of 8 kHz audio.

    ``feed`` accepts PCM16 bytes or an int16/float array of any length (buffered into 160-sample
    frames). ``t_ms`` is the time of the chunk's first sample relative to the start of analysis;
    when omitted the clock continues. A forward gap (lost packets) is filled with silence.
    """

    def __init__(
        self,
        config: DetectionConfig | None = None,
        mode: Mode = "answer",
        keep_timeline: bool = True,
        prompts: PromptLibrary | None = None,
    ) -> None:
        if mode not in ("answer", "early"):
            raise ValueError(f"mode must be 'answer' or 'early', got {mode!r}")
        self.cfg = config or DetectionConfig()
        self.mode: Mode = mode
        self.keep_timeline = keep_timeline
        self.timeline: list[TimelineEntry] = []
        self._tones = ToneAnalyzer(history_frames=_WORD_AUDIO_FRAMES)
        self._runs = ToneRunTracker()
        self._sit = SitDecoder(confirm_ms=self.cfg.sit_confirm_ms)
        # after answer speech and music are common: a busy/reorder cadence must hold for three
        # bursts; in early media (network tones and announcements only) two suffice
        self._cadence = CadenceTracker(bursts=3 if mode == "answer" else 2)
        self._speech = SpeechTracker(self.cfg.vad)
        super().__init__()
        # greeting state
        self._greeting_start: int | None = None
        self._last_word_end: int | None = None
        self._words = 0
        self._tone_activity_ms = 0
        self._machine_at: int | None = None
        self._ringback_reported = False
        # timers of the answer rules start here: the answer, or the end of the last ringback
        # burst heard after it (the far end was still ringing)
        self._ref_ms = 0
        self._beep_run: ToneRun | None = None  # a decided beep followed to its end
        self._floor = FloorTracker(LivenessConfig(room_tilt_db=self.cfg.room_tilt_db))
        # known prompts (an operator-supplied library): recognised by fingerprint
        self._prompts = prompts.matcher() if prompts is not None and len(prompts) else None
        self._live_long = False  # a long greeting in a live voice (operator candidate)
        self._live_pending = False  # long greeting, audible room, no pause yet to compare
        self._last_word_start = 0
        self._question: tuple[int, bool] | None = None  # (last word end, rises?)
        self._last_word_audio: FloatArray | None = None

    # -- public API ---------------------------------------------------------------------------

    def finish(self) -> Detection:
        """End of audio: decide with what we have (``unknown``/``silence``/machine as fits)."""
        events: list[DetectionEvent] = []
        if not self._done:
            run = self._runs.flush()
            if run is not None:
                self._on_run_end(run, self._t, events)
        if not self._done:
            t = self._t
            if self.mode == "answer":
                if self._machine_at is not None:
                    self._finalise_machine(t, None, "end of audio before beep", events)
                elif (
                    self._greeting_start is not None
                    and self._last_word_end is not None
                    and (
                        self._last_word_end - self._greeting_start <= self.cfg.max_greeting_ms
                        and not self._speech.in_word
                    )
                ):
                    self._decide(
                        "human",
                        t,
                        events,
                        greeting_end_ms=self._last_word_end,
                        reason="short greeting, audio ended",
                    )
                elif self._greeting_start is None and self._tone_activity_ms == 0:
                    self._decide("silence", t, events, reason="no speech before end of audio")
                else:
                    self._decide("unknown", t, events, reason="end of audio, undecided")
            elif self._result is None:
                self._decide("unknown", t, events, reason="early media ended, nothing detected")
            else:
                self._done = True
        assert self._result is not None
        return self._result

    # -- internals ----------------------------------------------------------------------------

    def _process(self, pcm: bytes, x: FloatArray | None, events: list[DetectionEvent]) -> None:
        cfg = self.cfg
        t = self._t
        t_end = t + FRAME_MS
        self._t = t_end
        ta = self._tones
        # the frame goes straight into the analyser's buffer (which keeps the last 1.6 s, for
        # the last word's pitch)
        x = ta.push_pcm(pcm) if x is None else ta.push(x)
        level = dbfs(x)
        loud = level >= cfg.tone_min_dbfs
        ta.analyze_last(loud)  # cp_power is read only above that level
        if self._beep_run is not None:
            self._follow_beep(
                single_tone=ta.purity >= cfg.tone_purity and loud,
                hz=ta.peak_hz,
                purity=ta.purity,
                t=t,
                events=events,
            )
            return
        is_tone = loud and (ta.purity >= cfg.tone_purity or cng_over_progress(ta))
        sig = best_cp_signature(ta.cp_power, cfg.cp_purity, cfg.cp_max_twist_db) if loud else None
        if sig is not None:
            is_tone = True
        # dual call-progress tones are not "a single steady tone"; single ones (400/425/440 Hz)
        # are, and may also be a voicemail beep
        single = is_tone and (sig is None or len(CP_SIGNATURES[sig]) == 1)
        # --- tones ------------------------------------------------------------------------
        prev_run = self._runs.current
        ended = self._runs.update(single, ta.peak_hz, ta.purity, t)
        cur = self._runs.current
        if cur is not None and cur is not prev_run:
            self._note(
                t,
                "tone_start",
                hz=round(ta.peak_hz, 1),
                purity=round(ta.purity, 3),
                dbfs=round(level, 1),
            )
        if ended is not None:
            self._on_run_end(ended, t_end, events)
            if self._done:
                return
        if is_tone:
            self._tone_activity_ms += FRAME_MS
        sit = self._sit.check(cur, t_end)
        if sit is not None:
            self._on_sit(sit, t_end, events)
            return
        if cur is not None:
            self._check_run_live(cur, t_end, events)
            if self._done or self._beep_run is not None:
                # a beep decided "machine" in this frame: no other rule may run after it
                # (the operator wait could end in the same frame and say "human")
                return
        # --- speech (before call progress: a cadence must have no speech in it) -----------
        sp = self._speech
        ev = sp.update(pcm, level, is_tone, t)
        if ev == SpeechTracker.WORD_START:
            self._sit.interrupt()
        if self._prompts is not None:
            # every frame's code is kept; the index is searched only with speech frames
            hit = self._prompts.push(ta.power, level, sp.last_speech)
            if hit is not None:
                self._on_prompt(hit, t_end, events)
                if self._done:
                    return
        if self.mode == "answer":
            quiet = sp.state == 0 and not is_tone and not sp.last_speech
            # A-law's idle pattern is a constant +8 (-69 dBFS of DC, no sound): the floor is
            # measured without the DC, so digital silence reads -100 in both G.711 laws
            floor_db = dbfs(x - float(np.add.reduce(x)) / x.size) if level < -60.0 else level
            # a pause before the first word: its spectral tilt tells a microphone's room from
            # a line's own hiss (only needed where the level alone does not say "a room")
            tilt = (
                band_tilt_db(ta.power)
                if quiet and not self._floor.started and DIGITAL_SILENCE_DBFS < floor_db < -60.0
                else None
            )
            self._floor.update(t, floor_db, quiet, tilt)
        self._on_cp(
            sig, t, t_end, events, sp.last_speech, ta.peak_hz if sig is not None else None, level
        )
        if self._done:
            return
        if ev == SpeechTracker.WORD_START:
            self._note(sp.word_start_ms, "speech_start", dbfs=round(level, 1))
            self._on_word_start(sp.word_start_ms, t_end, events)
        elif ev == SpeechTracker.WORD_END:
            self._note(sp.word_end_ms, "speech_end", floor_dbfs=round(sp.floor_dbfs or -100.0, 1))
            self._last_word_end = sp.word_end_ms
            if self.mode == "answer":
                # keep the word (up to its last 1.5 s) for its pitch, asked for later
                audio = ta.recent(_WORD_AUDIO_FRAMES)
                end = audio.size - (t_end - sp.word_end_ms) * 8
                start = max(0, end - max(0, sp.word_end_ms - self._last_word_start) * 8)
                self._last_word_audio = audio[start:end].copy() if end > start else None
        if self.mode == "answer" and not self._done:
            self._answer_rules(t_end, events)

    def _on_run_end(self, run: ToneRun, t_end: int, events: list[DetectionEvent]) -> None:
        self._note(
            run.end_ms,
            "tone_end",
            hz=round(run.hz, 1),
            ms=run.duration_ms,
            purity=round(run.purity, 3),
        )
        self._sit.on_run_end(run)
        if is_cng(run) and self._greeting_start is None:
            self._decide(
                "fax", t_end, events, reason=f"fax CNG {run.hz:.0f} Hz {run.duration_ms} ms"
            )

    def _check_run_live(self, run: ToneRun, t_end: int, events: list[DetectionEvent]) -> None:
        cfg = self.cfg
        if is_ced(run, cfg.ced_min_ms):
            self._decide("fax", t_end, events, reason=f"fax/modem answer tone {run.hz:.0f} Hz")
            return
        if (
            self.mode == "answer"
            and self._greeting_start is not None
            and run.duration_ms >= cfg.beep_min_ms
            and cfg.beep_min_hz <= run.hz <= cfg.beep_max_hz
        ):
            self._on_beep(run, t_end, events)

    def _on_beep(self, run: ToneRun, t_end: int, events: list[DetectionEvent]) -> None:
        sp = self._speech
        gend = self._last_word_end
        if sp.in_word:
            gend = run.start_ms
        if gend is None or gend > run.start_ms:
            gend = run.start_ms
        self._note(run.start_ms, "beep", hz=round(run.hz, 1))
        decided = self._machine_at if self._machine_at is not None else t_end
        reason = (
            "greeting followed by beep"
            if self._machine_at is not None
            else "speech followed by beep"
        )
        self._decide(
            "machine",
            t_end,
            events,
            kind="update" if self._machine_at is not None else "decision",
            greeting_end_ms=gend,
            beep_ms=run.start_ms,
            beep_hz=round(run.hz, 1),
            reason=f"{reason} (machine decided at {decided} ms)",
            **self._known_prompt(),
        )
        # the decision is final (the SIP side may act on the onset); keep listening until the
        # tone stops to report its end in an update
        self._done = False
        self._beep_run = run

    def _follow_beep(
        self, single_tone: bool, hz: float, purity: float, t: int, events: list[DetectionEvent]
    ) -> None:
        run = self._beep_run
        assert run is not None
        ended = self._runs.update(single_tone, hz, purity, t)
        over = t + FRAME_MS - run.start_ms >= self.cfg.beep_end_max_ms
        if ended is None and not over and self._runs.current is run:
            return
        self._beep_run = None
        self._note(run.end_ms, "beep_end", ms=run.duration_ms)
        assert self._result is not None
        det = replace(self._result, beep_end_ms=run.end_ms)
        self._result = det
        self._done = True
        events.append(DetectionEvent("update", t + FRAME_MS, det))
        self._note(t + FRAME_MS, "decision", **det.to_dict())

    def _on_prompt(self, hit: PromptMatch, t_end: int, events: list[DetectionEvent]) -> None:
        self._note(hit.start_ms, "prompt", name=hit.name, label=hit.label, ber=hit.ber)
        answered_by, hint = label_result(hit.label)
        if self._beep_run is not None or (self._result is not None and self._result.final):
            return  # a beep is being followed: the verdict is already final
        final = answered_by != "machine"  # a known mailbox greeting still has its beep to come
        if final or self._machine_at is None:
            if not final:
                self._machine_at = t_end
            self._decide(
                answered_by,  # type: ignore[arg-type]
                t_end,
                events,
                final=final,
                kind="update" if self._result is not None else "decision",
                hint=hint or "prompt",
                prompt=hit.name,
                prompt_label=hit.label,
                ivr_hint=answered_by == "ivr",
                reason=f"known prompt {hit.name!r} ({hit.label}), started at "
                f"{hit.start_ms} ms, bit error rate {hit.ber:.2f}",
            )

    def _on_sit(self, sit: SitResult, t_end: int, events: list[DetectionEvent]) -> None:
        self._note(
            sit.start_ms,
            "sit",
            code=sit.code,
            seg1_hz=round(sit.seg1_hz, 1),
            seg1_ms=sit.seg1_ms,
            seg2_hz=round(sit.seg2_hz, 1),
        )
        self._decide(
            "sit",
            t_end,
            events,
            sit_code=sit.code,
            reason=f"SIT {sit.code}: {sit.meaning} (started {sit.start_ms} ms)",
        )

    def _on_cp(
        self,
        sig: str | None,
        t: int,
        t_end: int,
        events: list[DetectionEvent],
        speech: bool,
        hz: float | None,
        level: float,
    ) -> None:
        prev = self._cadence.current
        res = self._cadence.update(sig, t, speech, hz, level)
        if sig != prev:
            if prev is not None and self._cadence.current != prev:
                self._note(t, "cp_off", signature=prev)
            if sig is not None:
                self._note(t, "cp_on", signature=sig)
        if res is None:
            return
        name, kind = res
        region = CP_REGION[name]
        if kind == "ringback" and self._greeting_start is None:
            # answered while still ringing: the answer rules' clocks start after the ringback
            self._ref_ms = t_end
            self._tone_activity_ms = 0
        if kind == "ringback":
            if self.mode == "early" and not self._ringback_reported:
                self._ringback_reported = True
                self._decide(
                    "unknown",
                    t_end,
                    events,
                    final=False,
                    kind="progress",
                    progress="ringback",
                    progress_region=region,
                    reason=f"ringback ({region})",
                )
            return
        self._decide(
            "unknown",
            t_end,
            events,
            progress=kind,
            progress_region=region,
            reason=f"{kind} tone ({region})",
        )
