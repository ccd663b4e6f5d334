"""Trunk hunt order, resting trunks, failover decisions and Retry-After parsing."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from sipbridge.trunkselect import (
    Candidate,
    TrunkHealth,
    hunt_list,
    parse_retry_after,
    should_failover,
    weighted_order,
)


def test_priority_order() -> None:
    cands = [("b", 2, 1.0), ("a", 1, 1.0), ("c", 3, 1.0)]
    assert hunt_list(cands, random.Random(1)) == ["a", "b", "c"]
    assert hunt_list([Candidate("x", 5)], random.Random(1)) == ["x"]
    assert hunt_list([], random.Random(1)) == []


def test_weights_honoured_3_to_1() -> None:
    rng = random.Random(20240605)
    cands = [("heavy", 1, 3.0), ("light", 1, 1.0), ("backup", 2, 10.0)]
    first: Counter[str] = Counter()
    for _ in range(4000):
        order = hunt_list(cands, rng)
        assert sorted(order[:2]) == ["heavy", "light"] and order[2] == "backup"
        first[order[0]] += 1
    assert abs(first["heavy"] / 4000 - 0.75) < 0.05


def test_weights_three_way_and_zero_last() -> None:
    rng = random.Random(7)
    items = [("a", 2.0), ("b", 1.0), ("c", 1.0), ("z", 0.0)]
    first: Counter[str] = Counter()
    for _ in range(4000):
        order = weighted_order(items, rng)
        assert order[-1] == "z" and sorted(order) == ["a", "b", "c", "z"]
        first[order[0]] += 1
    assert abs(first["a"] / 4000 - 0.5) < 0.05
    assert abs(first["b"] / 4000 - 0.25) < 0.05
    assert weighted_order([("only", 0.0)], rng) == ["only"]


def test_bad_candidates() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        hunt_list([("a", 1, 1.0), ("a", 2, 1.0)], random.Random(1))
    with pytest.raises(ValueError, match="negative weight"):
        hunt_list([("a", 1, -1.0)], random.Random(1))


def test_resting_trunks_skipped_until_their_time() -> None:
    health = TrunkHealth()
    cands = [("a", 1, 1.0), ("b", 2, 1.0)]
    health.mark_unavailable("a", 100.0)
    assert hunt_list(cands, random.Random(1), health, now=50.0) == ["b"]
    assert hunt_list(cands, random.Random(1), health, now=99.999) == ["b"]
    assert hunt_list(cands, random.Random(1), health, now=100.0) == ["a", "b"]
    health.mark_unavailable("a", 200.0)
    health.mark_unavailable("b", 150.0)
    health.mark_unavailable("b", 120.0)  # a shorter mark does not shorten the rest
    assert hunt_list(cands, random.Random(1), health, now=130.0) == []
    assert health.earliest_available(["a", "b"], 130.0) == 150.0
    assert health.earliest_available(["a", "b"], 160.0) == 160.0
    assert health.earliest_available([], 160.0) is None


def test_observe_503_retry_after() -> None:
    health = TrunkHealth(max_rest_s=600)
    assert health.observe("a", 503, "120;duration=3600", now=1000.0)
    assert health.resting_until("a") == 1120.0
    assert not health.available("a", 1119.0)
    assert health.available("a", 1120.0)
    assert not health.observe("b", 503, None, now=1000.0)  # no Retry-After: just fail over
    assert not health.observe("b", 486, "60", now=1000.0)  # only 503 benches a trunk
    assert not health.observe("b", 503, "soon", now=1000.0)
    assert health.available("b", 1000.0)
    assert health.observe("c", 503, "86400", now=0.0)
    assert health.resting_until("c") == 600.0  # capped


@pytest.mark.parametrize(
    ("status", "cause", "expected"),
    [
        (408, None, True),
        (500, None, True),
        (502, None, True),
        (503, None, True),
        (504, None, True),
        (580, None, True),
        (None, "transport_error", True),
        (503, "transport_error", True),
        (404, None, False),
        (484, None, False),
        (486, None, False),
        (480, None, False),
        (487, None, False),
        (403, None, False),
        (401, None, False),
        (600, None, False),
        (603, None, False),
        (604, None, False),
        (699, None, False),
        (302, None, False),
        (200, None, False),
        (None, None, False),
        (None, "ring_timeout", False),
        (None, "local_hangup", False),
    ],
)
def test_should_failover(status: int | None, cause: str | None, expected: bool) -> None:
    assert should_failover(status, cause) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("120;duration=3600", 120.0),
        ("120 (I'm in a meeting)", 120.0),
        ("18000;duration=3600", 18000.0),
        ("120 (nested (comment) here);duration=10", 120.0),
        (r"120 (escaped \) paren)", 120.0),
        ("  0  ", 0.0),
        ("120 ; duration = 3600 ; foo", 120.0),
        ("120;foo=bar", 120.0),
        (None, None),
        ("", None),
        ("abc", None),
        ("-5", None),
        ("1.5", None),
        ("120 garbage", None),
        ("120 (unclosed", None),
        ("120;duration=", None),
        ("120;duration=abc", None),
        ("120;;", None),
        ("١٢٠", None),  # non-ASCII digits are not DIGIT
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected
