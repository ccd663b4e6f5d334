"""Answer-mode rules of the :class:`~sipbridge.media.detect.Detector`: human, machine, IVR,
operator and screening from the timing of the greeting's words and what the line's noise floor
says about the voice (live or recorded). State lives in the detector; this is the mixin that
owns the rules (split from detect.py by concern; see that module's docstring for the rules).
"""

from __future__ import annotations

from typing import Any, Literal

from sipbridge.media.feeder import FrameFeeder
from sipbridge.media.frames import FloatArray
from sipbridge.media.liveness import FloorTracker, rises_at_end
from sipbridge.media.result import AnsweredBy, Detection, DetectionEvent, TimelineEntry
from sipbridge.media.thresholds import DetectionConfig
from sipbridge.media.tones import ToneRunTracker
from sipbridge.media.vad import SpeechTracker

# A long greeting over an audible room waits for this many pause frames (the ~13-frame lead-in
# before the first word plus 400 ms of pauses) before its floor is judged live or not.
_LIVE_PENDING_FRAMES = 35
# Percentile of the pause frames' levels taken as the room's floor between a live talker's
# words (their breath fills the other pauses)
_ROOM_PCT = 20.0


class AnswerRules(FrameFeeder):
    """Decisions after the answer from the greeting's words (mixin of the detector)."""

    cfg: DetectionConfig
    mode: Literal["answer", "early"]
    keep_timeline: bool
    timeline: list[TimelineEntry]
    _speech: SpeechTracker
    _runs: ToneRunTracker
    _floor: FloorTracker
    _greeting_start: int | None
    _last_word_end: int | None
    _last_word_start: int
    _words: int
    _tone_activity_ms: int
    _machine_at: int | None
    _ref_ms: int
    _live_long: bool
    _live_pending: bool
    _question: tuple[int, bool] | None
    _last_word_audio: FloatArray | None

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

    def _known_prompt(self) -> dict[str, Any]:
        """The library prompt behind a provisional machine result, kept in the final one."""
        r = self._result
        if r is None or r.prompt is None or r.answered_by != "machine":
            return {}
        return {"hint": r.hint, "prompt": r.prompt, "prompt_label": r.prompt_label}

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
            **self._known_prompt(),
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
        # the greeting's length is first word to last: counted while a word goes on, not
        # through the silence after it (where the operator is waiting for us)
        if self._live_long and sp.in_word and t_end - gs > cfg.operator_max_greeting_ms:
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
            if verdict != "live" and self._floor.verdict(pct=_ROOM_PCT) == "live":
                # the room heard before the first word is back in the pauses between words
                # (a fifth of them at least); what lifts their median is the talker's own
                # breath and word tails, which come and go — a recording's bed would lift
                # every pause frame, a clean prompt's would drop them
                verdict = "live"
            pre = self._floor.pre_db
            if verdict == "live":
                # a live voice that talks on: wait for it to stop and listen (operator)
                self._live_long = True
                self._note(t_end, "live_voice", pre_db=pre)
            elif (
                verdict != "recorded"
                and pre is not None
                and self._floor.gap_frames < _LIVE_PENDING_FRAMES
                and self._floor.room_heard()
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
        if (
            lw is not None
            and sp.state == 0
            and t_end - lw >= cfg.after_greeting_silence_ms
            and not self._beep_may_be_starting()
        ):
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
            wait = self._operator_wait(lw) if self._live_long else 0
            if self._live_long and t_end - lw >= wait:
                # the "live" floor was the line's comfort noise, or a recording's bed that
                # stops with it (a live room never drops to digital silence)
                cn = self._floor.own_silence(lw, cfg.recorded_line_dbfs)
                why = self._own_why(cn) if cn is not None else self._dead_after(lw)
                if why:
                    self._live_long = False
                    self._machine(t_end, f"recorded prompt ({why})", events)
                    return
                self._decide(
                    "human",
                    t_end,
                    events,
                    greeting_end_ms=lw,
                    hint="operator",
                    reason=f"{span} ms greeting in a live voice (noise floor "
                    f"{self._floor.pre_db:.0f} dBFS unchanged under it), then "
                    f"{wait} ms silence: operator",
                )
                return
        if t_end - gs >= cfg.total_analysis_ms and not self._live_long:
            self._machine(t_end, "speech still undecided at total analysis time", events)

    def _operator_wait(self, last_word_end: int) -> int:
        """Silence after a live-sounding long greeting (ending at ``last_word_end``) before
        it is an operator: short when the line's floor lies far enough under the speech to
        have shown a recording's bed (or the greeting ends in a question), else long enough
        for a late beep (see the thresholds)."""
        cfg = self.cfg
        speech, pre = self._floor.speech_db(), self._floor.pre_db
        clear = speech is not None and pre is not None and speech - pre >= cfg.operator_clear_db
        if clear or self._ends_in_question(last_word_end):
            return cfg.operator_silence_ms
        return cfg.operator_masked_silence_ms

    def _beep_may_be_starting(self) -> bool:
        """A tone in the beep band is sounding but not yet long enough to be a beep: a
        human decision waits for it (at most ``beep_min_ms``), or a beep that starts just
        before the silence is up would lose to "human" by a frame or two."""
        run = self._runs.current
        cfg = self.cfg
        return (
            run is not None
            and cfg.beep_min_hz <= run.hz <= cfg.beep_max_hz
            and run.duration_ms < cfg.beep_min_ms
        )

    def _recorded_why(self, last_word_end: int) -> str:
        """Why a short greeting ending at ``last_word_end`` is a recording ('' if not)."""
        if self._floor.verdict(last_word_end + 200) == "recorded":
            return "the line's noise floor changed under it"
        cn = self._floor.own_silence(last_word_end, self.cfg.recorded_line_dbfs)
        if cn is not None:
            return self._own_why(cn)
        return self._dead_after(last_word_end)

    def _dead_after(self, last_word_end: int) -> str:
        """'then digital silence' when the line drops to it after the greeting (a
        recording's bed, or its clean end, then nothing); '' otherwise."""
        after = self._floor.after_db(last_word_end + 300)
        if after is not None and after <= self.cfg.recorded_line_dbfs:
            return f"then digital silence ({after:.0f} dBFS): no microphone on the line"
        return ""

    @staticmethod
    def _own_why(cn_dbfs: float) -> str:
        return f"its own digital silence, then the line's comfort noise ({cn_dbfs:.0f} dBFS)"

    def _screening_ok(self, last_word_end: int) -> bool:
        """A recorded/synthetic greeting (not a live voice) whose last word rises, long enough
        to be an assistant's (it says the call is screened and asks for a name and a reason)
        and said once: a machine that already spoke again after a pause is an IVR asking for
        input ("Mailbox?" … "Password?"), and a short prompt ending in a question is a menu's."""
        if self._result is not None and (
            self._result.answered_by == "ivr" or self._result.prompt is not None
        ):
            return False  # (a prompt the deployer's library names a mailbox stays one)
        gs = self._greeting_start
        if gs is None or last_word_end - gs < self.cfg.screening_min_greeting_ms:
            return False
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
