"""The worker's readers of accepted SIP messages (sipbridge.sipmsg): split_message, header,
status_code and final_response_retry_after, with fixtures and property tests."""

from __future__ import annotations

from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.sipmsg import final_response_retry_after, header, split_message, status_code

INVITE_503 = (
    "SIP/2.0 503 Service Unavailable\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9\r\n"
    "CSeq: 1 INVITE\r\nRetry-After: 30\r\nContent-Length: 0\r\n\r\n"
)


@pytest.mark.parametrize(
    ("msg", "expected"),
    [
        (INVITE_503, (True, 30.0)),
        ("SIP/2.0 503 Busy\r\nCSeq: 1 INVITE\r\nRetry-After: 30\r\n\r\n", (True, 30.0)),
        (
            "SIP/2.0 503 Busy\r\nretry-after:  120 (x);duration=9\r\nCSeq: 2 INVITE\r\n\r\n",
            (True, 120.0),
        ),
        ("SIP/2.0 486 Busy\r\nCSeq: 1 INVITE\r\n\r\n", (True, None)),
        ("SIP/2.0 503 Busy\r\nCSeq: 1 INVITE\r\nRetry-After: soon\r\n\r\n", (True, None)),
        ("SIP/2.0 503 Busy\r\nCSeq: 1 INVITE\r\nRetry-After:\r\n\r\n", (True, None)),
        ("SIP/2.0 503 Busy\r\nCSeq: 3 BYE\r\nRetry-After: 30\r\n\r\n", (False, None)),
        ("SIP/2.0 503 Busy\r\nRetry-After: 30\r\n\r\n", (False, None)),  # no CSeq
        ("SIP/2.0 180 Ringing\r\nCSeq: 1 INVITE\r\nRetry-After: 30\r\n\r\n", (False, None)),
        ("SIP/2.0 200 OK\r\nCSeq: 1 INVITE\r\nRetry-After: 30\r\n\r\n", (False, None)),
        ("BYE sip:a@b SIP/2.0\r\nCSeq: 1 BYE\r\n\r\n", (False, None)),
        ("SIP/2.0 abc Odd\r\nCSeq: 1 INVITE\r\n\r\n", (False, None)),
        # Bare LF line ends, folded Retry-After (RFC 3261 7.3.1).
        ("SIP/2.0 480 Later\nCSeq: 9 INVITE\nRetry-After:\n  60\n\n", (True, 60.0)),
        # Only the first header block counts: a Retry-After in the body is not one.
        ("SIP/2.0 480 Later\r\nCSeq: 9 INVITE\r\n\r\nRetry-After: 60\r\n", (True, None)),
        ("", (False, None)),
    ],
)
def test_final_response_retry_after(msg: str, expected: tuple[bool, float | None]) -> None:
    assert final_response_retry_after(msg) == expected


@pytest.mark.parametrize(
    ("msg", "code"),
    [
        ("SIP/2.0 486 Busy Here\r\n\r\n", 486),
        ("SIP/2.0 200\r\n\r\n", 200),
        ("SIP/2.0 xyz\r\n", None),
        ("SIP/2.0 ", None),
        ("INVITE sip:a@b SIP/2.0\r\n", None),
        ("sip/2.0 486 Busy\r\n", None),
    ],
)
def test_status_code(msg: str, code: int | None) -> None:
    assert status_code(msg) == code


def test_split_message_and_compact_headers() -> None:
    start, headers, body = split_message(
        "INVITE sip:agent@127.0.0.1:5060 SIP/2.0\r\ni: abc@h\r\nf: <sip:a@b>;tag=1\r\n"
        "X-Long: a\r\n\tb\r\nnot a header\r\nm: <sip:c@d>\r\n\r\nv=0\r\n"
    )
    assert start == "INVITE sip:agent@127.0.0.1:5060 SIP/2.0"
    assert header(headers, "Call-ID") == "abc@h"
    assert header(headers, "from") == "<sip:a@b>;tag=1"
    assert header(headers, "contact") == "<sip:c@d>"
    assert header(headers, "x-long") == "a b"
    assert header(headers, "to") == ""
    assert body == "v=0\n"


# typed: the decorated ``characters`` does not pass the Literal context on to a bare tuple
_SURROGATES: tuple[Literal["Cs"]] = ("Cs",)
_TEXT = st.text(st.characters(blacklist_categories=_SURROGATES), max_size=300)
_NAME = st.from_regex(r"[A-Za-z][A-Za-z0-9\-]{0,15}", fullmatch=True)
_LONG_NAME = st.from_regex(r"[A-Za-z][A-Za-z0-9\-]{1,15}", fullmatch=True)  # never compact
_VALUE = st.from_regex(r"[!-~]([ -~]{0,30}[!-~])?", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(msg=_TEXT, name=_NAME)
def test_readers_never_raise(msg: str, name: str) -> None:
    start, headers, _body = split_message(msg)
    assert "\n" not in start
    assert isinstance(header(headers, name), str)
    code = status_code(msg)
    assert code is None or msg.startswith("SIP/2.0 ")
    is_final, retry_after = final_response_retry_after(msg)
    assert (retry_after is None) or is_final
    if is_final:
        assert code is not None and code >= 300


@settings(max_examples=200, deadline=None)
@given(
    code=st.integers(100, 699),
    seconds=st.integers(0, 10**6),
    method=st.sampled_from(["INVITE", "BYE", "UPDATE", "invite"]),
    crlf=st.sampled_from(["\r\n", "\n"]),
    before=st.lists(st.tuples(_NAME, _VALUE), max_size=4),
)
def test_retry_after_is_read_from_final_invite_responses_only(
    code: int, seconds: int, method: str, crlf: str, before: list[tuple[str, str]]
) -> None:
    before = [(n, v) for n, v in before if n.lower() not in ("cseq", "retry-after")]
    lines = [
        f"SIP/2.0 {code} Reason",
        *(f"{n}: {v}" for n, v in before),
        f"CSeq: 7 {method}",
        f"Retry-After: {seconds}",
    ]
    msg = crlf.join(lines) + crlf + crlf
    final_invite = code >= 300 and method.upper() == "INVITE"
    assert final_response_retry_after(msg) == (
        (True, float(seconds)) if final_invite else (False, None)
    )


@settings(max_examples=200, deadline=None)
@given(
    headers=st.lists(st.tuples(_LONG_NAME, _VALUE), min_size=1, max_size=6), pick=st.integers(0, 5)
)
def test_header_finds_the_first_value_whatever_the_case(
    headers: list[tuple[str, str]], pick: int
) -> None:
    name = headers[pick % len(headers)][0]
    msg = "OPTIONS sip:x@y SIP/2.0\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    _start, parsed, _body = split_message(msg)
    assert parsed == headers
    first = next(v for n, v in headers if n.lower() == name.lower())
    assert header(parsed, name.swapcase()) == first
