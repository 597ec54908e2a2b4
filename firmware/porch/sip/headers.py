"""Header field names and the typed values the user agent reads: Via, addresses, CSeq, MIME.

Values are parsed from the unfolded text that message.py keeps; every failure is a
RemoteProtocolError(400). Parameters are kept with lower-case names and their values as
written (quoted strings keep their quotes, so a value round-trips); `param()` unquotes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from porch.sip.errors import LocalProtocolError, RemoteProtocolError
from porch.sip.uri import SipUri, Uri, parse_uri

__all__ = [
    "COMPACT_FORMS",
    "LIST_HEADERS",
    "MAGIC_COOKIE",
    "CSeq",
    "MediaType",
    "NameAddress",
    "Via",
    "address",
    "canonical_name",
    "header_key",
    "name_addr_fast",
    "parse_params",
    "parse_tokens",
    "quote_string",
    "split_list",
    "unquote_string",
    "via_fast",
]

TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
TOKEN_RE = re.compile(rf"[{TOKEN_CHARS}]+")
_QUOTED = r'"(?:[^"\\]|\\.)*"'

# RFC 3261 7.3.3 plus the compact forms registered since (RFC 3265, 3515, 3841, 3892,
# 4028, 4474).
COMPACT_FORMS = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}

# Headers whose values are comma-separated lists (RFC 3261 7.3.1): several values on one
# line mean the same as several lines. Authentication headers are deliberately absent: their
# commas separate parameters of one challenge.
LIST_HEADERS = frozenset(
    {
        "accept",
        "accept-contact",
        "accept-encoding",
        "accept-language",
        "alert-info",
        "allow",
        "allow-events",
        "call-info",
        "contact",
        "content-encoding",
        "content-language",
        "error-info",
        "history-info",
        "in-reply-to",
        "p-asserted-identity",
        "p-preferred-identity",
        "path",
        "proxy-require",
        "reason",
        "record-route",
        "reject-contact",
        "request-disposition",
        "require",
        "route",
        "security-client",
        "security-server",
        "security-verify",
        "service-route",
        "supported",
        "unsupported",
        "via",
        "warning",
    }
)

_CANONICAL = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "rack": "RAck",
    "rseq": "RSeq",
    "sip-etag": "SIP-ETag",
    "sip-if-match": "SIP-If-Match",
    "p-asserted-identity": "P-Asserted-Identity",
}


def header_key(name: str) -> str:
    """The lookup key of a header name: lower case, compact forms expanded."""
    key = name.lower()
    if len(key) == 1:
        return COMPACT_FORMS.get(key, key)
    return key


def canonical_name(name: str) -> str:
    """The conventional spelling for a header we write ('call-id' -> 'Call-ID')."""
    key = header_key(name)
    return _CANONICAL.get(key) or "-".join(p.capitalize() for p in key.split("-"))


# ---------------------------------------------------------------------------------------
# Tokenising helpers
# ---------------------------------------------------------------------------------------


def split_list(value: str) -> list[str]:
    """Split at commas outside quoted strings and <...>; items are stripped.

    An empty value gives []; empty items in between are kept as "" so that callers for
    which the grammar forbids them can refuse the message.
    """
    if "," not in value:
        return [value.strip(" \t")] if value else []
    if '"' not in value and "<" not in value:
        return [item.strip(" \t") for item in value.split(",")]
    items: list[str] = []
    start = 0
    in_quotes = in_angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if in_quotes:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == "," and not in_angle:
            items.append(value[start:i].strip(" \t"))
            start = i + 1
        i += 1
    if in_quotes:
        raise RemoteProtocolError(400, "unterminated quoted string")
    items.append(value[start:].strip(" \t"))
    return items


def unquote_string(text: str) -> str:
    """'"a \\"b\\""' -> 'a "b"'; a token is returned as it is."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        inner = text[1:-1]
        if "\\" in inner:
            return re.sub(r"\\(.)", r"\1", inner, flags=re.S)
        return inner
    return text


def quote_string(text: str) -> str:
    """Quote for a quoted-string, escaping backslash and double quote."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ;name[=value] with LWS allowed around ';' and '='. The value is a token, a quoted string or
# an IPv6 reference (received=[::1], maddr=[...]).
_PARAM_RE = re.compile(
    rf"[ \t]*;[ \t]*([{TOKEN_CHARS}]+)"
    rf"(?:[ \t]*=[ \t]*([{TOKEN_CHARS}]+|{_QUOTED}|\[[0-9A-Fa-f:.]+\]))?[ \t]*",
    re.S,
)


def parse_params(text: str, pos: int = 0) -> dict[str, str | None]:
    """Parse ';a=b;c' from `pos` to the end: names lower-cased, values as written."""
    if _PARAMS_FAST_RE.fullmatch(text, pos):
        # The common case (tokens only, no LWS or quotes), checked by one regex.
        params: dict[str, str | None] = {}
        for item in text[pos + 1 :].split(";"):
            name, eq, value = item.partition("=")
            params[name.lower()] = value if eq else None
        return params
    return _parse_params_slow(text[pos:] if pos else text)


_PARAMS_FAST_RE = re.compile(rf"(?:;[{TOKEN_CHARS}]+(?:=[{TOKEN_CHARS}]+)?)+")
# The same as a group, possessive (nothing after it needs characters back): fewer steps.
_PARAMS_TOKENS = rf"((?:;[{TOKEN_CHARS}]++(?:=[{TOKEN_CHARS}]++)?)*+)"

# Parameter names as they are usually written -> lower case, to skip a lower() per parameter.
_PARAM_NAMES = {
    name: name.lower()
    for name in (
        "branch", "rport", "received", "maddr", "ttl", "tag", "expires", "q", "lr",
        "transport", "user", "method", "alias", "keep", "reg-id", "+sip.instance", "ob",
        "gr", "pub-gruu", "temp-gruu", "boundary", "charset", "comp", "sigcomp-id",
        "reason", "duration", "refresher", "handling", "purpose", "version",
    )
}  # fmt: skip


def _token_params(text: str) -> dict[str, str | None]:
    """';a=b;c' already known to be token parameters (checked by the caller's pattern)."""
    params: dict[str, str | None] = {}
    names = _PARAM_NAMES
    for item in text[1:].split(";"):
        name, eq, value = item.partition("=")
        params[names.get(name) or name.lower()] = value if eq else None
    return params


_TOKEN_SET = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")


def _parse_params_slow(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    pos = 0
    end = len(text)
    match = _PARAM_RE.match
    while pos < end:
        m = match(text, pos)
        if m is None:
            raise RemoteProtocolError(400, f"bad parameters: {text[pos : pos + 60]!r}")
        params[m.group(1).lower()] = m.group(2)
        pos = m.end()
    return params


def _render_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def _param_value(value: str) -> str:
    """A parameter value we write: a token stays as is, anything else is quoted."""
    if TOKEN_RE.fullmatch(value) or (value.startswith("[") and value.endswith("]")):
        return value
    return quote_string(value)


# ---------------------------------------------------------------------------------------
# Via
# ---------------------------------------------------------------------------------------

_VIA_RE = re.compile(
    rf"([{TOKEN_CHARS}]+)[ \t]*/[ \t]*([{TOKEN_CHARS}]+)[ \t]*/[ \t]*([{TOKEN_CHARS}]+)[ \t]+"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9_\-.]*)(?:[ \t]*:[ \t]*([0-9]{1,5}))?[ \t]*"
)

# The usual form in one match: token transport, host name or IPv4, port, token parameters.
# A leading ';branch=...' (and ';rport' after it) has groups of its own: no split for them.
_VIA_FAST_RE = re.compile(
    rf"SIP/2\.0/([{TOKEN_CHARS}]++) ([A-Za-z0-9][A-Za-z0-9_\-.]*+)(?::([0-9]{{1,5}}))?"
    rf"(?:;branch=([{TOKEN_CHARS}]++)(;rport)?)?" + _PARAMS_TOKENS
)

MAGIC_COOKIE = "z9hG4bK"
_TRANSPORTS = frozenset(("UDP", "TCP", "TLS", "SCTP", "WS", "WSS"))
_new = object.__new__


class Via:
    """One Via value: `SIP/2.0/UDP host:port;branch=...;received=...;rport`."""

    __slots__ = ("host", "params", "port", "protocol", "transport")

    def __init__(
        self,
        transport: str,
        host: str,
        port: int | None = None,
        params: dict[str, str | None] | None = None,
        protocol: str = "SIP/2.0",
    ) -> None:
        self.protocol = protocol
        self.transport = transport.upper()
        self.host = host
        self.port = port
        self.params: dict[str, str | None] = (
            {k.lower(): v for k, v in params.items()} if params else {}
        )

    @classmethod
    def parse(cls, text: str) -> Via:
        via = via_fast(text)
        return via if via is not None else cls._parse_general(text)

    @classmethod
    def _parse_general(cls, text: str) -> Via:
        """Any Via value RFC 3261 allows (LWS, IPv6, quoted parameters...)."""
        m = _VIA_RE.match(text)
        if m is None:
            raise RemoteProtocolError(400, f"bad Via: {text[:80]!r}")
        name, version, transport, host, port = m.groups()
        via = cls.__new__(cls)
        via.protocol = f"{name.upper()}/{version}"
        via.transport = transport.upper()
        via.host = host
        if port is not None:
            value = int(port)
            if value > 65535:
                raise RemoteProtocolError(400, "bad Via port")
            via.port = value
        else:
            via.port = None
        end = m.end()
        via.params = parse_params(text, end) if end < len(text) else {}
        return via

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def has_rport(self) -> bool:
        return "rport" in self.params

    @property
    def rport(self) -> int | None:
        """The rport value a server filled in (RFC 3581), None if absent or empty."""
        value = self.params.get("rport")
        if value and value.isascii() and value.isdigit() and len(value) <= 5:
            return int(value)
        return None

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def with_params(self, **params: str | None) -> Via:
        """A copy with parameters added or replaced (e.g. received=..., rport=...)."""
        merged = dict(self.params)
        merged.update({k.lower(): v for k, v in params.items()})
        return Via(self.transport, self.host, self.port, merged, self.protocol)

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by}{_render_params(self.params)}"

    def __repr__(self) -> str:
        return f"Via({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Via):
            return NotImplemented
        return (
            self.protocol == other.protocol
            and self.transport == other.transport
            and self.host.lower() == other.host.lower()
            and self.port == other.port
            and self.params == other.params
        )

    __hash__ = None  # type: ignore[assignment]


def via_fast(text: str) -> Via | None:
    """The usual Via value in one pattern match; None when the general parser must look."""
    m = _VIA_FAST_RE.fullmatch(text)
    if m is None:
        return None
    transport, host, port, branch, rport, params = m.groups()
    via = _new(Via)
    via.protocol = "SIP/2.0"
    via.transport = transport if transport in _TRANSPORTS else transport.upper()
    via.host = host
    if port is None:
        via.port = None
    else:
        via.port = int(port)
        if via.port > 65535:
            raise RemoteProtocolError(400, "bad Via port")
    if branch is None:
        via.params = _token_params(params) if params else {}
    else:
        via.params = {"branch": branch, "rport": None} if rport else {"branch": branch}
        if params:  # more after them: inserted in order, as the general reader does
            via.params.update(_token_params(params))
    return via


# ---------------------------------------------------------------------------------------
# name-addr / addr-spec (From, To, Contact, Route, Record-Route, Refer-To ...)
# ---------------------------------------------------------------------------------------

_QUOTED_HEAD_RE = re.compile(rf"({_QUOTED})[ \t]*", re.S)
# '"Display" <uri>;tag=x' or '<uri>' with token parameters: the usual From/To/Contact.
# A leading ';tag=...' has a group of its own: no split for it.
_NAME_ADDR_FAST_RE = re.compile(
    r'(?:"([^"\\]*+)"[ \t]*+)?<([^<> \t]++)>'
    rf"(?:;tag=([{TOKEN_CHARS}]++))?" + _PARAMS_TOKENS
)
_DISPLAY_TOKENS_RE = re.compile(rf"[{TOKEN_CHARS}]+(?:[ \t]+[{TOKEN_CHARS}]+)*")


class NameAddress:
    """`"Display" <uri>;param=value`: From, To, Contact, Route and friends.

    `display_name` is unquoted (None when absent); `uri` is parsed; `params` are the
    header parameters (tag, expires, q, +sip.instance ...), names lower-cased.
    """

    __slots__ = ("_uri", "_uri_text", "display_name", "params")

    def __init__(
        self,
        uri: Uri | str,
        display_name: str | None = None,
        params: dict[str, str | None] | None = None,
    ) -> None:
        if isinstance(uri, str):
            self._uri: Uri | None = None
            self._uri_text = uri
            self._uri = self.uri  # validates
        else:
            self._uri = uri
            self._uri_text = str(uri)
        self.display_name = display_name
        self.params: dict[str, str | None] = (
            {k.lower(): v for k, v in params.items()} if params else {}
        )

    @classmethod
    def parse(cls, text: str) -> NameAddress:
        addr = name_addr_fast(text)
        return addr if addr is not None else cls._parse_general(text)

    @classmethod
    def _parse_general(cls, text: str) -> NameAddress:
        """Any name-addr or addr-spec with header parameters."""
        n = len(text)
        if n == 0:
            raise RemoteProtocolError(400, "empty address")
        display: str | None = None
        pos = 0
        first = text[0]
        if first == "<":
            pass
        elif first == '"' and "\\" not in text:
            close = text.find('"', 1)
            pos = text.find("<", close)
            if close < 0 or pos < 0 or text[close + 1 : pos].strip(" \t"):
                raise RemoteProtocolError(400, "bad display name or missing <URI>")
            display = text[1:close]
        elif first == '"':
            m = _QUOTED_HEAD_RE.match(text)
            if m is None:
                raise RemoteProtocolError(400, "unterminated quoted string")
            display = unquote_string(m.group(1))
            pos = m.end()
            if pos >= n or text[pos] != "<":
                raise RemoteProtocolError(400, "display name without <URI>")
        else:
            lt = text.find("<")
            if lt > 0:
                words = text[:lt].rstrip(" \t")
                if not _DISPLAY_TOKENS_RE.fullmatch(words):
                    raise RemoteProtocolError(400, f"bad display name: {words[:60]!r}")
                display = words
                pos = lt
            elif lt < 0:
                # addr-spec: the URI runs to the first ';', which starts header parameters.
                semi = text.find(";")
                uri_text = text if semi < 0 else text[:semi].rstrip(" \t")
                if "?" in uri_text or "," in uri_text or " " in uri_text:
                    raise RemoteProtocolError(400, f"URI needs <>: {uri_text[:60]!r}")
                addr = cls.__new__(cls)
                addr._uri = None
                addr._uri_text = uri_text
                addr.display_name = None
                addr.params = parse_params(text, semi) if semi >= 0 else {}
                return addr
        gt = text.find(">", pos)
        if gt < 0:
            raise RemoteProtocolError(400, "missing '>'")
        uri_text = text[pos + 1 : gt]
        if not uri_text or uri_text[0] in " \t" or uri_text[-1] in " \t":
            raise RemoteProtocolError(400, f"bad <URI>: {uri_text[:60]!r}")
        addr = cls.__new__(cls)
        addr._uri = None
        addr._uri_text = uri_text
        addr.display_name = display
        addr.params = parse_params(text, gt + 1) if gt + 1 < n else {}
        return addr

    @property
    def uri(self) -> Uri:
        """The URI, parsed on first use (RemoteProtocolError(400) if it is malformed)."""
        uri = self._uri
        if uri is None:
            uri = self._uri = parse_uri(self._uri_text)
        return uri

    @property
    def sip_uri(self) -> SipUri:
        """The URI when it is sip/sips; RemoteProtocolError(416) otherwise."""
        uri = self.uri
        if not isinstance(uri, SipUri):
            raise RemoteProtocolError(416, f"Unsupported URI Scheme: {uri.scheme}")
        return uri

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def param(self, name: str) -> str | None:
        """A header parameter, unquoted; None if absent or valueless."""
        value = self.params.get(name.lower())
        return unquote_string(value) if value is not None else None

    @property
    def expires(self) -> int | None:
        value = self.params.get("expires")
        if not value or not value.isascii() or not value.isdigit():
            return None
        return min(int(value[:20]), 2**32 - 1)

    @property
    def q(self) -> float | None:
        value = self.params.get("q")
        try:
            return float(value) if value else None
        except ValueError:
            return None

    def with_params(self, **params: str | None) -> NameAddress:
        """A copy with header parameters added or replaced (e.g. tag=...)."""
        merged = dict(self.params)
        for k, v in params.items():
            merged[k.lower()] = v
        addr = NameAddress.__new__(NameAddress)
        addr._uri = self._uri
        addr._uri_text = self._uri_text
        addr.display_name = self.display_name
        addr.params = merged
        return addr

    def with_tag(self, tag: str) -> NameAddress:
        return self.with_params(tag=tag)

    def __str__(self) -> str:
        parts = []
        if self.display_name is not None:
            parts.append(quote_string(self.display_name))
            parts.append(" ")
        parts += ("<", self._uri_text, ">")
        for k, v in self.params.items():
            parts.append(f";{k}" if v is None else f";{k}={v}")
        return "".join(parts)

    def __repr__(self) -> str:
        return f"NameAddress({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NameAddress):
            return NotImplemented
        return (
            self.display_name == other.display_name
            and self._uri_text == other._uri_text
            and self.params == other.params
        )

    __hash__ = None  # type: ignore[assignment]


def name_addr_fast(text: str) -> NameAddress | None:
    """'"Display" <uri>;tag=x' in one pattern match; None when the general parser must look."""
    m = _NAME_ADDR_FAST_RE.fullmatch(text)
    if m is None:
        return None
    addr = _new(NameAddress)
    addr.display_name, addr._uri_text, tag, params = m.groups()
    addr._uri = None
    if tag is None:
        addr.params = _token_params(params) if params else {}
    else:
        addr.params = {"tag": tag}
        if params:  # more after it: inserted in order, as the general reader does
            addr.params.update(_token_params(params))
    return addr


def address(uri: Uri | str, display_name: str | None = None, **params: str | None) -> NameAddress:
    """Build a NameAddress; keyword arguments become header parameters (tag=..., expires=...)."""
    for key, value in params.items():
        if value is not None and not (TOKEN_RE.fullmatch(value) or value.startswith('"')):
            params[key] = _param_value(value)
    return NameAddress(uri, display_name, {k.replace("_", "-"): v for k, v in params.items()})


# ---------------------------------------------------------------------------------------
# CSeq and MIME types
# ---------------------------------------------------------------------------------------

_METHODS = frozenset(
    ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO", "PRACK", "UPDATE",
     "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH")
)  # fmt: skip
_CSEQ_RE = re.compile(rf"([0-9]{{1,10}})[ \t]+([{TOKEN_CHARS}]+)")


class CSeq:
    """`CSeq: 314159 INVITE` as (number, method)."""

    __slots__ = ("method", "number")

    def __init__(self, number: int, method: str) -> None:
        if not 0 <= number <= 2**32 - 1:
            raise LocalProtocolError(f"CSeq number out of range: {number}")
        self.number = number
        self.method = method

    @classmethod
    def parse(cls, text: str) -> CSeq:
        number, space, method = text.partition(" ")
        if (
            space
            and (method in _METHODS or (method and _TOKEN_SET.issuperset(method)))
            and number.isdigit()
            and number.isascii()
            and len(number) <= 10
        ):
            value = int(number)
            if value > 2**32 - 1:
                raise RemoteProtocolError(400, "CSeq number too large")
            cseq = _new(cls)
            cseq.number = value
            cseq.method = method
            return cseq
        m = _CSEQ_RE.fullmatch(text)
        if m is None:
            raise RemoteProtocolError(400, f"bad CSeq: {text[:60]!r}")
        number = int(m.group(1))
        if number > 2**32 - 1:
            raise RemoteProtocolError(400, "CSeq number too large")
        cseq = cls.__new__(cls)
        cseq.number = number
        cseq.method = m.group(2)
        return cseq

    def __str__(self) -> str:
        return f"{self.number} {self.method}"

    def __repr__(self) -> str:
        return f"CSeq({self.number}, {self.method!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CSeq):
            return NotImplemented
        return self.number == other.number and self.method == other.method

    def __hash__(self) -> int:
        return hash((self.number, self.method))

    def __iter__(self):  # allows `number, method = msg.cseq`
        yield self.number
        yield self.method


# 'type/subtype' texts without parameters, as met -> (type, subtype, mime); bounded.
_MEDIA_TYPES: dict[str, tuple[str, str, str]] = {}

_MEDIA_RE = re.compile(rf"([{TOKEN_CHARS}]+)[ \t]*/[ \t]*([{TOKEN_CHARS}]+)[ \t]*")


class MediaType:
    """`application/sdp;charset=utf-8`: `mime` is the lower-case 'type/subtype'."""

    __slots__ = ("mime", "params", "subtype", "type")

    def __init__(
        self, type: str, subtype: str, params: dict[str, str | None] | None = None
    ) -> None:
        self.type = type.lower()
        self.subtype = subtype.lower()
        self.mime = f"{self.type}/{self.subtype}"
        self.params: dict[str, str | None] = (
            {k.lower(): v for k, v in params.items()} if params else {}
        )

    @classmethod
    def parse(cls, text: str) -> MediaType:
        known = _MEDIA_TYPES.get(text)
        if known is not None:  # 'application/sdp' and the like: nothing else to read
            media = _new(cls)
            media.type, media.subtype, media.mime = known
            media.params = {}
            return media
        type_, slash, subtype = text.partition("/")
        if slash and _TOKEN_SET.issuperset(type_) and _TOKEN_SET.issuperset(subtype) and type_:
            if subtype:
                media = _new(cls)
                media.type = type_.lower()
                media.subtype = subtype.lower()
                media.mime = f"{media.type}/{media.subtype}"
                media.params = {}
                if len(_MEDIA_TYPES) < 256:
                    _MEDIA_TYPES[text] = (media.type, media.subtype, media.mime)
                return media
        m = _MEDIA_RE.match(text)
        if m is None:
            raise RemoteProtocolError(400, f"bad media type: {text[:60]!r}")
        media = cls.__new__(cls)
        media.type = m.group(1).lower()
        media.subtype = m.group(2).lower()
        media.mime = f"{media.type}/{media.subtype}"
        end = m.end()
        media.params = parse_params(text, end) if end < len(text) else {}
        return media

    def matches(self, mime: str) -> bool:
        """Does this (possibly wildcard) range cover the concrete type `mime`?"""
        if self.mime in ("*/*", mime.lower()):
            return True
        return self.subtype == "*" and mime.lower().startswith(self.type + "/")

    def __str__(self) -> str:
        return self.mime + _render_params(self.params)

    def __repr__(self) -> str:
        return f"MediaType({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return self.mime == other.lower()
        if not isinstance(other, MediaType):
            return NotImplemented
        return self.mime == other.mime and self.params == other.params

    def __hash__(self) -> int:
        return hash(self.mime)


def parse_tokens(values: Iterable[str]) -> frozenset[str]:
    """Option tags / methods from list values; an empty item is a syntax error."""
    out = []
    for value in values:
        if not TOKEN_RE.fullmatch(value):
            raise RemoteProtocolError(400, f"bad token: {value[:60]!r}")
        out.append(value)
    return frozenset(out)
