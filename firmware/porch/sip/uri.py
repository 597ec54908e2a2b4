"""SIP, SIPS and tel URIs (RFC 3261 section 19.1, RFC 3966), and any other scheme as opaque.

Components are kept %-decoded, because RFC 3261 19.1.4 says an escaped character and the
character itself are the same thing; `str()` gives back the exact text a URI was parsed
from, and for a URI built in code it escapes what the grammar does not allow literally.
Equality (`==`, `uri_equal`) follows the comparison rules of RFC 3261 19.1.4.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import quote, unquote

from porch.sip.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "AbsoluteUri",
    "SipUri",
    "TelUri",
    "Uri",
    "parse_uri",
    "uri_equal",
]

# Character classes of RFC 3261 section 25.1 (escaped = "%" HEX HEX).
_ESC = r"%[0-9A-Fa-f]{2}"
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_USER_RE = re.compile(rf"(?:[{_UNRESERVED}&=+$,;?/]|{_ESC})+")
_PASSWORD_RE = re.compile(rf"(?:[{_UNRESERVED}&=+$,]|{_ESC})*")
_PARAMCHARS_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/:&+$]|{_ESC})+")
_HNV_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESC})*")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_\-.]*[A-Za-z0-9_\-.])?")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_OPAQUE_RE = re.compile(r"[^\x00-\x20\x7f<>\"]+")
_TEL_NUMBER_RE = re.compile(r"\+?[0-9A-Fa-f*#\-.()]+")
_TEL_SEPARATORS = str.maketrans("", "", "-.()")

# The structure of a sip/sips URI after "sip:"; each part is checked separately below.
_SIP_RE = re.compile(
    r"(?:(?P<user>[^:@]*)(?::(?P<pw>[^@]*))?@)?"
    r"(?P<host>\[[^\]]*\]|[^:;?\[\]]*)"
    r"(?::(?P<port>[0-9]+))?"
    r"(?P<params>;[^?]*)?"
    r"(?:\?(?P<headers>.*))?",
    re.S,
)

# The common case in one go: no %-escapes, no IPv6 reference, no headers.
_PCHARS = rf"[{_UNRESERVED}\[\]/:&+$]+"
_SIP_FAST_RE = re.compile(
    rf"(?:([{_UNRESERVED}&=+$,;?/]++)(?::([{_UNRESERVED}&=+$,]*+))?@)?"
    r"([A-Za-z0-9][A-Za-z0-9_\-.]*+)"  # the same language as _HOSTNAME_RE, without backtracking
    r"(?::([0-9]{1,5}))?"
    rf"(?:;transport=({_PCHARS}+))?"  # the usual first parameter, without a split for it
    rf"((?:;{_PCHARS}+(?:={_PCHARS}+)?)*+)"  # possessive: what follows needs none of it
)
_new = object.__new__

# Safe sets for escaping when building: what each component may carry literally.
_SAFE_USER = "!~*'()&=+$,;?/"
_SAFE_PASSWORD = "!~*'()&=+$,"
_SAFE_PARAM = "!~*'()[]/:&+$"
_SAFE_HEADER = "!~*'()[]/?:+$"

# uri-parameters that make two URIs differ when only one of them has it (19.1.4).
_MUST_MATCH_PARAMS = ("user", "ttl", "method", "maddr", "transport")

_MISSING = object()


def _bad(what: str, text: str) -> RemoteProtocolError:
    return RemoteProtocolError(400, f"bad {what}: {text[:80]!r}")


def _unescape(text: str) -> str:
    return unquote(text, errors="surrogateescape") if "%" in text else text


def _escape(text: str, safe: str) -> str:
    return quote(text, safe=safe, errors="surrogateescape")


class Uri:
    """Common base of the URI kinds; `scheme` is always lower case."""

    __slots__ = ("_text", "scheme")

    scheme: str

    def __str__(self) -> str:
        text = self._text
        if text is None:
            text = self._text = self._render()
        return text

    def _render(self) -> str:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class SipUri(Uri):
    """A sip: or sips: URI. `host` has no brackets, even for IPv6; `port` is None if absent.

    `params` maps lower-case parameter names to decoded values (None for a parameter without
    a value such as `lr`); `headers` is the ordered list of (name, value) after `?`.
    """

    __slots__ = ("headers", "host", "params", "password", "port", "user")

    def __init__(
        self,
        host: str,
        user: str | None = None,
        *,
        scheme: str = "sip",
        password: str | None = None,
        port: int | None = None,
        params: dict[str, str | None] | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        if password is not None and user is None:
            raise LocalProtocolError("a SIP URI password needs a user")
        self.scheme = scheme.lower()
        self.user = user
        self.password = password
        self.host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        self.port = port
        self.params: dict[str, str | None] = (
            {k.lower(): v for k, v in params.items()} if params else {}
        )
        self.headers: list[tuple[str, str]] = list(headers) if headers else []
        self._text: str | None = None

    # -- convenience --------------------------------------------------------------------
    @property
    def secure(self) -> bool:
        return self.scheme == "sips"

    @property
    def transport(self) -> str | None:
        value = self.params.get("transport")
        return value.lower() if value else None

    @property
    def lr(self) -> bool:
        return "lr" in self.params

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if self.is_ipv6 else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def aor(self) -> str:
        """scheme:user@host, the address-of-record form (no port, parameters or headers)."""
        host = f"[{self.host}]" if self.is_ipv6 else self.host
        user = f"{_escape(self.user, _SAFE_USER)}@" if self.user is not None else ""
        return f"{self.scheme}:{user}{host}"

    def replace(self, **changes: Any) -> SipUri:
        """A copy with some components changed (same keywords as the constructor)."""
        fields: dict[str, Any] = {
            "host": self.host,
            "user": self.user,
            "scheme": self.scheme,
            "password": self.password,
            "port": self.port,
            "params": dict(self.params),
            "headers": list(self.headers),
        }
        fields.update(changes)
        return SipUri(**fields)

    # -- text ---------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> SipUri:
        colon = text.find(":")
        scheme = text[:colon].lower()
        if colon < 0 or scheme not in ("sip", "sips"):
            raise _bad("SIP URI", text)
        uri = _sip_fast(text, colon + 1, scheme)
        return uri if uri is not None else cls._parse_general(text, colon + 1, scheme)

    @classmethod
    def _parse_general(cls, text: str, start: int, scheme: str) -> SipUri:
        """Every part checked on its own: escapes, IPv6 references, URI headers."""
        colon = start - 1
        m = _SIP_RE.fullmatch(text, colon + 1)
        if m is None:
            raise _bad("SIP URI", text)
        user, pw, host, port, params, headers = m.group(
            "user", "pw", "host", "port", "params", "headers"
        )
        uri = cls.__new__(cls)
        uri.scheme = scheme
        uri._text = text
        if user is not None:
            if not _USER_RE.fullmatch(user):
                raise _bad("user part", text)
            uri.user = _unescape(user)
            if pw is not None:
                if not _PASSWORD_RE.fullmatch(pw):
                    raise _bad("password", text)
                uri.password = _unescape(pw)
            else:
                uri.password = None
        else:
            uri.user = uri.password = None
        if host.startswith("["):
            try:
                ipaddress.IPv6Address(host[1:-1])
            except ValueError:
                raise _bad("IPv6 reference", text) from None
            uri.host = host[1:-1]
        elif _HOSTNAME_RE.fullmatch(host):
            uri.host = host
        else:
            raise _bad("host", text)
        if port is not None:
            if len(port) > 5 or int(port) > 65535:
                raise _bad("port", text)
            uri.port = int(port)
        else:
            uri.port = None
        uri.params = _parse_uri_params(params, text) if params else {}
        uri.headers = _parse_uri_headers(headers, text) if headers is not None else []
        return uri

    def _render(self) -> str:
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(_escape(self.user, _SAFE_USER))
            if self.password is not None:
                parts += (":", _escape(self.password, _SAFE_PASSWORD))
            parts.append("@")
        parts.append(self.hostport)
        for name, value in self.params.items():
            parts += (";", _escape(name, _SAFE_PARAM))
            if value is not None:
                parts += ("=", _escape(value, _SAFE_PARAM))
        if self.headers:
            parts.append("?")
            parts.append(
                "&".join(
                    f"{_escape(n, _SAFE_HEADER)}={_escape(v, _SAFE_HEADER)}"
                    for n, v in self.headers
                )
            )
        return "".join(parts)

    # -- comparison (RFC 3261 19.1.4) ---------------------------------------------------
    def _host_key(self) -> str:
        if ":" in self.host:
            try:
                return ipaddress.IPv6Address(self.host).compressed
            except ValueError:
                return self.host.lower()
        return self.host.lower()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SipUri):
            return NotImplemented
        if (
            self.scheme != other.scheme
            or self.user != other.user
            or self.password != other.password
            or self.port != other.port
            or self._host_key() != other._host_key()
        ):
            return False
        mine, theirs = self.params, other.params
        for name in _MUST_MATCH_PARAMS:
            a = mine.get(name, _MISSING)
            b = theirs.get(name, _MISSING)
            if (a is _MISSING) != (b is _MISSING):
                return False
            if a is not _MISSING and (a or "").lower() != (b or "").lower():  # type: ignore[union-attr]
                return False
        for name, a in mine.items():
            if name in theirs and (a or "").lower() != (theirs[name] or "").lower():
                return False
        return {n.lower(): v for n, v in self.headers} == {n.lower(): v for n, v in other.headers}

    def __hash__(self) -> int:
        return hash((self.scheme, self.user, self._host_key(), self.port))


class TelUri(Uri):
    """A tel: URI (RFC 3966): the number as written, and its parameters."""

    __slots__ = ("number", "params")

    def __init__(self, number: str, params: dict[str, str | None] | None = None) -> None:
        self.scheme = "tel"
        self.number = number
        self.params: dict[str, str | None] = (
            {k.lower(): v for k, v in params.items()} if params else {}
        )
        self._text: str | None = None

    @property
    def is_global(self) -> bool:
        return self.number.startswith("+")

    @property
    def digits(self) -> str:
        """The number without visual separators, for comparison and dialling."""
        return self.number.translate(_TEL_SEPARATORS).lower()

    @classmethod
    def parse(cls, text: str) -> TelUri:
        if text[:4].lower() != "tel:":
            raise _bad("tel URI", text)
        number, _, rest = text[4:].partition(";")
        if not _TEL_NUMBER_RE.fullmatch(number):
            raise _bad("telephone number", text)
        uri = cls(number, _parse_uri_params(";" + rest, text) if rest else None)
        uri._text = text
        return uri

    def _render(self) -> str:
        parts = ["tel:", self.number]
        for name, value in self.params.items():
            parts += (";", _escape(name, _SAFE_PARAM))
            if value is not None:
                parts += ("=", _escape(value, _SAFE_PARAM))
        return "".join(parts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TelUri):
            return NotImplemented
        if self.digits != other.digits or self.params.keys() != other.params.keys():
            return False
        return all(
            (v or "").lower() == (other.params[k] or "").lower() for k, v in self.params.items()
        )

    def __hash__(self) -> int:
        return hash(("tel", self.digits))


class AbsoluteUri(Uri):
    """A URI of a scheme we do not interpret (http:, urn:, isbn:...), kept opaque."""

    __slots__ = ("opaque",)

    def __init__(self, scheme: str, opaque: str) -> None:
        self.scheme = scheme.lower()
        self.opaque = opaque
        self._text: str | None = None

    @classmethod
    def parse(cls, text: str) -> AbsoluteUri:
        scheme, colon, opaque = text.partition(":")
        if not colon or not _SCHEME_RE.fullmatch(scheme) or not _OPAQUE_RE.fullmatch(opaque):
            raise _bad("URI", text)
        uri = cls(scheme, opaque)
        uri._text = text
        return uri

    def _render(self) -> str:
        return f"{self.scheme}:{self.opaque}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AbsoluteUri):
            return NotImplemented
        return self.scheme == other.scheme and self.opaque == other.opaque

    def __hash__(self) -> int:
        return hash((self.scheme, self.opaque))


def _parse_uri_params(text: str, whole: str) -> dict[str, str | None]:
    """';a=b;c' -> {'a': 'b', 'c': None}, names lower-cased, values %-decoded."""
    params: dict[str, str | None] = {}
    for item in text[1:].split(";"):
        name, eq, value = item.partition("=")
        if not _PARAMCHARS_RE.fullmatch(name) or (eq and not _PARAMCHARS_RE.fullmatch(value)):
            raise _bad("URI parameter", whole)
        params[_unescape(name).lower()] = _unescape(value) if eq else None
    return params


def _parse_uri_headers(text: str, whole: str) -> list[tuple[str, str]]:
    headers = []
    for item in text.split("&"):
        name, eq, value = item.partition("=")
        if not eq or not name or not _HNV_RE.fullmatch(name) or not _HNV_RE.fullmatch(value):
            raise _bad("URI header", whole)
        headers.append((_unescape(name), _unescape(value)))
    return headers


def _sip_fast(text: str, start: int, scheme: str) -> SipUri | None:
    """A sip/sips URI without escapes, IPv6 or headers, whose every part one pattern checks."""
    m = _SIP_FAST_RE.fullmatch(text, start)
    if m is None:
        return None
    uri = _new(SipUri)
    uri.scheme = scheme
    uri._text = text
    uri.user, uri.password, uri.host, port, transport, params = m.groups()
    if port is None:
        uri.port = None
    else:
        uri.port = int(port)
        if uri.port > 65535:
            raise _bad("port", text)
    uri.headers = []
    uri.params = {} if transport is None else {"transport": transport}
    if params:  # inserted in order after transport, as the general reader does
        names = _PARAM_NAMES
        for item in params[1:].split(";"):
            name, eq, value = item.partition("=")
            uri.params[names.get(name) or name.lower()] = value if eq else None
    return uri


# URI parameter names as usually written -> lower case (saves a lower() per parameter).
_PARAM_NAMES = {
    name: name.lower()
    for name in (
        "transport", "user", "method", "ttl", "maddr", "lr", "ob", "gr", "line", "rinstance"
    )
}  # fmt: skip


def parse_uri(text: str) -> Uri:
    """Parse any URI: sip/sips and tel get their own types, other schemes stay opaque.

    Raises RemoteProtocolError(400) for text that is not a URI at all.
    """
    if text[:4] == "sip:":  # the usual case, without lower-casing the scheme first
        uri = _sip_fast(text, 4, "sip")
        return uri if uri is not None else SipUri._parse_general(text, 4, "sip")
    scheme = text[:5].lower()
    if scheme.startswith(("sip:", "sips:")):
        return SipUri.parse(text)
    if scheme.startswith("tel:"):
        return TelUri.parse(text)
    return AbsoluteUri.parse(text)


def uri_equal(a: Uri | str, b: Uri | str) -> bool:
    """RFC 3261 19.1.4 equivalence; strings are parsed first (a bad one compares unequal)."""
    try:
        ua = parse_uri(a) if isinstance(a, str) else a
        ub = parse_uri(b) if isinstance(b, str) else b
    except RemoteProtocolError:
        return False
    return ua == ub
