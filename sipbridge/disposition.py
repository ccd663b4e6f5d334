"""Dispositions from the agent: what the AI agent says happened, in the BYE that ends its
leg. Pure logic (no pjsua2, no asyncio): the worker hands over the raw header values
(:func:`bye_header_values`), this module reads them into a :class:`Disposition`.

Two carriers of a disposition, the configured header first:

- the disposition header (``agent.disposition.header``, default ``X-Sipbridge-Disposition``)::

      X-Sipbridge-Disposition: voicemail; retry=true; reason="left no message"

  ``value *( ";" param )``; ``value`` is one token of :data:`DISPOSITIONS`
  (case-insensitive); params: ``retry=true|false`` and ``reason=token|quoted-string``
  (free text for operators, at most :data:`MAX_TEXT_CHARS` characters, sanitised).

- an RFC 3326 ``Reason`` header: ``Reason: Q.850;cause=1;text="Unallocated number"``.
  ``SIP`` and ``Q.850`` causes map through :data:`SIP_CAUSES` / :data:`Q850_CAUSES`
  (a normal clearing, e.g. ``Q.850;cause=16`` or ``SIP;cause=200``, is no disposition);
  the protocol token ``X-Sipbridge`` carries a value outright:
  ``Reason: X-Sipbridge;disposition=voicemail;retry=true`` (RFC 3326 reason-extension
  params; ``text`` is the free text).

Everything here comes from the agent's side of the network and is hostile: an oversize
value, control characters, an unknown token, conflicting duplicates or malformed params
give no disposition and a :attr:`Parsed.problems` entry (which the call manager logs);
the call then ends exactly as an agent hang-up without a disposition does today. An
unknown param or a bad ``retry`` value is dropped (with a problem) and the value kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

# The vocabulary (README "Dispositions from the agent" has the outcome of each).
DISPOSITIONS: frozenset[str] = frozenset(
    {
        "human",
        "completed",
        "machine",
        "voicemail",
        "ivr",
        "fax",
        "not_in_service",
        "operator",
        "screening",
        "busy",
        "no_answer",
        "retry",
    }
)
# answered_by as the agent saw it (status ``agent_answered_by``), next to the bridge's
# own detection; None for dispositions that say nothing about who answered.
AGENT_ANSWERED_BY: dict[str, str] = {
    "human": "human",
    "operator": "human",
    "machine": "machine",
    "voicemail": "machine",
    "screening": "machine",
    "ivr": "ivr",
    "fax": "fax",
}

MAX_VALUE_CHARS = 256  # a whole header value
MAX_TEXT_CHARS = 128  # the free text (reason= / text=)
MAX_PARAMS = 6
MAX_VALUES = 8  # header instances (or comma-separated values) read per name
# What the worker reports per value: longer is cut here (and refused as oversize).
WIRE_VALUE_CHARS = MAX_VALUE_CHARS + 1
REASON_HEADER = "Reason"
SIPBRIDGE_PROTOCOL = "x-sipbridge"

# RFC 3326 protocol "SIP": the cause is a SIP status code (RFC 3261 21).
SIP_CAUSES: dict[int, str] = {
    404: "not_in_service",
    410: "not_in_service",
    484: "not_in_service",
    604: "not_in_service",
    486: "busy",
    600: "busy",
    408: "no_answer",
    480: "no_answer",
}
# RFC 3326 protocol "Q.850": ITU-T Q.850 cause values.
Q850_CAUSES: dict[int, str] = {
    1: "not_in_service",  # unallocated (unassigned) number
    2: "not_in_service",  # no route to specified transit network
    3: "not_in_service",  # no route to destination
    22: "not_in_service",  # number changed
    28: "not_in_service",  # invalid number format (address incomplete)
    17: "busy",  # user busy
    18: "no_answer",  # no user responding
    19: "no_answer",  # no answer from user (user alerted)
}

Source = Literal["header", "reason"]

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN_RE = re.compile(rf"^{_TOKEN}$")
# param = name [ "=" ( token / quoted-string ) ]  (RFC 3261 25.1 generic-param)
_PARAM_RE = re.compile(rf'^({_TOKEN})\s*(?:=\s*({_TOKEN}|"(?:[^"\\]|\\.)*"))?$')


@dataclass(frozen=True)
class Disposition:
    """One disposition, validated."""

    value: str  # one of DISPOSITIONS
    retry: bool | None = None  # None: the value's default (outcomes.from_disposition)
    text: str = ""  # sanitised free text, for operators (never a status reason)
    source: Source = "header"
    cause: str = ""  # the Reason header's "protocol cause" it came from, e.g. "Q.850 1"

    @property
    def agent_answered_by(self) -> str | None:
        return AGENT_ANSWERED_BY.get(self.value)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"value": self.value, "source": self.source}
        if self.retry is not None:
            out["retry"] = self.retry
        if self.text:
            out["text"] = self.text
        if self.cause:
            out["cause"] = self.cause
        return out


@dataclass(frozen=True)
class Parsed:
    disposition: Disposition | None
    problems: tuple[str, ...] = ()


def sanitize_text(text: str) -> str:
    """Free text made safe to store, show and log: control and format characters
    become spaces, runs of spaces collapse, cut to :data:`MAX_TEXT_CHARS`."""
    clean = "".join(" " if (ord(c) < 32 or 127 <= ord(c) < 160) else c for c in text)
    clean = re.sub(r"[\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]", " ", clean)
    return " ".join(clean.split())[:MAX_TEXT_CHARS]


def _show(value: str) -> str:
    """A hostile value, quoted and cut for a log line."""
    return repr(value[:40] + ("..." if len(value) > 40 else ""))


def _split(value: str, sep: str) -> list[str] | None:
    """``value`` split on ``sep`` outside quoted strings (backslash escapes honoured);
    None if a quote is left open."""
    out: list[str] = []
    cur: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if quoted:
        return None
    out.append("".join(cur).strip())
    return out


def _unquote(v: str) -> str:
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        return re.sub(r"\\(.)", r"\1", v[1:-1])
    return v


def _check_chars(what: str, value: str) -> str | None:
    if len(value) > MAX_VALUE_CHARS:
        return f"{what}: value longer than {MAX_VALUE_CHARS} characters ignored"
    for c in value:
        if (ord(c) < 32 and c != "\t") or ord(c) == 127:
            return f"{what}: control character 0x{ord(c):02x} in {_show(value)}: ignored"
    return None


def _params(what: str, parts: Sequence[str]) -> tuple[dict[str, str] | None, list[str]]:
    """``name=value`` params (names lower-cased, values unquoted); None if malformed."""
    problems: list[str] = []
    parts = [p for p in parts if p]  # "human;" or ";;": nothing there, nothing wrong
    if len(parts) > MAX_PARAMS:
        return None, [f"{what}: more than {MAX_PARAMS} params: ignored"]
    out: dict[str, str] = {}
    for part in parts:
        m = _PARAM_RE.match(part)
        if m is None:
            return None, [f"{what}: malformed param {_show(part)}: ignored"]
        name = m.group(1).lower()
        if name in out:
            return None, [f"{what}: param {name!r} given twice: ignored"]
        out[name] = _unquote(m.group(2) or "")
    return out, problems


def _retry(what: str, params: dict[str, str], problems: list[str]) -> bool | None:
    raw = params.pop("retry", None)
    if raw is None:
        return None
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    problems.append(f"{what}: retry={_show(raw)} is not true or false: param dropped")
    return None


def _parts(what: str, value: str) -> list[str] | Parsed:
    """``value`` split at ``;`` outside quotes, or the refusal when it cannot be read."""
    bad = _check_chars(what, value)
    if bad:
        return Parsed(None, (bad,))
    parts = _split(value, ";")
    if parts is None:
        return Parsed(None, (f"{what}: unterminated quoted string in {_show(value)}: ignored",))
    return parts


def parse_header_value(value: str, what: str = "disposition header") -> Parsed:
    """One value of the disposition header."""
    parts = _parts(what, value)
    if isinstance(parts, Parsed):
        return parts
    token = parts[0].lower()
    if token not in DISPOSITIONS:
        return Parsed(
            None,
            (
                f"{what}: unknown disposition {_show(parts[0])} ignored "
                f"(known: {', '.join(sorted(DISPOSITIONS))})",
            ),
        )
    params, problems = _params(what, parts[1:])
    if params is None:
        return Parsed(None, tuple(problems))
    retry = _retry(what, params, problems)
    text = sanitize_text(params.pop("reason", ""))
    problems += [f"{what}: unknown param {name!r} dropped" for name in sorted(params)]
    return Parsed(Disposition(token, retry, text, "header"), tuple(problems))


def parse_reason_value(value: str) -> Parsed:
    """One reason-value of an RFC 3326 ``Reason`` header: ``protocol *(;param)``.
    A cause that names no disposition (a normal clearing, an unmapped code) gives no
    disposition and no problem: it is an ordinary hang-up."""
    what = "Reason header"
    parts = _parts(what, value)
    if isinstance(parts, Parsed):
        return parts
    protocol = parts[0]
    if not _TOKEN_RE.match(protocol):
        return Parsed(None, (f"{what}: protocol {_show(protocol)} is not a token: ignored",))
    params, problems = _params(what, parts[1:])
    if params is None:
        return Parsed(None, tuple(problems))
    text = sanitize_text(params.get("text", ""))
    proto = protocol.lower()
    if proto == SIPBRIDGE_PROTOCOL:
        token = params.get("disposition", "").lower()
        if token not in DISPOSITIONS:
            return Parsed(
                None,
                (f"{what}: unknown disposition {_show(params.get('disposition', ''))} ignored",),
            )
        retry = _retry(what, params, problems)
        return Parsed(Disposition(token, retry, text, "reason"), tuple(problems))
    table = {"sip": SIP_CAUSES, "q.850": Q850_CAUSES}.get(proto)
    cause_text = params.get("cause", "")
    if table is None or not cause_text:
        return Parsed(None)
    if not re.fullmatch(r"[0-9]{1,4}", cause_text):
        return Parsed(None, (f"{what}: cause {_show(cause_text)} is not a number: ignored",))
    mapped = table.get(int(cause_text))
    if mapped is None:
        return Parsed(None)
    name = "SIP" if proto == "sip" else "Q.850"
    return Parsed(Disposition(mapped, None, text, "reason", f"{name} {int(cause_text)}"))


def _one(parsed: list[Parsed], what: str) -> Parsed:
    """One disposition out of several values: identical ones count once; different
    ones contradict each other and give none."""
    problems = tuple(p for r in parsed for p in r.problems)
    found = {r.disposition for r in parsed if r.disposition is not None}
    if len(found) > 1:
        values = ", ".join(sorted(d.value for d in found))
        return Parsed(None, (*problems, f"{what}: conflicting dispositions ({values}): ignored"))
    return Parsed(next(iter(found), None), problems)


def parse_disposition(header_values: Sequence[str], reason_values: Sequence[str] = ()) -> Parsed:
    """The disposition of an agent's BYE, from the raw values of the disposition header
    and of ``Reason`` (each instance, not yet split on commas). The disposition header
    wins; without a valid one, the ``Reason`` values (``X-Sipbridge`` first, then
    ``Q.850``, then ``SIP``, as RFC 3326 allows one per protocol)."""
    problems: list[str] = []
    if len(header_values) > MAX_VALUES or len(reason_values) > MAX_VALUES:
        return Parsed(None, (f"more than {MAX_VALUES} disposition/Reason headers: ignored",))
    if header_values:
        head = _one([parse_header_value(v) for v in header_values], "disposition header")
        if head.disposition is not None:
            return head
        problems += head.problems
    reasons: list[Parsed] = []
    for raw in reason_values:
        values = _split(raw, ",")
        if values is None:
            problems.append(f"Reason header: unterminated quoted string in {_show(raw)}")
            continue
        reasons += [parse_reason_value(v) for v in values[:MAX_VALUES] if v]
    problems += [p for r in reasons for p in r.problems]
    found = [r.disposition for r in reasons if r.disposition is not None]
    if not found:
        return Parsed(None, tuple(problems))
    best = min(_rank(d) for d in found)
    chosen = _one([Parsed(d) for d in found if _rank(d) == best], "Reason header")
    return Parsed(chosen.disposition, (*problems, *chosen.problems))


def _rank(d: Disposition) -> int:
    """X-Sipbridge (no cause) before Q.850 before SIP."""
    return 0 if not d.cause else (1 if d.cause.startswith("Q.850") else 2)


def bye_header_values(
    headers: Iterable[tuple[str, str]], names: Iterable[str]
) -> tuple[tuple[str, str], ...]:
    """The values of the headers ``names`` (case-insensitive) in a BYE's header list,
    bounded for the trip to the supervisor: at most :data:`MAX_VALUES` + 1 per name (one
    more than allowed, so the parser sees there were too many), each cut to
    :data:`WIRE_VALUE_CHARS` (the parser refuses anything that long)."""
    wanted = {n.lower(): n for n in names}
    counts: dict[str, int] = {}
    out: list[tuple[str, str]] = []
    for name, value in headers:
        key = name.lower()
        if key not in wanted or counts.get(key, 0) > MAX_VALUES:
            continue
        counts[key] = counts.get(key, 0) + 1
        out.append((wanted[key], value[:WIRE_VALUE_CHARS]))
    return tuple(out)


def values_of(headers: Iterable[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in headers if n.lower() == name.lower()]


__all__ = [
    "AGENT_ANSWERED_BY",
    "DISPOSITIONS",
    "MAX_TEXT_CHARS",
    "MAX_VALUE_CHARS",
    "Q850_CAUSES",
    "REASON_HEADER",
    "SIP_CAUSES",
    "Disposition",
    "Parsed",
    "bye_header_values",
    "parse_disposition",
    "parse_header_value",
    "parse_reason_value",
    "sanitize_text",
    "values_of",
]
