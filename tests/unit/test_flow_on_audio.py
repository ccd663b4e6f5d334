"""The call flow driven by the detector over whole generated calls, timers included (pure:
frames, detections and timers on one simulated clock). A bridge-driven campaign
(``connect_on: human``, ``machine_action: hangup``) must connect the agent to a receptionist
or a phone-side screening assistant whose greeting runs long enough to be provisionally
called a machine, not hang up on it when ``machine_settle_s`` (the default) runs out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sipbridge.config import DetectionSettings
from sipbridge.flow import Action, CallFlow, DialAgent, EndCall, StartTimer
from sipbridge.media.analyze import load_audio
from sipbridge.media.detect import Detector

Corpus = tuple[Path, dict[str, dict[str, Any]]]
FRAME = 160  # 20 ms at 8 kHz


def run_call(wav: Path, settings: DetectionSettings) -> tuple[Action | None, int, bool]:
    """(the action that connected or ended the call, when in ms, whether a provisional
    machine came first)."""
    x = load_audio(wav)
    flow = CallFlow(settings)
    det = Detector(mode="answer", keep_timeline=False)
    timers: list[tuple[int, str]] = []
    provisional = False

    def act(actions: list[Action], t_ms: int) -> Action | None:
        for a in actions:
            if isinstance(a, StartTimer):
                timers.append((t_ms + round(a.delay_s * 1000), a.name))
            elif isinstance(a, DialAgent | EndCall):
                return a
        return None

    act(flow.on_answered(), 0)
    for i in range(0, x.size - FRAME + 1, FRAME):
        t_ms = (i + FRAME) // 8
        for due, name in [tm for tm in timers if tm[0] <= t_ms]:
            timers.remove((due, name))
            if (done := act(flow.on_timer(name), due)) is not None:
                return done, due, provisional
        for ev in det.feed(x[i : i + FRAME]):
            d = ev.detection
            provisional |= d.answered_by == "machine" and not d.final
            if (done := act(flow.on_detection("answer", d), t_ms)) is not None:
                return done, t_ms, provisional
    return None, x.size // 8, provisional


@pytest.mark.parametrize("hint", ["screening", "operator"])
def test_long_greeting_of_a_screener_or_receptionist_is_connected_not_hung_up(
    regress_corpus: Corpus, hint: str
) -> None:
    out, labels = regress_corpus
    names = sorted(n for n, lab in labels.items() if lab.get("hint") == hint)
    assert names
    settings = DetectionSettings(connect_on="human", machine_action="hangup")
    for name in names:
        done, t_ms, _ = run_call(out / name, settings)
        assert done == DialAgent("human", hint), (name, done, t_ms)


def test_the_screeners_that_run_past_a_provisional_machine_are_in_the_corpus(
    regress_corpus: Corpus,
) -> None:
    """The case above is exercised: some screeners' greetings are provisionally a machine
    (the ones a short settle time hung up on), and those are hung up with a 4 s settle."""
    out, labels = regress_corpus
    names = sorted(n for n, lab in labels.items() if lab.get("hint") == "screening")
    short = DetectionSettings(connect_on="human", machine_action="hangup", machine_settle_s=4)
    runs = {n: run_call(out / n, short) for n in names}
    assert any(prov and isinstance(done, EndCall) for done, _, prov in runs.values()), runs
