"""Exceptions of the SIP core.

Bad input from the network raises exactly one type, `RemoteProtocolError`, and it carries
the status a UAS should answer, so the user agent can turn any parse or validation failure
into a response without guessing. Our own misuse of the API raises `LocalProtocolError`.
"""

from __future__ import annotations

from typing import Any


class SipError(Exception):
    """Base of every error raised by porch.sip."""


class RemoteProtocolError(SipError):
    """The peer sent something we cannot accept.

    `status` is what a UAS answers (400, 413, 416, 420, 505, ...); for a bad response it is
    only informative (responses are dropped). `headers` are extra header fields that belong
    in that answer (Unsupported for 420, Accept for 415). `message` is the request or response
    as far as it could be parsed, when the header section was readable, so that a 400 can
    still be sent for, say, a wrong Content-Length.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        *,
        headers: list[tuple[str, str]] | None = None,
        message: Any = None,
    ) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers: list[tuple[str, str]] = list(headers or ())
        self.message = message


class LocalProtocolError(SipError):
    """Our own code asked for something the protocol does not allow (a bug, not input)."""
