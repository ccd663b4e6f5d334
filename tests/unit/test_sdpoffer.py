"""Renumbering telephone-event in our offer (sipbridge.sip.sdpoffer)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sipbridge.sip.sdp import audio_codecs
from sipbridge.sip.sdpoffer import set_event_pt

OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=pjmedia",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        "m=audio 4000 RTP/AVP 0 8 9 101 120 121",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:101 speex/8000",
        "a=rtpmap:120 telephone-event/16000",
        "a=fmtp:120 0-16",
        "a=rtpmap:121 telephone-event/8000",
        "a=fmtp:121 0-16",
        "m=video 0 RTP/AVP 121",
        "a=rtpmap:121 H264/90000",
        "",
    ]
)


def test_event_pt_moves_and_a_taken_pt_swaps():
    out = set_event_pt(OFFER, 101)
    assert "m=audio 4000 RTP/AVP 0 8 9 121 120 101" in out
    assert "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16" in out
    assert "a=rtpmap:121 speex/8000" in out
    assert "a=rtpmap:120 telephone-event/16000" in out  # other rates untouched
    assert out.endswith("m=video 0 RTP/AVP 121\r\na=rtpmap:121 H264/90000\r\n")
    # The same formats in the same order, only numbered differently.
    assert audio_codecs(out)[1] == [
        "PCMU/8000",
        "PCMA/8000",
        "G722/8000",
        "speex/8000",
        "telephone-event/16000",
        "telephone-event/8000",
    ]


def test_unchanged_without_event_or_when_already_right():
    assert set_event_pt(OFFER, 121) == OFFER
    plain = OFFER.replace("a=rtpmap:121 telephone-event/8000\r\n", "")
    assert set_event_pt(plain, 101) == plain
    assert set_event_pt("v=0\r\n", 101) == "v=0\r\n"


@given(pt=st.integers(96, 127))
def test_any_dynamic_pt_keeps_the_format_set(pt):
    out = set_event_pt(OFFER, pt)
    before, after = audio_codecs(OFFER)[1], audio_codecs(out)[1]
    assert sorted(before) == sorted(after)
    assert f"a=rtpmap:{pt} telephone-event/8000" in out
    assert set_event_pt(out, pt) == out
