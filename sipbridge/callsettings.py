"""Per-call settings that the API and the config share: calling window, retry policy,
recipient detection, IVR walking. Every number is bounded (visible in the OpenAPI schema
as minimum/maximum); NaN and +-Infinity are refused.
"""

from __future__ import annotations

from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sipbridge.ivrscript import DTMF_DIGITS as DTMF_DIGITS
from sipbridge.ivrscript import DTMF_PAUSES as DTMF_PAUSES
from sipbridge.ivrscript import IvrScript
from sipbridge.ivrscript import check_dtmf as check_dtmf
from sipbridge.mediafiles import check_media_name
from sipbridge.schedule import CallingWindow, RetryPolicy
from sipbridge.thresholds import DetectionThresholds, order_problems


def _is_number_type(annotation: Any) -> bool:
    """``int``, ``float`` or an optional/union of them (never ``bool``)."""
    if annotation in (int, float):
        return True
    args = get_args(annotation)
    return (
        bool(args)
        and get_origin(annotation) in (Union, UnionType)
        and any(a in (int, float) for a in args)
        and bool not in args
    )


def refuse_bool(name: str, value: Any) -> None:
    """A boolean where a number is expected, refused naming ``name`` (pydantic's lax mode
    would read true/false as 1/0)."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: a number is required, not {str(value).lower()}")


class StrictModel(BaseModel):
    # Bounds policy: every number has a lower and an upper bound (visible in the OpenAPI
    # schema as minimum/maximum); NaN and +-Infinity are refused everywhere.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        # pydantic's lax mode reads true/false as 1/0 for a number field: a JSON or YAML
        # boolean where the schema says number is a client's mistake, refused by name.
        if isinstance(data, dict):
            for name, info in cls.model_fields.items():
                if _is_number_type(info.annotation):
                    refuse_bool(name, data.get(info.alias or name))
        return data


_Model = StrictModel


class WindowConfig(_Model):
    """Allowed local calling hours, judged in the recipient's time zone(s)."""

    days: Annotated[str, Field(max_length=64)] = "mon-sun"
    hours: Annotated[str, Field(max_length=32)] = "00:00-24:00"

    @model_validator(mode="after")
    def _parses(self) -> WindowConfig:
        CallingWindow.parse(self.days, self.hours)
        return self

    def window(self) -> CallingWindow:
        return CallingWindow.parse(self.days, self.hours)


class RetryConfig(_Model):
    """Which outcomes are retried, how often and how far apart."""

    # Outcome kinds (sipbridge.outcomes.OUTCOME_KINDS): busy, no_answer, carrier_error,
    # transport_error, bridge_error, machine, ...; an unknown kind is refused.
    retry_on: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=32)] = Field(
        default_factory=lambda: [
            "busy",
            "no_answer",
            "carrier_error",
            "transport_error",
            "bridge_error",
        ]
    )
    # Counts the first attempt: 1 means never retry.
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 1
    # Backoff: min(cap_s, base_s * factor**(n-1)) shortened by up to `jitter` (0..1).
    # Bounded so that any backoff fits the scheduler (at most 7 days apart).
    base_s: Annotated[float, Field(ge=0, le=86400)] = 60.0
    factor: Annotated[float, Field(ge=1, le=10)] = 2.0
    cap_s: Annotated[float, Field(ge=0, le=604800)] = 3600.0
    jitter: Annotated[float, Field(ge=0, le=1)] = 0.2

    @field_validator("retry_on")
    @classmethod
    def _known_kinds(cls, v: list[str]) -> list[str]:
        from sipbridge.outcomes import OUTCOME_KINDS

        unknown = [k for k in v if k not in OUTCOME_KINDS]
        if unknown:
            raise ValueError(
                f"unknown outcome kind(s) {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(sorted(OUTCOME_KINDS))})"
            )
        return v

    @model_validator(mode="after")
    def _cap_over_base(self) -> RetryConfig:
        # The backoff is min(cap_s, base_s * factor**(n-1)): a cap under the base would
        # silently replace it on every attempt.
        if self.cap_s < self.base_s:
            cap = f"{self.cap_s:g}" + ("" if "cap_s" in self.model_fields_set else ", the default")
            raise ValueError(f"cap_s ({cap}) must be at least base_s ({self.base_s:g})")
        return self

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            retry_on=frozenset(self.retry_on),
            max_attempts=self.max_attempts,
            base_s=self.base_s,
            factor=self.factor,
            cap_s=self.cap_s,
            jitter=self.jitter,
        )


class DetectionSettings(_Model):
    """Recipient detection for a call: what to analyse and what to do with machines."""

    # Analyse 183 early media for SIT / busy / reorder and end the attempt without waiting
    # for the carrier's final response.
    early_media: bool = True
    # Analyse the first seconds after answer: human / machine / ivr / fax / silence.
    answer: bool = True
    # A machine result is only final at the beep (or when the greeting ends without one).
    wait_for_beep: bool = False
    # When to bridge the agent: "answer" (as soon as the callee answers; detection keeps
    # running and a machine policy can still end the call) or "human" (only once the
    # callee is recognised as a person).
    connect_on: Literal["answer", "human"] = "answer"
    # What to do when a machine (voicemail) answers: "connect" (bridge the agent anyway,
    # the result in a header), "hangup" (end as failure 'answered by machine'), "retry"
    # (the same, retryable), "leave_message" (wait for the beep or the greeting's end,
    # play message_wav, hang up with success).
    machine_action: Literal["connect", "hangup", "retry", "leave_message"] = "connect"
    # "hangup"/"retry" without wait_for_beep: how long a provisional machine result (decided
    # ~1.8 s into a long greeting) may still turn into an operator or a screening assistant
    # before the flow acts on it; a final result (beep, greeting end) acts at once. The
    # detector decides a screener 2 s after its closing question, and a screening
    # assistant's greeting runs 4.5-9 s (Pixel's full notice ~9 s): from the provisional
    # decision (~1.8 s into the greeting) that is up to ~9 s, so 10 s. (4 s hung up on
    # every screener longer than ~4 s: tests/unit/test_flow_on_audio.py.) Live-looking
    # receptionists are rarely provisional machines; they are decided 0.9-1.5 s after
    # they stop. The cost: a machine that neither beeps nor ends its greeting is hung up
    # up to 6 s later than with 4 s; a beep or the greeting's end still acts at once.
    # 0 acts on the provisional result at once.
    machine_settle_s: Annotated[float, Field(ge=0, le=30)] = 10.0
    # A live operator ("human" with hint "operator") or a phone-side screening assistant
    # ("human" with hint "screening"): "connect" the agent (it should speak at once: state
    # name and purpose to a screener), or end the call ("hangup", "retry": retryable).
    operator_action: Literal["connect", "hangup", "retry"] = "connect"
    screening_action: Literal["connect", "hangup", "retry"] = "connect"
    # WAV (8 or 16 kHz mono PCM) played by "leave_message": a file name in media.dir.
    message_wav: Annotated[str, Field(max_length=255)] | None = None
    # Hang up on fax machines (CNG/CED).
    hangup_on_fax: bool = True
    # Overrides of sipbridge.media.detect.DetectionConfig thresholds (milliseconds, Hz),
    # each bounded (sipbridge/thresholds.py).
    thresholds: DetectionThresholds = Field(default_factory=lambda: DetectionThresholds())

    @model_validator(mode="after")
    def _message(self) -> DetectionSettings:
        if self.machine_action == "leave_message":
            if self.connect_on != "human":
                raise ValueError(
                    "connect_on: must be 'human' when machine_action is "
                    "leave_message (the agent must not be bridged to the "
                    "voicemail before the message)"
                )
            if not self.message_wav:
                raise ValueError("message_wav: required when machine_action is leave_message")
        return self

    @field_validator("message_wav")
    @classmethod
    def _file_name(cls, v: str | None) -> str | None:
        # The file itself is checked against media.dir by the config / the trigger.
        return None if v is None else check_media_name(v, "")

    @field_validator("thresholds", mode="before")
    @classmethod
    def _no_bool_thresholds(cls, v: Any) -> Any:
        # Every threshold is a number: a boolean would be read as 1/0 (tone_purity: true is
        # 1.0, no tone ever that pure, no beep heard), refused by name like elsewhere.
        if isinstance(v, dict):
            for key, value in v.items():
                refuse_bool(key, value)
        return v

    @field_validator("thresholds")
    @classmethod
    def _ordered(cls, v: DetectionThresholds) -> DetectionThresholds:
        # Each key within its bounds can still invert a pair whose order the detector
        # relies on (an empty beep band, a beep end reported before the beep is heard, an
        # operator rule that can never fire ...; sipbridge/thresholds.py): refused naming
        # both keys, against the other key's default when only one is given.
        problems = order_problems(v)
        if problems:
            raise ValueError("; ".join(problems))
        return v


class IvrSettings(_Model):
    """Walking an IVR after answer: digits, then optionally hold until a person speaks."""

    # Sent as RFC 4733 events after answer (Twilio's SendDigits): 0-9 * # A-D, w, W; or a
    # list of such strings and {say: FILE} steps (a WAV in media.dir played into the
    # carrier leg, in order: the next step starts when the playback ends), see
    # sipbridge/ivrscript.py.
    send_digits: IvrScript | None = None
    send_digits_delay_s: Annotated[float, Field(ge=0, le=60)] = 1.0
    digit_duration_ms: Annotated[int, Field(ge=40, le=2000)] = 160
    digit_gap_ms: Annotated[int, Field(ge=20, le=2000)] = 80
    # After the digits, stay silent until a live person speaks (not music, not a looping
    # prompt), then connect the agent.
    hold: bool = False
    # Escape hatch: the whole IVR/hold phase may last this long after answer; then the
    # call ends with a retryable failure.
    max_ivr_s: Annotated[float, Field(gt=0, le=7200)] = 600.0
    # The IVR plays the menu heard before the digits again after them (a looping menu: the
    # digits were not accepted): "fail" ends the call at once as a retryable failure "IVR
    # menu repeated"; "ignore" keeps waiting (max_ivr_s still applies); "next_digits"
    # sends the next script of alternative_digits send_digits_delay_s after the repeat
    # was recognised, and fails as "fail" does once they are all used.
    on_menu_repeat: Literal["fail", "ignore", "next_digits"] = "fail"
    alternative_digits: Annotated[list[IvrScript], Field(max_length=8)] = Field(
        default_factory=list
    )

    @model_validator(mode="after")
    def _alternatives(self) -> IvrSettings:
        if self.send_digits and self.max_ivr_s <= self.send_digits_delay_s:
            # the escape hatch (counted from the answer) would end the call before the
            # first digit is sent
            raise ValueError(
                f"max_ivr_s ({self.max_ivr_s:g}) must be above send_digits_delay_s "
                f"({self.send_digits_delay_s:g}): the IVR time limit would end the call "
                "before the digits are sent"
            )
        if self.on_menu_repeat == "next_digits":
            if not self.alternative_digits:
                raise ValueError(
                    "alternative_digits: required (1-8 scripts) when on_menu_repeat is next_digits"
                )
        elif self.alternative_digits:
            raise ValueError(
                "alternative_digits: only used with on_menu_repeat: next_digits "
                f"(on_menu_repeat is {self.on_menu_repeat})"
            )
        return self
