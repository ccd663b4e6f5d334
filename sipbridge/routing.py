"""Routing and dial-plan resolution (pure: config + call fields in, DialPlan out)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sipbridge.config import Config, RouteConfig, TrunkConfig
from sipbridge.headers import (
    HeaderError,
    render_template,
    template_fields,
    validate_header_name,
    validate_header_value,
)
from sipbridge.plan import DialPlan


class RoutingError(ValueError):
    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def choose_route(cfg: Config, e164: str) -> RouteConfig:
    """Longest matching route prefix wins (E.164, '+' optional in the prefix); among
    equal prefixes the first in the file."""
    digits = e164.lstrip("+")
    best: tuple[int, RouteConfig] | None = None
    for route in cfg.routes:
        prefix = route.prefix.lstrip("+")
        if digits.startswith(prefix) and (best is None or len(prefix) > best[0]):
            best = (len(prefix), route)
    if best is None:
        raise RoutingError("to_number", f"no route matches {e164}")
    return best[1]


def choose_trunk(cfg: Config, e164: str) -> TrunkConfig:
    """The route's first-priority trunk (no weights, no health): for previews and tests."""
    cands = sorted(choose_route(cfg, e164).candidates(), key=lambda c: c[1])
    return cfg.trunk(cands[0][0])


def srtp_mode(encryption: str) -> str:
    return "mandatory" if encryption.endswith("/SRTP") else "off"


def effective_caller_id(trunk: TrunkConfig, requested: str | None) -> str:
    """Caller ID per the trunk's policy (RFC 3261 From user part)."""
    if trunk.caller_id_policy == "trunk" and trunk.caller_id:
        return trunk.caller_id
    return requested or trunk.caller_id or ""


def carrier_headers(
    trunk: TrunkConfig, fields: Mapping[str, str], metadata: Mapping[str, str]
) -> tuple[tuple[str, str], ...]:
    """Static, templated and metadata headers for the carrier INVITE, all validated.

    Raises :class:`HeaderError` naming the offending field (``metadata.KEY`` for a
    metadata key or value) so the trigger can be refused with a 400: unsafe values are
    never sent.
    """
    out: dict[str, tuple[str, str]] = {}
    for name, value in trunk.headers.items():
        where = f"trunk {trunk.name} header {name}"
        out[name.lower()] = (name, validate_header_value(value, where))
    for name, tmpl in trunk.header_templates.items():
        value = render_template(tmpl, fields, metadata)
        used = [f.removeprefix("metadata.") for f in _meta_fields(tmpl)]
        where = f"metadata.{used[0]}" if used else f"header {name}"
        out[name.lower()] = (name, validate_header_value(value, where))
    if trunk.metadata_header_prefix is not None:
        for key, value in metadata.items():
            name = f"{trunk.metadata_header_prefix}{key}"
            validate_header_name(name, f"metadata.{key}")
            out.setdefault(name.lower(), (name, validate_header_value(value, f"metadata.{key}")))
    return tuple(out.values())


def _meta_fields(tmpl: str) -> list[str]:
    return [f for f in template_fields(tmpl) if f.startswith("metadata.")]


def resolve_plan(
    cfg: Config,
    *,
    call_sid: str,
    to_number: str,
    from_number: str,
    metadata: Mapping[str, str],
    polyai_call_id: str | None,
    attempt: int,
    bridge_host: str,
    trunk: TrunkConfig | None = None,
    hop: int = 0,
    encryption: str | None = None,
    detection: dict[str, Any] | None = None,
) -> DialPlan:
    """Everything one carrier attempt needs, resolved before dialling."""
    trunk = trunk or choose_trunk(cfg, to_number)
    fields = {
        "call_sid": call_sid,
        "to_number": to_number,
        "from_number": from_number,
        "polyai_call_id": polyai_call_id or "",
        "trunk": trunk.name,
        "attempt": str(attempt),
    }
    headers = carrier_headers(trunk, fields, metadata)
    params = "" if trunk.transport == "udp" else f";transport={trunk.transport}"
    scheme = "sips" if trunk.transport == "tls" else "sip"
    target = f"{scheme}:{to_number}@{trunk.address}"
    from_host = trunk.from_domain or bridge_host
    auth = None
    if trunk.auth is not None:
        auth = (trunk.auth.username, trunk.auth.password.resolve(), trunk.auth.realm)
    return DialPlan(
        call_sid=call_sid,
        leg_id=f"{call_sid}/b{attempt}" + (f".{hop + 1}" if hop else ""),
        trunk=trunk.name,
        request_uri=target + params,
        from_uri=f"<{scheme}:{from_number}@{from_host}>",
        to_uri=f"<{target}>",
        headers=headers,
        ring_timeout_s=cfg.timers.ring_timeout_s,
        max_duration_s=cfg.timers.max_call_duration_s,
        transport=trunk.transport,
        auth=auth,
        srtp=srtp_mode(encryption or trunk.encryption),
        detection=detection,
        tls_verify=trunk.tls.verify,
        tls_ca_file=trunk.tls.ca_list(),
    )


__all__ = [
    "HeaderError", "RoutingError", "carrier_headers", "choose_route", "choose_trunk",
    "effective_caller_id", "resolve_agent_plan", "resolve_plan", "srtp_mode",
]


def resolve_agent_plan(
    cfg: Config,
    *,
    call_sid: str,
    carrier_leg_id: str,
    to_number: str,
    from_number: str,
    metadata: Mapping[str, str],
    polyai_call_id: str | None,
    answered_by: str | None,
    bridge_host: str,
    index: int = 1,
    extra_headers: Mapping[str, str] | None = None,
) -> DialPlan:
    """The agent leg (a-leg): INVITE to the agent's SIP URI carrying the call mapping
    (our callSid, the agent platform's call ID, both numbers, the detection result) and
    every metadata key as a header; bridged with ``carrier_leg_id`` once answered."""
    agent = cfg.agent
    fields = {
        "call_sid": call_sid, "to_number": to_number, "from_number": from_number,
        "polyai_call_id": polyai_call_id or "", "trunk": "", "attempt": str(index),
        "answered_by": answered_by or "unknown",
    }
    out: dict[str, tuple[str, str]] = {}
    for name, value in agent.headers.items():
        out[name.lower()] = (name, validate_header_value(value, f"agent header {name}"))
    for name, tmpl in agent.header_templates.items():
        value = render_template(tmpl, fields, metadata)
        if value:  # e.g. no polyai_call_id: the header is left out, not sent empty
            out[name.lower()] = (name, validate_header_value(value, f"agent header {name}"))
    for name, value in (extra_headers or {}).items():
        out.setdefault(name.lower(), (name, validate_header_value(value, f"header {name}")))
    if agent.metadata_header_prefix is not None:
        for key, value in metadata.items():
            name = f"{agent.metadata_header_prefix}{key}"
            validate_header_name(name, f"metadata.{key}")
            out.setdefault(name.lower(), (name, validate_header_value(value, f"metadata.{key}")))
    transport = agent.transport()
    # The agent sees the callee as the caller: it is talking to that person.
    scheme = "sips" if transport == "tls" else "sip"
    return DialPlan(
        call_sid=call_sid,
        leg_id=f"{call_sid}/a{index}",
        trunk="agent",
        request_uri=agent.uri,
        from_uri=f"<{scheme}:{to_number}@{bridge_host}>",
        to_uri=f"<{agent.uri}>",
        headers=tuple(out.values()),
        ring_timeout_s=agent.ring_timeout_s,
        max_duration_s=cfg.timers.max_call_duration_s,
        transport=transport,
        role="agent",
        bridge_with=carrier_leg_id,
        tls_verify=agent.tls.verify,
        tls_ca_file=agent.tls.ca_list(),
    )
