"""SDP (RFC 8866) and the offer/answer model (RFC 3264) for one audio stream.

`SessionDescription.parse` reads any SDP we are likely to meet and keeps what it does not
interpret, so `to_bytes()` gives an equivalent description back. `answer()` answers an offer
with the best codec from our preference list (port 0 for video and everything else);
`build_offer()` and `process_answer()` do the other side. A failed negotiation raises
SdpNegotiationError, which carries status 488 for the user agent to send.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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


_new_codec = tuple.__new__  # Codec(...) minus the keyword handling, for the hot loop


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


_MISSING = object()
_DIRECTION_SET = frozenset(DIRECTIONS)


def _split_attribute(raw: str) -> tuple[str, str | None]:
    name, colon, value = raw.partition(":")
    return name, (value if colon else None)


class _Attributes:
    """a= lines, kept as raw 'name:value' text until someone asks for (name, value) pairs.

    Parsing an SDP body then costs one split per section; the pairs are built on first use
    of `attributes` (which may then be changed freely), and the lookups the negotiation needs
    (rtpmap, fmtp, direction, ptime, rtcp) read either form.
    """

    __slots__ = ("_pairs", "_raw")

    _raw: list[str] | None
    _pairs: list[tuple[str, str | None]] | None

    @property
    def attributes(self) -> list[tuple[str, str | None]]:
        pairs = self._pairs
        if pairs is None:
            pairs = self._pairs = [_split_attribute(r) for r in self._raw or ()]
            self._raw = None
        return pairs

    @attributes.setter
    def attributes(self, value: list[tuple[str, str | None]]) -> None:
        self._pairs = value
        self._raw = None

    def _attribute_items(self) -> list[tuple[str, str | None]]:
        return self.attributes if self._raw is None else [_split_attribute(r) for r in self._raw]

    def attribute(self, name: str) -> str | None:
        """The value of the first a=name attribute ('' for a flag), None if absent."""
        raw = self._raw
        if raw is not None:
            prefix = name + ":"
            for line in raw:
                if line == name:
                    return ""
                if line.startswith(prefix):
                    return line[len(prefix) :]
            return None
        for key, value in self.attributes:
            if key == name:
                return "" if value is None else value
        return None

    def attribute_values(self, name: str) -> list[str]:
        return [value or "" for key, value in self._attribute_items() if key == name]

    @property
    def direction(self) -> str | None:
        """The direction attribute of this section (the last if several), None if it has none.

        Searched from the end, where phones put it.
        """
        if self._raw is not None:
            for line in reversed(self._raw):
                if line in _DIRECTION_SET:
                    return line
            return None
        for key, _ in reversed(self.attributes):
            if key in _DIRECTION_SET:
                return key
        return None

    def _attribute_lines(self) -> list[str]:
        if self._raw is not None:
            return ["a=" + r for r in self._raw]
        return [f"a={k}" if v is None else f"a={k}:{v}" for k, v in self.attributes]


class Media(_Attributes):
    """One m= section: the media line, its c=/b= lines and attributes, in order."""

    __slots__ = (
        "bandwidths",
        "connection",
        "formats",
        "kind",
        "other",
        "port",
        "port_count",
        "proto",
    )

    def __init__(
        self,
        kind: str,
        port: int,
        proto: str,
        formats: list[str],
        port_count: int | None = None,
        connection: Connection | None = None,
        bandwidths: list[str] | None = None,
        attributes: list[tuple[str, str | None]] | None = None,
        other: list[tuple[str, str]] | None = None,
    ) -> None:
        self.kind = kind
        self.port = port
        self.proto = proto
        self.formats = formats
        self.port_count = port_count
        self.connection = connection
        self.bandwidths = bandwidths if bandwidths is not None else []
        self._pairs = attributes if attributes is not None else []
        self._raw = None
        self.other = other if other is not None else []  # i= and k= lines

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Media):
            return NotImplemented
        return (
            self.kind == other.kind
            and self.port == other.port
            and self.proto == other.proto
            and self.formats == other.formats
            and self.port_count == other.port_count
            and self.connection == other.connection
            and self.bandwidths == other.bandwidths
            and self._attribute_items() == other._attribute_items()
            and self.other == other.other
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Media({self.kind!r}, {self.port}, {self.proto!r}, {self.formats!r})"

    @property
    def rtpmaps(self) -> dict[str, tuple[str, int, int]]:
        """Payload type -> (encoding name, clock rate, channels) from a=rtpmap lines."""
        return {str(c.pt): (c.name, c.rate, c.channels) for c in self._read_rtpmaps()}

    @property
    def fmtps(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in self._attribute_items():
            if key == "fmtp" and value:
                pt, _, params = value.partition(" ")
                out[pt] = params.strip()
        return out

    def _read_rtpmaps(self) -> list[Codec]:
        out = []
        for key, value in self._attribute_items():
            if key == "rtpmap" and value:
                pt, _, spec = value.partition(" ")
                parts = spec.strip().split("/")
                try:
                    channels = int(parts[2]) if len(parts) > 2 else 1
                    out.append(Codec(parts[0], int(parts[1]), int(pt), channels))
                except (ValueError, IndexError):
                    continue
        return out

    def codecs(self) -> list[Codec]:
        """The offered payload formats in order (static types filled in), unknown ones left out."""
        maps: dict[str, tuple[bool, str, Codec | None]] = {}
        fmtps: dict[str, str] = {}
        raw = self._raw
        if raw is not None:
            cache = _FORMAT_LINES
            for line in raw:
                entry = cache.get(line)
                if entry is None:
                    entry = _format_line(line)
                    if len(line) <= 48:
                        if len(cache) >= _FORMAT_LINES_SIZE:
                            cache.clear()
                        cache[line] = entry
                kind = entry[0]
                if kind is None:
                    continue  # neither rtpmap nor fmtp
                if kind:
                    fmtps[entry[1]] = entry[2]  # type: ignore[assignment]
                else:
                    maps[entry[1]] = entry  # type: ignore[assignment]
        else:
            for key, value in self.attributes:
                if key == "rtpmap" and value:
                    entry = _rtpmap_entry(value)
                    maps[entry[1]] = entry  # type: ignore[assignment]
                elif key == "fmtp" and value:
                    pt, _, params = value.partition(" ")
                    fmtps[pt] = params.strip()
        out = []
        for pt in self.formats:
            entry = maps.get(pt)
            if entry is not None:
                codec = entry[2]
                if codec is None:
                    continue  # an rtpmap we cannot read is a format we do not use
            else:
                codec = _STATIC_CODECS.get(pt)
                if codec is None:
                    continue
            if fmtps:
                fmtp = fmtps.get(pt)
                if fmtp is not None:
                    codec = _new_codec(Codec, (codec[0], codec[1], codec[2], codec[3], fmtp))
            out.append(codec)
        return out

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
        if not parts or not _digits(parts[0]):  # 'a=rtcp: ' has no port at all
            return None
        address = parts[3] if len(parts) >= 4 else None
        return int(parts[0]), address

    def _lines(self) -> list[str]:
        port = f"{self.port}/{self.port_count}" if self.port_count is not None else str(self.port)
        out = [f"m={self.kind} {port} {self.proto} {' '.join(self.formats)}".rstrip()]
        out += [f"{k}={v}" for k, v in self.other if k == "i"]
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out += [f"b={b}" for b in self.bandwidths]
        out += [f"{k}={v}" for k, v in self.other if k == "k"]
        out += self._attribute_lines()
        return out


# a= lines as met (short ones) -> what codecs() reads from them:
# (False, payload type, Codec without fmtp, or None if unreadable) for rtpmap,
# (True, payload type, parameters) for fmtp and _OTHER_LINE for any other attribute (so that
# ptime, rtcp, sendrecv... cost one lookup too). Phones send the same few lines on every
# call; lines that change per call (ports, ssrc) fill it up slowly, and it is emptied when
# it holds _FORMAT_LINES_SIZE entries.
_FORMAT_LINES: dict[str, tuple[bool | None, str, Codec | str | None]] = {}
_FORMAT_LINES_SIZE = 512
_OTHER_LINE: tuple[bool | None, str, None] = (None, "", None)
_STATIC_CODECS = {
    pt: Codec(name, rate, int(pt), channels)
    for pt, (name, rate, channels) in STATIC_PAYLOADS.items()
}


def _format_line(line: str) -> tuple[bool | None, str, Codec | str | None]:
    """The _FORMAT_LINES entry of the a= line `line` (without 'a=')."""
    first = line[:1]
    if first == "r" and line.startswith("rtpmap:"):
        return _rtpmap_entry(line[7:])
    if first == "f" and line.startswith("fmtp:"):
        pt, _, params = line[5:].partition(" ")
        return True, pt, params.strip()
    return _OTHER_LINE


def _rtpmap_entry(value: str) -> tuple[bool, str, Codec | None]:
    """'9 G722/8000' -> (False, '9', Codec('G722', 8000, 9))."""
    pt, _, spec = value.partition(" ")
    if not pt.isdigit():
        return False, pt, None  # never one of the m= line's formats that we read
    parts = spec.strip().split("/")
    try:
        channels = int(parts[2]) if len(parts) > 2 else 1
        return False, pt, _new_codec(Codec, (parts[0], int(parts[1]), int(pt), channels, None))
    except (ValueError, IndexError):
        return False, pt, None


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) < 10


def _int_attr(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(float(value))
    except (ValueError, OverflowError):
        return None


class SessionDescription(_Attributes):
    """A whole SDP body. `other` keeps session-level lines we do not model (i u e p r z k).

    `origin` is parsed when first read, so a body whose o= line is odd can still be answered.
    """

    __slots__ = (
        "_origin",
        "bandwidths",
        "connection",
        "media",
        "name",
        "other",
        "times",
        "version",
    )

    def __init__(
        self,
        origin: Origin,
        name: str = "-",
        connection: Connection | None = None,
        times: list[str] | None = None,
        bandwidths: list[str] | None = None,
        attributes: list[tuple[str, str | None]] | None = None,
        media: list[Media] | None = None,
        other: list[tuple[str, str]] | None = None,
        version: int = 0,
    ) -> None:
        self._origin: Origin | str = origin  # the o= text until first read
        self.name = name
        self.connection = connection
        self.times = times if times is not None else ["0 0"]
        self.bandwidths = bandwidths if bandwidths is not None else []
        self._pairs = attributes if attributes is not None else []
        self._raw = None
        self.media = media if media is not None else []
        self.other = other if other is not None else []
        self.version = version

    @property
    def origin(self) -> Origin:
        origin = self._origin
        if isinstance(origin, str):  # checked by parse(), built on first use
            parts = origin.split(" ")
            origin = self._origin = Origin(
                parts[0], parts[1], int(parts[2]), parts[5], parts[4], parts[3]
            )
        return origin

    @origin.setter
    def origin(self, value: Origin) -> None:
        self._origin = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SessionDescription):
            return NotImplemented
        return str(self) == str(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SessionDescription({len(self.media)} media)"

    # -- reading ------------------------------------------------------------------------
    @classmethod
    def parse(cls, data: bytes | str) -> SessionDescription:
        """Parse an SDP body; SdpError (400) for anything RFC 8866 does not allow.

        The usual layout (CRLF line ends; v, o, s, optional c, t, then a= lines; each m=
        section a media line followed by a= lines only) is read with one pattern match for
        the session part and two splits per media section; anything else goes line by line.
        Both give the same result (tests/unit/sip checks that on mutated bodies).
        """
        text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
        try:
            sdp = _parse_usual(text)
        except SdpError:
            sdp = None  # the line-by-line reader says what is wrong
        return sdp if sdp is not None else cls._parse_general(text)

    @classmethod
    def _parse_general(cls, text: str) -> SessionDescription:
        """The line-by-line reader alone (the reference the fast path is tested against)."""
        breaks = text.count("\n")
        if text.count("\r") != breaks or text.count("\r\n") != breaks:
            text = _normalise_line_ends(text)
        sections = text.rstrip("\r\n").split("\r\nm=")
        sdp = _parse_session(sections[0])
        sdp.media = [_parse_media_section(section) for section in sections[1:]]
        return sdp

    def direction_of(self, media: Media) -> str:
        """The effective direction of `media`: its own attribute, else the session's."""
        return media.direction or self.direction or "sendrecv"

    def connection_of(self, media: Media) -> Connection | None:
        return media.connection or self.connection

    # -- writing ------------------------------------------------------------------------
    def __str__(self) -> str:
        origin = self._origin
        origin_text = origin if isinstance(origin, str) else str(origin)
        out = ["v=0", f"o={origin_text}", f"s={self.name or '-'}"]
        other = self.other
        out += [f"{k}={v}" for k, v in other if k in "iuep"]
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out += [f"b={b}" for b in self.bandwidths]
        for t in self.times or ["0 0"]:
            out.append(f"t={t}")
        out += [f"{k}={v}" for k, v in other if k in "rzk"]
        out += self._attribute_lines()
        for m in self.media:
            out += m._lines()
        out.append("")
        return "\r\n".join(out)

    def to_bytes(self) -> bytes:
        return str(self).encode("utf-8", "surrogateescape")

    def __bytes__(self) -> bytes:
        return self.to_bytes()


_new = object.__new__

# v=, o=, s=, an optional c= and one t= line in this order, then a= lines (checked by the
# caller to be a= lines only): what phones and PBXs send. Fields as the line reader takes them.
_SESSION_RE = re.compile(
    r"v=0\r\n"
    r"o=([^ \r\n]++ [^ \r\n]++ [0-9]{1,20} [^ \r\n]++ [^ \r\n]++ [^ \r\n]++)\r\n"
    r"s=([^\r\n]*+)\r\n"
    r"(?:c=([^ \r\n]++) ([^ \r\n]++) ([^ \r\n]++)\r\n)?"
    r"t=([^\r\n]*+)"
    r"(?:\r\na=(.*))?",
    re.S,
)


def _parse_usual(text: str) -> SessionDescription | None:
    """The usual layout in few steps, or None (then the line-by-line reader decides)."""
    body = text[:-2] if text[-2:] == "\r\n" else text
    sections = body.split("\r\nm=")
    m = _SESSION_RE.fullmatch(sections[0])
    if m is None:
        return None
    origin, name, cnet, ctype, caddr, times, attrs = m.groups()
    sdp = _new(SessionDescription)
    sdp.version = 0
    sdp._origin = origin
    sdp.name = name
    sdp.connection = None if cnet is None else _connection(cnet, ctype, caddr)
    sdp.times = [times]
    sdp.bandwidths = []
    sdp.other = []
    sdp._pairs = None
    # Every piece is one line only if none holds a CR or LF any more: checked below at once.
    pieces = sdp._raw = [] if attrs is None else attrs.split("\r\na=")
    if len(sections) > 1:
        pieces = list(pieces)
        media_list = sdp.media = []
        for section in sections[1:]:
            # The m= line, then a= lines only: a c=, b=, i= or k= line stays part of a piece
            # and shows as a line break in the check below.
            raw = section.split("\r\na=")
            mline = raw[0]
            del raw[0]
            media = _parse_media(mline)
            media._raw = raw
            media_list.append(media)
            pieces.append(mline)
            pieces += raw
    else:
        sdp.media = []
    joined = "".join(pieces)
    if "\r" in joined or "\n" in joined:
        return None
    return sdp


def _normalise_line_ends(text: str) -> str:
    """LF-only or mixed line ends are tolerated; a CR anywhere else is not."""
    text = text.replace("\r\n", "\n")
    if "\r" in text:
        raise SdpError("bare CR")
    return text.replace("\n", "\r\n")


def _connection(nettype: str, addrtype: str, address: str) -> Connection:
    conn = _new(Connection)
    conn.address = address
    conn.addrtype = addrtype
    conn.nettype = nettype
    return conn


def _parse_session(text: str) -> SessionDescription:
    """The session section line by line: v=0 first, o= required, the rest in any order."""
    if not text.startswith("v=0") or text[3:5] not in ("", "\r\n"):
        raise SdpError("first line must be v=0")
    sdp = _new(SessionDescription)
    sdp.version = 0
    sdp._origin = None  # type: ignore[assignment]
    sdp.name = "-"
    sdp.connection = None
    sdp.times = []
    sdp.bandwidths = []
    sdp.media = []
    sdp.other = []
    sdp._pairs = None
    head, sdp._raw = _split_section(text)
    for line in head[1:]:
        _session_line(sdp, line)
    if sdp._origin is None:
        raise SdpError("missing o= line")
    if not sdp.times:
        sdp.times = ["0 0"]
    return sdp


def _parse_media_section(text: str) -> Media:
    lines, raw = _split_section(text)
    media = _parse_media(lines[0])
    media._raw = raw
    for line in lines[1:]:
        _media_line(media, line)
    return media


def _split_section(text: str) -> tuple[list[str], list[str]]:
    """A section's non-attribute lines and its a= lines (raw, without 'a=').

    The usual layout puts every a= line last, and then one split finds them all; otherwise
    the section is walked line by line.
    """
    pieces = text.split("\r\na=")
    head = pieces[0]
    if text.count("\r\n") == len(pieces) - 1 + head.count("\r\n"):
        lines = head.split("\r\n")
        if "" in lines:
            raise SdpError("empty line")
        del pieces[0]
        return lines, pieces
    lines = []
    raw = []
    for line in text.split("\r\n"):
        if line[:2] == "a=":
            raw.append(line[2:])
        elif not line:
            raise SdpError("empty line")
        else:
            lines.append(line)
    return lines, raw


def _session_line(sdp: SessionDescription, line: str) -> None:
    if line[1:2] != "=":
        raise SdpError(f"malformed line {line[:40]!r}")
    kind = line[0]
    value = line[2:]
    if kind == "o":
        _origin_parts(value)  # checked now, read when first used
        sdp._origin = value
    elif kind == "s":
        sdp.name = value
    elif kind == "c":
        sdp.connection = _parse_connection(value)
    elif kind == "t":
        sdp.times.append(value)
    elif kind == "b":
        sdp.bandwidths.append(value)
    elif kind in "iuepzrk":
        sdp.other.append((kind, value))
    elif kind == "v":
        raise SdpError("second v= line")
    else:
        raise SdpError(f"unknown line type {kind!r}")


def _media_line(media: Media, line: str) -> None:
    if line[1:2] != "=":
        raise SdpError(f"malformed line {line[:40]!r}")
    kind = line[0]
    value = line[2:]
    if kind == "c":
        media.connection = _parse_connection(value)
    elif kind == "b":
        media.bandwidths.append(value)
    elif kind in "ik":
        media.other.append((kind, value))
    else:
        raise SdpError(f"{kind}= line inside a media section")


def _parse_media(value: str) -> Media:
    """An m= line (without 'm='); the caller fills in the attributes."""
    parts = value.split(" ")
    if len(parts) < 3 or not all(parts):
        raise SdpError(f"bad m= line {value[:60]!r}")
    port_text = parts[1]
    count = None
    if not (port_text.isdigit() and port_text.isascii() and len(port_text) < 10):
        port_text, _, count_text = port_text.partition("/")
        if not _digits(port_text):
            raise SdpError(f"bad port in m= line {value[:60]!r}")
        if count_text:
            if not _digits(count_text):
                raise SdpError(f"bad port count in m= line {value[:60]!r}")
            count = int(count_text)
    port = int(port_text)
    if port > 65535:
        raise SdpError(f"bad port in m= line {value[:60]!r}")
    media = _new(Media)
    media.kind = parts[0]
    media.port = port
    media.port_count = count
    media.proto = parts[2]
    media.formats = parts[3:]
    media.connection = None
    media.bandwidths = []
    media.other = []
    media._pairs = None
    return media


def _parse_connection(value: str) -> Connection:
    parts = value.split(" ")
    if len(parts) != 3 or "" in parts:
        raise SdpError(f"bad c= line {value[:60]!r}")
    return Connection(parts[2], parts[1], parts[0])


def _origin_parts(value: str) -> list[str]:
    parts = value.split(" ")
    version = parts[2] if len(parts) == 6 else ""
    if "" in parts or not version.isdigit() or not version.isascii() or len(version) > 20:
        raise SdpError(f"bad o= line {value[:60]!r}")
    return parts


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
