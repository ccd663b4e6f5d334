"""Our SDP offer, adjusted per trunk before it is sent (pure; no pjsua2 here).

pjsua numbers telephone-event (RFC 4733) itself (121 for 8 kHz in the PyPI wheel);
carriers that assume 101 answer 101 and their DTMF never reaches us, so the offer's
payload type is set per trunk. RFC 3264 6.1: the answerer uses our payload type, and
the stream receives on the PT of our (local) SDP and sends on the PT of the peer's.
"""

from __future__ import annotations

import re

_RTPMAP = re.compile(r"^a=(rtpmap|fmtp|rtcp-fb):(\d+)(\s.*)?$")


def _audio_span(lines: list[str]) -> tuple[int, int] | None:
    """Indices [start, end) of the first m=audio section."""
    start = None
    for i, line in enumerate(lines):
        if line.startswith("m="):
            if start is not None:
                return start, i
            if line[2:].split(" ", 1)[0] == "audio":
                start = i
    return None if start is None else (start, len(lines))


def set_event_pt(sdp: str, pt: int, rate_hz: int = 8000) -> str:
    """``sdp`` with its ``telephone-event/<rate_hz>`` payload type renumbered to ``pt``
    in the first audio stream (m= format list, rtpmap, fmtp, rtcp-fb). A format already
    on ``pt`` swaps numbers with it. Unchanged when there is no such event format or it
    already has ``pt``."""
    eol = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.split(eol)
    span = _audio_span(lines)
    if span is None:
        return sdp
    start, end = span
    old = None
    for line in lines[start:end]:
        m = _RTPMAP.match(line)
        if (
            m
            and m.group(1) == "rtpmap"
            and (m.group(3) or "").strip().lower().startswith(f"telephone-event/{rate_hz}")
        ):
            old = m.group(2)
            break
    new = str(pt)
    if old is None or old == new:
        return sdp
    swap = {old: new, new: old}
    mline = lines[start].split(" ")
    lines[start] = " ".join(mline[:3] + [swap.get(f, f) for f in mline[3:]])
    for i in range(start + 1, end):
        m = _RTPMAP.match(lines[i])
        if m and m.group(2) in swap:
            lines[i] = f"a={m.group(1)}:{swap[m.group(2)]}{m.group(3) or ''}"
    return eol.join(lines)


__all__ = ["set_event_pt"]
