"""SDP (RFC 8866) and the offer/answer model (RFC 3264) for one audio stream.

`SessionDescription.parse` reads any SDP we are likely to meet and keeps what it does not
interpret, so `to_bytes()` gives an equivalent description back. `answer()` answers an offer
with the best codec from our preference list (port 0 for video and everything else);
`build_offer()` and `process_answer()` do the other side. A failed negotiation raises
SdpNegotiationError, which carries status 488 for the user agent to send.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from porch.sip.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_CODECS",
    "DIRECTIONS",
    "AudioSession",
    "Codec",
    "Connection",
    "Media",
    "Origin",
    "SdpError",
    "SdpNegotiationError",
    "SessionDescription",
    "answer",
    "build_offer",
    "process_answer",
]

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
DEFAULT_CODECS = ("G722", "PCMU", "PCMA")

# Static payload types (RFC 3551 table 4) we may meet without an rtpmap line.
STATIC_PAYLOADS: dict[str, tuple[str, int, int]] = {
    "0": ("PCMU", 8000, 1),
    "3": ("GSM", 8000, 1),
    "4": ("G723", 8000, 1),
    "5": ("DVI4", 8000, 1),
    "6": ("DVI4", 16000, 1),
    "7": ("LPC", 8000, 1),
    "8": ("PCMA", 8000, 1),
    "9": ("G722", 8000, 1),
    "10": ("L16", 44100, 2),
    "11": ("L16", 44100, 1),
    "12": ("QCELP", 8000, 1),
    "13": ("CN", 8000, 1),
    "14": ("MPA", 90000, 1),
    "15": ("G728", 8000, 1),
    "18": ("G729", 8000, 1),
    "26": ("JPEG", 90000, 1),
    "31": ("H261", 90000, 1),
    "32": ("MPV", 90000, 1),
    "34": ("H263", 90000, 1),
}

# The codecs porch can send and receive: name -> (static payload type, RTP clock rate).
# G.722 samples at 16 kHz but its RTP clock is 8000 by a historical mistake (RFC 3551 4.5.2).
SUPPORTED_CODECS: dict[str, tuple[int, int]] = {
    "PCMU": (0, 8000),
    "PCMA": (8, 8000),
    "G722": (9, 8000),
}

_RTP_PROTOS = ("RTP/AVP", "RTP/AVPF")


class SdpError(RemoteProtocolError):
    """The SDP body cannot be parsed (the UA answers 400)."""

    def __init__(self, reason: str) -> None:
        super().__init__(400, f"bad SDP: {reason}")


class SdpNegotiationError(RemoteProtocolError):
    """Offer and answer have nothing in common: the UA answers 488 Not Acceptable Here."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            488,
            "Not Acceptable Here",
            headers=[("Warning", f'305 porch "{reason}"')],
        )
        self.detail = reason


@dataclass(slots=True)
class Connection:
    """`c=IN IP4 192.0.2.1`; the address may carry /ttl or /count for multicast."""

    address: str
    addrtype: str = "IP4"
    nettype: str = "IN"

    @property
    def host(self) -> str:
        return self.address.split("/", 1)[0]

    @property
    def is_null(self) -> bool:
        """0.0.0.0 (or ::), the RFC 2543 way of putting a call on hold."""
        return self.host in ("0.0.0.0", "::", "0:0:0:0:0:0:0:0")

    @classmethod
    def for_host(cls, host: str) -> Connection:
        return cls(host, "IP6" if ":" in host else "IP4")

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


@dataclass(slots=True)
class Origin:
    """`o=username sess-id sess-version IN IP4 address`."""

    username: str
    session_id: str
    session_version: int
    address: str
    addrtype: str = "IP4"
    nettype: str = "IN"

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


class Codec(NamedTuple):
    """An RTP payload format as negotiated: the payload type and what it carries."""

    name: str
    rate: int
    pt: int
    channels: int = 1
    fmtp: str | None = None

    @property
    def rtpmap(self) -> str:
        text = f"{self.name}/{self.rate}"
        return text if self.channels == 1 else f"{text}/{self.channels}"

    def same_format(self, name: str, rate: int) -> bool:
        return self.name.upper() == name.upper() and self.rate == rate


@dataclass(slots=True)
class Media:
    """One m= section: the media line, its c=/b= lines and attributes, in order."""

    kind: str
    port: int
    proto: str
    formats: list[str]
    port_count: int | None = None
    connection: Connection | None = None
    bandwidths: list[str] = field(default_factory=list)
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    other: list[tuple[str, str]] = field(default_factory=list)  # i= and k= lines

    def attribute(self, name: str) -> str | None:
        """The value of the first a=name attribute ('' for a flag), None if absent."""
        for key, value in self.attributes:
            if key == name:
                return "" if value is None else value
        return None

    def attribute_values(self, name: str) -> list[str]:
        return [value or "" for key, value in self.attributes if key == name]

    @property
    def rtpmaps(self) -> dict[str, tuple[str, int, int]]:
        """Payload type -> (encoding name, clock rate, channels) from a=rtpmap lines."""
        maps: dict[str, tuple[str, int, int]] = {}
        for key, value in self.attributes:
            if key == "rtpmap" and value:
                pt, _, spec = value.partition(" ")
                parts = spec.strip().split("/")
                if len(parts) >= 2 and _digits(parts[1]):
                    channels = int(parts[2]) if len(parts) > 2 and _digits(parts[2]) else 1
                    maps[pt] = (parts[0], int(parts[1]), channels)
        return maps

    @property
    def fmtps(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in self.attributes:
            if key == "fmtp" and value:
                pt, _, params = value.partition(" ")
                out[pt] = params.strip()
        return out

    def codecs(self) -> list[Codec]:
        """The offered payload formats in order (static types filled in), unknown ones left out."""
        maps: dict[str, str] = {}
        fmtps: dict[str, str] = {}
        for key, value in self.attributes:
            if key == "rtpmap" and value:
                pt, _, spec = value.partition(" ")
                maps[pt] = spec
            elif key == "fmtp" and value:
                pt, _, params = value.partition(" ")
                fmtps[pt] = params.strip()
        out = []
        for pt in self.formats:
            if not pt.isdigit():
                continue
            spec = maps.get(pt)
            try:
                if spec is not None:
                    parts = spec.strip().split("/")
                    channels = int(parts[2]) if len(parts) > 2 else 1
                    out.append(Codec(parts[0], int(parts[1]), int(pt), channels, fmtps.get(pt)))
                elif pt in STATIC_PAYLOADS:
                    name, rate, channels = STATIC_PAYLOADS[pt]
                    out.append(Codec(name, rate, int(pt), channels, fmtps.get(pt)))
            except (ValueError, IndexError):
                continue  # a format we cannot read is one we do not use
        return out

    @property
    def direction(self) -> str | None:
        """The direction attribute of this section, None if it has none."""
        found = None
        for key, _ in self.attributes:
            if key in DIRECTIONS:
                found = key
        return found

    @property
    def ptime(self) -> int | None:
        return _int_attr(self.attribute("ptime"))

    @property
    def maxptime(self) -> int | None:
        return _int_attr(self.attribute("maxptime"))

    @property
    def rtcp(self) -> tuple[int, str | None] | None:
        """a=rtcp (RFC 3605): (port, address or None)."""
        value = self.attribute("rtcp")
        if not value:
            return None
        parts = value.split()
        if not _digits(parts[0]):
            return None
        address = parts[3] if len(parts) >= 4 else None
        return int(parts[0]), address


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) < 10


def _int_attr(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(float(value))
    except (ValueError, OverflowError):
        return None


@dataclass(slots=True)
class SessionDescription:
    """A whole SDP body. `other` keeps session-level lines we do not model (i u e p r z k)."""

    origin: Origin
    name: str = "-"
    connection: Connection | None = None
    times: list[str] = field(default_factory=lambda: ["0 0"])
    bandwidths: list[str] = field(default_factory=list)
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    media: list[Media] = field(default_factory=list)
    other: list[tuple[str, str]] = field(default_factory=list)
    version: int = 0

    # -- reading ------------------------------------------------------------------------
    @classmethod
    def parse(cls, data: bytes | str) -> SessionDescription:
        text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
        lines = text.split("\r\n")
        breaks = len(lines) - 1
        if text.count("\n") != breaks or text.count("\r") != breaks:
            # LF-only or mixed line ends are tolerated; a CR anywhere else is not.
            lines = text.replace("\r\n", "\n").split("\n")
            if any("\r" in line for line in lines):
                raise SdpError("bare CR")
        if not lines or lines[0] != "v=0":
            raise SdpError("first line must be v=0")
        sdp = cls.__new__(cls)
        sdp.version = 0
        sdp.origin = None  # type: ignore[assignment]
        sdp.name = "-"
        sdp.connection = None
        sdp.times = []
        sdp.bandwidths = []
        sdp.attributes = []
        sdp.media = []
        sdp.other = []
        media: Media | None = None
        attributes = sdp.attributes
        for line in lines[1:]:
            if line[1:2] != "=":
                if not line:
                    continue
                raise SdpError(f"malformed line {line[:40]!r}")
            kind = line[0]
            if kind == "a":
                name, colon, rest = line.partition(":")
                attributes.append((name[2:], rest if colon else None))
                continue
            value = line[2:]
            if kind == "m":
                media = _parse_media(value)
                sdp.media.append(media)
                attributes = media.attributes
            elif kind == "c":
                conn = _parse_connection(value)
                if media is None:
                    sdp.connection = conn
                else:
                    media.connection = conn
            elif kind == "b":
                (sdp.bandwidths if media is None else media.bandwidths).append(value)
            elif media is not None:
                if kind not in "ik":
                    raise SdpError(f"{kind}= line inside a media section")
                media.other.append((kind, value))
            elif kind == "o":
                sdp.origin = _parse_origin(value)
            elif kind == "s":
                sdp.name = value
            elif kind == "t":
                sdp.times.append(value)
            elif kind in "iuepzrk":
                sdp.other.append((kind, value))
            elif kind == "v":
                raise SdpError("second v= line")
            else:
                raise SdpError(f"unknown line type {kind!r}")
        if sdp.origin is None:
            raise SdpError("missing o= line")
        if not sdp.times:
            sdp.times = ["0 0"]
        return sdp

    def direction_of(self, media: Media) -> str:
        """The effective direction of `media`: its own attribute, else the session's."""
        direction = media.direction
        if direction is None:
            for key, _ in self.attributes:
                if key in DIRECTIONS:
                    direction = key
        return direction or "sendrecv"

    def connection_of(self, media: Media) -> Connection | None:
        return media.connection or self.connection

    # -- writing ------------------------------------------------------------------------
    def __str__(self) -> str:
        out = ["v=0", f"o={self.origin}", f"s={self.name or '-'}"]
        other = self.other
        out += [f"{k}={v}" for k, v in other if k in "iuep"]
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out += [f"b={b}" for b in self.bandwidths]
        for t in self.times or ["0 0"]:
            out.append(f"t={t}")
        out += [f"{k}={v}" for k, v in other if k in "rzk"]
        out += [f"a={k}" if v is None else f"a={k}:{v}" for k, v in self.attributes]
        for m in self.media:
            port = f"{m.port}/{m.port_count}" if m.port_count is not None else str(m.port)
            out.append(f"m={m.kind} {port} {m.proto} {' '.join(m.formats)}".rstrip())
            out += [f"{k}={v}" for k, v in m.other if k == "i"]
            if m.connection is not None:
                out.append(f"c={m.connection}")
            out += [f"b={b}" for b in m.bandwidths]
            out += [f"{k}={v}" for k, v in m.other if k == "k"]
            out += [f"a={k}" if v is None else f"a={k}:{v}" for k, v in m.attributes]
        out.append("")
        return "\r\n".join(out)

    def to_bytes(self) -> bytes:
        return str(self).encode("utf-8", "surrogateescape")

    def __bytes__(self) -> bytes:
        return self.to_bytes()


def _parse_media(value: str) -> Media:
    parts = value.split(" ")
    if len(parts) < 3 or "" in parts:
        raise SdpError(f"bad m= line {value[:60]!r}")
    port_text, _, count = parts[1].partition("/")
    if not _digits(port_text) or int(port_text) > 65535:
        raise SdpError(f"bad port in m= line {value[:60]!r}")
    if count and not _digits(count):
        raise SdpError(f"bad port count in m= line {value[:60]!r}")
    media = Media.__new__(Media)
    media.kind = parts[0]
    media.port = int(port_text)
    media.port_count = int(count) if count else None
    media.proto = parts[2]
    media.formats = parts[3:]
    media.connection = None
    media.bandwidths = []
    media.attributes = []
    media.other = []
    return media


def _parse_connection(value: str) -> Connection:
    parts = value.split(" ")
    if len(parts) != 3 or "" in parts:
        raise SdpError(f"bad c= line {value[:60]!r}")
    return Connection(parts[2], parts[1], parts[0])


def _parse_origin(value: str) -> Origin:
    parts = value.split(" ")
    version = parts[2] if len(parts) == 6 else ""
    if "" in parts or not version.isdigit() or not version.isascii() or len(version) > 20:
        raise SdpError(f"bad o= line {value[:60]!r}")
    return Origin(parts[0], parts[1], int(parts[2]), parts[5], parts[4], parts[3])


# ---------------------------------------------------------------------------------------
# Offer / answer for the audio stream
# ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class AudioSession:
    """What offer/answer settled for the audio stream, from our point of view.

    `codec` and `telephone_event` carry the payload types to *send* with; `remote_*` is where
    to send RTP and RTCP; `direction` is ours ('sendrecv', 'recvonly', ...); `hold` is True
    when the peer asked not to receive media (sendonly, inactive or c=0.0.0.0).
    """

    remote_host: str
    remote_port: int
    remote_rtcp_host: str
    remote_rtcp_port: int
    codec: Codec
    telephone_event: Codec | None
    direction: str
    ptime: int
    hold: bool
    media_index: int

    @property
    def send(self) -> bool:
        return self.direction in ("sendrecv", "sendonly")

    @property
    def receive(self) -> bool:
        return self.direction in ("sendrecv", "recvonly")


_REVERSE = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}


def _combine(ours: str, theirs_reversed: str) -> str:
    """Our direction limited by what the peer allows (both in our point of view)."""
    send = ours in ("sendrecv", "sendonly") and theirs_reversed in ("sendrecv", "sendonly")
    recv = ours in ("sendrecv", "recvonly") and theirs_reversed in ("sendrecv", "recvonly")
    return {
        (True, True): "sendrecv",
        (True, False): "sendonly",
        (False, True): "recvonly",
        (False, False): "inactive",
    }[(send, recv)]


def _pick(offered: list[Codec], preferences: tuple[str, ...] | list[str]) -> Codec | None:
    for name in preferences:
        name = name.upper()
        if name not in SUPPORTED_CODECS:
            continue
        rate = SUPPORTED_CODECS[name][1]
        for codec in offered:
            # A few phones write G722/16000; it is still G.722.
            if codec.name.upper() == name and (
                codec.rate == rate or (name == "G722" and codec.rate == 16000)
            ):
                return codec
    return None


def _telephone_event(offered: list[Codec], rate: int) -> Codec | None:
    for codec in offered:
        if codec.name.lower() == "telephone-event" and codec.rate == rate:
            return codec
    return None


def _remote_endpoints(sdp: SessionDescription, media: Media) -> tuple[str, str, int, bool]:
    conn = sdp.connection_of(media)
    if conn is None:
        raise SdpError("no c= line for the audio stream")
    rtcp = media.rtcp
    if rtcp is not None:
        rtcp_host, rtcp_port = rtcp[1] or conn.host, rtcp[0]
    else:
        rtcp_host, rtcp_port = conn.host, media.port + 1
    return conn.host, rtcp_host, rtcp_port, conn.is_null


def _audio_media(
    port: int,
    codec: Codec,
    event: Codec | None,
    ptime: int,
    direction: str,
    rtcp_port: int | None,
) -> Media:
    formats = [str(codec.pt)]
    attributes: list[tuple[str, str | None]] = [("rtpmap", f"{codec.pt} {codec.rtpmap}")]
    if codec.fmtp:
        attributes.append(("fmtp", f"{codec.pt} {codec.fmtp}"))
    if event is not None:
        formats.append(str(event.pt))
        attributes.append(("rtpmap", f"{event.pt} {event.rtpmap}"))
        attributes.append(("fmtp", f"{event.pt} {event.fmtp or '0-16'}"))
    attributes.append(("ptime", str(ptime)))
    if rtcp_port is not None:
        attributes.append(("rtcp", str(rtcp_port)))
    attributes.append((direction, None))
    return Media("audio", port, "RTP/AVP", formats, attributes=attributes)


def answer(
    offer: SessionDescription,
    *,
    host: str,
    port: int,
    session_id: str | int,
    session_version: int,
    codecs: tuple[str, ...] | list[str] = DEFAULT_CODECS,
    ptime: int = 20,
    direction: str = "sendrecv",
    username: str = "porch",
    session_name: str = "porch",
    rtcp_port: int | None = None,
) -> tuple[SessionDescription, AudioSession]:
    """Answer `offer` (RFC 3264 section 6): the first usable audio stream gets our best codec
    and telephone-event if offered; every other stream is declined with port 0.

    Raises SdpNegotiationError (488) when no audio stream has a codec in common.
    """
    if direction not in DIRECTIONS:
        raise LocalProtocolError(f"bad direction {direction!r}")
    answer_media: list[Media] = []
    session: AudioSession | None = None
    for index, media in enumerate(offer.media):
        if (
            session is None
            and media.kind == "audio"
            and media.port != 0
            and media.proto.upper() in _RTP_PROTOS
        ):
            offered = media.codecs()
            codec = _pick(offered, codecs)
            if codec is not None:
                event = _telephone_event(offered, codec.rate)
                offered_dir = offer.direction_of(media)
                remote_host, rtcp_host, rtcp_remote_port, null = _remote_endpoints(offer, media)
                theirs = _REVERSE[offered_dir]
                if null and theirs in ("sendrecv", "sendonly"):
                    theirs = "recvonly" if theirs == "sendrecv" else "inactive"
                ours = _combine(direction, theirs)
                session = AudioSession(
                    remote_host=remote_host,
                    remote_port=media.port,
                    remote_rtcp_host=rtcp_host,
                    remote_rtcp_port=rtcp_remote_port,
                    codec=codec,
                    telephone_event=event,
                    direction=ours,
                    ptime=media.ptime or 20,
                    hold=null or offered_dir in ("sendonly", "inactive"),
                    media_index=index,
                )
                answer_media.append(_audio_media(port, codec, event, ptime, ours, rtcp_port))
                continue
        answer_media.append(Media(media.kind, 0, media.proto, list(media.formats) or ["0"]))
    if session is None:
        raise SdpNegotiationError("Incompatible media format")
    sdp = SessionDescription(
        origin=Origin(username, str(session_id), session_version, host, _addrtype(host)),
        name=session_name,
        connection=Connection.for_host(host),
        media=answer_media,
    )
    return sdp, session


def _addrtype(host: str) -> str:
    return "IP6" if ":" in host else "IP4"


def build_offer(
    *,
    host: str,
    port: int,
    session_id: str | int,
    session_version: int,
    codecs: tuple[str, ...] | list[str] = DEFAULT_CODECS,
    ptime: int = 20,
    telephone_event_pt: int | None = 101,
    direction: str = "sendrecv",
    username: str = "porch",
    session_name: str = "porch",
    rtcp_port: int | None = None,
) -> SessionDescription:
    """Our offer: the codecs in preference order, telephone-event/8000 0-16, ptime, direction."""
    if direction not in DIRECTIONS:
        raise LocalProtocolError(f"bad direction {direction!r}")
    formats: list[str] = []
    attributes: list[tuple[str, str | None]] = []
    for name in codecs:
        spec = SUPPORTED_CODECS.get(name.upper())
        if spec is None:
            raise LocalProtocolError(f"unsupported codec {name!r}")
        pt, rate = spec
        formats.append(str(pt))
        attributes.append(("rtpmap", f"{pt} {name.upper()}/{rate}"))
    if not formats:
        raise LocalProtocolError("no codecs to offer")
    if telephone_event_pt is not None:
        formats.append(str(telephone_event_pt))
        attributes.append(("rtpmap", f"{telephone_event_pt} telephone-event/8000"))
        attributes.append(("fmtp", f"{telephone_event_pt} 0-16"))
    attributes.append(("ptime", str(ptime)))
    if rtcp_port is not None:
        attributes.append(("rtcp", str(rtcp_port)))
    attributes.append((direction, None))
    return SessionDescription(
        origin=Origin(username, str(session_id), session_version, host, _addrtype(host)),
        name=session_name,
        connection=Connection.for_host(host),
        media=[Media("audio", port, "RTP/AVP", formats, attributes=attributes)],
    )


def process_answer(offer: SessionDescription, answer_sdp: SessionDescription) -> AudioSession:
    """Read the answer to our `offer`: which codec to send with, where, in which direction.

    Raises SdpError if the answer does not mirror the offer's m-lines, SdpNegotiationError if
    the audio stream was refused or answered with nothing we offered.
    """
    if len(answer_sdp.media) != len(offer.media):
        raise SdpError("answer has a different number of m-lines than the offer")
    for index, (ours, theirs) in enumerate(zip(offer.media, answer_sdp.media, strict=True)):
        if ours.kind != "audio" or ours.port == 0:
            continue
        if theirs.port == 0:
            raise SdpNegotiationError("audio stream refused")
        offered = ours.codecs()
        chosen: Codec | None = None
        for codec in theirs.codecs():
            if any(o.same_format(codec.name, codec.rate) for o in offered) and (
                codec.name.upper() in SUPPORTED_CODECS
            ):
                chosen = codec
                break
        if chosen is None:
            raise SdpNegotiationError("Incompatible media format")
        event = _telephone_event(theirs.codecs(), chosen.rate)
        if event is not None and _telephone_event(offered, chosen.rate) is None:
            event = None
        remote_host, rtcp_host, rtcp_port, null = _remote_endpoints(answer_sdp, theirs)
        their_dir = answer_sdp.direction_of(theirs)
        theirs_rev = _REVERSE[their_dir]
        if null and theirs_rev in ("sendrecv", "sendonly"):
            theirs_rev = "recvonly" if theirs_rev == "sendrecv" else "inactive"
        direction = _combine(offer.direction_of(ours), theirs_rev)
        return AudioSession(
            remote_host=remote_host,
            remote_port=theirs.port,
            remote_rtcp_host=rtcp_host,
            remote_rtcp_port=rtcp_port,
            codec=chosen,
            telephone_event=event,
            direction=direction,
            ptime=theirs.ptime or 20,
            hold=null or their_dir in ("sendonly", "inactive"),
            media_index=index,
        )
    raise LocalProtocolError("the offer has no audio stream")
