"""Sending a SIP INFO (RFC 6086) in an answered leg's dialog: how the agent leg learns the
detection result when it was dialled before detection decided (``connect_on: answer``).

Runs on the worker's loop thread (a command from the supervisor), never inside a pjsua
callback. The peer's response arrives in ``onCallTsxState`` like any other in-dialog reply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pjsua2 as pj

from sipbridge import ipc
from sipbridge.sip.pjbind import pj_error_text

if TYPE_CHECKING:
    from sipbridge.sip.worker import Worker


def send_info(worker: Worker, msg: ipc.SendInfo) -> bool:
    """Send ``msg`` on its leg; False (and a log line) if the leg is gone, not answered,
    or pjsua refused."""
    leg = worker.legs.get(msg.leg_id)
    if leg is None or leg.ended or leg.answered_at is None:
        worker.log("warning", f"INFO for {msg.leg_id!r}: no answered leg")
        return False
    prm = pj.CallSendRequestParam()
    prm.method = "INFO"
    prm.txOption.contentType = msg.content_type
    prm.txOption.msgBody = msg.body
    for name, value in msg.headers:
        h = pj.SipHeader()
        h.hName = name
        h.hValue = value
        prm.txOption.headers.append(h)
    try:
        leg.call.sendRequest(prm)
    except pj.Error as e:
        worker.log("warning", f"INFO on {msg.leg_id}: {pj_error_text(e)}")
        return False
    return True


__all__ = ["send_info"]
