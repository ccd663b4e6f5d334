"""Routing and dial-plan resolution (pure: config + call fields in, DialPlan out)."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from sipbridge.carrier import (
    CODEC_IDS,
    caller_user,
    dialled_user,
    identity_headers,
    name_addr,
    uri_params,
)
from sipbridge.config import Config, RouteConfig, TrunkConfig
from sipbridge.errors import RoutingError
from sipbridge.headers import (
    HeaderError,
    render_template,
    template_fields,
    validate_header_name,
    validate_header_value,
)
from sipbridge.plan import DialPlan


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


def caller_id_for(trunk: TrunkConfig, requested: str | None) -> str:
    """:func:`effective_caller_id`, or :class:`RoutingError` naming ``from_number`` when
    neither the trigger nor the trunk gives one (a From without a user part would be
    refused by the SIP stack at dial time)."""
    cid = effective_caller_id(trunk, requested)
    if not cid:
        raise RoutingError("from_number", f"required: trunk {trunk.name!r} has no caller_id")
    return cid


# Call fields the API client controls; a template using one is blamed on that field.
_CLIENT_FIELDS = ("polyai_call_id", "from_number", "to_number")


def _render_checked(
    name: str, tmpl: str, fields: Mapping[str, str], metadata: Mapping[str, str], where: str
) -> str:
    """Render a header template; a client-supplied value that makes it unsafe is
    reported under that value's field (``polyai_call_id``, ``metadata.KEY``)."""
    for used in template_fields(tmpl):
        if used.startswith("metadata."):
            key = used.removeprefix("metadata.")
            validate_header_value(metadata.get(key, ""), used)
        elif used in _CLIENT_FIELDS:
            validate_header_value(fields.get(used, ""), used)
    return validate_header_value(render_template(tmpl, fields, metadata), where)


def _metadata_headers(
    out: dict[str, tuple[str, str]],
    prefix: str,
    metadata: Mapping[str, str],
    keys: Collection[str] | None,
) -> None:
    """Metadata as "<prefix>KEY" headers (only ``keys`` if given), validated."""
    for key, value in metadata.items():
        if keys is not None and key not in keys:
            continue
        name = f"{prefix}{key}"
        validate_header_name(name, f"metadata.{key}")
        out.setdefault(name.lower(), (name, validate_header_value(value, f"metadata.{key}")))


def carrier_headers(
    trunk: TrunkConfig, fields: Mapping[str, str], metadata: Mapping[str, str]
) -> tuple[tuple[str, str], ...]:
    """Static, templated and opted-in metadata headers for the carrier INVITE, validated.

    Metadata reaches a carrier only for the keys in ``trunk.metadata_to_carrier`` (and
    through templates the operator wrote). Raises :class:`HeaderError` naming the
    offending field (``metadata.KEY``, ``polyai_call_id``) so the trigger can be refused
    with a 400: unsafe values are never sent.
    """
    out: dict[str, tuple[str, str]] = {}
    for name, value in trunk.headers.items():
        where = f"trunk {trunk.name} header {name}"
        out[name.lower()] = (name, validate_header_value(value, where))
    for name, tmpl in trunk.header_templates.items():
        out[name.lower()] = (name, _render_checked(name, tmpl, fields, metadata, f"header {name}"))
    opt_in = trunk.metadata_to_carrier
    if opt_in is not None:
        _metadata_headers(out, opt_in.prefix, metadata, frozenset(opt_in.keys))
    return tuple(out.values())


def check_trigger(
    cfg: Config,
    trunks: Iterable[TrunkConfig],
    *,
    call_sid: str,
    to_number: str,
    from_number: str | None,
    metadata: Mapping[str, str],
    polyai_call_id: str | None,
    bridge_host: str,
    encryption: str | None = None,
) -> None:
    """Dry run of every leg a trigger can reach (each trunk of its hunt list, and the
    agent leg), so a value that would be unsafe on any of them is a 400 now, never a
    failure at dial time. Raises :class:`RoutingError` / :class:`HeaderError` naming
    the field."""
    for trunk in trunks:
        resolve_plan(
            cfg,
            call_sid=call_sid,
            to_number=to_number,
            from_number=caller_id_for(trunk, from_number),
            metadata=metadata,
            polyai_call_id=polyai_call_id,
            attempt=1,
            bridge_host=bridge_host,
            trunk=trunk,
            encryption=encryption,
        )
        resolve_agent_plan(
            cfg,
            call_sid=call_sid,
            carrier_leg_id=f"{call_sid}/b1",
            to_number=to_number,
            from_number=caller_id_for(trunk, from_number),
            metadata=metadata,
            polyai_call_id=polyai_call_id,
            answered_by="unknown",
            bridge_host=bridge_host,
        )


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
    ident = trunk.identity
    callee = dialled_user(ident, to_number)
    params = "" if trunk.transport == "udp" else f";transport={trunk.transport}"
    scheme = "sips" if trunk.transport == "tls" else "sip"
    target = f"{scheme}:{callee}@{trunk.address}{uri_params(ident)}"
    srtp = srtp_mode(encryption or trunk.encryption)
    request_uri, transport, next_hop = target + params, trunk.transport, ""
    if cfg.edge is not None:
        # README "Edge proxy": the INVITE goes to the edge's inside port (the first hop,
        # a loose-routing Route) as plain SIP and RTP; the edge sends it on to the trunk
        # named in the header (transport, TLS and SRTP as configured). The Request-URI
        # names the carrier already, so a digest answer covers the URI the carrier gets.
        scheme, transport = "sip", "udp"
        target = f"sip:{callee}@{trunk.address}{uri_params(ident)}"
        host = cfg.edge.inside_address
        host = f"[{host}]" if ":" in host else host
        next_hop = f"sip:{host}:{cfg.edge.inside_port};lr"
        request_uri = target + ("" if trunk.transport == "tls" else params)
        mark = f"{trunk.name};srtp={'yes' if srtp == 'mandatory' else 'no'}"
        headers = (*headers, ("X-Sipbridge-Trunk", mark))
        srtp = "off"
        bridge_host = cfg.edge.public_address  # the carrier sees the edge only
    from_host = trunk.from_domain or bridge_host
    caller_uri = f"{scheme}:{caller_user(ident, from_number)}@{from_host}{uri_params(ident)}"
    headers = (*identity_headers(ident, caller_uri, scheme, from_host), *headers)
    auth = None
    if trunk.auth is not None:
        auth = (trunk.auth.username, trunk.auth.password.resolve(), trunk.auth.realm)
    return DialPlan(
        call_sid=call_sid,
        leg_id=f"{call_sid}/b{attempt}" + (f".{hop + 1}" if hop else ""),
        trunk=trunk.name,
        request_uri=request_uri,
        from_uri=name_addr(ident, caller_uri),
        to_uri=f"<{target}>",
        headers=headers,
        ring_timeout_s=cfg.timers.ring_timeout_s,
        max_duration_s=cfg.timers.max_call_duration_s,
        transport=transport,
        auth=auth,
        srtp=srtp,
        detection=detection,
        tls_verify=trunk.tls.verify,
        tls_ca_file=trunk.tls.ca_list(),
        codecs=tuple(CODEC_IDS[c] for c in trunk.codecs or ()),
        telephone_event_pt=trunk.telephone_event_pt,
        session_timers=session_timers(cfg, trunk),
        next_hop=next_hop,
    )


def session_timers(cfg: Config, trunk: TrunkConfig) -> tuple[int, int] | None:
    """RFC 4028 (Session-Expires, Min-SE) for the trunk, None when it keeps the
    sip-wide values."""
    if trunk.session_expires_s is None and trunk.min_se_s is None:
        return None
    se = trunk.session_expires_s or cfg.sip.session_expires_s
    return se, min(trunk.min_se_s or cfg.sip.session_min_se_s, se)


__all__ = [
    "DETECTION_INFO_TYPE",
    "HeaderError",
    "RoutingError",
    "caller_id_for",
    "carrier_headers",
    "check_trigger",
    "choose_route",
    "choose_trunk",
    "detection_info",
    "effective_caller_id",
    "resolve_agent_plan",
    "resolve_plan",
    "session_timers",
    "srtp_mode",
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
    answered_by_hint: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> DialPlan:
    """The agent leg (a-leg): INVITE to the agent's SIP URI carrying the call mapping
    (our callSid, the agent platform's call ID, both numbers, the detection result) and
    every metadata key as a header; bridged with ``carrier_leg_id`` once answered."""
    agent = cfg.agent
    fields = {
        "call_sid": call_sid,
        "to_number": to_number,
        "from_number": from_number,
        "polyai_call_id": polyai_call_id or "",
        "trunk": "",
        "attempt": str(index),
        "answered_by": answered_by or "unknown",
        "answered_by_hint": answered_by_hint or "",
    }
    out: dict[str, tuple[str, str]] = {}
    for name, value in agent.headers.items():
        out[name.lower()] = (name, validate_header_value(value, f"agent header {name}"))
    for name, tmpl in agent.header_templates.items():
        value = _render_checked(name, tmpl, fields, metadata, f"agent header {name}")
        if value:  # e.g. no polyai_call_id: the header is left out, not sent empty
            out[name.lower()] = (name, value)
    for name, value in (extra_headers or {}).items():
        out.setdefault(name.lower(), (name, validate_header_value(value, f"header {name}")))
    if agent.metadata_header_prefix is not None:
        _metadata_headers(out, agent.metadata_header_prefix, metadata, None)
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
        read_headers=agent.disposition.policy().read_headers(),
    )


# The SIP INFO (RFC 6086) that tells an agent leg dialled before detection decided what
# answered. A JSON body; agents that cannot read bodies read the header instead.
DETECTION_INFO_TYPE = "application/vnd.sipbridge.detection+json"


def detection_info(
    call_sid: str, answered_by: str, hint: str | None, final: bool
) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """(content type, body, headers) of the detection INFO sent on the agent leg."""
    body = json.dumps(
        {"call_sid": call_sid, "answered_by": answered_by, "hint": hint, "final": final},
        separators=(",", ":"),
    )
    headers = [("X-Sipbridge-Answered-By", answered_by)]
    if hint:
        headers.append(("X-Sipbridge-Answered-By-Hint", hint))
    return DETECTION_INFO_TYPE, body, tuple(headers)
