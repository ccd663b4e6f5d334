"""Configuration: one YAML file validated at start-up into typed models.

A bad file fails with :class:`ConfigError`, whose message names the file, the key
(dotted path, list indices included) and the reason.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sipbridge.admissionconfig import AdmissionConfig
from sipbridge.callsettings import DTMF_DIGITS as DTMF_DIGITS
from sipbridge.callsettings import DTMF_PAUSES as DTMF_PAUSES
from sipbridge.callsettings import DetectionSettings as DetectionSettings
from sipbridge.callsettings import IvrSettings as IvrSettings
from sipbridge.callsettings import RetryConfig as RetryConfig
from sipbridge.callsettings import StrictModel
from sipbridge.callsettings import WindowConfig as WindowConfig
from sipbridge.callsettings import check_dtmf as check_dtmf
from sipbridge.carrier import PROFILE_HEADERS, CallerIdentity, Codec, HealthCheck, Throttle
from sipbridge.clusterconfig import ClusterConfig
from sipbridge.dispositionconfig import DispositionConfig
from sipbridge.edge.model import EdgeConfig
from sipbridge.errors import ConfigError
from sipbridge.headers import (
    TEMPLATE_FIELDS,
    HeaderError,
    is_token,
    template_fields,
    validate_header_name,
)
from sipbridge.ivrscript import check_ivr_media
from sipbridge.mediaconfig import MediaConfig as MediaConfig
from sipbridge.mediafiles import media_folder, media_path

# Per-call settings live in sipbridge.callsettings; re-exported here.
from sipbridge.netpolicy import TargetPolicy, callback_url_problem, first_bad_network
from sipbridge.schedule import zone
from sipbridge.secretref import SecretRef as SecretRef
from sipbridge.sipconfig import MAX_TLS_PROFILES, SipConfig, TlsSettings, Transport, check_tls

Encryption = Literal["TLS/SRTP", "TLS/RTP", "UDP/SRTP", "UDP/RTP"]

_HOSTPORT_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+)(:(\d{1,5}))?$")


_Model = StrictModel


class _WithHeaders(_Model):
    """Validation shared by models that send SIP headers: names are SIP tokens the
    stack does not own, values have no control characters, templates use known fields."""

    @field_validator("headers", "header_templates", check_fields=False)
    @classmethod
    def _header_names(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_headers(v)

    @field_validator("header_templates", check_fields=False)
    @classmethod
    def _template_fields(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_templates(v)


def _check_headers(v: dict[str, str]) -> dict[str, str]:
    for name, value in v.items():
        validate_header_name(name)
        if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
            raise ValueError(f"header {name!r}: value contains control characters")
    return v


def _check_templates(v: dict[str, str]) -> dict[str, str]:
    for name, tmpl in v.items():
        for fld in template_fields(tmpl):
            if fld not in TEMPLATE_FIELDS and not fld.startswith("metadata."):
                allowed = ", ".join(sorted(TEMPLATE_FIELDS))
                raise ValueError(
                    f"header {name!r}: unknown template field {{{fld}}} "
                    f"(allowed: {allowed}, metadata.KEY)"
                )
    return v


class AgentConfig(_WithHeaders):
    """The AI agent's SIP endpoint (the a-leg)."""

    uri: str
    # Headers on the agent INVITE: static ones, and templates over the call's fields
    # ({call_sid}, {to_number}, {from_number}, {polyai_call_id}, {answered_by},
    # {answered_by_hint}, ...).
    # A template that renders empty (e.g. no polyai_call_id) is not sent.
    headers: dict[str, str] = Field(default_factory=dict)
    header_templates: dict[str, str] = Field(
        default_factory=lambda: {
            "X-Sipbridge-Call-SID": "{call_sid}",
            "X-PolyAI-Call-SID": "{call_sid}",
            "X-PolyAI-Call-ID": "{polyai_call_id}",
            "X-Sipbridge-Callee": "{to_number}",
            "X-Sipbridge-Caller": "{from_number}",
            "X-Sipbridge-Answered-By": "{answered_by}",
            # operator / screening, when the agent is dialled for one (else not sent)
            "X-Sipbridge-Answered-By-Hint": "{answered_by_hint}",
        }
    )
    # Every metadata key K is sent as header "<prefix>K" (None disables).
    metadata_header_prefix: str | None = "X-"
    # The agent should answer at once; a slow agent leaves a person in silence.
    ring_timeout_s: Annotated[float, Field(gt=0, le=120)] = 15.0
    # A sips: / ;transport=tls agent URI: how its certificate is checked.
    tls: TlsSettings = Field(default_factory=TlsSettings)
    # Dispositions in the agent's BYE (sipbridge.dispositionconfig).
    disposition: DispositionConfig = Field(default_factory=DispositionConfig)

    def transport(self) -> str:
        low = self.uri.lower()
        if low.startswith("sips:") or ";transport=tls" in low:
            return "tls"
        return "tcp" if ";transport=tcp" in low else "udp"

    @model_validator(mode="after")
    def _tls_fits(self) -> AgentConfig:
        check_tls(self.tls, self.transport(), "tls" in self.model_fields_set)
        return self

    @field_validator("uri")
    @classmethod
    def _sip_uri(cls, v: str) -> str:
        if not re.match(r"^sips?:[^\s]+$", v):
            raise ValueError("must be a SIP URI like 'sip:agent@10.0.0.5:5060'")
        return v


class ApiConfig(_Model):
    listen_address: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    tokens: list[SecretRef] = Field(default_factory=list)
    # Request bodies above this many bytes are refused with 413 before they are read.
    max_body_bytes: Annotated[int, Field(ge=1024, le=10 * 1024 * 1024)] = 64 * 1024

    @field_validator("tokens")
    @classmethod
    def _non_empty(cls, v: list[SecretRef]) -> list[SecretRef]:
        if not v:
            raise ValueError("at least one API token is required")
        return v


class TrunkAuth(_Model):
    username: str
    password: SecretRef
    # "*" answers a challenge from any realm.
    realm: str = "*"


class MetadataToCarrier(_Model):
    """Opt-in: the metadata keys sent to this carrier, each as header "<prefix>KEY"."""

    keys: Annotated[list[str], Field(min_length=1, max_length=256)]
    prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9\-.!%*_+`'~]{0,64}$")] = "X-"

    @model_validator(mode="after")
    def _names(self) -> MetadataToCarrier:
        for i, key in enumerate(self.keys):
            if not is_token(key):
                raise ValueError(f"keys.{i}: {key!r} is not a SIP token")
            try:
                validate_header_name(self.prefix + key)
            except HeaderError as e:
                raise ValueError(f"keys.{i}: {str(e).removeprefix('header: ')}") from None
        return self


class TrunkConfig(_WithHeaders):
    """A carrier trunk: where INVITEs go and what they carry."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]+$")]
    # host[:port] of the carrier's SIP proxy; the Request-URI is sip:<number>@<address>.
    address: str
    transport: Transport = "udp"
    encryption: Encryption = "UDP/RTP"
    # E.164 caller ID used when the trigger gives no from_number (the From URI's user
    # part: '+', letters, digits and -_.!~*'() only). Without it every trigger routed
    # here must give from_number (else 400 naming from_number).
    caller_id: Annotated[str, Field(pattern=r"^\+?[A-Za-z0-9\-_.!~*'()]{1,64}$")] | None = None
    # Host part of the From URI; defaults to the bridge's own address.
    from_domain: Annotated[str, Field(pattern=r"^[A-Za-z0-9.\-]{1,253}$")] | None = None
    # Headers sent verbatim on every INVITE through this trunk.
    headers: dict[str, str] = Field(default_factory=dict)
    # Headers whose values are templates: "{call_sid}", "{to_number}", "{metadata.KEY}", ...
    header_templates: dict[str, str] = Field(default_factory=dict)
    # Metadata is the customer's data: it reaches the agent, and a carrier only for the
    # keys listed here (opt-in per trunk). None: no metadata header to this carrier.
    metadata_to_carrier: MetadataToCarrier | None = None
    # "request": the trigger's from_number if given, else caller_id; "trunk": always
    # caller_id (carriers that only accept their own DIDs as caller ID).
    caller_id_policy: Literal["request", "trunk"] = "request"
    # Encryption modes a trigger may ask for on this trunk (`encryption` is the default).
    allowed_encryption: list[Encryption] | None = None
    # Digest credentials answered when the carrier challenges (401/407).
    auth: TrunkAuth | None = None
    # Carrier limits: concurrent calls and calls per second (token bucket, burst cps_burst).
    max_concurrent: Annotated[int, Field(ge=1, le=100_000)] | None = None
    cps: Annotated[float, Field(gt=0, le=10_000)] | None = None
    cps_burst: Annotated[int, Field(ge=1, le=10_000)] = 1

    # transport: tls only: how the carrier's certificate is checked.
    tls: TlsSettings = Field(default_factory=TlsSettings)

    # Carrier profile (README "Carrier profiles"): identity headers and URI form.
    identity: CallerIdentity = Field(default_factory=CallerIdentity)
    # Audio codecs offered, in order (None: pjsua's defaults).
    codecs: Annotated[list[Codec], Field(min_length=1, max_length=3)] | None = None
    # RFC 4733 telephone-event payload type of our offers (dynamic range, RFC 3551).
    telephone_event_pt: Annotated[int, Field(ge=96, le=127)] = 101
    # RFC 4028 session timer values for this trunk (None: sip.session_*).
    session_expires_s: Annotated[int, Field(ge=90, le=86400)] | None = None
    min_se_s: Annotated[int, Field(ge=90, le=86400)] | None = None
    # OPTIONS health checks (None: off, the trunk is always up).
    health_check: HealthCheck | None = None
    # Carrier pushback slows this trunk's dial rate (needs `cps`).
    throttle: Throttle = Field(default_factory=Throttle)

    @model_validator(mode="after")
    def _profile_fits(self) -> TrunkConfig:
        if self.codecs is not None and len(set(self.codecs)) != len(self.codecs):
            raise ValueError(f"codecs: listed twice in {self.codecs}")
        if self.session_expires_s and self.min_se_s and self.min_se_s > self.session_expires_s:
            raise ValueError("min_se_s must be <= session_expires_s")
        for name in (*self.headers, *self.header_templates):
            if name.lower() in PROFILE_HEADERS:
                raise ValueError(f"header {name!r}: set it with identity: (carrier profile)")
        return self

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "metadata_header_prefix" in data:
            raise ValueError(
                "metadata_header_prefix: replaced by metadata_to_carrier: "
                "{keys: [KEY, ...], prefix: 'X-'} (metadata reaches a carrier "
                "only for the keys listed there)"
            )
        return data

    @model_validator(mode="after")
    def _tls_fits(self) -> TrunkConfig:
        check_tls(self.tls, self.transport, "tls" in self.model_fields_set)
        return self

    @model_validator(mode="after")
    def _encryption_fits_transport(self) -> TrunkConfig:
        for enc in self.encryptions():
            if enc.startswith("TLS/") != (self.transport == "tls"):
                raise ValueError(
                    f"encryption {enc} needs transport "
                    f"{'tls' if enc.startswith('TLS/') else 'udp or tcp'} "
                    f"(this trunk uses {self.transport})"
                )
        return self

    def encryptions(self) -> list[str]:
        allowed = list(self.allowed_encryption or [])
        return [self.encryption, *[e for e in allowed if e != self.encryption]]

    @field_validator("address")
    @classmethod
    def _hostport(cls, v: str) -> str:
        m = _HOSTPORT_RE.match(v)
        if not m:
            raise ValueError("must be host or host:port")
        if m.group(3) and not 0 < int(m.group(3)) < 65536:
            raise ValueError("port must be 1-65535")
        return v


class RouteTrunk(_Model):
    name: str
    # Lower numbers are tried first; within a priority, trunks are ordered by weight.
    priority: Annotated[int, Field(ge=0, le=1000)] = 0
    weight: Annotated[float, Field(ge=0, le=1_000_000)] = 1.0


class InboundConfig(_Model):
    """SIP-triggered mode: INVITEs from the agent platform (sources in sip.inbound_allow)
    are dialled out like API triggers and bridged back."""

    enabled: bool = False
    # Where the destination number is: the Request-URI's user part, or a header.
    number_source: Literal["request_uri", "header"] = "request_uri"
    number_header: str = "X-Dest-Number"
    # For national numbers without '+'.
    default_country: str | None = None
    # Headers copied from the inbound INVITE to the carrier INVITE.
    copy_headers: list[str] = Field(default_factory=list)
    # The agent platform's call ID, if it sends one (stored as polyai_call_id).
    call_id_header: str | None = "X-PolyAI-Call-ID"


class RouteConfig(_Model):
    """Numbers starting with ``prefix`` (E.164, '+' optional) go to ``trunk`` or to the
    hunt group ``trunks`` (by priority, then weight; failover on 408/5xx/transport
    errors)."""

    prefix: Annotated[str, Field(pattern=r"^\+?[0-9]*$")] = ""
    trunk: str | None = None
    trunks: list[RouteTrunk] = Field(default_factory=list)
    window: WindowConfig | None = None
    # IANA zone used when the number's zone is unknown or ambiguous (e.g. toll-free).
    timezone: str | None = None
    retry: RetryConfig | None = None
    detection: DetectionSettings | None = None
    ivr: IvrSettings | None = None

    @model_validator(mode="after")
    def _one_target(self) -> RouteConfig:
        if (self.trunk is None) == (not self.trunks):
            raise ValueError("give exactly one of 'trunk' or 'trunks'")
        if self.timezone is not None:
            _check_zone(self.timezone)
        return self

    def candidates(self) -> list[tuple[str, int, float]]:
        if self.trunk is not None:
            return [(self.trunk, 0, 1.0)]
        return [(t.name, t.priority, t.weight) for t in self.trunks]


def _check_zone(name: str) -> None:
    zone(name)  # ValueError naming the zone


class LimitsConfig(_Model):
    # Calls in progress across all trunks (None: only the worker pool's capacity).
    max_concurrent_calls: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    # Triggers per second per API token (token bucket), answered 429 + Retry-After above.
    api_rate_per_s: Annotated[float, Field(gt=0, le=100_000)] = 20.0
    api_burst: Annotated[int, Field(ge=1, le=1_000_000)] = 100


class SchedulerConfig(_Model):
    # A call still queued this long after its trigger ends as failure (PolyAI's reason
    # text "call queueing: max timeout limit exceeded").
    max_queue_time_s: Annotated[float, Field(gt=0, le=30 * 86400)] = 86400.0
    # Used when neither the call, the route nor the number gives a time zone.
    default_timezone: str | None = None

    @field_validator("default_timezone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        if v is not None:
            _check_zone(v)
        return v


class TimersConfig(_Model):
    # 60 s matches common carrier no-answer timers (Twilio's default timeout is 60 s).
    ring_timeout_s: Annotated[float, Field(gt=0, le=600)] = 60.0
    # Hard ceiling on an answered call: 4 h, as Twilio's time_limit default.
    max_call_duration_s: Annotated[float, Field(gt=0, le=86400)] = 14400.0


class StoreConfig(_Model):
    """Call storage: ``sqlite`` (embedded, the default: ``path``) or ``postgresql``
    (shared: ``dsn``, a secret reference such as ``{env: SIPBRIDGE_PG_DSN}``).
    ``backend`` is the key to use; ``kind`` is its older name."""

    kind: Literal["sqlite", "postgresql"] = Field(
        "sqlite", validation_alias=AliasChoices("backend", "kind")
    )
    path: str = "var/sipbridge.db"
    # libpq connection string or URI; never printed (check-config masks it).
    dsn: SecretRef | None = None
    # Ended calls answer 404 after this long (SPEC: 2 hours).
    retention_s: Annotated[float, Field(gt=0, le=366 * 86400)] = 7200.0

    @model_validator(mode="after")
    def _dsn(self) -> StoreConfig:
        if self.kind == "postgresql" and self.dsn is None:
            raise ValueError("backend postgresql needs dsn (e.g. dsn: {env: SIPBRIDGE_PG_DSN})")
        if self.kind == "sqlite" and self.dsn is not None:
            raise ValueError("dsn is for backend postgresql; sqlite uses path")
        return self


class WebhookConfig(_Model):
    """Status callbacks: one signed POST per status change (see sipbridge/webhooks.py)."""

    # Default receiver for every call; a trigger's ``status_callback`` overrides it.
    url: str | None = None
    # HMAC-SHA256 key for X-Sipbridge-Signature; without it callbacks are sent unsigned.
    secret: SecretRef | None = None
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 5
    # First retry after backoff_s, then doubling (capped at 60 s).
    backoff_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    # Unused since callbacks live in the store's outbox (nothing is dropped); accepted so
    # that existing configs still load.
    queue_size: Annotated[int, Field(ge=1, le=1_000_000)] = 10000

    # Callback targets must be global addresses (checked on the URL and again after DNS
    # at delivery); allow_private opens loopback/private/link-local/CGNAT, allow_cidrs
    # opens exactly the networks listed.
    allow_private: bool = False
    allow_cidrs: Annotated[list[str], Field(max_length=256)] = Field(default_factory=list)

    def policy(self) -> TargetPolicy:
        return TargetPolicy.of(self.allow_private, self.allow_cidrs)

    @model_validator(mode="after")
    def _http_url(self) -> WebhookConfig:
        bad = first_bad_network(self.allow_cidrs)
        if bad is not None:
            raise ValueError(f"allow_cidrs.{bad[0]}: {bad[1]!r} is not an IP network")
        problem = None if self.url is None else callback_url_problem(self.url, self.policy())
        if problem:
            raise ValueError(f"url: {problem}")
        return self


class ShutdownConfig(_Model):
    # On SIGTERM: stop taking triggers, let live calls finish this long, then hang up.
    grace_s: Annotated[float, Field(ge=0, le=86400)] = 30.0


class Config(_Model):
    sip: SipConfig = Field(default_factory=SipConfig)
    agent: AgentConfig
    api: ApiConfig
    trunks: list[TrunkConfig]
    routes: list[RouteConfig]
    timers: TimersConfig = Field(default_factory=TimersConfig)
    store: StoreConfig = Field(default_factory=lambda: StoreConfig.model_validate({}))
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    # Default retry policy for routes that give none.
    retry: RetryConfig = Field(default_factory=RetryConfig)
    # Default recipient detection for routes that give none.
    detection: DetectionSettings = Field(default_factory=DetectionSettings)
    inbound: InboundConfig = Field(default_factory=InboundConfig)
    webhooks: WebhookConfig = Field(default_factory=WebhookConfig)
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    media: MediaConfig = Field(default_factory=MediaConfig)
    # A Kamailio + rtpengine edge in front of the nodes (README "Edge proxy"): carrier
    # INVITEs go through it; `sipbridge edge-config` writes its files.
    edge: EdgeConfig | None = None
    # Several nodes sharing one PostgreSQL store and one Redis (README "Running more than
    # one node"); absent = a single node.
    cluster: ClusterConfig | None = None
    # Refuse new calls before the node degrades (README "Admission control").
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)

    @model_validator(mode="after")
    def _cluster_store(self) -> Config:
        if self.cluster is not None and self.store.kind != "postgresql":
            raise ValueError(
                "cluster: needs store.backend postgresql (nodes share calls through it; "
                "SQLite is one node's file)"
            )
        return self

    @model_validator(mode="after")
    def _references(self) -> Config:
        names = [t.name for t in self.trunks]
        if not names:
            raise ValueError("trunks: at least one trunk is required")
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"trunks: duplicate trunk names {sorted(dup)}")
        if not self.routes:
            raise ValueError("routes: at least one route is required")
        for i, r in enumerate(self.routes):
            if r.trunk is not None and r.trunk not in names:
                raise ValueError(f"routes.{i}.trunk: unknown trunk {r.trunk!r} (known: {names})")
            for j, t in enumerate(r.trunks):
                if t.name not in names:
                    raise ValueError(
                        f"routes.{i}.trunks.{j}.name: unknown trunk {t.name!r} (known: {names})"
                    )
        self._check_media()
        if self.inbound.enabled:  # SIP-triggered calls carry no from_number
            for i, trunk in enumerate(self.trunks):
                if not trunk.caller_id:
                    raise ValueError(
                        f"trunks.{i}.caller_id: required when inbound.enabled "
                        "(SIP-triggered calls give no caller ID)"
                    )
        return self

    @model_validator(mode="after")
    def _tls_profiles(self) -> Config:
        # pjsip's TLS settings belong to a transport: each worker opens one TLS transport
        # per distinct (verify, CA file) and keeps at most MAX_TLS_PROFILES of them.
        legs: list[tuple[str, TlsSettings]] = [(t.transport, t.tls) for t in self.trunks]
        legs.append((self.agent.transport(), self.agent.tls))
        profiles = {(tls.verify, tls.ca_list()) for transport, tls in legs if transport == "tls"}
        if len(profiles) > MAX_TLS_PROFILES:
            raise ValueError(
                f"trunks: {len(profiles)} different TLS settings (verify, ca_file); at most "
                f"{MAX_TLS_PROFILES}: let trunks share a CA file (a PEM file may hold several)"
            )
        return self

    @model_validator(mode="after")
    def _edge_fits(self) -> Config:
        from sipbridge.edge.generate import check_edge

        check_edge(self)  # ValueError "edge.<key>: reason"
        return self

    def _check_media(self) -> None:
        where = [("detection", self.detection)] + [
            (f"routes.{i}.detection", r.detection) for i, r in enumerate(self.routes)
        ]
        for key, det in where:
            if det is not None and det.message_wav is not None:
                try:
                    media_path(self.media.dir, det.message_wav, "")
                except ValueError as e:
                    raise ValueError(f"{key}.message_wav: {e}") from None
        for i, r in enumerate(self.routes):
            check_ivr_media(self.media.dir, r.ivr, f"routes.{i}.ivr")
        if self.media.prompt_dir is not None:
            from sipbridge.media.promptlib import PromptLibrary

            try:
                PromptLibrary.from_folder(
                    media_folder(self.media.dir, self.media.prompt_dir),
                    self.media.prompt_max_s,
                    self.media.prompt_max_bytes,
                )
            except ValueError as e:
                raise ValueError(f"media.prompt_dir: {e}") from None

    def trunk(self, name: str) -> TrunkConfig:
        for t in self.trunks:
            if t.name == name:
                return t
        raise KeyError(name)


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def parse_config(data: Any, path: str = "<config>") -> Config:
    """Validate already-parsed YAML data; raise :class:`ConfigError` on any problem."""
    if not isinstance(data, dict):
        raise ConfigError(path, [("(top level)", "must be a mapping of sections")])
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            msg = err["msg"].removeprefix("Value error, ")
            loc = _loc(err["loc"])
            # Cross-field validators name their key as "a.b.c: reason".
            m = re.match(r"^([A-Za-z_][\w.]*): (.*)$", msg, re.S)
            if m:
                loc = f"{loc}.{m.group(1)}" if err["loc"] else m.group(1)
                msg = m.group(2)
            problems.append((loc, msg))
        raise ConfigError(path, problems) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(p), [("(file)", f"cannot read: {e.strerror}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(str(p), [(where, f"YAML syntax error: {problem}")]) from None
    return parse_config(data, str(p))
