"""The headers of the BYE that ends an agent leg, reported to the supervisor.

The agent can say what happened in the BYE that ends its leg (a disposition header, an
RFC 3326 Reason header; README "Dispositions from the agent"). The worker only reads the
header names the leg's plan lists (``DialPlan.read_headers``), bounded
(:func:`sipbridge.disposition.bye_header_values`), and sends them as one
:class:`~sipbridge.ipc.ByeHeaders` event; the call manager parses and applies them. It
runs inside the DISCONNECTED callback but only reads the message text pjsua gave it
(never answers anything: pjsua answers the BYE itself, RFC 3261 15.1.2).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sipbridge import ipc
from sipbridge.disposition import bye_header_values
from sipbridge.sipmsg import split_message

if TYPE_CHECKING:
    from sipbridge.sip.leg import Leg
    from sipbridge.sip.worker import Worker


def report_bye(w: Worker, leg: Leg, received: str) -> None:
    """``received`` ended ``leg``: if it is a BYE and the leg reads headers from one,
    send the ones present (nothing when none is)."""
    names = leg.plan.read_headers
    if not names or not received.startswith("BYE "):
        return
    _start, headers, _body = split_message(received)
    found = bye_header_values(headers, names)
    if found:
        w.send(ipc.ByeHeaders(leg.plan.leg_id, leg.plan.call_sid, w.worker_id, time.time(), found))


__all__ = ["report_bye"]
