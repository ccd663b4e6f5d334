"""Building blocks for SIPp carriers that answer our INVITE in hostile or unusual ways.

:func:`carrier_scenario` fills ``sipbridge/devtools/scenarios/uas_hostile_answer.xml.in``: the
provisional responses (``early``), the final response(s) (``final``), in-dialog requests
of the carrier's after the ACK (``midcall``); the call then ends with the bridge's BYE or
the carrier's own after ``hangup_ms``. The helpers return SIPp XML fragments; the INVITE's
Via, From, To and CSeq are in the scenario variables ``inv_via``, ``caller``, ``callee``,
``inv_cseq``. Every address in them is loopback.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sipbridge.devtools.sipp import SCENARIOS

# SIPp options every hostile carrier runs with: unexpected messages (retransmitted ACKs
# and responses, requests the scenario does not wait for) are ignored, not fatal.
SIPP_ARGS = ["-default_behaviors", "all,-abortunexp"]

# A usable SDP answer (PCMU, RFC 4733 events) on the SIPp media port.
SDP_OK = (
    "v=0\n"
    "o=sipp 1 1 IN IP4 [media_ip]\n"
    "s=-\n"
    "c=IN IP4 [media_ip]\n"
    "t=0 0\n"
    "m=audio [media_port] RTP/AVP 0 101\n"
    "a=rtpmap:0 PCMU/8000\n"
    "a=rtpmap:101 telephone-event/8000\n"
    "a=fmtp:101 0-15\n"
)


def sdp_with(*media: str, conn: str = "c=IN IP4 [media_ip]", version: int = 1) -> str:
    """An SDP whose session part is fixed and whose media sections are ``media``."""
    return f"v=0\no=sipp 1 {version} IN IP4 [media_ip]\ns=-\n{conn}\nt=0 0\n" + "".join(
        m if m.endswith("\n") else m + "\n" for m in media
    )


def _body_lines(body: str | None, ctype: str) -> str:
    if body is None:
        return "Content-Length: 0\n\n"
    return f"Content-Type: {ctype}\nContent-Length: [len]\n\n{body}"


def _cdata(text: str) -> str:
    lines = "\n".join("      " + ln if ln else "" for ln in text.split("\n"))
    return f"    <![CDATA[\n\n{lines}\n    ]]>\n"


def response(
    code: int,
    reason: str,
    *,
    tag: str = "01",
    headers: Iterable[str] = (),
    body: str | None = None,
    ctype: str = "application/sdp",
    retrans: bool = False,
    contact: bool = True,
) -> str:
    """A ``<send>`` of a response to the INVITE (To tag ``[pid]SIPpTag<tag>``)."""
    head = [
        f"SIP/2.0 {code} {reason}",
        "Via: [$inv_via]",
        "From: [$caller]",
        f"To: [$callee];tag=[pid]SIPpTag{tag}[call_number]",
        "[last_Call-ID:]",
        "CSeq: [$inv_cseq]",
    ]
    if contact:
        head.append("Contact: <sip:[local_ip]:[local_port];transport=[transport]>")
    head += list(headers)
    attr = ' retrans="500"' if retrans else ""
    return (
        f"  <send{attr}>\n"
        + _cdata("\n".join(head) + "\n" + _body_lines(body, ctype))
        + "  </send>\n"
    )


def answer(body: str | None = SDP_OK, **kw: object) -> str:
    """The 200 OK (retransmitted until the ACK), then the ACK."""
    kw.setdefault("retrans", True)
    return response(200, "OK", body=body, **kw) + recv("ACK")  # type: ignore[arg-type]


def recv(
    request: str | None = None,
    response_code: int | None = None,
    *,
    optional: bool = False,
    next_label: str = "",
    timeout_ms: int = 0,
    ontimeout: str = "",
) -> str:
    what = f'request="{request}"' if request else f'response="{response_code}"'
    attrs = [what, 'crlf="true"']
    if optional:
        attrs.append('optional="true"')
    if next_label:
        attrs.append(f'next="{next_label}"')
    if timeout_ms:
        attrs.append(f'timeout="{timeout_ms}"')
    if ontimeout:
        attrs.append(f'ontimeout="{ontimeout}"')
    return f"  <recv {' '.join(attrs)}>\n  </recv>\n"


def label(name: str) -> str:
    return f'  <label id="{name}"/>\n'


def pause(ms: int) -> str:
    return f'  <pause milliseconds="{ms}"/>\n'


def repeat(fragment: str, times: int, name: str) -> str:
    """``fragment`` sent ``times`` times in a SIPp loop (a scenario holds ~100 messages)."""
    return (
        label(name)
        + fragment
        + f'  <nop>\n    <action>\n      <add assign_to="{name}_n" value="1"/>\n'
        f'      <test assign_to="{name}_more" variable="{name}_n" compare="less_than" '
        f'value="{times}"/>\n    </action>\n  </nop>\n'
        f'  <nop test="{name}_more" next="{name}"/>\n'
    )


def ok_to_last() -> str:
    """A ``<send>`` of 200 OK to the request just received (PRACK, CANCEL)."""
    return (
        "  <send>\n"
        + _cdata(
            "SIP/2.0 200 OK\n[last_Via:]\n[last_From:]\n[last_To:]\n"
            "[last_Call-ID:]\n[last_CSeq:]\nContent-Length: 0\n"
        )
        + "  </send>\n"
    )


# Final responses the bridge may give to an in-dialog request of ours.
ANY_FINAL = (200, 202, 400, 403, 405, 415, 420, 481, 486, 488, 489, 491, 500, 501, 603)


def in_dialog(
    method: str,
    cseq: int,
    *,
    headers: Iterable[str] = (),
    body: str | None = None,
    ctype: str = "application/sdp",
    from_tag: str = "[pid]SIPpTag01[call_number]",
    to: str = "[$caller]",
    branch: str = "",
) -> str:
    """A request of the carrier's inside the dialog (RFC 3261 12.2.1.1), then a wait for
    any final answer (the test reads which one from SIPp's message log). An INVITE is
    ACKed (RFC 3261 13.2.2.4: a 2xx with an SDP answer to pjsua's offer, if any)."""
    # an INVITE's branch is named: the ACK of a non-2xx answer repeats it (RFC 3261 17.1.1.3)
    branch = branch or (f"z9hG4bKreinv{cseq}-[call_number]" if method == "INVITE" else "[branch]")
    head = [
        f"{method} [next_url] SIP/2.0",
        f"Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={branch}",
        "[routes]",
        f"From: [$callee];tag={from_tag}",
        f"To: {to}",
        "[last_Call-ID:]",
        f"CSeq: {cseq} {method}",
        "Contact: <sip:[local_ip]:[local_port];transport=[transport]>",
        "Max-Forwards: 70",
        *headers,
    ]
    out = [
        "  <send>\n" + _cdata("\n".join(head) + "\n" + _body_lines(body, ctype)) + "  </send>\n",
        recv(response_code=100, optional=True),
    ]
    done = f"done_{method.lower()}_{cseq}"
    if method == "INVITE":
        out += [recv(response_code=200, optional=True, next_label=f"ack2xx_{cseq}")]
    codes = [c for c in ANY_FINAL if not (method == "INVITE" and c == 200)]
    after = f"acknon2xx_{cseq}" if method == "INVITE" else done
    out += [recv(response_code=c, optional=True, next_label=after) for c in codes[:-1]]
    out += [recv(response_code=codes[-1], next_label=after)]
    if method == "INVITE":
        ack = [
            "ACK [next_url] SIP/2.0",
            "[routes]",
            f"From: [$callee];tag={from_tag}",
            f"To: {to}",
            "[last_Call-ID:]",
            f"CSeq: {cseq} ACK",
            "Max-Forwards: 70",
        ]
        via2 = (
            f"Via: SIP/2.0/[transport] [local_ip]:[local_port]"
            f";branch=z9hG4bKack{cseq}-[call_number]"
        )
        via3 = f"Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={branch}"
        out += [
            label(f"ack2xx_{cseq}"),
            "  <send>\n"
            + _cdata(
                "\n".join([ack[0], via2, *ack[1:]]) + "\n" + _body_lines(SDP_OK, ctype)
            ).replace("<send>", f'<send next="{done}">')
            + "  </send>\n",
        ]
        out += [
            label(f"acknon2xx_{cseq}"),
            "  <send>\n"
            + _cdata("\n".join([ack[0], via3, *ack[1:]]) + "\nContent-Length: 0\n")
            + "  </send>\n",
        ]
    out.append(label(done))
    return "".join(out)


def carrier_scenario(
    out: Path,
    *,
    early: str = "",
    final: str = "",
    midcall: str = "",
    hangup_ms: int = 1500,
    bye_tag: str = "01",
) -> Path:
    """Write a hostile carrier scenario to ``out``; ``final`` defaults to :func:`answer`."""
    text = (SCENARIOS / "uas_hostile_answer.xml.in").read_text()
    text = (
        text.replace("@EARLY@", early)
        .replace("@FINAL@", final or answer())
        .replace("@MIDCALL@", midcall)
        .replace("@HANGUP_MS@", str(hangup_ms))
        .replace("@BYE_TAG@", bye_tag)
    )
    out.write_text(text)
    return out
