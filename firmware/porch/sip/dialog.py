"""SIP dialogs (RFC 3261 section 12, with the INVITE rules of 13-14 and PRACK of RFC 3262).

A `Dialog` is the state two UAs share for a call: Call-ID and tags, the route set, the remote
target, both CSeq counters and the secure flag. It builds the requests we send inside the
dialog (BYE, INFO, re-INVITE, UPDATE, PRACK, and the ACK for a 2xx with its INVITE's CSeq),
the responses we send to requests inside it (To tag, Contact, Record-Route), and checks the
requests we receive (CSeq order -> 500, INVITE glare -> 491 / 500 with Retry-After), applying
target refreshes as it goes. It knows nothing of transports: requests come out with the Via
the caller gives (TransactionLayer fills in the branch) and `next_hop()` says where to send.

Problems with what the peer sent raise RemoteProtocolError carrying the status to answer, as
the parser does, so the UA has one way of turning any refusal into a response.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from porch.sip.errors import LocalProtocolError, RemoteProtocolError
from porch.sip.headers import NameAddress, Via
from porch.sip.message import Request, Response, build_request, make_response
from porch.sip.uri import SipUri, Uri

__all__ = [
    "TARGET_REFRESH",
    "Dialog",
    "DialogId",
    "DialogState",
    "Dialogs",
    "Role",
    "next_hop",
]

# Requests whose Contact replaces the remote target (RFC 3261 12.2; RFC 3311; RFC 6665).
TARGET_REFRESH = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})

# URI parameters that may not appear in a Request-URI (RFC 3261 19.1.1 table 1).
_NOT_IN_REQUEST_URI = ("method",)


class DialogState(StrEnum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class Role(StrEnum):
    UAC = "uac"  # we sent the request that created the dialog
    UAS = "uas"


class DialogId(NamedTuple):
    """Call-ID plus local and remote tag, as seen from our side (RFC 3261 12)."""

    call_id: str
    local_tag: str
    remote_tag: str | None

    @classmethod
    def of_request(cls, request: Request) -> DialogId:
        """The dialog an incoming request belongs to: our tag is in To, theirs in From."""
        return cls(request.call_id, request.to.tag or "", request.from_.tag)

    @classmethod
    def of_response(cls, response: Response) -> DialogId:
        """The dialog a response to our request belongs to: our tag is in From."""
        return cls(response.call_id, response.from_.tag or "", response.to.tag)


def _untagged(addr: NameAddress) -> NameAddress:
    params = {k: v for k, v in addr.params.items() if k != "tag"}
    return NameAddress(addr.uri, addr.display_name, params)


def _target(message: Request | Response) -> Uri | None:
    contacts = message.contact
    return contacts[0].uri if contacts else None


def next_hop(request: Request) -> Uri:
    """Where to send `request` (RFC 3261 8.1.2): the first Route URI when it is a loose
    router, else the Request-URI (which, with a strict router, is that router)."""
    routes = request.route
    if routes:
        first = routes[0].uri
        if isinstance(first, SipUri) and first.lr:
            return first
    return request.uri


@dataclass
class _Pending:
    """An INVITE in progress on the dialog, in one direction (for 14.1/14.2 glare)."""

    cseq: int


class Dialog:
    """One dialog. Build it with `Dialog.uac(...)` or `Dialog.uas(...)`."""

    def __init__(
        self,
        *,
        role: Role,
        call_id: str,
        local_tag: str,
        remote_tag: str | None,
        local_uri: NameAddress,
        remote_uri: NameAddress,
        remote_target: Uri,
        route_set: Iterable[NameAddress] = (),
        local_cseq: int | None = None,
        remote_cseq: int | None = None,
        local_contact: NameAddress | str | None = None,
        secure: bool = False,
        state: DialogState = DialogState.EARLY,
        rng: random.Random | None = None,
    ) -> None:
        self.role = role
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        self.local_uri = _untagged(local_uri)
        self.remote_uri = _untagged(remote_uri)
        self.remote_target = remote_target
        self.route_set: list[NameAddress] = list(route_set)
        self.local_cseq = local_cseq
        self.remote_cseq = remote_cseq
        self.local_contact = local_contact
        self.secure = secure
        self.state = state
        self._rng = rng or random.Random()
        self.invite_out: _Pending | None = None  # our INVITE awaiting its final response
        self.invite_in: _Pending | None = None  # their INVITE we have not answered finally
        self.initial_cseq = remote_cseq if role is Role.UAS else local_cseq
        # As UAS: the CSeq of the INVITE whose 2xx is not ACKed yet. RFC 3261 15.1.1: no BYE
        # before the ACK arrived (or TransactionLayer reported AckTimeout); set it to None then.
        self.awaiting_ack: int | None = None
        self.remote_rseq: int | None = None  # RFC 3262, as UAC: last RSeq processed
        self.local_rseq = 0  # RFC 3262, as UAS: last RSeq sent

    # -- creation -------------------------------------------------------------------------
    @classmethod
    def uac(
        cls,
        request: Request,
        response: Response,
        *,
        local_contact: NameAddress | str | None = None,
        tls: bool = False,
        rng: random.Random | None = None,
    ) -> Dialog:
        """Our dialog from a 1xx-with-tag (early) or 2xx (confirmed) to our `request`
        (RFC 3261 12.1.2): route set from Record-Route reversed, target from Contact."""
        tag = response.to.tag
        if not 100 < response.status < 300 or tag is None:
            raise LocalProtocolError("a dialog needs a 101-299 response with a To tag")
        local_tag = request.from_.tag
        if local_tag is None:
            raise LocalProtocolError("our request has no From tag")
        uri = request.uri
        dialog = cls(
            role=Role.UAC,
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=tag,
            local_uri=request.from_,
            remote_uri=response.to,
            remote_target=_target(response) or uri,
            route_set=reversed(response.record_route),
            local_cseq=request.cseq.number,
            remote_cseq=None,
            local_contact=local_contact or (request.contact[0] if request.contact else None),
            secure=tls and uri.scheme == "sips",
            state=DialogState.CONFIRMED if response.status >= 200 else DialogState.EARLY,
            rng=rng,
        )
        if request.method == "INVITE" and response.status < 200:
            dialog.invite_out = _Pending(request.cseq.number)
        return dialog

    @classmethod
    def uas(
        cls,
        request: Request,
        *,
        local_tag: str,
        local_contact: NameAddress | str | None = None,
        tls: bool = False,
        rng: random.Random | None = None,
    ) -> Dialog:
        """Our dialog for a received dialog-creating `request` (RFC 3261 12.1.1), early
        until `create_response` makes a 2xx: route set from Record-Route in order."""
        target = _target(request)
        if target is None:
            raise RemoteProtocolError(400, "missing Contact in a dialog-creating request")
        dialog = cls(
            role=Role.UAS,
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_.tag,
            local_uri=request.to,
            remote_uri=request.from_,
            remote_target=target,
            route_set=request.record_route,
            local_cseq=None,
            remote_cseq=request.cseq.number,
            local_contact=local_contact,
            secure=tls and request.uri.scheme == "sips",
            rng=rng,
        )
        if request.method == "INVITE":
            dialog.invite_in = _Pending(request.cseq.number)
        return dialog

    # -- identity -------------------------------------------------------------------------
    @property
    def id(self) -> DialogId:
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    @property
    def early(self) -> bool:
        return self.state is DialogState.EARLY

    @property
    def confirmed(self) -> bool:
        return self.state is DialogState.CONFIRMED

    @property
    def terminated(self) -> bool:
        return self.state is DialogState.TERMINATED

    def terminate(self) -> None:
        self.state = DialogState.TERMINATED

    def __repr__(self) -> str:
        return f"<Dialog {self.role.value} {self.state.value} {self.id}>"

    # -- requests we send -----------------------------------------------------------------
    def _request_uri_and_routes(self) -> tuple[Uri, list[str]]:
        """RFC 3261 12.2.1.1: loose routing keeps the remote target as Request-URI; a strict
        first hop becomes the Request-URI and the remote target goes last in Route."""
        if not self.route_set:
            return self.remote_target, []
        first = self.route_set[0].uri
        if isinstance(first, SipUri) and not first.lr:
            params = {k: v for k, v in first.params.items() if k not in _NOT_IN_REQUEST_URI}
            uri = first.replace(params=params, headers=[])
            routes = [str(r) for r in self.route_set[1:]]
            routes.append(f"<{self.remote_target}>")
            return uri, routes
        return self.remote_target, [str(r) for r in self.route_set]

    def _build(
        self,
        method: str,
        cseq: int,
        via: Via | str,
        headers: Iterable[tuple[str, object]],
        body: bytes,
        content_type: str | None,
        contact: bool,
    ) -> Request:
        uri, routes = self._request_uri_and_routes()
        to = (
            self.remote_uri
            if self.remote_tag is None
            else self.remote_uri.with_tag(self.remote_tag)
        )
        return build_request(
            method,
            uri,
            via=via,
            from_=self.local_uri.with_tag(self.local_tag),
            to=to,
            call_id=self.call_id,
            cseq=cseq,
            route=routes,
            contact=self.local_contact if contact else None,
            headers=headers,
            body=body,
            content_type=content_type,
        )

    def create_request(
        self,
        method: str,
        *,
        via: Via | str,
        headers: Iterable[tuple[str, object]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """A new request inside the dialog with the next local CSeq (BYE, INFO, INVITE,
        UPDATE, OPTIONS, REFER ...). Target refresh requests carry our Contact."""
        if method in ("ACK", "CANCEL"):
            raise LocalProtocolError(f"{method} reuses a CSeq: use create_ack / build_cancel")
        if self.terminated:
            raise LocalProtocolError("the dialog is over")
        if method == "INVITE":
            if self.invite_out is not None or self.invite_in is not None:
                raise LocalProtocolError("an INVITE is already in progress on this dialog")
            if self.early:
                raise LocalProtocolError("no re-INVITE in an early dialog (use UPDATE)")
        self.local_cseq = (self.local_cseq or 0) + 1
        if self.local_cseq > 2**32 - 1:
            raise LocalProtocolError("CSeq space exhausted")
        request = self._build(
            method, self.local_cseq, via, headers, body, content_type, method in TARGET_REFRESH
        )
        if method == "INVITE":
            self.invite_out = _Pending(self.local_cseq)
        return request

    def create_ack(
        self,
        cseq: int,
        *,
        via: Via | str,
        headers: Iterable[tuple[str, object]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """The ACK for a 2xx to our INVITE with CSeq `cseq` (RFC 3261 13.2.2.4): its own
        transaction, same CSeq number, sent along the route set to the remote target.
        Pass the INVITE's Authorization/Proxy-Authorization in `headers` if it had any."""
        return self._build("ACK", cseq, via, headers, body, content_type, False)

    def create_prack(self, response: Response, *, via: Via | str) -> Request:
        """PRACK for a reliable provisional response (RFC 3262 7.2: RAck = RSeq, CSeq)."""
        rseq = (response.headers.get("rseq") or "").strip()
        if not rseq.isdigit():
            raise RemoteProtocolError(400, "reliable provisional response without RSeq")
        cseq = response.cseq
        return self.create_request(
            "PRACK", via=via, headers=[("RAck", f"{int(rseq)} {cseq.number} {cseq.method}")]
        )

    def glare_delay(self) -> float:
        """How long to wait before retrying a re-INVITE that got 491 (RFC 3261 14.1)."""
        if self.role is Role.UAC:  # we chose the Call-ID
            return self._rng.uniform(2.1, 4.0)
        return self._rng.uniform(0.0, 2.0)

    # -- responses to our requests --------------------------------------------------------
    def on_response(self, response: Response) -> None:
        """Update the dialog from a response to a request we sent inside it (or to the
        INVITE that created it): confirmation, target refresh, termination."""
        method = response.cseq.method
        status = response.status
        if method == "INVITE":
            if status >= 200 and self.invite_out and self.invite_out.cseq == response.cseq.number:
                self.invite_out = None
            if 200 <= status < 300:
                if self.early:
                    # 13.2.2.4: the 2xx confirms the dialog and recomputes its route set.
                    self.state = DialogState.CONFIRMED
                    self.route_set = list(reversed(response.record_route))
                target = _target(response)
                if target is not None:
                    self.remote_target = target
            elif status < 200:
                target = _target(response)
                if self.early and target is not None:
                    self.remote_target = target
            elif self.early:
                self.state = DialogState.TERMINATED
        elif method in TARGET_REFRESH and 200 <= status < 300:
            target = _target(response)
            if target is not None:
                self.remote_target = target
        if method == "BYE" and status >= 200:
            self.state = DialogState.TERMINATED
        elif status in (408, 481) and method != "BYE":
            # 12.2.1.2: the peer has lost the dialog (or cannot be reached).
            self.state = DialogState.TERMINATED

    def reliable_provisional(self, response: Response) -> bool:
        """RFC 3262 4: should this reliable 1xx be processed and PRACKed? Only the first, or
        the one whose RSeq is one higher than the last; repeats and gaps are dropped."""
        rseq_text = (response.headers.get("rseq") or "").strip()
        if not rseq_text.isdigit():
            return False
        rseq = int(rseq_text)
        if self.remote_rseq is None or rseq == self.remote_rseq + 1:
            self.remote_rseq = rseq
            return True
        return False

    # -- requests we receive --------------------------------------------------------------
    def on_request(self, request: Request) -> None:
        """Check and apply a request received inside the dialog (RFC 3261 12.2.2, 14.2).

        Raises RemoteProtocolError with the status to answer: 481 after the dialog ended,
        500 for a CSeq lower than the last one, 491 for an INVITE while ours is pending,
        500 (with a Retry-After header) for an INVITE while theirs is unanswered.
        """
        method = request.method
        if method == "ACK":
            if self.awaiting_ack == request.cseq.number:
                self.awaiting_ack = None
            return  # same CSeq as their INVITE: no order check
        if method == "CANCEL":
            return  # CANCEL belongs to the transaction layer
        if self.terminated:
            raise RemoteProtocolError(481, "Call/Transaction Does Not Exist")
        number = request.cseq.number
        if self.remote_cseq is not None and number < self.remote_cseq:
            raise RemoteProtocolError(500, "CSeq out of order")
        self.remote_cseq = number
        if method == "INVITE":
            if self.invite_in is not None:
                retry = str(self._rng.randint(0, 10))
                raise RemoteProtocolError(
                    500, "Server Internal Error", headers=[("Retry-After", retry)]
                )
            if self.invite_out is not None:
                raise RemoteProtocolError(491, "Request Pending")
            self.invite_in = _Pending(number)
        if method in TARGET_REFRESH:
            target = _target(request)
            if target is not None:
                self.remote_target = target
        if method == "BYE":
            self.state = DialogState.TERMINATED

    def create_response(
        self,
        request: Request,
        status: int,
        reason: str | None = None,
        *,
        headers: Iterable[tuple[str, object]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Response:
        """A response to `request` from this dialog: our To tag; our Contact on 1xx/2xx to
        INVITE and 2xx to other target refreshes; Record-Route copied on the responses to
        the dialog-creating request (12.1.1). Updates the INVITE and confirmation state."""
        extra: list[tuple[str, object]] = []
        method = request.method
        creating = (
            self.role is Role.UAS
            and request.to.tag is None
            and request.cseq.number == self.initial_cseq
        )
        if creating and 100 < status < 300:
            extra += [("Record-Route", rr) for rr in request.headers.values("record-route")]
        wants_contact = (method == "INVITE" and 100 < status < 300) or (
            method in TARGET_REFRESH and 200 <= status < 300
        )
        if (
            wants_contact
            and self.local_contact is not None
            and "contact" not in {str(n).lower() for n, _ in headers}
        ):
            extra.append(("Contact", self.local_contact))
        response = make_response(
            request,
            status,
            reason,
            to_tag=self.local_tag if status != 100 else None,
            headers=[*extra, *headers],
            body=body,
            content_type=content_type,
        )
        if method == "INVITE" and status >= 200:
            if self.invite_in is not None and self.invite_in.cseq == request.cseq.number:
                self.invite_in = None
            if status < 300:
                self.awaiting_ack = request.cseq.number
                if self.early:
                    self.state = DialogState.CONFIRMED
            elif creating:
                self.state = DialogState.TERMINATED
        return response

    def next_rseq(self) -> int:
        """The RSeq for our next reliable provisional response (RFC 3262 3)."""
        self.local_rseq += 1
        return self.local_rseq


class Dialogs:
    """The UA's dialogs by id, with the lookups incoming messages need."""

    def __init__(self) -> None:
        self._by_id: dict[DialogId, Dialog] = {}

    def add(self, dialog: Dialog) -> Dialog:
        self._by_id[dialog.id] = dialog
        return dialog

    def remove(self, dialog: Dialog) -> None:
        self._by_id.pop(dialog.id, None)

    def get(self, dialog_id: DialogId) -> Dialog | None:
        return self._by_id.get(dialog_id)

    def for_request(self, request: Request) -> Dialog | None:
        """The dialog of an incoming request with a To tag, if we know it."""
        if request.to.tag is None:
            return None
        return self._by_id.get(DialogId.of_request(request))

    def for_response(self, response: Response) -> Dialog | None:
        return self._by_id.get(DialogId.of_response(response))

    def of_call(self, call_id: str, local_tag: str) -> list[Dialog]:
        """Every dialog (early ones from forking included) of one INVITE of ours."""
        return [
            d for d in self._by_id.values() if d.call_id == call_id and d.local_tag == local_tag
        ]

    def purge(self) -> list[Dialog]:
        """Drop and return the terminated dialogs."""
        gone = [d for d in self._by_id.values() if d.terminated]
        for d in gone:
            del self._by_id[d.id]
        return gone

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Dialog]:
        return iter(list(self._by_id.values()))
