"""Agent dispositions (``agent.disposition:`` in the config): which BYE header carries
the agent's verdict and how some verdicts map to outcomes (README "Dispositions from the
agent"). Resolved once per call into a frozen :class:`DispositionPolicy`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import field_validator

from sipbridge.callsettings import StrictModel
from sipbridge.disposition import REASON_HEADER
from sipbridge.headers import validate_header_name


@dataclass(frozen=True)
class DispositionPolicy:
    """What the worker reads from the agent's BYE and how the call manager maps it."""

    enabled: bool = True
    header: str = "X-Sipbridge-Disposition"
    reason_header: bool = True
    voicemail: str = "failure"

    def read_headers(self) -> tuple[str, ...]:
        """The header names the worker reports from the agent's BYE (DialPlan)."""
        if not self.enabled:
            return ()
        return (self.header, REASON_HEADER) if self.reason_header else (self.header,)


class DispositionConfig(StrictModel):
    """``agent.disposition``."""

    # false: the agent's BYE is never read (an agent hang-up ends the call as it always did).
    enabled: bool = True
    # The BYE header carrying "value; retry=true|false; reason=..." (a SIP token, RFC 3261
    # 25.1; not one the SIP stack owns, not Reason).
    header: str = "X-Sipbridge-Disposition"
    # Also read an RFC 3326 Reason header (SIP / Q.850 causes, protocol X-Sipbridge).
    reason_header: bool = True
    # machine / voicemail: "failure" ('answered by machine (agent)') or "message_left"
    # (success 'voicemail message left (agent)': the agent left the message itself).
    voicemail: Literal["failure", "message_left"] = "failure"

    @field_validator("header")
    @classmethod
    def _header(cls, v: str) -> str:
        validate_header_name(v, "")
        if v.lower() == REASON_HEADER.lower():
            raise ValueError("Reason is read by reason_header; name another header")
        return v

    def policy(self) -> DispositionPolicy:
        return DispositionPolicy(self.enabled, self.header, self.reason_header, self.voicemail)


__all__ = ["DispositionConfig", "DispositionPolicy"]
