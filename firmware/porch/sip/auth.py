"""HTTP Digest authentication for SIP (RFC 3261 22, RFC 7616, RFC 8760): client and server.

The client answers 401/407 challenges with the strongest algorithm offered (SHA-512-256,
SHA-256, then MD5, each also as -sess), qop=auth or auth-int, and counts its nonces. A
challenge with stale=true only means "same password, fresh nonce" and is never counted as a
failure; any other challenge to credentials we just sent means the password was refused.

The server issues nonces and checks credentials, for peer-to-peer calls and for tests.
Randomness and time come in from the caller (cnonce/nonce factories, `now`), so both sides
are deterministic under test.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from porch.sip.errors import LocalProtocolError, RemoteProtocolError, SipError
from porch.sip.headers import quote_string, unquote_string
from porch.sip.message import Request, Response, make_response
from porch.sip.uri import uri_equal

__all__ = [
    "ALGORITHMS",
    "AuthError",
    "AuthResult",
    "AuthenticationFailed",
    "Challenge",
    "Credentials",
    "DigestClient",
    "DigestServer",
    "digest_response",
    "parse_challenge",
    "parse_credentials",
]

# Algorithm name (upper case) -> (hashlib name, session variant). Stronger first.
ALGORITHMS: dict[str, tuple[str, bool]] = {
    "SHA-512-256": ("sha512_256", False),
    "SHA-512-256-SESS": ("sha512_256", True),
    "SHA-256": ("sha256", False),
    "SHA-256-SESS": ("sha256", True),
    "MD5": ("md5", False),
    "MD5-SESS": ("md5", True),
}
_STRENGTH = {"sha512_256": 3, "sha256": 2, "md5": 1}
_CANONICAL_ALG = {
    "SHA-512-256": "SHA-512-256",
    "SHA-512-256-SESS": "SHA-512-256-sess",
    "SHA-256": "SHA-256",
    "SHA-256-SESS": "SHA-256-sess",
    "MD5": "MD5",
    "MD5-SESS": "MD5-sess",
}


class AuthError(SipError):
    """No challenge we can answer (unknown scheme or algorithm)."""


class AuthenticationFailed(AuthError):
    """The server refused our credentials (not just a stale nonce): stop retrying."""


def _hash(algorithm: str, text: str | bytes) -> str:
    name = ALGORITHMS[algorithm.upper()][0]
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    return hashlib.new(name, data).hexdigest()


def digest_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None = None,
    nc: int | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The `response` value of RFC 7616 section 3.4.1 (RFC 2069 form when qop is None)."""
    alg = algorithm.upper()
    if alg not in ALGORITHMS:
        raise LocalProtocolError(f"unknown digest algorithm {algorithm!r}")
    ha1 = _hash(alg, f"{username}:{realm}:{password}")
    if ALGORITHMS[alg][1]:
        if cnonce is None:
            raise LocalProtocolError("-sess algorithms need a cnonce")
        ha1 = _hash(alg, f"{ha1}:{nonce}:{cnonce}")
    if qop == "auth-int":
        ha2 = _hash(alg, f"{method}:{uri}:{_hash(alg, body)}")
    else:
        ha2 = _hash(alg, f"{method}:{uri}")
    if qop is None:
        return _hash(alg, f"{ha1}:{nonce}:{ha2}")
    if nc is None or cnonce is None:
        raise LocalProtocolError("qop needs nc and cnonce")
    return _hash(alg, f"{ha1}:{nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}")


# ---------------------------------------------------------------------------------------
# Header syntax
# ---------------------------------------------------------------------------------------

_SCHEME_RE = re.compile(r"[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)(?:[ \t]+|$)")
_AUTH_PARAM_RE = re.compile(
    r"[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*=[ \t]*"
    r"(\"(?:[^\"\\]|\\.)*\"|[^\s,\"]*)[ \t]*(?:,|$)",
    re.S,
)


def _parse_auth_header(value: str) -> tuple[str, dict[str, str]]:
    """'Digest a="b", c=d' -> ('Digest', {'a': 'b', 'c': 'd'}); names lower-cased."""
    m = _SCHEME_RE.match(value)
    if m is None:
        raise RemoteProtocolError(400, f"bad authentication header: {value[:60]!r}")
    scheme = m.group(1)
    params: dict[str, str] = {}
    pos = m.end()
    end = len(value)
    while pos < end:
        p = _AUTH_PARAM_RE.match(value, pos)
        if p is None or p.end() == pos:
            raise RemoteProtocolError(400, f"bad authentication parameters: {value[:60]!r}")
        params[p.group(1).lower()] = unquote_string(p.group(2))
        pos = p.end()
    return scheme, params


@dataclass(frozen=True)
class Challenge:
    """One WWW-Authenticate / Proxy-Authenticate challenge."""

    scheme: str
    realm: str
    nonce: str
    algorithm: str = "MD5"  # upper case, e.g. 'SHA-256-SESS'
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    userhash: bool = False
    proxy: bool = False
    params: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def supported(self) -> bool:
        return (
            self.scheme.lower() == "digest"
            and self.algorithm in ALGORITHMS
            and (not self.qop or "auth" in self.qop or "auth-int" in self.qop)
        )

    @property
    def strength(self) -> int:
        return _STRENGTH[ALGORITHMS[self.algorithm][0]] if self.supported else 0

    @property
    def header_name(self) -> str:
        """Where the answer goes: Authorization or Proxy-Authorization."""
        return "Proxy-Authorization" if self.proxy else "Authorization"


def parse_challenge(value: str, *, proxy: bool = False) -> Challenge:
    scheme, params = _parse_auth_header(value)
    qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
    return Challenge(
        scheme=scheme,
        realm=params.get("realm", ""),
        nonce=params.get("nonce", ""),
        algorithm=params.get("algorithm", "MD5").upper(),
        qop=qop,
        opaque=params.get("opaque"),
        stale=params.get("stale", "").lower() == "true",
        userhash=params.get("userhash", "").lower() == "true",
        proxy=proxy,
        params=params,
    )


@dataclass(frozen=True)
class Credentials:
    """An Authorization / Proxy-Authorization value."""

    scheme: str
    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str | None = None
    cnonce: str | None = None
    nc: int | None = None
    qop: str | None = None
    opaque: str | None = None
    userhash: bool = False

    def __str__(self) -> str:
        parts = [
            f"username={quote_string(self.username)}",
            f"realm={quote_string(self.realm)}",
            f"nonce={quote_string(self.nonce)}",
            f"uri={quote_string(self.uri)}",
            f"response={quote_string(self.response)}",
        ]
        if self.algorithm is not None:
            parts.append(f"algorithm={_CANONICAL_ALG.get(self.algorithm, self.algorithm)}")
        if self.cnonce is not None:
            parts.append(f"cnonce={quote_string(self.cnonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={quote_string(self.opaque)}")
        if self.qop is not None:
            parts.append(f"qop={self.qop}")
            parts.append(f"nc={self.nc:08x}")
        if self.userhash:
            parts.append("userhash=true")
        return f"{self.scheme} " + ", ".join(parts)


def parse_credentials(value: str) -> Credentials:
    scheme, params = _parse_auth_header(value)
    nc_text = params.get("nc")
    nc = None
    if nc_text is not None:
        if not re.fullmatch(r"[0-9A-Fa-f]{8}", nc_text):
            raise RemoteProtocolError(400, "bad nc in credentials")
        nc = int(nc_text, 16)
    return Credentials(
        scheme=scheme,
        username=params.get("username", ""),
        realm=params.get("realm", ""),
        nonce=params.get("nonce", ""),
        uri=params.get("uri", ""),
        response=params.get("response", ""),
        algorithm=params["algorithm"].upper() if "algorithm" in params else None,
        cnonce=params.get("cnonce"),
        nc=nc,
        qop=params.get("qop"),
        opaque=params.get("opaque"),
        userhash=params.get("userhash", "").lower() == "true",
    )


def _default_cnonce() -> str:
    return secrets.token_hex(16)


# ---------------------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------------------


class DigestClient:
    """Answers challenges for one account.

    `respond(request, response)` returns the header fields to add to a copy of `request`
    (with a new CSeq and branch, which is the UA's business). `authorize(request)` gives
    credentials for a later request from the last challenge of each realm (nc counts up),
    so re-REGISTERs need no extra round trip; if the server has meanwhile dropped that
    nonce, its new challenge is answered once more even without stale=true. `cnonce` makes
    the client deterministic in tests; `prefer_auth_int` picks qop=auth-int when a server
    offers both.
    """

    def __init__(
        self,
        username: str,
        password: str,
        *,
        cnonce: Callable[[], str] = _default_cnonce,
        prefer_auth_int: bool = False,
        algorithms: tuple[str, ...] = tuple(ALGORITHMS),
    ) -> None:
        self.username = username
        self.password = password
        self._cnonce = cnonce
        self.prefer_auth_int = prefer_auth_int
        self.algorithms = tuple(a.upper() for a in algorithms)
        self._challenges: dict[tuple[bool, str], Challenge] = {}
        self._nc: dict[str, int] = {}
        self.failures = 0

    def _choose(self, response: Response) -> list[Challenge]:
        proxy = response.status == 407
        name = "proxy-authenticate" if proxy else "www-authenticate"
        best: dict[str, Challenge] = {}
        for value in response.headers.getall(name):
            try:
                challenge = parse_challenge(value, proxy=proxy)
            except RemoteProtocolError:
                continue
            if not challenge.supported or challenge.algorithm not in self.algorithms:
                continue
            current = best.get(challenge.realm)
            if current is None or challenge.strength > current.strength:
                best[challenge.realm] = challenge
        return list(best.values())

    def respond(self, request: Request, response: Response) -> list[tuple[str, str]]:
        """Header fields that answer the 401/407 `response` to `request`.

        Raises AuthError if nothing offered is usable, AuthenticationFailed if these
        credentials were already refused (a challenge without stale=true to a request that
        carried our answer for the same realm).
        """
        if response.status not in (401, 407):
            raise LocalProtocolError("respond() needs a 401 or 407")
        challenges = self._choose(response)
        if not challenges:
            raise AuthError("no supported digest challenge")
        sent_realms = self._realms_sent(request, challenges[0].header_name)
        fields: list[tuple[str, str]] = []
        for challenge in challenges:
            if challenge.realm in sent_realms and not challenge.stale:
                self.failures += 1
                raise AuthenticationFailed(f"credentials refused for realm {challenge.realm!r}")
            self._challenges[(challenge.proxy, challenge.realm)] = challenge
            self._nc[challenge.nonce] = 0
            fields.append(self._answer(challenge, request))
        return fields

    def authorize(self, request: Request) -> list[tuple[str, str]]:
        """Credentials for `request` from the challenges seen so far (may be empty)."""
        return [self._answer(c, request) for c in self._challenges.values()]

    def forget(self) -> None:
        """Drop cached challenges (e.g. after a change of registrar)."""
        self._challenges.clear()
        self._nc.clear()

    def _realms_sent(self, request: Request, header_name: str) -> set[str]:
        realms = set()
        for value in request.headers.getall(header_name):
            try:
                creds = parse_credentials(value)
            except RemoteProtocolError:
                continue
            # Only an answer to a fresh challenge (nc 1, or no qop) proves the password wrong.
            # Credentials re-used from an older challenge (nc > 1) may just have met a nonce the
            # server let expire without saying stale=true: that earns one fresh try.
            if (creds.username == self.username or creds.userhash) and (
                creds.nc is None or creds.nc == 1
            ):
                realms.add(creds.realm)
        return realms

    def _answer(self, challenge: Challenge, request: Request) -> tuple[str, str]:
        qop: str | None = None
        if challenge.qop:
            if "auth-int" in challenge.qop and (
                self.prefer_auth_int or "auth" not in challenge.qop
            ):
                qop = "auth-int"
            else:
                qop = "auth"
        session = ALGORITHMS[challenge.algorithm][1]
        cnonce = self._cnonce() if (qop or session) else None
        nc = None
        if qop:
            nc = self._nc.get(challenge.nonce, 0) + 1
            self._nc[challenge.nonce] = nc
        username = self.username
        if challenge.userhash:
            username = _hash(challenge.algorithm, f"{self.username}:{challenge.realm}")
        response = digest_response(
            algorithm=challenge.algorithm,
            username=self.username,
            realm=challenge.realm,
            password=self.password,
            nonce=challenge.nonce,
            method=request.method,
            uri=request.target,
            qop=qop,
            nc=nc,
            cnonce=cnonce,
            body=request.body,
        )
        creds = Credentials(
            scheme="Digest",
            username=username,
            realm=challenge.realm,
            nonce=challenge.nonce,
            uri=request.target,
            response=response,
            algorithm=challenge.algorithm if "algorithm" in challenge.params else None,
            cnonce=cnonce,
            nc=nc,
            qop=qop,
            opaque=challenge.opaque,
            userhash=challenge.userhash,
        )
        return challenge.header_name, str(creds)


# ---------------------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthResult:
    """Outcome of DigestServer.verify: `ok`, or why not (`stale` asks for a fresh nonce)."""

    ok: bool
    username: str | None = None
    stale: bool = False
    reason: str = ""


def _default_nonce() -> str:
    return secrets.token_urlsafe(24)


class DigestServer:
    """Challenges requests and checks the answers, for one realm.

    `passwords` maps a username to its password (or is a callable doing so). Nonces live
    `nonce_lifetime` seconds; an answer with a valid digest but an expired nonce gets a new
    challenge with stale=true. Each nonce's nc must grow, which stops replays. With
    `check_uri`, the digest uri must be the Request-URI (RFC 7616 3.4.6).
    """

    def __init__(
        self,
        realm: str,
        passwords: Mapping[str, str] | Callable[[str], str | None],
        *,
        algorithms: tuple[str, ...] = ("SHA-256", "MD5"),
        qop: tuple[str, ...] = ("auth",),
        nonce: Callable[[], str] = _default_nonce,
        nonce_lifetime: float = 300.0,
        proxy: bool = False,
        opaque: str | None = None,
        check_uri: bool = True,
        max_nonces: int = 1024,
    ) -> None:
        for alg in algorithms:
            if alg.upper() not in ALGORITHMS:
                raise LocalProtocolError(f"unknown digest algorithm {alg!r}")
        self.realm = realm
        self._lookup: Callable[[str], str | None] = (
            passwords if callable(passwords) else passwords.get  # type: ignore[union-attr]
        )
        self.algorithms = tuple(a.upper() for a in algorithms)
        self.qop = qop
        self._new_nonce = nonce
        self.nonce_lifetime = nonce_lifetime
        self.proxy = proxy
        self.opaque = opaque
        self.check_uri = check_uri
        self.max_nonces = max_nonces
        self._nonces: dict[str, tuple[float, int]] = {}  # nonce -> (issued, highest nc)

    @property
    def challenge_header(self) -> str:
        return "Proxy-Authenticate" if self.proxy else "WWW-Authenticate"

    @property
    def credentials_header(self) -> str:
        return "Proxy-Authorization" if self.proxy else "Authorization"

    def challenge(self, now: float, *, stale: bool = False) -> list[tuple[str, str]]:
        """Challenge header fields, one per algorithm, strongest first (RFC 8760 2.4)."""
        nonce = self._new_nonce()
        if len(self._nonces) >= self.max_nonces:
            oldest = min(self._nonces, key=lambda n: self._nonces[n][0])
            del self._nonces[oldest]
        self._nonces[nonce] = (now, 0)
        out = []
        for alg in self.algorithms:
            parts = [
                f"realm={quote_string(self.realm)}",
                f"nonce={quote_string(nonce)}",
                f"algorithm={_CANONICAL_ALG[alg]}",
            ]
            if self.qop:
                parts.append(f'qop="{",".join(self.qop)}"')
            if self.opaque is not None:
                parts.append(f"opaque={quote_string(self.opaque)}")
            if stale:
                parts.append("stale=true")
            out.append((self.challenge_header, "Digest " + ", ".join(parts)))
        return out

    def verify(self, request: Request, now: float) -> AuthResult:
        """Check the credentials in `request` for our realm."""
        found: Credentials | None = None
        for value in request.headers.getall(self.credentials_header):
            try:
                creds = parse_credentials(value)
            except RemoteProtocolError:
                continue
            if creds.scheme.lower() == "digest" and creds.realm == self.realm:
                found = creds
                break
        if found is None:
            return AuthResult(False, reason="no credentials for this realm")
        creds = found
        algorithm = creds.algorithm or "MD5"
        if algorithm not in self.algorithms:
            return AuthResult(False, creds.username, reason="algorithm not offered")
        if self.qop and (creds.qop not in self.qop or creds.nc is None or not creds.cnonce):
            return AuthResult(False, creds.username, reason="qop missing or not offered")
        if ALGORITHMS[algorithm][1] and not creds.cnonce:
            return AuthResult(False, creds.username, reason="-sess without cnonce")
        if (
            self.check_uri
            and creds.uri != request.target
            and not uri_equal(creds.uri, request.target)
        ):
            return AuthResult(False, creds.username, reason="digest uri is not the Request-URI")
        password = self._lookup(creds.username)
        if password is None:
            return AuthResult(False, creds.username, reason="unknown user")
        expected = digest_response(
            algorithm=algorithm,
            username=creds.username,
            realm=self.realm,
            password=password,
            nonce=creds.nonce,
            method=request.method,
            uri=creds.uri,
            qop=creds.qop if self.qop else None,
            nc=creds.nc,
            cnonce=creds.cnonce,
            body=request.body,
        )
        if not secrets.compare_digest(expected, creds.response.lower()):
            return AuthResult(False, creds.username, reason="wrong response")
        # The password is right. A nonce we no longer know (expired, or issued before a
        # restart) only needs refreshing: stale=true, which the client does not count.
        state = self._nonces.get(creds.nonce)
        if state is None or now - state[0] > self.nonce_lifetime:
            return AuthResult(False, creds.username, stale=True, reason="nonce expired")
        issued, last_nc = state
        if self.qop:
            if creds.nc <= last_nc:  # type: ignore[operator]
                return AuthResult(False, creds.username, reason="nonce count replayed")
            self._nonces[creds.nonce] = (issued, creds.nc)  # type: ignore[assignment]
        return AuthResult(True, creds.username)

    def check(self, request: Request, now: float, *, to_tag: str | None = None) -> Response | None:
        """None if `request` is authorised, else the 401/407 response to send."""
        result = self.verify(request, now)
        if result.ok:
            return None
        status = 407 if self.proxy else 401
        return make_response(
            request,
            status,
            to_tag=to_tag,
            headers=self.challenge(now, stale=result.stale),
        )
