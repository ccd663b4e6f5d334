"""The supervisor <-> worker codec (sipbridge/ipc.py): every message type survives
encode -> (JSON) -> decode unchanged, typed parts included (DialPlan, Detection); a
message type added to the module but forgotten in the unions or in ``decode`` fails
here; malformed input is a ProtocolError, never another exception."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import types
import typing
from typing import Any, get_args, get_origin, get_type_hints

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipbridge import ipc
from sipbridge.errors import ProtocolError

MESSAGES = [*get_args(ipc.Command), *get_args(ipc.Event)]
_SCALARS = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=8)
_JSONISH = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _strategy(t: Any) -> st.SearchStrategy[Any]:
    """Values of type ``t`` that JSON carries exactly (finite floats, str-keyed dicts)."""
    origin, args = get_origin(t), get_args(t)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([_strategy(a) for a in args])
    if t is float:
        return st.floats(-1e9, 1e9, allow_nan=False)
    if t is Any:
        return _JSONISH
    if origin is dict:
        return st.dictionaries(st.text(max_size=8), _strategy(args[1]), max_size=3)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(_strategy(args[0]), max_size=3).map(tuple)
        return st.tuples(*[_strategy(a) for a in args])
    if dataclasses.is_dataclass(t):
        return _builds(t)
    return st.from_type(t)


def _builds(cls: Any) -> st.SearchStrategy[Any]:
    hints = get_type_hints(cls)
    return st.builds(
        cls,
        **{f.name: _strategy(hints[f.name]) for f in dataclasses.fields(cls) if f.name != "type"},
    )


def test_every_message_class_is_in_the_unions():
    defined = {
        c
        for c in vars(ipc).values()
        if isinstance(c, type)
        and dataclasses.is_dataclass(c)
        and "type" in {f.name for f in dataclasses.fields(c)}
    }
    assert defined == set(MESSAGES)
    assert len({c.__dataclass_fields__["type"].default for c in MESSAGES}) == len(MESSAGES)


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)
@given(data=st.data())
def test_round_trip(cls: Any, data: st.DataObject) -> None:
    msg = data.draw(_builds(cls))
    wire = ipc.encode(msg)
    assert ipc.decode(wire) == msg
    assert ipc.decode(json.loads(json.dumps(wire))) == msg  # JSON-compatible too


def test_detection_is_typed_on_both_sides():
    from tests.doubles import detection

    rep = ipc.DetectionReport(
        "l", "c", 0, 1.0, "answer", "decision", detection("machine", beep_ms=5200, final=False)
    )
    back = ipc.decode(ipc.encode(rep))
    assert isinstance(back, ipc.DetectionReport) and back.detection.beep_ms == 5200


@given(
    st.dictionaries(st.text(max_size=10), _JSONISH, max_size=6)
    | st.sampled_from(MESSAGES).flatmap(
        lambda c: (
            _builds(c)
            .map(ipc.encode)
            .flatmap(lambda d: st.sampled_from(list(d)).map(lambda k: {**d, k: [object]}))
        )
    )
)
def test_malformed_is_a_protocol_error(d: dict[str, Any]) -> None:
    d = {"v": ipc.PROTOCOL_VERSION, **d}
    with contextlib.suppress(ProtocolError):  # anything else fails the test
        ipc.decode(d)
