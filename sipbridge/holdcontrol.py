"""Hold on request from the agent: the pure parts (no pjsua2, no asyncio).

The connected agent puts the bridge in hold mode (the bridge listens to the carrier leg
for a live person and sends the agent nothing) in one of three ways:

* a re-INVITE whose audio is ``a=sendonly`` or ``a=inactive`` (RFC 3264 8.4: what a SIP
  user agent sends when it holds; :func:`sdp_direction`, :func:`is_hold_offer`);
* an INFO (RFC 6086) with :data:`CONTROL_TYPE` and ``{"action": "hold"}``
  (:func:`parse_control`);
* ``POST /v1/outbound-calling/{callSid}/hold`` (sipbridge.holdapi).

Each becomes a :class:`HoldRequest` (small, immutable) handled on the worker's loop.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

# The INFO content type the agent sends to the bridge (the other direction, bridge to
# agent, is sipbridge.routing.DETECTION_INFO_TYPE).
CONTROL_TYPE = "application/vnd.sipbridge.control+json"
# Control bodies are tiny; anything longer is refused unread (hostile input).
MAX_CONTROL_BYTES = 1024
# The header on the bridge's resume re-INVITE to the agent (same name as on the INVITE).
ANSWERED_BY_HEADER = "X-Sipbridge-Answered-By"
# The Listen phase that starts an agent hold on a carrier leg (supervisor -> worker).
AGENT_HOLD_PHASE = "agent_hold"

Action = Literal["hold", "resume"]
Via = Literal["reinvite", "info", "api"]
Direction = Literal["sendrecv", "sendonly", "recvonly", "inactive"]
_DIRECTIONS: tuple[Direction, ...] = ("sendrecv", "sendonly", "recvonly", "inactive")


@dataclass(frozen=True)
class HoldRequest:
    """What the agent asked for, on which leg (the agent's or the carrier's), and how."""

    leg_id: str
    action: Action
    via: Via


class ControlError(ValueError):
    """An INFO control body the bridge cannot act on (answered 400 with this text)."""


def sdp_direction(sdp: str) -> Direction | None:
    """The direction of the first audio stream of an SDP, or None without one.

    RFC 4566 6: a media-level direction attribute overrides the session-level one; with
    neither the stream is sendrecv. RFC 3264 8.4: a legacy (RFC 2543) hold sets the
    connection address to 0.0.0.0; it is read as ``inactive`` whatever the attribute.
    """
    session: Direction = "sendrecv"
    media: Direction | None = None
    in_audio = seen_audio = False
    held_addr = False
    for raw in sdp.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if line.startswith("m="):
            if seen_audio:
                break  # only the first audio stream
            in_audio = line[2:].startswith("audio")
            seen_audio = seen_audio or in_audio
            continue
        if line.startswith("a=") and line[2:] in _DIRECTIONS:
            d: Direction = line[2:]  # type: ignore[assignment]
            if not seen_audio:
                session = d
            elif in_audio:
                media = d
        elif line.startswith("c=") and (not seen_audio or in_audio):
            parts = line[2:].split()
            if len(parts) == 3 and parts[2] in ("0.0.0.0", "::"):
                held_addr = True
    if not seen_audio:
        return None
    if held_addr:
        return "inactive"
    return media or session


def is_hold_offer(direction: Direction | None) -> bool:
    """The peer holds us: it will not receive (sendonly) or neither way (inactive)."""
    return direction in ("sendonly", "inactive")


def parse_control(body: str) -> Action:
    """The action of a :data:`CONTROL_TYPE` body: ``{"action": "hold" | "resume"}``.
    Raises :class:`ControlError` naming the problem."""
    if len(body.encode("utf-8", "replace")) > MAX_CONTROL_BYTES:
        raise ControlError(f"control body longer than {MAX_CONTROL_BYTES} bytes")
    try:
        doc = json.loads(body)
    except ValueError:
        raise ControlError("control body is not JSON") from None
    if not isinstance(doc, dict):
        raise ControlError("control body must be a JSON object")
    action = doc.get("action")
    if action not in ("hold", "resume"):
        shown = repr(action)[:40]
        raise ControlError(f'"action" must be "hold" or "resume", not {shown}')
    return "hold" if action == "hold" else "resume"


def is_control_type(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == CONTROL_TYPE


_ONSET = re.compile(r"live speech from (\d+) ms")


def speech_onset_ms(reason: str, decided_at_ms: int, fallback_lag_ms: int) -> int:
    """When the person's speech started, from the hold listener's decision text
    ("live speech from N ms ..."); else ``fallback_lag_ms`` before the decision."""
    m = _ONSET.search(reason)
    if m is not None:
        onset = int(m.group(1))
        if 0 <= onset <= decided_at_ms:
            return onset
    return max(0, decided_at_ms - fallback_lag_ms)


__all__ = [
    "AGENT_HOLD_PHASE",
    "ANSWERED_BY_HEADER",
    "CONTROL_TYPE",
    "MAX_CONTROL_BYTES",
    "ControlError",
    "Direction",
    "HoldRequest",
    "is_control_type",
    "is_hold_offer",
    "parse_control",
    "sdp_direction",
    "speech_onset_ms",
]
