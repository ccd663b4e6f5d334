"""Pure cluster decisions (sipbridge.cluster.lease): liveness from DB-clock ages, what a
takeover does with each call, how many calls a node claims."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipbridge.cluster.lease import Member, beat_outcome, claim_budget, expired, takeover_action


def test_a_member_is_alive_until_its_lease_is_over():
    assert Member("a", age_s=3.9, lease_s=4.0).alive
    assert not Member("a", age_s=4.0, lease_s=4.0).alive
    assert Member("a", age_s=1.0, lease_s=4.0).lease_left_s == 3.0
    assert Member("a", age_s=9.0, lease_s=4.0).lease_left_s == 0.0
    assert expired([Member("a", 1, 4), Member("b", 5, 4), Member("c", 20, 30)]) == ["b"]


def test_takeover_never_redials_what_may_have_gone_out():
    assert takeover_action("queued", dialing=False) == "requeue"
    assert takeover_action("queued", dialing=True) == "end"  # the INVITE may be out
    assert takeover_action("calling", dialing=True) == "end"
    assert takeover_action("calling", dialing=False) == "end"
    assert takeover_action("success", dialing=True) == "keep"
    assert takeover_action("failure", dialing=False) == "keep"


def test_claim_budget_examples():
    assert claim_budget(free_slots=20, slots_per_call=2, claimed_undialled=0, batch=8) == 8
    assert claim_budget(free_slots=6, slots_per_call=2, claimed_undialled=1, batch=8) == 2
    assert claim_budget(free_slots=6, slots_per_call=2, claimed_undialled=5, batch=8) == 0
    assert claim_budget(free_slots=1, slots_per_call=2, claimed_undialled=0, batch=8) == 0


@given(st.integers(-5, 500), st.integers(0, 4), st.integers(0, 100), st.integers(0, 50))
def test_claim_budget_is_bounded(free, per_call, waiting, batch):
    n = claim_budget(free, per_call, waiting, batch)
    assert 0 <= n <= batch
    assert waiting + n <= max(waiting, free // max(1, per_call))


OURS = "boot/100/aaaa"


@given(st.booleans(), st.booleans(), st.one_of(st.none(), st.sampled_from([OURS, "boot/7/b"])))
def test_a_renewed_beat_is_ok_or_lapsed_whatever_the_row_said(fresh, found, holder):
    assert beat_outcome(True, fresh, found, holder, OURS) == ("ok" if fresh else "lapsed")


@pytest.mark.parametrize(
    ("found", "holder", "beat"),
    [
        (False, None, "lost"),  # a takeover deleted our row
        (True, "boot/7/b", "usurped"),  # another process joined with our node id
        (True, None, "usurped"),  # an older build's process did (it writes no token)
        (True, OURS, "lost"),  # changed under the beat: the rejoin tells which
    ],
)
def test_a_beat_that_renewed_nothing(found, holder, beat):
    assert beat_outcome(False, True, found, holder, OURS) == beat
