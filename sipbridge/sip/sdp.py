"""Pure SDP helpers for the worker's media checks (RFC 4566 / RFC 3264): which audio
codecs an SDP names, and text for a failed offer/answer. No pjsua2 here."""

from __future__ import annotations

# RFC 3551 static payload types a carrier may answer with without an rtpmap line.
_STATIC_PT = {
    0: "PCMU/8000",
    3: "GSM/8000",
    4: "G723/8000",
    8: "PCMA/8000",
    9: "G722/8000",
    13: "CN/8000",
    15: "G728/8000",
    18: "G729/8000",
}
_MAX_NAMES = 16  # a hostile SDP may list hundreds of formats: name the first few


def sdp_of(whole_msg: str) -> str:
    """The SDP body of a raw SIP message ('' when it carries none)."""
    text = whole_msg.replace("\r\n", "\n")
    _head, sep, body = text.partition("\n\n")
    return body if sep and body.lstrip().startswith("v=0") else ""


def carries_sdp(whole_msg: str) -> bool:
    """Does a raw SIP message look like it carries SDP (a 183's early media)? A quick
    test: a body starting ``v=0`` or an ``application/sdp`` anywhere in the message."""
    return "\r\n\r\nv=0" in whole_msg or "application/sdp" in whole_msg.lower()


def audio_codecs(sdp: str) -> tuple[str, list[str]]:
    """(transport profile, codec names) of the first ``m=audio`` line of an SDP, e.g.
    ``("RTP/AVP", ["G729/8000", "telephone-event/8000"])``; ("", []) without one."""
    proto = ""
    pts: list[str] = []
    names: dict[str, str] = {}
    in_audio = False
    for raw in sdp.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if line.startswith("m="):
            if in_audio:
                break  # only the first audio stream
            parts = line[2:].split()
            in_audio = bool(parts) and parts[0] == "audio"
            if in_audio:
                proto = parts[2] if len(parts) > 2 else ""
                pts = parts[3 : 3 + _MAX_NAMES]
        elif in_audio and line.startswith("a=rtpmap:"):
            pt, _, enc = line[len("a=rtpmap:") :].partition(" ")
            names[pt.strip()] = enc.strip()
    out = []
    for pt in pts:
        name = names.get(pt)
        if name is None:
            name = _STATIC_PT.get(int(pt), f"PT {pt}") if pt.isdigit() else f"PT {pt[:8]}"
        out.append(name[:40])
    return proto, out


def audio_connection(sdp: str) -> str:
    """The ``c=`` of the first audio stream (media level over session level, RFC 4566
    5.7), e.g. ``"IN IP6 ::1"``; '' without one."""
    session, media, in_audio = "", "", False
    for raw in sdp.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if line.startswith("m="):
            if in_audio:
                break
            in_audio = line[2:].split(" ", 1)[0] == "audio"
        elif line.startswith("c="):
            if in_audio:
                media = media or line[2:]
            elif not media:
                session = line[2:]
    return " ".join((media or session).split())[:60]


def negotiation_detail(offered: list[str], answer_sdp: str) -> str:
    """Operator text for a media negotiation failure: what we offered, what came back.
    An answer that is not an SDP at all (none, or unparseable) says so; an audio stream
    on a non-IPv4 address (RFC 4566 ``c=IN IP6``: our media is IPv4) names it."""
    if not answer_sdp.strip():
        return f"offered {', '.join(offered) or '?'}; answered with no usable SDP"
    proto, answered = audio_codecs(answer_sdp)
    got = ", ".join(answered) if answered else "no audio codec"
    conn = audio_connection(answer_sdp)
    odd = conn and not conn.startswith("IN IP4 ")
    notes = [p for p in (proto, f"c={conn}" if odd else "") if p]
    if notes:
        got += f" ({', '.join(notes)})"
    return f"offered {', '.join(offered) or '?'}; answered {got}"


__all__ = ["audio_codecs", "audio_connection", "carries_sdp", "negotiation_detail", "sdp_of"]
