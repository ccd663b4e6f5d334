"""The pjsua2 objects whose callbacks feed the worker, and the C symbols pjsua2 lacks.

Every callback here runs on the worker's loop thread (``threadCnt = 0``,
``mainThreadOnly = True``) from inside ``libHandleEvents``. It only hands the event to the
worker (which records state and defers work to the loop, ``Worker.soon``), sets
``Worker.kicked`` so the loop does its chores, and never lets an exception out.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pjsua2 as pj

if TYPE_CHECKING:
    from sipbridge.sip.worker import Worker

_PJ_LIB: Any = None


def pj_lib() -> Any:
    """The pjsua2 extension as a ctypes library: it exports the pjsip/pjsua C symbols,
    for the few things pjsua2 does not expose."""
    global _PJ_LIB
    if _PJ_LIB is None:
        lib = ctypes.CDLL(pj._pjsua2.__file__)
        lib.pjsip_rdata_get_dlg.restype = ctypes.c_void_p
        lib.pjsip_rdata_get_dlg.argtypes = [ctypes.c_void_p]
        lib.pjsip_dlg_respond.restype = ctypes.c_int
        lib.pjsip_dlg_respond.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.pjsua_call_get_count.restype = ctypes.c_uint
        lib.pjsua_call_get_count.argtypes = []
        _PJ_LIB = lib
    return _PJ_LIB


def respond_in_dialog(rdata: Any, status: int) -> bool:
    """Answer an in-dialog request from ``onCallTsxState`` (pjsua2 has no API for it):
    ``pjsip_dlg_respond(pjsip_rdata_get_dlg(rdata), rdata, status, ...)`` through ctypes.
    Only valid inside the callback that carries ``rdata``. False if it could not be done."""
    try:
        lib = pj_lib()
        ptr = int(rdata.pjRxData)
        if not ptr:
            return False
        dlg = lib.pjsip_rdata_get_dlg(ptr)
        if not dlg:
            return False
        return int(lib.pjsip_dlg_respond(dlg, ptr, status, None, None, None)) == 0
    except Exception:
        return False


def pj_error_text(e: Exception) -> str:
    """The text of a ``pj.Error`` (its ``info()``), or of any exception."""
    info = getattr(e, "info", None)
    if callable(info):
        try:
            return str(info()).strip()
        except Exception:  # pragma: no cover - defensive
            pass
    reason = getattr(e, "reason", None)
    return str(reason or e)


def _guarded(worker: Worker | None, name: str, fn: Callable[[Worker], None]) -> None:
    """Run a callback's handler on the worker; log, never raise (see :class:`LegCall`)."""
    if worker is None:
        return
    worker.kicked = True
    try:
        fn(worker)
    except BaseException as e:
        with contextlib.suppress(BaseException):
            worker.log("error", f"{name} failed: {e!r}")


class LegCall(pj.Call):
    """pj.Call subclass forwarding callbacks to the worker (same thread)."""

    def __init__(self, worker: Worker, acc: Any, leg_id: str, call_id: int | None = None) -> None:
        if call_id is None:
            pj.Call.__init__(self, acc)
        else:  # an incoming call (onIncomingCall)
            pj.Call.__init__(self, acc, call_id)
        self._worker: Worker | None = worker
        self._leg_id = leg_id

    # pjsua2 pitfall: a Python exception must never leave a director callback — SWIG turns
    # it into a C++ exception thrown through pjsip's C frames, which aborts the process
    # (SIGSEGV). Each callback catches everything, and its error path touches nothing
    # that can itself fail (``_worker`` is None once the leg was force-ended).

    def _dispatch(self, name: str, fn: Callable[[Worker], None]) -> None:
        _guarded(getattr(self, "_worker", None), name, fn)

    def onCallState(self, prm: Any) -> None:
        self._dispatch("onCallState", lambda w: w.on_call_state(self._leg_id, self, prm))

    def onCallMediaState(self, prm: Any) -> None:
        self._dispatch("onCallMediaState", lambda w: w.on_call_media_state(self._leg_id, self))

    def onCallTsxState(self, prm: Any) -> None:
        self._dispatch("onCallTsxState", lambda w: w.on_call_tsx_state(self._leg_id, prm))

    def onCallSdpCreated(self, prm: Any) -> None:
        self._dispatch("onCallSdpCreated", lambda w: w.on_sdp_created(self._leg_id, prm))

    def onDtmfEvent(self, prm: Any) -> None:
        self._dispatch("onDtmfEvent", lambda w: w.dtmf.on_dtmf_event(self._leg_id, prm))

    # Policy, explicit rather than left to library defaults: a peer never makes the bridge
    # call someone else. RFC 3515 REFER (call transfer): pjsua's default accepts it (202)
    # and INVITEs the Refer-To target itself; refused here with 603 Declined, the call
    # goes on. RFC 3261 8.1.3.4 3xx redirect: pjsua2's default already stops (the call
    # ends with the 3xx), kept so by returning PJSIP_REDIRECT_STOP for every target.

    def onCallTransferRequest(self, prm: Any) -> None:
        with contextlib.suppress(BaseException):
            prm.statusCode = 603
        worker = getattr(self, "_worker", None)
        if worker is not None:
            with contextlib.suppress(BaseException):
                worker.log(
                    "warning",
                    f"{self._leg_id}: REFER to {str(prm.dstUri)[:200]!r} "
                    "refused (603): the bridge does not transfer calls",
                )

    def onCallRedirected(self, prm: Any) -> int:
        return int(pj.PJSIP_REDIRECT_STOP)


class WorkerAccount(pj.Account):
    """A local account; receives inbound INVITEs for the worker."""

    def __init__(self, worker: Worker) -> None:
        pj.Account.__init__(self)
        self._worker: Worker | None = worker

    def onIncomingCall(self, prm: Any) -> None:
        # never into pjsua2 (see LegCall)
        _guarded(
            getattr(self, "_worker", None),
            "onIncomingCall",
            lambda w: w.inbound.on_incoming_call(self, prm),
        )


class WorkerEndpoint(pj.Endpoint):
    """The worker's Endpoint: remembers why TLS peers were refused (a leg's detail)."""

    def __init__(self, worker: Worker) -> None:
        pj.Endpoint.__init__(self)
        self._worker: Worker | None = worker

    def onTransportState(self, prm: Any) -> None:
        # never into pjsua2 (see LegCall)
        w = getattr(self, "_worker", None)
        if w is None:
            return
        try:
            w.transports.on_transport_state(prm)
        except BaseException as e:
            with contextlib.suppress(BaseException):
                w.log("error", f"onTransportState failed: {e!r}")


__all__ = [
    "LegCall",
    "WorkerAccount",
    "WorkerEndpoint",
    "pj_error_text",
    "pj_lib",
    "respond_in_dialog",
]
