"""The transaction tables are total: every (state, input) pair transitions, is ignored with a
reason, or is rejected explicitly -- never a KeyError, never a silent pass.

The static part walks every pair of every kind; the Hypothesis part drives real
transactions with random input sequences and checks the interpreter against the table.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from porch.sip.errors import LocalProtocolError
from porch.sip.timers import Timers
from porch.sip.transaction import (
    INPUTS,
    STATES,
    TABLES,
    TU_INPUTS,
    ClientTransaction,
    Ignore,
    Input,
    Kind,
    Reject,
    Send,
    ServerTransaction,
    State,
    TransactionTerminated,
    Transition,
    lookup,
)

from .conftest import invite, reply

# Timers allowed to run in each state (anything else armed there is a bug).
ALLOWED_TIMERS = {
    Kind.INVITE_CLIENT: {
        State.CALLING: {"A", "B"},
        State.PROCEEDING: {"CANCEL"},
        State.COMPLETED: {"D"},
        State.ACCEPTED: {"M"},
    },
    Kind.NON_INVITE_CLIENT: {
        State.TRYING: {"E", "F"},
        State.PROCEEDING: {"E", "F"},
        State.COMPLETED: {"K"},
    },
    Kind.INVITE_SERVER: {
        State.PROCEEDING: {"TRYING"},
        State.COMPLETED: {"G", "H"},
        State.CONFIRMED: {"I"},
        State.ACCEPTED: {"L"},
    },
    Kind.NON_INVITE_SERVER: {State.TRYING: set(), State.PROCEEDING: set(), State.COMPLETED: {"J"}},
}


@pytest.mark.parametrize("kind", list(Kind))
def test_every_pair_has_an_explicit_entry(kind):
    table = TABLES[kind]
    for state, inp in itertools.product(State, Input):
        entry = lookup(kind, state, inp)  # must not raise
        assert isinstance(entry, Transition | Ignore | Reject)
        if state not in table or inp not in INPUTS[kind]:
            assert isinstance(entry, Reject)
            continue
        assert table[state][inp] is entry
        if isinstance(entry, Reject) and state is not State.INIT:
            assert inp in TU_INPUTS, f"{kind} {state} rejects network input {inp}"
        if isinstance(entry, Transition):
            assert entry.next in table
        if isinstance(entry, Ignore | Reject):
            assert entry.why


@pytest.mark.parametrize("kind", list(Kind))
def test_terminated_absorbs_the_network(kind):
    for inp in INPUTS[kind] - TU_INPUTS:
        assert isinstance(lookup(kind, State.TERMINATED, inp), Ignore)


@pytest.mark.parametrize("kind", list(Kind))
def test_every_state_is_reachable_and_terminated_is_reachable_from_each(kind):
    table = TABLES[kind]
    edges = {
        s: {e.next for e in row.values() if isinstance(e, Transition)} for s, row in table.items()
    }
    seen, todo = {State.INIT}, [State.INIT]
    while todo:
        for nxt in edges[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(table)
    for state in table:
        reach, todo = {state}, [state]
        while todo:
            for nxt in edges[todo.pop()]:
                if nxt not in reach:
                    reach.add(nxt)
                    todo.append(nxt)
        assert State.TERMINATED in reach, f"{kind}: {state} cannot end"


# -- Hypothesis: random drives of real transactions -----------------------------------------

FAST = Timers(t1=0.5, t2=4.0, t4=5.0)

client_ops = st.sampled_from(["1xx", "2xx", "2xx-other", "4xx", "timer", "cancel", "error"])
server_ops = st.sampled_from(["request", "ack", "1xx", "2xx", "4xx", "timer", "error"])


def _check_invariants(tx, reliable):
    kind = tx.kind
    assert tx.state in STATES[kind]
    if tx.state is State.TERMINATED:
        assert tx.deadline is None
    else:
        assert set(tx.armed()) <= ALLOWED_TIMERS[kind][tx.state], (tx.state, tx.armed())
    if reliable:
        assert not {"A", "E", "G"} & set(tx.armed())
    for before, inp, after in tx.history:
        entry = lookup(kind, before, inp)
        assert isinstance(entry, Transition) and entry.next is after


CLIENT_ARGS = {
    "method": st.sampled_from(["INVITE", "OPTIONS"]),
    "reliable": st.booleans(),
    "ops": st.lists(st.tuples(client_ops, st.floats(0, 40)), max_size=25),
}
SERVER_ARGS = {
    "method": st.sampled_from(["INVITE", "INFO"]),
    "reliable": st.booleans(),
    "ops": st.lists(st.tuples(server_ops, st.floats(0, 40)), max_size=25),
}
QUICK = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LONG = settings(max_examples=20000, deadline=None, suppress_health_check=list(HealthCheck))


@QUICK
@given(**CLIENT_ARGS)
def test_client_transactions_follow_their_table(method, reliable, ops):
    drive_client(method, reliable, ops)


@QUICK
@given(**SERVER_ARGS)
def test_server_transactions_follow_their_table(method, reliable, ops):
    drive_server(method, reliable, ops)


@pytest.mark.fuzz
@LONG
@given(**CLIENT_ARGS)
def test_client_transactions_long_run(method, reliable, ops):
    drive_client(method, reliable, ops)


@pytest.mark.fuzz
@LONG
@given(**SERVER_ARGS)
def test_server_transactions_long_run(method, reliable, ops):
    drive_server(method, reliable, ops)


def drive_client(method, reliable, ops):
    req = invite(method=method)
    tx = ClientTransaction(req, "peer", reliable=reliable, timers=FAST)
    now = 0.0
    out = tx.start(now)
    assert [type(a) for a in out] == [Send]
    terminated_events = 0
    for op, dt in ops:
        now += dt
        try:
            if op == "timer":
                out = tx.on_timer(now)
            elif op == "cancel":
                out = tx.cancel(now)
            elif op == "error":
                out = tx.on_transport_error(now)
            else:
                status = {"1xx": 180, "2xx": 200, "2xx-other": 200, "4xx": 486}[op]
                tag = "other" if op == "2xx-other" else "utag1"
                out = tx.on_response(reply(req, status, to_tag=tag), now)
        except LocalProtocolError:
            assert method != "INVITE" and op == "cancel"
            continue
        terminated_events += sum(isinstance(a, TransactionTerminated) for a in out)
        if reliable:
            assert not any(
                isinstance(a, Send)
                and a.message is req
                and tx.history
                and tx.history[-1][1] in (Input.TIMER_A, Input.TIMER_E)
                for a in out
            )
        _check_invariants(tx, reliable)
    assert terminated_events == (1 if tx.terminated else 0)


def drive_server(method, reliable, ops):
    req = invite(method=method)
    tx = ServerTransaction(req, "peer", reliable=reliable, timers=FAST)
    now = 0.0
    tx.start(now)
    for op, dt in ops:
        now += dt
        state = tx.state
        try:
            if op == "timer":
                tx.on_timer(now)
            elif op == "error":
                tx.on_transport_error(now)
            elif op == "request":
                tx.on_request(req, now)
            elif op == "ack":
                if method != "INVITE":
                    continue
                tx.on_request(invite(method="ACK", to_tag="utag1"), now)
            else:
                status = {"1xx": 180, "2xx": 200, "4xx": 486}[op]
                tx.send_response(reply(req, status), now)
        except LocalProtocolError:
            # Only the TU can be refused, and only once the transaction is past answering.
            assert op in ("1xx", "2xx", "4xx")
            assert state in (State.COMPLETED, State.CONFIRMED, State.ACCEPTED, State.TERMINATED)
            assert not (state is State.ACCEPTED and op == "2xx")
            continue
        _check_invariants(tx, reliable)
