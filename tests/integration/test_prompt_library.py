"""The prompt library (media.prompt_dir) through the full SIP path: a generated spoken
intercept in the library, the same prompt played by a SIPp carrier after answer, and the
call ending with the library label's outcome; a broken library refused at start-up."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sipbridge.config import ConfigError, parse_config
from sipbridge.devtools.bridge import TOKEN_ENV, Stack, bridge_config
from sipbridge.devtools.sipp import render_scenario, ulaw_wav

pytestmark = pytest.mark.integration

INTERCEPT = (
    "We're sorry. The number you have dialed is not in service. "
    "Please check the number and try again."
)


def _speak(text: str, dst: Path) -> Path:
    subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(dst), text],
        check=True,
        capture_output=True,
    )
    return dst


def test_known_intercept_prompt_ends_the_call_not_in_service(stack: Stack) -> None:
    media = stack.tmp / "media"
    (media / "prompts" / "not_in_service").mkdir(parents=True)
    prompt = _speak(INTERCEPT, media / "prompts" / "not_in_service" / "carrier-x.wav")
    audio = ulaw_wav(prompt, stack.tmp / "intercept-ulaw.wav", "pad", "0.5", "1")
    carrier = stack.sipp(
        render_scenario("uas_answer_play.xml.in", stack.tmp / "ic.xml", AUDIO=str(audio))
    )
    cfg = bridge_config(
        stack.tmp,
        trunks=[{"name": "t", "address": carrier.uri_hostport, "caller_id": "+14155550100"}],
        routes=[{"prefix": "+1", "trunk": "t", "detection": {"connect_on": "human"}}],
        media={"dir": str(media), "prompt_dir": "prompts"},
    )
    bridge = stack.bridge(cfg)
    sid = bridge.trigger(to_number="+12125550170")
    body = bridge.wait_terminal(sid, timeout=30)
    assert (body["status"], body["reason"]) == ("failure", "number not in service (SIT IC)"), body
    det = [e["data"] for e in body["events"] if e["kind"] == "detection"]
    assert det[-1]["prompt"] == "carrier-x" and det[-1]["prompt_label"] == "not_in_service"


def test_a_broken_prompt_library_is_refused_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "t" * 32)
    media = tmp_path / "media"
    (media / "prompts").mkdir(parents=True)
    (media / "prompts" / "labels.json").write_text("[1, 2]")
    (media / "empty").mkdir()
    base = bridge_config(
        tmp_path,
        trunks=[{"name": "t", "address": "127.0.0.1:5060"}],
        routes=[{"prefix": "+1", "trunk": "t"}],
    )
    for prompt_dir, problem in [
        ("prompts", "labels.json"),
        ("empty", "no prompts"),
        ("nope", "does not exist"),
        ("../media", "not a file name"),
    ]:
        with pytest.raises(ConfigError) as e:
            parse_config({**base, "media": {"dir": str(media), "prompt_dir": prompt_dir}})
        assert "media.prompt_dir" in str(e.value) and problem in str(e.value), str(e.value)
