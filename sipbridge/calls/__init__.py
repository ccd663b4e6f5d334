"""The call manager. Where a call lives:

* ``service.py``  CallService: the public API (trigger, get, hangup, DTMF, SIP events)
  and the wiring of the parts below;
* ``trigger.py``  a trigger checked and stored as a queued call;
* ``policy.py``   each call's route, trunks, retry, detection, IVR and window, resolved once;
* ``dispatch.py`` the scheduler: limits, CPS, trunk health, failover queue, dialling a hop;
* ``live.py``     LiveCall (attempt, flow, timers, legs, pending end) and the registry;
* ``events.py``   leg progress and ends, detection, DTMF, playback from the SIP engine;
* ``actions.py``  carrying out the flow's decisions (agent leg, digits, hold, message);
* ``inbound.py``  SIP-triggered calls;
* ``agenthold.py`` hold on request: the REST ``/hold``, its events, the escape hatch;
* ``ending.py``   an attempt's outcome: retry or end; internal errors; restart recovery;
* ``journal.py``  the one writer of call records and events;
* ``engine.py``   the Pool protocol the SIP engine implements.
"""

from sipbridge.calls.dispatch import QUEUE_TIMEOUT_REASON
from sipbridge.calls.engine import Pool
from sipbridge.calls.service import CallService
from sipbridge.calls.trigger import TriggerInput, new_call_sid

__all__ = ["QUEUE_TIMEOUT_REASON", "CallService", "Pool", "TriggerInput", "new_call_sid"]
