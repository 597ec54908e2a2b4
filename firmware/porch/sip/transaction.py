"""SIP transactions (RFC 3261 section 17, amended by RFC 6026), sans-IO.

Each of the four transaction kinds is a transition table `(state, input) -> entry`, where the
entry is a `Transition` (next state and a tuple of actions), an explicit `Ignore` (the input
is absorbed, with the reason), or an explicit `Reject` (our own code asked for something the
protocol forbids: LocalProtocolError). The tables are total: every pair of a kind's states and
inputs has an entry, which `check_tables()` verifies at import time. The rule of thumb:
network messages and timers are never rejected (the network may send anything, a stale timer
may fire), only transaction-user inputs are.

Nothing here reads a clock or touches a socket. Inputs carry `now`; outputs are actions:
`Send` (a message for the transport, with its bytes serialised once), and events for the
transaction user (`RequestReceived`, `ResponseReceived`, `TransactionTimeout`, ...). The
transaction's `deadline` says when `on_timer(now)` wants to be called next.

RFC 6026 rather than plain RFC 3261 for INVITE 2xx handling: an INVITE server transaction
that sends a 2xx goes to "Accepted" for 64*T1 instead of being destroyed, so a retransmitted
INVITE is absorbed rather than reaching the TU as a new call, and the INVITE client
transaction stays in "Accepted" to pass 2xx retransmissions and forked 2xx to the TU. The
2xx itself is retransmitted until the ACK arrives by the UAS core (RFC 3261 13.3.1.4; RFC 6026
keeps that in the TU), which `TransactionLayer` implements for the TU: T1 doubling to T2,
given up after 64*T1 with an `AckTimeout` event (the TU then sends BYE).

`TransactionLayer` keeps the transactions by key, routes incoming messages (RFC 3261 17.1.3
and 17.2.3, including ACK and CANCEL matching and the RFC 2543 fallback), and does the small
UAS-core duties that are easy to get wrong: 100 Trying after 200 ms, 482 for merged requests
(8.2.2.2), 200/481 to CANCEL and 487 to the cancelled INVITE (9.2), 2xx retransmission until
ACK, re-sending our ACK when a 2xx is retransmitted (13.2.2.4), and retransmitting reliable
provisional responses until PRACK (RFC 3262).
"""

from __future__ import annotations

import heapq
import itertools
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple, Union

from porch.sip.errors import LocalProtocolError, RemoteProtocolError
from porch.sip.headers import MAGIC_COOKIE, Via, split_list
from porch.sip.message import Request, Response, build_request, make_response
from porch.sip.timers import DEFAULT_TIMERS, Timers

__all__ = [
    "TABLES",
    "AckReceived",
    "AckTimeout",
    "Act",
    "Action",
    "CancelNow",
    "CancelReceived",
    "ClientKey",
    "ClientTransaction",
    "Ignore",
    "Input",
    "Kind",
    "Malformed",
    "MergedRequest",
    "PrackTimeout",
    "Reject",
    "RequestReceived",
    "ResponseReceived",
    "Send",
    "ServerKey",
    "ServerTransaction",
    "State",
    "StrayResponse",
    "TransactionLayer",
    "TransactionTerminated",
    "TransactionTimeout",
    "Transition",
    "TransportError",
    "build_ack",
    "build_cancel",
    "check_tables",
    "client_key",
    "lookup",
    "new_branch",
    "server_key",
]


# ---------------------------------------------------------------------------------------
# States, inputs, actions
# ---------------------------------------------------------------------------------------


class Kind(StrEnum):
    INVITE_CLIENT = "invite-client"
    NON_INVITE_CLIENT = "non-invite-client"
    INVITE_SERVER = "invite-server"
    NON_INVITE_SERVER = "non-invite-server"


class State(StrEnum):
    INIT = "init"  # constructed, not started
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"  # RFC 6026
    TERMINATED = "terminated"


class Input(StrEnum):
    START = "start"  # TU creates the transaction
    # from the network
    R1XX = "1xx"
    R2XX = "2xx"
    R3XX_6XX = "3xx-6xx"
    REQUEST = "request"  # a retransmission of the transaction's request
    ACK = "ack"
    TRANSPORT_ERROR = "transport-error"
    # from the TU
    TU_1XX = "tu-1xx"
    TU_2XX = "tu-2xx"
    TU_3XX_6XX = "tu-3xx-6xx"
    TU_CANCEL = "tu-cancel"
    # timers
    TIMER_A = "timer-A"
    TIMER_B = "timer-B"
    TIMER_D = "timer-D"
    TIMER_E = "timer-E"
    TIMER_F = "timer-F"
    TIMER_G = "timer-G"
    TIMER_H = "timer-H"
    TIMER_I = "timer-I"
    TIMER_J = "timer-J"
    TIMER_K = "timer-K"
    TIMER_L = "timer-L"
    TIMER_M = "timer-M"
    TIMER_TRYING = "timer-trying"  # 200 ms without a TU answer: send 100 Trying
    TIMER_CANCEL = "timer-cancel"  # 64*T1 after CANCEL without a final response (9.1)


TU_INPUTS = frozenset({Input.START, Input.TU_1XX, Input.TU_2XX, Input.TU_3XX_6XX, Input.TU_CANCEL})
TIMER_OF_INPUT = {
    i: i.value.removeprefix("timer-").upper() for i in Input if i.name.startswith("TIMER_")
}
INPUT_OF_TIMER = {name: i for i, name in TIMER_OF_INPUT.items()}


class Act(StrEnum):
    SEND_REQUEST = "send-request"  # (re)transmit the transaction's request
    SEND_ACK = "send-ack"  # the ACK for a non-2xx final response (17.1.1.3)
    PASS_RESPONSE = "pass-response"
    PASS_REQUEST = "pass-request"
    PASS_ACK = "pass-ack"
    SEND_RESPONSE = "send-response"  # the TU's response, remembered as the last one
    RESEND_RESPONSE = "resend-response"  # the last response, if any
    SEND_TRYING = "send-trying"
    INFORM_TIMEOUT = "inform-timeout"
    INFORM_TRANSPORT_ERROR = "inform-transport-error"
    CANCEL_TIMERS = "cancel-timers"
    STOP_TRYING = "stop-trying"
    START_A = "start-A"
    START_B = "start-B"
    START_D = "start-D"
    START_E = "start-E"
    START_F = "start-F"
    START_G = "start-G"
    START_H = "start-H"
    START_I = "start-I"
    START_J = "start-J"
    START_K = "start-K"
    START_L = "start-L"
    START_M = "start-M"
    START_TRYING = "start-TRYING"
    BACKOFF_A = "backoff-A"  # retransmit interval doubles
    BACKOFF_E = "backoff-E"  # doubles up to T2
    BACKOFF_G = "backoff-G"
    E_AT_T2 = "E-at-T2"  # non-INVITE request retransmits every T2 once a 1xx came
    MARK_CANCEL = "mark-cancel"  # CANCEL wanted before any 1xx: wait for one (9.1)
    FLUSH_CANCEL = "flush-cancel"  # a 1xx came: send the CANCEL that was waiting
    EMIT_CANCEL = "emit-cancel"


@dataclass(frozen=True)
class Transition:
    next: State
    actions: tuple[Act, ...] = ()


@dataclass(frozen=True)
class Ignore:
    """The input is absorbed: no state change, no output. `why` documents the choice."""

    why: str


@dataclass(frozen=True)
class Reject:
    """The TU asked for something the protocol forbids in this state."""

    why: str


Entry = Transition | Ignore | Reject


def T(next_state: State, *actions: Act) -> Transition:
    return Transition(next_state, actions)


S, I, A = State, Input, Act  # noqa: E741 - table shorthand

_STALE = Ignore("timer not running in this state")
_OVER = Ignore("transaction over")
_NOT_STARTED = Reject("transaction not started")
_STARTED = Reject("transaction already started")
_FINAL_SENT = Reject("a final response was already sent")
_NOT_INVITE = Reject("only an INVITE client transaction can be cancelled")


def _row(inputs: Iterable[Input], entry: Entry, **explicit: Entry) -> dict[Input, Entry]:
    """A state's row: `explicit` entries by input name, `entry` for every other input."""
    row = {i: entry for i in inputs}
    for name, e in explicit.items():
        row[Input[name]] = e
    return row


def _terminated_row(inputs: Iterable[Input], tu: Entry) -> dict[Input, Entry]:
    """Network and timer inputs after the end are absorbed; TU inputs get `tu`."""
    return {i: (tu if i in TU_INPUTS else _OVER) for i in inputs}


# -- INVITE client (RFC 3261 17.1.1, figure 5; RFC 6026 7.2) ------------------------------
_IC_INPUTS = (
    I.START, I.R1XX, I.R2XX, I.R3XX_6XX, I.TRANSPORT_ERROR, I.TU_CANCEL,
    I.TIMER_A, I.TIMER_B, I.TIMER_D, I.TIMER_M, I.TIMER_CANCEL,
)  # fmt: skip
_IC: dict[State, dict[Input, Entry]] = {
    S.INIT: _row(
        _IC_INPUTS, _NOT_STARTED, START=T(S.CALLING, A.SEND_REQUEST, A.START_A, A.START_B)
    ),
    S.CALLING: {
        I.START: _STARTED,
        I.TIMER_A: T(S.CALLING, A.SEND_REQUEST, A.BACKOFF_A),
        I.TIMER_B: T(S.TERMINATED, A.INFORM_TIMEOUT),
        I.R1XX: T(S.PROCEEDING, A.CANCEL_TIMERS, A.PASS_RESPONSE, A.FLUSH_CANCEL),
        I.R2XX: T(S.ACCEPTED, A.CANCEL_TIMERS, A.PASS_RESPONSE, A.START_M),
        I.R3XX_6XX: T(S.COMPLETED, A.CANCEL_TIMERS, A.SEND_ACK, A.PASS_RESPONSE, A.START_D),
        I.TRANSPORT_ERROR: T(S.TERMINATED, A.INFORM_TRANSPORT_ERROR),
        I.TU_CANCEL: T(S.CALLING, A.MARK_CANCEL),
        I.TIMER_D: _STALE,
        I.TIMER_M: _STALE,
        I.TIMER_CANCEL: _STALE,
    },
    S.PROCEEDING: {
        I.START: _STARTED,
        I.R1XX: T(S.PROCEEDING, A.PASS_RESPONSE),
        I.R2XX: T(S.ACCEPTED, A.CANCEL_TIMERS, A.PASS_RESPONSE, A.START_M),
        I.R3XX_6XX: T(S.COMPLETED, A.CANCEL_TIMERS, A.SEND_ACK, A.PASS_RESPONSE, A.START_D),
        # Not in figure 5 (nothing is sent in Proceeding), but a dead TCP/TLS connection
        # would otherwise leave the call hanging until the TU gives up.
        I.TRANSPORT_ERROR: T(S.TERMINATED, A.INFORM_TRANSPORT_ERROR),
        I.TU_CANCEL: T(S.PROCEEDING, A.EMIT_CANCEL),
        I.TIMER_CANCEL: T(S.TERMINATED, A.INFORM_TIMEOUT),
        I.TIMER_A: _STALE,
        I.TIMER_B: _STALE,
        I.TIMER_D: _STALE,
        I.TIMER_M: _STALE,
    },
    S.COMPLETED: {
        I.START: _STARTED,
        I.R3XX_6XX: T(S.COMPLETED, A.SEND_ACK),  # the final was retransmitted: re-ACK
        I.R1XX: Ignore("provisional after the final response"),
        I.R2XX: Ignore("2xx after a non-2xx final response (a proxy never does that)"),
        I.TIMER_D: T(S.TERMINATED),
        I.TRANSPORT_ERROR: T(S.TERMINATED, A.INFORM_TRANSPORT_ERROR),
        I.TU_CANCEL: Ignore("already answered: nothing to cancel"),
        I.TIMER_A: _STALE,
        I.TIMER_B: _STALE,
        I.TIMER_M: _STALE,
        I.TIMER_CANCEL: _STALE,
    },
    S.ACCEPTED: {
        I.START: _STARTED,
        I.R2XX: T(S.ACCEPTED, A.PASS_RESPONSE),  # retransmitted or forked 2xx (RFC 6026)
        I.R1XX: Ignore("provisional after a 2xx"),
        I.R3XX_6XX: Ignore("non-2xx after a 2xx"),
        I.TIMER_M: T(S.TERMINATED),
        I.TRANSPORT_ERROR: Ignore("nothing is sent in Accepted"),
        I.TU_CANCEL: Ignore("already answered: nothing to cancel"),
        I.TIMER_A: _STALE,
        I.TIMER_B: _STALE,
        I.TIMER_D: _STALE,
        I.TIMER_CANCEL: _STALE,
    },
    S.TERMINATED: _terminated_row(_IC_INPUTS, Ignore("over: a late CANCEL is a normal race")),
}
_IC[S.TERMINATED][I.START] = _STARTED

# -- non-INVITE client (RFC 3261 17.1.2, figure 6) ------------------------------------------
_NC_INPUTS = (
    I.START, I.R1XX, I.R2XX, I.R3XX_6XX, I.TRANSPORT_ERROR, I.TU_CANCEL,
    I.TIMER_E, I.TIMER_F, I.TIMER_K,
)  # fmt: skip

# Trying and Proceeding take responses, timer F and transport errors alike; they differ in
# timer E (doubling up to T2 in Trying, every T2 once a provisional response came).
_NC_WAITING: dict[Input, Entry] = {
    I.START: _STARTED,
    I.TIMER_F: T(S.TERMINATED, A.INFORM_TIMEOUT),
    I.R1XX: T(S.PROCEEDING, A.PASS_RESPONSE),
    I.R2XX: T(S.COMPLETED, A.CANCEL_TIMERS, A.PASS_RESPONSE, A.START_K),
    I.R3XX_6XX: T(S.COMPLETED, A.CANCEL_TIMERS, A.PASS_RESPONSE, A.START_K),
    I.TRANSPORT_ERROR: T(S.TERMINATED, A.INFORM_TRANSPORT_ERROR),
    I.TU_CANCEL: _NOT_INVITE,
    I.TIMER_K: _STALE,
}
_NC: dict[State, dict[Input, Entry]] = {
    S.INIT: _row(_NC_INPUTS, _NOT_STARTED, START=T(S.TRYING, A.SEND_REQUEST, A.START_E, A.START_F)),
    S.TRYING: {**_NC_WAITING, I.TIMER_E: T(S.TRYING, A.SEND_REQUEST, A.BACKOFF_E)},
    S.PROCEEDING: {**_NC_WAITING, I.TIMER_E: T(S.PROCEEDING, A.SEND_REQUEST, A.E_AT_T2)},
    S.COMPLETED: {
        I.START: _STARTED,
        I.R1XX: Ignore("response retransmission absorbed"),
        I.R2XX: Ignore("response retransmission absorbed"),
        I.R3XX_6XX: Ignore("response retransmission absorbed"),
        I.TIMER_K: T(S.TERMINATED),
        I.TRANSPORT_ERROR: Ignore("nothing is sent in Completed"),
        I.TU_CANCEL: _NOT_INVITE,
        I.TIMER_E: _STALE,
        I.TIMER_F: _STALE,
    },
    S.TERMINATED: _terminated_row(_NC_INPUTS, _NOT_INVITE),
}
_NC[S.TERMINATED][I.START] = _STARTED

# -- INVITE server (RFC 3261 17.2.1, figure 7; RFC 6026 7.1) --------------------------------
_IS_INPUTS = (
    I.START, I.REQUEST, I.ACK, I.TRANSPORT_ERROR, I.TU_1XX, I.TU_2XX, I.TU_3XX_6XX,
    I.TIMER_TRYING, I.TIMER_G, I.TIMER_H, I.TIMER_I, I.TIMER_L,
)  # fmt: skip
_IS: dict[State, dict[Input, Entry]] = {
    S.INIT: _row(_IS_INPUTS, _NOT_STARTED, START=T(S.PROCEEDING, A.PASS_REQUEST, A.START_TRYING)),
    S.PROCEEDING: {
        I.START: _STARTED,
        I.TIMER_TRYING: T(S.PROCEEDING, A.SEND_TRYING),
        I.REQUEST: T(S.PROCEEDING, A.RESEND_RESPONSE),
        I.TU_1XX: T(S.PROCEEDING, A.STOP_TRYING, A.SEND_RESPONSE),
        I.TU_2XX: T(S.ACCEPTED, A.CANCEL_TIMERS, A.SEND_RESPONSE, A.START_L),
        I.TU_3XX_6XX: T(S.COMPLETED, A.CANCEL_TIMERS, A.SEND_RESPONSE, A.START_G, A.START_H),
        I.TRANSPORT_ERROR: T(S.TERMINATED, A.INFORM_TRANSPORT_ERROR),
        I.ACK: Ignore("ACK before any final response"),
        I.TIMER_G: _STALE,
        I.TIMER_H: _STALE,
        I.TIMER_I: _STALE,
        I.TIMER_L: _STALE,
    },
    S.COMPLETED: {
        I.START: _STARTED,
        I.REQUEST: T(S.COMPLETED, A.RESEND_RESPONSE),
        I.TIMER_G: T(S.COMPLETED, A.RESEND_RESPONSE, A.BACKOFF_G),
        I.TIMER_H: T(S.TERMINATED, A.INFORM_TIMEOUT),
        I.ACK: T(S.CONFIRMED, A.CANCEL_TIMERS, A.START_I),
        I.TRANSPORT_ERROR: T(S.TERMINATED, A.INFORM_TRANSPORT_ERROR),
        I.TU_1XX: _FINAL_SENT,
        I.TU_2XX: _FINAL_SENT,
        I.TU_3XX_6XX: _FINAL_SENT,
        I.TIMER_TRYING: _STALE,
        I.TIMER_I: _STALE,
        I.TIMER_L: _STALE,
    },
    S.CONFIRMED: {
        I.START: _STARTED,
        I.REQUEST: Ignore("request retransmission absorbed"),
        I.ACK: Ignore("ACK retransmission absorbed"),
        I.TIMER_I: T(S.TERMINATED),
        I.TRANSPORT_ERROR: Ignore("nothing is sent in Confirmed"),
        I.TU_1XX: _FINAL_SENT,
        I.TU_2XX: _FINAL_SENT,
        I.TU_3XX_6XX: _FINAL_SENT,
        I.TIMER_TRYING: _STALE,
        I.TIMER_G: _STALE,
        I.TIMER_H: _STALE,
        I.TIMER_L: _STALE,
    },
    S.ACCEPTED: {
        I.START: _STARTED,
        # The 2xx is retransmitted by the UAS core (the layer), not for each INVITE copy.
        I.REQUEST: Ignore("INVITE retransmission absorbed (RFC 6026)"),
        I.ACK: T(S.ACCEPTED, A.PASS_ACK),
        I.TU_2XX: T(S.ACCEPTED, A.SEND_RESPONSE),  # the TU's 2xx retransmission
        I.TIMER_L: T(S.TERMINATED),
        I.TRANSPORT_ERROR: T(S.ACCEPTED, A.INFORM_TRANSPORT_ERROR),
        I.TU_1XX: _FINAL_SENT,
        I.TU_3XX_6XX: _FINAL_SENT,
        I.TIMER_TRYING: _STALE,
        I.TIMER_G: _STALE,
        I.TIMER_H: _STALE,
        I.TIMER_I: _STALE,
    },
    S.TERMINATED: _terminated_row(_IS_INPUTS, Reject("transaction is over")),
}
_IS[S.TERMINATED][I.START] = _STARTED

# -- non-INVITE server (RFC 3261 17.2.2, figure 8) ------------------------------------------
_NS_INPUTS = (
    I.START, I.REQUEST, I.TRANSPORT_ERROR, I.TU_1XX, I.TU_2XX, I.TU_3XX_6XX, I.TIMER_J,
)  # fmt: skip
_NS: dict[State, dict[Input, Entry]] = {
    S.INIT: _row(_NS_INPUTS, _NOT_STARTED, START=T(S.TRYING, A.PASS_REQUEST)),
    S.TRYING: {
        I.START: _STARTED,
        I.REQUEST: Ignore("retransmission before any response is discarded"),
        I.TU_1XX: T(S.PROCEEDING, A.SEND_RESPONSE),
        I.TU_2XX: T(S.COMPLETED, A.SEND_RESPONSE, A.START_J),
        I.TU_3XX_6XX: T(S.COMPLETED, A.SEND_RESPONSE, A.START_J),
        I.TRANSPORT_ERROR: Ignore("nothing was sent yet"),
        I.TIMER_J: _STALE,
    },
    S.PROCEEDING: {
        I.START: _STARTED,
        I.REQUEST: T(S.PROCEEDING, A.RESEND_RESPONSE),
        I.TU_1XX: T(S.PROCEEDING, A.SEND_RESPONSE),
        I.TU_2XX: T(S.COMPLETED, A.SEND_RESPONSE, A.START_J),
        I.TU_3XX_6XX: T(S.COMPLETED, A.SEND_RESPONSE, A.START_J),
        I.TRANSPORT_ERROR: T(S.TERMINATED, A.INFORM_TRANSPORT_ERROR),
        I.TIMER_J: _STALE,
    },
    S.COMPLETED: {
        I.START: _STARTED,
        I.REQUEST: T(S.COMPLETED, A.RESEND_RESPONSE),
        I.TIMER_J: T(S.TERMINATED),
        I.TRANSPORT_ERROR: T(S.TERMINATED, A.INFORM_TRANSPORT_ERROR),
        I.TU_1XX: _FINAL_SENT,
        I.TU_2XX: _FINAL_SENT,
        I.TU_3XX_6XX: _FINAL_SENT,
    },
    S.TERMINATED: _terminated_row(_NS_INPUTS, Reject("transaction is over")),
}
_NS[S.TERMINATED][I.START] = _STARTED

TABLES: dict[Kind, dict[State, dict[Input, Entry]]] = {
    Kind.INVITE_CLIENT: _IC,
    Kind.NON_INVITE_CLIENT: _NC,
    Kind.INVITE_SERVER: _IS,
    Kind.NON_INVITE_SERVER: _NS,
}
INPUTS: dict[Kind, frozenset[Input]] = {
    Kind.INVITE_CLIENT: frozenset(_IC_INPUTS),
    Kind.NON_INVITE_CLIENT: frozenset(_NC_INPUTS),
    Kind.INVITE_SERVER: frozenset(_IS_INPUTS),
    Kind.NON_INVITE_SERVER: frozenset(_NS_INPUTS),
}
STATES: dict[Kind, frozenset[State]] = {k: frozenset(t) for k, t in TABLES.items()}

del S, I, A


def lookup(kind: Kind, state: State, inp: Input) -> Entry:
    """The table entry for (state, input); inputs that a kind never takes are rejected."""
    if inp not in INPUTS[kind]:
        return Reject(f"{inp.value} does not apply to an {kind.value} transaction")
    row = TABLES[kind].get(state)
    if row is None:
        return Reject(f"{kind.value} transactions have no state {state.value}")
    return row[inp]


def check_tables() -> None:
    """Every (state, input) of every kind has an entry; network and timer inputs are never
    rejected once started (before START any input is our bug); transitions stay in the
    kind's states."""
    for kind, table in TABLES.items():
        for state, row in table.items():
            missing = INPUTS[kind] - row.keys()
            extra = row.keys() - INPUTS[kind]
            if missing or extra:
                raise AssertionError(f"{kind} {state}: missing {missing}, extra {extra}")
            for inp, entry in row.items():
                if isinstance(entry, Reject) and inp not in TU_INPUTS and state is not State.INIT:
                    raise AssertionError(f"{kind} {state} {inp}: network input rejected")
                if isinstance(entry, Transition) and entry.next not in table:
                    raise AssertionError(f"{kind} {state} {inp}: unknown {entry.next}")


check_tables()


# ---------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------


class ClientKey(NamedTuple):
    """RFC 3261 17.1.3: a response matches by its top Via branch and its CSeq method."""

    branch: str
    method: str


class ServerKey(NamedTuple):
    """RFC 3261 17.2.3: branch, sent-by of the top Via, and method (ACK counts as INVITE).

    For an RFC 2543 request (branch without the magic cookie), `branch` holds a
    fingerprint of Request-URI, tags, Call-ID, CSeq and top Via instead.
    """

    branch: str
    sent_by: str
    method: str


Key = ClientKey | ServerKey


@dataclass(frozen=True, slots=True)
class Send:
    """Give `data` (the serialised `message`) to the transport, towards `peer`.

    `peer` is whatever the edge passed in: for a client transaction the destination it
    chose, for a server transaction where the request came from (the transport applies
    RFC 3261 18.2.2 / RFC 3581 to it).
    """

    message: Request | Response
    data: bytes
    peer: Any
    key: Key | None = None


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request for the TU; answer it with `TransactionLayer.send_response(key, ...)`."""

    key: ServerKey
    request: Request
    peer: Any


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response to the TU's request. `retransmission` marks a 2xx seen before with the same
    To tag (the TU re-sends its ACK for it, unless it gave the ACK to the layer)."""

    key: ClientKey
    response: Response
    retransmission: bool = False


@dataclass(frozen=True, slots=True)
class AckReceived:
    """An ACK for a 2xx (a transaction of its own), or one that reached an Accepted INVITE
    server transaction. `key` is that server transaction's key, else None."""

    key: ServerKey | None
    request: Request
    peer: Any


@dataclass(frozen=True, slots=True)
class CancelReceived:
    """A CANCEL stopped the INVITE `key`; the layer already sent 200 to the CANCEL and, with
    auto_487, 487 to the INVITE."""

    key: ServerKey
    request: Request
    answered_487: bool


@dataclass(frozen=True, slots=True)
class TransactionTimeout:
    """No answer in time (timer B, F, or the CANCEL guard: treat as 408), or no ACK for a
    non-2xx final (timer H)."""

    key: Key
    method: str
    timer: str


@dataclass(frozen=True, slots=True)
class TransportError:
    """The edge reported that it could not send for this transaction."""

    key: Key
    method: str


@dataclass(frozen=True, slots=True)
class TransactionTerminated:
    key: Key


@dataclass(frozen=True, slots=True)
class CancelNow:
    """Internal to the layer: a 1xx arrived, the CANCEL the TU asked for can go now."""

    key: ClientKey


@dataclass(frozen=True, slots=True)
class AckTimeout:
    """Our 2xx to an INVITE was retransmitted for 64*T1 without an ACK (13.3.1.4): the TU
    should end the session with a BYE."""

    key: ServerKey
    response: Response


@dataclass(frozen=True, slots=True)
class PrackTimeout:
    """A reliable provisional response got no PRACK in 64*T1 (RFC 3262): the TU should
    reject the INVITE with a 5xx."""

    key: ServerKey
    response: Response


@dataclass(frozen=True, slots=True)
class StrayResponse:
    """A response that matches no client transaction (and no ACK we could re-send)."""

    response: Response
    peer: Any


@dataclass(frozen=True, slots=True)
class MergedRequest:
    """8.2.2.2: the same request reached us by two paths; the layer answered 482."""

    key: ServerKey
    request: Request


@dataclass(frozen=True, slots=True)
class Malformed:
    """A message whose transaction headers are unreadable; for a request the layer answered
    400 statelessly where possible."""

    message: Request | Response
    error: RemoteProtocolError
    peer: Any


Action = Union[  # noqa: UP007 - a long alias reads better this way
    Send,
    RequestReceived,
    ResponseReceived,
    AckReceived,
    CancelReceived,
    TransactionTimeout,
    TransportError,
    TransactionTerminated,
    CancelNow,
    AckTimeout,
    PrackTimeout,
    StrayResponse,
    MergedRequest,
    Malformed,
]


# ---------------------------------------------------------------------------------------
# Helpers for keys and derived requests
# ---------------------------------------------------------------------------------------


def new_branch(token: Callable[[], str] | None = None) -> str:
    """A fresh RFC 3261 branch: the magic cookie plus a random token."""
    return MAGIC_COOKIE + (token() if token is not None else secrets.token_hex(8))


def client_key(message: Request | Response) -> ClientKey:
    """The client transaction key of our request or of a response to it."""
    branch = message.top_via.branch
    if not branch:
        raise RemoteProtocolError(400, "top Via without branch")
    return ClientKey(branch, message.cseq.method)


def server_key(request: Request) -> ServerKey:
    """The server transaction a request belongs to (RFC 3261 17.2.3)."""
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch
    sent_by = via.sent_by.lower()
    if branch and branch.startswith(MAGIC_COOKIE):
        return ServerKey(branch, sent_by, method)
    # RFC 2543 peers: Request-URI, From tag, Call-ID, CSeq number and the whole top Via; the
    # To tag too, except for INVITE/ACK (the ACK carries the tag of our response).
    cseq = request.cseq
    parts = [
        "2543",
        request.target,
        request.from_.tag or "",
        request.call_id,
        str(cseq.number),
        str(via),
    ]
    if method != "INVITE":
        parts.append(request.to.tag or "")
    return ServerKey("|".join(parts), sent_by, method)


def _copy_fields(request: Request, names: tuple[str, ...]) -> list[tuple[str, str]]:
    keys = set(names)
    return [(n, v) for n, v in request.headers.items() if n.lower() in keys]


def build_ack(request: Request, response: Response) -> Request:
    """The ACK for a non-2xx final response (RFC 3261 17.1.1.3): same Request-URI, Call-ID,
    From, CSeq number and top Via as the INVITE, To from the response, the INVITE's Route."""
    return _hop_by_hop("ACK", request, to=response.headers.get("to") or "")


def build_cancel(request: Request) -> Request:
    """CANCEL for an INVITE (RFC 3261 9.1): identical Request-URI, Call-ID, From, To, CSeq
    number, top Via and Route."""
    return _hop_by_hop("CANCEL", request, to=request.headers.get("to") or "")


def _hop_by_hop(method: str, invite: Request, *, to: str) -> Request:
    """A request that stands for the INVITE's own transaction hop by hop (ACK of a non-2xx,
    CANCEL): the INVITE's Request-URI, top Via, From, Call-ID, CSeq number and Route."""
    return build_request(
        method,
        invite.target,
        via=invite.headers.values("via")[0],
        from_=invite.headers.get("from") or "",
        to=to,
        call_id=invite.call_id,
        cseq=invite.cseq.number,
        route=[v for n, v in _copy_fields(invite, ("route",))],
    )


def _with_branch(request: Request, token: Callable[[], str] | None) -> Request:
    """`request` with a branch on its top Via (added when missing)."""
    via = request.top_via
    if via.branch and via.branch.startswith(MAGIC_COOKIE):
        return request
    branch = new_branch(token)
    fields: list[tuple[str, str]] = []
    done = False
    for name, value in request.headers.items():
        if not done and name.lower() in ("via", "v"):
            values = split_list(value)
            values[0] = str(Via.parse(values[0]).with_params(branch=branch))
            value = ", ".join(values)
            done = True
        fields.append((name, value))
    out = Request(request.method, request.target, fields, request.body, request.version)
    return out


def _response_input(status: int, tu: bool) -> Input:
    if status < 200:
        return Input.TU_1XX if tu else Input.R1XX
    if status < 300:
        return Input.TU_2XX if tu else Input.R2XX
    return Input.TU_3XX_6XX if tu else Input.R3XX_6XX


# ---------------------------------------------------------------------------------------
# The transactions
# ---------------------------------------------------------------------------------------


class _Transaction:
    """Table interpreter shared by client and server transactions."""

    kind: Kind
    key: Key
    request: Request
    peer: Any

    def __init__(self, request: Request, peer: Any, reliable: bool, timers: Timers) -> None:
        self.request = request
        self.peer = peer
        self.reliable = reliable
        self.timers = timers
        self.state = State.INIT
        self._armed: dict[str, float] = {}  # timer name -> due time
        self._interval: dict[str, float] = {}  # current interval of A/E/G
        self._inline: list[str] = []  # zero-length timers to fire before returning
        self.last_response: Response | None = None
        self._last_data: bytes = b""
        self.history: list[tuple[State, Input, State]] = []  # for logs and tests
        self.retransmissions = 0
        self._input = Input.START
        self.scheduled: float | None = None  # the deadline the layer has indexed

    # -- time -----------------------------------------------------------------------------
    @property
    def deadline(self) -> float | None:
        """When `on_timer` should be called next; None when no timer runs."""
        return min(self._armed.values()) if self._armed else None

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    def armed(self) -> dict[str, float]:
        """Running timers and when they fire (for tests and debugging)."""
        return dict(self._armed)

    def on_timer(self, now: float) -> list[Action]:
        """Fire every timer due at `now`, earliest first."""
        out: list[Action] = []
        while self._armed:
            name, due = min(self._armed.items(), key=lambda kv: kv[1])
            if due > now:
                break
            del self._armed[name]
            out += self._feed(INPUT_OF_TIMER[name], now)
        return out

    def on_transport_error(self, now: float) -> list[Action]:
        return self._feed(Input.TRANSPORT_ERROR, now)

    # -- the interpreter ------------------------------------------------------------------
    def _feed(self, inp: Input, now: float, msg: Request | Response | None = None) -> list[Action]:
        entry = lookup(self.kind, self.state, inp)
        if isinstance(entry, Reject):
            raise LocalProtocolError(
                f"{self.kind.value} transaction in {self.state.value}: {inp.value}: {entry.why}"
            )
        if isinstance(entry, Ignore):
            return []
        before = self.state
        self.state = entry.next
        self._input = inp
        self.history.append((before, inp, entry.next))
        out: list[Action] = []
        for act in entry.actions:
            self._do(act, now, msg, out)
        if self.state is State.TERMINATED:
            self._armed.clear()
            self._inline.clear()
            out.append(TransactionTerminated(self.key))
            return out
        while self._inline and self.state is not State.TERMINATED:
            name = self._inline.pop(0)
            out += self._feed(INPUT_OF_TIMER[name], now)
        return out

    def _start(self, name: str, now: float) -> None:
        duration = self.timers.initial(name, self.reliable)
        if duration is None:
            return
        if name in ("A", "E", "G"):
            self._interval[name] = duration
        if duration <= 0:
            self._inline.append(name)
        else:
            self._armed[name] = now + duration

    def _send(self, message: Request | Response, data: bytes) -> Send:
        return Send(message, data, self.peer, self.key)

    def _do(self, act: Act, now: float, msg: Any, out: list[Action]) -> None:
        if act is Act.CANCEL_TIMERS:
            self._armed.clear()
        elif act.name.startswith("START_"):
            self._start(act.name[6:], now)
        elif act.name.startswith("BACKOFF_"):
            name = act.name[8:]
            interval = self.timers.next_interval(name, self._interval[name])
            self._interval[name] = interval
            self._armed[name] = now + interval
        elif act is Act.E_AT_T2:
            self._interval["E"] = self.timers.t2
            self._armed["E"] = now + self.timers.t2
        elif act is Act.STOP_TRYING:
            self._armed.pop("TRYING", None)
        else:
            self._do_message(act, now, msg, out)

    def _do_message(self, act: Act, now: float, msg: Any, out: list[Action]) -> None:
        raise LocalProtocolError(f"{self.kind.value} transaction cannot {act.value}")


class ClientTransaction(_Transaction):
    """A client transaction for `request` (INVITE or not), towards `peer`.

    ```
    tx = ClientTransaction(request, peer, reliable=False)
    out = tx.start(now=0.0)           # [Send(request)]; tx.deadline == 0.5 (timer A)
    out = tx.on_timer(now=0.5)        # [Send(request)] again, next at 1.5
    out = tx.on_response(resp, now)   # [ResponseReceived(...), Send(ACK) ...]
    ```
    The request must carry a top Via with a magic-cookie branch (TransactionLayer adds one).
    """

    def __init__(
        self,
        request: Request,
        peer: Any = None,
        *,
        reliable: bool = False,
        timers: Timers = DEFAULT_TIMERS,
    ) -> None:
        if request.method == "ACK":
            raise LocalProtocolError("ACK is not sent in a client transaction")
        super().__init__(request, peer, reliable, timers)
        self.kind = Kind.INVITE_CLIENT if request.method == "INVITE" else Kind.NON_INVITE_CLIENT
        self.key = client_key(request)
        if not self.key.branch.startswith(MAGIC_COOKIE):
            raise LocalProtocolError("our requests need an RFC 3261 branch")
        self.data = request.to_bytes()
        self.ack: Request | None = None
        self._ack_data = b""
        self._tags_2xx: set[str | None] = set()
        self.cancel_wanted = False
        self.cancel_sent = False

    def start(self, now: float) -> list[Action]:
        return self._feed(Input.START, now)

    def on_response(self, response: Response, now: float) -> list[Action]:
        return self._feed(_response_input(response.status, tu=False), now, response)

    def cancel(self, now: float) -> list[Action]:
        """Ask for a CANCEL: `CancelNow` comes out once a provisional response was seen."""
        return self._feed(Input.TU_CANCEL, now)

    def _do_message(self, act: Act, now: float, msg: Any, out: list[Action]) -> None:
        if act is Act.SEND_REQUEST:
            if self._input is not Input.START:
                self.retransmissions += 1
            out.append(self._send(self.request, self.data))
        elif act is Act.PASS_RESPONSE:
            retransmission = False
            if msg.status >= 200 and msg.status < 300:
                tag = msg.to.tag
                retransmission = tag in self._tags_2xx
                self._tags_2xx.add(tag)
            self.last_response = msg
            out.append(ResponseReceived(self.key, msg, retransmission))  # type: ignore[arg-type]
        elif act is Act.SEND_ACK:
            if self.ack is None:
                self.ack = build_ack(self.request, msg)
                self._ack_data = self.ack.to_bytes()
            else:
                self.retransmissions += 1
            out.append(self._send(self.ack, self._ack_data))
        elif act is Act.INFORM_TIMEOUT:
            timer = TIMER_OF_INPUT[self._input]
            out.append(TransactionTimeout(self.key, self.request.method, timer))
        elif act is Act.INFORM_TRANSPORT_ERROR:
            out.append(TransportError(self.key, self.request.method))
        elif act is Act.MARK_CANCEL:
            self.cancel_wanted = True
        elif act is Act.FLUSH_CANCEL:
            if self.cancel_wanted:
                self._emit_cancel(now, out)
        elif act is Act.EMIT_CANCEL:
            self._emit_cancel(now, out)
        else:
            super()._do_message(act, now, msg, out)

    def _emit_cancel(self, now: float, out: list[Action]) -> None:
        self.cancel_wanted = True
        if self.cancel_sent:
            return
        self.cancel_sent = True
        self._armed["CANCEL"] = now + self.timers.timeout
        out.append(CancelNow(self.key))  # type: ignore[arg-type]


class ServerTransaction(_Transaction):
    """A server transaction for a received `request` (not ACK), answering towards `peer`.

    ```
    tx = ServerTransaction(request, peer, reliable=False)
    out = tx.start(now)                  # [RequestReceived]; 100 Trying due at now+0.2
    out = tx.send_response(resp, now)    # [Send(resp)]
    out = tx.on_request(request, now)    # a retransmission: [Send(last response)]
    ```
    """

    def __init__(
        self,
        request: Request,
        peer: Any = None,
        *,
        reliable: bool = False,
        timers: Timers = DEFAULT_TIMERS,
        key: ServerKey | None = None,
    ) -> None:
        if request.method == "ACK":
            raise LocalProtocolError("ACK does not create a server transaction")
        super().__init__(request, peer, reliable, timers)
        self.kind = Kind.INVITE_SERVER if request.method == "INVITE" else Kind.NON_INVITE_SERVER
        self.key = key if key is not None else server_key(request)
        self.local_tag: str | None = None  # our To tag, once a response carried one

    def start(self, now: float) -> list[Action]:
        return self._feed(Input.START, now)

    def on_request(self, request: Request, now: float) -> list[Action]:
        """A retransmission of the request, or (INVITE) the ACK for a non-2xx."""
        return self._feed(Input.ACK if request.method == "ACK" else Input.REQUEST, now, request)

    def send_response(self, response: Response, now: float) -> list[Action]:
        # 8.2.6.2: the response copies the request's CSeq, even one whose method differs
        # from the request line (RFC 4475 3.4.1/3.4.2 want such a request answered).
        if response.cseq.method != self.request.cseq.method:
            raise LocalProtocolError("response CSeq method differs from the request's")
        return self._feed(_response_input(response.status, tu=True), now, response)

    @property
    def final_sent(self) -> bool:
        return self.state in (
            State.COMPLETED, State.CONFIRMED, State.ACCEPTED, State.TERMINATED
        )  # fmt: skip

    def _do_message(self, act: Act, now: float, msg: Any, out: list[Action]) -> None:
        if act is Act.PASS_REQUEST:
            out.append(RequestReceived(self.key, self.request, self.peer))  # type: ignore[arg-type]
        elif act is Act.SEND_RESPONSE:
            self._remember(msg)
            out.append(self._send(msg, self._last_data))
        elif act is Act.RESEND_RESPONSE:
            if self.last_response is not None:
                self.retransmissions += 1
                out.append(self._send(self.last_response, self._last_data))
        elif act is Act.SEND_TRYING:
            self._remember(make_response(self.request, 100))
            out.append(self._send(self.last_response, self._last_data))  # type: ignore[arg-type]
        elif act is Act.PASS_ACK:
            out.append(AckReceived(self.key, msg, self.peer))  # type: ignore[arg-type]
        elif act is Act.INFORM_TIMEOUT:
            out.append(TransactionTimeout(self.key, self.request.method, "H"))
        elif act is Act.INFORM_TRANSPORT_ERROR:
            out.append(TransportError(self.key, self.request.method))
        else:
            super()._do_message(act, now, msg, out)

    def _remember(self, response: Response) -> None:
        self.last_response = response
        self._last_data = response.to_bytes()
        tag = response.to.tag
        if tag and self.local_tag is None:
            self.local_tag = tag


# ---------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------


@dataclass
class _Retransmit:
    """A response the UAS core keeps re-sending: a 2xx until ACK, a reliable 1xx until PRACK."""

    server: ServerKey
    send: Send
    interval: float
    due: float
    give_up: float
    cap: float | None  # T2 for 2xx; reliable 1xx double without a cap (RFC 3262 3)


@dataclass
class _CachedAck:
    send: Send
    expires: float


@dataclass
class LayerStats:
    """Counters for logs and the status page (transactions count their own retransmits)."""

    retransmitted_responses: int = 0  # 2xx until ACK, reliable 1xx until PRACK
    stray_responses: int = 0
    merged: int = 0
    malformed: int = 0


class TransactionLayer:
    """All transactions of one UA, keyed and routed; timers multiplexed into one deadline.

    The edge (an asyncio loop) calls `on_message` for every parsed message, `on_timer` when
    `next_deadline` has passed, and performs the `Send` actions it gets back; the TU acts on
    the other actions. `token` (random hex) is injectable for repeatable tests.
    """

    def __init__(
        self,
        timers: Timers = DEFAULT_TIMERS,
        *,
        token: Callable[[], str] | None = None,
        auto_487: bool = True,
    ) -> None:
        self.timers = timers
        self._token = token or (lambda: secrets.token_hex(8))
        self.auto_487 = auto_487
        self.clients: dict[ClientKey, ClientTransaction] = {}
        self.servers: dict[ServerKey, ServerTransaction] = {}
        self._merged: dict[tuple[str, str, int, str], ServerKey] = {}
        self._retransmit: dict[tuple[Any, ...], _Retransmit] = {}
        self._heap: list[tuple[float, int, Key]] = []
        self._seq = itertools.count()
        self._acks: dict[tuple[str, int, str | None], _CachedAck] = {}
        self.stats = LayerStats()

    # -- time -----------------------------------------------------------------------------
    @property
    def next_deadline(self) -> float | None:
        """The earliest time `on_timer` has work to do (None: nothing scheduled)."""
        heap = self._heap
        while heap:
            t, _, key = heap[0]
            tx = self._lookup(key)
            if tx is not None and tx.deadline == t:
                break
            heapq.heappop(heap)  # stale: the transaction ended or its timers moved
        times = [r.due for r in self._retransmit.values()]
        if heap:
            times.append(heap[0][0])
        return min(times) if times else None

    def _lookup(self, key: Key) -> _Transaction | None:
        if isinstance(key, ClientKey):
            return self.clients.get(key)
        return self.servers.get(key)

    def _schedule(self, tx: _Transaction) -> None:
        """Index the transaction's next deadline (a heap with lazy deletion, so that a flood
        of completed transactions waiting out timer J/K costs log n, not n, per event)."""
        d = tx.deadline
        if d is not None and d != tx.scheduled:
            heapq.heappush(self._heap, (d, next(self._seq), tx.key))
        tx.scheduled = d

    def on_timer(self, now: float) -> list[Action]:
        """Fire everything due at `now`: transaction timers, 2xx and reliable 1xx resends."""
        out: list[Action] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, key = heapq.heappop(heap)
            tx = self._lookup(key)
            if tx is None or tx.deadline is None or tx.deadline > now:
                continue  # stale entry; a live later deadline has its own entry
            tx.scheduled = None
            out += self._post(tx, tx.on_timer(now), now)
        for rkey, r in list(self._retransmit.items()):
            if r.due > now:
                continue
            if now >= r.give_up:
                del self._retransmit[rkey]
                if rkey[0] == "2xx":
                    out.append(AckTimeout(r.server, r.send.message))  # type: ignore[arg-type]
                else:
                    out.append(PrackTimeout(r.server, r.send.message))  # type: ignore[arg-type]
                continue
            if rkey[0] == "1xx":
                tx = self.servers.get(r.server)
                if tx is None or tx.state is not State.PROCEEDING:
                    del self._retransmit[rkey]
                    continue
            out.append(r.send)
            self.stats.retransmitted_responses += 1
            r.interval = 2 * r.interval if r.cap is None else min(2 * r.interval, r.cap)
            r.due = min(now + r.interval, r.give_up)
        for akey, cached in list(self._acks.items()):
            if cached.expires <= now:
                del self._acks[akey]
        return out

    # -- client side ------------------------------------------------------------------------
    def send_request(
        self, request: Request, peer: Any, *, reliable: bool, now: float
    ) -> tuple[ClientKey, list[Action]]:
        """Start a client transaction; a top Via without branch gets a fresh one."""
        request = _with_branch(request, self._token)
        tx = ClientTransaction(request, peer, reliable=reliable, timers=self.timers)
        if tx.key in self.clients:
            raise LocalProtocolError(f"duplicate client transaction {tx.key}")
        self.clients[tx.key] = tx
        return tx.key, self._post(tx, tx.start(now), now)

    def cancel(self, key: ClientKey, now: float) -> list[Action]:
        """CANCEL the INVITE `key` (sent once it has had a provisional response)."""
        tx = self.clients.get(key)
        if tx is None:
            return []  # already over: the race with the final response is normal
        return self._post(tx, tx.cancel(now), now)

    def send_ack(self, ack: Request, peer: Any, *, now: float) -> list[Action]:
        """Send the ACK for a 2xx (no transaction); kept for 64*T1 so that a retransmitted
        2xx is answered with the same ACK without troubling the TU."""
        if ack.method != "ACK":
            raise LocalProtocolError("send_ack needs an ACK")
        ack = _with_branch(ack, self._token)
        send = Send(ack, ack.to_bytes(), peer, None)
        akey = (ack.call_id, ack.cseq.number, ack.to.tag)
        self._acks[akey] = _CachedAck(send, now + self.timers.timeout)
        return [send]

    # -- server side ------------------------------------------------------------------------
    def send_response(self, key: ServerKey, response: Response, now: float) -> list[Action]:
        """Answer the request of server transaction `key`.

        A 2xx to INVITE is then retransmitted until its ACK; a reliable provisional (RSeq
        and Require: 100rel) until its PRACK.
        """
        tx = self.servers.get(key)
        if tx is None:
            raise LocalProtocolError(f"no server transaction {key}")
        out = self._post(tx, tx.send_response(response, now), now)
        if tx.kind is not Kind.INVITE_SERVER:
            return out
        sends = [a for a in out if isinstance(a, Send) and a.message is response]
        if not sends:
            return out
        call = (response.call_id, response.cseq.number)
        t = self.timers
        if 200 <= response.status < 300:
            rkey = ("2xx", *call, response.to.tag)
            self._retransmit[rkey] = _Retransmit(
                key, sends[0], t.t1, now + t.t1, now + t.timeout, t.t2
            )
        elif 100 < response.status < 200 and _is_reliable_1xx(response):
            rseq = int((response.headers.get("rseq") or "0").strip() or 0)
            rkey = ("1xx", *call, rseq)
            self._retransmit[rkey] = _Retransmit(
                key, sends[0], t.t1, now + t.t1, now + t.timeout, None
            )
        return out

    def transport_error(self, key: Key, now: float) -> list[Action]:
        """The edge could not send a message of transaction `key`."""
        tx = self._lookup(key)
        if tx is None:
            return []
        return self._post(tx, tx.on_transport_error(now), now)

    def acked(self, call_id: str, cseq: int, to_tag: str | None) -> bool:
        """Stop retransmitting the 2xx for (Call-ID, CSeq, To tag); True if one was running."""
        return self._retransmit.pop(("2xx", call_id, cseq, to_tag), None) is not None

    # -- incoming ---------------------------------------------------------------------------
    def on_message(
        self, message: Request | Response, peer: Any, *, reliable: bool, now: float
    ) -> list[Action]:
        """Route a parsed message to its transaction, or create a server transaction."""
        try:
            if isinstance(message, Response):
                return self._on_response(message, peer, now)
            return self._on_request(message, peer, reliable, now)
        except RemoteProtocolError as exc:
            self.stats.malformed += 1
            out: list[Action] = [Malformed(message, exc, peer)]
            if (
                isinstance(message, Request)
                and message.method != "ACK"
                and "via" in message.headers
            ):
                try:
                    resp = make_response(
                        message,
                        exc.status if exc.status >= 400 else 400,
                        exc.reason,
                        headers=exc.headers,
                    )
                    out.append(Send(resp, resp.to_bytes(), peer, None))
                except (RemoteProtocolError, LocalProtocolError):
                    pass  # not even a Via to answer to
            return out

    def _on_response(self, response: Response, peer: Any, now: float) -> list[Action]:
        key = client_key(response)
        tx = self.clients.get(key)
        if tx is not None:
            return self._post(tx, tx.on_response(response, now), now)
        if key.method == "INVITE" and 200 <= response.status < 300:
            cached = self._acks.get((response.call_id, response.cseq.number, response.to.tag))
            if cached is not None:
                return [cached.send]
        self.stats.stray_responses += 1
        return [StrayResponse(response, peer)]

    def _on_request(self, request: Request, peer: Any, reliable: bool, now: float) -> list[Action]:
        key = server_key(request)
        tx = self.servers.get(key)
        if request.method == "ACK":
            return self._on_ack(request, key, tx, peer, now)
        if tx is not None:
            return self._post(tx, tx.on_request(request, now), now)
        if request.method == "CANCEL":
            return self._on_cancel(request, key, peer, reliable, now)
        out: list[Action] = []
        mkey = _merge_key(request)
        if mkey is not None:
            other = self._merged.get(mkey)
            if other is not None and other in self.servers:
                return self._merged_request(request, key, peer, reliable, now)
        tx = self._new_server(request, key, peer, reliable)
        if mkey is not None:
            self._merged[mkey] = key
        if request.method == "PRACK":
            out += self._on_prack(request)
        out += self._post(tx, tx.start(now), now)
        return out

    def _on_ack(
        self, ack: Request, key: ServerKey, tx: ServerTransaction | None, peer: Any, now: float
    ) -> list[Action]:
        if tx is not None and tx.state in (State.COMPLETED, State.CONFIRMED):
            return self._post(tx, tx.on_request(ack, now), now)
        self.acked(ack.call_id, ack.cseq.number, ack.to.tag)
        if tx is not None and tx.state is State.ACCEPTED:
            return self._post(tx, tx.on_request(ack, now), now)
        return [AckReceived(None, ack, peer)]

    def _on_cancel(
        self, cancel: Request, key: ServerKey, peer: Any, reliable: bool, now: float
    ) -> list[Action]:
        ctx = self._new_server(cancel, key, peer, reliable)
        out = self._post(ctx, ctx.start(now), now)
        out = [a for a in out if not isinstance(a, RequestReceived)]
        invite = self.servers.get(ServerKey(key.branch, key.sent_by, "INVITE"))
        if invite is None:
            resp = make_response(cancel, 481, to_tag=self._token())
            return out + self._post(ctx, ctx.send_response(resp, now), now)
        if invite.local_tag is None:
            invite.local_tag = self._token()
        resp = make_response(cancel, 200, to_tag=invite.local_tag)
        out += self._post(ctx, ctx.send_response(resp, now), now)
        if invite.state is State.PROCEEDING:
            answered = False
            if self.auto_487:
                r487 = make_response(invite.request, 487, to_tag=invite.local_tag)
                out += self._post(invite, invite.send_response(r487, now), now)
                answered = True
            out.append(CancelReceived(invite.key, cancel, answered))
        return out

    def _merged_request(
        self, request: Request, key: ServerKey, peer: Any, reliable: bool, now: float
    ) -> list[Action]:
        self.stats.merged += 1
        tx = self._new_server(request, key, peer, reliable)
        out = [a for a in tx.start(now) if not isinstance(a, RequestReceived)]
        resp = make_response(request, 482, to_tag=self._token())
        out += self._post(tx, tx.send_response(resp, now), now)
        out.append(MergedRequest(key, request))
        return out

    def _on_prack(self, prack: Request) -> list[Action]:
        """Stop retransmitting the reliable 1xx a PRACK acknowledges (RAck: rseq cseq method)."""
        parts = (prack.headers.get("rack") or "").split()
        if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
            self._retransmit.pop(("1xx", prack.call_id, int(parts[1]), int(parts[0])), None)
        return []

    # -- bookkeeping ----------------------------------------------------------------------
    def _new_server(
        self, request: Request, key: ServerKey, peer: Any, reliable: bool
    ) -> ServerTransaction:
        tx = ServerTransaction(request, peer, reliable=reliable, timers=self.timers, key=key)
        self.servers[key] = tx
        return tx

    def _post(self, tx: _Transaction, actions: list[Action], now: float) -> list[Action]:
        """Turn internal actions into layer work; forget terminated transactions."""
        out: list[Action] = []
        for action in actions:
            if isinstance(action, CancelNow):
                assert isinstance(tx, ClientTransaction)
                cancel = build_cancel(tx.request)
                _, sent = self.send_request(cancel, tx.peer, reliable=tx.reliable, now=now)
                out += sent
            elif isinstance(action, ResponseReceived) and action.retransmission:
                r = action.response
                cached = self._acks.get((r.call_id, r.cseq.number, r.to.tag))
                if cached is not None:
                    cached.expires = now + self.timers.timeout
                    out.append(cached.send)
                else:
                    out.append(action)
            elif isinstance(action, TransactionTerminated):
                self._forget(tx)
                out.append(action)
            else:
                out.append(action)
        if not tx.terminated:
            self._schedule(tx)
        return out

    def _forget(self, tx: _Transaction) -> None:
        if isinstance(tx, ClientTransaction):
            self.clients.pop(tx.key, None)
            return
        assert isinstance(tx, ServerTransaction)
        self.servers.pop(tx.key, None)  # type: ignore[arg-type]
        mkey = _merge_key(tx.request)
        if mkey is not None and self._merged.get(mkey) == tx.key:
            del self._merged[mkey]


def _merge_key(request: Request) -> tuple[str, str, int, str] | None:
    """What tells a merged request (8.2.2.2: the same request by two paths) of one without
    a To tag: From tag, Call-ID and CSeq. None for requests inside a dialog."""
    if request.to.tag is not None:
        return None
    cseq = request.cseq
    return (request.from_.tag or "", request.call_id, cseq.number, cseq.method)


def _is_reliable_1xx(response: Response) -> bool:
    return "rseq" in response.headers and "100rel" in response.require
