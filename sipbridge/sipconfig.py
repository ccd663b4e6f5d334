"""The SIP engine's settings (``sip:``) and a TLS leg's certificate checks (``tls:`` on a
trunk or the agent), validated like the rest of the config (:mod:`sipbridge.config`). Kept
apart so the SIP worker processes need only this module's models.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from sipbridge.callsettings import StrictModel
from sipbridge.netpolicy import networks_field
from sipbridge.tlsca import check_ca_file, os_ca_bundle

Transport = Literal["udp", "tcp", "tls"]

_Model = StrictModel


class SipConfig(_Model):
    """The SIP engine: a pool of worker processes, one pjsua2 Endpoint each."""

    listen_address: str = "127.0.0.1"
    # Each worker binds one port from this inclusive range; 0/0 means "pick free ports".
    port_min: Annotated[int, Field(ge=0, le=65535)] = 5080
    port_max: Annotated[int, Field(ge=0, le=65535)] = 5099
    transport: Transport = "udp"
    # Address written into Contact/SDP when it differs from the bind address (NAT).
    public_address: str | None = None
    workers: Annotated[int, Field(ge=1, le=64)] = 2
    # PJSUA_MAX_CALLS is 4 in the PyPI wheel; raise only for a build with a larger limit.
    calls_per_worker: Annotated[int, Field(ge=1, le=512)] = 4
    rtp_port_min: Annotated[int, Field(ge=1024, le=65535)] = 20000
    rtp_port_max: Annotated[int, Field(ge=1024, le=65535)] = 29999
    user_agent: str = "sipbridge/0.1"
    log_level: Annotated[int, Field(ge=0, le=6)] = 1
    # SIP-triggered mode: source addresses (CIDRs) allowed to send us INVITEs; everyone
    # else gets 403 Forbidden. Empty: inbound INVITEs are refused.
    inbound_allow: list[str] = Field(default_factory=list)
    # Packet guard (README "Security"): SIP messages per second each source IP may send
    # to one worker, and the burst above that; the excess is dropped unread.
    source_rate_limit_per_s: Annotated[float, Field(gt=0, le=100000, allow_inf_nan=False)] = 50.0
    source_rate_burst: Annotated[int, Field(ge=1, le=100000)] = 100
    # Elastic pool: the pool keeps between min_workers and max_workers processes (both
    # default to ``workers``: a fixed pool). It pre-spawns a worker while fewer than
    # ``spare_slots`` slots (default: one worker's calls_per_worker) are free or starting,
    # and retires a worker above min_workers that has been idle for idle_worker_ttl_s.
    min_workers: Annotated[int, Field(ge=1, le=64)] | None = None
    max_workers: Annotated[int, Field(ge=1, le=512)] | None = None
    idle_worker_ttl_s: Annotated[float, Field(gt=0, le=86400)] = 30.0
    spare_slots: Annotated[int, Field(ge=0, le=4096)] | None = None
    # No RTP received for this long on an answered leg whose media is sendrecv ends both
    # legs as failure "media timeout" (a leg put on hold, sendonly/inactive, is exempt).
    # 0 turns the check off.
    media_timeout_s: Annotated[float, Field(ge=0, le=3600)] = 30.0
    # RFC 4028 session timers: the Session-Expires we ask for and the smallest we accept
    # (Min-SE; RFC 4028 4: at least 90 s). Refreshes from the carrier are answered; a
    # session that is not refreshed in time, or whose refresh fails, is ended.
    session_expires_s: Annotated[int, Field(ge=90, le=86400)] = 1800
    session_min_se_s: Annotated[int, Field(ge=90, le=86400)] = 90

    @field_validator("inbound_allow")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        return networks_field(v)

    @model_validator(mode="after")
    def _ranges(self) -> SipConfig:
        if self.port_min > self.port_max:
            raise ValueError("port_min must be <= port_max")
        if self.port_min != 0 and self.port_max - self.port_min + 1 < self.workers:
            raise ValueError(
                f"port range {self.port_min}-{self.port_max} has fewer ports than "
                f"workers ({self.workers})"
            )
        if self.rtp_port_min >= self.rtp_port_max:
            raise ValueError("rtp_port_min must be < rtp_port_max")
        if 0 < self.media_timeout_s < 1:
            raise ValueError("media_timeout_s must be 0 (off) or at least 1 s")
        if self.session_min_se_s > self.session_expires_s:
            raise ValueError("session_min_se_s must be <= session_expires_s")
        lo = self.min_workers if self.min_workers is not None else self.workers
        hi = self.max_workers if self.max_workers is not None else max(self.workers, lo)
        if lo > hi:
            raise ValueError("min_workers must be <= max_workers")
        if self.port_min != 0 and self.port_max - self.port_min + 1 < hi:
            raise ValueError(
                f"port range {self.port_min}-{self.port_max} has fewer ports than "
                f"max_workers ({hi})"
            )
        return self


# Distinct TLS settings (verify, CA file) over all TLS trunks and the agent: one pjsip TLS
# transport each per worker (a listener and an ioqueue handle; 64 handles in all).
MAX_TLS_PROFILES = 4


class TlsSettings(_Model):
    """How a TLS leg checks its peer (RFC 5922: certificate chain and host name)."""

    # Verify the peer's certificate chain and that it names the host we dialled (SAN
    # DNS/IP/URI or CN, exact match: RFC 5922 7.2 forbids wildcards). false: no check at
    # all (logged as a warning at start-up): anyone on the path can take the call.
    verify: bool = True
    # PEM file of the CA certificates to trust (or the carrier's self-signed
    # certificate); default: the operating system's CA bundle.
    ca_file: str | None = None

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, v: str | None) -> str | None:
        return None if v is None else check_ca_file(v)

    def ca_list(self) -> str:
        """The CA file pjsip loads: ``ca_file`` or the OS bundle ("" if none)."""
        return self.ca_file or os_ca_bundle() or ""


def check_tls(tls: TlsSettings, transport: str, explicit: bool) -> None:
    if explicit and transport != "tls":
        raise ValueError(f"tls: only for TLS (this leg uses {transport})")
    if transport == "tls" and tls.verify and not tls.ca_list():
        raise ValueError(
            "tls.ca_file: no CA bundle found on this system "
            "(ca-certificates); name one, or set tls.verify: false"
        )


__all__ = ["MAX_TLS_PROFILES", "SipConfig", "TlsSettings", "Transport", "check_tls"]
