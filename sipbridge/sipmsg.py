"""Pure SIP message helpers (no pjsua2, no asyncio), in two parts.

The packet guard's strict-enough request reader: :func:`parse_request` turns the raw bytes
pjsip received into a :class:`Request` with the few facts the guard decides on (method,
top Via, Call-ID, To tag, body), or raises :class:`SipParseError` naming what is wrong. It
never raises anything else, whatever the bytes (property-tested). It reads only what it
needs: it is not a full RFC 3261 parser.

The worker's lenient readers of messages pjsip already accepted (the ``wholeMsg`` text
pjsua2 hands to a callback): :func:`split_message`, :func:`header`, :func:`status_code`
and :func:`final_response_retry_after`. They never raise, whatever the text.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from sipbridge.errors import SipParseError
from sipbridge.trunkselect import parse_retry_after

# RFC 3261 25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# Compact header forms (RFC 3261 7.3.3) for the headers read here.
_COMPACT = {
    "i": "call-id",
    "f": "from",
    "t": "to",
    "v": "via",
    "l": "content-length",
    "c": "content-type",
}
# Headers a request must carry exactly once (RFC 3261 8.1.1, 20; one value each).
_SINGLE = ("call-id", "from", "to", "cseq")
# A Via's sent-protocol and sent-by (RFC 3261 20.42): SIP / 2.0 / transport host[:port].
_VIA_RE = re.compile(
    r"^\s*SIP\s*/\s*2\.0\s*/\s*(?P<transport>[A-Za-z0-9]+)\s+"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s;:,\[\]]+)(?:\s*:\s*(?P<port>[0-9]{1,5}))?"
    r"\s*(?P<params>(?:;[^,]*)?)$"
)
_TAG_RE = re.compile(r";\s*tag\s*=\s*([^;\s>]+)", re.I)


@dataclass(frozen=True)
class Via:
    """The top Via header (RFC 3261 20.42): where a response to this request goes."""

    transport: str  # upper case: UDP, TCP, TLS, ...
    host: str  # as written (IPv6 in brackets)
    port: int | None
    params: dict[str, str]  # lower-case names; "" for a flag such as rport

    @property
    def host_is_ip(self) -> bool:
        return is_ip_literal(self.host)


@dataclass(frozen=True)
class Request:
    method: str
    uri: str
    via: Via
    call_id: str
    to_tag: str | None  # None: out of dialog (RFC 3261 12.2.2 / 8.2.2.2)
    cseq_method: str
    content_type: str  # lower case, parameters dropped; "" when absent
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)  # lower-case names

    @property
    def in_dialog(self) -> bool:
        return self.to_tag is not None


def is_ip_literal(host: str) -> bool:
    """An IPv4 address or a bracketed IPv6 address (RFC 3261 25.1 host)."""
    h = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(h)
    except ValueError:
        return False
    return True


def _split_head(raw: bytes) -> tuple[list[str], bytes]:
    """Header lines (start line first, folding undone) and the body."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:  # a bare-LF sender, or a message cut short
        head, sep, body = raw.partition(b"\n\n")
        if not sep:
            raise SipParseError("no end of headers (empty line)")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("headers are not UTF-8 text") from None
    if "\x00" in text:
        raise SipParseError("NUL byte in the headers")
    lines: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line[:1] in (" ", "\t") and lines:  # folded continuation (RFC 3261 7.3.1)
            lines[-1] += " " + line.strip()
        else:
            lines.append(line)
    return lines, body


def _start_line(line: str) -> tuple[str, str]:
    parts = line.split(" ")
    if len(parts) != 3 or parts[2] != "SIP/2.0":
        raise SipParseError(f"not a SIP/2.0 request line: {line[:80]!r}")
    method, uri = parts[0], parts[1]
    if not _TOKEN_RE.fullmatch(method):
        raise SipParseError(f"method is not a token: {method[:40]!r}")
    if not uri or ":" not in uri:
        raise SipParseError(f"Request-URI has no scheme: {uri[:80]!r}")
    return method, uri


def _split_commas(value: str) -> list[str]:
    """Comma-separated header values, ignoring commas inside quotes and <>."""
    out, cur, quoted, angle = [], "", False, False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif ch == "<" and not quoted:
            angle = True
        elif ch == ">" and not quoted:
            angle = False
        if ch == "," and not quoted and not angle:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [v.strip() for v in out if v.strip()]


def parse_via(value: str) -> Via:
    """One Via value (the first of a comma list)."""
    first = _split_commas(value)
    if not first:
        raise SipParseError("empty Via")
    m = _VIA_RE.match(first[0])
    if m is None:
        raise SipParseError(f"unreadable Via: {first[0][:80]!r}")
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 0 < port < 65536:
        raise SipParseError(f"Via port out of range: {port}")
    params: dict[str, str] = {}
    for p in m["params"].split(";")[1:]:
        name, _, val = p.partition("=")
        name = name.strip().lower()
        if not name:
            raise SipParseError("empty Via parameter")
        if name in params:
            raise SipParseError(f"Via parameter {name!r} twice")
        params[name] = val.strip()
    return Via(m["transport"].upper(), m["host"], port, params)


def _content_length(values: list[str], body: bytes) -> bytes:
    if not values:
        return body
    if len(set(values)) != 1 or not values[0].isdigit() or len(values[0]) > 7:
        raise SipParseError(f"bad Content-Length: {values[:2]!r}")
    n = int(values[0])
    if n > len(body):
        raise SipParseError(f"Content-Length {n} but only {len(body)} body bytes")
    return body[:n]


def parse_request(raw: bytes) -> Request:
    """Read a SIP request; :class:`SipParseError` for anything the guard won't pass."""
    if not isinstance(raw, (bytes, bytearray)):
        raise SipParseError("not bytes")
    lines, body = _split_head(bytes(raw))
    if not lines or not lines[0]:
        raise SipParseError("empty start line")
    method, uri = _start_line(lines[0])
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not _TOKEN_RE.fullmatch(name):
            raise SipParseError(f"bad header line: {line[:80]!r}")
        lname = name.lower()
        headers.append((_COMPACT.get(lname, lname), value.strip()))
    by: dict[str, list[str]] = {}
    for n, v in headers:
        by.setdefault(n, []).append(v)
    for n in _SINGLE:
        if len(by.get(n, [])) != 1:
            raise SipParseError(f"{n} header {'missing' if n not in by else 'repeated'}")
    if not by.get("via"):
        raise SipParseError("via header missing")
    call_id = by["call-id"][0]
    if not call_id or any(c.isspace() for c in call_id):
        raise SipParseError("empty or spaced Call-ID")
    cseq = by["cseq"][0].split()
    if len(cseq) != 2 or not cseq[0].isdigit() or len(cseq[0]) > 10 or int(cseq[0]) >= 2**31:
        raise SipParseError(f"bad CSeq: {by['cseq'][0][:40]!r}")
    to_value = by["to"][0]
    to_tags = _TAG_RE.findall(to_value.rpartition(">")[2] if ">" in to_value else to_value)
    if len(to_tags) > 1:
        raise SipParseError("To tag repeated")
    ctype = by.get("content-type", [""])[0].split(";", 1)[0].strip().lower()
    return Request(
        method=method,
        uri=uri,
        via=parse_via(by["via"][0]),
        call_id=call_id,
        to_tag=to_tags[0] if to_tags else None,
        cseq_method=cseq[1],
        content_type=ctype,
        body=_content_length(by.get("content-length", []), body),
        headers=headers,
    )


def sdp_problem(body: bytes, max_line_bytes: int = 512) -> str | None:
    """Why an SDP body (RFC 8866) is unusable, or None. A shallow check: the version line
    first, an origin, at least one media line, a connection address for it, and no line
    longer than ``max_line_bytes`` (no legitimate attribute comes near it; ICE ufrag and
    pwd are at most 256 characters, RFC 8839 5.4)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "SDP is not UTF-8"
    lines = [ln for ln in text.replace("\r\n", "\n").split("\n") if ln]
    if not lines or lines[0] != "v=0":
        return "SDP does not start with v=0"
    for ln in lines:
        if len(ln) > max_line_bytes:
            return f"SDP line longer than {max_line_bytes} bytes"
        if len(ln) < 2 or ln[1] != "=" or not ln[0].isalpha():
            return f"bad SDP line: {ln[:40]!r}"
    kinds = [ln[0] for ln in lines]
    if "o" not in kinds or "m" not in kinds:
        return "SDP without origin or media line"
    session_c = "c" in kinds[: kinds.index("m")]
    media_blocks = "\n".join(kinds[kinds.index("m") :]).split("m")[1:]
    if not session_c and any("c" not in blk for blk in media_blocks):
        return "SDP media without a connection address"
    return None


def dtmf_relay_crashes_pjsua(body: bytes) -> bool:
    """Would this ``application/dtmf-relay`` INFO body abort pjsua 2.15.1?

    pjsua_call.c (``on_call_tsx_state``, INFO handling) reads the body with ``strlen``,
    takes the first run of non-CR/LF characters as a token, then advances the input by
    ``token length + 2`` (assuming one CRLF) without a bounds check: a body whose first
    line is not followed by two more bytes (no CRLF, a bare LF, a NUL) leaves a negative
    length, and ``pj_strstr`` asserts (``str->slen >= 0``), killing the worker."""
    text = body.split(b"\0", 1)[0]  # pjsua sees the body up to the first NUL (strlen)
    start = len(text) - len(text.lstrip(b"\r\n"))
    token = len(text[start:].split(b"\r", 1)[0].split(b"\n", 1)[0])
    return token > 0 and len(text) < token + 2


# ---------------------------------------------------------------- accepted messages
# Compact forms (RFC 3261 7.3.3) understood by :func:`header`.
_COMPACT_ANY = {**_COMPACT, "m": "contact"}


def split_message(whole_msg: str) -> tuple[str, list[tuple[str, str]], str]:
    """(start line, headers in order with folding undone, body) of a raw SIP message."""
    text = whole_msg.replace("\r\n", "\n")
    head, _, body = text.partition("\n\n")
    lines = head.split("\n")
    start = lines[0].strip() if lines else ""
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line.strip():
            continue
        if line[:1] in (" ", "\t") and headers:  # folded (RFC 3261 7.3.1)
            n, v = headers[-1]
            headers[-1] = (n, f"{v} {line.strip()}")
            continue
        n, sep, v = line.partition(":")
        if sep:
            headers.append((n.strip(), v.strip()))
    return start, headers, body


def header(headers: Iterable[tuple[str, str]], name: str) -> str:
    """First value of a header (case-insensitive, compact forms understood), or ''."""
    want = name.lower()
    for n, v in headers:
        if _COMPACT_ANY.get(n.lower(), n.lower()) == want:
            return v
    return ""


def status_code(whole_msg: str) -> int | None:
    """The status code of a response (``SIP/2.0 486 Busy Here``), None for anything else."""
    if not whole_msg.startswith("SIP/2.0 "):
        return None
    try:
        return int(whole_msg.split(" ", 2)[1])
    except (IndexError, ValueError):
        return None


def final_response_retry_after(whole_msg: str) -> tuple[bool, float | None]:
    """(is a final non-2xx INVITE response, its Retry-After seconds or None).

    RFC 3261 20.33: a 404, 413, 480, 486, 500, 503, 600 or 603 may say when to retry; the
    value is read from any final non-2xx response to an INVITE (by its CSeq method)."""
    code = status_code(whole_msg)
    if code is None or code < 300:
        return False, None
    _start, headers, _body = split_message(whole_msg)
    if not header(headers, "cseq").upper().endswith("INVITE"):
        return False, None
    return True, parse_retry_after(header(headers, "retry-after") or None)


def is_invite_2xx(whole_msg: str) -> bool:
    """A 2xx response to the INVITE: the carrier answered, whatever pjsua then makes of
    its SDP (RFC 3261 13.2.2.4: pjsua ACKs it, then sends BYE if the answer is unusable)."""
    cseq = header(split_message(whole_msg)[1], "cseq")
    return whole_msg.startswith("SIP/2.0 2") and cseq.upper().endswith("INVITE")


__all__ = [
    "Request",
    "SipParseError",
    "Via",
    "dtmf_relay_crashes_pjsua",
    "final_response_retry_after",
    "header",
    "is_invite_2xx",
    "is_ip_literal",
    "parse_request",
    "parse_via",
    "sdp_problem",
    "split_message",
    "status_code",
]
