"""IVR walking and SIP-triggered mode through a real `sipbridge run`: DTMF digits then a
hold step that waits for a live person before the agent is dialled, the IVR escape hatch,
and an INVITE from the agent platform routed out to the carrier and bridged back."""

from __future__ import annotations

import socket
import subprocess
import wave
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from sipbridge.devtools.bridge import Stack, bridge_config, one_trunk_config
from sipbridge.devtools.sipp import SCENARIOS, SippUas, render_scenario, ulaw_wav
from tests.rtp import TsharkCapture, digits_of, rtp_events

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _play_scenario(tmp: Path, wav: Path, name: str) -> Path:
    ulaw = ulaw_wav(wav, tmp / f"{name}.ulaw.wav")
    return render_scenario("uas_answer_play.xml.in", tmp / f"{name}.xml", AUDIO=str(ulaw))


def test_digits_then_hold_until_a_person_speaks(
    stack: Stack, hold_corpus: tuple[Path, dict[str, Any]]
) -> None:
    corpus, labels = hold_corpus
    name = "person_00_stop_silence.wav"
    person_ms = labels[name]["person_ms"]
    carrier = stack.sipp(_play_scenario(stack.tmp, corpus / name, "hold"))
    cfg = one_trunk_config(stack.tmp, carrier.uri_hostport)
    with TsharkCapture(carrier.media_port, stack.tmp / "carrier.pcap") as cap:
        bridge = stack.bridge(cfg)
        sid = bridge.trigger(
            to_number="+12125550160",
            send_digits="1",
            ivr={"hold": True, "send_digits_delay_s": 0.2, "max_ivr_s": 90},
        )
        body = bridge.wait_event(sid, "agent.dial", timeout=person_ms / 1000 + 15)
        bridge.client.post(f"/v1/outbound-calling/{sid}/hangup")
        final = bridge.wait_terminal(sid)
    ev = {e["kind"]: e for e in reversed(body["events"])}
    answered = _ts(ev["carrier.answered"]["ts"])
    dialled = _ts(ev["agent.dial"]["ts"])
    # never before the person starts; within 1.5 s of it (plus RTP start-up after answer)
    assert dialled - answered >= person_ms / 1000, (dialled - answered, person_ms)
    assert dialled - answered <= person_ms / 1000 + 2.5, (dialled - answered, person_ms)
    hold = [
        e["data"]
        for e in body["events"]
        if e["kind"] == "detection" and e["data"]["phase"] == "hold"
    ]
    assert hold and hold[-1]["answered_by"] == "human"
    assert [k for k in ("dtmf.send", "dtmf.sent", "hold") if k not in ev] == []
    assert [d for d, _ in digits_of(rtp_events(cap.path, carrier.media_port))] == ["1"]
    assert final["status"] == "success"
    # what the agent's header said, the status (and so the CDR and metrics) says too
    assert final["answered_by"] == "human", final


def test_ivr_escape_hatch_ends_with_retryable_failure(
    stack: Stack, hold_corpus: tuple[Path, dict[str, Any]]
) -> None:
    corpus, labels = hold_corpus
    music = next(n for n, lab in labels.items() if lab.get("person_ms") is None)
    carrier = stack.sipp(_play_scenario(stack.tmp, corpus / music, "music"))
    cfg = one_trunk_config(stack.tmp, carrier.uri_hostport)
    bridge = stack.bridge(cfg)
    sid = bridge.trigger(to_number="+12125550161", ivr={"hold": True, "max_ivr_s": 3})
    body = bridge.wait_terminal(sid, timeout=15)
    assert (body["status"], body["reason"]) == ("failure", "IVR/hold time limit exceeded"), body
    ev = {e["kind"]: e for e in body["events"]}
    held = _ts(body["events"][-1]["ts"]) - _ts(ev["carrier.answered"]["ts"])
    assert 3.0 <= held < 6.0, held
    assert "agent.dial" not in ev


def _two_free_ports() -> int:
    """A base port p with p and p+1 free for UDP and TCP (one per SIP worker)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            p = int(s.getsockname()[1])
        if p >= 65534:
            continue
        try:
            socks = []
            for port in (p, p + 1):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    k = socket.socket(socket.AF_INET, kind)
                    socks.append(k)
                    k.bind(("127.0.0.1", port))
            return p
        except OSError:
            continue
        finally:
            for k in socks:
                k.close()
    raise RuntimeError("no two consecutive free ports")


def test_sip_triggered_call_is_routed_relayed_and_bridged(stack: Stack) -> None:
    carrier = stack.sipp("uas_answer_wait_bye.xml")
    busy = stack.sipp("uas_busy.xml")
    base = _two_free_ports()
    cfg = bridge_config(
        stack.tmp,
        trunks=[
            {"name": "t", "address": carrier.uri_hostport, "caller_id": "+14155550100"},
            {"name": "busy", "address": busy.uri_hostport, "caller_id": "+14155550100"},
        ],
        routes=[{"prefix": "+1212", "trunk": "t"}, {"prefix": "+1213", "trunk": "busy"}],
        sip={
            "listen_address": "127.0.0.1",
            "port_min": base,
            "port_max": base + 1,
            "workers": 2,
            "calls_per_worker": 4,
            "inbound_allow": ["127.0.0.0/8"],
        },
        inbound={
            "enabled": True,
            "number_source": "header",
            "number_header": "X-Dest-Number",
            "copy_headers": ["X-Caller-Id"],
            "call_id_header": "X-Agent-Call-Id",
        },
    )
    bridge = stack.bridge(cfg)
    template = (SCENARIOS / "uac_agent_invite.xml").read_text()
    ok = stack.tmp / "uac_ok.xml"
    ok.write_text(template.replace("+15551234567", "+12125550170"))
    uac = stack.sipp(ok, extra_args=[f"127.0.0.1:{base}", "-m", "1", "-s", "agent"])
    inv = carrier.wait_for(
        lambda m: m.direction == "received" and m.is_request and m.method == "INVITE", 10
    )
    assert inv.request_uri.startswith("sip:+12125550170@")
    assert inv.header("X-Caller-Id") == "+15557654321"  # copied from the agent's INVITE
    # progress relayed back to the agent platform, then the answer
    uac.wait_for(lambda m: m.direction == "received" and m.status == 180, 10)
    uac.wait_for(lambda m: m.direction == "received" and m.status == 200, 10)
    # the agent hangs up after 1 s: the carrier leg gets a BYE
    carrier.wait_for(
        lambda m: (
            m.direction == "received"
            and m.is_request
            and m.method == "BYE"
            and m.call_id == inv.call_id
        ),
        15,
    )
    r = bridge.client.get("/v1/outbound-calling/by-polyai-call-id/agent-call-42")
    assert r.status_code == 200, r.text
    sid = r.json()["callSid"]
    body = bridge.wait_terminal(sid)
    assert body["status"] == "success" and body["to_number"] == "+12125550170", body
    roles = sorted(leg["role"] for leg in body["legs"].values())
    assert roles == ["agent", "carrier"]
    # a carrier's busy goes back to the agent platform as 486
    rejected = stack.tmp / "uac_busy.xml"
    rejected.write_text(
        template.replace("+15551234567", "+12135550171").replace("agent-call-42", "agent-call-43")
    )
    uac2 = stack.sipp(rejected, extra_args=[f"127.0.0.1:{base}", "-m", "1", "-s", "agent"])
    uac2.wait_for(lambda m: m.direction == "received" and m.status == 486, 10)
    sid2 = bridge.client.get("/v1/outbound-calling/by-polyai-call-id/agent-call-43").json()[
        "callSid"
    ]
    assert bridge.wait_terminal(sid2)["reason"] == "busy"


def looping_menu_carrier(stack: Stack, repeats: int, pause_s: float = 3.0) -> tuple[SippUas, float]:
    """A SIPp carrier that answers and plays a spoken menu, then ``pause_s`` of silence,
    then the same again ``repeats`` more times; and the menu's length in seconds."""
    menu = stack.tmp / "menu.wav"
    subprocess.run(
        [
            "espeak-ng",
            "-v",
            "en-us",
            "-s",
            "160",
            "-w",
            str(menu),
            "For sales, press one. For support, press two. "
            "To hear these options again, press star.",
        ],
        check=True,
        capture_output=True,
    )
    audio = ulaw_wav(menu, stack.tmp / "loop.wav", "pad", "0", str(pause_s), "repeat", str(repeats))
    with wave.open(str(menu)) as w:
        menu_s = w.getnframes() / w.getframerate()
    carrier = stack.sipp(
        render_scenario("uas_answer_play.xml.in", stack.tmp / "loop.xml", AUDIO=str(audio))
    )
    return carrier, menu_s


def test_looping_ivr_menu_ends_the_call_after_the_digits(stack: Stack) -> None:
    """The carrier plays its menu, the bridge sends a digit, the carrier plays the same
    menu again: the call ends "IVR menu repeated" (retryable) without waiting for
    max_ivr_s; the agent is never dialled."""
    # the menu, 3 s of silence (the digit goes out in it), the menu again
    carrier, menu_s = looping_menu_carrier(stack, repeats=1)
    cfg = one_trunk_config(stack.tmp, carrier.uri_hostport)
    bridge = stack.bridge(cfg)
    sid = bridge.trigger(
        to_number="+12125550162",
        send_digits="9",
        ivr={"hold": True, "send_digits_delay_s": round(menu_s + 0.5, 2), "max_ivr_s": 60},
    )
    body = bridge.wait_terminal(sid, timeout=40)
    assert (body["status"], body["reason"]) == ("failure", "IVR menu repeated"), [
        (e["kind"], e["data"].get("phase"), e["data"].get("reason")) for e in body["events"]
    ]
    ev = {e["kind"]: e for e in body["events"]}
    assert "dtmf.sent" in ev and "agent.dial" not in ev
    rep = [e for e in body["events"] if e["kind"] == "detection" and e["data"]["phase"] == "repeat"]
    assert rep and _ts(rep[0]["ts"]) >= _ts(ev["dtmf.sent"]["ts"])
