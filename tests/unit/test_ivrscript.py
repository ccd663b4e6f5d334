"""Scripted IVR steps with spoken prompts ({say: FILE}) and alternative digit strings for
looping menus: validation (API and config), the flow's step order (pure)."""

from __future__ import annotations

import itertools
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from sipbridge.config import ConfigError, DetectionSettings, IvrSettings, parse_config
from sipbridge.flow import (
    CallFlow,
    DialAgent,
    EndCall,
    SayPrompt,
    SendDigits,
    StartHold,
    StartTimer,
    WatchRepeat,
)
from sipbridge.ivrscript import SayStep, check_say_wav, segments
from tests.doubles import detection as det
from tests.unit.test_api_edges import BASE, _post, _shape, make_client


def _wav(path: Path, seconds: float, rate: int = 8000, channels: int = 1, width: int = 2) -> Path:
    n = int(seconds * rate)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(np.zeros(n * channels * width, dtype=np.uint8).tobytes())
    return path


def _media(tmp_path: Path) -> Path:
    d = tmp_path / "media"
    d.mkdir()
    _wav(d / "agent.wav", 0.8)
    _wav(d / "wide.wav", 0.8, rate=16000)
    _wav(d / "stereo.wav", 0.8, channels=2)
    _wav(d / "u8.wav", 0.8, width=1)
    _wav(d / "odd.wav", 0.8, rate=11025)
    _wav(d / "long.wav", 31.0)
    _wav(d / "short.wav", 0.05)
    (d / "junk.wav").write_bytes(b"RIFF0000WAVEjunk")
    (d / "huge.wav").write_bytes(b"\0" * (2 * 1024 * 1024 + 1))
    return d


# ---- the script's shape ----------------------------------------------------------------


def test_adjacent_digit_strings_are_joined_and_says_split_them() -> None:
    ivr = IvrSettings(send_digits=["1", "w", {"say": "agent.wav"}, "w2"])  # type: ignore[list-item]
    assert segments(ivr.send_digits or "") == ["1w", SayStep(say="agent.wav"), "w2"]
    assert segments("1w2#") == ["1w2#"]


@given(
    st.lists(
        st.one_of(
            st.text("0123456789*#wW", min_size=1, max_size=5),
            st.sampled_from(["a.wav", "b.wav"]).map(lambda n: SayStep(say=n)),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_segments_keep_every_step_in_order(steps: list[Any]) -> None:
    out = segments(steps)
    # nothing lost or reordered, and no two digit strings next to each other
    flat = "".join(s if isinstance(s, str) else f"<{s.say}>" for s in out)
    assert flat == "".join(s if isinstance(s, str) else f"<{s.say}>" for s in steps)
    assert all(not (isinstance(a, str) and isinstance(b, str)) for a, b in itertools.pairwise(out))


@pytest.mark.parametrize(
    ("script", "words"),
    [
        (["1", "x"], "step 1: character 'x'"),
        ([], "at least 1"),
        (["1"] * 33, "at most 32"),
        ([{"say": "../etc/passwd"}], "not a file name"),
        ([{"say": "a.wav", "loop": True}], "Extra inputs"),
        ([{"play": "a.wav"}], "say"),
        (["1", ""], "step 1: empty"),
    ],
)
def test_bad_scripts_are_refused_by_name(script: Any, words: str) -> None:
    with pytest.raises(ValidationError, match="send_digits") as ei:
        IvrSettings(send_digits=script)
    assert words in str(ei.value), str(ei.value)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("stereo.wav", "2 channel(s)"),
        ("u8.wav", "8-bit"),
        ("odd.wav", "11025 Hz"),
        ("long.wav", "lasts 31.00 s"),
        ("short.wav", "lasts 0.05 s"),
        ("junk.wav", "not a PCM WAV"),
        ("huge.wav", "bytes (at most"),
    ],
)
def test_say_wav_format_size_and_duration_are_bounded(
    tmp_path: Path, name: str, words: str
) -> None:
    d = _media(tmp_path)
    with pytest.raises(ValueError, match=r"send_digits\.0\.say") as ei:
        check_say_wav(d / name, "send_digits.0.say")
    assert words in str(ei.value)
    assert check_say_wav(d / "agent.wav", "x") == pytest.approx(0.8)
    assert check_say_wav(d / "wide.wav", "x") == pytest.approx(0.8)


def test_alternatives_need_next_digits_and_are_bounded() -> None:
    with pytest.raises(ValidationError, match="alternative_digits: required"):
        IvrSettings(send_digits="1", on_menu_repeat="next_digits")
    with pytest.raises(ValidationError, match="alternative_digits: only used"):
        IvrSettings(send_digits="1", alternative_digits=["2"])
    with pytest.raises(ValidationError, match="alternative_digits"):
        IvrSettings(send_digits="1", on_menu_repeat="next_digits", alternative_digits=["2"] * 9)
    with pytest.raises(ValidationError, match=r"alternative_digits\.0"):
        IvrSettings(send_digits="1", on_menu_repeat="next_digits", alternative_digits=["2z"])


# ---- API and config: the file is checked against media.dir -----------------------------


@pytest.mark.parametrize(
    ("steps", "field", "words"),
    [
        (["1", {"say": "nope.wav"}], "ivr.send_digits.1.say", "does not exist"),
        ([{"say": "stereo.wav"}], "ivr.send_digits.0.say", "16-bit PCM mono"),
        ([{"say": "long.wav"}, "1"], "ivr.send_digits.0.say", "lasts"),
    ],
)
def test_trigger_with_a_bad_say_file_is_400_naming_the_field(
    tmp_path: Path, steps: list[Any], field: str, words: str
) -> None:
    client, pool = make_client(tmp_path, media={"dir": str(_media(tmp_path))})
    with client:
        r = _post(client, {"to_number": "+14155552671", "send_digits": steps})
        body = _shape(r)
        assert r.status_code == 400 and body["field"] == field and words in body["error"], r.text
        r = _post(
            client,
            {"to_number": "+14155552671", "ivr": {"send_digits": "1", "hold": True,
             "on_menu_repeat": "next_digits", "alternative_digits": ["2", steps]}},
        )  # fmt: skip
        body = _shape(r)
        alt = field.replace("send_digits", "alternative_digits.1")
        assert r.status_code == 400 and body["field"] == alt, r.text
        assert pool.plans == []
        r = _post(client, {"to_number": "+14155552671", "send_digits": ["1", {"say": "agent.wav"}]})
        assert r.status_code == 200, r.text


def test_say_steps_in_config_are_checked_at_start_up(tmp_path: Path) -> None:
    media = _media(tmp_path)
    ivr = {"send_digits": ["1", {"say": "u8.wav"}]}
    routes = [{**BASE["routes"][0], "ivr": ivr}, *BASE["routes"][1:]]
    with pytest.raises(ConfigError) as ei:
        parse_config({**BASE, "routes": routes, "media": {"dir": str(media)}}, "c.yaml")
    assert "routes.0.ivr.send_digits.1.say" in str(ei.value) and "8-bit" in str(ei.value)
    ok = [{**BASE["routes"][0], "ivr": {"send_digits": ["1", {"say": "agent.wav"}]}}]
    parse_config({**BASE, "routes": ok, "media": {"dir": str(media)}}, "c.yaml")


# ---- the flow -------------------------------------------------------------------------


def _ivr_flow(**ivr: Any) -> CallFlow:
    return CallFlow(DetectionSettings(), IvrSettings(send_digits_delay_s=0.5, **ivr))


def test_steps_run_in_order_each_after_the_previous_ended() -> None:
    f = _ivr_flow(send_digits=["1", "w", {"say": "agent.wav"}, "w2"])
    assert f.on_answered()[1:] == [StartTimer("send_digits", 0.5), WatchRepeat()]
    assert f.on_timer("send_digits") == [SendDigits("1w", 160, 80)]
    assert f.on_playback_done() == []  # not what it waits for
    assert f.on_digits_sent() == [SayPrompt("agent.wav", mark_menu=False)]
    assert f.on_digits_sent() == []  # the say has not ended yet
    assert f.on_playback_done() == [SendDigits("w2", 160, 80)]
    assert f.on_digits_sent() == [DialAgent(None)]


def test_a_script_starting_with_say_marks_the_menu_and_a_failed_say_ends_the_call() -> None:
    f = _ivr_flow(send_digits=[{"say": "agent.wav"}], hold=True)
    f.on_answered()
    assert f.on_timer("send_digits") == [SayPrompt("agent.wav", mark_menu=True)]
    assert f.on_playback_done() == [StartHold()]
    g = _ivr_flow(send_digits=[{"say": "agent.wav"}, "1"])
    g.on_answered()
    g.on_timer("send_digits")
    (end,) = g.on_playback_done("cannot play: file gone")
    assert isinstance(end, EndCall)
    assert (end.term.reason, end.term.retryable, end.term.detail) == (
        "IVR say step not played",
        True,
        "cannot play: file gone",
    )


def test_a_repeated_menu_tries_each_alternative_then_fails() -> None:
    f = _ivr_flow(
        send_digits="1", hold=True, on_menu_repeat="next_digits", alternative_digits=["2", "0#"]
    )
    f.on_answered()
    assert f.on_timer("send_digits") == [SendDigits("1", 160, 80)]
    assert f.on_digits_sent() == [StartHold()]
    assert f.on_detection("repeat", det("ivr")) == [
        WatchRepeat(),
        StartTimer("send_digits", 0.5),
    ]
    assert f.on_detection("hold", det("human")) == []  # walking the menu again
    assert f.on_timer("send_digits") == [SendDigits("2", 160, 80)]
    assert f.on_digits_sent() == [StartHold()]
    f.on_detection("repeat", det("ivr"))
    assert f.on_timer("send_digits") == [SendDigits("0#", 160, 80)]
    f.on_digits_sent()
    (end,) = f.on_detection("repeat", det("ivr"))
    assert isinstance(end, EndCall) and end.term.reason == "IVR menu repeated"
    assert end.term.retryable


def test_a_repeat_during_a_step_waits_for_it_before_the_next_script() -> None:
    f = _ivr_flow(
        send_digits=["1", {"say": "agent.wav"}, "2"],
        on_menu_repeat="next_digits",
        alternative_digits=["9"],
    )
    f.on_answered()
    f.on_timer("send_digits")
    assert f.on_digits_sent() == [SayPrompt("agent.wav", mark_menu=False)]
    f.on_detection("repeat", det("ivr"))  # while the say plays: the script is abandoned
    assert f.on_timer("send_digits") == []  # ... its say still plays
    assert f.on_playback_done() == [SendDigits("9", 160, 80)]
    assert f.on_digits_sent() == [DialAgent(None)]


def test_openapi_shows_the_script_shape_and_bounds(tmp_path: Path) -> None:
    client, _ = make_client(tmp_path)
    with client:
        doc = client.get("/openapi.json").json()
    defs = doc["components"]["schemas"]
    ivr = defs["IvrSettings"]["properties"]
    script = ivr["send_digits"]["anyOf"]
    steps = next(s for s in script if s.get("type") == "array")
    assert (steps["minItems"], steps["maxItems"]) == (1, 32)
    assert {"maxLength": 256, "type": "string"} in steps["items"]["anyOf"]
    say = defs["SayStep"]
    assert say["required"] == ["say"] and say["properties"]["say"]["maxLength"] == 255
    assert say.get("additionalProperties") is False
    assert ivr["alternative_digits"]["maxItems"] == 8
    assert "next_digits" in ivr["on_menu_repeat"]["enum"]
    trigger = next(v for k, v in defs.items() if k.startswith("TriggerBody"))
    assert any(s.get("type") == "array" for s in trigger["properties"]["send_digits"]["anyOf"])
