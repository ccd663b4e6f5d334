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
from typing import Any, Literal

import numpy as np

from sipbridge.media.cadence import CadenceTracker, best_cp_signature
from sipbridge.media.feeder import FrameFeeder
from sipbridge.media.frames import (
    FRAME_MS,
    FloatArray,
    dbfs,
)
from sipbridge.media.liveness import FloorTracker, rises_at_end
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
# A long greeting over an audible room waits for this many pause frames (the ~13-frame lead-in
# before the first word plus 400 ms of pauses) before its floor is judged live or not.
_LIVE_PENDING_FRAMES = 35


class Detector(FrameFeeder):
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
        self._tones = ToneAnalyzer()
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
        self._floor = FloorTracker()
        # known prompts (an operator-supplied library): recognised by fingerprint
        self._prompts = prompts.matcher() if prompts is not None and len(prompts) else None
        self._live_long = False  # a long greeting in a live voice (operator candidate)
        self._live_pending = False  # long greeting, audible room, no pause yet to compare
        self._last_word_start = 0
        self._question: tuple[int, bool] | None = None  # (last word end, rises?)
        self._last_word_audio: FloatArray | None = None
        self._audio: list[FloatArray] = []  # the last 1.6 s, for the last word's pitch

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

    def _note(self, t_ms: int, kind: str, **detail: Any) -> None:
        if self.keep_timeline:
            self.timeline.append(TimelineEntry(t_ms, kind, detail))

    def _decide(
        self,
        answered_by: AnsweredBy,
        t_end: int,
        events: list[DetectionEvent],
        final: bool = True,
        kind: Literal["decision", "update", "progress"] = "decision",
        **kw: Any,
    ) -> None:
        det = Detection(answered_by=answered_by, decided_at_ms=t_end, final=final, **kw)
        self._result = det
        if final:
            self._done = True
        events.append(DetectionEvent(kind, t_end, det))
        self._note(t_end, "decision" if kind != "progress" else "progress", **det.to_dict())

    def _process(self, pcm: bytes, x: FloatArray | None, events: list[DetectionEvent]) -> None:
        cfg = self.cfg
        t = self._t
        t_end = t + FRAME_MS
        self._t = t_end
        if x is None:
            x = np.frombuffer(pcm, dtype="<i2") * (1.0 / 32768.0)
        level = dbfs(x)
        ta = self._tones
        ta.analyze(x, level >= cfg.tone_min_dbfs)  # cp_power is read only above that level
        if self._beep_run is not None:
            self._follow_beep(
                single_tone=ta.purity >= cfg.tone_purity and level >= cfg.tone_min_dbfs,
                hz=ta.peak_hz,
                purity=ta.purity,
                t=t,
                events=events,
            )
            return
        is_tone = ta.purity >= cfg.tone_purity and level >= cfg.tone_min_dbfs
        sig = (
            best_cp_signature(ta.cp_power, cfg.cp_purity, cfg.cp_max_twist_db)
            if level >= cfg.tone_min_dbfs
            else None
        )
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
            if self._done:
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
            floor_db = dbfs(x - x.mean()) if quiet and level < -60.0 else level
            self._floor.update(t, floor_db, quiet)
            self._audio.append(x)
            if len(self._audio) > 80:
                del self._audio[0]
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
            if self.mode == "answer" and self._audio:
                # keep the word (up to its last 1.5 s) for its pitch, asked for later
                audio = np.concatenate(self._audio)
                end = audio.size - (t_end - sp.word_end_ms) * 8
                start = max(0, end - max(0, sp.word_end_ms - self._last_word_start) * 8)
                self._last_word_audio = audio[start:end] if end > start else None
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

    def _on_word_start(self, start: int, t_end: int, events: list[DetectionEvent]) -> None:
        if self.mode != "answer":
            return
        cfg = self.cfg
        if self._machine_at is not None:
            lw = self._last_word_end
            if lw is not None and start - lw >= cfg.ivr_resume_gap_ms:
                self._decide(
                    "ivr",
                    t_end,
                    events,
                    kind="update",
                    greeting_end_ms=lw,
                    ivr_hint=True,
                    reason=f"machine spoke again after {start - lw} ms pause (menu prompts)",
                )
                return
        if self._greeting_start is None:
            self._greeting_start = start
            self._floor.greeting_started(start)
        self._last_word_start = start
        self._words += 1

    def _finalise_machine(
        self, t_end: int, gend: int | None, why: str, events: list[DetectionEvent]
    ) -> None:
        self._decide(
            "machine",
            t_end,
            events,
            kind="update",
            greeting_end_ms=gend if gend is not None else self._last_word_end,
            ivr_hint=True,
            reason=f"machine, no beep ({why}); could be an IVR",
        )

    def _answer_rules(self, t_end: int, events: list[DetectionEvent]) -> None:
        cfg = self.cfg
        sp = self._speech
        if self._machine_at is not None:
            lw = self._last_word_end
            if (
                not sp.in_word
                and lw is not None
                and self._runs.current is None
                and t_end - lw >= cfg.screening_silence_ms
                and self._screening_ok(lw)
            ):
                self._decide(
                    "human",
                    t_end,
                    events,
                    kind="update",
                    greeting_end_ms=lw,
                    hint="screening",
                    reason="recorded greeting ending in a question, then "
                    f"{cfg.screening_silence_ms} ms silence and no beep: "
                    "call-screening assistant",
                )
                return
            if (
                not sp.in_word
                and lw is not None
                and t_end - lw >= cfg.beep_timeout_ms
                and (self._runs.current is None)
            ):
                self._finalise_machine(
                    t_end, lw, f"{cfg.beep_timeout_ms} ms after greeting", events
                )
            elif t_end >= cfg.max_beep_wait_ms:
                self._finalise_machine(t_end, None, "max beep wait", events)
            return
        gs = self._greeting_start
        if gs is None:
            since = t_end - self._ref_ms
            if self._tone_activity_ms == 0:
                if since >= cfg.initial_silence_ms and sp.state == 0:
                    after = " after ringback" if self._ref_ms else ""
                    self._decide(
                        "silence",
                        t_end,
                        events,
                        reason=f"no speech in {cfg.initial_silence_ms} ms{after}",
                    )
            elif since >= cfg.total_analysis_ms:
                self._decide(
                    "unknown", t_end, events, reason="no speech; unclassified tone or noise"
                )
            return
        if self._live_long and t_end - gs > cfg.operator_max_greeting_ms:
            self._live_long = False
            self._machine(
                t_end,
                f"greeting longer than {cfg.operator_max_greeting_ms} ms "
                "(too long for a person, even in a live-sounding voice)",
                events,
            )
            return
        if (
            t_end - gs > cfg.max_greeting_ms
            and not self._live_long
            and (sp.in_word or self._live_pending)
        ):
            verdict = self._floor.verdict()
            pre = self._floor.pre_db
            if verdict == "live":
                # a live voice that talks on: wait for it to stop and listen (operator)
                self._live_long = True
                self._note(t_end, "live_voice", pre_db=pre)
            elif (
                verdict != "recorded"
                and pre is not None
                and self._floor.gap_frames < _LIVE_PENDING_FRAMES
                and pre >= self._floor.cfg.live_floor_dbfs
                and t_end - gs < cfg.total_analysis_ms
            ):
                self._live_pending = True  # an audible room, no pause heard yet: wait for one
            else:
                self._machine(t_end, f"greeting longer than {cfg.max_greeting_ms} ms", events)
                return
            if self._words > cfg.max_words:
                self._machine(t_end, f"more than {cfg.max_words} words", events)
                return
        lw = self._last_word_end
        if lw is not None and sp.state == 0 and t_end - lw >= cfg.after_greeting_silence_ms:
            span = lw - gs
            if span <= cfg.max_greeting_ms and not self._live_long:
                why = self._recorded_why(lw)
                if why:
                    self._machine(t_end, f"short recorded prompt ({span} ms; {why})", events)
                    return
                self._decide(
                    "human",
                    t_end,
                    events,
                    greeting_end_ms=lw,
                    reason=f"{span} ms greeting then {cfg.after_greeting_silence_ms} ms silence",
                )
                return
            if self._live_long and t_end - lw >= cfg.operator_silence_ms * (
                1.0 if self._ends_in_question(lw) else 5.0 / 3.0
            ):
                self._decide(
                    "human",
                    t_end,
                    events,
                    greeting_end_ms=lw,
                    hint="operator",
                    reason=f"{span} ms greeting in a live voice (noise floor "
                    f"{self._floor.pre_db:.0f} dBFS unchanged under it), then "
                    f"{cfg.operator_silence_ms} ms silence: operator",
                )
                return
        if t_end - gs >= cfg.total_analysis_ms and not self._live_long:
            self._machine(t_end, "speech still undecided at total analysis time", events)

    def _recorded_why(self, last_word_end: int) -> str:
        """Why a short greeting ending at ``last_word_end`` is a recording ('' if not)."""
        if self._floor.verdict(last_word_end + 200) == "recorded":
            return "the line's noise floor changed under it"
        after = self._floor.after_db(last_word_end + 300)
        if after is not None and after <= self.cfg.recorded_line_dbfs:
            return f"then digital silence ({after:.0f} dBFS): no microphone on the line"
        return ""

    def _screening_ok(self, last_word_end: int) -> bool:
        """A recorded/synthetic greeting (not a live voice) whose last word rises."""
        if self._floor.verdict(last_word_end + 200) == "live":
            return False
        return self._ends_in_question(last_word_end)

    def _ends_in_question(self, last_word_end: int) -> bool:
        """Does the pitch rise at the end of the last word (ending at ``last_word_end``)?"""
        if self._question is not None and self._question[0] == last_word_end:
            return self._question[1]
        q = self._last_word_audio is not None and rises_at_end(self._last_word_audio)
        self._question = (last_word_end, q)
        return q

    def _machine(self, t_end: int, why: str, events: list[DetectionEvent]) -> None:
        self._machine_at = t_end
        self._decide("machine", t_end, events, final=False, reason=why)
