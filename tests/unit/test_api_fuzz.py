"""API fuzzing against the OpenAPI document (schemathesis): schema-valid and schema-invalid
requests to every operation, answered in-process by the real app, the project's SQLite
store in a temp folder and the project's SIP pool double. Must hold: no 5xx, every status
code, content type, header and body as the document declares, and schema-invalid input
refused. Bounded: a fixed number of examples per operation."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi as st_asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sipbridge.api import create_app
from sipbridge.calls import CallService, TriggerInput
from sipbridge.config import parse_config
from sipbridge.store import SQLiteStore
from tests.doubles import RecordingPool

EXAMPLES_PER_OPERATION = 200

CFG: dict[str, Any] = {
    "agent": {"uri": "sip:agent@127.0.0.1"},
    "api": {"tokens": [{"value": "tok"}], "max_body_bytes": 65536},
    # the fuzzer sends far more triggers than the default per-token rate allows
    "limits": {"api_rate_per_s": 100000, "api_burst": 1000000},
    # the fuzzer keeps a core busy for minutes: admission control would (rightly) refuse
    # with 503, which the schema check counts as a server error (tests/unit/test_admission*
    # cover the refusals)
    "admission": {"enabled": False},
    "trunks": [
        {
            "name": "t1",
            "address": "127.0.0.1:5060",
            "caller_id": "+14155550100",
            "allowed_encryption": ["UDP/SRTP"],
            "header_templates": {"X-PolyAI-Call-SID": "{call_sid}"},
        }
    ],
    "routes": [{"prefix": "+", "trunk": "t1"}],
}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


TOKEN = "X-PolyAi-Auth-Token"
NUMBERS = ["+14155552671", "+442079460958", "(415) 555-2671", "+33142685300"]
POLYAI_ID = "fuzz-polyai-1"


def _app(tmp: Path) -> tuple[Any, list[str]]:
    """The app, and the SIDs of calls already in the store (one queued, one dialled)."""
    media = tmp / "media"
    media.mkdir()
    (media / "vm.wav").write_bytes(b"RIFF")
    cfg = parse_config({**CFG, "media": {"dir": str(media)}})
    svc = CallService(cfg, SQLiteStore(tmp / "calls.db"), RecordingPool(slots=10_000))
    sids = [
        svc.trigger(TriggerInput("+14155552671", polyai_call_id=POLYAI_ID), start=False).call_sid
        for _ in range(2)
    ]
    return create_app(svc, ["tok"]), sids


_TMP = Path(tempfile.mkdtemp(prefix="sipbridge-fuzz-"))
_APP, _SIDS = _app(_TMP)
# A schema-violating body can also be an oversized one (the fuzzer's long strings): the
# bridge answers 413 naming api.max_body_bytes before it reads the body, which is a
# rejection too (schemathesis's default list of rejections lacks 413).
_REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428"]
_FUZZ_CONFIG = schemathesis.config.SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": [*_REJECTIONS, "429", "5xx"]}}}
)
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP, config=_FUZZ_CONFIG)


# Steer part of the generated data towards values that pass the first checks, so that
# the fuzzer also reaches the code behind them (routing, the store, state changes).
@schema.hook
def flatmap_body(context: Any, body: Any) -> Any:
    # only a schema-valid to_number is swapped, so a negative case stays negative
    number = body.get("to_number") if isinstance(body, dict) else None
    if isinstance(number, str) and len(number) <= 64:
        return st.one_of(
            st.just(body), st.sampled_from(NUMBERS).map(lambda n: {**body, "to_number": n})
        )
    digits = body.get("digits") if isinstance(body, dict) else None
    if isinstance(digits, str) and len(digits) <= 256:
        return st.sampled_from([body, {**body, "digits": "12w#"}])
    return st.just(body)


@schema.hook
def flatmap_path_parameters(context: Any, params: Any) -> Any:
    if isinstance(params, dict) and "call_sid" in params:
        return st.one_of(
            st.just(params), st.sampled_from(_SIDS).map(lambda sid: {**params, "call_sid": sid})
        )
    if isinstance(params, dict) and "polyai_call_id" in params:
        return st.sampled_from([params, {**params, "polyai_call_id": POLYAI_ID}])
    return st.just(params)


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    st_asgi.shutdown_lifespans()  # the app's lifespan (service, pool double) ends here
    shutil.rmtree(_TMP, ignore_errors=True)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck)
)
def test_api_conforms_to_its_schema(case: Any) -> None:
    # authorised: 401s are covered by the unit tests, the fuzzer's budget goes behind auth
    case.headers = {**(case.headers or {}), TOKEN: "tok"}
    case.call_and_validate(checks=CHECKS)
