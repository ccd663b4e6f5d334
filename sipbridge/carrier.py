"""Carrier profiles: what a trunk's INVITEs must look like for a given carrier (pure).

The per-trunk settings (identity headers, URI form, tech prefix, codecs, telephone-event
payload type, session timers) are validated here and turned into the strings a
:class:`~sipbridge.plan.DialPlan` carries; the SIP worker only copies them onto the wire.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from sipbridge.callsettings import StrictModel

Codec = Literal["PCMU", "PCMA", "G722"]
# pjsua codec ids (the rtpmap name and clock rate).
CODEC_IDS: dict[str, str] = {"PCMU": "PCMU/8000", "PCMA": "PCMA/8000", "G722": "G722/16000"}
# RFC 3551 static payload types, and G.722's (9): the order checked on an m= line.
STATIC_PT: dict[str, int] = {"PCMU": 0, "PCMA": 8, "G722": 9}
DiversionReason = Literal[
    "unknown",
    "user-busy",
    "no-answer",
    "unconditional",
    "time-of-day",
    "do-not-disturb",
    "deflection",
    "follow-me",
    "out-of-service",
    "away",
]
# Display names: no quotes, backslashes or control characters (RFC 3261 25.1
# quoted-string, kept simple so no escaping is ever needed).
_DISPLAY = r'^[^"\\\x00-\x1f\x7f]{1,64}$'
_NUMBER = r"^\+?[0-9]{1,20}$"


class CallerIdentity(StrictModel):
    """Who the call is from, as the carrier wants to be told."""

    # Display name in From (and in the identity headers).
    display_name: Annotated[str, Field(pattern=_DISPLAY)] | None = None
    # ;user=phone (RFC 3261 19.1.1) on the Request-URI, To, From and identity URIs.
    user_phone: bool = False
    # Keep the '+' of E.164 numbers in URIs ("e164") or send digits only ("digits").
    number_format: Literal["e164", "digits"] = "e164"
    # Digits (and * #) put in front of the dialled number in the Request-URI and To
    # (carriers that pick a route or account by a prefix). '#' is sent escaped (%23).
    tech_prefix: Annotated[str, Field(pattern=r"^[0-9*#]{1,16}$")] | None = None
    # RFC 3325 network-asserted / preferred identity, and the older Remote-Party-ID
    # (draft-ietf-sip-privacy-04, still required by some carriers).
    p_asserted_identity: bool = False
    p_preferred_identity: bool = False
    remote_party_id: bool = False
    # "Privacy: id" (RFC 3325 9.3): the carrier withholds the caller ID from the callee
    # (PAI still tells the carrier who pays); Remote-Party-ID then says privacy=full.
    privacy_id: bool = False
    # RFC 5806 Diversion: the number the call was forwarded from (carriers accept a
    # caller ID that is not theirs when the call is marked as forwarded).
    diversion: Annotated[str, Field(pattern=_NUMBER)] | None = None
    diversion_reason: DiversionReason = "unconditional"


class HealthCheck(StrictModel):
    """OPTIONS pings to the trunk (RFC 3261 11): a trunk that stops answering is skipped
    by hunting until it answers again."""

    interval_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    timeout_s: Annotated[float, Field(gt=0, le=32)] = 5.0
    # Consecutive failed pings that mark the trunk down, answered pings that mark it up.
    failures_to_down: Annotated[int, Field(ge=1, le=100)] = 3
    successes_to_up: Annotated[int, Field(ge=1, le=100)] = 2

    @model_validator(mode="after")
    def _timeout(self) -> HealthCheck:
        if self.timeout_s >= self.interval_s:
            raise ValueError("timeout_s must be shorter than interval_s")
        return self


class Throttle(StrictModel):
    """Carrier pushback (503/403 mentioning CPS or rate, or any Retry-After): the trunk's
    dial rate is cut by ``factor`` and recovers after ``recover_s``; the call is queued
    again instead of failing."""

    enabled: bool = True
    factor: Annotated[float, Field(gt=0, lt=1)] = 0.5
    recover_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    # The slowest the trunk is ever throttled to (calls per second).
    min_cps: Annotated[float, Field(gt=0, le=100)] = 0.1
    # Pushbacks one call is queued again for; the next one ends its attempt as usual
    # (failure, or the route's retry policy).
    max_requeues: Annotated[int, Field(ge=0, le=1000)] = 10


def escape_user(user: str) -> str:
    """A URI user part with '#' escaped (RFC 3261 25.1: not unreserved)."""
    return user.replace("#", "%23")


def dialled_user(ident: CallerIdentity, number: str) -> str:
    """The Request-URI/To user part: tech prefix + number in the trunk's format."""
    if ident.number_format == "digits":
        number = number.lstrip("+")
    return escape_user((ident.tech_prefix or "") + number)


def caller_user(ident: CallerIdentity, number: str) -> str:
    return number.lstrip("+") if ident.number_format == "digits" else number


def uri_params(ident: CallerIdentity, transport_param: str = "") -> str:
    """URI parameters: ``;user=phone`` (RFC 3261 19.1.6) then ``;transport=``."""
    return (";user=phone" if ident.user_phone else "") + transport_param


def name_addr(ident: CallerIdentity, uri: str) -> str:
    """``"Display" <uri>`` (RFC 3261 20.20), or ``<uri>`` without a display name."""
    if ident.display_name:
        return f'"{ident.display_name}" <{uri}>'
    return f"<{uri}>"


def identity_headers(
    ident: CallerIdentity, caller_uri: str, scheme: str, host: str
) -> tuple[tuple[str, str], ...]:
    """The identity headers the trunk asks for, in a fixed order."""
    out: list[tuple[str, str]] = []
    who = name_addr(ident, caller_uri)
    if ident.p_asserted_identity:
        out.append(("P-Asserted-Identity", who))
    if ident.p_preferred_identity:
        out.append(("P-Preferred-Identity", who))
    if ident.remote_party_id:
        privacy = "full" if ident.privacy_id else "off"
        out.append(("Remote-Party-ID", f"{who};party=calling;screen=yes;privacy={privacy}"))
    if ident.privacy_id:
        out.append(("Privacy", "id"))
    if ident.diversion:
        user = caller_user(ident, ident.diversion)
        uri = f"{scheme}:{user}@{host}{uri_params(ident)}"
        out.append(("Diversion", f"<{uri}>;reason={ident.diversion_reason};counters=1"))
    return tuple(out)


# Headers the profile owns: set verbatim too, they would be sent twice.
PROFILE_HEADERS = frozenset(
    {
        "p-asserted-identity",
        "p-preferred-identity",
        "remote-party-id",
        "privacy",
        "diversion",
    }
)


__all__ = [
    "CODEC_IDS",
    "PROFILE_HEADERS",
    "STATIC_PT",
    "CallerIdentity",
    "Codec",
    "HealthCheck",
    "Throttle",
    "caller_user",
    "dialled_user",
    "escape_user",
    "identity_headers",
    "name_addr",
    "uri_params",
]
