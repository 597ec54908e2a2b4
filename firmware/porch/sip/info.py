"""What a SIP INFO inside a call asks for (SPEC 6), sans-IO.

Three bodies mean something to a door: a DTMF key as `application/dtmf-relay`
(`Signal=5\\r\\nDuration=160`, the SIP-phone convention) or as `application/dtmf` (the
bare key), and `text/plain` `unlock` (surrounding whitespace ignored). An empty INFO is a
harmless probe. Anything else is refused with the status the user agent sends: 415 with
an Accept list for other types, 400 for a body of the right type that makes no sense.
"""

from __future__ import annotations

from dataclasses import dataclass

from porch.sip.errors import RemoteProtocolError
from porch.sip.headers import MediaType

__all__ = ["ACCEPT", "Digit", "Empty", "Unlock", "parse_info"]

DTMF_RELAY = "application/dtmf-relay"
DTMF = "application/dtmf"
TEXT = "text/plain"
ACCEPT = (DTMF_RELAY, DTMF, TEXT)

# RFC 4733 event codes 10-15, which some phones send instead of the symbol.
_EVENT_SYMBOLS = {"10": "*", "11": "#", "12": "A", "13": "B", "14": "C", "15": "D"}
_SYMBOLS = frozenset("0123456789*#ABCD")


@dataclass(frozen=True)
class Digit:
    digit: str
    duration_ms: int | None = None


@dataclass(frozen=True)
class Unlock:
    pass


@dataclass(frozen=True)
class Empty:
    pass


Info = Digit | Unlock | Empty


def _symbol(text: str) -> str:
    value = text.strip().upper()
    value = _EVENT_SYMBOLS.get(value, value)
    if value not in _SYMBOLS:
        raise RemoteProtocolError(400, f"not a DTMF key: {text.strip()[:16]!r}")
    return value


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError(400, "INFO body is not UTF-8") from None


def parse_info(content_type: MediaType | None, body: bytes) -> Info:
    """Read an INFO body; RemoteProtocolError(415/400) when it is not one we act on."""
    if not body.strip():
        return Empty()
    mime = content_type.mime if content_type is not None else ""
    if mime == DTMF_RELAY:
        signal = None
        duration = None
        for line in _text(body).splitlines():
            name, sep, value = line.partition("=")
            if not sep:
                continue
            key = name.strip().lower()
            if key == "signal":
                signal = _symbol(value)
            elif key == "duration" and value.strip().isdigit() and len(value.strip()) <= 9:
                duration = int(value.strip())
        if signal is None:
            raise RemoteProtocolError(400, "dtmf-relay body without Signal=")
        return Digit(signal, duration)
    if mime == DTMF:
        return Digit(_symbol(_text(body)))
    if mime == TEXT:
        if _text(body).strip().lower() == "unlock":
            return Unlock()
        raise RemoteProtocolError(400, "unknown command (text/plain INFO understands 'unlock')")
    raise RemoteProtocolError(
        415,
        "Unsupported Media Type",
        headers=[("Accept", ", ".join(ACCEPT))],
    )
