"""SIP session timers (RFC 4028) when the peer asks for them, sans-IO.

porch never asks for a session timer itself, but it honours one: a caller's INVITE with
Session-Expires is answered with the interval and who refreshes; a callee's 2xx with
Session-Expires tells porch whether it must refresh. `SessionTimer` then says when: the
refresher sends a refresh (UPDATE, or a re-INVITE) at half the interval; the other side
ends the call with BYE when no refresh came by interval - min(32, interval/3).

The refresher is named from the point of view of each transaction ("uac" is whoever sent
that INVITE or UPDATE), so the timer stores only whether *we* refresh.
"""

from __future__ import annotations

from dataclasses import dataclass

from porch.sip.errors import RemoteProtocolError
from porch.sip.message import Request, Response

__all__ = [
    "MIN_SE",
    "SessionExpires",
    "SessionTimer",
    "answer_headers",
    "read_session_expires",
    "refresh_headers",
    "timer_from_response",
]

MIN_SE = 90  # RFC 4028 4: the smallest interval anyone may ask for


@dataclass(frozen=True)
class SessionExpires:
    """`Session-Expires: 1800;refresher=uac`."""

    seconds: int
    refresher: str | None = None  # "uac", "uas" or None (not said)

    @classmethod
    def parse(cls, text: str) -> SessionExpires:
        head, *params = [p.strip() for p in text.split(";")]
        if not head.isdigit() or len(head) > 10:
            raise RemoteProtocolError(400, f"bad Session-Expires: {text[:40]!r}")
        refresher = None
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "refresher":
                refresher = value.strip().lower()
                if refresher not in ("uac", "uas"):
                    raise RemoteProtocolError(400, f"bad refresher: {value[:20]!r}")
        return cls(int(head), refresher)

    def __str__(self) -> str:
        return f"{self.seconds}" + (f";refresher={self.refresher}" if self.refresher else "")


def read_session_expires(message: Request | Response) -> SessionExpires | None:
    """The Session-Expires of `message` (compact form `x` included), None if absent."""
    value = message.headers.get("session-expires")
    return None if value is None else SessionExpires.parse(value)


def _min_se(message: Request) -> int:
    value = (message.headers.get("min-se") or "").split(";")[0].strip()
    return int(value) if value.isdigit() and len(value) <= 10 else MIN_SE


@dataclass
class SessionTimer:
    """The running timer of one dialog: refresh at half time, or watch for expiry."""

    interval: int
    we_refresh: bool
    last: float  # when the session was last refreshed (or established)

    @property
    def deadline(self) -> float:
        if self.we_refresh:
            return self.last + self.interval / 2
        return self.last + self.interval - min(32.0, self.interval / 3)

    def due(self, now: float) -> str | None:
        """What is due: "refresh" (send one now), "expired" (send BYE) or None."""
        if now < self.deadline:
            return None
        return "refresh" if self.we_refresh else "expired"

    def refreshed(self, now: float) -> None:
        self.last = now


def answer_headers(
    request: Request, now: float, *, min_se: int = MIN_SE
) -> tuple[list[tuple[str, str]], SessionTimer | None]:
    """What our 2xx to an INVITE/UPDATE carries for RFC 4028, and the timer that follows.

    No Session-Expires in the request: no timer. Too short while the peer supports timers:
    RemoteProtocolError(422) with our Min-SE; a proxy inserted it for a peer that does not:
    we stretch it to our minimum and refresh ourselves.
    """
    se = read_session_expires(request)
    if se is None:
        return [], None
    supported = "timer" in request.supported
    seconds = se.seconds
    if seconds < min_se:
        if supported:
            raise RemoteProtocolError(
                422, "Session Interval Too Small", headers=[("Min-SE", str(min_se))]
            )
        seconds = min_se
    seconds = max(seconds, _min_se(request))
    refresher = (se.refresher or "uac") if supported else "uas"
    headers = [("Session-Expires", f"{seconds};refresher={refresher}")]
    if supported:
        headers.append(("Require", "timer"))
    return headers, SessionTimer(seconds, refresher == "uas", now)


def timer_from_response(response: Response, now: float) -> SessionTimer | None:
    """The timer a 2xx to our INVITE/UPDATE sets up (we were that transaction's UAC)."""
    se = read_session_expires(response)
    if se is None:
        return None
    return SessionTimer(max(se.seconds, 1), se.refresher == "uac", now)


def refresh_headers(timer: SessionTimer) -> list[tuple[str, str]]:
    """Session-Expires for a refresh we send: we are its UAC, and we keep refreshing."""
    refresher = "uac" if timer.we_refresh else "uas"
    return [("Session-Expires", f"{timer.interval};refresher={refresher}"), ("Supported", "timer")]
