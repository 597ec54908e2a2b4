"""SIP messages: parse from a datagram or a TCP stream, read typed headers, serialise, answer.

The parser splits a message once and keeps every header value as (unfolded) text; a typed
accessor (`via`, `from_`, `cseq`, `contact` ...) parses its header the first time it is read
and caches the result. That keeps the common path (read half a dozen headers of a
15-header INVITE) cheap, and leaves unknown headers exactly as received.

The usual layouts take short paths: a CRLF header section of `Name: value` lines is split
with one str.partition per line, and a Via, name-addr or SIP URI of the common form is read
with one pattern match. Anything else goes the general way, and
tests/unit/sip/test_sip_fast_paths.py checks that both ways read the same thing.

Everything the network can get wrong raises RemoteProtocolError with the status a UAS should
answer; `validate_request` adds the checks RFC 3261 section 8.2 asks of a UAS (mandatory
headers, version 505, URI scheme 416, Require 420, ...).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from porch.sip.errors import LocalProtocolError, RemoteProtocolError
from porch.sip.headers import (
    COMPACT_FORMS,
    LIST_HEADERS,
    TOKEN_RE,
    CSeq,
    MediaType,
    NameAddress,
    Via,
    canonical_name,
    header_key,
    name_addr_fast,
    parse_tokens,
    split_list,
    via_fast,
)
from porch.sip.uri import SipUri, Uri, parse_uri

__all__ = [
    "REASONS",
    "Headers",
    "KeepAlive",
    "Limits",
    "Message",
    "Request",
    "Response",
    "StreamParser",
    "build_request",
    "is_keepalive",
    "make_response",
    "parse_datagram",
    "validate_request",
    "validate_response",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """Bounds on what the parser accepts; a message beyond them is refused, not parsed."""

    max_message_size: int = 65535  # whole message (UDP cannot carry more anyway)
    max_headers: int = 128  # header lines after unfolding
    max_line_length: int = 8192  # one unfolded header line
    max_body_size: int = 60000  # Content-Length


DEFAULT_LIMITS = Limits()

REASONS = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

# Common spellings -> lookup key, so that building the index rarely calls lower().
_KEY_CACHE: dict[str, str] = {}
for _name in (
    "Via",
    "From",
    "To",
    "Call-ID",
    "Call-Id",
    "CSeq",
    "Contact",
    "Max-Forwards",
    "Content-Type",
    "Content-Length",
    "Route",
    "Record-Route",
    "Allow",
    "Supported",
    "Require",
    "User-Agent",
    "Server",
    "Expires",
    "Accept",
    "Authorization",
    "Proxy-Authorization",
    "WWW-Authenticate",
    "Proxy-Authenticate",
    "Subject",
    "Date",
    "Event",
    "Allow-Events",
    "P-Asserted-Identity",
    "P-Preferred-Identity",
    "Session-Expires",
    "Min-SE",
    "Min-Expires",
    "Privacy",
    "Reason",
    "Warning",
    "RSeq",
    "RAck",
    "Refer-To",
    "Referred-By",
    "Replaces",
    "Timestamp",
    "Organization",
    "Priority",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Accept-Encoding",
    "Accept-Language",
    "Unsupported",
    "Proxy-Require",
    "Retry-After",
    "Path",
    "Service-Route",
    "Subscription-State",
    "Alert-Info",
    "Call-Info",
    "Error-Info",
    "In-Reply-To",
    "Reply-To",
    "MIME-Version",
    "History-Info",
    "Diversion",
    "Identity",
):
    _KEY_CACHE[_name] = _name.lower()
    _KEY_CACHE[_name.lower()] = _name.lower()
for _short, _long in COMPACT_FORMS.items():
    _KEY_CACHE[_short] = _long
    _KEY_CACHE[_short.upper()] = _long
# Other spellings are added as they are met (only valid tokens), up to this many entries.
_KEY_CACHE_SIZE = 1024


class Headers:
    """Ordered, case-insensitive header fields as (name, value) text pairs.

    Lookups understand compact forms ('v' is Via). `values(name)` splits list headers
    (Via, Contact, Route, Supported, ...) at commas outside quotes and <>. Each
    WWW-Authenticate or Proxy-Authenticate field stays a value of its own.

    Inside, a field is the (name, ": ", value) triple that str.partition gives the parser,
    so parsing builds no second tuple per line; iteration yields (name, value) pairs.
    `_index` says where each lookup key is (see `_index_of`), None until first needed.
    """

    __slots__ = ("_fields", "_index", "_keys", "typed")

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields: list[tuple[str, str, str]] = [
            (_checked_name(n), _SEP, _field_text(v)) for n, v in fields
        ]
        self._keys: list[str] = [_key(f[0]) for f in self._fields]
        self._index: dict[str, int] | None = None
        # Parsed values of the typed accessors, dropped on every change.
        self.typed: dict[str, Any] = {}

    def _changed(self) -> None:
        self._keys = [_key(f[0]) for f in self._fields]
        self._index = None
        if self.typed:
            self.typed = {}

    # -- reading ------------------------------------------------------------------------
    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of `name` (raw text), or `default`."""
        try:
            return self._fields[self._keys.index(_KEY_CACHE.get(name) or header_key(name))][2]
        except ValueError:
            return default

    def getall(self, name: str) -> list[str]:
        """Every field of `name`, one item per header line, unsplit."""
        key = _KEY_CACHE.get(name) or header_key(name)
        keys = self._keys
        if keys.count(key) == 1:
            return [self._fields[keys.index(key)][2]]
        return [f[2] for k, f in zip(keys, self._fields, strict=True) if k == key]

    def values(self, name: str) -> list[str]:
        """Every value of `name`; list headers are split at top-level commas."""
        key = _KEY_CACHE.get(name) or header_key(name)
        keys = self._keys
        count = keys.count(key)
        if count == 1:
            value = self._fields[keys.index(key)][2]
            if key not in LIST_HEADERS or "," not in value:
                return [value.strip(" \t")] if value else []
            return split_list(value)
        if count == 0:
            return []
        bucket = [f[2] for k, f in zip(keys, self._fields, strict=True) if k == key]
        if key not in LIST_HEADERS:
            return bucket
        out: list[str] = []
        for value in bucket:
            out.extend(split_list(value))
        return out

    def count(self, name: str) -> int:
        return self._keys.count(_KEY_CACHE.get(name) or header_key(name))

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return (_KEY_CACHE.get(name) or header_key(name)) in self._keys

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items())

    def __len__(self) -> int:
        return len(self._fields)

    def items(self) -> list[tuple[str, str]]:
        return [(name, value) for name, _, value in self._fields]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._fields == other._fields

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"

    def copy(self) -> Headers:
        new = Headers.__new__(Headers)
        new._fields = list(self._fields)
        new._keys = list(self._keys)
        new._index = self._index  # the same layout; the dict is never changed
        new.typed = {}
        return new

    # -- writing ------------------------------------------------------------------------
    def add(self, name: str, value: object) -> None:
        """Append a field (after any others of the same name)."""
        self._fields.append((_checked_name(name), _SEP, _field_text(value)))
        self._changed()

    def insert(self, name: str, value: object) -> None:
        """Put a field before the first one of the same name (e.g. our own top Via)."""
        key = _key(name)
        field = (_checked_name(name), _SEP, _field_text(value))
        if key in self._keys:
            self._fields.insert(self._keys.index(key), field)
        else:
            self._fields.append(field)
        self._changed()

    def set(self, name: str, value: object) -> None:
        """Replace every field of `name` by one, at the place of the first (or at the end)."""
        key = _key(name)
        field = (_checked_name(name), _SEP, _field_text(value))
        out: list[tuple[str, str, str]] = []
        placed = False
        for k, f in zip(self._keys, self._fields, strict=True):
            if k == key:
                if not placed:
                    out.append(field)
                    placed = True
            else:
                out.append(f)
        if not placed:
            out.append(field)
        self._fields = out
        self._changed()

    def remove(self, name: str) -> None:
        key = _key(name)
        self._fields = [f for k, f in zip(self._keys, self._fields, strict=True) if k != key]
        self._changed()


_SEP = ": "  # the middle of every stored field triple

# Header layouts (lookup keys in order) as met -> where each key is: its index when it occurs
# once, ~(index of the first) when it occurs more than once (so negative). A peer sends the
# same few layouts again and again, so a layout's dict is built once and then found by one
# tuple lookup, instead of list scans (a str compare each) for every header read.
_LAYOUTS: dict[tuple[str, ...], dict[str, int]] = {}
_LAYOUTS_SIZE = 256


def _index_of(headers: Headers) -> dict[str, int]:
    """`headers._index`, from the layout cache or built (the dicts in it are never changed)."""
    index = headers._index = _layout_index(headers._keys)
    return index


def _layout_index(key_list: list[str]) -> dict[str, int]:
    keys = tuple(key_list)
    index = _LAYOUTS.get(keys)
    if index is None:
        index = {}
        for i, key in enumerate(keys):
            first = index.get(key)
            if first is None:
                index[key] = i
            elif first >= 0:
                index[key] = ~first
        if len(_LAYOUTS) >= _LAYOUTS_SIZE:
            _LAYOUTS.clear()
        _LAYOUTS[keys] = index
    return index


def _key(name: str) -> str:
    return _KEY_CACHE.get(name) or header_key(name)


def _checked_name(name: str) -> str:
    if not TOKEN_RE.fullmatch(name):
        raise LocalProtocolError(f"bad header name: {name!r}")
    return name


def _field_text(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    if "\r" in text or "\n" in text:
        raise LocalProtocolError(f"line break in a header value: {text[:60]!r}")
    return text


# ---------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------


class Message:
    """Common part of requests and responses: headers, body and the typed accessors."""

    __slots__ = ("body", "headers")

    headers: Headers
    body: bytes

    def _cached(self, key: str, parse: Callable[[], T]) -> T:
        typed = self.headers.typed
        try:
            return typed[key]
        except KeyError:
            value = typed[key] = parse()
            return value

    def _single(self, name: str) -> str | None:
        return self.headers.get(name)

    # -- typed accessors (parsed once, cached until the headers change) ------------------
    @property
    def via(self) -> list[Via]:
        """Every Via value, top first."""
        headers = self.headers
        vias = headers.typed.get("via")
        if vias is None:
            i = (headers._index or _index_of(headers)).get("via", -1)
            if i >= 0:  # the usual single Via line with a single value
                value = headers._fields[i][2]
                if "," not in value:
                    via = via_fast(value)
                    if via is not None:
                        vias = [via]
            if vias is None:
                values = headers.values("via")
                if "" in values:
                    raise RemoteProtocolError(400, "empty item in Via")
                vias = [Via.parse(v) for v in values]
            headers.typed["via"] = vias
        return vias

    @property
    def top_via(self) -> Via:
        vias = self.via
        if not vias:
            raise RemoteProtocolError(400, "missing Via")
        return vias[0]

    @property
    def from_(self) -> NameAddress:
        headers = self.headers
        addr = headers.typed.get("from")
        if addr is None:
            i = (headers._index or _index_of(headers)).get("from")
            if i is None:
                raise RemoteProtocolError(400, "missing From")
            value = headers._fields[i if i >= 0 else ~i][2]
            addr = headers.typed["from"] = NameAddress.parse(value)
        return addr

    @property
    def to(self) -> NameAddress:
        headers = self.headers
        addr = headers.typed.get("to")
        if addr is None:
            i = (headers._index or _index_of(headers)).get("to")
            if i is None:
                raise RemoteProtocolError(400, "missing To")
            value = headers._fields[i if i >= 0 else ~i][2]
            addr = headers.typed["to"] = NameAddress.parse(value)
        return addr

    @property
    def call_id(self) -> str:
        headers = self.headers
        value = headers.typed.get("call-id")
        if value is None:
            i = (headers._index or _index_of(headers)).get("call-id")
            if i is None:
                raise RemoteProtocolError(400, "missing Call-ID")
            value = headers._fields[i if i >= 0 else ~i][2]
            if not _CALL_ID_RE.fullmatch(value):
                raise RemoteProtocolError(400, f"bad Call-ID: {value[:60]!r}")
            headers.typed["call-id"] = value
        return value

    @property
    def cseq(self) -> CSeq:
        headers = self.headers
        cseq = headers.typed.get("cseq")
        if cseq is None:
            i = (headers._index or _index_of(headers)).get("cseq")
            if i is None:
                raise RemoteProtocolError(400, "missing CSeq")
            value = headers._fields[i if i >= 0 else ~i][2]
            cseq = headers.typed["cseq"] = CSeq.parse(value)
        return cseq

    @property
    def contact(self) -> list[NameAddress]:
        """Contact values; an empty list when there is none."""
        headers = self.headers
        contacts = headers.typed.get("contact")
        if contacts is None:
            i = (headers._index or _index_of(headers)).get("contact", -1)
            if i >= 0:  # one Contact line with one value
                value = headers._fields[i][2]
                if "," not in value:
                    addr = name_addr_fast(value)
                    if addr is not None:
                        contacts = [addr]
            if contacts is None:
                values = headers.values("contact")
                if "" in values:
                    raise RemoteProtocolError(400, "empty item in Contact")
                contacts = [NameAddress.parse(v) for v in values]
            headers.typed["contact"] = contacts
        return contacts

    @property
    def route(self) -> list[NameAddress]:
        return self._cached("route", lambda: [NameAddress.parse(v) for v in self._list("route")])

    @property
    def record_route(self) -> list[NameAddress]:
        return self._cached(
            "record-route",
            lambda: [NameAddress.parse(v) for v in self._list("record-route")],
        )

    @property
    def content_type(self) -> MediaType | None:
        headers = self.headers
        media = headers.typed.get("content-type")
        if media is None:
            i = (headers._index or _index_of(headers)).get("content-type")
            if i is None:
                return None
            value = headers._fields[i if i >= 0 else ~i][2]
            media = headers.typed["content-type"] = MediaType.parse(value)
        return media

    @property
    def content_length(self) -> int:
        return len(self.body)

    @property
    def max_forwards(self) -> int | None:
        return self._cached("max-forwards", lambda: self._number("max-forwards", 255))

    @property
    def expires(self) -> int | None:
        """Expires in seconds; absurdly large values are clamped to 2**32-1 (RFC 4475)."""
        return self._cached("expires", lambda: self._number("expires", None))

    @property
    def require(self) -> frozenset[str]:
        return self._cached("require", lambda: self._tokens("require"))

    @property
    def proxy_require(self) -> frozenset[str]:
        return self._cached("proxy-require", lambda: self._tokens("proxy-require"))

    @property
    def supported(self) -> frozenset[str]:
        return self._cached("supported", lambda: self._tokens("supported"))

    @property
    def unsupported(self) -> frozenset[str]:
        return self._cached("unsupported", lambda: self._tokens("unsupported"))

    @property
    def allow(self) -> frozenset[str]:
        return self._cached("allow", lambda: self._tokens("allow"))

    @property
    def accept(self) -> list[MediaType]:
        return self._cached("accept", lambda: [MediaType.parse(v) for v in self._list("accept")])

    @property
    def user_agent(self) -> str | None:
        return self._single("user-agent")

    # -- helpers ------------------------------------------------------------------------
    def _list(self, key: str) -> list[str]:
        values = self.headers.values(key)
        if "" in values:
            raise RemoteProtocolError(400, f"empty item in {canonical_name(key)}")
        return values

    def _required(self, key: str) -> str:
        value = self.headers.get(key)
        if value is None:
            raise RemoteProtocolError(400, f"missing {canonical_name(key)}")
        return value

    def _number(self, key: str, maximum: int | None) -> int | None:
        value = self.headers.get(key)
        if value is None:
            return None
        if not value.isdigit() or not value.isascii():
            raise RemoteProtocolError(400, f"bad {canonical_name(key)}: {value[:40]!r}")
        digits = value.lstrip("0") or "0"
        number = int(digits) if len(digits) <= 10 else 2**64
        if maximum is not None and number > maximum:
            raise RemoteProtocolError(400, f"{canonical_name(key)} out of range")
        return min(number, 2**32 - 1)

    def _tokens(self, key: str) -> frozenset[str]:
        return parse_tokens(self.headers.values(key))

    # -- serialisation ------------------------------------------------------------------
    def _start_line(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The message on the wire; Content-Length always states the real body length."""
        body = self.body
        length = str(len(body))
        headers = self.headers
        lines = [self._start_line()]
        has_length = False
        for (name, _, value), key in zip(headers._fields, headers._keys, strict=True):
            if key == "content-length":
                if has_length:
                    continue
                has_length = True
                value = length
            lines.append(f"{name}: {value}")
        if not has_length:
            lines.append(f"Content-Length: {length}")
        lines.append("")
        lines.append("")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + body

    def __bytes__(self) -> bytes:
        return self.to_bytes()


class Request(Message):
    """A SIP request. `uri` is parsed from `target` on first use (400 if malformed)."""

    __slots__ = ("_uri", "method", "target", "version")

    def __init__(
        self,
        method: str,
        uri: Uri | str,
        headers: Iterable[tuple[str, str]] | Headers = (),
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        if not TOKEN_RE.fullmatch(method):
            raise LocalProtocolError(f"bad method: {method!r}")
        self.method = method
        if isinstance(uri, str):
            self.target = uri
            self._uri: Uri | None = None
        else:
            self.target = str(uri)
            self._uri = uri
        self.version = version
        self.headers = headers.copy() if isinstance(headers, Headers) else Headers(headers)
        self.body = bytes(body)
        _ensure_length(self.headers, self.body)

    @property
    def uri(self) -> Uri:
        uri = self._uri
        if uri is None:
            if not self.target or any(c in self.target for c in " \t<>"):
                raise RemoteProtocolError(400, f"bad Request-URI: {self.target[:80]!r}")
            uri = self._uri = parse_uri(self.target)
        return uri

    def _start_line(self) -> str:
        return f"{self.method} {self.target} {self.version}"

    def copy(self) -> Request:
        """An independent copy (headers list copied), e.g. to re-send with credentials."""
        req = Request.__new__(Request)
        req.method = self.method
        req.target = self.target
        req._uri = self._uri
        req.version = self.version
        req.headers = self.headers.copy()
        req.body = self.body
        return req

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return (
            self.method == other.method
            and self.target == other.target
            and self.version == other.version
            and self.headers == other.headers
            and self.body == other.body
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target}>"


class Response(Message):
    """A SIP response."""

    __slots__ = ("reason", "status", "version")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] | Headers = (),
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        if not 100 <= status <= 699:
            raise LocalProtocolError(f"bad status code: {status}")
        self.status = status
        self.reason = REASONS.get(status, "Unknown") if reason is None else reason
        if "\r" in self.reason or "\n" in self.reason:
            raise LocalProtocolError("line break in a reason phrase")
        self.version = version
        self.headers = headers.copy() if isinstance(headers, Headers) else Headers(headers)
        self.body = bytes(body)
        _ensure_length(self.headers, self.body)

    def _start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    @property
    def is_provisional(self) -> bool:
        return self.status < 200

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return (
            self.status == other.status
            and self.reason == other.reason
            and self.version == other.version
            and self.headers == other.headers
            and self.body == other.body
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


def _ensure_length(headers: Headers, body: bytes) -> None:
    """Messages we build always carry a Content-Length that matches the body."""
    if "content-length" in headers:
        if headers.get("content-length") != str(len(body)):
            headers.set("Content-Length", str(len(body)))
    else:
        headers.add("Content-Length", str(len(body)))


# ---------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------

_BLANK_LINE = re.compile(rb"\n\r?\n")
_new = object.__new__
_METHODS = frozenset(
    ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO", "PRACK", "UPDATE",
     "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH")
)  # fmt: skip
_CALL_ID_RE = re.compile(
    r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+(?:@[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+)?"
)
_STATUS_LINE = re.compile(r"(SIP/[0-9]+\.[0-9]+) ([1-6][0-9][0-9])(?: (.*))?", re.S | re.I)
_VERSION = re.compile(r"SIP/[0-9]+\.[0-9]+", re.I)

Parsed = Request | Response


def is_keepalive(data: bytes) -> bool:
    """A datagram or chunk made only of CR/LF (RFC 5626 ping/pong), nothing to parse."""
    return not data.strip(b"\r\n")


# One ": " per header line, for map(); a longer header section takes the other paths.
_COLON_SP = (": ",) * 256
_partition = str.partition


def _split_fields_exact(
    lines: list[str], text: str
) -> tuple[list[tuple[str, str, str]], list[str]] | None:
    """The common layout, `Name: value` with one space and no other LWS around the value.

    A few scans of the whole header text rule out tabs and stray spaces, so no value needs
    stripping; None sends the caller to `_split_fields`.
    """
    split = _split_fields_indexed(lines, text)
    return None if split is None else (split[0], split[1])


# Header names in order, as met in the common layout (all valid tokens) -> their lookup
# keys and the layout index (see _LAYOUTS). Peers repeat their layouts, so a message of a
# known layout needs neither a key lookup per name nor the index lookup.
_NAME_LAYOUTS: dict[tuple[str, ...], tuple[list[str], dict[str, int]]] = {}


def _split_fields_indexed(
    lines: list[str], text: str
) -> tuple[list[tuple[str, str, str]], list[str], dict[str, int]] | None:
    """`_split_fields_exact` with the layout index of the keys."""
    if (
        "\t" in text
        or ":  " in text
        or " \r\n" in text
        or text[-1:] == " "
        or len(lines) > len(_COLON_SP)
    ):
        return None
    fields = list(map(_partition, lines, _COLON_SP))
    names = tuple([name for name, sep, _ in fields if sep])
    if len(names) != len(fields):
        return None  # a line without ": "
    layout = _NAME_LAYOUTS.get(names)
    if layout is None:
        cache = _KEY_CACHE
        keys = [cache.get(name) for name in names]
        if not all(keys) and not _fill_keys(fields, keys):  # all(): no compares with None
            return None
        layout = (keys, _layout_index(keys))  # type: ignore[arg-type]
        if len(_NAME_LAYOUTS) >= _LAYOUTS_SIZE:
            _NAME_LAYOUTS.clear()
        _NAME_LAYOUTS[names] = layout  # type: ignore[assignment]
    return fields, list(layout[0]), layout[1]


def _fill_keys(fields: list[tuple[str, str, str]], keys: list[str | None]) -> bool:
    """Keys of names missing from the cache; False for a line without ':' or a bad name."""
    for i, key in enumerate(keys):
        if key is None:
            name, sep, _ = fields[i]
            if not sep or not TOKEN_RE.fullmatch(name):
                return False
            key = keys[i] = header_key(name)
            if len(_KEY_CACHE) < _KEY_CACHE_SIZE:
                _KEY_CACHE[name] = key
    return True


def _split_fields(lines: list[str]) -> tuple[list[tuple[str, str, str]], list[str]] | None:
    """No folding, no space before ':'; None sends the caller to the slow path."""
    parts = [line.partition(":") for line in lines]
    fields = [(name, _SEP, value.strip(" \t")) for name, sep, value in parts if sep]
    if len(fields) != len(parts):
        return None
    cache = _KEY_CACHE
    keys = [cache.get(f[0]) for f in fields]
    if not all(keys) and not _fill_keys(fields, keys):
        return None
    return fields, keys  # type: ignore[return-value]


def _split_fields_slow(lines: list[str]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Unfold continuation lines, allow LWS before ':', and say exactly what is wrong."""
    unfolded: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if not unfolded:
                raise RemoteProtocolError(400, "continuation line after the start line")
            unfolded[-1] = unfolded[-1].rstrip(" \t") + " " + line.lstrip(" \t")
        else:
            unfolded.append(line)
    fields: list[tuple[str, str, str]] = []
    keys: list[str] = []
    for line in unfolded:
        name, sep, value = line.partition(":")
        name = name.rstrip(" \t")
        if not sep or not TOKEN_RE.fullmatch(name):
            raise RemoteProtocolError(400, f"malformed header line: {line[:60]!r}")
        fields.append((name, _SEP, value.strip(" \t")))
        keys.append(_key(name))
    return fields, keys


def _parse_head(head: bytes, limits: Limits) -> tuple[Parsed, list[str]]:
    """Start line and header fields of one message (without its body)."""
    text = head.decode("utf-8", "surrogateescape")
    lines = text.split("\r\n")
    crlfs = len(lines) - 1
    if text.count("\n") != crlfs or text.count("\r") != crlfs:
        # LF-only or mixed line ends: tolerated; a CR anywhere else is not.
        lines = text.replace("\r\n", "\n").split("\n")
        if any("\r" in line for line in lines):
            raise RemoteProtocolError(400, "bare CR in the header section")
    return _head_from_lines(lines, text, limits)


def _head_from_lines(lines: list[str], text: str, limits: Limits) -> tuple[Parsed, list[str]]:
    """The message object from the header section's lines (`lines` is consumed)."""
    start = lines[0]
    del lines[0]
    if len(lines) > limits.max_headers:
        raise RemoteProtocolError(513, "too many header fields")
    if len(text) > limits.max_line_length and max(map(len, lines)) > limits.max_line_length:
        raise RemoteProtocolError(513, "header line too long")
    indexed = _split_fields_indexed(lines, text)
    if indexed is not None:
        fields, keys, index = indexed
    else:
        split = _split_fields(lines)
        fields, keys = split if split is not None else _split_fields_slow(lines)
        index = None
    headers = _new(Headers)
    headers._fields = fields
    headers._keys = keys
    headers._index = index
    headers.typed = {}

    if start[:4] in ("SIP/", "sip/"):
        m = _STATUS_LINE.fullmatch(start)
        if m is None:
            raise RemoteProtocolError(400, f"bad status line: {start[:80]!r}")
        msg: Parsed = _new(Response)
        msg.version = m.group(1).upper()
        msg.status = int(m.group(2))
        msg.reason = m.group(3) or ""
    else:
        # Liberal about runs of SP (RFC 4475 3.1.2.9/10): the pieces are method, target and
        # version; whatever else is wrong shows when the Request-URI is parsed.
        parts = start.split(" ")
        if len(parts) != 3:
            parts = [p for p in parts if p]
            if len(parts) > 3:
                parts = [parts[0], " ".join(parts[1:-1]), parts[-1]]
        if len(parts) != 3 or (parts[0] not in _METHODS and not TOKEN_RE.fullmatch(parts[0])):
            raise RemoteProtocolError(400, f"bad request line: {start[:80]!r}")
        version = parts[2]
        if version != "SIP/2.0":
            if not _VERSION.fullmatch(version):
                raise RemoteProtocolError(400, f"bad SIP version: {version[:20]!r}")
            version = version.upper()
        msg = _new(Request)
        msg.method = parts[0]
        msg.target = parts[1]
        msg._uri = None
        msg.version = version
    msg.headers = headers
    msg.body = b""
    return msg, keys


def _content_length(headers: Headers, limits: Limits, msg: Parsed) -> int | None:
    keys = headers._keys
    count = keys.count("content-length")
    if count == 0:
        return None
    value = headers._fields[keys.index("content-length")][2]
    if count > 1 and len(set(headers.getall("content-length"))) > 1:
        raise RemoteProtocolError(400, "conflicting Content-Length headers", message=msg)
    if not value.isdigit() or not value.isascii():
        raise RemoteProtocolError(400, f"bad Content-Length: {value[:20]!r}", message=msg)
    length = int(value[:12])
    if length > limits.max_body_size:
        raise RemoteProtocolError(413, "Request Entity Too Large", message=msg)
    return length


def _head_general(data: bytes, limits: Limits) -> tuple[Parsed, list[str], int]:
    """The header section wherever an empty line (CRLF or LF) ends it; and the body start."""
    m = _BLANK_LINE.search(data)
    if m is None:
        raise RemoteProtocolError(400, "no end of the header section")
    end = m.start()
    if end and data[end - 1] == 13:  # b"\r"
        end -= 1
    msg, keys = _parse_head(data[:end], limits)
    return msg, keys, m.end()


def parse_datagram(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Parsed:
    """Parse one message from a UDP datagram.

    Without Content-Length the body is the rest of the datagram (RFC 3261 18.3); octets
    beyond Content-Length are ignored; fewer than announced is a 400.
    """
    if len(data) > limits.max_message_size:
        raise RemoteProtocolError(513, "Message Too Large")
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n")
    msg = None
    if end >= 0:
        # CRLF throughout (checked by counting): the first empty line ends the header section.
        text = data[:end].decode("utf-8", "surrogateescape")
        lines = text.split("\r\n")
        joined = "".join(lines)  # cheaper than counting CRs and LFs in `text`
        if "\r" not in joined and "\n" not in joined:
            msg, _ = _head_from_lines(lines, text, limits)
            body_start = end + 4
    if msg is None:  # LF-only or mixed line ends
        msg, _, body_start = _head_general(data, limits)
    headers = msg.headers
    i = (headers._index or _index_of(headers)).get("content-length", -1)
    if i < 0:
        length = _content_length(headers, limits, msg)  # none, or several to compare
        if length is None:
            msg.body = data[body_start:]
            return msg
    else:
        value = headers._fields[i][2]
        if value.isdigit() and value.isascii() and len(value) < 10:
            length = int(value)
            if length > limits.max_body_size:
                raise RemoteProtocolError(413, "Request Entity Too Large", message=msg)
        else:
            length = _content_length(headers, limits, msg)
    body = data[body_start : body_start + length]  # type: ignore[operator]
    if len(body) < length:  # type: ignore[operator]
        raise RemoteProtocolError(400, "body shorter than Content-Length", message=msg)
    msg.body = body
    return msg


@dataclass(frozen=True)
class KeepAlive:
    """CRLFs between messages on a stream (RFC 5626 4.4.1).

    `ping` is True for a double CRLF, which the transport answers with a single CRLF
    (a pong); a single CRLF is a pong (or padding) and needs no answer.
    """

    ping: bool


class StreamParser:
    """Frames SIP messages on a TCP/TLS byte stream by Content-Length.

    Feed it bytes as they arrive; it returns the complete messages and keep-alives and holds
    partial data back. After a framing error the stream cannot be resynchronised, so the
    parser raises the same RemoteProtocolError on every later call: close the connection.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._buf = bytearray()
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Parsed | KeepAlive]:
        if self._error is not None:
            raise self._error
        self._buf += data
        try:
            return self._drain()
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def _drain(self) -> list[Parsed | KeepAlive]:
        out: list[Parsed | KeepAlive] = []
        buf = self._buf
        limits = self.limits
        while buf:
            if buf[0] in (13, 10):
                n = len(buf) - len(buf.lstrip(b"\r\n"))
                run = bytes(buf[:n])
                del buf[:n]
                out.append(KeepAlive(ping=run.count(b"\n") >= 2))
                continue
            m = _BLANK_LINE.search(buf)
            if m is None:
                if len(buf) > limits.max_message_size:
                    raise RemoteProtocolError(513, "header section too large")
                break
            end = m.start()
            if end and buf[end - 1] == 13:
                end -= 1
            if end > limits.max_message_size:
                raise RemoteProtocolError(513, "header section too large")
            msg, _ = _parse_head(bytes(buf[:end]), limits)
            length = _content_length(msg.headers, limits, msg)
            if length is None:
                raise RemoteProtocolError(400, "missing Content-Length on a stream", message=msg)
            body_end = m.end() + length
            if len(buf) < body_end:
                break
            msg.body = bytes(buf[m.end() : body_end])
            del buf[:body_end]
            out.append(msg)
        return out


# ---------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, object]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> Response:
    """A response to `request` per RFC 3261 8.2.6: Via (all, in order), From, To, Call-ID and
    CSeq copied; `to_tag` added to To unless it already has one (never on 100 Trying);
    Timestamp echoed on 100.
    """
    if not isinstance(request, Request):
        raise LocalProtocolError("make_response needs a Request")
    src = request.headers
    fields: list[tuple[str, str]] = [("Via", v) for v in src.getall("via")]
    from_value = src.get("from")
    to_value = src.get("to")
    call_id = src.get("call-id")
    cseq = src.get("cseq")
    if from_value is not None:
        fields.append(("From", from_value))
    if to_value is not None:
        if to_tag and status != 100 and not _has_tag(request):
            to_value = f"{to_value};tag={to_tag}"
        fields.append(("To", to_value))
    if call_id is not None:
        fields.append(("Call-ID", call_id))
    if cseq is not None:
        fields.append(("CSeq", cseq))
    if status == 100:
        timestamp = src.get("timestamp")
        if timestamp is not None:
            fields.append(("Timestamp", timestamp))
    for name, value in headers:
        fields.append((name, _field_text(value)))
    if content_type is not None:
        fields.append(("Content-Type", content_type))
    fields.append(("Content-Length", str(len(body))))
    return Response(status, reason, fields, body)


def _has_tag(request: Request) -> bool:
    try:
        return request.to.tag is not None
    except RemoteProtocolError:  # answering a malformed To (with a 400): leave it alone
        return True


def build_request(
    method: str,
    uri: Uri | str,
    *,
    via: Via | str | Iterable[Via | str],
    from_: NameAddress | str,
    to: NameAddress | str,
    call_id: str,
    cseq: int | CSeq,
    max_forwards: int = 70,
    contact: NameAddress | str | Iterable[NameAddress | str] | None = None,
    route: Iterable[NameAddress | str] = (),
    headers: Iterable[tuple[str, object]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> Request:
    """A request with the header fields in the usual order, ready for `to_bytes()`."""
    fields: list[tuple[str, str]] = []
    vias = [via] if isinstance(via, Via | str) else list(via)
    for v in vias:
        fields.append(("Via", _field_text(v)))
    fields.append(("Max-Forwards", str(max_forwards)))
    for r in route:
        fields.append(("Route", _field_text(r)))
    fields.append(("From", _field_text(from_)))
    fields.append(("To", _field_text(to)))
    fields.append(("Call-ID", _field_text(call_id)))
    number = cseq if isinstance(cseq, CSeq) else CSeq(cseq, method)
    fields.append(("CSeq", str(number)))
    if contact is not None:
        contacts = [contact] if isinstance(contact, NameAddress | str) else list(contact)
        for c in contacts:
            fields.append(("Contact", _field_text(c)))
    for name, value in headers:
        fields.append((name, _field_text(value)))
    if content_type is not None:
        fields.append(("Content-Type", content_type))
    fields.append(("Content-Length", str(len(body))))
    return Request(method, uri, fields, body)


# ---------------------------------------------------------------------------------------
# Validation (what a UAS checks before acting on a request, RFC 3261 8.2)
# ---------------------------------------------------------------------------------------

_SINGLE = ("from", "to", "call-id", "cseq", "max-forwards", "content-type")


def _check_common(msg: Parsed) -> None:
    h = msg.headers
    for key in ("from", "to", "call-id", "cseq"):
        if key not in h:
            raise RemoteProtocolError(400, f"missing {canonical_name(key)}", message=msg)
    for key in _SINGLE:
        if h.count(key) > 1:
            raise RemoteProtocolError(400, f"more than one {canonical_name(key)}", message=msg)
    try:
        if not msg.via:
            raise RemoteProtocolError(400, "missing Via")
        msg.from_.uri  # noqa: B018 - parse for the side effect of validation
        msg.to.uri  # noqa: B018
        msg.cseq  # noqa: B018
        msg.max_forwards  # noqa: B018
        msg.content_type  # noqa: B018
        for c in msg.contact:
            c.uri  # noqa: B018
    except RemoteProtocolError as exc:
        exc.message = msg
        raise


def validate_request(
    request: Request,
    *,
    methods: Collection[str] | None = None,
    supported: Collection[str] = (),
    schemes: Collection[str] = ("sip", "sips", "tel"),
    accept: Collection[str] | None = None,
    answer_type: str | None = None,
) -> None:
    """Raise RemoteProtocolError with the status a UAS answers if `request` is unacceptable.

    `methods`: what we implement (else 501); `supported`: option tags we understand (else
    420 listing the others); `schemes`: Request-URI schemes (else 416); `accept`: body types
    we can read (else 415); `answer_type`: the body type our answer would carry, checked
    against the request's Accept (else 406).
    """
    if request.version != "SIP/2.0":
        raise RemoteProtocolError(505, "Version Not Supported", message=request)
    _check_common(request)
    try:
        if methods is not None and request.method not in methods:
            allow = ", ".join(sorted(methods))
            raise RemoteProtocolError(501, "Not Implemented", headers=[("Allow", allow)])
        if request.cseq.method != request.method:
            raise RemoteProtocolError(400, "CSeq method does not match the request")
        uri = request.uri
        if uri.scheme not in schemes:
            raise RemoteProtocolError(416, "Unsupported URI Scheme")
        if isinstance(uri, SipUri) and uri.headers:
            raise RemoteProtocolError(400, "headers in the Request-URI")
        if request.method not in ("ACK", "CANCEL"):
            unknown = sorted(request.require - set(supported))
            if unknown:
                raise RemoteProtocolError(
                    420, "Bad Extension", headers=[("Unsupported", ", ".join(unknown))]
                )
        if accept is not None and request.body:
            ctype = request.content_type
            encoding = request.headers.get("content-encoding")
            if (
                ctype is None
                or ctype.mime not in {a.lower() for a in accept}
                or (encoding and encoding.lower() != "identity")
            ):
                raise RemoteProtocolError(
                    415,
                    "Unsupported Media Type",
                    headers=[("Accept", ", ".join(accept)), ("Accept-Encoding", "identity")],
                )
        if answer_type is not None and "accept" in request.headers:
            if not any(rng.matches(answer_type) for rng in request.accept):
                raise RemoteProtocolError(406, "Not Acceptable")
    except RemoteProtocolError as exc:
        exc.message = request
        raise


def validate_response(response: Response) -> None:
    """Raise RemoteProtocolError if a UAC must discard `response` (RFC 3261 8.1.3.3)."""
    if response.version != "SIP/2.0":
        raise RemoteProtocolError(505, "Version Not Supported", message=response)
    _check_common(response)
    if len(response.via) != 1:
        raise RemoteProtocolError(400, "response with more than one Via", message=response)
