"""Every exception the bridge raises on purpose, in one tree.

    SipBridgeError
    ├── ConfigError ........................ a config file that cannot be used (.path, .problems)
    ├── InputError (ValueError) ............ a value that must not be used; .field names it
    │   ├── NumberError .................... a number or country code that cannot be dialled
    │   ├── HeaderError .................... a SIP header name or value that must not be sent
    │   ├── RoutingError ................... no route, trunk, encryption, zone or window for it
    │   └── MediaFileError ................. a media file name outside the media folder
    ├── ApiError ........................... an HTTP error answer (.status, .field, .headers)
    │   └── ForwardError ................... another node owns the call and did not acknowledge
    ├── CallError .......................... an operation on one call
    │   ├── CallNotFound (KeyError) ........ no such call (or purged)
    │   └── InvalidTransition (RuntimeError)  not allowed in the call's state
    ├── StoreError (RuntimeError) .......... call storage cannot be opened or written
    │   ├── StoreUnavailable ............... not reachable now (PostgreSQL down): try again later
    │   ├── DuplicateCall .................. the callSid or idempotency key exists already
    │   └── StaleClaim ..................... a write fenced out: another node owns the attempt now
    ├── NodeIdInUse ........................ another live node holds this cluster.node_id
    ├── NodeIdTaken ........................ another process took this node's id while it was paused
    ├── PoolError (RuntimeError) ........... the SIP worker pool could not start its workers
    ├── PoolFull ........................... no SIP worker slot free for a dial: the call waits
    ├── ProtocolError (ValueError) ......... a malformed supervisor <-> worker IPC message
    ├── SipParseError (ValueError) ......... bytes that are not a readable SIP request
    ├── GuardError (RuntimeError) .......... the SIP packet guard cannot be installed
    ├── AudioFormatError (ValueError) ...... not a WAV file the analyse tool can read
    └── TargetRefused ...................... a status-callback target the policy forbids

How they map to HTTP answers (sipbridge.api): ``InputError`` -> 400 naming ``.field``,
``CallNotFound`` -> 404, ``InvalidTransition`` -> 409, ``ApiError`` -> its ``.status``,
``StoreError`` -> 503 (the store is unreachable; ``Retry-After``);
anything else -> 500 "internal error". The classes keep the builtin bases they had
(``ValueError``, ``KeyError``, ``RuntimeError``) so existing ``except`` clauses still match.

Modules re-export the classes they raise (``sipbridge.numbers.NumberError`` is this
``NumberError``); pure modules import nothing else from here.
"""

from __future__ import annotations


class SipBridgeError(Exception):
    """The root: every error the bridge raises on purpose."""


class ConfigError(SipBridgeError):
    """A configuration file that cannot be used; the message names file, key and reason."""

    def __init__(self, path: str, problems: list[tuple[str, str]]):
        self.path = path
        self.problems = problems
        lines = [f"{path}: {key}: {reason}" for key, reason in problems]
        super().__init__("invalid configuration:\n  " + "\n  ".join(lines))


class InputError(SipBridgeError, ValueError):
    """A value that cannot be used; ``field`` names where it came from (the API field,
    ``metadata.KEY``, ``trunk X header Y``). The message starts with the field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class NumberError(InputError):
    """A number or country code that cannot be dialled; ``field`` names the API field."""


class HeaderError(InputError):
    """A header name or value that must not be sent; ``field`` names where it came from."""


class RoutingError(InputError):
    """No usable route for a call: no matching route, no trunk with the requested
    encryption, no time zone, a calling window that never opens."""


class MediaFileError(InputError):
    """A media file name that cannot be used; ``field`` names where it came from."""


class ApiError(SipBridgeError):
    """An HTTP error answer in the documented shape (``sipbridge.apierrors.ErrorBody``)."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}
        super().__init__(message)


class ForwardError(ApiError):
    """A hangup or DTMF for a call another cluster node owns was not acknowledged by it:
    503 when it cannot be reached (not listening, Redis down), 504 when it did not answer
    in time. The message names the owner node."""


class CallError(SipBridgeError):
    """An operation on one call cannot be done."""


class CallNotFound(CallError, KeyError):
    """No call with this callSid (or it ended longer than the retention window ago)."""


class InvalidTransition(CallError, RuntimeError):
    """The call's state does not allow this (a terminal status changed, DTMF without an
    answered carrier leg)."""


class StoreError(SipBridgeError, RuntimeError):
    """Call storage cannot be opened, migrated or written."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (PostgreSQL restarting, connection cut); the
    same operation may succeed once it is back."""


class DuplicateCall(StoreError):
    """A call with this callSid or idempotency key exists already."""


class StaleClaim(StoreError):
    """Cluster mode: a write about an attempt whose epoch moved on (another node took the
    call over); the store wrote nothing."""


class NodeIdInUse(SipBridgeError):
    """Another live process holds this ``cluster.node_id`` (sipbridge.cluster.identity)."""

    def __init__(self, node_id: str, heartbeat_age_s: float, waited_s: float):
        self.node_id = node_id
        super().__init__(
            f"cluster.node_id {node_id!r} is in use by another live node (its heartbeat "
            f"{heartbeat_age_s:.1f} s ago, still renewed after waiting {waited_s:.0f} s): "
            "give every node its own cluster.node_id"
        )


class NodeIdTaken(SipBridgeError):
    """A running node found its ``cluster.node_id`` held by another process (which started
    with that id while this one was paused past its lease): this process must stop."""

    def __init__(self, node_id: str, holder: str | None):
        self.node_id = node_id
        self.holder = holder
        super().__init__(
            f"cluster.node_id {node_id!r} was taken over by another process (instance "
            f"{holder or 'unknown: an older build'}) while this one was paused: this "
            "process stops; give every node its own cluster.node_id"
        )


class PoolError(SipBridgeError, RuntimeError):
    """The SIP worker pool could not start its workers."""


class PoolFull(SipBridgeError):
    """No worker has a free slot (or the pinned worker is full / not running)."""


class ProtocolError(SipBridgeError, ValueError):
    """A supervisor <-> worker IPC message that cannot be decoded."""


class SipParseError(SipBridgeError, ValueError):
    """The bytes are not a SIP request the guard can read; the message says why."""


class GuardError(SipBridgeError, RuntimeError):
    """The guard could not be installed or its view of pjsip's structures is wrong."""


class AudioFormatError(SipBridgeError, ValueError):
    """The input is not a WAV file this tool can read; the message names the problem."""


class TargetRefused(SipBridgeError):
    """The callback's target is not allowed by webhooks.allow_private / allow_cidrs."""


__all__ = [
    "ApiError",
    "AudioFormatError",
    "CallError",
    "CallNotFound",
    "ConfigError",
    "DuplicateCall",
    "ForwardError",
    "GuardError",
    "HeaderError",
    "InputError",
    "InvalidTransition",
    "MediaFileError",
    "NodeIdInUse",
    "NodeIdTaken",
    "NumberError",
    "PoolError",
    "PoolFull",
    "ProtocolError",
    "RoutingError",
    "SipBridgeError",
    "SipParseError",
    "StaleClaim",
    "StoreError",
    "StoreUnavailable",
    "TargetRefused",
]
