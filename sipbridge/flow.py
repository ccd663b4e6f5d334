"""What to do with an answered (or ringing) call: the per-attempt decision logic that
connects the agent, walks IVRs, leaves voicemail messages and ends calls on what
detection heard. Pure: events in, actions out; the call manager executes the actions.

States (one attempt)::

    ringing --answer--> answered --+--(connect_on answer)----------> connecting -> bridged
                                   +--(connect_on human: wait)-----> awaiting_person
                                   +--(IVR digits)--> ivr_digits --> holding -> connecting
    awaiting_person --human--> connecting; --machine--> voicemail policy
    ivr_digits: the IVR script's steps one at a time (SendDigits / SayPrompt, each after
    the previous one ended); a repeated menu (ivr_digits, holding) -> the next of
    alternative_digits (back to ivr_digits), or ending when none is left
    leaving_message --playback done--> ending
    any --SIT / busy / reorder / fax / machine policy / IVR timeout--> ending
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sipbridge.callsettings import DetectionSettings, IvrSettings
from sipbridge.ivrscript import SayStep, Step, segments
from sipbridge.media.detect import Detection
from sipbridge.outcomes import (
    Termination,
    from_detection,
    from_progress_tone,
    from_sit,
)

IVR_REPEATED = Termination("failure", "IVR menu repeated", "ivr_repeat", True)
IVR_TIMEOUT = Termination("failure", "IVR/hold time limit exceeded", "ivr_timeout", True)
HINT_REASONS = {"operator": "answered by operator", "screening": "answered by screening assistant"}
MESSAGE_LEFT = Termination("success", "voicemail message left", "message_left", False)
SAY_FAILED = "IVR say step not played"


@dataclass(frozen=True)
class DialAgent:
    answered_by: str | None
    # "operator" / "screening" when the agent is dialled for one (connect_on: human): its
    # INVITE says so (X-Sipbridge-Answered-By-Hint); it opens differently to a screener
    hint: str | None = None


@dataclass(frozen=True)
class TellAgent:
    """The detection result became known (or changed) after the agent was dialled: tell
    the agent leg (a SIP INFO, see sipbridge.routing.detection_info)."""

    answered_by: str
    hint: str | None
    final: bool


@dataclass(frozen=True)
class SendDigits:
    digits: str
    duration_ms: int
    gap_ms: int


@dataclass(frozen=True)
class SayPrompt:
    """Play a ``say`` step's WAV (a name in media.dir) into the carrier leg; with
    ``mark_menu``, what was heard until now is the menu a repeat is compared with (a
    script that starts with a ``say``: no digits were sent before it)."""

    path: str
    mark_menu: bool = False


@dataclass(frozen=True)
class StartHold:
    pass


@dataclass(frozen=True)
class WatchRepeat:
    """Watch the IVR phase for the menu heard again after the digits."""


@dataclass(frozen=True)
class PlayMessage:
    path: str


@dataclass(frozen=True)
class EndCall:
    """Hang up the carrier leg (the agent leg follows) and end with ``term``."""

    term: Termination


@dataclass(frozen=True)
class StartTimer:
    name: str  # "send_digits" | "ivr_timeout"
    delay_s: float


Action = (
    DialAgent
    | SendDigits
    | SayPrompt
    | StartHold
    | PlayMessage
    | EndCall
    | StartTimer
    | TellAgent
    | WatchRepeat
)


@dataclass
class CallFlow:
    """Decisions for one attempt of one call."""

    detection: DetectionSettings
    ivr: IvrSettings | None = None
    state: str = "ringing"
    answered_by: str | None = None
    agent_dialled: bool = False
    # The agent answered while this attempt was connecting it: what makes an answered
    # call a success (with a left voicemail message, see MESSAGE_LEFT).
    agent_connected: bool = False
    # What the agent was told (at its dial, or by TellAgent), and what waits for its answer.
    agent_told: tuple[str, str | None] | None = None
    tell_pending: TellAgent | None = None
    settle_started: bool = False  # the machine_settle timer runs (or ran)
    # The hold listener heard the person after the IVR: the answer-phase detector, still
    # listening from the answer, takes their later words for the IVR speaking again.
    hold_heard_person: bool = False
    # The IVR script running: its steps (None: none runs), the next one, the step whose
    # end is awaited ("digits" / "say"), which script (0: send_digits, n: the n-th of
    # alternative_digits), and a script to start once the awaited step ends.
    script: list[Step] | None = None
    script_step: int = 0
    awaiting: str | None = None
    script_index: int = 0
    restart_pending: bool = False
    history: list[str] = field(default_factory=list)

    def _to(self, state: str) -> None:
        if state != self.state:
            self.history.append(f"{self.state} -> {state}")
            self.state = state

    def _end(self, term: Termination) -> list[Action]:
        if self.state == "ending":
            return []
        self._to("ending")
        return [EndCall(term)]

    def _connect(self, hint: str | None = None) -> list[Action]:
        if self.agent_dialled or self.state == "ending":
            return []
        self.agent_dialled = True
        self._to("connecting")
        if self.answered_by is not None:
            self.agent_told = (self.answered_by, hint)
        return [DialAgent(self.answered_by, hint)]

    def _tell_agent(self, det: Detection) -> list[Action]:
        """The agent was dialled before the result was known (``connect_on: answer``) or
        the result changed since: tell it, once it has answered."""
        if not self.agent_dialled or self.state == "ending" or det.answered_by == "sit":
            return []
        key = (det.answered_by, det.hint)
        if key == self.agent_told:
            return []
        tell = TellAgent(det.answered_by, det.hint, det.final)
        if not self.agent_connected:
            self.tell_pending = tell
            return []
        self.agent_told = key
        return [tell]

    # ---- events ----------------------------------------------------------------------

    def on_answered(self) -> list[Action]:
        if self.state != "ringing":
            return []
        self._to("answered")
        if self.ivr is not None and self.ivr.send_digits:
            self._to("ivr_digits")
            watch: list[Action] = [WatchRepeat()] if self.ivr.on_menu_repeat != "ignore" else []
            return [
                StartTimer("ivr_timeout", self.ivr.max_ivr_s),
                StartTimer("send_digits", self.ivr.send_digits_delay_s),
                *watch,
            ]
        if self.ivr is not None and self.ivr.hold:
            self._to("holding")
            return [StartTimer("ivr_timeout", self.ivr.max_ivr_s), StartHold()]
        if self.detection.connect_on == "answer" or not self.detection.answer:
            return self._connect()
        self._to("awaiting_person")
        return []

    def on_timer(self, name: str) -> list[Action]:
        if name == "machine_settle":
            if self.answered_by in ("machine", "ivr") and self.state in (
                "awaiting_person",
                "connecting",
                "bridged",
            ):
                return self._end(
                    from_detection(self.answered_by, retry=self.detection.machine_action == "retry")
                )
            return []
        if name == "ivr_timeout" and self.state in ("ivr_digits", "holding"):
            return self._end(IVR_TIMEOUT)
        if name == "send_digits" and self.state == "ivr_digits" and self.ivr is not None:
            if self.awaiting is not None:  # a step of the abandoned script still runs
                self.restart_pending = True
                return []
            return self._start_script()
        return []

    # ---- the IVR script ----------------------------------------------------------------

    def _start_script(self) -> list[Action]:
        assert self.ivr is not None and self.ivr.send_digits is not None
        i = self.script_index
        self.script = segments(
            self.ivr.send_digits if i == 0 else self.ivr.alternative_digits[i - 1]
        )
        self.script_step = 0
        return self._next_step()

    def _next_step(self) -> list[Action]:
        """Start the script's next step, or go on after the IVR script (hold / agent)."""
        assert self.ivr is not None and self.script is not None
        if self.script_step < len(self.script):
            step = self.script[self.script_step]
            self.script_step += 1
            if isinstance(step, SayStep):
                self.awaiting = "say"
                first = self.script_step == 1 and self.ivr.on_menu_repeat != "ignore"
                return [SayPrompt(step.say, mark_menu=first)]
            self.awaiting = "digits"
            return [SendDigits(step, self.ivr.digit_duration_ms, self.ivr.digit_gap_ms)]
        self.script = None
        if self.ivr.hold:
            self._to("holding")
            return [StartHold()]
        return self._connect()

    def _step_done(self, kind: str) -> list[Action]:
        if self.state != "ivr_digits" or self.awaiting != kind:
            return []
        self.awaiting = None
        if self.restart_pending:
            self.restart_pending = False
            return self._start_script()
        if self.script is None:
            return []  # an abandoned script's last step ended: the next one is timed
        return self._next_step()

    def _on_menu_repeat(self) -> list[Action]:
        """The menu heard before the digits came again after them (a looping IVR)."""
        ivr = self.ivr
        if self.state not in ("ivr_digits", "holding") or ivr is None:
            return []
        if ivr.on_menu_repeat == "ignore":
            return []
        if ivr.on_menu_repeat == "next_digits" and self.script_index < len(ivr.alternative_digits):
            # Try the next digit string: the IVR replays its menu now; send it as long
            # after the repeat as the first was sent after the answer, and watch again
            # (the new watch's menu is what is heard until those digits).
            self.script_index += 1
            self.script = None
            self._to("ivr_digits")
            return [WatchRepeat(), StartTimer("send_digits", ivr.send_digits_delay_s)]
        return self._end(IVR_REPEATED)

    def on_digits_sent(self) -> list[Action]:
        return self._step_done("digits")

    def on_detection(self, phase: str, det: Detection) -> list[Action]:
        answered_by = det.answered_by
        if self.state == "ending":
            return []
        # Special information tones and busy/reorder cadences end the attempt in any
        # phase (some networks answer before playing them).
        if answered_by == "sit":
            # a known spoken intercept (prompt library) is the SIT IC outcome
            spoken = det.prompt_label in ("not_in_service", "intercept")
            return self._end(from_sit(det.sit_code or ("IC" if spoken else None)))
        if det.progress:
            term = from_progress_tone(str(det.progress))
            return self._end(term) if term is not None else []
        if phase == "repeat":
            return self._on_menu_repeat()
        if phase == "hold":
            if self.state == "holding" and answered_by == "human":
                self.answered_by = "human"
                self.hold_heard_person = True
                return self._connect()
            return []
        if phase != "answer":
            return []
        if self.state in ("ivr_digits", "holding") or self.hold_heard_person:
            # walking an IVR: the answer-phase verdict is expected to be machine; after the
            # hold step heard the person it is about them ("machine spoke again": ivr) and
            # must not re-label the call, tell the agent, or end it by the machine policy
            return []
        self.answered_by = answered_by or None
        actions = self._on_answer_result(det)
        return actions + self._tell_agent(det)

    def _on_answer_result(self, det: Detection) -> list[Action]:
        answered_by = det.answered_by
        if answered_by == "fax":
            return self._end(from_detection("fax")) if self.detection.hangup_on_fax else []
        if answered_by in ("machine", "ivr"):
            return self._on_machine(det.final, det.beep_ms, det.beep_end_ms)
        if answered_by == "human" and det.hint in ("operator", "screening"):
            return self._on_hinted_human(det.hint)
        if answered_by == "human" and self.state == "awaiting_person":
            return self._connect()
        if answered_by in ("silence", "unknown") and self.state == "awaiting_person":
            return self._end(
                Termination("failure", f"no person detected ({answered_by})", "no_person", True)
            )
        return []

    def _on_hinted_human(self, hint: str) -> list[Action]:
        action = (
            self.detection.operator_action
            if hint == "operator"
            else self.detection.screening_action
        )
        if action == "connect":
            return self._connect(hint) if self.state == "awaiting_person" else []
        return self._end(Termination("failure", HINT_REASONS[hint], hint, action == "retry"))

    def _on_machine(
        self, final: bool, beep_ms: int | None = None, beep_end_ms: int | None = None
    ) -> list[Action]:
        action = self.detection.machine_action
        if action == "connect":
            return self._connect() if self.state == "awaiting_person" else []
        if action in ("hangup", "retry"):
            if not final:
                # A provisional machine may still become an operator or a screener: act
                # after machine_settle_s unless a later result came (see on_timer).
                if self.detection.wait_for_beep or self.settle_started:
                    return []
                self.settle_started = True
                if self.detection.machine_settle_s > 0:
                    return [StartTimer("machine_settle", self.detection.machine_settle_s)]
            return self._end(from_detection(self.answered_by or "machine", retry=action == "retry"))
        # leave_message: the message starts at the beep's END (a mailbox records from
        # there; a message started during the tone is clipped), which the detector reports
        # in an ``update`` after the final beep decision; or when the greeting ended
        # without a beep (final, no beep_ms).
        if not final or self.state in ("leaving_message", "ending"):
            return []
        if beep_ms is not None and beep_end_ms is None:
            return []
        assert self.detection.message_wav
        self._to("leaving_message")
        return [PlayMessage(self.detection.message_wav)]

    def on_playback_done(self, error: str = "") -> list[Action]:
        if self.state == "ivr_digits" and self.awaiting == "say":
            if error:
                return self._end(
                    Termination("failure", SAY_FAILED, "media_error", True, None, error)
                )
            return self._step_done("say")
        if self.state != "leaving_message":
            return []
        if error:
            return self._end(
                Termination(
                    "failure", "voicemail message not played", "message_error", True, None, error
                )
            )
        return self._end(MESSAGE_LEFT)

    def on_agent_answered(self) -> list[Action]:
        if self.state == "connecting":
            self._to("bridged")
            self.agent_connected = True
            tell, self.tell_pending = self.tell_pending, None
            if tell is not None and (tell.answered_by, tell.hint) != self.agent_told:
                self.agent_told = (tell.answered_by, tell.hint)
                return [tell]
        return []

    def on_agent_failed(self, sip_status: int | None, reason: str) -> list[Action]:
        if self.state in ("ending",):
            return []
        return self._end(agent_failure(sip_status, reason))


def agent_failure(sip_status: int | None, reason: str, detail: str = "") -> Termination:
    """The agent leg ended without answering (4xx/5xx/6xx, timeout), or could not be
    dialled (``detail`` says why); the SIP status and phrase go to ``detail``."""
    what = f"SIP {sip_status} {reason}".strip() if sip_status else (reason or "no answer")
    return Termination(
        "failure", "agent leg failed", "agent_error", True, sip_status, detail or what
    )


__all__ = [
    "Action",
    "CallFlow",
    "DialAgent",
    "EndCall",
    "PlayMessage",
    "SayPrompt",
    "SendDigits",
    "StartHold",
    "StartTimer",
    "TellAgent",
    "WatchRepeat",
    "agent_failure",
]
