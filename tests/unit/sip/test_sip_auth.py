"""Digest authentication: RFC 7616 examples, client/server exchanges, stale nonces."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from porch.sip.auth import (
    AuthenticationFailed,
    AuthError,
    DigestClient,
    DigestServer,
    digest_response,
    parse_challenge,
    parse_credentials,
)
from porch.sip.message import Request, Response, build_request, make_response, parse_datagram

# RFC 7616 section 3.9.1
RFC_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC_REALM = "http-auth@example.org"
RFC_SHA256 = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
RFC_MD5 = "8ca523f5e9506fed4657c9700eebdbec"


def rfc_challenge_response() -> Response:
    """The 401 of RFC 7616 3.9.1, headers folded as in the RFC, wrapped in a SIP response."""
    challenge = (
        "WWW-Authenticate: Digest\r\n"
        f'    realm="{RFC_REALM}",\r\n'
        '    qop="auth, auth-int",\r\n'
        "    algorithm={alg},\r\n"
        f'    nonce="{RFC_NONCE}",\r\n'
        f'    opaque="{RFC_OPAQUE}"\r\n'
    )
    data = (
        "SIP/2.0 401 Unauthorized\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n"
        "From: <sip:Mufasa@example.org>;tag=1\r\nTo: <sip:Mufasa@example.org>;tag=2\r\n"
        "Call-ID: rfc7616\r\nCSeq: 1 GET\r\n"
        + challenge.format(alg="SHA-256")
        + challenge.format(alg="MD5")
        + "Content-Length: 0\r\n\r\n"
    )
    resp = parse_datagram(data.encode())
    assert isinstance(resp, Response)
    return resp


def rfc_request() -> Request:
    return Request("GET", "/dir/index.html", [("CSeq", "1 GET")])


def test_rfc7616_examples_by_formula() -> None:
    for algorithm, expected in (("SHA-256", RFC_SHA256), ("MD5", RFC_MD5)):
        got = digest_response(
            algorithm=algorithm,
            username="Mufasa",
            realm=RFC_REALM,
            password="Circle of Life",
            nonce=RFC_NONCE,
            method="GET",
            uri="/dir/index.html",
            qop="auth",
            nc=1,
            cnonce=RFC_CNONCE,
        )
        assert got == expected


@pytest.mark.parametrize(
    ("algorithms", "expected", "alg_param"),
    [(("SHA-256", "MD5"), RFC_SHA256, "SHA-256"), (("MD5",), RFC_MD5, "MD5")],
)
def test_rfc7616_examples_through_the_client(algorithms, expected, alg_param) -> None:
    client = DigestClient(
        "Mufasa", "Circle of Life", cnonce=lambda: RFC_CNONCE, algorithms=algorithms
    )
    ((name, value),) = client.respond(rfc_request(), rfc_challenge_response())
    assert name == "Authorization"
    creds = parse_credentials(value)
    assert creds.scheme == "Digest"
    assert creds.username == "Mufasa" and creds.realm == RFC_REALM
    assert creds.uri == "/dir/index.html" and creds.algorithm == alg_param
    assert creds.nonce == RFC_NONCE and creds.opaque == RFC_OPAQUE
    assert (creds.qop, creds.nc, creds.cnonce) == ("auth", 1, RFC_CNONCE)
    assert creds.response == expected
    assert "nc=00000001" in value and f'response="{expected}"' in value
    # and the server side accepts exactly this answer
    server = DigestServer(RFC_REALM, {"Mufasa": "Circle of Life"}, nonce=lambda: RFC_NONCE,
                          algorithms=algorithms)  # fmt: skip
    server.challenge(now=0.0)
    signed = rfc_request()
    signed.headers.add(name, value)
    assert server.verify(signed, now=1.0).ok


def register(cseq: int = 1) -> Request:
    return build_request(
        "REGISTER",
        "sip:127.0.0.1:5070",
        via=f"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-reg{cseq};rport",
        from_="<sip:door@127.0.0.1>;tag=r1",
        to="<sip:door@127.0.0.1>",
        call_id="reg-1@127.0.0.1",
        cseq=cseq,
        contact="<sip:door@127.0.0.1:5060>",
        headers=[("Expires", "600")],
    )


def retry(request: Request, fields: list[tuple[str, str]]) -> Request:
    """What the UA does: copy, bump CSeq, new branch, add the credentials; over the wire."""
    again = request.copy()
    number = again.cseq.number + 1
    again.headers.set("CSeq", f"{number} {again.method}")
    again.headers.set("Via", f"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-reg{number};rport")
    for name in ("authorization", "proxy-authorization"):
        again.headers.remove(name)
    for name, value in fields:
        again.headers.add(name, value)
    parsed = parse_datagram(again.to_bytes())
    assert isinstance(parsed, Request)
    return parsed


def nonces(prefix: str = "n"):
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter)}"


def cnonces():
    counter = itertools.count(1)
    return lambda: f"c{next(counter):04d}"


def wire(resp: Response) -> Response:
    parsed = parse_datagram(resp.to_bytes())
    assert isinstance(parsed, Response)
    return parsed


def test_full_401_retry_exchange() -> None:
    server = DigestServer("127.0.0.1", {"door": "doorpass"}, nonce=nonces())
    client = DigestClient("door", "doorpass", cnonce=cnonces())
    first = register(1)
    challenge = server.check(first, now=0.0, to_tag="srv")
    assert challenge is not None and challenge.status == 401
    assert challenge.to.tag == "srv"
    offered = [parse_challenge(v) for v in challenge.headers.getall("WWW-Authenticate")]
    assert [c.algorithm for c in offered] == ["SHA-256", "MD5"]
    second = retry(first, client.respond(first, wire(challenge)))
    assert second.cseq.number == 2
    creds = parse_credentials(second.headers.get("Authorization") or "")
    assert creds.algorithm == "SHA-256" and creds.nc == 1 and creds.cnonce == "c0001"
    assert server.check(second, now=1.0) is None  # accepted
    # a refresh re-uses the nonce with a higher nonce count, without a new challenge
    third = retry(second, client.authorize(second))
    assert parse_credentials(third.headers.get("Authorization") or "").nc == 2
    assert server.verify(third, now=2.0).ok
    # replaying an old answer fails
    assert server.verify(third, now=3.0).reason == "nonce count replayed"


def test_stale_nonce_is_retried_without_counting_a_failure() -> None:
    server = DigestServer("127.0.0.1", {"door": "doorpass"}, nonce=nonces(), nonce_lifetime=30)
    client = DigestClient("door", "doorpass", cnonce=cnonces())
    first = register(1)
    challenge = server.check(first, now=0.0)
    assert challenge is not None
    second = retry(first, client.respond(first, wire(challenge)))
    assert server.check(second, now=10.0) is None
    # much later the same credentials (next nc) meet an expired nonce
    late = retry(second, client.authorize(second))
    result = server.verify(late, now=100.0)
    assert result.stale and not result.ok
    stale_challenge = server.check(retry(second, client.authorize(second)), now=100.0)
    assert stale_challenge is not None
    assert "stale=true" in (stale_challenge.headers.get("WWW-Authenticate") or "")
    # the request carried our credentials, yet stale=true means "just take the new nonce"
    fresh = retry(late, client.respond(late, wire(stale_challenge)))
    assert client.failures == 0
    assert parse_credentials(fresh.headers.get("Authorization") or "").nonce == "n2"
    assert server.check(fresh, now=101.0) is None


def test_wrong_password_fails_once_and_stops() -> None:
    server = DigestServer("127.0.0.1", {"door": "doorpass"}, nonce=nonces())
    client = DigestClient("door", "wrong", cnonce=cnonces())
    first = register(1)
    challenge = server.check(first, now=0.0)
    assert challenge is not None
    second = retry(first, client.respond(first, wire(challenge)))
    again = server.check(second, now=1.0)
    assert again is not None and again.status == 401
    assert server.verify(second, now=1.0).reason in ("wrong response", "nonce count replayed")
    with pytest.raises(AuthenticationFailed):
        client.respond(second, wire(again))
    assert client.failures == 1


def test_proxy_challenge_uses_proxy_headers() -> None:
    proxy = DigestServer("pbx.example.com", {"door": "pw"}, nonce=nonces(), proxy=True)
    client = DigestClient("door", "pw", cnonce=cnonces())
    invite = register(1)
    challenge = proxy.check(invite, now=0.0)
    assert challenge is not None and challenge.status == 407
    assert challenge.headers.get("Proxy-Authenticate")
    fields = client.respond(invite, wire(challenge))
    assert [name for name, _ in fields] == ["Proxy-Authorization"]
    assert proxy.check(retry(invite, fields), now=1.0) is None


def test_auth_int_covers_the_body() -> None:
    server = DigestServer("r", {"door": "pw"}, nonce=nonces(), qop=("auth-int",))
    client = DigestClient("door", "pw", cnonce=cnonces())
    req = build_request(
        "INVITE", "sip:flat@r", via="SIP/2.0/UDP h;branch=z9hG4bKa", from_="<sip:door@r>;tag=1",
        to="<sip:flat@r>", call_id="c", cseq=1, body=b"v=0\r\n", content_type="application/sdp",
    )  # fmt: skip
    challenge = server.check(req, now=0.0)
    assert challenge is not None
    signed = retry(req, client.respond(req, wire(challenge)))
    assert parse_credentials(signed.headers.get("Authorization") or "").qop == "auth-int"
    assert server.verify(signed, now=1.0).ok
    tampered = retry(req, client.authorize(req))
    tampered.body = b"v=1\r\n"
    assert server.verify(tampered, now=1.0).reason == "wrong response"


@pytest.mark.parametrize(
    "algorithm", ["SHA-512-256", "SHA-512-256-sess", "SHA-256-sess", "MD5-sess"]
)
def test_other_algorithms_round_trip(algorithm: str) -> None:
    server = DigestServer("r", {"door": "pw"}, nonce=nonces(), algorithms=(algorithm,))
    client = DigestClient("door", "pw", cnonce=cnonces())
    req = register(1)
    challenge = server.check(req, now=0.0)
    assert challenge is not None
    signed = retry(req, client.respond(req, wire(challenge)))
    assert parse_credentials(signed.headers.get("Authorization") or "").algorithm == (
        algorithm.upper()
    )
    assert server.verify(signed, now=1.0).ok


def test_sha512_256_is_the_truncated_sha512_variant() -> None:
    # SHA-512/256 has its own initial values: it is not SHA-512 cut to 64 hex digits.
    got = digest_response(algorithm="SHA-512-256", username="u", realm="r", password="p",
                          nonce="n", method="M", uri="x")  # fmt: skip
    ha1 = hashlib.new("sha512_256", b"u:r:p").hexdigest()
    ha2 = hashlib.new("sha512_256", b"M:x").hexdigest()
    assert got == hashlib.new("sha512_256", f"{ha1}:n:{ha2}".encode()).hexdigest()
    assert got != hashlib.sha512(f"{ha1}:n:{ha2}".encode()).hexdigest()[:64]


def challenge_response(*challenges: str, status: int = 401) -> Response:
    name = "Proxy-Authenticate" if status == 407 else "WWW-Authenticate"
    req = register(1)
    return make_response(req, status, headers=[(name, c) for c in challenges])


def test_the_strongest_challenge_wins() -> None:
    client = DigestClient("door", "pw", cnonce=cnonces())
    resp = challenge_response(
        'Digest realm="r", nonce="a", algorithm=MD5, qop="auth"',
        'Digest realm="r", nonce="b", algorithm=SHA-512-256, qop="auth"',
        'Digest realm="r", nonce="c", algorithm=SHA-256, qop="auth"',
        'Basic realm="r"',
    )
    ((_, value),) = client.respond(register(1), resp)
    creds = parse_credentials(value)
    assert (creds.algorithm, creds.nonce) == ("SHA-512-256", "b")


def test_unsupported_challenges() -> None:
    client = DigestClient("door", "pw")
    with pytest.raises(AuthError):
        client.respond(register(1), challenge_response('Basic realm="r"'))
    with pytest.raises(AuthError):
        client.respond(
            register(1), challenge_response('Digest realm="r", nonce="a", algorithm=SHA3-999')
        )
    with pytest.raises(AuthError):
        client.respond(register(1), challenge_response('Digest realm=unterminated"x'))


def test_no_qop_challenge_rfc2069_style() -> None:
    server = DigestServer("r", {"door": "pw"}, nonce=nonces(), qop=(), algorithms=("MD5",))
    client = DigestClient("door", "pw", cnonce=cnonces())
    req = register(1)
    challenge = server.check(req, now=0.0)
    assert challenge is not None
    signed = retry(req, client.respond(req, wire(challenge)))
    creds = parse_credentials(signed.headers.get("Authorization") or "")
    assert creds.qop is None and creds.nc is None and creds.cnonce is None
    assert server.verify(signed, now=1.0).ok


def test_userhash_challenge() -> None:
    client = DigestClient("door", "pw", cnonce=cnonces())
    resp = challenge_response('Digest realm="r", nonce="a", algorithm=SHA-256, userhash=true')
    ((_, value),) = client.respond(register(1), resp)
    creds = parse_credentials(value)
    assert creds.userhash
    assert creds.username == hashlib.sha256(b"door:r").hexdigest()


def test_parse_challenge_is_liberal_about_spacing_and_case() -> None:
    c = parse_challenge('Digest  REALM = "a b" ,nonce=xyz,  Stale=TRUE, QOP="auth-int, auth"')
    assert (c.realm, c.nonce, c.stale, c.qop) == ("a b", "xyz", True, ("auth-int", "auth"))
    assert c.algorithm == "MD5" and c.supported


def test_server_rejects_unknown_users_and_foreign_realms() -> None:
    server = DigestServer("r", {"door": "pw"}, nonce=nonces())
    client = DigestClient("intruder", "pw", cnonce=cnonces())
    req = register(1)
    challenge = server.check(req, now=0.0)
    assert challenge is not None
    signed = retry(req, client.respond(req, wire(challenge)))
    assert server.verify(signed, now=1.0).reason == "unknown user"
    other = DigestServer("elsewhere", {"door": "pw"})
    assert other.verify(signed, now=1.0).reason == "no credentials for this realm"


def test_expired_nonce_without_stale_flag_gets_one_more_try() -> None:
    # Some servers re-challenge an expired nonce without stale=true. Credentials re-used from
    # the cache (nc > 1) earn one fresh answer; a refusal of that fresh answer is final.
    server = DigestServer("r", {"door": "pw"}, nonce=nonces(), nonce_lifetime=10)
    client = DigestClient("door", "pw", cnonce=cnonces())
    first = register(1)
    challenge = server.check(first, now=0.0)
    assert challenge is not None
    second = retry(first, client.respond(first, wire(challenge)))
    assert server.check(second, now=1.0) is None
    later = retry(second, client.authorize(second))  # nc=2 on the old nonce
    rechallenge = make_response(
        later, 401, headers=[("WWW-Authenticate", 'Digest realm="r", nonce="fresh", qop="auth"')]
    )
    fresh = retry(later, client.respond(later, wire(rechallenge)))
    assert client.failures == 0
    creds = parse_credentials(fresh.headers.get("Authorization") or "")
    assert (creds.nonce, creds.nc) == ("fresh", 1)
    with pytest.raises(AuthenticationFailed):
        client.respond(fresh, wire(rechallenge))
