"""The per-call flow: agent connection, voicemail policies, IVR walking (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from sipbridge.config import DetectionSettings, IvrSettings, check_dtmf
from sipbridge.flow import (
    CallFlow,
    DialAgent,
    EndCall,
    PlayMessage,
    SendDigits,
    StartHold,
    StartTimer,
    TellAgent,
    WatchRepeat,
)
from tests.doubles import detection as det


def flow(**det) -> CallFlow:
    return CallFlow(DetectionSettings(**det))


def test_connect_on_answer_dials_agent_at_once():
    f = flow()
    assert f.on_answered() == [DialAgent(None)]
    assert f.on_detection("answer", det("human")) == []
    f.on_agent_answered()
    assert f.history == ["ringing -> answered", "answered -> connecting", "connecting -> bridged"]


def test_connect_on_human_waits_for_the_decision():
    f = flow(connect_on="human")
    assert f.on_answered() == []
    assert f.on_detection("answer", det("human")) == [DialAgent("human")]


def test_machine_hangup_after_agent_connected_on_answer():
    f = flow(machine_action="hangup")
    f.on_answered()
    (end,) = f.on_detection("answer", det("machine", final=True))
    assert isinstance(end, EndCall) and end.term.reason == "answered by machine"
    assert f.on_detection("answer", det("machine", final=True)) == []


def test_machine_connect_passes_result_to_agent():
    f = flow(connect_on="human", machine_action="connect")
    f.on_answered()
    assert f.on_detection("answer", det("machine", final=False)) == [DialAgent("machine")]


def test_leave_message_waits_for_beep_then_plays_and_succeeds():
    # message_wav names a file in media.dir; the call manager resolves and re-checks it
    wav = "m.wav"
    f = flow(connect_on="human", machine_action="leave_message", message_wav=wav)
    f.on_answered()
    assert f.on_detection("answer", det("machine", final=False)) == []
    # the beep's onset: the tone is still sounding, the message waits for its end
    assert f.on_detection("answer", det("machine", final=True, beep_ms=5000)) == []
    assert f.on_detection("answer", det("machine", final=True, beep_ms=5000, beep_end_ms=5400)) == [
        PlayMessage(wav)
    ]
    assert (
        f.on_detection("answer", det("machine", final=True, beep_ms=5000, beep_end_ms=5400)) == []
    )
    (end,) = f.on_playback_done()
    assert isinstance(end, EndCall)
    assert (end.term.result, end.term.reason) == ("success", "voicemail message left")


def test_leave_message_without_a_beep_plays_when_the_greeting_ends():
    f = flow(connect_on="human", machine_action="leave_message", message_wav="m.wav")
    f.on_answered()
    assert f.on_detection("answer", det("machine", final=True)) == [PlayMessage("m.wav")]


def test_leave_message_needs_a_file_and_human_connect(tmp_path: Path):
    with pytest.raises(ValidationError, match="message_wav"):
        DetectionSettings(connect_on="human", machine_action="leave_message")
    with pytest.raises(ValidationError, match="connect_on"):
        DetectionSettings(machine_action="leave_message", message_wav="m.wav")
    with pytest.raises(ValidationError, match="not a file name"):
        DetectionSettings(
            connect_on="human",
            machine_action="leave_message",
            message_wav=str(tmp_path / "nope.wav"),
        )


def test_sit_and_busy_end_in_any_phase():
    f = flow()
    (end,) = f.on_detection("early", det("sit", sit_code="VC"))
    assert isinstance(end, EndCall)
    assert end.term.reason == "number not in service (SIT VC)"
    g = flow()
    (end,) = g.on_detection("early", det("unknown", progress="reorder"))
    assert isinstance(end, EndCall)
    assert end.term.kind == "carrier_error"
    assert flow().on_detection("early", det("unknown", progress="ringback")) == []


def test_ivr_digits_then_hold_then_person():
    f = CallFlow(
        DetectionSettings(),
        IvrSettings(send_digits="1w2#", hold=True, send_digits_delay_s=0.5, max_ivr_s=90),
    )
    assert f.on_answered() == [
        StartTimer("ivr_timeout", 90),
        StartTimer("send_digits", 0.5),
        WatchRepeat(),
    ]
    # the answer-phase verdict on an IVR is ignored while walking it
    assert f.on_detection("answer", det("machine", final=True)) == []
    assert f.on_timer("send_digits") == [SendDigits("1w2#", 160, 80)]
    assert f.on_digits_sent() == [StartHold()]
    assert f.on_detection("hold", det("unknown", reason="music")) == []
    assert f.on_detection("hold", det("human")) == [DialAgent("human")]
    assert f.on_timer("ivr_timeout") == []  # connected: the escape hatch no longer applies


@pytest.mark.parametrize("action", ["connect", "hangup", "retry"])
def test_after_the_hold_heard_the_person_answer_phase_verdicts_are_ignored(action: str):
    """The answer-phase detector keeps listening; once the hold step heard the person it
    takes their later words for "the machine spoke again" (ivr). That must not end the call
    by the machine policy, re-label it or tell the agent (it did all three)."""
    f = CallFlow(
        DetectionSettings.model_validate({"machine_action": action}), IvrSettings(hold=True)
    )
    f.on_answered()
    assert f.on_detection("answer", det("machine", final=False)) == []
    assert f.on_detection("hold", det("human")) == [DialAgent("human")]
    assert f.on_agent_answered() == []
    assert f.on_detection("answer", det("ivr", final=True)) == []
    assert f.on_detection("answer", det("machine", final=True)) == []
    assert f.answered_by == "human" and f.state != "ending"


def test_ivr_escape_hatch():
    f = CallFlow(DetectionSettings(), IvrSettings(hold=True, max_ivr_s=30))
    assert f.on_answered() == [StartTimer("ivr_timeout", 30), StartHold()]
    (end,) = f.on_timer("ivr_timeout")
    assert isinstance(end, EndCall)
    assert (end.term.reason, end.term.retryable) == ("IVR/hold time limit exceeded", True)


def test_agent_failure_ends_call():
    f = flow()
    f.on_answered()
    (end,) = f.on_agent_failed(503, "Service Unavailable")
    assert isinstance(end, EndCall)
    assert (end.term.reason, end.term.detail) == ("agent leg failed", "SIP 503 Service Unavailable")


def test_silence_when_waiting_for_a_person():
    f = flow(connect_on="human")
    f.on_answered()
    (end,) = f.on_detection("answer", det("silence"))
    assert isinstance(end, EndCall)
    assert end.term.reason == "no person detected (silence)"


@pytest.mark.parametrize("bad", ["12x", "", "1 2", "#*E"])
def test_dtmf_validation_names_the_character(bad: str):
    with pytest.raises(ValueError) as ei:
        check_dtmf(bad)
    assert (
        "empty" if not bad else repr(next(c for c in bad if c not in "0123456789*#ABCDabcdwW"))
    ) in str(ei.value)


def test_agent_dialled_at_answer_is_told_the_result_once_it_answered():
    f = flow()
    assert f.on_answered() == [DialAgent(None)]
    # decided while the agent still rings: held until it answers
    assert f.on_detection("answer", det("machine", final=False)) == []
    assert f.on_detection("answer", det("human", hint="operator")) == []
    assert f.on_agent_answered() == [TellAgent("human", "operator", True)]
    assert f.on_detection("answer", det("human", hint="operator")) == []  # nothing new
    assert f.on_detection("answer", det("human", hint="screening")) == [
        TellAgent("human", "screening", True)
    ]


def test_agent_dialled_on_human_is_not_told_again():
    f = flow(connect_on="human")
    f.on_answered()
    assert f.on_detection("answer", det("human")) == [DialAgent("human")]
    f.on_agent_answered()
    assert f.on_detection("answer", det("human")) == []


def test_provisional_machine_waits_for_an_operator_or_screener_before_hanging_up():
    f = flow(machine_action="hangup", connect_on="human")
    f.on_answered()
    # ~1.8 s into a long greeting: no hangup yet, a settle timer instead
    assert f.on_detection("answer", det("machine", final=False)) == [
        StartTimer("machine_settle", 10.0)
    ]
    assert f.on_detection("answer", det("machine", final=False)) == []  # one timer
    # the greeting was a receptionist's: connected, and the timer does nothing
    assert f.on_detection("answer", det("human", hint="operator")) == [
        DialAgent("human", "operator")
    ]
    assert f.on_timer("machine_settle") == []


def test_provisional_machine_acts_at_the_settle_timer_or_the_final_result():
    f = flow(machine_action="retry", connect_on="human")
    f.on_answered()
    f.on_detection("answer", det("machine", final=False))
    (end,) = f.on_timer("machine_settle")
    assert isinstance(end, EndCall) and end.term.retryable
    assert end.term.reason == "answered by machine"
    g = flow(machine_action="hangup", connect_on="human")
    g.on_answered()
    g.on_detection("answer", det("machine", final=False))
    (end,) = g.on_detection("answer", det("machine", final=True, beep_ms=3000))
    assert isinstance(end, EndCall) and not end.term.retryable
    h = flow(machine_action="hangup", connect_on="human", machine_settle_s=0)
    h.on_answered()
    (end,) = h.on_detection("answer", det("machine", final=False))
    assert isinstance(end, EndCall)  # 0: the old behaviour, act on the provisional result


@pytest.mark.parametrize(
    "hint,key,reason",
    [
        ("operator", "operator_action", "answered by operator"),
        ("screening", "screening_action", "answered by screening assistant"),
    ],
)
def test_operator_and_screening_actions(hint: str, key: str, reason: str):
    f = flow(connect_on="human")
    f.on_answered()
    # dialled because of who answered: the INVITE says so (hint included), no INFO after
    assert f.on_detection("answer", det("human", hint=hint)) == [DialAgent("human", hint)]
    assert f.on_agent_answered() == []
    g = flow(connect_on="human", **{key: "retry"})
    g.on_answered()
    (end,) = g.on_detection("answer", det("human", hint=hint))
    assert isinstance(end, EndCall)
    assert (end.term.reason, end.term.kind, end.term.retryable) == (reason, hint, True)
    with pytest.raises(ValidationError, match=key):
        DetectionSettings.model_validate({key: "leave_message"})
    with pytest.raises(ValidationError, match="machine_settle_s"):
        DetectionSettings(machine_settle_s=31)


def test_a_repeated_ivr_menu_ends_the_call_retryable_unless_ignored():
    f = CallFlow(DetectionSettings(), IvrSettings(send_digits="1", hold=True))
    f.on_answered()
    (end,) = f.on_detection("repeat", det("ivr", ivr_hint=True))
    assert isinstance(end, EndCall)
    assert (end.term.reason, end.term.retryable) == ("IVR menu repeated", True)
    g = CallFlow(DetectionSettings(), IvrSettings(send_digits="1", on_menu_repeat="ignore"))
    assert WatchRepeat() not in g.on_answered()
    assert g.on_detection("repeat", det("ivr")) == []
    with pytest.raises(ValidationError, match="on_menu_repeat"):
        IvrSettings(on_menu_repeat="next")  # type: ignore[arg-type]  # deliberately invalid
