"""The worker's local pjsua accounts: created on demand, cached, evicted least recently
used.

pjsua answers digest challenges (RFC 3261 22.2/22.3) from an account's credentials and
binds requests to the account's transport, and SRTP is an account media setting. So legs
use local accounts (no registration) created on demand and cached, keyed by
``(transport, srtp, auth, session timers, next hop)``
(:data:`sipbridge.sip.leg.AccountKey`; the next hop is the edge proxy, a Route set for
every request of the account). pjsua allows ``PJSUA_MAX_ACC`` (8) accounts: the least
recently used account without a live leg is deleted to make room; if all 8 have live
legs the dial fails with ``dial_error``.

- Digest auth: pjsua retries a challenged INVITE once with the credentials; a second
  challenge (wrong password) disconnects the call with that 401/407 (``remote_final``).
- SRTP "mandatory": SDES (RFC 4568) ``RTP/SAVP`` offer with ``a=crypto`` lines, also over
  UDP/TCP signalling (``srtpSecureSignaling = 0``, the "UDP/SRTP" encryption choice).
- SIP-triggered mode: pjsua hands inbound INVITEs to an account (``onIncomingCall``), so
  with ``sip.inbound_allow`` set a default account on the primary transport exists from
  start-up and is never evicted.

Owns: the accounts (and their LRU order). Account deletion is not callback-safe: called
outside pjsua2 callbacks only.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pjsua2 as pj

from sipbridge.plan import DialPlan
from sipbridge.sip.endpoint import DialRefused, Transports
from sipbridge.sip.leg import AccountKey
from sipbridge.sip.pjbind import WorkerAccount, pj_error_text

if TYPE_CHECKING:
    from sipbridge.sip.worker import Worker

MAX_ACCOUNTS = 8  # PJSUA_MAX_ACC in the PyPI wheel (PJSIP default)
_SRTP_USE = {"off": pj.PJMEDIA_SRTP_DISABLED, "mandatory": pj.PJMEDIA_SRTP_MANDATORY}


class AccountCache:
    """Local accounts by (transport, srtp, auth), least recently used first."""

    def __init__(
        self, worker: Worker, transports: Transports, busy: Callable[[], set[AccountKey | None]]
    ) -> None:
        self.worker = worker
        self.cfg = worker.cfg
        self.transports = transports
        self.busy = busy  # the keys of live legs' accounts
        self.accounts: OrderedDict[AccountKey, Any] = OrderedDict()
        # The account that must exist to receive INVITEs (never evicted).
        self.default_key: AccountKey | None = None

    def create_default(self) -> None:
        """The account for inbound INVITEs on the primary transport (SIP-triggered mode;
        it takes one of the PJSUA_MAX_ACC slots, so only when inbound calls are allowed
        at all: otherwise any dial account refuses them with 403)."""
        key: AccountKey = (self.cfg.transport, "off", None, None, "")
        acc = WorkerAccount(self.worker)
        acc.create(self.config(self.cfg.transport, "off", None), True)
        self.accounts[key] = acc
        self.default_key = key

    def key_of(self, acc: Any) -> AccountKey | None:
        return next((k for k, a in self.accounts.items() if a is acc), None)

    def for_plan(self, plan: DialPlan) -> tuple[AccountKey, Any]:
        """The cached local account for this plan's settings (created on demand);
        :class:`DialRefused` if there is none."""
        kind = self.transports.for_plan(plan)
        if plan.srtp not in _SRTP_USE:
            raise DialRefused(f"unknown SRTP mode {plan.srtp!r} (want 'off' or 'mandatory')")
        auth: tuple[str, str, str] | None = None
        if plan.auth is not None:
            if len(plan.auth) != 3 or not all(isinstance(x, str) for x in plan.auth):
                raise DialRefused("auth must be (username, password, realm) strings")
            auth = (plan.auth[0], plan.auth[1], plan.auth[2])
        timers: tuple[int, int] | None = None
        if plan.session_timers is not None:
            se, min_se = (int(x) for x in plan.session_timers)
            if not 90 <= min_se <= se <= 86400:  # RFC 4028 4: Min-SE at least 90 s
                raise DialRefused(f"bad session timers {plan.session_timers!r}")
            timers = (se, min_se)
        key: AccountKey = (kind, plan.srtp, auth, timers, plan.next_hop)
        acc = self.accounts.get(key)
        if acc is not None:
            self.accounts.move_to_end(key)
            return key, acc
        while len(self.accounts) >= MAX_ACCOUNTS:
            self._evict_one()
        acc = WorkerAccount(self.worker)
        try:
            acc.create(self.config(kind, plan.srtp, auth, timers, plan.next_hop), False)
        except pj.Error as e:
            raise DialRefused(f"cannot create a pjsua account: {pj_error_text(e)}") from None
        self.accounts[key] = acc
        return key, acc

    def _evict_one(self) -> None:
        busy = self.busy() | {self.default_key}
        victim = next((k for k in self.accounts if k not in busy), None)
        if victim is None:
            raise DialRefused(
                f"all {MAX_ACCOUNTS} pjsua accounts (PJSUA_MAX_ACC) have live calls; "
                "no account for this transport/SRTP/credentials combination"
            )
        self.delete(victim)
        user = victim[2][0] if victim[2] else ""
        realm = victim[2][2] if victim[2] else ""
        self.worker.log(  # never log the password
            "debug",
            f"evicted idle pjsua account transport={victim[0]} srtp={victim[1]} "
            f"user={user!r} realm={realm!r}",
        )

    def config(
        self,
        kind: str,
        srtp: str,
        auth: tuple[str, ...] | None,
        timers: tuple[int, int] | None = None,
        next_hop: str = "",
    ) -> Any:
        """The pjsua ``AccountConfig`` of a local account on transport ``kind``."""
        cfg = self.cfg
        port = self.transports.ports[kind]
        acfg = pj.AccountConfig()
        host = cfg.public_address or cfg.listen_address
        acfg.idUri = f"sip:sipbridge@{host}:{port}"
        acfg.regConfig.registerOnAdd = False
        acfg.sipConfig.transportId = self.transports.ids[kind]
        if kind != "udp":
            # pjsua derives the Contact's transport from the To URI, which carries no
            # ;transport= parameter: name it, so in-dialog requests come back over the
            # trunk's transport (RFC 3261 8.1.1.8, 12.2.1.1). (kind: "tls|<profile>".)
            acfg.sipConfig.contactForced = (
                f"<sip:sipbridge@{host}:{port};transport={kind.split('|', 1)[0]}>"
            )
        if next_hop:  # every request of the account goes there first (a Route set)
            acfg.sipConfig.proxies.append(next_hop)
        if auth is not None:
            username, password, realm = auth
            # pjsua answers 401 WWW-Authenticate / 407 Proxy-Authenticate challenges whose
            # realm matches ("*" = any realm); dataType 0 = plain-text password.
            acfg.sipConfig.authCreds.append(
                pj.AuthCredInfo("digest", realm or "*", username, 0, password)
            )
        # Attack surface off (see README "Security"): no ICE, TURN or STUN. PJSIP's
        # ICE code has had memory-safety advisories (a long ufrag overflowed a buffer);
        # with ICE disabled the media transport is plain UDP and the peer's ICE
        # attributes are never parsed. Set explicitly, not left to library defaults.
        acfg.natConfig.iceEnabled = False
        acfg.natConfig.turnEnabled = False
        acfg.natConfig.sipStunUse = pj.PJSUA_STUN_USE_DISABLED
        acfg.natConfig.mediaStunUse = pj.PJSUA_STUN_USE_DISABLED
        # RFC 4028 session timers: refreshes (re-INVITE/UPDATE with Session-Expires) from
        # the peer are answered; when the peer asks for timers, pjsua ends a session that
        # is not refreshed in time (BYE), and a refresh of ours that fails ends it too.
        acfg.callConfig.timerUse = pj.PJSUA_SIP_TIMER_OPTIONAL
        se, min_se = timers or (cfg.session_expires_s, cfg.session_min_se_s)
        acfg.callConfig.timerSessExpiresSec = se  # a trunk's own values (DialPlan)
        acfg.callConfig.timerMinSESec = min_se
        # SRTP only where the trunk asks for it: "off" is PJMEDIA_SRTP_DISABLED (no
        # optional SRTP offer, SDES a=crypto lines are never processed), never OPTIONAL.
        acfg.mediaConfig.srtpUse = _SRTP_USE[srtp]
        # 0: SRTP is allowed over any signalling transport ("UDP/SRTP" as well as
        # "TLS/SRTP"); pjsua's default (1) would demand TLS for SRTP.
        acfg.mediaConfig.srtpSecureSignaling = 0
        rtp_base, rtp_count = self.transports.rtp_range()
        acfg.mediaConfig.transportConfig.port = rtp_base
        acfg.mediaConfig.transportConfig.portRange = rtp_count
        acfg.mediaConfig.transportConfig.boundAddress = cfg.listen_address
        if cfg.public_address:
            acfg.mediaConfig.transportConfig.publicAddress = cfg.public_address
        return acfg

    def delete(self, key: AccountKey) -> None:
        acc = self.accounts.pop(key)
        acc._worker = None
        with contextlib.suppress(Exception):
            acc.shutdown()
        del acc

    def delete_all(self) -> None:
        """At shutdown: after every Call, before libDestroy."""
        for key in list(self.accounts):
            self.delete(key)


__all__ = ["MAX_ACCOUNTS", "AccountCache"]
