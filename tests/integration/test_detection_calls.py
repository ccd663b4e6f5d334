"""Recipient detection on real calls: SIPp carriers play the project's generated audio as
G.711 RTP, in 183 early media or after 200 OK, and the bridge's status API must report
what a user checks: status, reason, answered_by and the detection timings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sipbridge.devtools.bridge import Bridge, bridge_config, start_bridge
from sipbridge.devtools.sipp import SippUas, render_scenario, ulaw_wav

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# area code -> (corpus file, scenario template, route detection settings)
CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "213": ("sit_early_00_IC.wav", "uas_early_play.xml.in", {}),
    "214": ("cp_us_busy.wav", "uas_early_play.xml.in", {}),
    "215": ("human_00.wav", "uas_answer_play.xml.in", {"machine_action": "hangup"}),
    "216": (
        "machine_00.wav",
        "uas_answer_play.xml.in",
        {"machine_action": "hangup", "wait_for_beep": True},
    ),
    "217": ("fax_cng_0.wav", "uas_answer_play.xml.in", {}),
    "218": ("silence_noise_1.wav", "uas_answer_play.xml.in", {}),
}


@pytest.fixture(scope="module")
def bridge(
    tmp_path_factory: pytest.TempPathFactory, corpus: tuple[Path, dict[str, Any]]
) -> Iterator[Bridge]:
    audio_dir, labels = corpus
    log_dir = tmp_path_factory.mktemp("detect-bridge")
    carriers: dict[str, SippUas] = {}
    try:
        for area, (name, template, _) in CASES.items():
            assert name in labels, f"corpus has no {name}"
            wav = ulaw_wav(audio_dir / name, log_dir / f"{area}-{name}")
            scenario = render_scenario(
                template, log_dir / f"{area}-{template.removesuffix('.in')}", AUDIO=str(wav)
            )
            carriers[area] = SippUas(scenario, log_dir).start()
        cfg = bridge_config(
            log_dir,
            trunks=[
                {
                    "name": f"c{area}",
                    "address": carriers[area].uri_hostport,
                    "caller_id": "+14155550100",
                    "header_templates": {"X-PolyAI-Call-SID": "{call_sid}"},
                }
                for area in CASES
            ],
            routes=[
                {"prefix": f"+1{area}", "trunk": f"c{area}", "detection": det}
                for area, (_, _, det) in CASES.items()
            ],
            timers={"ring_timeout_s": 20, "max_call_duration_s": 30},
        )
        b = start_bridge(log_dir, cfg)
        b.carriers = carriers
        yield b
        assert b.stop() == 0
        assert "Traceback" not in b.log(), b.log()[-3000:]
    finally:
        for s in carriers.values():
            s.stop()


def _detections(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["data"] for e in body["events"] if e["kind"] == "detection"]


def test_sit_in_early_media_fails_call_before_answer(
    bridge: Bridge, corpus: tuple[Path, dict[str, Any]]
) -> None:
    sid = bridge.trigger(to_number="+12135550123")
    body = bridge.wait_terminal(sid, timeout=15)
    assert (body["status"], body["reason"]) == ("failure", "number not in service (SIT IC)"), body
    kinds = [e["kind"] for e in body["events"]]
    assert "carrier.early" in kinds and "carrier.answered" not in kinds
    (det,) = [d for d in _detections(body) if d["answered_by"] == "sit"]
    assert det["phase"] == "early" and det["sit_code"] == "IC"
    # decided from the first segments: well before the file's announcement is over
    sit_start = corpus[1]["sit_early_00_IC.wav"]["sit_start_ms"]
    assert det["decided_at_ms"] - sit_start < 1500, det
    sipp = bridge.carriers["213"]
    (invite,) = [m for m in sipp.received("INVITE") if m.header("X-PolyAI-Call-SID") == sid]
    sipp.wait_request("CANCEL", invite.call_id)


def test_busy_tone_in_early_media(bridge: Bridge) -> None:
    sid = bridge.trigger(to_number="+12145550123")
    body = bridge.wait_terminal(sid, timeout=15)
    assert (body["status"], body["reason"]) == ("failure", "busy"), body
    assert any(d.get("progress") == "busy" for d in _detections(body))


def test_human_is_reported_and_call_stays_up(
    bridge: Bridge, corpus: tuple[Path, dict[str, Any]]
) -> None:
    sid = bridge.trigger(to_number="+12155550123")
    body = bridge.wait_status(sid, lambda b: b.get("answered_by") is not None, timeout=10)
    assert body["answered_by"] == "human" and body["status"] == "calling", body
    det = body["detection"]
    greeting_end = corpus[1]["human_00.wav"]["greeting_end_ms"]
    # decided after the greeting, within about a second of its end (plus RTP start-up)
    assert greeting_end < det["decided_at_ms"] < greeting_end + 1500, det
    assert bridge.client.post(f"/v1/outbound-calling/{sid}/hangup").status_code == 200
    final = bridge.wait_terminal(sid)
    assert (final["status"], final["answered_by"]) == ("success", "human")


def test_machine_hangs_up_at_the_beep(bridge: Bridge, corpus: tuple[Path, dict[str, Any]]) -> None:
    sid = bridge.trigger(to_number="+12165550123")
    body = bridge.wait_terminal(sid, timeout=20)
    assert (body["status"], body["reason"], body["answered_by"]) == (
        "failure",
        "answered by machine",
        "machine",
    ), body
    final = [d for d in _detections(body) if d["answered_by"] == "machine" and d["final"]]
    assert final, _detections(body)
    label = corpus[1]["machine_00.wav"]
    beep_ms = final[-1]["beep_ms"]
    # the beep's position in the stream, offset by when RTP started after answer
    assert beep_ms is not None and 0 <= beep_ms - label["beep_ms"] < 600, (beep_ms, label)
    provisional = [d for d in _detections(body) if d["answered_by"] == "machine"]
    assert provisional[0]["final"] is False  # first decided, then confirmed at the beep
    sipp = bridge.carriers["216"]
    (invite,) = [m for m in sipp.received("INVITE") if m.header("X-PolyAI-Call-SID") == sid]
    sipp.wait_request("BYE", invite.call_id)


def test_fax_is_hung_up(bridge: Bridge) -> None:
    sid = bridge.trigger(to_number="+12175550123")
    body = bridge.wait_terminal(sid, timeout=15)
    assert (body["status"], body["reason"], body["answered_by"]) == (
        "failure",
        "answered by fax",
        "fax",
    ), body


def test_silence(bridge: Bridge) -> None:
    sid = bridge.trigger(to_number="+12185550123")
    body = bridge.wait_status(sid, lambda b: b.get("answered_by") is not None, timeout=15)
    assert body["answered_by"] == "silence", json.dumps(body["detection"])
    bridge.client.post(f"/v1/outbound-calling/{sid}/hangup")
    assert bridge.wait_terminal(sid)["status"] == "success"
