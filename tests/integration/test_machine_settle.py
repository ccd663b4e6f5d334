"""``machine_settle_s`` over SIP: with ``machine_action: hangup`` (no ``wait_for_beep``) the
bridge acts on a provisional machine result only after the settle time, timed on the
carrier's wire (SIPp's 200 OK sent -> BYE received), and at once with 0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sipbridge.devtools.bridge import Stack
from sipbridge.devtools.sipp import SipMessage, SippUas, render_scenario, ulaw_wav
from tests.integration.test_agent_bridge import carrier_bridge

pytestmark = pytest.mark.integration

# a greeting without a beep: the provisional result (~2.3-7 s) comes long before the final
# one (~12 s, the greeting's end and the wait for a beep)
GREETING = "machine_14.wav"


def _wire_s(sipp: SippUas, call_sid: str) -> float:
    """Seconds from the carrier's 200 OK to the BYE it received, for ``call_sid``."""
    (invite,) = [m for m in sipp.received("INVITE") if m.header("X-PolyAI-Call-SID") == call_sid]

    def ours(m: SipMessage) -> bool:
        return m.call_id == invite.call_id

    bye = sipp.wait_for(lambda m: ours(m) and m.direction == "received" and m.method == "BYE")
    ok = next(
        m
        for m in sipp.messages()
        if ours(m)
        and m.direction == "sent"
        and m.status == 200
        and "INVITE" in (m.header("CSeq") or "")
    )
    assert ok.ts is not None and bye.ts is not None
    return bye.ts - ok.ts


def test_hangup_waits_machine_settle_s_after_a_provisional_machine(
    stack: Stack, tmp_path: Path, corpus: tuple[Path, dict[str, Any]]
) -> None:
    corpus_dir, _labels = corpus
    audio = ulaw_wav(corpus_dir / GREETING, tmp_path / "vm.wav")
    carrier = stack.sipp(
        render_scenario("uas_answer_play.xml.in", tmp_path / "vm.xml", AUDIO=str(audio))
    )
    bridge = carrier_bridge(stack, carrier, None)
    got: dict[float, tuple[float, float, float]] = {}
    for i, settle_s in enumerate((2.0, 0.0)):
        sid = bridge.trigger(
            to_number=f"+1212555018{i}",
            detection={
                "connect_on": "human",
                "machine_action": "hangup",
                "machine_settle_s": settle_s,
            },
        )
        body = bridge.wait_terminal(sid, timeout=20)
        assert (body["status"], body["reason"], body["answered_by"]) == (
            "failure",
            "answered by machine",
            "machine",
        ), body
        dets = [e["data"] for e in body["events"] if e["kind"] == "detection"]
        first = next(d for d in dets if d["answered_by"] == "machine")
        assert first["final"] is False, dets  # provisional: the greeting goes on
        finals = [d["decided_at_ms"] / 1000 for d in dets if d["final"]]
        got[settle_s] = (first["decided_at_ms"] / 1000, _wire_s(carrier, sid), min(finals or [99]))
    for settle_s, (decided_s, bye_s, final_s) in got.items():
        # BYE after the provisional decision plus the settle time (RTP starts a little
        # after the 200 OK, the decision is timed from the answer) ...
        assert decided_s + settle_s - 0.1 <= bye_s <= decided_s + settle_s + 0.8, (settle_s, got)
        # ... and not at a final result
        assert bye_s < final_s, (settle_s, got)
    assert got[2.0][1] - got[0.0][1] >= 1.5, got
