"""A SIP worker's end: hang up every leg, wait (bounded) for pjsua to report them
DISCONNECTED, then drop pj objects in the order pjsua2 needs and ``libDestroy``.

pjsua2 pitfall: a Call whose C++ destructor runs after libDestroy asserts
(``pjsua_call_set_user_data``), so no local variable here may keep a Call alive across
``libDestroy`` — per-leg work is done in helper functions whose frames are gone by then.
"""

from __future__ import annotations

import contextlib
import gc
import time
from typing import TYPE_CHECKING

from sipbridge.sip.mixer import PORT_COOLING_S

if TYPE_CHECKING:
    from sipbridge.sip.worker import Worker

_SHUTDOWN_DRAIN_S = 3.0


def _force_end(worker: Worker, leg_id: str) -> None:
    leg = worker.legs.pop(leg_id)
    if not leg.ended:
        leg.ended = True
        worker._event(
            leg,
            "ended",
            cause="local_hangup",
            answered=leg.answered_at is not None,
            detail="worker shut down before the leg was disconnected",
        )
    worker.mixer.end_players(leg_id)
    leg.call._worker = None
    worker.graveyard.append(leg.call)
    worker.detection.release(leg)


def shutdown(worker: Worker) -> None:
    """Hang up every leg, wait (bounded) for DISCONNECTED, drop pj objects, libDestroy.

    pjsua2 pitfall: a Call whose C++ destructor runs after libDestroy asserts
    (``pjsua_call_set_user_data``), so no local variable here may keep a Call alive
    across ``libDestroy`` — per-leg work is done in helper methods.
    """
    if worker.ep is None:
        return
    for leg_id in list(worker.pending):
        worker.hangup(leg_id, "local_hangup")
    for leg_id in list(worker.legs):
        worker.hangup(leg_id, "local_hangup")
    deadline = time.monotonic() + _SHUTDOWN_DRAIN_S
    while (worker.legs or worker.inbound.rejected) and time.monotonic() < deadline:
        worker.ep.libHandleEvents(10)
    # Legs that never reached DISCONNECTED (e.g. CANCEL pending a provisional response).
    for leg_id in list(worker.legs):
        _force_end(worker, leg_id)
    worker.mixer.drop_players()
    worker.inbound.drop_rejected()
    worker.soon.clear()
    worker.graveyard.clear()
    # Audio ports last, once the bridge has applied the disconnects of the calls that
    # just ended (no loop variable may keep a port alive past libDestroy).
    deadline = time.monotonic() + PORT_COOLING_S
    while time.monotonic() < deadline:
        worker.ep.libHandleEvents(10)
    worker.mixer.drop_ports()
    worker.agent_hold.drop_ports()
    gc.collect()
    # Accounts go after every Call and before libDestroy.
    worker.accounts.delete_all()
    gc.collect()
    with contextlib.suppress(Exception):
        worker.ep.libDestroy()
    worker.ep = None
    gc.collect()


__all__ = ["shutdown"]
