"""SIP header names, values and templates (pure logic, no SIP stack).

RFC 3261 section 25.1: a header name is a ``token``; a header value may not contain
CR or LF (line folding is deprecated and we never emit it) nor other control characters.
A value that could smuggle a second header or a body is refused, never sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from sipbridge.errors import HeaderError

# RFC 3261 token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
_TEMPLATE_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.\-]*)\}")

# Headers the SIP stack owns; a config or metadata key may not override them.
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
        "Max-Forwards",
        "Content-Length",
        "Content-Type",
        "Route",
        "Record-Route",
        "Authorization",
        "Proxy-Authorization",
        "Expires",
        "Allow",
        "Supported",
        "Require",
        "Session-Expires",
        "Min-SE",
    )
)

# Call fields a header template may use, besides metadata.KEY.
TEMPLATE_FIELDS = frozenset(
    {
        "call_sid",
        "to_number",
        "from_number",
        "polyai_call_id",
        "trunk",
        "attempt",
        "answered_by",
        "answered_by_hint",
    }
)


def is_token(name: str) -> bool:
    return bool(_TOKEN_RE.match(name))


def validate_header_name(name: str, field: str = "header") -> str:
    if not is_token(name):
        raise HeaderError(field, f"header name {name!r} is not a SIP token (RFC 3261 25.1)")
    if name.lower() in RESERVED_HEADERS:
        raise HeaderError(field, f"header {name!r} is managed by the SIP stack")
    return name


def validate_header_value(value: str, field: str = "header") -> str:
    for i, c in enumerate(value):
        o = ord(c)
        if (o < 32 and c != "\t") or o == 127:
            what = {"\r": "CR", "\n": "LF"}.get(c, f"control character 0x{o:02x}")
            raise HeaderError(field, f"value contains {what} at position {i}")
    if len(value.encode("utf-8")) > 8192:
        raise HeaderError(field, "value longer than 8192 bytes")
    return value


def template_fields(template: str) -> list[str]:
    """The ``{field}`` names used in a template, in order."""
    return _TEMPLATE_RE.findall(template)


def render_template(template: str, fields: Mapping[str, str], metadata: Mapping[str, str]) -> str:
    """Substitute ``{field}`` and ``{metadata.KEY}``; a missing metadata key renders empty."""

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key.startswith("metadata."):
            return metadata.get(key.removeprefix("metadata."), "")
        return fields.get(key, "")

    return _TEMPLATE_RE.sub(sub, template)
