"""Pure helpers for the agent side of a call: DTMF strings, inbound INVITE source
filtering, SIP INFO DTMF bodies. No pjsua2 here (unit-tested on its own). Reading the
INVITE itself: :func:`sipbridge.sipmsg.split_message` and :func:`sipbridge.sipmsg.header`."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterable

DTMF_DIGITS = frozenset("0123456789*#ABCD")
PAUSES_S = {"w": 0.5, "W": 1.0}

# RFC 4733 event codes 0-15 -> digit.
_EVENT_DIGITS = "0123456789*#ABCD"


def dtmf_steps(
    digits: str, duration_ms: int, gap_ms: int
) -> tuple[list[tuple[str | None, float]], str]:
    """Turn a SendDtmf string into steps ``(digit or None for a pause, seconds to wait
    after it)`` and the characters that were dropped as invalid.

    A digit occupies ``duration_ms`` then ``gap_ms`` of silence; ``w`` waits 0.5 s and
    ``W`` 1 s. Lower-case a-d are accepted as A-D.
    """
    steps: list[tuple[str | None, float]] = []
    invalid = ""
    step_ms = max(40, int(duration_ms)) + max(0, int(gap_ms))
    for ch in digits:
        if ch in PAUSES_S:
            steps.append((None, PAUSES_S[ch]))
            continue
        d = ch.upper() if ch in "abcd" else ch
        if d in DTMF_DIGITS:
            steps.append((d, step_ms / 1000.0))
        else:
            invalid += ch
    return steps, invalid


def event_digit(code: int | str) -> str:
    """A DTMF digit from an RFC 4733 event code or a digit string ('5', '#', 'A')."""
    if isinstance(code, int):
        return _EVENT_DIGITS[code] if 0 <= code < 16 else ""
    s = str(code).strip()
    if s.isdigit() and len(s) > 1:
        n = int(s)
        return _EVENT_DIGITS[n] if 0 <= n < 16 else ""
    s = s.upper()
    return s if len(s) == 1 and s in DTMF_DIGITS else ""


def parse_info_dtmf(content_type: str, body: str) -> tuple[str, int] | None:
    """(digit, duration ms) from a SIP INFO DTMF body, or None.

    ``application/dtmf-relay``: ``Signal=5`` / ``Duration=160`` lines;
    ``application/dtmf``: the digit alone (duration unknown: 160 ms assumed).
    """
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype == "application/dtmf-relay":
        digit, duration = "", 160
        for line in body.replace("\r\n", "\n").split("\n"):
            k, sep, v = line.partition("=")
            if not sep:
                continue
            k = k.strip().lower()
            if k == "signal":
                digit = event_digit(v.strip())
            elif k == "duration":
                with contextlib.suppress(ValueError):
                    duration = int(v.strip())
        return (digit, duration) if digit else None
    if ctype == "application/dtmf":
        digit = event_digit(body.strip())
        return (digit, 160) if digit else None
    return None


def source_ip(src: str) -> str:
    """The IP of an ``ip:port`` / ``[v6]:port`` / bare IP source address."""
    s = src.strip()
    if s.startswith("["):
        return s[1:].split("]", 1)[0]
    if s.count(":") == 1:
        return s.rsplit(":", 1)[0]
    return s


def source_allowed(src: str, networks: Iterable[str]) -> bool:
    """Is the source address inside one of the CIDRs? Unparseable sources are refused."""
    try:
        ip = ipaddress.ip_address(source_ip(src))
    except ValueError:
        return False
    for net in networks:
        try:
            if ip in ipaddress.ip_network(net, strict=False):
                return True
        except ValueError:
            continue
    return False


__all__ = [
    "DTMF_DIGITS",
    "dtmf_steps",
    "event_digit",
    "parse_info_dtmf",
    "source_allowed",
    "source_ip",
]
