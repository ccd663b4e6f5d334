"""A call's policy: which route and trunks, retry policy, detection and IVR settings,
calling window and time zones. Resolved once per call from the config and the call's
request (at trigger time, or on first use after a restart) and kept typed in a
:class:`PolicyBook` until the call ends: nothing is looked up or validated again."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sipbridge.callsettings import DetectionSettings, IvrSettings
from sipbridge.config import Config, RouteConfig
from sipbridge.dispositionconfig import DispositionPolicy
from sipbridge.mediafiles import media_folder
from sipbridge.records import CallRecord, CallRequest
from sipbridge.routing import choose_route
from sipbridge.schedule import CallingWindow, RetryPolicy, resolve_zones


@dataclass(frozen=True)
class CallPolicy:
    route: RouteConfig
    # The route's (trunk, priority, weight) candidates offering the call's encryption.
    candidates: tuple[tuple[str, int, float], ...]
    retry: RetryPolicy
    detection: DetectionSettings
    ivr: IvrSettings | None
    window: CallingWindow | None
    zones: tuple[str, ...]  # judged in all of them (empty when no window)
    # Why the window cannot be judged (no time zone known for the number), or "".
    window_problem: str = ""
    # The prompt library's folder (media.prompt_dir, checked at start-up), or None.
    prompts: str | None = None
    # Its per-WAV limits (media.prompt_max_s, media.prompt_max_bytes): the workers load the
    # library again and must accept what the start-up check accepted.
    prompt_limits: tuple[float, int] | None = None
    # How the agent's BYE dispositions map (agent.disposition).
    disposition: DispositionPolicy = field(default_factory=DispositionPolicy)

    @property
    def trunks(self) -> list[str]:
        return [c[0] for c in self.candidates]

    def detection_plan(self) -> dict[str, Any] | None:
        """What the worker analyses on the carrier leg (DialPlan.detection)."""
        d = self.detection
        if not (d.early_media or d.answer):
            return None
        plan: dict[str, Any] = {
            "early": d.early_media,
            "answer": d.answer,
            "config": dict(d.thresholds),
        }
        if self.prompts:
            plan["prompts"] = self.prompts
            if self.prompt_limits is not None:
                plan["prompt_limits"] = list(self.prompt_limits)
        return plan


def prompt_folder(cfg: Config) -> str | None:
    """The prompt library's folder (media.prompt_dir inside media.dir), or None; the same
    string the plans carry and the workers' library cache is keyed by."""
    if not cfg.media.prompt_dir:
        return None
    return str(media_folder(cfg.media.dir, cfg.media.prompt_dir))


def prompt_limits(cfg: Config) -> tuple[float, int]:
    """The prompt library's per-WAV limits (media.prompt_max_s, media.prompt_max_bytes)."""
    return (cfg.media.prompt_max_s, cfg.media.prompt_max_bytes)


def resolve_policy(cfg: Config, to_number: str, request: CallRequest) -> CallPolicy:
    """The policy of a call to ``to_number``; RoutingError when no route matches."""
    route = choose_route(cfg, to_number)
    cands = route.candidates()
    if request.encryption:
        cands = [c for c in cands if request.encryption in cfg.trunk(c[0]).encryptions()]
    window_cfg = request.calling_window or route.window
    window = window_cfg.window() if window_cfg is not None else None
    zones: tuple[str, ...] = ()
    problem = ""
    if window is not None:
        try:
            zones = resolve_zones(
                to_number, request.timezone, route.timezone or cfg.scheduler.default_timezone
            )
        except ValueError as e:
            problem = str(e)
    return CallPolicy(
        route=route,
        candidates=tuple(cands),
        retry=(request.retry or route.retry or cfg.retry).policy(),
        detection=request.detection or route.detection or cfg.detection,
        ivr=request.ivr or route.ivr,
        window=window,
        zones=zones,
        window_problem=problem,
        prompts=prompt_folder(cfg),
        prompt_limits=prompt_limits(cfg),
        disposition=cfg.agent.disposition.policy(),
    )


class PolicyBook:
    """The policy of every call that has not ended, by callSid."""

    def __init__(self, resolve: Callable[[str, CallRequest], CallPolicy]) -> None:
        self._resolve = resolve
        self._policies: dict[str, CallPolicy] = {}

    def __len__(self) -> int:
        return len(self._policies)

    def keep(self, call_sid: str, policy: CallPolicy) -> None:
        self._policies[call_sid] = policy

    def of(self, rec: CallRecord) -> CallPolicy:
        """The call's policy, resolved now if it has none yet (a call stored before a
        restart); raises what resolving raises."""
        policy = self._policies.get(rec.call_sid)
        if policy is None:
            policy = self._policies[rec.call_sid] = self._resolve(rec.to_number, rec.request)
        return policy

    def forget(self, call_sid: str) -> None:
        self._policies.pop(call_sid, None)


__all__ = ["CallPolicy", "PolicyBook", "prompt_folder", "prompt_limits", "resolve_policy"]
