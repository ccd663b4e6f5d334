"""Hold on request, the pure parts: the direction of a re-INVITE's offer (RFC 4566 6,
RFC 3264 8.4), the control INFO body, the speech onset, and the delay line that gives the
agent the person's first words then catches up (sipbridge.holdcontrol,
sipbridge.media.delayline)."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.holdcontrol import (
    MAX_CONTROL_BYTES,
    ControlError,
    is_control_type,
    is_hold_offer,
    parse_control,
    sdp_direction,
    speech_onset_ms,
)
from sipbridge.media.delayline import DelayLine, frame_dbfs

HEAD = "v=0\r\no=- 1 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
AUDIO = "m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"


@pytest.mark.parametrize(
    ("sdp", "want"),
    [
        (HEAD + AUDIO, "sendrecv"),  # no attribute: sendrecv (RFC 4566 6)
        (HEAD + AUDIO + "a=sendonly\r\n", "sendonly"),
        (HEAD + AUDIO + "a=inactive\r\n", "inactive"),
        (HEAD + AUDIO + "a=recvonly\r\n", "recvonly"),
        (HEAD + "a=sendonly\r\n" + AUDIO, "sendonly"),  # session level applies
        (HEAD + "a=inactive\r\n" + AUDIO + "a=sendrecv\r\n", "sendrecv"),  # media overrides
        # RFC 2543 hold: connection address 0.0.0.0 (RFC 3264 8.4 says to accept it)
        (HEAD.replace("10.0.0.1\r\nt", "0.0.0.0\r\nt") + AUDIO, "inactive"),
        # only the first audio stream counts; video before it is skipped
        ("m=video 5000 RTP/AVP 96\r\na=sendonly\r\n" + AUDIO + "a=sendrecv\r\n", "sendrecv"),
        (AUDIO + "a=sendonly\r\nm=audio 4002 RTP/AVP 0\r\na=sendrecv\r\n", "sendonly"),
        (HEAD + "m=video 5000 RTP/AVP 96\r\n", None),
        ("", None),
    ],
)
def test_sdp_direction(sdp: str, want: str | None) -> None:
    assert sdp_direction(sdp) == want


def test_only_sendonly_and_inactive_are_holds() -> None:
    assert [
        d for d in ("sendrecv", "sendonly", "recvonly", "inactive", None) if is_hold_offer(d)
    ] == [
        "sendonly",
        "inactive",
    ]


@given(st.text(max_size=400))
def test_sdp_direction_never_raises_on_junk(sdp: str) -> None:
    assert sdp_direction(sdp) in (None, "sendrecv", "sendonly", "recvonly", "inactive")


def test_parse_control() -> None:
    assert parse_control('{"action":"hold"}') == "hold"
    assert parse_control('{"action": "resume", "extra": 1}') == "resume"
    for body, why in [
        ("hold", "not JSON"),
        ('["hold"]', "JSON object"),
        ('{"action": "park"}', '"action" must be'),
        ("{}", '"action" must be'),
        ('{"action": "' + "x" * MAX_CONTROL_BYTES + '"}', "longer than"),
    ]:
        with pytest.raises(ControlError, match=why):
            parse_control(body)
    assert is_control_type("Application/Vnd.Sipbridge.Control+JSON; charset=utf-8")
    assert not is_control_type("application/dtmf-relay")


@given(
    st.one_of(
        st.text(max_size=200),
        st.builds(json.dumps, st.dictionaries(st.text(max_size=8), st.text(max_size=8))),
    )
)
def test_parse_control_refuses_with_control_error_only(body: str) -> None:
    with contextlib.suppress(ControlError):
        assert parse_control(body) in ("hold", "resume")


def test_speech_onset_from_the_hold_listener_reason() -> None:
    reason = "live speech from 5840 ms (no music before; 640 ms speech, 22 dB ...)"
    assert speech_onset_ms(reason, 6640, 800) == 5840
    assert speech_onset_ms("unclear", 6640, 800) == 5840  # the fallback lag
    assert speech_onset_ms("live speech from 9999 ms", 6640, 800) == 5840  # not after it
    assert speech_onset_ms("", 300, 800) == 0


# ----------------------------------------------------------------------------- delay line

LOUD = (np.sin(np.arange(160) / 3.0) * 8000).astype("<i2").tobytes()
QUIET = (np.ones(160) * 20).astype("<i2").tobytes()  # about -64 dBFS


def _tagged(i: int, loud: bool) -> bytes:
    """A distinct frame (its first sample carries ``i``) that is loud or a pause."""
    base = np.frombuffer(LOUD if loud else QUIET, dtype="<i2").copy()
    base[0] = i % 30000 if loud else i % 20
    return base.tobytes()


def test_frame_level() -> None:
    assert frame_dbfs(bytes(320)) == -120.0
    assert -16 < frame_dbfs(LOUD) < -14  # 8000 peak: -12.3 dBFS, RMS 3 dB lower
    assert frame_dbfs(QUIET) < -60


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=120), st.integers(1, 6))
def test_delay_line_drops_only_pauses_and_keeps_order(pattern: list[bool], target: int) -> None:
    frames = [_tagged(i, loud) for i, loud in enumerate(pattern)]
    line = DelayLine(frames[: len(frames) // 2], target_ms=target * 20)
    for frame in frames[len(frames) // 2 :]:
        line.push(frame)
    out: list[bytes] = []
    while (got := line.pop()) is not None:
        out.append(got)
    # every word frame is played, in order; only pause frames were skipped, never the
    # first 60 ms of a pause (quiet instants inside words)
    assert [f for f in out if frame_dbfs(f) > -45] == [
        f for f, loud in zip(frames, pattern, strict=True) if loud
    ]
    kept = set(out)
    first_word = pattern.index(True) if True in pattern else len(pattern)
    for i in range(first_word, len(frames)):
        run = next((k for k in range(4) if pattern[i - k]), 4)
        if run < 4:  # among the first 3 pause frames after a word (or a word)
            assert frames[i] in kept
    assert line.played + line.skipped == len(frames)
    assert line.played == len(out)
    # it never skips a pause once no more than the target is queued
    assert line.skipped <= max(0, len(frames) - target)


def test_delay_line_catches_up_over_pauses() -> None:
    # 0.8 s of a first word, then speech with 200 ms pauses, 20 ms at a time
    first = [_tagged(i, True) for i in range(40)]
    line = DelayLine(first, target_ms=60)
    assert line.initial_ms == 800 and not line.caught_up
    i = 40
    for _ in range(20):  # the loop pushes what arrived, the clock pops one per 20 ms
        for k in range(20):
            line.push(_tagged(i, k < 10))
            i += 1
            line.pop()
    assert line.caught_up and line.backlog_ms <= 60
    assert line.skipped * 20 >= 700  # the delay went into the skipped pauses
    assert line.underruns == 0


def test_delay_line_skips_the_pre_roll_pause_first() -> None:
    line = DelayLine([_tagged(i, False) for i in range(10)] + [_tagged(i, True) for i in range(40)])
    # the first word comes first, with its 40 ms lead-in
    got = [line.pop() for _ in range(3)]
    assert got == [_tagged(8, False), _tagged(9, False), _tagged(0, True)]
    assert line.skipped == 8
