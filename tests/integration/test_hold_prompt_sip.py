"""Issue #12's hold step over SIP, end to end: after the digit the IVR says "Thank you, please
hold while we connect your call" once, then plays music, then a person answers. The agent must
be dialled for the person, not 0.84 s into the prompt; the status, the CDR and the metrics then
say ``human``, as the agent's header does, and keep saying it when the person talks on (the
answer-phase detector, listening since the answer, takes their next words after a pause for
"the machine spoke again": it re-labelled the call ``ivr`` and told the agent so)."""

from __future__ import annotations

import random
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from sipbridge.corpus.hold import random_music
from sipbridge.corpus.synth import Speech, codec, noise, sil, write_wav
from sipbridge.devtools.bridge import Stack, one_trunk_config
from sipbridge.devtools.sipp import render_scenario, ulaw_wav
from sipbridge.media.frames import scale_to_dbfs
from tests.integration.test_agent_disposition import _cdrs
from tests.integration.test_operations import _metrics

pytestmark = pytest.mark.integration

PROMPT = ("Thank you. Please hold while we connect your call.", "en+f3", 165, 50)
PERSON = ("Hello, this is Dana in billing, how can I help?", "en-gb", 170, 50)


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _hold_line(tmp: Path) -> tuple[Path, int]:
    """The carrier's audio: a pause, the one-off prompt, 6 s of music, the person (who speaks
    again after a 2 s pause); and when the person starts (ms from answer)."""
    sp = Speech(tmp)
    sp.render_many([PROMPT, PERSON])
    rng, r = np.random.default_rng(12), random.Random(12)
    music, _ = random_music(rng, r, 6.0, -22)
    parts = [sil(600), scale_to_dbfs(sp.get(*PROMPT), -18), sil(300), music, sil(700)]
    person_ms = sum(p.size for p in parts) // 8
    person = scale_to_dbfs(sp.get(*PERSON), -20)
    x = np.concatenate([*parts, person, sil(2000), person, sil(4000)])
    x = codec(x + noise(x.size, "white", rng) * 10 ** (-65 / 20), "ulaw")
    write_wav(tmp / "hold_line.wav", x)
    return tmp / "hold_line.wav", person_ms


def test_one_off_prompt_then_music_then_person_over_sip(stack: Stack) -> None:
    wav, person_ms = _hold_line(stack.tmp)
    carrier = stack.sipp(
        render_scenario(
            "uas_answer_play.xml.in",
            stack.tmp / "hold.xml",
            AUDIO=str(ulaw_wav(wav, stack.tmp / "hold.ulaw.wav")),
        )
    )
    cfg = one_trunk_config(stack.tmp, carrier.uri_hostport)
    bridge = stack.bridge(cfg)
    sid = bridge.trigger(
        to_number="+12125550162",
        send_digits="1",
        ivr={"hold": True, "send_digits_delay_s": 0.2, "max_ivr_s": 60},
    )
    body = bridge.wait_event(sid, "agent.dial", timeout=person_ms / 1000 + 15)
    ev = {e["kind"]: e for e in reversed(body["events"])}
    dialled = _ts(ev["agent.dial"]["ts"]) - _ts(ev["carrier.answered"]["ts"])
    # not during the prompt (0.6-3.6 s) nor the music: within 2.5 s of the person's first word
    assert person_ms / 1000 <= dialled <= person_ms / 1000 + 2.5, (dialled, person_ms)
    assert ev["agent.dial"]["data"]["answered_by"] == "human"
    # the person talks on: the answer-phase detector calls that "ivr" (it is journalled) ...
    bridge.wait_status(
        sid,
        lambda b: any(
            e["kind"] == "detection"
            and e["data"]["phase"] == "answer"
            and e["data"]["answered_by"] == "ivr"
            for e in b["events"]
        ),
        timeout=15,
    )
    bridge.client.post(f"/v1/outbound-calling/{sid}/hangup")
    final = bridge.wait_terminal(sid)
    # ... but the call stays answered by a human, and the agent is never told otherwise
    assert (final["status"], final["answered_by"]) == ("success", "human"), final
    told = [e["data"]["answered_by"] for e in final["events"] if e["kind"] == "agent.info"]
    assert set(told) <= {"human"}, told
    (cdr,) = _cdrs(bridge, sid)
    assert cdr["answered_by"] == "human", cdr
    calls = {
        dict(labels)["answered_by"]: v
        for (name, labels), v in _metrics(bridge).items()
        if name == "sipbridge_calls_total"
    }
    assert calls == {"human": 1.0}, calls
