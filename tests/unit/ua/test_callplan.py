"""Which targets ring when: sequential and parallel strategies, ring timeout, redirects."""

import pytest

from porch.sip.callplan import AttemptState, Cancel, Dial, Finished, TargetPlan
from porch.sip.errors import LocalProtocolError


def dials(actions):
    return [(a.index, a.target) for a in actions if isinstance(a, Dial)]


def test_sequential_moves_on_after_each_failure_and_timeout():
    plan = TargetPlan(["a", "b", "c"], "sequential", ring_timeout=30)
    assert dials(plan.start(0.0)) == [(0, "a")]
    assert plan.deadline == 30.0
    assert dials(plan.on_failed(0, "486 Busy Here", 2.0)) == [(1, "b")]
    assert plan.deadline == 32.0  # the ring timeout counts from each target's INVITE
    out = plan.on_timer(32.0)
    assert out[0] == Cancel(1, "no answer (call.ring_timeout)", failed=True)
    assert dials(out) == [(2, "c")]
    out = plan.on_failed(2, "603 Decline", 40.0)
    assert isinstance(out[-1], Finished)
    assert "a: 486 Busy Here" in out[-1].reason and "c: 603 Decline" in out[-1].reason
    assert plan.over and plan.deadline is None


def test_timer_before_deadline_does_nothing():
    plan = TargetPlan(["a"], ring_timeout=10)
    plan.start(0.0)
    assert plan.on_timer(9.99) == []


def test_parallel_rings_all_and_the_first_answer_cancels_the_rest():
    plan = TargetPlan(["a", "b", "c"], "parallel", ring_timeout=20)
    assert dials(plan.start(0.0)) == [(0, "a"), (1, "b"), (2, "c")]
    plan.on_ringing(1, 0.5)
    assert plan.ringing
    out = plan.on_answered(1, 3.0)
    assert sorted(a.index for a in out if isinstance(a, Cancel)) == [0, 2]
    assert all(not a.failed for a in out if isinstance(a, Cancel))
    assert plan.answered == 1 and plan.deadline is None
    # a second answer (a 2xx racing the CANCEL) does not change the winner
    assert plan.on_answered(0, 3.1) == []
    assert plan.answered == 1


def test_parallel_one_refusal_does_not_end_the_call():
    plan = TargetPlan(["a", "b"], "parallel")
    plan.start(0.0)
    assert plan.on_failed(0, "486 Busy Here", 1.0) == []
    out = plan.on_failed(1, "480 Temporarily Unavailable", 2.0)
    assert out == [Finished("a: 486 Busy Here; b: 480 Temporarily Unavailable")]


def test_same_reason_everywhere_is_said_once():
    plan = TargetPlan(["a", "b"], "parallel", ring_timeout=5)
    plan.start(0.0)
    out = plan.on_timer(5.0)
    assert [a for a in out if isinstance(a, Finished)] == [
        Finished("no answer (call.ring_timeout)")
    ]


def test_redirect_tries_the_contacts_next_and_keeps_indices():
    plan = TargetPlan(["a", "b"], "sequential")
    plan.start(0.0)
    out = plan.on_redirect(0, ["sip:x@h", "sip:y@h"], 1.0)
    assert dials(out) == [(2, "sip:x@h")]
    assert plan.attempts[2].redirected_from == 0
    assert dials(plan.on_failed(2, "404 Not Found", 2.0)) == [(3, "sip:y@h")]
    assert dials(plan.on_failed(3, "404 Not Found", 3.0)) == [(1, "b")]


def test_redirect_loops_and_floods_are_bounded():
    plan = TargetPlan(["a"], "sequential", max_redirects=2)
    plan.start(0.0)
    out = plan.on_redirect(0, ["a"], 1.0)  # back to itself: nothing new
    assert isinstance(out[-1], Finished)
    plan = TargetPlan(["a"], "sequential", max_redirects=2)
    plan.start(0.0)
    plan.on_redirect(0, ["b", "c", "d"], 1.0)
    assert [a.target for a in plan.attempts] == ["a", "b", "c"]


def test_cancel_stops_everything_and_reports_finished():
    plan = TargetPlan(["a", "b"], "sequential")
    plan.start(0.0)
    out = plan.cancel("button: cancelled")
    assert out == [Cancel(0, "button: cancelled"), Finished("button: cancelled")]
    assert plan.attempts[1].state is AttemptState.CANCELLED
    assert plan.cancel("again") == []
    assert plan.on_failed(0, "487 Request Terminated", 1.0) == []


def test_late_events_after_the_answer_are_ignored():
    plan = TargetPlan(["a", "b"], "parallel")
    plan.start(0.0)
    plan.on_answered(0, 1.0)
    assert plan.on_failed(1, "487", 1.1) == []
    assert plan.on_timer(100.0) == []


def test_bad_strategy_and_double_start_are_refused():
    with pytest.raises(LocalProtocolError):
        TargetPlan(["a"], "random")
    plan = TargetPlan(["a"])
    plan.start(0.0)
    with pytest.raises(LocalProtocolError):
        plan.start(1.0)


def test_no_targets_finishes_at_once():
    assert TargetPlan([]).start(0.0) == [Finished("no targets")]
